//! Messages between the server and a container's init, over a `SOCK_SEQPACKET` unix socket
//! (one JSON message per packet, file descriptors alongside as `SCM_RIGHTS`).
//!
//! One connection per request. A `Spawn` connection stays open after `Spawned`: init sends
//! `Exited` on it when the process ends, so the server's wait needs no polling.

use nix::cmsg_space;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use trellis_core::api::ProcessSpec;

/// The largest message either side sends (env and args included).
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Start a process. No fds; the reply carries `[stdin, stdout, stderr]`, or
    /// `[pty master]` with a TTY.
    Spawn {
        id: String,
        spec: Box<ProcessSpec>,
        /// Image env then container env.
        env: Vec<String>,
    },
    /// Send `signal` to the process `id` if it still runs; answers `Done`. Init is its parent
    /// and reaps it, so the signal can never reach a process that reused its pid.
    Signal { id: String, signal: i32 },
    /// Send `signal` to every process but init (0 only counts); answers `Remaining`.
    SignalAll { signal: i32 },
    /// Ids of the processes still running; answers `Ids`.
    List,
    /// Unpack the tar read from the fd sent along (a pipe) at `path`, as `user`.
    StreamIn { path: String, user: String },
    /// Write a tar of `path`, read as `user`, to the fd sent along.
    StreamOut { path: String, user: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    ExecutableNotFound,
    Invalid,
    Failed,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Spawned,
    Exited { status: i32 },
    Remaining { count: usize },
    Ids(Vec<String>),
    Done,
    Failed { kind: FailureKind, message: String },
}

pub fn send<T: Serialize>(sock: RawFd, message: &T, fds: &[RawFd]) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&body)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message; `Ok(None)` when the peer has closed the connection.
pub fn recv<T: for<'de> Deserialize<'de>>(
    sock: RawFd,
    buf: &mut Vec<u8>,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    buf.resize(MAX_MESSAGE, 0);
    let mut cmsg = cmsg_space!([RawFd; 8]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        // SAFETY: the kernel just installed these descriptors for us.
                        fds.extend(
                            raw.into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let message = serde_json::from_slice(&buf[..len]).map_err(io::Error::other)?;
    Ok(Some((message, fds)))
}

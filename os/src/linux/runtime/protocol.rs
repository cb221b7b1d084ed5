//! Messages between the server and a container's init, over a `SOCK_SEQPACKET` unix socket
//! (one JSON message per packet, file descriptors alongside as `SCM_RIGHTS`).
//!
//! One connection per request, one answer per request.

use crate::host::HostError;
use nix::cmsg_space;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use trellis_core::api::ProcessSpec;

/// The largest message either side sends (env and args included).
pub(super) const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Start a process; answers `Process` with its descriptors once it has exec'd.
    Spawn {
        id: String,
        spec: Box<ProcessSpec>,
        /// Image env then container env.
        env: Vec<String>,
    },
    /// Fresh descriptors of a known process (running or exited and not yet released):
    /// answers `Process`.
    Attach { id: String },
    /// Send `signal` to the process `id` if it still runs; answers `Done`. Init is its parent
    /// and reaps it, so the signal can never reach a process that reused its pid.
    Signal { id: String, signal: i32 },
    /// Set the terminal size of a process with a TTY; answers `Done`.
    Resize { id: String, columns: u16, rows: u16 },
    /// Init lets go of its copy of the process's stdin (the server closed its own), so the
    /// process reads EOF; answers `Done`.
    CloseStdin { id: String },
    /// Forget an exited process (its status and output were delivered); answers `Done`.
    Release { id: String },
    /// Send `signal` to every process but init (0 only counts); answers `Remaining`.
    SignalAll { signal: i32 },
    /// Answers `Remaining` as soon as no process but init (and the keepers of peas) is left,
    /// or with how many are left once `timeout_ms` has passed.
    AwaitNoProcesses { timeout_ms: u64 },
    /// The processes init keeps; answers `Processes`.
    List,
    /// Unpack the tar read from the fd sent along (a pipe) at `path`, as `user`.
    StreamIn { path: String, user: String },
    /// Write a tar of `path`, read as `user`, to the fd sent along.
    StreamOut { path: String, user: String },
}

/// A pea's keeper to the process it forked in advance (see `keeper::PreForked`): become this.
/// Its descriptors follow: `[stdin, stdout, stderr, report]`, or `[tty slave, report]`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PeaStart {
    pub spec: Box<ProcessSpec>,
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    ExecutableNotFound,
    Invalid,
    ProcessNotFound,
    Failed,
}

/// A start or spawn that failed inside a helper process, and whose fault it is: the kind
/// crosses the process boundary with the message, so the server never guesses it from text.
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Invalid,
            message: message.into(),
        }
    }
    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::Failed,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Failure {
        Failure {
            kind: FailureKind::ExecutableNotFound,
            message: message.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let tag = match self.kind {
            FailureKind::ExecutableNotFound => b'N',
            FailureKind::Invalid => b'I',
            FailureKind::ProcessNotFound => b'P',
            FailureKind::Failed => b'F',
        };
        let mut out = vec![tag];
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Failure {
        let kind = match bytes.first() {
            Some(b'N') => FailureKind::ExecutableNotFound,
            Some(b'I') => FailureKind::Invalid,
            Some(b'P') => FailureKind::ProcessNotFound,
            _ => FailureKind::Failed,
        };
        Failure {
            kind,
            message: String::from_utf8_lossy(bytes.get(1..).unwrap_or_default()).into_owned(),
        }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::failed(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::failed(message)
    }
}

impl From<Failure> for HostError {
    fn from(failure: Failure) -> HostError {
        host_error(failure.kind, failure.message)
    }
}

/// The host error a failure of `kind` is.
pub(super) fn host_error(kind: FailureKind, message: String) -> HostError {
    match kind {
        FailureKind::ExecutableNotFound => HostError::ExecutableNotFound(message),
        FailureKind::Invalid => HostError::Invalid(message),
        FailureKind::ProcessNotFound => HostError::ProcessNotFound(message),
        FailureKind::Failed => HostError::Unexpected(message),
    }
}

/// A process init keeps, and its exit status once it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProcessStatus {
    pub id: String,
    pub exit_status: Option<i32>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    /// A process's descriptors follow: `[stdin?, stdout, stderr?, exit]`, stdin and stderr as
    /// the flags say (no stdin once it was closed; no stderr with a TTY). `exit` is a pipe that
    /// yields the exit status (i32, native byte order) once the process has exited.
    Process {
        stdin: bool,
        stderr: bool,
    },
    Processes(Vec<ProcessStatus>),
    Remaining {
        count: usize,
    },
    Done,
    Failed {
        kind: FailureKind,
        message: String,
    },
}

pub(super) fn send<T: Serialize>(sock: RawFd, message: &T, fds: &[RawFd]) -> io::Result<()> {
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
pub(super) fn recv<T: for<'de> Deserialize<'de>>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_keeps_whose_fault_it_is_across_the_ready_pipe() {
        let sent = Failure::invalid("bind mount source /gone does not exist on the host");
        let received = Failure::decode(&sent.encode());
        assert_eq!(received.kind, FailureKind::Invalid);
        assert_eq!(received.message, sent.message);
        assert!(matches!(HostError::from(received), HostError::Invalid(m) if m == sent.message));
        let host = HostError::from(Failure::from("signalfd: EMFILE"));
        assert!(matches!(host, HostError::Unexpected(_)), "{host:?}");
    }
}

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

/// What a container's start helper and the server say to each other (see `zygote`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum HelperMessage {
    /// `in_cgroup`: the zygote forked the helper straight into the container's cgroup, so
    /// nobody needs to move it.
    Forked {
        pid: i32,
        in_cgroup: bool,
    },
    Placed,
    Ready {
        init: i32,
    },
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
    // The buffer is sized to the message, not to the largest one: zeroing a MiB for every
    // message cost time, and its churn left the server's heap fragmented (RSS grew with each
    // round of containers).
    let len = next_message_len(sock)?;
    if len == 0 {
        return Ok(None);
    }
    if len > MAX_MESSAGE {
        // Taken and dropped (with any descriptors): the next message is read as usual.
        let _ = nix::sys::socket::recv(sock, &mut [], MsgFlags::empty());
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message of {len} bytes is over the bound of {MAX_MESSAGE}"),
        ));
    }
    buf.resize(len, 0);
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

/// The length of the next message on a seqpacket socket, without taking it (0 once the peer
/// has closed the connection): a peek with MSG_TRUNC answers a datagram's whole length.
fn next_message_len(sock: RawFd) -> io::Result<usize> {
    loop {
        match nix::sys::socket::recv(sock, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Ok(len) => return Ok(len),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    #[test]
    fn messages_of_any_size_up_to_the_bound_arrive_whole_with_their_descriptors() {
        use std::os::fd::AsRawFd;
        let (a, b) = seqpacket_pair();
        let mut buf = Vec::new();
        for size in [1usize, 100, 70_000, 3] {
            let sent = Reply::Remaining { count: size };
            let padding = "x".repeat(size);
            let (extra_r, _extra_w) = nix::unistd::pipe().expect("pipe");
            send(
                a.as_raw_fd(),
                &(sent, padding.clone()),
                &[extra_r.as_raw_fd()],
            )
            .expect("send");
            let ((received, text), fds) = recv::<(Reply, String)>(b.as_raw_fd(), &mut buf)
                .expect("recv")
                .expect("a message");
            assert!(matches!(received, Reply::Remaining { count } if count == size));
            assert_eq!(text, padding);
            assert_eq!(fds.len(), 1, "the descriptor came along");
        }
        drop(a);
        assert!(recv::<Reply>(b.as_raw_fd(), &mut buf)
            .expect("recv")
            .is_none());
    }

    #[test]
    fn a_message_over_the_bound_is_refused_not_truncated() {
        use std::os::fd::AsRawFd;
        let (a, b) = seqpacket_pair();
        // A datagram this large needs a larger send buffer than the default (root may force it).
        nix::sys::socket::setsockopt(&a, nix::sys::socket::sockopt::SndBufForce, &(4 << 20))
            .expect("SO_SNDBUFFORCE");
        let big = "y".repeat(MAX_MESSAGE + 10);
        send(a.as_raw_fd(), &big, &[]).expect("send");
        send(a.as_raw_fd(), &"after".to_string(), &[]).expect("send");
        let mut buf = Vec::new();
        let err = recv::<String>(b.as_raw_fd(), &mut buf).expect_err("over the bound");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let (next, _) = recv::<String>(b.as_raw_fd(), &mut buf)
            .expect("recv")
            .expect("the next message");
        assert_eq!(next, "after");
    }

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

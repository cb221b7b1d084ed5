//! The zygote: one small single-threaded process, started once from the sealed copy of the
//! binary, that forks the helper of every container start.
//!
//! Namespace work cannot fork from the multi-threaded server, and executing the binary anew for
//! each container cost about 2 ms (loading and relocating a large binary) out of a create of
//! about 12. So the runtime executes it once, as the zygote, and asks it over a unix socket to
//! fork a helper per container. The zygote holds nothing but its control socket; each helper
//! talks to the server over a socket pair of its own, sent with the request:
//!
//! 1. server -> zygote: the container's `InitSpec`, with the helper's end of a socket pair;
//! 2. helper -> server: `Forked { pid }`; the server moves the helper into the container's
//!    cgroups (on cgroup v1 the helper moves itself, which is much cheaper: see
//!    `Cgroups::self_placement_files`), since every namespace and process the helper makes
//!    must start in them;
//! 3. server -> helper: `Placed`; the helper makes the namespaces and forks init;
//! 4. helper -> server: `Ready { init }` or `Failed { message }`, and the helper exits.
//!
//! The zygote reaps its helpers (SIGCHLD ignored); a container's init is re-parented to the
//! server (a subreaper) when its helper exits. The zygote exits when the server's end of the
//! control socket closes, whether the server stopped or died.

use super::init;
use super::mounts::InitSpec;
use super::protocol::{self, FailureKind};
use crate::host::{HostError, HostResult};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Mutex;

pub const SUBCOMMAND: &str = "__trellis-zygote";

/// What a helper and the server say to each other.
#[derive(Debug, Serialize, Deserialize)]
pub enum HelperMessage {
    Forked { pid: i32 },
    Placed,
    Ready { init: i32 },
    Failed { kind: FailureKind, message: String },
}

/// The zygote's `main` (`args`: its command line, whose last argument is the number of its
/// control socket's descriptor): fork a helper for every spec received, until the server goes
/// away.
pub fn zygote_main(args: &[String]) -> ExitCode {
    let Some(control) = args.last().and_then(|a| a.parse::<i32>().ok()) else {
        return ExitCode::FAILURE;
    };
    super::child::close_all_except(&[control]);
    // SAFETY: setting a signal disposition in a single-threaded process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let mut buf = Vec::new();
    loop {
        let (spec, mut fds) = match protocol::recv::<InitSpec>(control, &mut buf) {
            Ok(Some(request)) => request,
            // The server closed its end: it stopped or died.
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return ExitCode::FAILURE,
        };
        let Some(channel) = fds.pop() else { continue };
        // SAFETY: the zygote is single-threaded.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => {
                // SAFETY: restoring the default so the helper can wait for its init.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                super::child::close_all_except(&[channel.as_raw_fd()]);
                let code = init::helper_main(&spec, channel);
                // SAFETY: ending the forked helper.
                unsafe { libc::_exit(code) }
            }
            Ok(nix::unistd::ForkResult::Parent { .. }) => drop(channel),
            Err(e) => {
                let _ = protocol::send(
                    channel.as_raw_fd(),
                    &HelperMessage::Failed {
                        kind: FailureKind::Failed,
                        message: format!("the zygote could not fork: {e}"),
                    },
                    &[],
                );
            }
        }
    }
}

/// The server's side: starts the zygote when first needed (and again if it died).
pub struct Zygote {
    /// The sealed copy of the binary the zygote runs from (executed as `/proc/self/fd/N`).
    program: std::fs::File,
    running: Mutex<Option<Running>>,
}

struct Running {
    process: std::process::Child,
    control: OwnedFd,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Closing the control socket ends the zygote; reap it.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A helper the zygote forked for one container start.
pub struct Helper {
    pub pid: i32,
    channel: OwnedFd,
}

impl Helper {
    /// Lets the helper go on once it is in the container's cgroups; returns init's pid.
    pub fn proceed(self) -> HostResult<i32> {
        protocol::send(self.channel.as_raw_fd(), &HelperMessage::Placed, &[])
            .map_err(|e| HostError::io("releasing the init helper", e))?;
        match receive(&self.channel)? {
            HelperMessage::Ready { init } => Ok(init),
            HelperMessage::Failed { kind, message } => Err(protocol::host_error(kind, message)),
            other => Err(HostError::Unexpected(format!(
                "unexpected message from the init helper: {other:?}"
            ))),
        }
    }
}

fn receive(channel: &OwnedFd) -> HostResult<HelperMessage> {
    let mut buf = Vec::new();
    match protocol::recv::<HelperMessage>(channel.as_raw_fd(), &mut buf) {
        Ok(Some((message, _))) => Ok(message),
        Ok(None) => Err(HostError::Unexpected(
            "the container init helper died while starting".into(),
        )),
        Err(e) => Err(HostError::io("reading from the container init helper", e)),
    }
}

impl Zygote {
    pub fn new(program: std::fs::File) -> Zygote {
        Zygote {
            program,
            running: Mutex::new(None),
        }
    }

    fn start(&self) -> HostResult<Running> {
        let (server_end, zygote_end) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| HostError::io("socketpair", e.into()))?;
        let zygote_fd = zygote_end.as_raw_fd();
        let mut command =
            std::process::Command::new(format!("/proc/self/fd/{}", self.program.as_raw_fd()));
        command
            .arg(SUBCOMMAND)
            .arg(zygote_fd.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: only an async-signal-safe call between fork and exec: the control socket
        // stays open across the exec (the sealed binary's descriptor still closes).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::fcntl(zygote_fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command
            .spawn()
            .map_err(|e| HostError::io("starting the zygote", e))?;
        drop(zygote_end);
        Ok(Running {
            process,
            control: server_end,
        })
    }

    /// Has the zygote fork a helper for `spec`; returns it once it has reported its pid.
    pub fn fork_helper(&self, spec: &InitSpec) -> HostResult<Helper> {
        let (channel, helper_end) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| HostError::io("socketpair", e.into()))?;
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            // A zygote that died (killed by someone) is replaced, once.
            for attempt in 0..2 {
                if running.is_none() {
                    *running = Some(self.start()?);
                }
                let control = running.as_ref().expect("just started").control.as_raw_fd();
                match protocol::send(control, spec, &[helper_end.as_raw_fd()]) {
                    Ok(()) => break,
                    Err(_) if attempt == 0 => *running = None,
                    Err(e) => return Err(HostError::io("asking the zygote for a helper", e)),
                }
            }
        }
        drop(helper_end);
        match receive(&channel)? {
            HelperMessage::Forked { pid } => Ok(Helper { pid, channel }),
            HelperMessage::Failed { kind, message } => Err(protocol::host_error(kind, message)),
            other => Err(HostError::Unexpected(format!(
                "unexpected message from the init helper: {other:?}"
            ))),
        }
    }
}

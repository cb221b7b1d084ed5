//! The zygote: one small single-threaded process, started once from the sealed copy of the
//! binary, that forks the helper of every container start.
//!
//! Namespace work cannot fork from the multi-threaded server, and executing the binary anew for
//! each container cost about 2 ms (loading and relocating a large binary) out of a create of
//! about 12. So the runtime executes it once, as the zygote, and asks it over a unix socket to
//! fork a helper per container. The zygote holds nothing but its control socket; each helper
//! talks to the server over a socket pair of its own, sent with the request:
//!
//! 1. server -> zygote: the container's `InitSpec`, with the helper's end of a socket pair
//!    and, on cgroup v2, the container's cgroup directory (descriptors in that order); the
//!    zygote forks the helper straight into that cgroup (`clone3` with `CLONE_INTO_CGROUP`),
//!    or, on a kernel without that (before 5.7), with a plain fork;
//! 2. helper -> server: `Forked { pid, in_cgroup }`; every namespace and process the helper
//!    makes must start in the container's cgroups, so unless it was forked into them the
//!    server moves it there (on cgroup v1 the helper moves itself, which is much cheaper:
//!    see `Cgroups::self_placement_files` and `Cgroups::fork_target`);
//! 3. server -> helper: `Placed`; the helper makes the namespaces and forks init;
//! 4. helper -> server: `Ready { init }` or `Failed { message }`, and the helper exits.
//!
//! The zygote reaps its helpers (SIGCHLD ignored); a container's init is re-parented to the
//! server (a subreaper) when its helper exits. The zygote exits when the server's end of the
//! control socket closes, whether the server stopped or died.

use super::init;
use super::mounts::InitSpec;
use super::protocol::{self, FailureKind, HelperMessage};
use crate::host::{HostError, HostResult};
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
use nix::unistd::{ForkResult, Pid};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::ExitCode;
use std::sync::Mutex;

pub const SUBCOMMAND: &str = "__trellis-zygote";

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
    let mut kernel_lacks_clone_into_cgroup = false;
    loop {
        let (spec, fds) = match protocol::recv::<InitSpec>(control, &mut buf) {
            Ok(Some(request)) => request,
            // The server closed its end: it stopped or died.
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return ExitCode::FAILURE,
        };
        let mut fds = fds.into_iter();
        let Some(channel) = fds.next() else { continue };
        let cgroup_dir = fds.next();
        let cgroup = cgroup_dir.as_ref().map(AsFd::as_fd);
        // SAFETY: the zygote is single-threaded, and the helper calls no pthread function
        // that names a thread.
        match unsafe { fork_helper(cgroup, &mut kernel_lacks_clone_into_cgroup) } {
            Ok(Forked::Helper { in_cgroup }) => {
                // SAFETY: restoring the default so the helper can wait for its init.
                unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
                super::child::close_all_except(&[channel.as_raw_fd()]);
                let code = init::helper_main(&spec, channel, in_cgroup);
                // SAFETY: ending the forked helper.
                unsafe { libc::_exit(code) }
            }
            Ok(Forked::Zygote) => drop(channel),
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

/// Which side of a helper's fork this is.
enum Forked {
    Helper { in_cgroup: bool },
    Zygote,
}

/// Forks a helper: straight into the cgroup2 directory `cgroup` when there is one and the
/// kernel can, otherwise with a plain fork. `kernel_lacks_it` is set once the kernel turns
/// out not to know `CLONE_INTO_CGROUP`, so that later helpers go straight to the fork.
///
/// # Safety
/// As for [`fork_into_cgroup`] in a single-threaded caller.
unsafe fn fork_helper(
    cgroup: Option<BorrowedFd<'_>>,
    kernel_lacks_it: &mut bool,
) -> nix::Result<Forked> {
    if let Some(cgroup) = cgroup.filter(|_| !*kernel_lacks_it) {
        // SAFETY: as the caller promises.
        match unsafe { fork_into_cgroup(cgroup) } {
            Ok(ForkResult::Child) => return Ok(Forked::Helper { in_cgroup: true }),
            Ok(ForkResult::Parent { .. }) => return Ok(Forked::Zygote),
            Err(e) if lacks_clone_into_cgroup(e) => *kernel_lacks_it = true,
            Err(e) => return Err(e),
        }
    }
    // SAFETY: the caller is single-threaded.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => Ok(Forked::Helper { in_cgroup: false }),
        ForkResult::Parent { .. } => Ok(Forked::Zygote),
    }
}

/// Whether `clone3(CLONE_INTO_CGROUP)` failed with `error` because the kernel does not know
/// the call or the flag (no clone3 before 5.3; 5.3 to 5.6 refuse the larger argument struct
/// or the flag): then a plain fork (and a move) does instead. Any other error is the kernel
/// refusing this fork (the cgroup is gone, a pid limit, no memory), which a plain fork and a
/// move would only hide.
fn lacks_clone_into_cgroup(error: Errno) -> bool {
    matches!(error, Errno::ENOSYS | Errno::E2BIG | Errno::EINVAL)
}

/// The kernel's `struct clone_args` (linux/sched.h) up to `cgroup`, its 5.7 size.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// linux/sched.h (the libc crate's constant is an overflowing `c_int`).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks the calling process straight into the cgroup2 directory `cgroup` (`clone3` with
/// `CLONE_INTO_CGROUP`, Linux 5.7 and later): the child starts there, so it is never
/// migrated, which would take the kernel's threadgroup lock (see `Cgroups::fork_target`).
///
/// # Safety
/// As for `fork`, and more: this is the raw system call, so the C library runs none of its
/// fork handling in the child. The caller must be single-threaded (no lock can then be held
/// by another thread), or the child must call only async-signal-safe functions until it
/// execs or exits. The child's C-library thread data keeps the parent's thread id: only
/// pthread functions that name a thread by its handle (mutex ownership checks, signalling or
/// scheduling a thread) look at it, and the child must call none of them.
pub unsafe fn fork_into_cgroup(cgroup: BorrowedFd<'_>) -> nix::Result<ForkResult> {
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        // No stack: the child runs on a copy of the caller's, as after fork.
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args`, which lives through the call and is sized as passed; with
    // no stack and no CLONE_VM the child gets a copy of this address space, as with fork.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match Errno::result(pid)? {
        0 => Ok(ForkResult::Child),
        child => Ok(ForkResult::Parent {
            child: Pid::from_raw(child as i32),
        }),
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
    /// It was forked straight into the container's cgroup (see `Zygote::fork_helper`).
    pub in_cgroup: bool,
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

    /// Has the zygote fork a helper for `spec`, straight into the cgroup2 directory `cgroup`
    /// if one is given and the kernel can (the helper says whether it is there); returns it
    /// once it has reported its pid.
    pub fn fork_helper(
        &self,
        spec: &InitSpec,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> HostResult<Helper> {
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
                let fds: Vec<RawFd> = std::iter::once(helper_end.as_raw_fd())
                    .chain(cgroup.map(|dir| dir.as_raw_fd()))
                    .collect();
                match protocol::send(control, spec, &fds) {
                    Ok(()) => break,
                    Err(_) if attempt == 0 => *running = None,
                    Err(e) => return Err(HostError::io("asking the zygote for a helper", e)),
                }
            }
        }
        drop(helper_end);
        match receive(&channel)? {
            HelperMessage::Forked { pid, in_cgroup } => Ok(Helper {
                pid,
                in_cgroup,
                channel,
            }),
            HelperMessage::Failed { kind, message } => Err(protocol::host_error(kind, message)),
            other => Err(HostError::Unexpected(format!(
                "unexpected message from the init helper: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_kernel_without_clone_into_cgroup_turns_the_zygote_to_plain_forks() {
        // What kernels before 5.7 answer: no clone3, or a struct or flag they do not know.
        for unknown in [Errno::ENOSYS, Errno::E2BIG, Errno::EINVAL] {
            assert!(lacks_clone_into_cgroup(unknown), "{unknown}");
        }
        // Refusals of this fork by a kernel that has the flag fail the start instead.
        for refusal in [
            Errno::EBUSY,
            Errno::EACCES,
            Errno::EBADF,
            Errno::ENODEV,
            Errno::EAGAIN,
            Errno::ENOMEM,
            Errno::EOPNOTSUPP,
        ] {
            assert!(!lacks_clone_into_cgroup(refusal), "{refusal}");
        }
    }
}

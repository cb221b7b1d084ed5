//! What a child forked by the container's init does: become the requested process (user,
//! groups, env, working dir, rlimits, stdio or TTY, then exec), or carry out a file stream as
//! the requested user. Runs inside every namespace of the container with its root as `/`, so
//! every path resolves inside the container.
//!
//! Failures before the exec are written to the report pipe (`kind byte + message`) and the
//! child exits; a successful exec closes the pipe (it is close-on-exec), which init reads as
//! "started".
//!
//! Before it changes directory the child closes every descriptor but its stdio and the report
//! pipe, and afterwards checks that its working directory is inside the container: a leaked
//! directory descriptor named as the working directory (`/proc/self/fd/N`) is how
//! CVE-2024-21626 escaped runc. Runs under the container's seccomp filter (unprivileged), so it
//! uses only syscalls the filter allows (no `close_range`).

use super::protocol::Failure;
use crate::linux::security::capabilities;
use crate::users::{self, ExecUser};
use nix::sys::signal::{sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{Gid, Uid};
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use trellis_core::api::{ProcessSpec, ResourceLimits};

/// Writes the failure to the report pipe and ends the child.
pub(super) fn fail(report: &OwnedFd, failure: Failure) -> ! {
    // Written through the borrowed descriptor: a dup could fail (EMFILE), and a panic in a
    // forked child must never happen.
    let bytes = failure.encode();
    // SAFETY: write(2) from a buffer we own to a descriptor we hold.
    let _ = unsafe { libc::write(report.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: ending a forked child without running the parent's destructors or atexit hooks.
    unsafe { libc::_exit(127) }
}

/// Undoes what init changed for itself: blocked signals, ignored SIGPIPE (Rust's runtime).
pub(super) fn reset_signals() {
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions in a single-threaded child.
            let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
        }
    }
}

/// The stdio a process gets.
pub(super) enum ChildStdio {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Tty {
        slave: OwnedFd,
    },
}

pub(super) fn resolve_user(user: &str) -> Result<ExecUser, Failure> {
    users::resolve(Path::new("/"), user).map_err(Failure::invalid)
}

/// `dir` inside the container: absolute, or relative to `/` (gdn) / to `home` (files).
fn absolute(dir: &str, base: &str) -> PathBuf {
    if dir.starts_with('/') {
        PathBuf::from(dir)
    } else {
        Path::new(base).join(dir)
    }
}

/// Creates every missing component of `dir` (mode 0755) owned by the user, following
/// symlinks, even where the user could not write the parent.
fn make_dir_owned(dir: &Path, uid: u32, gid: u32) -> Result<(), Failure> {
    let mut missing = Vec::new();
    let mut cur = dir.to_path_buf();
    while std::fs::metadata(&cur).is_err() {
        missing.push(cur.clone());
        match cur.parent() {
            Some(p) => cur = p.to_path_buf(),
            None => break,
        }
    }
    for path in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(0o755).create(path) {
            Ok(()) => {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .map_err(|e| Failure::failed(format!("chown {}: {e}", path.display())))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(Failure::failed(format!(
                    "creating working directory {}: {e}",
                    path.display()
                )))
            }
        }
    }
    Ok(())
}

/// Go's `exec.LookPath` as runc uses it, with the process's own PATH.
fn look_path(file: &str, path_var: &str) -> Result<PathBuf, Failure> {
    let prefix = "exec failed: unable to start container process: exec:";
    if file.contains('/') {
        return match std::fs::metadata(file) {
            Ok(_) => Ok(PathBuf::from(file)),
            Err(e) => Err(Failure::not_found(format!(
                "{prefix} {file:?}: stat {file}: {}",
                io_text(&e)
            ))),
        };
    }
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(file);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(Failure::not_found(format!(
        "{prefix} {file:?}: executable file not found in $PATH"
    )))
}

/// An io error as Go prints it: lowercase text, no "(os error N)".
fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_lowercase(),
        None => e.to_string(),
    }
}

fn rlimits(limits: &ResourceLimits) -> Vec<(nix::sys::resource::Resource, u64, &'static str)> {
    use nix::sys::resource::Resource::*;
    [
        (RLIMIT_AS, limits.address_space, "as"),
        (RLIMIT_CORE, limits.core, "core"),
        (RLIMIT_CPU, limits.cpu, "cpu"),
        (RLIMIT_DATA, limits.data, "data"),
        (RLIMIT_FSIZE, limits.fsize, "fsize"),
        (RLIMIT_LOCKS, limits.locks, "locks"),
        (RLIMIT_MEMLOCK, limits.memlock, "memlock"),
        (RLIMIT_MSGQUEUE, limits.msgqueue, "msgqueue"),
        (RLIMIT_NICE, limits.nice, "nice"),
        (RLIMIT_NOFILE, limits.nofile, "nofile"),
        (RLIMIT_NPROC, limits.nproc, "nproc"),
        (RLIMIT_RSS, limits.rss, "rss"),
        (RLIMIT_RTPRIO, limits.rtprio, "rtprio"),
        (RLIMIT_SIGPENDING, limits.sigpending, "sigpending"),
        (RLIMIT_STACK, limits.stack, "stack"),
    ]
    .into_iter()
    .filter_map(|(r, v, name)| v.map(|v| (r, v, name)))
    .collect()
}

/// Switches to the user: supplementary groups always (so the server's never leak), then gid,
/// then uid.
pub(super) fn become_user(user: &ExecUser) -> Result<(), Failure> {
    let groups: Vec<Gid> = user
        .supplementary_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| Failure::failed(format!("setgroups: {e}")))?;
    nix::unistd::setgid(Gid::from_raw(user.gid))
        .map_err(|e| Failure::failed(format!("setgid {}: {e}", user.gid)))?;
    nix::unistd::setuid(Uid::from_raw(user.uid))
        .map_err(|e| Failure::failed(format!("setuid {}: {e}", user.uid)))?;
    Ok(())
}

fn cstring(s: &str) -> Result<CString, Failure> {
    CString::new(s).map_err(|_| Failure::invalid(format!("argument contains a NUL byte: {s:?}")))
}

fn dup_onto(fd: RawFd, target: RawFd) -> Result<(), Failure> {
    // SAFETY: dup2 onto a stdio slot; the old descriptor there (init's /dev/null) is ours.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(Failure::failed(format!(
            "dup2: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Becomes the process described by `spec`. Never returns.
pub(super) fn exec_process(
    spec: &ProcessSpec,
    base_env: &[String],
    stdio: ChildStdio,
    report: OwnedFd,
    privileged: bool,
) -> ! {
    match prepare_and_exec(spec, base_env, stdio, report.as_raw_fd(), privileged) {
        Ok(never) => match never {},
        Err(failure) => fail(&report, failure),
    }
}

enum Never {}

fn prepare_and_exec(
    spec: &ProcessSpec,
    base_env: &[String],
    stdio: ChildStdio,
    report: RawFd,
    privileged: bool,
) -> Result<Never, Failure> {
    reset_signals();
    nix::unistd::setsid().map_err(|e| Failure::failed(format!("setsid: {e}")))?;
    let user = resolve_user(&spec.user)?;
    let env = users::build_env(base_env, &spec.env, &spec.user, &user);
    for entry in &env {
        if !entry.contains('=') || entry.starts_with('=') {
            return Err(Failure::invalid(format!(
                "invalid environment variable {entry:?}: must be KEY=VALUE"
            )));
        }
    }
    let dir = if spec.dir.is_empty() {
        PathBuf::from(&user.home)
    } else {
        absolute(&spec.dir, "/")
    };
    make_dir_owned(&dir, user.uid, user.gid)?;
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or_default();
    let program = look_path(&spec.path, path_var)?;

    match &stdio {
        ChildStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            // A non-root user must be able to reopen its stdio through /dev/stdin etc.
            for fd in [stdin, stdout, stderr] {
                nix::unistd::fchown(
                    fd,
                    Some(Uid::from_raw(user.uid)),
                    Some(Gid::from_raw(user.gid)),
                )
                .map_err(|e| Failure::failed(format!("chown stdio: {e}")))?;
            }
            dup_onto(stdin.as_raw_fd(), 0)?;
            dup_onto(stdout.as_raw_fd(), 1)?;
            dup_onto(stderr.as_raw_fd(), 2)?;
        }
        ChildStdio::Tty { slave } => {
            nix::unistd::fchown(slave, Some(Uid::from_raw(user.uid)), None)
                .map_err(|e| Failure::failed(format!("chown tty: {e}")))?;
            // SAFETY: TIOCSCTTY on our own terminal fd, after setsid.
            if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
                return Err(Failure::failed(format!(
                    "setting the controlling terminal: {}",
                    std::io::Error::last_os_error()
                )));
            }
            for target in 0..3 {
                dup_onto(slave.as_raw_fd(), target)?;
            }
        }
    }
    drop(stdio);

    for (resource, value, name) in rlimits(&spec.rlimits) {
        nix::sys::resource::setrlimit(resource, value, value)
            .map_err(|e| Failure::failed(format!("setting rlimit {name} to {value}: {e}")))?;
    }
    // Nothing of init's may reach the process (the report pipe closes on exec).
    close_all_except(&[report]);
    std::env::set_current_dir(&dir).map_err(|e| {
        Failure::failed(format!("chdir to working directory {}: {e}", dir.display()))
    })?;
    check_cwd_inside()?;
    if privileged {
        let last_cap = capabilities::last_cap()
            .map_err(|e| Failure::failed(format!("reading cap_last_cap: {e}")))?;
        capabilities::apply(capabilities::for_process(true, user.uid == 0), last_cap)
            .map_err(|e| Failure::failed(format!("setting capabilities: {e}")))?;
    }
    become_user(&user)?;

    let argv: Vec<CString> = std::iter::once(spec.path.as_str())
        .chain(spec.args.iter().map(String::as_str))
        .map(cstring)
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
    let program_c = CString::new(program.as_os_str().as_bytes())
        .map_err(|_| Failure::invalid("program path contains a NUL byte"))?;
    let err = nix::unistd::execve(&program_c, &argv, &envp).unwrap_err();
    let text = io_text(&std::io::Error::from(err));
    let message = format!(
        "exec failed: unable to start container process: exec: {:?}: {text}",
        spec.path
    );
    Err(if err == nix::errno::Errno::ENOENT {
        Failure::not_found(message)
    } else {
        Failure::failed(message)
    })
}

/// Resolves a files-API path: absolute, or relative to the user's home.
pub(super) fn user_path(path: &str, user: &ExecUser) -> PathBuf {
    absolute(path, &user.home)
}

/// Closes every descriptor but stdio and `keep`, listed from /proc/self/fd (a file-stream or
/// process child must hold nothing else of init's: the control socket, other processes' pipes).
pub(super) fn close_all_except(keep: &[RawFd]) {
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect(),
        Err(_) => return,
    };
    for fd in open.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: closing descriptors this child owns; nothing refers to them afterwards (the
        // listing's own descriptor is already closed and fails harmlessly).
        unsafe { libc::close(fd) };
    }
}

/// The working directory must be inside the container's root: the kernel prefixes a path it
/// cannot reach from the root with "(unreachable)".
fn check_cwd_inside() -> Result<(), Failure> {
    let cwd = nix::unistd::getcwd()
        .map_err(|e| Failure::failed(format!("the working directory is unreachable: {e}")))?;
    if !cwd.as_os_str().as_bytes().starts_with(b"/") {
        return Err(Failure::failed(format!(
            "the working directory {} is outside the container",
            cwd.display()
        )));
    }
    Ok(())
}

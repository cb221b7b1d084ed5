//! The container's init: the helper the zygote forks for `StartInit`, and the PID 1 it forks
//! inside the new namespaces.
//!
//! The helper (single-threaded, forked from the zygote, as host root) reports its pid, binds
//! the control socket, and clones what the container needs from the host (`HostSources`).
//! Once the server has moved it into the container's cgroups it enters the namespaces: for an unprivileged
//! container first its user namespace (the owner of its network namespace) as container root,
//! so every namespace made after is owned by it; then the network namespace; then it unshares
//! UTS, IPC, PID and cgroup namespaces and forks. The child is PID 1: it makes its mount
//! namespace, builds the filesystem view, drops to the container's capabilities and seccomp
//! filter (unprivileged), names itself `garden-init`, reports readiness and serves requests.
//! The helper reports init's pid (the server records it) and exits; init lives on without the
//! server.
//!
//! Init's loop reaps every child (orphans included), starts processes and file streams as
//! children of its own (so they share every namespace, its cgroup, its capabilities and its
//! seccomp filter), signals them on request, reports their exit statuses, and keeps the read
//! ends of their output pipes so that output survives a server restart instead of killing the
//! writer with SIGPIPE. Under the seccomp filter init uses only syscalls the filter allows.

use super::child::{exec_process, ChildStdio, Failure};
use super::files;
use super::mounts::{self, HostSources, InitSpec};
use super::protocol::{self, FailureKind, Reply, Request};
use super::zygote::HelperMessage;
use crate::linux::security::{capabilities, userns, Confinement};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

const SOCKET_NAME: &str = "init.sock";

/// A helper forked by the zygote for one container (see `zygote`): reports to the server on
/// `channel`, and returns its exit code.
pub fn helper_main(spec: &InitSpec, channel: OwnedFd) -> i32 {
    let report = |message: &HelperMessage| {
        let _ = protocol::send(channel.as_raw_fd(), message, &[]);
    };
    match run_helper(spec, &channel) {
        Ok(init) => {
            report(&HelperMessage::Ready { init });
            0
        }
        Err(message) => {
            report(&HelperMessage::Failed { message });
            1
        }
    }
}

fn run_helper(spec: &InitSpec, channel: &OwnedFd) -> Result<i32, String> {
    protocol::send(
        channel.as_raw_fd(),
        &HelperMessage::Forked {
            pid: nix::unistd::getpid().as_raw(),
        },
        &[],
    )
    .map_err(|e| format!("reporting to the server: {e}"))?;

    std::env::set_current_dir(&spec.container_dir)
        .map_err(|e| format!("entering {}: {e}", spec.container_dir.display()))?;
    let _ = std::fs::remove_file(SOCKET_NAME);
    let listener = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(SOCKET_NAME).map_err(|e| format!("socket address: {e}"))?;
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = socket::bind(listener.as_raw_fd(), &addr);
    nix::sys::stat::umask(old_umask);
    bound.map_err(|e| format!("binding the init socket: {e}"))?;
    socket::listen(&listener, socket::Backlog::new(128).expect("backlog"))
        .map_err(|e| format!("listen: {e}"))?;

    // Everything from the host, while we are still host root; init starts in the rootfs.
    let sources = HostSources::open(spec)?;
    std::env::set_current_dir(&spec.rootfs)
        .map_err(|e| format!("entering {}: {e}", spec.rootfs.display()))?;
    // Every namespace and process made from here on must start in the container's cgroups.
    let mut buf = Vec::new();
    match protocol::recv::<HelperMessage>(channel.as_raw_fd(), &mut buf) {
        Ok(Some((HelperMessage::Placed, _))) => {}
        _ => return Err("the server gave up on this container start".into()),
    }
    let own_netns = enter_namespaces(spec)?;
    unshare(
        CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| format!("unshare: {e}"))?;

    let (ready_r, ready_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("opening /dev/null: {e}"))?;
    // SAFETY: this helper is single-threaded.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(ready_r);
            // Init must hold nothing of the server's: stdio goes to /dev/null, and the
            // helper's channel to the server closes.
            for target in 0..3 {
                // SAFETY: replacing our own stdio descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), target) };
            }
            drop(null);
            // SAFETY: closing our copy of the channel; nothing else here uses it.
            unsafe { libc::close(channel.as_raw_fd()) };
            let code = init_main(spec, sources, listener, ready_w, own_netns);
            // SAFETY: ending the forked child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(listener);
            drop(sources);
            let mut status = Vec::new();
            let _ = std::fs::File::from(ready_r).read_to_end(&mut status);
            if status != b"ok" {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                let message = String::from_utf8_lossy(&status).into_owned();
                return Err(if message.is_empty() {
                    "container init died while starting".to_string()
                } else {
                    message
                });
            }
            Ok(child.as_raw())
        }
    }
}

/// Joins the container's network namespace, and for an unprivileged container first its user
/// namespace (the network namespace's owner) as container root. Without a network namespace
/// to join, makes fresh ones; returns whether it did (init then brings loopback up).
fn enter_namespaces(spec: &InitSpec) -> Result<bool, String> {
    let netns = match &spec.netns {
        Some(path) if path.exists() => Some(
            std::fs::File::open(path)
                .map_err(|e| format!("opening network namespace {}: {e}", path.display()))?,
        ),
        _ => None,
    };
    match &spec.confinement {
        Confinement::Unprivileged { id_mapping } => {
            let (user, net, own) = match netns {
                Some(net) => {
                    let user = userns::owner_of(net.as_fd())
                        .map_err(|e| format!("finding the network namespace's owner: {e}"))?;
                    if userns::is_own_user_namespace(user.as_fd()).map_err(|e| e.to_string())? {
                        return Err("the network namespace of an unprivileged container is \
                                    owned by the host's user namespace"
                            .into());
                    }
                    (user, OwnedFd::from(net), false)
                }
                None => {
                    let made = userns::new_namespaces(id_mapping, true)
                        .map_err(|e| format!("making user and network namespaces: {e}"))?;
                    (
                        made.user,
                        made.net.expect("asked for a network namespace"),
                        true,
                    )
                }
            };
            setns(user.as_fd(), CloneFlags::CLONE_NEWUSER)
                .map_err(|e| format!("joining the user namespace: {e}"))?;
            setns(net.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("joining the network namespace: {e}"))?;
            // Container root, so that what init creates is owned by it.
            nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
            let root_gid = nix::unistd::Gid::from_raw(0);
            let root_uid = nix::unistd::Uid::from_raw(0);
            nix::unistd::setresgid(root_gid, root_gid, root_gid)
                .map_err(|e| format!("becoming container root (gid): {e}"))?;
            nix::unistd::setresuid(root_uid, root_uid, root_uid)
                .map_err(|e| format!("becoming container root (uid): {e}"))?;
            Ok(own)
        }
        Confinement::Privileged => match netns {
            Some(net) => {
                let owner = userns::owner_of(net.as_fd())
                    .map_err(|e| format!("finding the network namespace's owner: {e}"))?;
                if !userns::is_own_user_namespace(owner.as_fd()).map_err(|e| e.to_string())? {
                    return Err(
                        "the network namespace of a privileged container is owned by \
                                another user namespace"
                            .into(),
                    );
                }
                setns(net.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("joining the network namespace: {e}"))?;
                Ok(false)
            }
            None => {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare net: {e}"))?;
                Ok(true)
            }
        },
    }
}

fn init_main(
    spec: &InitSpec,
    sources: HostSources,
    listener: OwnedFd,
    ready: OwnedFd,
    own_netns: bool,
) -> i32 {
    let mut ready = std::fs::File::from(ready);
    let _ = nix::unistd::setsid();
    let setup = (|| {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
        if own_netns {
            mounts::loopback_up()?;
        }
        mounts::build(spec, sources)?;
        confine_init(spec)?;
        set_name("garden-init");
        Ok::<_, String>(())
    })();
    if let Err(message) = setup {
        let _ = ready.write_all(message.as_bytes());
        return 1;
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if mask.thread_block().is_err() {
        let _ = ready.write_all(b"blocking SIGCHLD failed");
        return 1;
    }
    let sigfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = ready.write_all(format!("signalfd: {e}").as_bytes());
            return 1;
        }
    };
    let _ = ready.write_all(b"ok");
    drop(ready);
    Init {
        listener,
        sigfd,
        privileged: spec.confinement.is_privileged(),
        waiting: Vec::new(),
        children: HashMap::new(),
        buf: Vec::new(),
    }
    .serve()
}

/// An unprivileged init ends its setup with the container's seccomp filter (installed while it
/// still may) and capabilities; everything it forks inherits both. A privileged init keeps its
/// capabilities: each process narrows its own by its user.
fn confine_init(spec: &InitSpec) -> Result<(), String> {
    if spec.confinement.is_privileged() {
        return Ok(());
    }
    let last_cap = capabilities::last_cap().map_err(|e| format!("reading cap_last_cap: {e}"))?;
    if spec.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } < 0 {
            return Err(format!(
                "setting no_new_privs: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    spec.seccomp
        .as_ref()
        .ok_or("an unprivileged container needs its seccomp profile")?
        .install()
        .map_err(|e| e.to_string())?;
    capabilities::apply(capabilities::for_unprivileged_init(), last_cap)
        .map_err(|e| format!("dropping capabilities: {e}"))
}

fn set_name(name: &str) {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

enum Kind {
    Process { id: String },
    Job,
}

/// A child of init: a process or a file stream.
struct Child {
    kind: Kind,
    /// The connection that asked for it; answered when it starts and when it ends.
    conn: Option<OwnedFd>,
    /// Read end of the close-on-exec report pipe, until EOF.
    report: Option<OwnedFd>,
    failure: Vec<u8>,
    status: Option<i32>,
    /// Sent with `Spawned`.
    reply_fds: Vec<OwnedFd>,
    /// Init's own copies of the output read ends.
    kept: Vec<OwnedFd>,
    announced: bool,
}

struct Init {
    listener: OwnedFd,
    sigfd: SignalFd,
    /// Processes narrow their capabilities by their user (see `child`).
    privileged: bool,
    /// Accepted connections whose request has not arrived yet.
    waiting: Vec<OwnedFd>,
    children: HashMap<i32, Child>,
    buf: Vec<u8>,
}

impl Init {
    fn serve(mut self) -> i32 {
        loop {
            let mut fds: Vec<PollFd> = Vec::new();
            fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN));
            let waiting: Vec<RawFd> = self.waiting.iter().map(|f| f.as_raw_fd()).collect();
            let reports: Vec<(i32, RawFd)> = self
                .children
                .iter()
                .filter_map(|(pid, c)| c.report.as_ref().map(|r| (*pid, r.as_raw_fd())))
                .collect();
            // SAFETY: the descriptors stay open until the poll returns.
            for raw in waiting.iter().chain(reports.iter().map(|(_, r)| r)) {
                fds.push(PollFd::new(
                    unsafe { BorrowedFd::borrow_raw(*raw) },
                    PollFlags::POLLIN,
                ));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => continue,
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            if ready[1] {
                self.reap();
            }
            for (i, raw) in waiting.iter().enumerate() {
                if ready[2 + i] {
                    self.take_request(*raw);
                }
            }
            for (i, (pid, _)) in reports.iter().enumerate() {
                if ready[2 + waiting.len() + i] {
                    self.read_report(*pid);
                }
            }
            if ready[0] {
                if let Ok(conn) = socket::accept4(&self.listener, SockFlag::SOCK_CLOEXEC) {
                    self.waiting.push(conn);
                }
            }
        }
    }

    fn reap(&mut self) {
        while self.sigfd.read_signal().ok().flatten().is_some() {}
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }

    fn exited(&mut self, pid: i32, status: i32) {
        if let Some(child) = self.children.get_mut(&pid) {
            child.status = Some(status);
            self.progress(pid);
        }
    }

    fn read_report(&mut self, pid: i32) {
        let Some(child) = self.children.get_mut(&pid) else {
            return;
        };
        let Some(report) = child.report.as_ref() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        match nix::unistd::read(report, &mut chunk) {
            Ok(0) | Err(_) => {
                child.report = None;
                self.progress(pid);
            }
            Ok(n) => child.failure.extend_from_slice(&chunk[..n]),
        }
    }

    /// Answers the requester as far as the child's state allows, and forgets finished children.
    fn progress(&mut self, pid: i32) {
        let Some(child) = self.children.get_mut(&pid) else {
            return;
        };
        if child.report.is_some() {
            return;
        }
        let failure = (!child.failure.is_empty()).then(|| Failure::decode(&child.failure));
        let done = match (&child.kind, failure) {
            (Kind::Process { .. }, Some(f)) => {
                if !child.announced {
                    child.announced = true;
                    reply(
                        &child.conn,
                        &Reply::Failed {
                            kind: f.kind,
                            message: f.message,
                        },
                        &[],
                    );
                    child.conn = None;
                    child.kept.clear();
                    child.reply_fds.clear();
                }
                child.status.is_some()
            }
            (Kind::Process { .. }, None) => {
                if !child.announced {
                    child.announced = true;
                    let fds: Vec<RawFd> = child.reply_fds.iter().map(|f| f.as_raw_fd()).collect();
                    if !reply(&child.conn, &Reply::Spawned, &fds) {
                        child.conn = None;
                    }
                    child.reply_fds.clear();
                }
                match child.status {
                    Some(status) => {
                        if reply(&child.conn, &Reply::Exited { status }, &[]) {
                            child.kept.clear();
                        }
                        child.conn = None;
                        // Output no server has collected stays readable through `kept`.
                        child.kept.is_empty()
                    }
                    None => false,
                }
            }
            (Kind::Job, failure) => match child.status {
                Some(status) => {
                    let message = match failure {
                        Some(f) => Reply::Failed {
                            kind: f.kind,
                            message: f.message,
                        },
                        None if status == 0 => Reply::Done,
                        None => Reply::Failed {
                            kind: FailureKind::Failed,
                            message: format!("file stream ended with status {status}"),
                        },
                    };
                    reply(&child.conn, &message, &[]);
                    true
                }
                None => false,
            },
        };
        if done {
            self.children.remove(&pid);
        }
    }

    fn take_request(&mut self, raw: RawFd) {
        let Some(pos) = self.waiting.iter().position(|f| f.as_raw_fd() == raw) else {
            return;
        };
        let conn = self.waiting.swap_remove(pos);
        let (request, fds) = match protocol::recv::<Request>(conn.as_raw_fd(), &mut self.buf) {
            Ok(Some(r)) => r,
            _ => return,
        };
        match request {
            Request::Spawn { id, spec, env } => self.spawn(conn, id, &spec, &env),
            Request::Signal { id, signal } => {
                self.reap();
                let target = self.children.iter().find_map(|(pid, c)| match &c.kind {
                    Kind::Process { id: cid } if *cid == id && c.status.is_none() => Some(*pid),
                    _ => None,
                });
                if let (Some(pid), Ok(sig)) = (target, Signal::try_from(signal)) {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                }
                reply(&Some(conn), &Reply::Done, &[]);
            }
            Request::SignalAll { signal } => {
                if signal != 0 {
                    if let Ok(sig) = Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(-1), sig);
                    }
                }
                self.reap();
                let count = live_processes();
                reply(&Some(conn), &Reply::Remaining { count }, &[]);
            }
            Request::List => {
                let ids = self
                    .children
                    .values()
                    .filter(|c| c.status.is_none())
                    .filter_map(|c| match &c.kind {
                        Kind::Process { id } => Some(id.clone()),
                        Kind::Job => None,
                    })
                    .collect();
                reply(&Some(conn), &Reply::Ids(ids), &[]);
            }
            Request::StreamIn { .. } | Request::StreamOut { .. } => self.job(conn, request, fds),
        }
    }

    fn spawn(
        &mut self,
        conn: OwnedFd,
        id: String,
        spec: &trellis_core::api::ProcessSpec,
        env: &[String],
    ) {
        let fail = |conn: OwnedFd, message: String| {
            reply(
                &Some(conn),
                &Reply::Failed {
                    kind: FailureKind::Failed,
                    message,
                },
                &[],
            );
        };
        let (child_stdio, reply_fds, kept) = match make_stdio(spec) {
            Ok(s) => s,
            Err(message) => return fail(conn, message),
        };
        let (report_r, report_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return fail(conn, format!("pipe: {e}")),
        };
        // SAFETY: init is single-threaded.
        match unsafe { fork() } {
            Err(e) => fail(conn, format!("fork: {e}")),
            Ok(ForkResult::Child) => {
                drop(report_r);
                exec_process(spec, env, child_stdio, report_w, self.privileged)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(child_stdio);
                drop(report_w);
                self.children.insert(
                    child.as_raw(),
                    Child {
                        kind: Kind::Process { id },
                        conn: Some(conn),
                        report: Some(report_r),
                        failure: Vec::new(),
                        status: None,
                        reply_fds,
                        kept,
                        announced: false,
                    },
                );
            }
        }
    }

    fn job(&mut self, conn: OwnedFd, request: Request, mut fds: Vec<OwnedFd>) {
        let fail = |conn: OwnedFd, message: String| {
            reply(
                &Some(conn),
                &Reply::Failed {
                    kind: FailureKind::Failed,
                    message,
                },
                &[],
            );
        };
        let Some(data) = fds.pop() else {
            return fail(conn, "a file stream needs its data pipe".to_string());
        };
        let (report_r, report_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return fail(conn, format!("pipe: {e}")),
        };
        // SAFETY: init is single-threaded.
        match unsafe { fork() } {
            Err(e) => fail(conn, format!("fork: {e}")),
            Ok(ForkResult::Child) => {
                drop(report_r);
                super::child::close_all_except(&[data.as_raw_fd(), report_w.as_raw_fd()]);
                match request {
                    Request::StreamIn { path, user } => {
                        files::stream_in(&path, &user, data, report_w)
                    }
                    Request::StreamOut { path, user } => {
                        files::stream_out(&path, &user, data, report_w)
                    }
                    // SAFETY: ending a forked child.
                    _ => unsafe { libc::_exit(2) },
                }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(data);
                drop(report_w);
                self.children.insert(
                    child.as_raw(),
                    Child {
                        kind: Kind::Job,
                        conn: Some(conn),
                        report: Some(report_r),
                        failure: Vec::new(),
                        status: None,
                        reply_fds: Vec::new(),
                        kept: Vec::new(),
                        announced: false,
                    },
                );
            }
        }
    }
}

/// Pipes (or a pty) for a new process: what the child gets, what the server gets, what init
/// keeps.
fn make_stdio(
    spec: &trellis_core::api::ProcessSpec,
) -> Result<(ChildStdio, Vec<OwnedFd>, Vec<OwnedFd>), String> {
    if let Some(tty) = &spec.tty {
        let master = nix::fcntl::open(
            "/dev/ptmx",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("opening /dev/ptmx: {e}"))?;
        // SAFETY: unlockpt/ptsname_r on a pty master we own.
        let name = unsafe {
            if libc::unlockpt(master.as_raw_fd()) != 0 {
                return Err(format!("unlockpt: {}", std::io::Error::last_os_error()));
            }
            let mut buf = [0 as libc::c_char; 64];
            if libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) != 0 {
                return Err(format!("ptsname: {}", std::io::Error::last_os_error()));
            }
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        };
        let slave = nix::fcntl::open(
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("opening {name}: {e}"))?;
        let size = tty.window_size.unwrap_or_default();
        super::set_window_size(master.as_fd(), size.columns, size.rows)
            .map_err(|e| format!("setting the window size: {e}"))?;
        let kept = master.try_clone().map_err(|e| format!("dup: {e}"))?;
        Ok((ChildStdio::Tty { slave }, vec![master], vec![kept]))
    } else {
        let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&out_w, &err_w] {
            // Bigger pipes: far fewer wake-ups for a process that writes a lot.
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        }
        let kept = vec![
            out_r.try_clone().map_err(|e| format!("dup: {e}"))?,
            err_r.try_clone().map_err(|e| format!("dup: {e}"))?,
        ];
        Ok((
            ChildStdio::Pipes {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
            vec![in_w, out_r, err_r],
            kept,
        ))
    }
}

/// Sends `message` if the connection is there; false when it could not be delivered.
fn reply(conn: &Option<OwnedFd>, message: &Reply, fds: &[RawFd]) -> bool {
    match conn {
        Some(c) => protocol::send(c.as_raw_fd(), message, fds).is_ok(),
        None => false,
    }
}

/// Processes in this PID namespace other than init, not counting zombies.
fn live_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| *pid != 1)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .map(|zombie| !zombie)
                .unwrap_or(false)
        })
        .count()
}

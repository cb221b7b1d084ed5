//! The container's init: the helper the zygote forks for `StartInit`, and the PID 1 it forks
//! inside the new namespaces.
//!
//! The helper (single-threaded, forked from the zygote, as host root) reports its pid, binds
//! the control socket, and clones what the container needs from the host (`HostSources`).
//! Once it is in the container's cgroups (forked there, or moved: see `zygote`) it enters
//! the namespaces: for an unprivileged container first its user namespace (the owner of its
//! network namespace) as container root, so every namespace made after is owned by it; then
//! the network namespace; then it unshares UTS, IPC, PID and (unprivileged only) cgroup
//! namespaces and forks. The child is PID 1: it makes its mount namespace, builds the
//! filesystem view, drops to the container's capabilities and seccomp
//! filter (unprivileged), names itself `garden-init`, reports readiness and serves requests.
//! The helper reports init's pid (the server records it) and exits; init lives on without the
//! server.
//!
//! Init's loop reaps every child (orphans included), starts processes and file streams as
//! children of its own (so they share every namespace, its cgroup, its capabilities and its
//! seccomp filter), signals them on request, reports their exit statuses, and keeps the read
//! ends of their output pipes so that output survives a server restart instead of killing the
//! writer with SIGPIPE. Under the seccomp filter init uses only syscalls the filter allows.

use super::keeper::{Keeper, PreForked, PEA_KEEPER_NAME};
use super::mounts::{self, HostSources, InitSpec};
use super::protocol::{self, Failure, HelperMessage};
use crate::linux::security::{capabilities, userns, Confinement};
use nix::fcntl::OFlag;
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const SOCKET_NAME: &str = "init.sock";

/// What init writes to its ready pipe once it serves; anything else is an encoded `Failure`.
const READY: &[u8] = b"ok";

/// A helper forked by the zygote for one container (see `zygote`; `in_cgroup`: forked
/// straight into the container's cgroup): reports to the server on `channel`, and returns its
/// exit code.
pub fn helper_main(spec: &InitSpec, channel: OwnedFd, in_cgroup: bool) -> i32 {
    let report = |message: &HelperMessage| {
        let _ = protocol::send(channel.as_raw_fd(), message, &[]);
    };
    match run_helper(spec, &channel, in_cgroup) {
        Ok(init) => {
            report(&HelperMessage::Ready { init });
            0
        }
        Err(Failure { kind, message }) => {
            report(&HelperMessage::Failed { kind, message });
            1
        }
    }
}

fn run_helper(spec: &InitSpec, channel: &OwnedFd, in_cgroup: bool) -> Result<i32, Failure> {
    protocol::send(
        channel.as_raw_fd(),
        &HelperMessage::Forked {
            pid: nix::unistd::getpid().as_raw(),
            in_cgroup,
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
    for tasks in &spec.cgroup_tasks {
        crate::linux::cgroup::move_self_into(tasks)
            .map_err(|e| format!("joining the container's cgroup: {e}"))?;
    }
    let mut buf = Vec::new();
    match protocol::recv::<HelperMessage>(channel.as_raw_fd(), &mut buf) {
        Ok(Some((HelperMessage::Placed, _))) => {}
        _ => return Err("the server gave up on this container start".into()),
    }
    // A pea's keeper opens the container's namespaces while it is still host root: those it
    // joins, and the mount namespace it returns to once the pea's process is forked.
    let (joined, container_mnt) = match spec.join {
        Some(init) => {
            let mnt = std::fs::File::open(format!("/proc/{init}/ns/mnt"))
                .map_err(|e| format!("opening the container's mount namespace: {e}"))?;
            (Some(open_namespaces_of(init)?), Some(OwnedFd::from(mnt)))
        }
        None => (None, None),
    };
    let own_netns = enter_namespaces(spec)?;
    match joined {
        Some(namespaces) => {
            for (ns, kind) in namespaces {
                setns(ns.as_fd(), kind).map_err(|e| format!("joining a namespace: {e}"))?;
            }
        }
        None => {
            // A privileged container shares the host's cgroup namespace, as guardian's do: it
            // sees its cgroup's real path, so it can mount a hierarchy and manage its own
            // cgroup (nested Garden).
            let mut namespaces =
                CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID;
            if !spec.confinement.is_privileged() {
                namespaces |= CloneFlags::CLONE_NEWCGROUP;
            }
            unshare(namespaces).map_err(|e| format!("unshare: {e}"))?;
        }
    }

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
            let code = init_main(spec, sources, listener, ready_w, own_netns, container_mnt);
            // SAFETY: ending the forked child.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            drop(listener);
            drop(sources);
            drop(container_mnt);
            let mut status = Vec::new();
            let _ = std::fs::File::from(ready_r).read_to_end(&mut status);
            if status != READY {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(if status.is_empty() {
                    "container init died while starting".into()
                } else {
                    Failure::decode(&status)
                });
            }
            Ok(child.as_raw())
        }
    }
}

/// The UTS, IPC, PID and cgroup namespaces of the container's init, for a pea to join.
fn open_namespaces_of(init: i32) -> Result<Vec<(OwnedFd, CloneFlags)>, String> {
    [
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ]
    .into_iter()
    .map(|(name, kind)| {
        std::fs::File::open(format!("/proc/{init}/ns/{name}"))
            .map(|f| (OwnedFd::from(f), kind))
            .map_err(|e| format!("opening the container's {name} namespace: {e}"))
    })
    .collect()
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
    container_mnt: Option<OwnedFd>,
) -> i32 {
    let mut ready = std::fs::File::from(ready);
    let _ = nix::unistd::setsid();
    let setup = (|| {
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare mount namespace: {e}"))?;
        if own_netns {
            mounts::loopback_up()?;
        }
        mounts::build(spec, sources)?;
        // A pea's keeper forks its process now, in the pea's mount namespace, and returns to
        // the container's: so only the pea's processes hold the pea's mounts (its root, its
        // /dev/shm), and they go, memory and all, when the pea's processes do.
        let pea = match container_mnt {
            Some(mnt) => {
                let pea = PreForked::fork(|| confine_init(spec), spec.confinement.is_privileged())?;
                setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS)
                    .map_err(|e| format!("returning to the container's mount namespace: {e}"))?;
                nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
                Some(pea)
            }
            None => None,
        };
        confine_init(spec)?;
        if spec.join.is_some() {
            set_name(PEA_KEEPER_NAME);
            // Stop's SIGTERM to every process of the container is for the pea, not its keeper.
            for signal in [
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGHUP,
                Signal::SIGQUIT,
            ] {
                // SAFETY: ignoring signals in a single-threaded process; children reset them.
                let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
            }
        } else {
            set_name("garden-init");
        }
        Ok::<_, Failure>(pea)
    })();
    let mut failed = |failure: Failure| {
        let _ = ready.write_all(&failure.encode());
        1
    };
    let pea = match setup {
        Ok(pea) => pea,
        Err(failure) => return failed(failure),
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if mask.thread_block().is_err() {
        return failed("blocking SIGCHLD failed".into());
    }
    let sigfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return failed(format!("signalfd: {e}").into()),
    };
    let _ = ready.write_all(READY);
    drop(ready);
    let keeper = Keeper::new(listener, sigfd, spec.confinement.is_privileged());
    match pea {
        Some(pea) => keeper.for_one_process(pea).serve(),
        None => keeper.serve(),
    }
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

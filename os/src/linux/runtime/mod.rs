//! The container runtime (the containerizer): init, processes, and files in and out.
//!
//! The server never forks for namespace work. `start_init` asks the zygote (the binary itself,
//! executed once from a sealed in-memory copy with a hidden subcommand) for a single-threaded
//! helper, which forks the container's init inside fresh namespaces. From then on the server
//! talks to init over a unix socket in the container's directory: init forks every process and
//! file stream of the container, so they share all its namespaces and its cgroup, and hands
//! back their stdio. Init outlives the server; a new server finds it by its pid file.
//!
//! Zombies. The server is a child subreaper, so the inits it starts are re-parented to it
//! when their helper exits, and `kill_container` reaps them. After a server restart they
//! belong to whatever adopted them (the machine's PID 1, or the nearest subreaper). A PID 1
//! that reaps (systemd, tini, any real init) leaves nothing; one that does not (some sandbox
//! VMs) keeps a dead init as a zombie. So a zombie counts as dead everywhere: `init_running`
//! and `observe` report it gone (a restarted server cleans up the container), and
//! `kill_container` finds it exited through its pidfd and does not wait for it. A
//! per-container reaper would not help: it would be the orphan that turns zombie instead.
//! Only an ancestor that outlives server restarts can reap (a host-wide reaper process that
//! starts the helpers); until that exists, run the server under an init that reaps.
//!
//! - `zygote`: the process that forks helpers; `init`: the helper and init's request loop;
//!   `mounts`: the container's filesystem view; `child`: what a forked child does before it
//!   execs; `files`: tar streams; `protocol`: the messages.

mod child;
mod files;
pub mod init;
mod keeper;
pub mod mounts;
mod protocol;
pub mod zygote;

use super::cgroup::{CgroupView, Cgroups};
use super::security::{seccomp, Confinement, SecuritySettings};
use super::LinuxConfig;
use crate::host::{FilePath, HostError, HostResult, ProcessIo, ProcessState, SpawnRequest};
use crate::layout::Layout;
use mounts::InitSpec;
use nix::fcntl::OFlag;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};
use protocol::{Reply, Request};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use trellis_core::api::{BindMountOrigin, Signal, WindowSize};
use trellis_core::effect::InitConfig;

pub struct Runtime {
    layout: Layout,
    security: SecuritySettings,
    /// Unprivileged containers' seccomp filter, compiled once.
    seccomp: seccomp::Profile,
    /// Forks the helper of each container start (from a sealed memfd copy of the binary,
    /// executed once).
    zygote: zygote::Zygote,
}

/// How many times a stop sends SIGTERM (each `STOP_ROUND` apart) before it turns to SIGKILL.
const TERM_ROUNDS: u32 = 10;

/// How long a stop waits for the processes to go after each signal.
const STOP_ROUND: Duration = Duration::from_secs(1);

/// A process's output pipes (and a TTY's) hold this much before the process waits: the most
/// the kernel lets a pipe have without CAP_SYS_RESOURCE (fs.pipe-max-size).
const OUTPUT_PIPE_BYTES: i32 = 1 << 20;

impl Runtime {
    pub fn new(config: &LinuxConfig) -> HostResult<Runtime> {
        let source = config
            .helper_binary
            .clone()
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let helper = sealed_copy(&source).map_err(|e| {
            HostError::io(format!("copying {} to a sealed memfd", source.display()), e)
        })?;
        // A container's init is orphaned when its helper exits; as the subreaper we reap it
        // when it dies instead of leaving a zombie to a PID 1 that may not reap.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let seccomp =
            seccomp::Profile::unprivileged().map_err(|e| HostError::Unexpected(e.to_string()))?;
        let zygote = zygote::Zygote::new(helper);
        Ok(Runtime {
            zygote,
            layout: config.layout.clone(),
            security: config.security.clone(),
            seccomp,
        })
    }

    pub fn start_init(
        &self,
        handle: &str,
        config: &InitConfig,
        cgroups: &Cgroups,
    ) -> HostResult<()> {
        if self.init_running(handle) {
            return Ok(());
        }
        let rootfs = self.layout.rootfs_dir(handle);
        if !rootfs.is_dir() {
            return Err(HostError::Unexpected(format!(
                "start init: the root filesystem of {handle} is not prepared"
            )));
        }
        check_bind_sources(
            config
                .bind_mounts
                .iter()
                .filter(|b| b.origin == BindMountOrigin::Host),
        )?;
        let existing = |p: PathBuf| p.exists().then_some(p);
        let spec = InitSpec {
            container_dir: self.layout.container_dir(handle),
            rootfs,
            netns: existing(self.layout.netns_file(handle)),
            hosts_file: existing(self.layout.hosts_file(handle)),
            resolv_conf_file: existing(self.layout.resolv_conf_file(handle)),
            hostname: config.hostname.clone(),
            bind_mounts: config.bind_mounts.clone(),
            confinement: Confinement::new(config.privileged, &self.security),
            cgroup_view: if config.privileged {
                CgroupView::None
            } else {
                cgroups.container_view()
            },
            no_new_privileges: self.security.no_new_privileges && !config.privileged,
            seccomp: (!config.privileged).then(|| self.seccomp.clone()),
            join: None,
            cgroup_tasks: Vec::new(),
        };
        let target = cgroups.exists(handle).then_some((cgroups, handle));
        let helper = self.fork_placed_helper(spec, target)?;
        let pid = helper
            .proceed()
            .map_err(|e| helper_failure("start init", e))?;
        // Init's pid is recorded with its start time, so a reused pid is never taken for it.
        let start = process_start_time(pid)
            .ok_or_else(|| HostError::Unexpected("the container's init vanished".into()))?;
        write_pid_file(&self.layout.init_pid_file(handle), pid, start)
            .map_err(|e| HostError::io("writing the init pid file", e))?;
        Ok(())
    }

    /// Starts the keeper of a pea (`key`: its directory under the container's, see
    /// `peas::key`): in every namespace of the container's init but a mount namespace of its
    /// own over the pea's root filesystem (mounted at `rootfs_dir(key)`), with the container's
    /// /etc/hosts and /etc/resolv.conf and confinement, in the cgroup `cgroup` names (see
    /// `fork_placed_helper`). Processes are then spawned through `key`.
    pub fn start_pea(
        &self,
        handle: &str,
        key: &str,
        bind_mounts: &[trellis_core::api::BindMount],
        cgroups: &Cgroups,
        cgroup: Option<(&Cgroups, &str)>,
    ) -> HostResult<()> {
        let init = self.init_pid(handle).ok_or_else(|| {
            HostError::Unexpected(format!("the init of container {handle} is not running"))
        })?;
        let privileged = is_privileged(init)?;
        check_bind_sources(bind_mounts.iter())?;
        let existing = |p: PathBuf| p.exists().then_some(p);
        let cgroup_view = if privileged {
            CgroupView::None
        } else {
            cgroups.container_view()
        };
        let spec = InitSpec {
            container_dir: self.layout.container_dir(key),
            rootfs: self.layout.rootfs_dir(key),
            // Its owner is the container's user namespace, which the keeper joins first.
            netns: Some(PathBuf::from(format!("/proc/{init}/ns/net"))),
            hosts_file: existing(self.layout.hosts_file(handle)),
            resolv_conf_file: existing(self.layout.resolv_conf_file(handle)),
            hostname: String::new(),
            bind_mounts: bind_mounts
                .iter()
                .map(|b| trellis_core::api::BindMount {
                    origin: BindMountOrigin::Host,
                    ..b.clone()
                })
                .collect(),
            confinement: Confinement::new(privileged, &self.security),
            cgroup_view,
            no_new_privileges: self.security.no_new_privileges && !privileged,
            seccomp: (!privileged).then(|| self.seccomp.clone()),
            join: Some(init),
            cgroup_tasks: Vec::new(),
        };
        let helper = self.fork_placed_helper(spec, cgroup)?;
        let pid = helper
            .proceed()
            .map_err(|e| helper_failure("start pea", e))?;
        let start = process_start_time(pid)
            .ok_or_else(|| HostError::Unexpected("the pea's keeper vanished".into()))?;
        write_pid_file(&self.layout.init_pid_file(key), pid, start)
            .map_err(|e| HostError::io("writing the pea keeper's pid file", e))
    }

    /// Has the zygote fork the helper for `spec`, in the cgroup `cgroup` names (of those
    /// cgroups, by name) before it makes anything, so that every namespace and process after
    /// it is in that cgroup. The server moving it is much dearer (see
    /// `Cgroups::self_placement_files`) than what is tried first: on cgroup v1 the helper
    /// moves itself; on v2 the zygote forks it straight into the cgroup
    /// (`Cgroups::fork_target`), and only a kernel without that leaves the move to the server.
    /// Dropping the helper (on an error) ends it.
    fn fork_placed_helper(
        &self,
        mut spec: InitSpec,
        cgroup: Option<(&Cgroups, &str)>,
    ) -> HostResult<zygote::Helper> {
        let (self_placement, fork_target) = match cgroup {
            Some((cgroups, name)) => (
                cgroups.self_placement_files(name)?,
                cgroups.fork_target(name)?,
            ),
            None => (Some(Vec::new()), None),
        };
        spec.cgroup_tasks = self_placement.clone().unwrap_or_default();
        let helper = self
            .zygote
            .fork_helper(&spec, fork_target.as_ref().map(AsFd::as_fd))?;
        if let (None, false, Some((cgroups, name))) = (self_placement, helper.in_cgroup, cgroup) {
            cgroups.add_process(name, helper.pid as u32)?;
        }
        Ok(helper)
    }

    /// Whether the container runs in the host's user namespace (it was made privileged).
    pub fn privileged(&self, handle: &str) -> HostResult<bool> {
        let init = self.init_pid(handle).ok_or_else(|| {
            HostError::Unexpected(format!("the init of container {handle} is not running"))
        })?;
        is_privileged(init)
    }

    /// Kills the keeper that `key` names (a pea's), if it runs, waits until it is gone and
    /// forgets its pid file and socket.
    pub fn end_keeper(&self, key: &str) -> HostResult<()> {
        if let Some(keeper) = self.init_pidfd(key) {
            let _ = pidfd_send_signal(keeper.as_fd(), libc::SIGKILL);
            wait_gone(keeper.as_fd(), Duration::from_secs(30)).map_err(|_| {
                HostError::Unexpected(format!("the keeper {key} did not die after SIGKILL"))
            })?;
            reap(keeper.as_fd());
        }
        for path in [self.layout.init_pid_file(key), self.layout.init_socket(key)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }

    /// Kills init (and with it the whole PID namespace) and waits until it is gone.
    pub fn kill_container(&self, handle: &str, cgroups: &Cgroups) -> HostResult<()> {
        let init = self.init_pidfd(handle);
        if let Some(init) = &init {
            let _ = pidfd_send_signal(init.as_fd(), libc::SIGKILL);
        }
        // Its peas' keepers die with its PID namespace, which init's death waits for: they
        // are the server's (not init's) to reap.
        for pea in super::peas::keys(&self.layout, handle) {
            self.end_keeper(&pea)?;
        }
        if let Some(init) = init {
            wait_gone(init.as_fd(), Duration::from_secs(30)).map_err(|_| {
                HostError::Unexpected(format!("the init of {handle} did not die after SIGKILL"))
            })?;
            reap(init.as_fd());
        }
        // Anything of the container outside its PID namespace (nothing, normally).
        if let Ok(pids) = cgroups.pids(handle) {
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        for path in [
            self.layout.init_pid_file(handle),
            self.layout.init_socket(handle),
        ] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::io(format!("removing {}", path.display()), e)),
            }
        }
        Ok(())
    }

    pub fn spawn(&self, request: SpawnRequest<'_>) -> HostResult<ProcessIo> {
        // The output pipes are made here, by the server, and handed to init with the request:
        // a pipe is charged to the user who makes it, and every unprivileged container's root
        // is the same host user, over whose pipe allowance (fs.pipe-user-pages-soft) the
        // kernel shrinks new pipes to two pages and refuses to enlarge them. The server is
        // exempt (CAP_SYS_ADMIN), so each process gets a full-sized pipe whatever runs
        // elsewhere. With a TTY, one pipe carries the terminal's output.
        // They belong to the user init runs as (the container's root), as init's own pipes
        // would, so that init may hand them on to the process's user.
        let init = self.init_pid(request.handle).ok_or_else(|| {
            HostError::Unexpected(format!(
                "the init of container {} is not running",
                request.handle
            ))
        })?;
        let (uid, gid) = process_ids(init)?;
        let count = if request.spec.tty.is_some() { 1 } else { 2 };
        let mut pipes = Vec::with_capacity(2 * count);
        for _ in 0..count {
            let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| HostError::io("pipe", e.into()))?;
            let _ = nix::fcntl::fcntl(
                &write,
                nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_PIPE_BYTES),
            );
            nix::unistd::fchown(
                &read,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| HostError::io("handing a pipe to the container's root", e.into()))?;
            pipes.push(read);
            pipes.push(write);
        }
        let raw: Vec<RawFd> = pipes.iter().map(|p| p.as_raw_fd()).collect();
        let conn = self.connect(request.handle)?;
        protocol::send(
            conn.as_raw_fd(),
            &Request::Spawn {
                id: request.process_id.to_string(),
                spec: Box::new(request.spec.clone()),
                env: request.env.to_vec(),
            },
            &raw,
        )
        .map_err(|e| HostError::io("talking to the container's init", e))?;
        drop(pipes);
        process_io(receive(&conn)?)
    }

    /// Fresh descriptors of a process init keeps (after a server restart, say).
    pub fn attach(&self, handle: &str, process_id: &str) -> HostResult<ProcessIo> {
        let reply = self.exchange(
            &self.keeper_of(handle, process_id),
            &Request::Attach {
                id: process_id.to_string(),
            },
        )?;
        process_io(reply)
    }

    /// Who keeps process `process_id` of the container: the keeper of its pea, if it is one,
    /// or the container's init.
    fn keeper_of(&self, handle: &str, process_id: &str) -> String {
        let pea = super::peas::key(handle, process_id);
        if self.layout.init_pid_file(&pea).exists() {
            pea
        } else {
            handle.to_string()
        }
    }

    /// Every process init and the keepers of the container's peas keep, with its exit status
    /// once it has exited.
    pub fn process_states(&self, handle: &str) -> HostResult<Vec<ProcessState>> {
        let mut states = self.kept_processes(handle)?;
        for pea in super::peas::keys(&self.layout, handle) {
            // A pea whose keeper is gone has nothing to report (and is swept).
            states.extend(self.kept_processes(&pea).unwrap_or_default());
        }
        Ok(states)
    }

    /// The processes one keeper (`key`: init's or a pea's) keeps.
    fn kept_processes(&self, key: &str) -> HostResult<Vec<ProcessState>> {
        if !self.init_running(key) {
            return Ok(Vec::new());
        }
        match self.request(key, &Request::List, &[])? {
            Reply::Processes(list) => Ok(list
                .into_iter()
                .map(|p| ProcessState {
                    id: p.id,
                    exit_status: p.exit_status,
                })
                .collect()),
            other => Err(unexpected(other)),
        }
    }

    pub fn signal(&self, handle: &str, process_id: &str, signal: Signal) -> HostResult<()> {
        let signal = match signal {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        let request = Request::Signal {
            id: process_id.to_string(),
            signal,
        };
        self.expect_done(&self.keeper_of(handle, process_id), &request)
    }

    pub fn resize(&self, handle: &str, process_id: &str, size: WindowSize) -> HostResult<()> {
        let request = Request::Resize {
            id: process_id.to_string(),
            columns: size.columns,
            rows: size.rows,
        };
        self.expect_done(&self.keeper_of(handle, process_id), &request)
    }

    pub fn close_stdin(&self, handle: &str, process_id: &str) -> HostResult<()> {
        let request = Request::CloseStdin {
            id: process_id.to_string(),
        };
        self.expect_done(&self.keeper_of(handle, process_id), &request)
    }

    pub fn release(&self, handle: &str, process_id: &str) -> HostResult<()> {
        let request = Request::Release {
            id: process_id.to_string(),
        };
        self.expect_done(&self.keeper_of(handle, process_id), &request)
    }

    fn expect_done(&self, handle: &str, request: &Request) -> HostResult<()> {
        match self.request(handle, request, &[])? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// One request and its answer, with the descriptors that came along.
    fn exchange(&self, handle: &str, request: &Request) -> HostResult<(Reply, Vec<OwnedFd>)> {
        let conn = self.connect(handle)?;
        protocol::send(conn.as_raw_fd(), request, &[])
            .map_err(|e| HostError::io("talking to the container's init", e))?;
        receive(&conn)
    }

    /// SIGTERM to every process but init, re-sent each second for up to 10 s, then SIGKILL
    /// (SIGKILL at once with `kill`); returns when none remain. Between signals init answers
    /// as soon as the last one has gone.
    pub fn stop_processes(&self, handle: &str, kill: bool, _cgroups: &Cgroups) -> HostResult<()> {
        if !self.init_running(handle) {
            return Ok(());
        }
        let phases: &[(i32, u32)] = if kill {
            &[(libc::SIGKILL, TERM_ROUNDS)]
        } else {
            &[(libc::SIGTERM, TERM_ROUNDS), (libc::SIGKILL, TERM_ROUNDS)]
        };
        for &(signal, rounds) in phases {
            for _ in 0..rounds {
                if self.signal_all(handle, signal)? == 0 {
                    return Ok(());
                }
                match self.await_no_processes(handle, STOP_ROUND) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    // An init that an older binary started (the server was upgraded under
                    // its containers) does not know the wait and hangs up: the round passes
                    // as a pause, and the next signal's count tells (or fails, if init is
                    // gone).
                    Err(_) => std::thread::sleep(STOP_ROUND),
                }
            }
        }
        Ok(())
    }

    fn signal_all(&self, handle: &str, signal: i32) -> HostResult<usize> {
        self.remaining(handle, &Request::SignalAll { signal })
    }

    /// Waits until no process but init (and the keepers of peas) is left in the container, for
    /// at most `timeout`; returns how many are left.
    pub fn await_no_processes(&self, handle: &str, timeout: Duration) -> HostResult<usize> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.remaining(handle, &Request::AwaitNoProcesses { timeout_ms })
    }

    /// Init's answer to a request that counts the container's processes.
    fn remaining(&self, handle: &str, request: &Request) -> HostResult<usize> {
        match self.request(handle, request, &[])? {
            Reply::Remaining { count } => Ok(count),
            other => Err(unexpected(other)),
        }
    }

    pub fn stream_in(&self, to: FilePath<'_>, tar: &mut dyn Read) -> HostResult<()> {
        let conn = self.connect(to.handle)?;
        let (data_r, data_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| HostError::io("pipe", e.into()))?;
        let _ = nix::fcntl::fcntl(&data_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        protocol::send(
            conn.as_raw_fd(),
            &Request::StreamIn {
                path: to.path.to_string(),
                user: to.user.to_string(),
            },
            &[data_r.as_raw_fd()],
        )
        .map_err(|e| HostError::io("asking init to stream in", e))?;
        drop(data_r);
        let mut sink = File::from(data_w);
        let copied = io::copy(tar, &mut sink);
        drop(sink);
        let (reply, _) = receive(&conn)?;
        match reply {
            Reply::Done => match copied {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
                    Err(HostError::io("error streaming in", e))
                }
                _ => Ok(()),
            },
            other => Err(unexpected(other)),
        }
    }

    pub fn stream_out(&self, from: FilePath<'_>, tar: &mut dyn Write) -> HostResult<()> {
        let conn = self.connect(from.handle)?;
        let (data_r, data_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| HostError::io("pipe", e.into()))?;
        let _ = nix::fcntl::fcntl(&data_w, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        protocol::send(
            conn.as_raw_fd(),
            &Request::StreamOut {
                path: from.path.to_string(),
                user: from.user.to_string(),
            },
            &[data_w.as_raw_fd()],
        )
        .map_err(|e| HostError::io("asking init to stream out", e))?;
        drop(data_w);
        let mut source = File::from(data_r);
        let copied = io::copy(&mut source, tar);
        drop(source);
        let (reply, _) = receive(&conn)?;
        match reply {
            Reply::Done => copied
                .map(drop)
                .map_err(|e| HostError::io("error streaming out", e)),
            other => Err(unexpected(other)),
        }
    }

    /// The container's init is alive (not a zombie) and is the process its pid file names.
    pub fn init_running(&self, handle: &str) -> bool {
        self.init_pid(handle).is_some_and(|pid| !is_zombie(pid))
    }

    /// Ids of the container's processes that are still running.
    pub fn processes(&self, handle: &str) -> Vec<String> {
        self.process_states(handle)
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.exit_status.is_none())
            .map(|p| p.id)
            .collect()
    }

    /// Every container that has an init pid file.
    pub fn handles(&self) -> HostResult<Vec<String>> {
        let entries = match std::fs::read_dir(self.layout.depot()) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HostError::io("reading the depot", e)),
        };
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|h| self.layout.init_pid_file(h).exists())
            .collect())
    }

    /// The pid from the pid file, if that process still has the recorded start time.
    pub fn init_pid(&self, handle: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.layout.init_pid_file(handle)).ok()?;
        let mut parts = text.split_whitespace();
        let pid: i32 = parts.next()?.parse().ok()?;
        let start: u64 = parts.next()?.parse().ok()?;
        (process_start_time(pid) == Some(start)).then_some(pid)
    }

    /// A pidfd for init, checked against the pid file's start time after opening (so a reused
    /// pid is never signalled).
    fn init_pidfd(&self, handle: &str) -> Option<OwnedFd> {
        let pid = self.init_pid(handle)?;
        let fd = pidfd_open(pid).ok()?;
        self.init_pid(handle).filter(|p| *p == pid).map(|_| fd)
    }

    fn init_socket_address(&self, handle: &str) -> InitSocket {
        InitSocket {
            handle: handle.to_string(),
            socket: self.layout.init_socket(handle),
            container_dir: self.layout.container_dir(handle),
        }
    }

    fn connect(&self, handle: &str) -> HostResult<OwnedFd> {
        self.init_socket_address(handle).connect()
    }

    fn request(&self, handle: &str, request: &Request, fds: &[RawFd]) -> HostResult<Reply> {
        let conn = self.connect(handle)?;
        protocol::send(conn.as_raw_fd(), request, fds)
            .map_err(|e| HostError::io("talking to the container's init", e))?;
        receive(&conn).map(|(reply, _)| reply)
    }
}

/// Whether process `pid` runs in the host's user namespace (a privileged container's).
fn is_privileged(pid: i32) -> HostResult<bool> {
    let path = format!("/proc/{pid}/ns/user");
    let ns = File::open(&path).map_err(|e| HostError::io(path, e))?;
    crate::linux::security::userns::is_own_user_namespace(ns.as_fd())
        .map_err(|e| HostError::io("comparing user namespaces", e))
}

/// The effective user and group of process `pid`, as the host sees them.
/// Bind mount sources must be absolute paths that exist on the host; checked before anything
/// is started, so a bad request is refused as invalid.
fn check_bind_sources<'a>(
    binds: impl Iterator<Item = &'a trellis_core::api::BindMount>,
) -> HostResult<()> {
    for bind in binds {
        if !Path::new(&bind.src_path).is_absolute() || std::fs::metadata(&bind.src_path).is_err() {
            return Err(HostError::Invalid(format!(
                "bind mount source {:?} does not exist on the host",
                bind.src_path
            )));
        }
    }
    Ok(())
}

/// A start helper's failure, named by `what` when it is the host's (one that is the request's
/// fault, as a bind mount whose source vanished since the check, says so by its kind).
fn helper_failure(what: &str, error: HostError) -> HostError {
    match error {
        HostError::Unexpected(message) => HostError::Unexpected(format!("{what}: {message}")),
        other => other,
    }
}

fn process_ids(pid: i32) -> HostResult<(u32, u32)> {
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).map_err(|e| HostError::io(status_path.clone(), e))?;
    // "Uid:\treal\teffective\tsaved\tfs"
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok())
            .ok_or_else(|| HostError::Unexpected(format!("no {key} line in {status_path}")))
    };
    Ok((effective("Uid:")?, effective("Gid:")?))
}

/// Where a container's init listens.
struct InitSocket {
    handle: String,
    socket: PathBuf,
    container_dir: PathBuf,
}

impl InitSocket {
    fn connect(&self) -> HostResult<OwnedFd> {
        let not_running = || {
            HostError::Unexpected(format!(
                "the init of container {} is not running",
                self.handle
            ))
        };
        let sock = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| HostError::io("socket", e.into()))?;
        // Socket paths are limited to 108 bytes; long depots or handles go through a
        // descriptor of the container directory.
        let dir;
        let addr_path = if self.socket.as_os_str().len() < 100 {
            self.socket.clone()
        } else {
            dir = File::open(&self.container_dir).map_err(|_| not_running())?;
            PathBuf::from(format!("/proc/self/fd/{}/init.sock", dir.as_raw_fd()))
        };
        let addr =
            UnixAddr::new(&addr_path).map_err(|e| HostError::io("socket address", e.into()))?;
        socket::connect(sock.as_raw_fd(), &addr).map_err(|_| not_running())?;
        Ok(sock)
    }
}

fn receive(conn: &OwnedFd) -> HostResult<(Reply, Vec<OwnedFd>)> {
    let mut buf = Vec::new();
    match protocol::recv::<Reply>(conn.as_raw_fd(), &mut buf) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(HostError::Unexpected(
            "the container's init closed the connection (is the container being destroyed?)".into(),
        )),
        Err(e) => Err(HostError::io("reading from the container's init", e)),
    }
}

fn unexpected(reply: Reply) -> HostError {
    match reply {
        Reply::Failed { kind, message } => protocol::host_error(kind, message),
        other => HostError::Unexpected(format!("unexpected answer from init: {other:?}")),
    }
}

/// The descriptors of a `Process` answer: `[stdin?, stdout, stderr?, exit]`.
fn process_io((reply, fds): (Reply, Vec<OwnedFd>)) -> HostResult<ProcessIo> {
    let (has_stdin, has_stderr) = match reply {
        Reply::Process { stdin, stderr } => (stdin, stderr),
        other => return Err(unexpected(other)),
    };
    let expected = 2 + usize::from(has_stdin) + usize::from(has_stderr);
    if fds.len() != expected {
        return Err(HostError::Unexpected(format!(
            "init sent {} process descriptors instead of {expected}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("counted above");
    let stdin = has_stdin.then(&mut next);
    let stdout = next();
    let stderr = has_stderr.then(&mut next);
    let exit = next();
    Ok(ProcessIo {
        stdin,
        stdout,
        stderr,
        exit,
    })
}

/// TIOCSWINSZ; a zero dimension takes the default (80 columns, 24 rows).
pub(crate) fn set_window_size(fd: BorrowedFd<'_>, columns: u16, rows: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: if rows == 0 { 24 } else { rows },
        ws_col: if columns == 0 { 80 } else { columns },
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot.
pub(crate) fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        })
        .unwrap_or(true)
}

pub(crate) fn write_pid_file(path: &Path, pid: i32, start: u64) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{pid} {start}\n"))?;
    std::fs::rename(&tmp, path)
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a pidfd we hold.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until the process behind `pidfd` has exited.
fn wait_gone(pidfd: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        let ms =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps the process if it is our child (it is once its helper has exited, as we are the
/// subreaper); otherwise its parent does.
fn reap(pidfd: BorrowedFd<'_>) {
    // SAFETY: siginfo_t is plain data, valid all zero.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd with a zeroed siginfo we own.
    unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
}

/// A copy of `source` in a sealed memfd: the helper runs from it, so nothing a container does
/// (even through /proc/<init>/exe) can change the binary the server runs.
fn sealed_copy(source: &Path) -> io::Result<File> {
    let name = c"trellis-helper";
    // SAFETY: memfd_create with a valid C string.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor.
    let mut memfd = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut File::open(source)?, &mut memfd)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on our own fd.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(memfd)
}

//! Init's service loop: the keeper of the container's processes.
//!
//! Init forks every process and file stream of the container (so they share its namespaces,
//! cgroup, capabilities and seccomp filter), reaps every child (orphans included), and keeps
//! each process's side of its stdio for as long as the process is known: the write end of its
//! stdin, the read ends of its output pipes. A server gets duplicates of those (on spawn, and
//! again on `Attach` after a restart), so a process never notices the server going away:
//! its stdin stays open, its output waits in the pipe (it is slowed, not killed by SIGPIPE,
//! when nobody reads), and its exit status is kept until the server `Release`s it.
//!
//! Exit statuses travel on a pipe per attachment: init writes the status (an `i32` in native
//! byte order) when the process exits, or at once if it already has; if init dies (the
//! container is destroyed) the pipe ends empty. With a TTY, init relays the terminal's output
//! from the pty master into a pipe, so that every process's output is a pipe the server can
//! read without consuming what it has not delivered yet.
//!
//! A stop waits for the container to have no process left but init (`AwaitNoProcesses`):
//! init parks the request and counts again whenever it wakes, until none is left or the
//! wait's deadline passes. The last process to end is a child of init or of a pea's keeper
//! (a process's children outlive it only as orphans, which init adopts), so SIGCHLD wakes init
//! for it: a pea's keeper passes its own SIGCHLD on to init, which is not its process's parent.
//! Watching every process through a pidfd would not need that, but the seccomp filter of an
//! unprivileged container (gdn's), which init runs under, forbids `pidfd_open`.
//!
//! Under the container's seccomp filter init uses only syscalls the filter allows.

use super::child::{exec_process, ChildStdio};
use super::files;
use super::protocol::Failure;
use super::protocol::{self, FailureKind, ProcessStatus, Reply, Request};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{self, SockFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};
use trellis_core::api::ProcessSpec;

/// What a pea's keeper is called (`comm`), so that init tells it from the processes it stops.
pub(super) const PEA_KEEPER_NAME: &str = "garden-pea";

/// How much of a terminal's output the relay moves at a time.
const RELAY_CHUNK: usize = 64 * 1024;

pub(super) struct Keeper {
    listener: OwnedFd,
    sigfd: SignalFd,
    /// Processes narrow their capabilities by their user (see `child`).
    privileged: bool,
    /// Accepted connections whose request has not arrived yet.
    waiting: Vec<OwnedFd>,
    /// `AwaitNoProcesses` requests not answered yet.
    awaiting_no_processes: Vec<NoProcessesWait>,
    children: HashMap<i32, Child>,
    buf: Vec<u8>,
    /// A pea's keeper serves its one process and ends once that is forgotten (released, or
    /// its start failed); `None` for init.
    one_process: Option<OneProcess>,
}

enum OneProcess {
    /// The child that becomes the process, forked in the pea's mount namespace.
    Waiting(PreForked),
    Started,
}

/// A child forked before its process is known, by a pea's keeper while it is still in the
/// pea's mount namespace: it confines itself as init's children are confined and waits for
/// `PeaStart`.
pub(super) struct PreForked {
    pid: i32,
    channel: OwnedFd,
}

impl PreForked {
    /// Forks the child; it runs `confine` (failing, it exits) and waits.
    pub(super) fn fork(
        confine: impl FnOnce() -> Result<(), String>,
        privileged: bool,
    ) -> Result<PreForked, String> {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        // SAFETY: the keeper is single-threaded.
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(ours);
                // Nothing of the keeper's (its readiness pipe above all: the helper waits for
                // its end) stays open here.
                super::child::close_all_except(&[theirs.as_raw_fd()]);
                if confine().is_ok() {
                    let mut buf = Vec::new();
                    if let Ok(Some((start, fds))) =
                        protocol::recv::<protocol::PeaStart>(theirs.as_raw_fd(), &mut buf)
                    {
                        drop(theirs);
                        become_process(start, fds, privileged);
                    }
                }
                // SAFETY: ending the forked child.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => Ok(PreForked {
                pid: child.as_raw(),
                channel: ours,
            }),
        }
    }
}

/// The pre-forked child becomes the pea's process (never returns).
fn become_process(start: protocol::PeaStart, fds: Vec<OwnedFd>, privileged: bool) {
    let mut fds = fds.into_iter();
    let (stdio, report) = if start.spec.tty.is_some() {
        match (fds.next(), fds.next()) {
            (Some(slave), Some(report)) => (ChildStdio::Tty { slave }, report),
            _ => return,
        }
    } else {
        match (fds.next(), fds.next(), fds.next(), fds.next()) {
            (Some(stdin), Some(stdout), Some(stderr), Some(report)) => (
                ChildStdio::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
                report,
            ),
            _ => return,
        }
    };
    exec_process(&start.spec, &start.env, stdio, report, privileged)
}

/// A connection waiting for the container to have no process but init, until `deadline`
/// (none when the timeout reaches beyond what the clock can tell).
struct NoProcessesWait {
    conn: OwnedFd,
    deadline: Option<Instant>,
}

/// A child of init: a process or a file stream.
enum Child {
    Process(Box<ProcessEntry>),
    Job(Job),
}

/// Until the exec result is known: the connection to answer and the report pipe (close on
/// exec: EOF with nothing written means the exec happened).
struct Starting {
    conn: OwnedFd,
    report: OwnedFd,
    failure: Vec<u8>,
}

struct ProcessEntry {
    id: String,
    phase: Phase,
    status: Option<i32>,
    /// Init's copy of the write end of the process's stdin (the pty master with a TTY); gone
    /// once the server closed stdin.
    stdin: Option<OwnedFd>,
    /// Init's copies of the read ends the server reads (the relay pipe with a TTY).
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    tty: Option<Relay>,
    /// Write ends of exit pipes handed out, written once the process exits.
    exit_watchers: Vec<OwnedFd>,
}

enum Phase {
    Starting(Starting),
    Running,
    /// Its exec failed (the spawn was answered `Failed`); it only waits to be reaped.
    Failed,
}

/// Moves a terminal's output from the pty master into a pipe.
struct Relay {
    master: OwnedFd,
    /// The relay pipe's write end; closed once the terminal has no writer left.
    out: Option<OwnedFd>,
    /// Read from the master, not yet written to the pipe.
    pending: Vec<u8>,
    /// The master answered EIO: every holder of the terminal is gone.
    master_done: bool,
}

struct Job {
    conn: OwnedFd,
    report: Option<OwnedFd>,
    failure: Vec<u8>,
    status: Option<i32>,
}

/// What a descriptor in the poll set stands for.
#[derive(Clone, Copy)]
enum Watched {
    Listener,
    Signals,
    Waiting(RawFd),
    /// The connection of a wait for no process: readable once the waiter has gone.
    AwaitingNoProcesses(RawFd),
    Report(i32),
    MasterReadable(i32),
    RelayWritable(i32),
}

impl Keeper {
    pub(super) fn new(listener: OwnedFd, sigfd: SignalFd, privileged: bool) -> Keeper {
        Keeper {
            listener,
            sigfd,
            privileged,
            waiting: Vec::new(),
            awaiting_no_processes: Vec::new(),
            children: HashMap::new(),
            buf: Vec::new(),
            one_process: None,
        }
    }

    /// The keeper of a pea, whose process `pea` becomes: it ends when that is forgotten.
    pub(super) fn for_one_process(mut self, pea: PreForked) -> Keeper {
        self.one_process = Some(OneProcess::Waiting(pea));
        self
    }

    pub(super) fn serve(mut self) -> i32 {
        loop {
            if matches!(self.one_process, Some(OneProcess::Started))
                && self.children.is_empty()
                && self.waiting.is_empty()
                && self.awaiting_no_processes.is_empty()
            {
                return 0;
            }
            let mut watched: Vec<(RawFd, PollFlags, Watched)> = vec![
                (
                    self.listener.as_raw_fd(),
                    PollFlags::POLLIN,
                    Watched::Listener,
                ),
                (self.sigfd.as_raw_fd(), PollFlags::POLLIN, Watched::Signals),
            ];
            for conn in &self.waiting {
                let raw = conn.as_raw_fd();
                watched.push((raw, PollFlags::POLLIN, Watched::Waiting(raw)));
            }
            for wait in &self.awaiting_no_processes {
                let raw = wait.conn.as_raw_fd();
                watched.push((raw, PollFlags::POLLIN, Watched::AwaitingNoProcesses(raw)));
            }
            for (pid, child) in &self.children {
                if let Some(report) = child.report() {
                    watched.push((report.as_raw_fd(), PollFlags::POLLIN, Watched::Report(*pid)));
                }
                if let Child::Process(p) = child {
                    if let Some(relay) = &p.tty {
                        match (&relay.out, relay.pending.is_empty(), relay.master_done) {
                            (Some(out), false, _) => watched.push((
                                out.as_raw_fd(),
                                PollFlags::POLLOUT,
                                Watched::RelayWritable(*pid),
                            )),
                            (Some(_), true, false) => watched.push((
                                relay.master.as_raw_fd(),
                                PollFlags::POLLIN,
                                Watched::MasterReadable(*pid),
                            )),
                            _ => {}
                        }
                    }
                }
            }
            let mut fds: Vec<PollFd> = watched
                .iter()
                // SAFETY: every descriptor stays open until the poll returns.
                .map(|(raw, flags, _)| PollFd::new(unsafe { BorrowedFd::borrow_raw(*raw) }, *flags))
                .collect();
            match poll(&mut fds, self.poll_timeout()) {
                Ok(_) => {}
                Err(Errno::EINTR) | Err(_) => continue,
            }
            let ready: Vec<Watched> = fds
                .iter()
                .zip(&watched)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, (_, _, what))| *what)
                .collect();
            drop(fds);
            for what in ready {
                match what {
                    Watched::Signals => self.reap(),
                    Watched::Waiting(raw) => self.take_request(raw),
                    Watched::AwaitingNoProcesses(raw) => self
                        .awaiting_no_processes
                        .retain(|wait| wait.conn.as_raw_fd() != raw),
                    Watched::Report(pid) => self.read_report(pid),
                    Watched::MasterReadable(pid) => self.relay_read(pid),
                    Watched::RelayWritable(pid) => self.relay_write(pid),
                    Watched::Listener => {
                        if let Ok(conn) = socket::accept4(&self.listener, SockFlag::SOCK_CLOEXEC) {
                            self.waiting.push(conn);
                        }
                    }
                }
            }
            self.answer_no_process_waits();
        }
    }

    /// Until the earliest deadline of a wait for no process, rounded up to the millisecond
    /// (so the loop does not wake just before it); no timeout without one.
    fn poll_timeout(&self) -> PollTimeout {
        let Some(earliest) = self
            .awaiting_no_processes
            .iter()
            .filter_map(|wait| wait.deadline)
            .min()
        else {
            return PollTimeout::NONE;
        };
        let left = earliest.saturating_duration_since(Instant::now());
        u64::try_from(left.as_nanos().div_ceil(1_000_000))
            .ok()
            .and_then(|ms| PollTimeout::try_from(ms).ok())
            .unwrap_or(PollTimeout::MAX)
    }

    /// Counts the container's processes for the waits for no process (on every wake, as
    /// survivors may have forked): answers all of them once none is left, else those whose
    /// deadline has passed, with the count.
    fn answer_no_process_waits(&mut self) {
        if self.awaiting_no_processes.is_empty() {
            return;
        }
        let count = live_processes();
        let now = Instant::now();
        self.awaiting_no_processes.retain(|wait| {
            let due = count == 0 || wait.deadline.is_some_and(|deadline| deadline <= now);
            if due {
                reply(&wait.conn, &Reply::Remaining { count }, &[]);
            }
            !due
        });
    }

    fn reap(&mut self) {
        while self.sigfd.read_signal().ok().flatten().is_some() {}
        let mut reaped = false;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.exited(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.exited(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
            reaped = true;
        }
        if reaped && self.one_process.is_some() {
            // Init (PID 1 of the container's PID namespace) waits for the pea's process in a
            // stop but is not its parent; its blocked SIGCHLD reaches it even from inside.
            let _ = nix::sys::signal::kill(Pid::from_raw(1), Signal::SIGCHLD);
        }
    }

    fn exited(&mut self, pid: i32, status: i32) {
        match self.children.get_mut(&pid) {
            Some(Child::Process(p)) => {
                p.status = Some(status);
                for watcher in p.exit_watchers.drain(..) {
                    write_status(&watcher, status);
                }
            }
            Some(Child::Job(job)) => job.status = Some(status),
            None => return,
        }
        self.progress(pid);
    }

    fn read_report(&mut self, pid: i32) {
        let Some(child) = self.children.get_mut(&pid) else {
            return;
        };
        let (report, failure) = match child {
            Child::Process(p) => match &mut p.phase {
                Phase::Starting(s) => (Some(&s.report), &mut s.failure),
                _ => return,
            },
            Child::Job(job) => (job.report.as_ref(), &mut job.failure),
        };
        let Some(report) = report else { return };
        let mut chunk = [0u8; 4096];
        match nix::unistd::read(report, &mut chunk) {
            Ok(n) if n > 0 => failure.extend_from_slice(&chunk[..n]),
            _ => {
                match child {
                    Child::Process(p) => p.started(),
                    Child::Job(job) => job.report = None,
                }
                self.progress(pid);
            }
        }
    }

    /// Answers what can be answered and forgets finished file streams and processes whose
    /// start failed.
    fn progress(&mut self, pid: i32) {
        let done = match self.children.get_mut(&pid) {
            Some(Child::Job(job)) => match (job.report.is_none(), job.status) {
                (true, Some(status)) => {
                    let failure = (!job.failure.is_empty()).then(|| Failure::decode(&job.failure));
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
                    reply(&job.conn, &message, &[]);
                    true
                }
                _ => false,
            },
            // A process whose start failed goes once it is reaped; one that started stays
            // until the server releases it.
            Some(Child::Process(p)) => matches!(p.phase, Phase::Failed) && p.status.is_some(),
            None => false,
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
            Request::Spawn { id, spec, env } => match self.one_process.take() {
                None => self.spawn(conn, id, &spec, &env, fds, None),
                Some(OneProcess::Waiting(pea)) => {
                    self.one_process = Some(OneProcess::Started);
                    self.spawn(conn, id, &spec, &env, fds, Some(pea))
                }
                Some(OneProcess::Started) => {
                    self.one_process = Some(OneProcess::Started);
                    fail(
                        &conn,
                        FailureKind::Failed,
                        "a pea's keeper runs one process".into(),
                    )
                }
            },
            Request::Attach { id } => match self.process_mut(&id) {
                Some(p) => match p.attachment() {
                    Ok((message, fds)) => {
                        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                        reply(&conn, &message, &raw);
                    }
                    Err(message) => fail(&conn, FailureKind::Failed, message),
                },
                None => not_found(&conn, &id),
            },
            Request::Signal { id, signal } => {
                self.reap();
                let target = self.running_pid(&id);
                match (target, Signal::try_from(signal)) {
                    (Some(pid), Ok(sig)) => {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                        reply(&conn, &Reply::Done, &[]);
                    }
                    (None, _) if self.process_mut(&id).is_some() => {
                        // Exited already: nothing left to signal.
                        reply(&conn, &Reply::Done, &[]);
                    }
                    (None, _) => not_found(&conn, &id),
                    (Some(_), Err(_)) => fail(
                        &conn,
                        FailureKind::Invalid,
                        format!("unknown signal {signal}"),
                    ),
                }
            }
            Request::Resize { id, columns, rows } => match self.process_mut(&id) {
                Some(p) => {
                    if let Some(relay) = &p.tty {
                        let _ = super::set_window_size(relay.master.as_fd(), columns, rows);
                    }
                    reply(&conn, &Reply::Done, &[]);
                }
                None => not_found(&conn, &id),
            },
            Request::CloseStdin { id } => match self.process_mut(&id) {
                Some(p) => {
                    // With a TTY the master is also the relay's source: only the server's
                    // copy closes (EOF reaches the terminal through its own line discipline).
                    if p.tty.is_none() {
                        p.stdin = None;
                    }
                    reply(&conn, &Reply::Done, &[]);
                }
                None => not_found(&conn, &id),
            },
            Request::Release { id } => {
                self.release_exited(&id);
                reply(&conn, &Reply::Done, &[]);
            }
            Request::SignalAll { signal } => {
                if signal != 0 {
                    if let Ok(sig) = Signal::try_from(signal) {
                        let _ = nix::sys::signal::kill(Pid::from_raw(-1), sig);
                    }
                }
                self.reap();
                let count = live_processes();
                reply(&conn, &Reply::Remaining { count }, &[]);
            }
            Request::AwaitNoProcesses { timeout_ms } => {
                // Answered at the end of this turn of the loop if none is left already.
                let deadline = Instant::now().checked_add(Duration::from_millis(timeout_ms));
                self.awaiting_no_processes
                    .push(NoProcessesWait { conn, deadline });
            }
            Request::List => {
                let processes = self
                    .children
                    .values()
                    .filter_map(|c| match c {
                        Child::Process(p) if matches!(p.phase, Phase::Running) => {
                            Some(ProcessStatus {
                                id: p.id.clone(),
                                exit_status: p.status,
                            })
                        }
                        _ => None,
                    })
                    .collect();
                reply(&conn, &Reply::Processes(processes), &[]);
            }
            Request::StreamIn { .. } | Request::StreamOut { .. } => self.job(conn, request, fds),
        }
    }

    /// The process with this id (the latest, if an exited one shares it).
    fn process_mut(&mut self, id: &str) -> Option<&mut ProcessEntry> {
        self.children
            .values_mut()
            .filter_map(|c| match c {
                Child::Process(p) if p.id == id && matches!(p.phase, Phase::Running) => {
                    Some(p.as_mut())
                }
                _ => None,
            })
            .min_by_key(|p| p.status.is_some())
    }

    /// Forgets the exited processes with this id (and closes what was kept of them).
    fn release_exited(&mut self, id: &str) {
        self.children
            .retain(|_, c| !matches!(c, Child::Process(p) if p.id == id && p.status.is_some()));
    }

    fn running_pid(&self, id: &str) -> Option<i32> {
        self.children.iter().find_map(|(pid, c)| match c {
            Child::Process(p) if p.id == id && p.status.is_none() => Some(*pid),
            _ => None,
        })
    }

    /// `given`: the output pipes the server made (read and write end of stdout's, then of
    /// stderr's; one pipe with a TTY), or none (a server that makes none).
    fn spawn(
        &mut self,
        conn: OwnedFd,
        id: String,
        spec: &ProcessSpec,
        env: &[String],
        given: Vec<OwnedFd>,
        pre_forked: Option<PreForked>,
    ) {
        // A finished process of the same id is replaced (the server has let it go).
        self.release_exited(&id);
        let (child_stdio, kept) = match make_stdio(spec, given) {
            Ok(s) => s,
            Err(message) => return fail(&conn, FailureKind::Failed, message),
        };
        let (report_r, report_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return fail(&conn, FailureKind::Failed, format!("pipe: {e}")),
        };
        let forked = match pre_forked {
            Some(pea) => {
                let mut fds: Vec<RawFd> = match &child_stdio {
                    ChildStdio::Pipes {
                        stdin,
                        stdout,
                        stderr,
                    } => vec![stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
                    ChildStdio::Tty { slave } => vec![slave.as_raw_fd()],
                };
                fds.push(report_w.as_raw_fd());
                let start = protocol::PeaStart {
                    spec: Box::new(spec.clone()),
                    env: env.to_vec(),
                };
                protocol::send(pea.channel.as_raw_fd(), &start, &fds)
                    .map(|()| ForkResult::Parent {
                        child: Pid::from_raw(pea.pid),
                    })
                    .map_err(|e| format!("starting the pea's process: {e}"))
            }
            // SAFETY: init is single-threaded.
            None => unsafe { fork() }.map_err(|e| format!("fork: {e}")),
        };
        match forked {
            Err(message) => fail(&conn, FailureKind::Failed, message),
            Ok(ForkResult::Child) => {
                drop(report_r);
                drop(kept);
                exec_process(spec, env, child_stdio, report_w, self.privileged)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(child_stdio);
                drop(report_w);
                self.children.insert(
                    child.as_raw(),
                    Child::Process(Box::new(ProcessEntry {
                        id,
                        phase: Phase::Starting(Starting {
                            conn,
                            report: report_r,
                            failure: Vec::new(),
                        }),
                        status: None,
                        stdin: Some(kept.stdin),
                        stdout: kept.stdout,
                        stderr: kept.stderr,
                        tty: kept.tty,
                        exit_watchers: Vec::new(),
                    })),
                );
            }
        }
    }

    fn job(&mut self, conn: OwnedFd, request: Request, mut fds: Vec<OwnedFd>) {
        let Some(data) = fds.pop() else {
            return fail(
                &conn,
                FailureKind::Failed,
                "a file stream needs its data pipe".to_string(),
            );
        };
        let (report_r, report_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return fail(&conn, FailureKind::Failed, format!("pipe: {e}")),
        };
        // SAFETY: init is single-threaded.
        match unsafe { fork() } {
            Err(e) => fail(&conn, FailureKind::Failed, format!("fork: {e}")),
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
                    Child::Job(Job {
                        conn,
                        report: Some(report_r),
                        failure: Vec::new(),
                        status: None,
                    }),
                );
            }
        }
    }

    fn relay_read(&mut self, pid: i32) {
        let Some(Child::Process(p)) = self.children.get_mut(&pid) else {
            return;
        };
        let Some(relay) = p.tty.as_mut() else { return };
        let mut chunk = vec![0u8; RELAY_CHUNK];
        match nix::unistd::read(&relay.master, &mut chunk) {
            Ok(0) | Err(Errno::EIO) => {
                // The terminal has no writer left: its output ends here.
                relay.master_done = true;
                relay.out = None;
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
            Err(_) => {
                relay.master_done = true;
                relay.out = None;
            }
            Ok(n) => {
                relay.pending.extend_from_slice(&chunk[..n]);
                relay.flush();
            }
        }
    }

    fn relay_write(&mut self, pid: i32) {
        if let Some(Child::Process(p)) = self.children.get_mut(&pid) {
            if let Some(relay) = p.tty.as_mut() {
                relay.flush();
            }
        }
    }
}

impl Child {
    fn report(&self) -> Option<&OwnedFd> {
        match self {
            Child::Process(p) => match &p.phase {
                Phase::Starting(s) => Some(&s.report),
                _ => None,
            },
            Child::Job(job) => job.report.as_ref(),
        }
    }
}

impl ProcessEntry {
    /// The exec result is known (the report pipe ended): answers the spawn connection with
    /// the failure, or with the process's descriptors.
    fn started(&mut self) {
        let starting = match std::mem::replace(&mut self.phase, Phase::Running) {
            Phase::Starting(starting) => starting,
            other => {
                self.phase = other;
                return;
            }
        };
        if !starting.failure.is_empty() {
            let f = Failure::decode(&starting.failure);
            fail(&starting.conn, f.kind, f.message);
            self.phase = Phase::Failed;
            self.stdin = None;
            self.tty = None;
            return;
        }
        match self.attachment() {
            Ok((message, fds)) => {
                let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                reply(&starting.conn, &message, &raw);
            }
            Err(message) => fail(&starting.conn, FailureKind::Failed, message),
        }
    }

    /// Fresh duplicates of the server's side and a new exit pipe: `[stdin?, stdout, stderr?,
    /// exit]`.
    fn attachment(&mut self) -> Result<(Reply, Vec<OwnedFd>), String> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("dup: {e}"));
        let (exit_r, exit_w) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
        let mut fds = Vec::new();
        if let Some(stdin) = &self.stdin {
            fds.push(dup(stdin)?);
        }
        fds.push(dup(&self.stdout)?);
        if let Some(stderr) = &self.stderr {
            fds.push(dup(stderr)?);
        }
        fds.push(exit_r);
        match self.status {
            Some(status) => write_status(&exit_w, status),
            None => self.exit_watchers.push(exit_w),
        }
        Ok((
            Reply::Process {
                stdin: self.stdin.is_some(),
                stderr: self.stderr.is_some(),
            },
            fds,
        ))
    }
}

impl Relay {
    /// Writes what is pending into the relay pipe, as far as it takes it.
    fn flush(&mut self) {
        let Some(out) = &self.out else {
            self.pending.clear();
            return;
        };
        while !self.pending.is_empty() {
            match nix::unistd::write(out, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    self.pending.clear();
                    self.out = None;
                    return;
                }
            }
        }
    }
}

/// Writes an exit status into an exit pipe (the pipe holds far more than four bytes).
fn write_status(pipe: &OwnedFd, status: i32) {
    let _ = nix::unistd::write(pipe, &crate::host::encode_exit_status(status));
}

/// What a new process gets, and what init keeps.
struct Kept {
    /// The write end of the process's stdin (the pty master with a TTY).
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    tty: Option<Relay>,
}

/// Pipes (or a pty and its relay pipe) for a new process.
fn make_stdio(spec: &ProcessSpec, given: Vec<OwnedFd>) -> Result<(ChildStdio, Kept), String> {
    let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"));
    let mut given = given.into_iter();
    // An output pipe: the server's (full-sized whatever this container's root has made), else
    // one of our own, enlarged as far as the kernel lets this user.
    let mut output_pipe = || -> Result<(OwnedFd, OwnedFd), String> {
        match (given.next(), given.next()) {
            (Some(read), Some(write)) => Ok((read, write)),
            _ => {
                let (read, write) = pipe()?;
                let _ = nix::fcntl::fcntl(
                    &write,
                    nix::fcntl::FcntlArg::F_SETPIPE_SZ(super::OUTPUT_PIPE_BYTES),
                );
                Ok((read, write))
            }
        }
    };
    if let Some(tty) = &spec.tty {
        let master = nix::fcntl::open(
            "/dev/ptmx",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
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
        let (relay_r, relay_w) = output_pipe()?;
        nix::fcntl::fcntl(&relay_w, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(|e| format!("fcntl: {e}"))?;
        let stdin = master.try_clone().map_err(|e| format!("dup: {e}"))?;
        Ok((
            ChildStdio::Tty { slave },
            Kept {
                stdin,
                stdout: relay_r,
                stderr: None,
                tty: Some(Relay {
                    master,
                    out: Some(relay_w),
                    pending: Vec::new(),
                    master_done: false,
                }),
            },
        ))
    } else {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = output_pipe()?;
        let (err_r, err_w) = output_pipe()?;
        Ok((
            ChildStdio::Pipes {
                stdin: in_r,
                stdout: out_w,
                stderr: err_w,
            },
            Kept {
                stdin: in_w,
                stdout: out_r,
                stderr: Some(err_r),
                tty: None,
            },
        ))
    }
}

/// Sends `message`; false when it could not be delivered.
fn reply(conn: &OwnedFd, message: &Reply, fds: &[RawFd]) -> bool {
    protocol::send(conn.as_raw_fd(), message, fds).is_ok()
}

fn fail(conn: &OwnedFd, kind: FailureKind, message: String) {
    reply(conn, &Reply::Failed { kind, message }, &[]);
}

fn not_found(conn: &OwnedFd, id: &str) {
    fail(conn, FailureKind::ProcessNotFound, id.to_string());
}

/// Processes in this PID namespace other than init and the keepers of peas (which outlive a
/// stop to keep their process's exit status), not counting zombies.
fn live_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| *pid != 1)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_or(true, |comm| comm.trim_end() != PEA_KEEPER_NAME)
        })
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

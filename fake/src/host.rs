//! `FakeHost`: the [`Host`] the server runs on with `--backend fake`.
//!
//! Container effects are carried out by [`FakeOs`] (without faults), so the server drives the
//! same in-memory model the simulator checks. Processes are simulated stand-ins, chosen by the
//! base name of `ProcessSpec.path` and run on threads with in-memory pipes:
//!
//! | path        | behaviour                                                             |
//! |-------------|-----------------------------------------------------------------------|
//! | `echo ARGS` | writes the arguments joined by spaces and a newline to stdout; exit 0  |
//! | `cat`       | copies stdin to stdout until stdin ends; exit 0                       |
//! | `cat FILE…` | writes files streamed into the container; exit 1 if one is missing    |
//! | `exit N`    | exits with status N (0 when absent or not a number)                   |
//! | `sleep S`   | sleeps S seconds (fractions allowed); exit 0                          |
//! | `yes-bytes N` | writes N bytes (`y\n` repeated) to stdout; exit 0                   |
//! | `stderr TEXT` | writes the arguments joined by spaces and a newline to stderr; exit 0 |
//! | `env`       | writes the process environment, one `KEY=VALUE` per line; exit 0      |
//! | `true`, `false` | exit 0, exit 1                                                    |
//! | `hostname`  | writes the container's hostname (the handle, its last 49 characters) |
//! | `whoami`    | writes the process's user name (`root` when the spec names none)     |
//! | `sh -c SCRIPT` | runs commands of this table joined by `;`, `&&`, `\|\|`, plus `id -u [USER]` and `adduser -D USER` (users are remembered per container) |
//!
//! Any other path fails to start with `ExecutableNotFound`. Signals end a process at once with
//! 128+N (143 for terminate, 137 for kill), like a shell would. With a TTY, stderr is merged
//! into stdout. Files streamed in are kept in memory per container, enough for tar round trips.
//!
//! The server gets real descriptors, as from the Linux host: OS pipes, bridged by threads to a
//! simulated process's in-memory pipes, and an exit pipe. The host keeps its own copies, as
//! the Linux host's container init does, so a process outlives the descriptors it handed out
//! and can be attached again.

use crate::os::{FakeOs, Fault};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use trellis_core::api::{
    DiskLimits, ImageRef, Limits, Metrics, NetOutRule, PortMapping, Signal, WindowSize,
};
use trellis_core::effect::{
    EffectError, EffectErrorKind, EffectKind, EffectOutput, InitConfig, NetworkConfig,
    ObservedHost, PluginUpConfig,
};
use trellis_core::network::NetworkAssignment;
use trellis_core::record::ContainerRecord;
use trellis_os::{
    FilePath, Host, HostCapacity, HostError, HostResult, ProcessIo, ProcessState, Rootfs,
    SpawnRequest,
};

/// Bytes a simulated pipe holds before its writer blocks (a Linux pipe holds 64 KiB).
const PIPE_CAPACITY: usize = 64 * 1024;

/// The programs a simulated process can be.
pub const PROGRAMS: &[&str] = &[
    "echo",
    "cat",
    "exit",
    "sleep",
    "yes-bytes",
    "stderr",
    "env",
    "true",
    "false",
    "sh",
    "hostname",
    "whoami",
];

/// A Linux hostname holds at most this many characters; longer handles keep their end, as gdn.
const HOSTNAME_MAX: usize = 49;

#[derive(Default)]
pub struct FakeHost {
    os: Arc<Mutex<FakeOs>>,
    /// Per container: path -> file or directory, as streamed in.
    files: Mutex<BTreeMap<String, BTreeMap<String, FileNode>>>,
    /// Per container: the simulated processes, so kills and stops reach them.
    processes: Arc<Mutex<BTreeMap<String, Vec<Arc<FakeProcess>>>>>,
    /// Per container: users added by simulated `adduser`.
    users: Mutex<BTreeMap<String, Arc<Mutex<std::collections::BTreeSet<String>>>>>,
    /// The host's side of every process's descriptors, by (handle, process id).
    kept: Arc<Mutex<BTreeMap<(String, String), Kept>>>,
}

/// What the host keeps of a process (the Linux host's init keeps the same).
struct Kept {
    process: Arc<FakeProcess>,
    /// The write end of its stdin pipe, until the server closes stdin.
    stdin: Option<OwnedFd>,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    status: Option<i32>,
    /// Exit pipes handed out and not yet written.
    exit_watchers: Vec<OwnedFd>,
}

impl Kept {
    /// Fresh duplicates of the server's side, and a new exit pipe.
    fn attachment(&mut self) -> std::io::Result<ProcessIo> {
        let (exit_r, exit_w) = os_pipe()?;
        match self.status {
            Some(status) => write_status(&exit_w, status),
            None => self.exit_watchers.push(exit_w),
        }
        Ok(ProcessIo {
            stdin: self.stdin.as_ref().map(OwnedFd::try_clone).transpose()?,
            stdout: self.stdout.try_clone()?,
            stderr: self.stderr.as_ref().map(OwnedFd::try_clone).transpose()?,
            exit: exit_r,
        })
    }
}

fn os_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

fn write_status(pipe: &OwnedFd, status: i32) {
    let _ = nix::unistd::write(pipe, &trellis_os::encode_exit_status(status));
}

/// Copies from `from` to `to` on a thread of its own until `from` ends or `to` fails.
fn bridge(
    name: &str,
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map(drop)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FileNode {
    Dir,
    File(Vec<u8>),
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    fn os(&self) -> MutexGuard<'_, FakeOs> {
        self.os.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, effect: EffectKind) -> HostResult<EffectOutput> {
        let mut os = self.os();
        let outcome = os.apply(&effect, Fault::None);
        // Exits caused by kills and stops are reported by the processes themselves.
        os.ended.clear();
        outcome.map_err(host_error)
    }

    fn apply_done(&self, effect: EffectKind) -> HostResult<()> {
        self.apply(effect).map(|_| ())
    }

    fn signal_all(&self, handle: &str, signal: Signal) {
        let processes = self
            .processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(handle)
            .cloned()
            .unwrap_or_default();
        for p in processes {
            p.deliver(signal);
        }
    }

    fn forget_processes(&self, handle: &str) -> Vec<Arc<FakeProcess>> {
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle)
            .unwrap_or_default()
    }

    fn kept(&self) -> MutexGuard<'_, BTreeMap<(String, String), Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_kept<T>(
        &self,
        handle: &str,
        process_id: &str,
        f: impl FnOnce(&mut Kept) -> HostResult<T>,
    ) -> HostResult<T> {
        let mut kept = self.kept();
        match kept.get_mut(&(handle.to_string(), process_id.to_string())) {
            Some(k) => f(k),
            None => Err(HostError::ProcessNotFound(process_id.to_string())),
        }
    }
}

fn host_error(e: EffectError) -> HostError {
    match e.kind {
        EffectErrorKind::ExecutableNotFound => HostError::ExecutableNotFound(e.message),
        EffectErrorKind::InvalidRequest => HostError::Invalid(e.message),
        EffectErrorKind::Host => HostError::Unexpected(e.message),
    }
}

impl Host for FakeHost {
    fn prepare_rootfs(
        &self,
        handle: &str,
        image: &ImageRef,
        privileged: bool,
        disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        match self.apply(EffectKind::PrepareRootfs {
            handle: handle.into(),
            image: image.clone(),
            privileged,
            disk: *disk,
        })? {
            EffectOutput::Rootfs { image_env } => Ok(Rootfs { image_env }),
            other => Err(HostError::Unexpected(format!(
                "prepare-rootfs answered {other:?}"
            ))),
        }
    }

    fn create_cgroup(&self, handle: &str, limits: &Limits, privileged: bool) -> HostResult<()> {
        self.apply_done(EffectKind::CreateCgroup {
            handle: handle.into(),
            limits: limits.clone(),
            privileged,
        })
    }

    fn setup_network(&self, handle: &str, config: &NetworkConfig) -> HostResult<()> {
        self.apply_done(EffectKind::SetupNetwork {
            handle: handle.into(),
            config: config.clone(),
        })
    }

    fn connect_network(
        &self,
        handle: &str,
        config: &PluginUpConfig,
    ) -> HostResult<std::collections::BTreeMap<String, String>> {
        match self.apply(EffectKind::ConnectNetwork {
            handle: handle.into(),
            config: config.clone(),
        })? {
            EffectOutput::NetworkProperties(properties) => Ok(properties),
            other => Err(HostError::Unexpected(format!(
                "connect-network answered {other:?}"
            ))),
        }
    }

    fn start_init(&self, handle: &str, config: &InitConfig) -> HostResult<()> {
        self.apply_done(EffectKind::StartInit {
            handle: handle.into(),
            config: config.clone(),
        })
    }

    fn persist_record(&self, record: &ContainerRecord) -> HostResult<()> {
        self.apply_done(EffectKind::PersistRecord {
            handle: record.handle.clone(),
            record: Box::new(record.clone()),
        })
    }

    fn kill_container(&self, handle: &str) -> HostResult<()> {
        for p in self.forget_processes(handle) {
            p.deliver(Signal::Kill);
            p.wait();
        }
        // The keeper goes with the container (the Linux host's init dies): exit pipes still
        // waiting end without a status.
        self.kept().retain(|(h, _), _| h != handle);
        self.apply_done(EffectKind::KillContainer {
            handle: handle.into(),
        })
    }

    fn teardown_network(
        &self,
        handle: &str,
        assignment: Option<&NetworkAssignment>,
    ) -> HostResult<()> {
        self.apply_done(EffectKind::TeardownNetwork {
            handle: handle.into(),
            assignment: assignment.copied(),
        })
    }

    fn remove_cgroup(&self, handle: &str) -> HostResult<()> {
        self.apply_done(EffectKind::RemoveCgroup {
            handle: handle.into(),
        })
    }

    fn remove_rootfs(&self, handle: &str) -> HostResult<()> {
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle);
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(handle);
        self.apply_done(EffectKind::RemoveRootfs {
            handle: handle.into(),
        })
    }

    fn delete_record(&self, handle: &str) -> HostResult<()> {
        self.apply_done(EffectKind::DeleteRecord {
            handle: handle.into(),
        })
    }

    fn spawn_process(&self, request: SpawnRequest<'_>) -> HostResult<ProcessIo> {
        let program = request
            .spec
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if program == "sh" {
            if let [flag, script, ..] = request.spec.args.as_slice() {
                if flag == "-c" && !simulable_script(script) {
                    return Err(HostError::ExecutableNotFound(format!(
                        "sh -c: the fake backend simulates only simple command lists, not {script:?}"
                    )));
                }
            }
        }
        if !PROGRAMS.contains(&program.as_str()) {
            return Err(HostError::ExecutableNotFound(format!(
                "exec: \"{}\": executable file not found in $PATH",
                request.spec.path
            )));
        }
        let effect = EffectKind::SpawnProcess {
            handle: request.handle.into(),
            process_id: request.process_id.into(),
            spec: Box::new(request.spec.clone()),
            env: request.env.to_vec(),
        };
        self.apply_done(effect)?;

        let stdin = Pipe::new();
        let stdout = Pipe::new();
        let tty = request.spec.tty.is_some();
        let stderr = if tty { stdout.clone() } else { Pipe::new() };
        let process = Arc::new(FakeProcess::default());
        // OS pipes in front of the in-memory ones; they exist before the program runs, or its
        // first write finds no reader.
        let io_error = |e| HostError::io("making a simulated process's pipes", e);
        // The program's own ends first: a bridge whose pipe has no writer yet would see its end.
        let program_stdin = stdin.reader(&process);
        let program_stdout = stdout.writer();
        let program_stderr = stderr.writer();
        let (stdin_r, stdin_w) = os_pipe().map_err(io_error)?;
        let (stdout_r, stdout_w) = os_pipe().map_err(io_error)?;
        bridge("fake-stdin", std::fs::File::from(stdin_r), stdin.writer()).map_err(io_error)?;
        bridge(
            "fake-stdout",
            stdout.reader(&process),
            std::fs::File::from(stdout_w),
        )
        .map_err(io_error)?;
        let stderr_r = if tty {
            None
        } else {
            let (r, w) = os_pipe().map_err(io_error)?;
            bridge(
                "fake-stderr",
                stderr.reader(&process),
                std::fs::File::from(w),
            )
            .map_err(io_error)?;
            Some(r)
        };
        let mut kept = Kept {
            process: process.clone(),
            stdin: Some(stdin_w),
            stdout: stdout_r,
            stderr: stderr_r,
            status: None,
            exit_watchers: Vec::new(),
        };
        let io = kept.attachment().map_err(io_error)?;
        self.kept().insert(
            (request.handle.to_string(), request.process_id.to_string()),
            kept,
        );
        let mut env = request.env.to_vec();
        env.extend(request.spec.env.iter().cloned());
        // `cat FILE...` reads the container's files as they are now.
        let files = if program == "cat" {
            let tree = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let tree = tree.get(request.handle);
            request
                .spec
                .args
                .iter()
                .map(|arg| {
                    let path = normalize(arg);
                    let data = match tree.and_then(|t| t.get(&path)) {
                        Some(FileNode::File(data)) => Some(data.clone()),
                        _ => None,
                    };
                    (arg.clone(), data)
                })
                .collect()
        } else {
            Vec::new()
        };
        let users = self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(request.handle.to_string())
            .or_default()
            .clone();
        let hostname = {
            let chars: Vec<char> = request.handle.chars().collect();
            chars[chars.len().saturating_sub(HOSTNAME_MAX)..]
                .iter()
                .collect()
        };
        let user = match request.spec.user.split(':').next() {
            Some("") | None => "root".to_string(),
            Some(user) => user.to_string(),
        };
        let program = Program {
            name: program,
            hostname,
            user,
            users,
            files,
            args: request.spec.args.clone(),
            env,
            stdin: program_stdin,
            stdout: program_stdout,
            stderr: program_stderr,
            process: process.clone(),
        };
        self.processes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(request.handle.to_string())
            .or_default()
            .push(process.clone());

        let os = self.os.clone();
        let registry = self.processes.clone();
        let kept = self.kept.clone();
        let handle = request.handle.to_string();
        let process_id = request.process_id.to_string();
        std::thread::Builder::new()
            .name("fake-process".into())
            .spawn(move || {
                let finished = program.process.clone();
                let code = program.run();
                os.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .end_process(&handle, &process_id);
                if let Some(list) = registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&handle)
                {
                    list.retain(|p| !Arc::ptr_eq(p, &finished));
                }
                finished.finish(code);
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(k) = kept.get_mut(&(handle, process_id)) {
                    if Arc::ptr_eq(&k.process, &finished) {
                        k.status = Some(code);
                        for watcher in k.exit_watchers.drain(..) {
                            write_status(&watcher, code);
                        }
                    }
                }
            })
            .map_err(|e| HostError::io("spawning a simulated process", e))?;

        Ok(io)
    }

    fn attach_process(&self, handle: &str, process_id: &str) -> HostResult<ProcessIo> {
        self.with_kept(handle, process_id, |k| {
            k.attachment()
                .map_err(|e| HostError::io("duplicating a process's pipes", e))
        })
    }

    fn processes(&self, handle: &str) -> HostResult<Vec<ProcessState>> {
        Ok(self
            .kept()
            .iter()
            .filter(|((h, _), _)| h == handle)
            .map(|((_, id), k)| ProcessState {
                id: id.clone(),
                exit_status: k.status,
            })
            .collect())
    }

    fn signal_process(&self, handle: &str, process_id: &str, signal: Signal) -> HostResult<()> {
        self.with_kept(handle, process_id, |k| {
            k.process.deliver(signal);
            Ok(())
        })
    }

    fn resize_process(&self, handle: &str, process_id: &str, size: WindowSize) -> HostResult<()> {
        self.with_kept(handle, process_id, |k| {
            k.process.lock().window = Some(size);
            Ok(())
        })
    }

    fn close_process_stdin(&self, handle: &str, process_id: &str) -> HostResult<()> {
        self.with_kept(handle, process_id, |k| {
            k.stdin = None;
            Ok(())
        })
    }

    fn release_process(&self, handle: &str, process_id: &str) -> HostResult<()> {
        let mut kept = self.kept();
        let key = (handle.to_string(), process_id.to_string());
        if kept.get(&key).is_some_and(|k| k.status.is_some()) {
            kept.remove(&key);
        }
        Ok(())
    }

    fn stop_processes(&self, handle: &str, kill: bool) -> HostResult<()> {
        let signal = if kill {
            Signal::Kill
        } else {
            Signal::Terminate
        };
        self.signal_all(handle, signal);
        let processes = self.forget_processes(handle);
        for p in &processes {
            if !p.wait_timeout(Duration::from_secs(10)) {
                p.deliver(Signal::Kill);
                p.wait();
            }
        }
        self.apply_done(EffectKind::StopProcesses {
            handle: handle.into(),
            kill,
        })
    }

    fn map_port(
        &self,
        handle: &str,
        assignment: &NetworkAssignment,
        mapping: &PortMapping,
    ) -> HostResult<()> {
        self.apply_done(EffectKind::MapPort {
            handle: handle.into(),
            assignment: *assignment,
            mapping: *mapping,
        })
    }

    fn add_netout_rules(
        &self,
        handle: &str,
        assignment: &NetworkAssignment,
        rules: &[NetOutRule],
    ) -> HostResult<()> {
        self.apply_done(EffectKind::AddNetOutRules {
            handle: handle.into(),
            assignment: *assignment,
            rules: rules.to_vec(),
        })
    }

    fn read_metrics(&self, handle: &str) -> HostResult<Metrics> {
        match self.apply(EffectKind::ReadMetrics {
            handle: handle.into(),
        })? {
            EffectOutput::Metrics(m) => Ok(*m),
            other => Err(HostError::Unexpected(format!(
                "read-metrics answered {other:?}"
            ))),
        }
    }

    fn read_pea_metrics(&self, handle: &str, process_id: &str) -> HostResult<Metrics> {
        match self.apply(EffectKind::ReadPeaMetrics {
            handle: handle.into(),
            process_id: process_id.into(),
        })? {
            EffectOutput::Metrics(m) => Ok(*m),
            other => Err(HostError::Unexpected(format!(
                "read-pea-metrics answered {other:?}"
            ))),
        }
    }

    fn read_capacity(&self) -> HostResult<HostCapacity> {
        match self.apply(EffectKind::ReadCapacity)? {
            EffectOutput::Capacity {
                memory_in_bytes,
                disk_in_bytes,
                schedulable_disk_in_bytes,
            } => Ok(HostCapacity {
                memory_in_bytes,
                disk_in_bytes,
                schedulable_disk_in_bytes,
            }),
            other => Err(HostError::Unexpected(format!(
                "read-capacity answered {other:?}"
            ))),
        }
    }

    fn stream_in(&self, to: FilePath<'_>, tar: &mut dyn Read) -> HostResult<()> {
        self.require_container(to.handle)?;
        self.require_user(to.handle, to.user)?;
        let base = normalize(to.path);
        let mut unpacked = Vec::new();
        let mut archive = tar::Archive::new(tar);
        let entries = archive
            .entries()
            .map_err(|e| HostError::Invalid(format!("reading tar stream: {e}")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| HostError::Invalid(format!("reading tar stream: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| HostError::Invalid(format!("bad path in tar stream: {e}")))?
                .to_string_lossy()
                .to_string();
            let full = normalize(&format!("{base}/{path}"));
            if entry.header().entry_type().is_dir() {
                unpacked.push((full, FileNode::Dir));
            } else {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| HostError::Invalid(format!("reading tar stream: {e}")))?;
                unpacked.push((full, FileNode::File(data)));
            }
        }
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let tree = files.entry(to.handle.to_string()).or_default();
        for dir in ancestors(&base) {
            tree.insert(dir, FileNode::Dir);
        }
        for (path, node) in unpacked {
            for dir in ancestors(&path) {
                tree.entry(dir).or_insert(FileNode::Dir);
            }
            tree.insert(path, node);
        }
        Ok(())
    }

    fn stream_out(&self, from: FilePath<'_>, tar: &mut dyn Write) -> HostResult<()> {
        self.require_container(from.handle)?;
        self.require_user(from.handle, from.user)?;
        let contents_only = from.path.ends_with('/');
        let source = normalize(from.path);
        let selected: Vec<(String, FileNode)> = {
            let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            let tree = files.get(from.handle).cloned().unwrap_or_default();
            let Some(root) = tree
                .get(&source)
                .cloned()
                .or_else(|| (source == "/").then_some(FileNode::Dir))
            else {
                return Err(HostError::Invalid(format!(
                    "{}: no such file or directory",
                    from.path
                )));
            };
            let prefix = if source == "/" {
                "/".to_string()
            } else {
                format!("{source}/")
            };
            let (strip, top) = if contents_only {
                (prefix.clone(), None)
            } else {
                let parent = match source.rfind('/') {
                    Some(0) | None => "/".to_string(),
                    Some(i) => format!("{}/", &source[..i]),
                };
                (parent, Some(root))
            };
            let mut selected = Vec::new();
            if let Some(top) = top {
                selected.push((source[strip.len().min(source.len())..].to_string(), top));
            } else {
                selected.push((".".to_string(), FileNode::Dir));
            }
            for (path, node) in tree.range(prefix.clone()..) {
                if !path.starts_with(&prefix) {
                    break;
                }
                selected.push((path[strip.len()..].to_string(), node.clone()));
            }
            selected
        };
        let mut builder = tar::Builder::new(tar);
        for (name, node) in selected {
            let mut header = tar::Header::new_gnu();
            match &node {
                FileNode::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                }
                FileNode::File(data) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(0o644);
                    header.set_size(data.len() as u64);
                }
            }
            let name = if matches!(node, FileNode::Dir) && name != "." {
                format!("{name}/")
            } else {
                name
            };
            let data: &[u8] = match &node {
                FileNode::File(data) => data,
                FileNode::Dir => &[],
            };
            builder
                .append_data(&mut header, &name, data)
                .map_err(|e| HostError::io("writing tar stream", e))?;
        }
        builder
            .into_inner()
            .map_err(|e| HostError::io("writing tar stream", e))?
            .flush()
            .map_err(|e| HostError::io("writing tar stream", e))
    }

    fn load_records(&self) -> HostResult<Vec<ContainerRecord>> {
        Ok(self.os().load_records())
    }

    fn observe(&self) -> HostResult<ObservedHost> {
        Ok(self.os().observe())
    }
}

impl FakeHost {
    /// Users a file stream may run as: root (or empty) and those made with `adduser`.
    fn require_user(&self, handle: &str, user: &str) -> HostResult<()> {
        if user.is_empty() || user == "root" || user == "0" || user == "0:0" {
            return Ok(());
        }
        let known = self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(handle)
            .is_some_and(|users| {
                users
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(user)
            });
        if known {
            Ok(())
        } else {
            Err(HostError::Invalid(format!(
                "unable to find user {user}: no matching entries in passwd file"
            )))
        }
    }

    fn require_container(&self, handle: &str) -> HostResult<()> {
        if self.os().containers.get(handle).is_some_and(|c| c.rootfs) {
            Ok(())
        } else {
            Err(HostError::Unexpected(format!(
                "container {handle} has no rootfs"
            )))
        }
    }
}

/// `sleep`'s argument: a number of seconds with an optional `s`, `m`, `h` or `d` suffix.
fn sleep_seconds(arg: &str) -> Option<f64> {
    let (number, unit) = match arg.char_indices().last() {
        Some((i, 's')) => (&arg[..i], 1.0),
        Some((i, 'm')) => (&arg[..i], 60.0),
        Some((i, 'h')) => (&arg[..i], 3600.0),
        Some((i, 'd')) => (&arg[..i], 86400.0),
        _ => (arg, 1.0),
    };
    let seconds = number.parse::<f64>().ok()? * unit;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds)
}

/// Whether the simulated `sh -c` can run `script`: simulated commands joined by `;`, `&&` and
/// `||`, nothing else (no expansions, redirections, pipes or background jobs).
fn simulable_script(script: &str) -> bool {
    if script.contains(['$', '`', '<', '>', '(', ')', '{', '}', '*', '?']) {
        return false;
    }
    let mut command_start = true;
    for word in shell_words(script) {
        if matches!(word.as_str(), ";" | "&&" | "||") {
            command_start = true;
            continue;
        }
        if word.contains(['&', '|']) {
            return false;
        }
        if command_start {
            let name = word.rsplit('/').next().unwrap_or_default();
            let builtin = matches!(name, "id" | "adduser" | "exit");
            if !(builtin || PROGRAMS.contains(&name)) || name == "sh" {
                return false;
            }
            command_start = false;
        }
    }
    true
}

/// Splits a shell script into words and the operators `;`, `&&`, `||`.
fn shell_words(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = script.chars().peekable();
    let flush = |word: &mut String, in_word: &mut bool, out: &mut Vec<String>| {
        if *in_word {
            out.push(std::mem::take(word));
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_word = true;
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    word.push(q);
                }
            }
            ';' | '\n' => {
                flush(&mut word, &mut in_word, &mut out);
                out.push(";".into());
            }
            '&' | '|' if chars.peek() == Some(&c) => {
                chars.next();
                flush(&mut word, &mut in_word, &mut out);
                out.push(format!("{c}{c}"));
            }
            c if c.is_whitespace() => flush(&mut word, &mut in_word, &mut out),
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    flush(&mut word, &mut in_word, &mut out);
    out
}

/// `a/./b//c/` -> `/a/b/c`; `..` is clamped at the root.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Every proper ancestor directory of `path` except the root.
fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = path;
    while let Some(i) = at.rfind('/') {
        if i == 0 {
            break;
        }
        at = &at[..i];
        out.push(at.to_string());
    }
    out
}

/// A simulated process: its signal, its exit status, and whoever waits for them.
#[derive(Default)]
pub struct FakeProcess {
    state: Mutex<SimulatedState>,
    changed: Condvar,
}

#[derive(Default)]
struct SimulatedState {
    signal: Option<Signal>,
    status: Option<i32>,
    window: Option<WindowSize>,
}

impl FakeProcess {
    fn lock(&self) -> MutexGuard<'_, SimulatedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(&self, signal: Signal) {
        let mut state = self.lock();
        if state.status.is_none() && state.signal != Some(Signal::Kill) {
            state.signal = Some(signal);
        }
        self.changed.notify_all();
    }

    fn pending_signal(&self) -> Option<Signal> {
        self.lock().signal
    }

    fn finish(&self, code: i32) {
        self.lock().status = Some(code);
        self.changed.notify_all();
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.status.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Sleeps until `deadline` unless a signal comes first.
    fn sleep_until(&self, deadline: Instant) -> Option<Signal> {
        let mut state = self.lock();
        loop {
            if let Some(signal) = state.signal {
                return Some(signal);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The last window size set, for tests of TTY resizing.
    pub fn window_size(&self) -> Option<WindowSize> {
        self.lock().window
    }
}

impl FakeProcess {
    /// Blocks until the process has exited; its exit status.
    pub fn wait(&self) -> i32 {
        let mut state = self.lock();
        loop {
            if let Some(code) = state.status {
                return code;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

fn signal_status(signal: Signal) -> i32 {
    match signal {
        Signal::Terminate => 128 + 15,
        Signal::Kill => 128 + 9,
    }
}

/// What a simulated program gets: its arguments, environment and pipe ends.
struct Program {
    name: String,
    /// The container's hostname, as a Linux container has it.
    hostname: String,
    /// The user the process runs as (by name).
    user: String,
    /// Users made with `adduser` in this container (for `id -u`).
    users: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// For `cat FILE...`: each argument and the file's contents, if it exists.
    files: Vec<(String, Option<Vec<u8>>)>,
    args: Vec<String>,
    env: Vec<String>,
    stdin: PipeReader,
    stdout: PipeWriter,
    stderr: PipeWriter,
    process: Arc<FakeProcess>,
}

/// Why a program stopped early.
enum Interrupt {
    Signal(Signal),
    /// Its output's reader went away (SIGPIPE).
    BrokenPipe,
}

impl Program {
    /// Runs to the end and returns the exit status; the pipe ends close on return.
    fn run(mut self) -> i32 {
        match self.body() {
            Ok(code) => code,
            Err(Interrupt::Signal(signal)) => signal_status(signal),
            Err(Interrupt::BrokenPipe) => 128 + 13,
        }
    }

    fn body(&mut self) -> Result<i32, Interrupt> {
        let name = self.name.clone();
        let args = self.args.clone();
        self.command(&name, &args)
    }

    /// Runs one simulated command with the program's streams.
    fn command(&mut self, name: &str, args: &[String]) -> Result<i32, Interrupt> {
        let line = |args: &[String]| format!("{}\n", args.join(" ")).into_bytes();
        match name {
            "true" => Ok(0),
            "false" => Ok(1),
            "sh" => match args {
                [flag, script, ..] if flag == "-c" => self.shell(script),
                _ => {
                    let text = b"sh: only 'sh -c SCRIPT' is simulated\n";
                    write_all(&mut self.stderr, &self.process, text)?;
                    Ok(2)
                }
            },
            "id" => {
                let user = match args {
                    [flag] if flag == "-u" => Some("root".to_string()),
                    [flag, user] if flag == "-u" => Some(user.clone()),
                    _ => None,
                };
                let known = user.as_ref().and_then(|u| {
                    if u == "root" {
                        return Some(0);
                    }
                    let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                    users.iter().position(|x| x == u).map(|i| 1000 + i)
                });
                match known {
                    Some(uid) => {
                        self.write_out(format!("{uid}\n").as_bytes())?;
                        Ok(0)
                    }
                    None => {
                        let text = format!("id: '{}': no such user\n", user.unwrap_or_default());
                        write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                        Ok(1)
                    }
                }
            }
            "adduser" => match args.last() {
                Some(user) if !user.starts_with('-') => {
                    self.users
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(user.clone());
                    Ok(0)
                }
                _ => Ok(1),
            },
            "echo" => {
                let text = line(args);
                self.write_out(&text)?;
                Ok(0)
            }
            "hostname" => {
                let text = format!("{}\n", self.hostname);
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "whoami" => {
                let text = format!("{}\n", self.user);
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "stderr" => {
                let text = line(args);
                write_all(&mut self.stderr, &self.process, &text)?;
                Ok(0)
            }
            "env" => {
                // Later entries win, as in a real process environment.
                let mut seen = std::collections::BTreeSet::new();
                let mut kept: Vec<&String> = Vec::new();
                for entry in self.env.iter().rev() {
                    let key = entry.split('=').next().unwrap_or_default();
                    if seen.insert(key) {
                        kept.push(entry);
                    }
                }
                let text: String = kept.iter().rev().map(|e| format!("{e}\n")).collect();
                self.write_out(text.as_bytes())?;
                Ok(0)
            }
            "exit" => Ok(args.first().and_then(|a| a.parse().ok()).unwrap_or(0)),
            "sleep" => {
                let seconds = args.first().and_then(|a| sleep_seconds(a)).unwrap_or(0.0);
                let deadline = Instant::now() + Duration::from_secs_f64(seconds.min(1e9));
                match self.process.sleep_until(deadline) {
                    Some(signal) => Err(Interrupt::Signal(signal)),
                    None => Ok(0),
                }
            }
            "yes-bytes" => {
                let mut left: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
                let block = b"y\n".repeat(32 * 1024);
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    self.write_out(&block[..n])?;
                    left -= n as u64;
                }
                Ok(0)
            }
            "cat" if !args.is_empty() => {
                let mut status = 0;
                for name in args {
                    if name == "-" || name == "/dev/stdin" {
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            let n = self.stdin.read_interruptible(&mut buf, &self.process)?;
                            if n == 0 {
                                break;
                            }
                            self.write_out(&buf[..n])?;
                        }
                        continue;
                    }
                    let data = self
                        .files
                        .iter()
                        .find(|(n, _)| n == name)
                        .and_then(|(_, d)| d.clone());
                    match data {
                        Some(data) => self.write_out(&data)?,
                        None => {
                            let text = format!("cat: {name}: No such file or directory\n");
                            write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                            status = 1;
                        }
                    }
                }
                Ok(status)
            }
            "cat" => {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let n = self.stdin.read_interruptible(&mut buf, &self.process)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    self.write_out(&buf[..n])?;
                }
            }
            other => {
                let text = format!("sh: {other}: not found\n");
                write_all(&mut self.stderr, &self.process, text.as_bytes())?;
                Ok(127)
            }
        }
    }

    /// `sh -c`: commands joined by `;`, `&&` and `||`, words split on blanks, with single and
    /// double quotes. `exit N` ends the script.
    fn shell(&mut self, script: &str) -> Result<i32, Interrupt> {
        let mut status = 0;
        let mut connector = ";".to_string();
        let mut words: Vec<String> = Vec::new();
        let mut tokens = shell_words(script);
        tokens.push(";".into());
        for token in tokens {
            if matches!(token.as_str(), ";" | "&&" | "||") {
                let run = match connector.as_str() {
                    "&&" => status == 0,
                    "||" => status != 0,
                    _ => true,
                };
                if run && !words.is_empty() {
                    if words[0] == "exit" {
                        return Ok(words.get(1).and_then(|n| n.parse().ok()).unwrap_or(status));
                    }
                    let (name, args) = words.split_first().expect("not empty");
                    status = self.command(name.rsplit('/').next().unwrap_or(name), args)?;
                }
                words.clear();
                connector = token;
            } else {
                words.push(token);
            }
        }
        Ok(status)
    }

    fn write_out(&mut self, data: &[u8]) -> Result<(), Interrupt> {
        write_all(&mut self.stdout, &self.process, data)
    }
}

fn write_all(pipe: &mut PipeWriter, process: &FakeProcess, data: &[u8]) -> Result<(), Interrupt> {
    let mut at = 0;
    while at < data.len() {
        at += pipe.write_interruptible(&data[at..], process)?;
    }
    Ok(())
}

/// An in-memory pipe with a pipe's blocking: readers wait for data or for every writer to be
/// gone (EOF); writers wait for room, and fail once every reader is gone.
#[derive(Clone, Default)]
struct Pipe(Arc<PipeShared>);

#[derive(Default)]
struct PipeShared {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Default)]
struct PipeState {
    buffer: VecDeque<u8>,
    writers: usize,
    readers: usize,
}

/// How long a blocked program waits before checking for a signal again.
const SIGNAL_POLL: Duration = Duration::from_millis(10);

impl Pipe {
    fn new() -> Pipe {
        Pipe::default()
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writer(&self) -> PipeWriter {
        self.lock().writers += 1;
        PipeWriter(self.clone())
    }

    fn reader(&self, _owner: &Arc<FakeProcess>) -> PipeReader {
        self.lock().readers += 1;
        PipeReader(self.clone())
    }
}

struct PipeWriter(Pipe);
struct PipeReader(Pipe);

impl PipeWriter {
    /// Writes what fits; `process` (when it is the writer) may be interrupted by a signal.
    fn write_some(
        &mut self,
        data: &[u8],
        process: Option<&FakeProcess>,
    ) -> Result<usize, Interrupt> {
        let pipe = &self.0;
        let mut state = pipe.lock();
        loop {
            if let Some(signal) = process.and_then(FakeProcess::pending_signal) {
                return Err(Interrupt::Signal(signal));
            }
            if state.readers == 0 {
                return Err(Interrupt::BrokenPipe);
            }
            let room = PIPE_CAPACITY.saturating_sub(state.buffer.len());
            if room > 0 {
                let n = room.min(data.len());
                state.buffer.extend(&data[..n]);
                pipe.0.changed.notify_all();
                return Ok(n);
            }
            state = wait(pipe, state, process.is_some());
        }
    }

    fn write_interruptible(
        &mut self,
        data: &[u8],
        process: &FakeProcess,
    ) -> Result<usize, Interrupt> {
        self.write_some(data, Some(process))
    }
}

fn wait<'a>(
    pipe: &'a Pipe,
    state: MutexGuard<'a, PipeState>,
    poll: bool,
) -> MutexGuard<'a, PipeState> {
    if poll {
        pipe.0
            .changed
            .wait_timeout(state, SIGNAL_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0
    } else {
        pipe.0
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.write_some(data, None)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the process's stdin is closed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.lock().writers -= 1;
        self.0 .0.changed.notify_all();
    }
}

impl PipeReader {
    fn read_some(
        &mut self,
        buf: &mut [u8],
        process: Option<&FakeProcess>,
    ) -> Result<usize, Interrupt> {
        let pipe = &self.0;
        let mut state = pipe.lock();
        loop {
            if let Some(signal) = process.and_then(FakeProcess::pending_signal) {
                return Err(Interrupt::Signal(signal));
            }
            if !state.buffer.is_empty() {
                let n = buf.len().min(state.buffer.len());
                for (slot, byte) in buf.iter_mut().zip(state.buffer.drain(..n)) {
                    *slot = byte;
                }
                pipe.0.changed.notify_all();
                return Ok(n);
            }
            if state.writers == 0 || buf.is_empty() {
                return Ok(0);
            }
            state = wait(pipe, state, process.is_some());
        }
    }

    fn read_interruptible(
        &mut self,
        buf: &mut [u8],
        process: &FakeProcess,
    ) -> Result<usize, Interrupt> {
        self.read_some(buf, Some(process))
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf, None)
            .map_err(|_| io::Error::other("interrupted"))
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.lock().readers -= 1;
        self.0 .0.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::api::ProcessSpec;

    fn host_with_container(handle: &str) -> FakeHost {
        let host = FakeHost::new();
        host.prepare_rootfs(handle, &ImageRef::default(), false, &DiskLimits::default())
            .unwrap();
        host.create_cgroup(handle, &Limits::default(), false)
            .unwrap();
        let assignment = NetworkAssignment {
            subnet: "10.254.0.0/30".parse().unwrap(),
            container_ip: "10.254.0.1".parse().unwrap(),
        };
        host.setup_network(
            handle,
            &NetworkConfig {
                assignment,
                port_mappings: vec![],
                netout_rules: vec![],
                bandwidth: Default::default(),
                privileged: false,
            },
        )
        .unwrap();
        host.start_init(
            handle,
            &InitConfig {
                hostname: handle.into(),
                privileged: false,
                bind_mounts: vec![],
                container_ip: None,
            },
        )
        .unwrap();
        host
    }

    /// A spawned process's descriptors as files.
    struct Proc {
        id: String,
        stdin: Option<std::fs::File>,
        stdout: std::fs::File,
        exit: OwnedFd,
    }

    impl Proc {
        fn output(&mut self) -> String {
            let mut out = String::new();
            self.stdout.read_to_string(&mut out).unwrap();
            out
        }

        fn wait(self) -> i32 {
            ProcessIo::wait(self.exit)
        }
    }

    fn spawn(host: &FakeHost, path: &str, args: &[&str]) -> HostResult<Proc> {
        let spec = ProcessSpec {
            path: path.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let id = format!("p-{path}-{}", args.join("-"));
        let io = host.spawn_process(SpawnRequest {
            handle: "h",
            process_id: &id,
            spec: &spec,
            env: &[],
        })?;
        Ok(Proc {
            id,
            stdin: io.stdin.map(std::fs::File::from),
            stdout: io.stdout.into(),
            exit: io.exit,
        })
    }

    #[test]
    fn cat_echoes_stdin_and_exits_at_eof() {
        let host = host_with_container("h");
        let mut cat = spawn(&host, "cat", &[]).unwrap();
        cat.stdin.as_mut().unwrap().write_all(b"hello").unwrap();
        // EOF needs the host's copy of stdin closed too (the keeper holds it).
        cat.stdin = None;
        host.close_process_stdin("h", &cat.id).unwrap();
        assert_eq!(cat.output(), "hello");
        assert_eq!(cat.wait(), 0);
        assert!(host.observe().unwrap().containers["h"].processes.is_empty());
    }

    #[test]
    fn a_process_can_be_attached_again_until_released() {
        let host = host_with_container("h");
        let sleeper = spawn(&host, "sleep", &["1000"]).unwrap();
        let id = sleeper.id.clone();
        // Whoever had the first descriptors is gone; the process is not.
        drop(sleeper);
        let again = host.attach_process("h", &id).unwrap();
        assert_eq!(
            host.processes("h").unwrap(),
            vec![ProcessState {
                id: id.clone(),
                exit_status: None
            }]
        );
        host.signal_process("h", &id, Signal::Terminate).unwrap();
        assert_eq!(ProcessIo::wait(again.exit), 143);
        assert_eq!(host.processes("h").unwrap()[0].exit_status, Some(143));
        let late = host.attach_process("h", &id).unwrap();
        assert_eq!(ProcessIo::wait(late.exit), 143, "the status is kept");
        host.release_process("h", &id).unwrap();
        assert!(matches!(
            host.attach_process("h", &id),
            Err(HostError::ProcessNotFound(_))
        ));
    }

    #[test]
    fn hostname_is_the_handles_end_and_whoami_the_user() {
        let long = "a-handle-longer-than-forty-nine-characters-0123456789";
        let host = host_with_container(long);
        let output = |path: &str, user: &str| {
            let spec = ProcessSpec {
                path: path.into(),
                user: user.into(),
                ..Default::default()
            };
            let io = host
                .spawn_process(SpawnRequest {
                    handle: long,
                    process_id: &format!("{path}-{user}"),
                    spec: &spec,
                    env: &[],
                })
                .unwrap();
            let mut out = String::new();
            std::fs::File::from(io.stdout)
                .read_to_string(&mut out)
                .unwrap();
            assert_eq!(ProcessIo::wait(io.exit), 0);
            out
        };
        assert_eq!(
            output("hostname", ""),
            format!("{}\n", &long[long.len() - 49..])
        );
        assert_eq!(output("whoami", ""), "root\n");
        assert_eq!(output("/usr/bin/whoami", "alice"), "alice\n");
    }

    #[test]
    fn exit_codes_signals_and_unknown_programs() {
        let host = host_with_container("h");
        assert_eq!(spawn(&host, "exit", &["42"]).unwrap().wait(), 42);
        assert_eq!(sleep_seconds("10000d"), Some(864_000_000.0));
        assert_eq!(sleep_seconds("1.5m"), Some(90.0));
        assert_eq!(sleep_seconds("x"), None);
        let sleeper = spawn(&host, "/bin/sleep", &["1000"]).unwrap();
        host.signal_process("h", &sleeper.id, Signal::Terminate)
            .unwrap();
        assert_eq!(sleeper.wait(), 143);
        assert!(matches!(
            spawn(&host, "nope", &[]),
            Err(HostError::ExecutableNotFound(_))
        ));
    }

    #[test]
    fn tar_round_trip() {
        let host = host_with_container("h");
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, "dir/file.txt", &b"hello"[..])
            .unwrap();
        let bytes = archive.into_inner().unwrap();
        let to = FilePath {
            handle: "h",
            path: "/tmp/in",
            user: "",
        };
        host.stream_in(to, &mut &bytes[..]).unwrap();
        let mut cat = spawn(&host, "cat", &["/tmp/in/dir/file.txt", "/nope"]).unwrap();
        assert_eq!(cat.output(), "hello");
        assert_eq!(cat.wait(), 1);
        let mut sh = spawn(
            &host,
            "sh",
            &[
                "-c",
                "id -u alice || adduser -D alice; id -u 'alice' && exit 7",
            ],
        )
        .unwrap();
        assert_eq!(sh.output(), "1000\n");
        assert_eq!(sh.wait(), 7);
        assert!(matches!(
            spawn(&host, "sh", &["-c", "trap wait TERM; sleep 1 & wait"]),
            Err(HostError::ExecutableNotFound(_))
        ));
        assert!(matches!(
            spawn(&host, "sh", &["-c", "echo $HOME"]),
            Err(HostError::ExecutableNotFound(_))
        ));
        let mut out = Vec::new();
        let from = FilePath {
            handle: "h",
            path: "/tmp/in/dir/file.txt",
            user: "",
        };
        host.stream_out(from, &mut out).unwrap();
        let mut archive = tar::Archive::new(&out[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("file.txt"));
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello");
    }
}

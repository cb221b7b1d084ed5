//! `FakeHost`: the [`Host`] the server runs on with `--backend fake`.
//!
//! Container effects are carried out by [`FakeOs`] (without faults), so the server drives the
//! same in-memory model the simulator checks. Processes are simulated stand-ins (see
//! [`crate::programs`]) run on threads with in-memory pipes ([`crate::pipe`]); files streamed
//! in are kept in memory per container ([`crate::files`]).
//!
//! The server gets real descriptors, as from the Linux host: OS pipes, bridged by threads to a
//! simulated process's in-memory pipes, and an exit pipe. The host keeps its own copies, as
//! the Linux host's container init does, so a process outlives the descriptors it handed out
//! and can be attached again.

use crate::files::{self, FileTree};
use crate::lock;
use crate::os::{FakeOs, Fault};
use crate::pipe::{bridge, os_pipe, write_status, Pipe};
use crate::process::FakeProcess;
use crate::programs::{simulable_script, Program, PROGRAMS};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use trellis_core::api::Signal;
use trellis_core::api::WindowSize;
use trellis_core::effect::{EffectError, EffectErrorKind, EffectKind, ObservedHost, Outcome};
use trellis_core::record::ContainerRecord;
use trellis_os::{FilePath, Host, HostError, HostResult, ProcessIo, ProcessState, SpawnRequest};

/// How long a stop waits for processes to end after SIGTERM before it kills them.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A Linux hostname holds at most this many characters; longer handles keep their end, as gdn.
const HOSTNAME_MAX: usize = 49;

#[derive(Default)]
pub struct FakeHost {
    os: Arc<Mutex<FakeOs>>,
    /// Per container: path -> file or directory, as streamed in.
    files: Mutex<BTreeMap<String, FileTree>>,
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

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    fn os(&self) -> MutexGuard<'_, FakeOs> {
        lock(&self.os)
    }

    /// Applies an effect to the model, without faults.
    fn apply(&self, effect: &EffectKind) -> Outcome {
        let mut os = self.os();
        let outcome = os.apply(effect, Fault::None);
        // Exits caused by kills and stops are reported by the processes themselves.
        os.ended.clear();
        outcome
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
        lock(&self.processes).remove(handle).unwrap_or_default()
    }

    fn kept(&self) -> MutexGuard<'_, BTreeMap<(String, String), Kept>> {
        lock(&self.kept)
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
    fn execute(&self, effect: &EffectKind) -> Outcome {
        // What the simulated processes and files need beyond `FakeOs`'s model.
        match effect {
            EffectKind::KillContainer { handle } => {
                for p in self.forget_processes(handle) {
                    p.deliver(Signal::Kill);
                    p.wait();
                }
                // The keeper goes with the container (the Linux host's init dies): exit pipes
                // still waiting end without a status.
                self.kept().retain(|(h, _), _| h != handle);
            }
            EffectKind::RemoveRootfs { handle } => {
                lock(&self.users).remove(handle);
                lock(&self.files).remove(handle);
            }
            EffectKind::StopProcesses { handle, kill } => {
                let signal = if *kill {
                    Signal::Kill
                } else {
                    Signal::Terminate
                };
                self.signal_all(handle, signal);
                for p in &self.forget_processes(handle) {
                    if !p.wait_timeout(STOP_GRACE) {
                        p.deliver(Signal::Kill);
                        p.wait();
                    }
                }
            }
            _ => {}
        }
        self.apply(effect)
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
        self.apply(&effect).map_err(host_error)?;

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
            let trees = lock(&self.files);
            let tree = trees.get(request.handle);
            request
                .spec
                .args
                .iter()
                .map(|arg| {
                    (
                        arg.clone(),
                        tree.and_then(|t| t.file(arg)).map(<[u8]>::to_vec),
                    )
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
        lock(&self.processes)
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
                lock(&os).end_process(&handle, &process_id);
                if let Some(list) = lock(&registry).get_mut(&handle) {
                    list.retain(|p| !Arc::ptr_eq(p, &finished));
                }
                finished.finish(code);
                let mut kept = lock(&kept);
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
            k.process.set_window_size(size);
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

    fn stream_in(&self, to: FilePath<'_>, tar: &mut dyn Read) -> HostResult<()> {
        self.require_container(to.handle)?;
        self.require_user(to.handle, to.user)?;
        let unpacked = files::read_tar(to.path, tar)?;
        let mut files = lock(&self.files);
        files
            .entry(to.handle.to_string())
            .or_default()
            .add(unpacked);
        Ok(())
    }

    fn stream_out(&self, from: FilePath<'_>, tar: &mut dyn Write) -> HostResult<()> {
        self.require_container(from.handle)?;
        self.require_user(from.handle, from.user)?;
        let selected = lock(&self.files)
            .get(from.handle)
            .cloned()
            .unwrap_or_default()
            .select(from.path)?;
        files::write_tar(selected, tar)
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
            .is_some_and(|users| lock(users).contains(user));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use trellis_core::api::{DiskLimits, ImageRef, Limits, ProcessSpec};
    use trellis_core::effect::{InitConfig, NetworkConfig};
    use trellis_core::network::NetworkAssignment;

    fn host_with_container(handle: &str) -> FakeHost {
        let host = FakeHost::new();
        let assignment = NetworkAssignment {
            subnet: "10.254.0.0/30".parse().unwrap(),
            container_ip: "10.254.0.1".parse().unwrap(),
        };
        let effects = [
            EffectKind::PrepareRootfs {
                handle: handle.into(),
                image: ImageRef::default(),
                privileged: false,
                disk: DiskLimits::default(),
            },
            EffectKind::CreateCgroup {
                handle: handle.into(),
                limits: Limits::default(),
                privileged: false,
            },
            EffectKind::SetupNetwork {
                handle: handle.into(),
                config: NetworkConfig {
                    assignment,
                    port_mappings: vec![],
                    netout_rules: vec![],
                    bandwidth: Default::default(),
                    privileged: false,
                },
            },
            EffectKind::StartInit {
                handle: handle.into(),
                config: InitConfig {
                    hostname: handle.into(),
                    privileged: false,
                    bind_mounts: vec![],
                    container_ip: None,
                },
            },
        ];
        for effect in &effects {
            host.execute(effect).unwrap();
        }
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

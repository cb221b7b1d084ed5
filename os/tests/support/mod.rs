//! Shared setup for the Linux host's integration tests (run as root): a busybox rootfs built
//! by `scripts/build-rootfs`, and a `LinuxHost` over a fresh depot.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trellis_core::api::{ImageRef, Limits, ProcessSpec};
use trellis_core::effect::InitConfig;
use trellis_os::{Host, Layout, LinuxConfig, LinuxHost, SpawnRequest};

/// The test images of the black-box tests (tests/src/images.rs), shared by source: the tests
/// crate depends on this one, so this one cannot depend on it.
#[path = "../../../tests/src/images.rs"]
pub mod images;

/// The busybox rootfs (built once; shared with the black-box tests).
pub fn rootfs() -> &'static Path {
    images::busybox_rootfs()
}

pub fn rootfs_tar() -> PathBuf {
    images::busybox_tar()
}

pub struct TestHost {
    pub host: LinuxHost,
    pub base: PathBuf,
}

impl Drop for TestHost {
    fn drop(&mut self) {
        for handle in self.host.rootfs.handles().unwrap_or_default() {
            let _ = self.host.kill_container(&handle);
            let _ = self.host.remove_cgroup(&handle);
            let _ = self.host.remove_rootfs(&handle);
        }
        let _ = self.host.cgroups.remove_parent();
        // A test host with a tag of its own owns its firewall table; the untagged table may
        // belong to a real server on this machine and is left alone.
        self.host.settle();
        let tag = &self.host.network.settings().tag;
        if !tag.is_empty() {
            trellis_os::linux::network::firewall::delete_server_tables(tag);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// A tag of its own for each test host of this process (its bridges and firewall table), so
/// tests never touch the untagged table a real server on this machine may own, nor each
/// other's.
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = (std::process::id() * 7 + NEXT.fetch_add(1, Ordering::Relaxed)) % (36 * 36);
    let digit = |d: u32| char::from_digit(d, 36).expect("a base-36 digit");
    format!("{}{}", digit(n / 36), digit(n % 36))
}

pub fn host(name: &str) -> TestHost {
    let base = std::env::temp_dir().join(format!("trellis-os-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let layout = Layout::new(base.join("depot"), base.join("state"), base.join("run"));
    let host = LinuxHost::new(LinuxConfig {
        cgroup: Default::default(),
        layout,
        default_rootfs: rootfs().to_string_lossy().into_owned(),
        helper_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_trellis-os-helper"))),
        network: trellis_os::linux::network::NetworkSettings {
            tag: unique_tag(),
            ..Default::default()
        },
        security: Default::default(),
        // The test registries (`images::Registry`) speak plain HTTP on loopback.
        registry: trellis_os::linux::registry::RegistrySettings {
            insecure: vec!["127.0.0.0/8".into()],
            ..Default::default()
        },
        image_plugins: Default::default(),
    })
    .expect("LinuxHost::new");
    TestHost { host, base }
}

impl TestHost {
    /// Prepares a rootfs and starts init, the way the core's create would (minus cgroup and
    /// network, which other components own).
    pub fn create(&self, handle: &str) {
        self.create_with(handle, "", vec![]);
    }

    pub fn create_with(&self, handle: &str, uri: &str, binds: Vec<trellis_core::api::BindMount>) {
        self.host
            .prepare_rootfs(
                handle,
                &ImageRef {
                    uri: uri.into(),
                    ..Default::default()
                },
                false,
                &Limits::default().disk_limits,
            )
            .expect("prepare rootfs");
        self.host
            .create_cgroup(handle, &Limits::default(), false)
            .expect("create cgroup");
        self.host
            .start_init(handle, &init_config(handle, binds))
            .expect("start init");
    }

    pub fn destroy(&self, handle: &str) {
        self.host.kill_container(handle).expect("kill container");
        self.host.remove_cgroup(handle).expect("remove cgroup");
        self.host.remove_rootfs(handle).expect("remove rootfs");
    }

    /// Runs a process to completion: (exit status, stdout, stderr).
    pub fn run(&self, handle: &str, spec: ProcessSpec) -> (i32, String, String) {
        self.run_with_env(handle, spec, &[])
    }

    pub fn run_with_env(
        &self,
        handle: &str,
        spec: ProcessSpec,
        env: &[String],
    ) -> (i32, String, String) {
        let mut p = self.spawn(handle, spec, env).expect("spawn");
        p.close_stdin();
        let err_reader = p.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut s = String::new();
                e.read_to_string(&mut s).unwrap();
                s
            })
        });
        let mut out = String::new();
        p.stdout.read_to_string(&mut out).unwrap();
        let err = err_reader.map(|h| h.join().unwrap()).unwrap_or_default();
        (p.wait(), out, err)
    }
}

/// A process started through the host, with its descriptors as files.
pub struct Proc<'a> {
    host: &'a LinuxHost,
    pub handle: String,
    pub id: String,
    pub stdin: Option<std::fs::File>,
    pub stdout: std::fs::File,
    pub stderr: Option<std::fs::File>,
    exit: Option<std::os::fd::OwnedFd>,
    status: Option<i32>,
}

impl<'a> Proc<'a> {
    pub fn new(host: &'a LinuxHost, handle: &str, id: &str, io: trellis_os::ProcessIo) -> Proc<'a> {
        Proc {
            host,
            handle: handle.to_string(),
            id: id.to_string(),
            stdin: io.stdin.map(std::fs::File::from),
            stdout: io.stdout.into(),
            stderr: io.stderr.map(std::fs::File::from),
            exit: Some(io.exit),
            status: None,
        }
    }

    /// The exit status (waits for it; the same again on later calls).
    pub fn wait(&mut self) -> i32 {
        if let Some(exit) = self.exit.take() {
            self.status = Some(trellis_os::ProcessIo::wait(exit));
        }
        self.status.expect("an exit status")
    }

    pub fn signal(&self, signal: trellis_core::api::Signal) {
        self.host
            .signal_process(&self.handle, &self.id, signal)
            .expect("signal");
    }

    pub fn resize(&self, size: trellis_core::api::WindowSize) {
        self.host
            .resize_process(&self.handle, &self.id, size)
            .expect("resize");
    }

    /// Stdin EOF: our copy and the keeper's close.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
        self.host
            .close_process_stdin(&self.handle, &self.id)
            .expect("close stdin");
    }
}

/// Process ids unique within the test process.
pub fn next_process_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("p{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl TestHost {
    pub fn spawn(
        &self,
        handle: &str,
        spec: ProcessSpec,
        env: &[String],
    ) -> trellis_os::HostResult<Proc<'_>> {
        let id = next_process_id();
        let io = self.host.spawn_process(SpawnRequest {
            handle,
            process_id: &id,
            spec: &spec,
            env,
        })?;
        Ok(Proc::new(&self.host, handle, &id, io))
    }

    /// Runs `script` as root and asserts it succeeds; returns its stdout.
    pub fn ok(&self, handle: &str, script: &str) -> String {
        let (code, out, err) = self.run(handle, sh(script));
        assert_eq!(code, 0, "{script:?} failed: {out}{err}");
        out
    }
}

pub fn init_config(handle: &str, bind_mounts: Vec<trellis_core::api::BindMount>) -> InitConfig {
    InitConfig {
        hostname: trellis_core::handle::hostname(handle),
        privileged: false,
        bind_mounts,
        container_ip: None,
    }
}

pub fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

pub fn sh_as(user: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        user: user.into(),
        ..sh(script)
    }
}

/// Waits for `cond` with a deadline (no fixed sleeps).
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub type Shared<T> = Arc<T>;

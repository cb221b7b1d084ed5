//! The black-box test harness: starts a real `trellis server` process (fake or Linux backend)
//! on a loopback TCP port and/or a unix socket, with its own temporary depot, state and run
//! directories, and hands out connected clients.
//!
//! ```no_run
//! use trellis_tests::{Backend, TestServer};
//! # async fn demo() {
//! let server = TestServer::start(TestServer::options(Backend::Fake));
//! let client = server.client();
//! client.ping().await.unwrap();
//! # }
//! ```
//!
//! The `trellis` binary must be built first (`scripts/test` does): it is looked for next to the
//! test executable's directory (`target/<profile>/trellis`), or at `$TRELLIS_BIN`.

pub mod collect;
pub mod crash;
pub mod host_objects;
pub mod images;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
pub use trellis_client::{Client, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fake,
    Linux,
}

/// How to start a test server. Start from [`TestServer::options`].
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub backend: Backend,
    /// Listen on a loopback TCP port (picked free).
    pub tcp: bool,
    /// Listen on a unix socket in the server's temporary directory.
    pub unix: bool,
    /// `--default-rootfs` (Linux backend: the image for containers that name none).
    pub default_rootfs: Option<String>,
    /// `--network-pool`; by default each server gets a pool of its own.
    pub network_pool: Option<String>,
    /// `--port-pool-start` and `--port-pool-size`; by default a range of its own.
    pub port_pool: Option<(u32, u32)>,
    /// `--default-grace-time` (a Go duration or seconds).
    pub default_grace_time: Option<String>,
    /// `--debug-bind-ip 127.0.0.1` on a free port.
    pub debug: bool,
    /// More flags, passed as given.
    pub extra_args: Vec<String>,
    /// Arguments before `server` (e.g. `--config FILE`).
    pub global_args: Vec<String>,
    /// `RUST_LOG` for the server (its log goes to a file in its directory).
    pub log_filter: Option<String>,
    /// The soft RLIMIT_NOFILE the server process starts with (its hard limit stays the test's).
    pub soft_nofile: Option<u64>,
}

pub struct TestServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub tcp_addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub debug_addr: Option<SocketAddr>,
    options: ServerOptions,
    args: Vec<String>,
}

/// Servers started by this test process: each gets its own network and port pool.
static STARTED: AtomicU32 = AtomicU32::new(0);

/// How long a server may take to answer its first ping.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a fresh server is moved to other ports when its picked ones were taken.
const PORT_RETRIES: usize = 5;

/// Why a server did not come up in a way the harness can recover from.
enum StartFailure {
    AddressInUse,
}

/// Where listening ports are picked: below the kernel's ephemeral range (32768 and up by
/// default) and the servers' port pools (30000 and up), so that no outgoing connection takes a
/// server's port while it is down for a restart.
const LISTEN_PORTS: std::ops::Range<u32> = 20000..30000;

/// A free loopback port from [`LISTEN_PORTS`], starting at a place of this process's own.
fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = LISTEN_PORTS.end - LISTEN_PORTS.start;
    let start = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(97));
    (0..span)
        .map(|i| (LISTEN_PORTS.start + start.wrapping_add(i) % span) as u16)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free loopback port")
}

/// Two base-36 characters.
fn tag(n: u32) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let n = n % (36 * 36);
    format!(
        "{}{}",
        digits[(n / 36) as usize] as char,
        digits[(n % 36) as usize] as char
    )
}

/// The `trellis` binary under test.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TRELLIS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let exe_dir = exe.parent().expect("an executable lives in a directory");
    // A binary of this crate (target/<profile>/trellis-bench) sits beside it; a test
    // (target/<profile>/deps/<test>) one level below.
    let beside = exe_dir.join("trellis");
    let above = exe_dir.parent().map(|dir| dir.join("trellis"));
    [Some(beside.clone()), above]
        .into_iter()
        .flatten()
        .find(|candidate| candidate.exists())
        .unwrap_or_else(|| {
            panic!(
                "{} does not exist: build the server first (`cargo build --release -p \
                 trellis`, as scripts/test does) or set TRELLIS_BIN",
                beside.display()
            )
        })
}

impl TestServer {
    pub fn options(backend: Backend) -> ServerOptions {
        ServerOptions {
            backend,
            tcp: true,
            unix: true,
            default_rootfs: None,
            network_pool: None,
            port_pool: None,
            default_grace_time: None,
            debug: false,
            extra_args: Vec::new(),
            global_args: Vec::new(),
            log_filter: None,
            soft_nofile: None,
        }
    }

    /// A fake-backend server on TCP and a unix socket.
    pub fn fake() -> TestServer {
        TestServer::start(TestServer::options(Backend::Fake))
    }

    /// Options for a Linux-backend server whose default rootfs is the busybox test rootfs, and
    /// which may pull over plain HTTP from loopback registries (the test registries,
    /// [`images::Registry`], are plain HTTP on 127.0.0.1; no other registry is insecure).
    pub fn linux_options() -> ServerOptions {
        ServerOptions {
            default_rootfs: Some(images::busybox_rootfs().display().to_string()),
            extra_args: vec!["--insecure-docker-registry".into(), "127.0.0.0/8".into()],
            ..TestServer::options(Backend::Linux)
        }
    }

    /// A Linux-backend server (as root) with the busybox test rootfs as its default.
    pub fn linux() -> TestServer {
        TestServer::start(TestServer::linux_options())
    }

    /// Starts a server and waits until it answers a ping. Panics (with the server's log) if it
    /// does not come up.
    pub fn start(options: ServerOptions) -> TestServer {
        assert!(options.tcp || options.unix, "a server needs a listener");
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("trellis-test-")
            .tempdir()
            .expect("a temporary directory");
        let tcp_addr = options
            .tcp
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let socket = options.unix.then(|| dir.path().join("garden.sock"));
        let debug_addr = options
            .debug
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        // Distinct pools per server (and per test process), so servers never collide on the
        // host's addresses or ports.
        let slot = (pid.wrapping_mul(7).wrapping_add(n)) % 60;
        let network_pool = options
            .network_pool
            .clone()
            .unwrap_or_else(|| format!("10.{}.{}.0/22", 180 + slot / 16, (slot % 16) * 16));
        let (port_start, port_size) = options.port_pool.unwrap_or((30000 + slot * 250, 250));

        let path = |p: &str| dir.path().join(p).display().to_string();
        let mut args: Vec<String> = options.global_args.clone();
        args.extend::<[String; 1]>(["server".into()]);
        args.extend::<Vec<String>>(vec![
            "--backend".into(),
            match options.backend {
                Backend::Fake => "fake",
                Backend::Linux => "linux",
            }
            .into(),
            "--depot".into(),
            path("depot"),
            "--state-dir".into(),
            path("state"),
            "--run-dir".into(),
            path("run"),
            "--network-pool".into(),
            network_pool,
            "--port-pool-start".into(),
            port_start.to_string(),
            "--port-pool-size".into(),
            port_size.to_string(),
            "--log-level".into(),
            "debug".into(),
            // Names this server's bridges and firewall table apart from other servers'.
            "--tag".into(),
            tag(pid.wrapping_mul(31).wrapping_add(n)),
        ]);
        if let Some(addr) = tcp_addr {
            args.extend([
                "--bind-ip".into(),
                addr.ip().to_string(),
                "--bind-port".into(),
                addr.port().to_string(),
            ]);
        }
        if let Some(path) = &socket {
            args.extend(["--bind-socket".into(), path.display().to_string()]);
        }
        if let Some(addr) = debug_addr {
            args.extend([
                "--debug-bind-ip".into(),
                addr.ip().to_string(),
                "--debug-bind-port".into(),
                addr.port().to_string(),
            ]);
        }
        if let Some(rootfs) = &options.default_rootfs {
            args.extend(["--default-rootfs".into(), rootfs.clone()]);
        }
        if let Some(grace) = &options.default_grace_time {
            args.extend(["--default-grace-time".into(), grace.clone()]);
        }
        args.extend(options.extra_args.iter().cloned());
        let mut server = TestServer {
            child: None,
            dir,
            tcp_addr,
            socket,
            debug_addr,
            options,
            args,
        };
        // A port picked free can be taken by someone else before the server binds it: then
        // pick fresh ones and start again (only a fresh server; a restart keeps its address).
        for _ in 0..PORT_RETRIES {
            match server.try_spawn() {
                Ok(()) => return server,
                Err(StartFailure::AddressInUse) => server.pick_new_ports(),
            }
        }
        server.spawn();
        server
    }

    /// Moves the TCP and debug listeners to fresh free ports.
    fn pick_new_ports(&mut self) {
        let mut replace = |flag: &str, addr: &mut Option<SocketAddr>| {
            let Some(addr) = addr else { return };
            addr.set_port(free_port());
            if let Some(i) = self.args.iter().position(|a| a == flag) {
                self.args[i + 1] = addr.port().to_string();
            }
        };
        replace("--bind-port", &mut self.tcp_addr);
        replace("--debug-bind-port", &mut self.debug_addr);
    }

    fn spawn(&mut self) {
        if let Err(StartFailure::AddressInUse) = self.try_spawn() {
            panic!(
                "the trellis server could not bind its address; its log:\n{}",
                self.logs()
            );
        }
    }

    fn try_spawn(&mut self) -> Result<(), StartFailure> {
        let mut command = Command::new(binary());
        command.args(&self.args);
        if let Some(filter) = &self.options.log_filter {
            command.env("RUST_LOG", filter);
        }
        if let Some(soft) = self.options.soft_nofile {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("the server's log file");
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        self.child = Some(command.spawn().expect("starting the trellis server"));
        self.wait_until_up()
    }

    fn wait_until_up(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.ping_sync() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("the server was spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                let logs = self.logs();
                if logs.contains("Address already in use") {
                    return Err(StartFailure::AddressInUse);
                }
                panic!("the trellis server exited ({status}) before answering; its log:\n{logs}");
            }
            if Instant::now() > deadline {
                panic!(
                    "the trellis server did not answer within {START_TIMEOUT:?}; its log:\n{}",
                    self.logs()
                );
            }
            // Short, so that benchmarks timing a restart through this see the moment it is up.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A blocking ping (no async runtime needed).
    pub fn ping_sync(&self) -> bool {
        let request = b"GET /ping HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
        let mut response = Vec::new();
        let ok = if let Some(addr) = self.tcp_addr {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(request)?;
                    s.read_to_end(&mut response)
                })
                .is_ok()
        } else if let Some(path) = &self.socket {
            std::os::unix::net::UnixStream::connect(path)
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(request)?;
                    s.read_to_end(&mut response)
                })
                .is_ok()
        } else {
            false
        };
        ok && response.starts_with(b"HTTP/1.1 200")
    }

    /// A client on TCP if the server listens there, else on its unix socket.
    pub fn client(&self) -> Client {
        match self.tcp_addr {
            Some(_) => self.tcp_client(),
            None => self.unix_client(),
        }
    }

    pub fn tcp_client(&self) -> Client {
        let addr = self.tcp_addr.expect("the server listens on TCP");
        Client::new(Target::Tcp(addr.to_string()))
    }

    pub fn unix_client(&self) -> Client {
        let path = self
            .socket
            .clone()
            .expect("the server listens on a unix socket");
        Client::new(Target::Unix(path))
    }

    /// Every target the server listens on (TCP first).
    pub fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Some(addr) = self.tcp_addr {
            targets.push(Target::Tcp(addr.to_string()));
        }
        if let Some(path) = &self.socket {
            targets.push(Target::Unix(path.clone()));
        }
        targets
    }

    /// The server's temporary directory (depot, state, run dirs and its log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn depot(&self) -> PathBuf {
        self.dir.path().join("depot")
    }

    /// The `--tag` naming this server's bridges and firewall table.
    pub fn tag(&self) -> &str {
        self.args
            .iter()
            .position(|a| a == "--tag")
            .and_then(|i| self.args.get(i + 1))
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn options_used(&self) -> &ServerOptions {
        &self.options
    }

    /// Everything the server has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the server to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the server did not exit after SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (nothing of it runs on) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts a new server process on the same directories and addresses (after
    /// `terminate` or `kill`), as an operator restarting the service would.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "terminate the server first");
        self.spawn();
    }

    /// As [`TestServer::restart`], with `extra` flags added to the command line (for this and
    /// every later restart).
    pub fn restart_with_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|a| a.to_string()));
        self.restart();
    }

    /// The `trellis server` command line's flags (after the `server` subcommand), the same on
    /// every restart: what an operator tool such as `trellis cleanup` is given.
    pub fn server_flags(&self) -> &[String] {
        let server = self.options.global_args.len();
        &self.args[server + 1..]
    }

    /// Runs `trellis cleanup` with the server's own flags: (success, stdout, stderr).
    pub fn run_cleanup(&self) -> (bool, String, String) {
        let output = Command::new(binary())
            .arg("cleanup")
            .args(self.server_flags())
            .output()
            .expect("running trellis cleanup");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl TestServer {
    /// Destroys every container the server still has, so that a Linux-backend test leaves no
    /// cgroup, mount, loop device or process behind on the host (the server keeps containers
    /// across its own exit by design). Runs on a thread of its own: the caller may be inside a
    /// tokio runtime (a test's drop).
    pub fn destroy_all_containers(&self) {
        let client = self.client();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let listed = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.containers(&Default::default()),
                )
                .await;
                let Ok(Ok(containers)) = listed else { return };
                for container in containers {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(60),
                        client.destroy(container.handle()),
                    )
                    .await;
                }
            });
        });
        let _ = cleanup.join();
    }

    /// For a server in a `static` (whose drop never runs): destroys its containers, kills it,
    /// waits for it, and removes its parent cgroup and its directory. Call it once, at exit.
    pub fn shutdown_sync(&self) {
        if self.options.backend == Backend::Linux {
            self.destroy_all_containers();
        }
        if let Some(pid) = self.pid() {
            stop(pid as i32, self.options.backend);
        }
        self.remove_host_leftovers();
        let _ = std::fs::remove_dir_all(self.dir());
    }
}

/// How long a server may take to exit after SIGTERM before it is killed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Stops and reaps a server. A Linux one gets SIGTERM, so that it finishes its background
/// cleanup (bridges and links it removes after a destroy), and SIGKILL only if it has not
/// exited within [`EXIT_TIMEOUT`]; a fake one has nothing to clean up and is killed at once.
fn stop(pid: i32, backend: Backend) {
    let signal = match backend {
        Backend::Linux => libc::SIGTERM,
        Backend::Fake => libc::SIGKILL,
    };
    // SAFETY: signalling and reaping our own child by its pid.
    unsafe {
        libc::kill(pid, signal);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == 0 {
            if Instant::now() > deadline {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl TestServer {
    /// Where this server keeps what, as the server itself computes it.
    pub fn layout(&self) -> trellis_os::Layout {
        trellis_os::Layout::new(
            self.depot(),
            self.dir().join("state"),
            self.dir().join("run"),
        )
    }

    /// The name of this server's parent cgroup (derived from its depot).
    pub fn cgroup_parent(&self) -> String {
        self.layout().cgroup_parent()
    }

    /// Each Linux test server has parent cgroups (named by its depot: its containers' and its
    /// peas') and a firewall table (named by its tag) of its own: removes them once its
    /// containers are gone.
    fn remove_host_leftovers(&self) {
        if self.options.backend != Backend::Linux {
            return;
        }
        // The server's own firewall table outlives it by design (containers keep running);
        // a test server's containers are gone by now, so its table goes too.
        trellis_os::linux::network::firewall::delete_server_tables(self.tag());
        let options = trellis_os::linux::cgroup::CgroupOptions::new(self.cgroup_parent());
        if let Ok(cgroups) = trellis_os::linux::cgroup::Cgroups::with_options(options) {
            let _ = cgroups.remove_parent();
        }
        // And the parent of its peas' own cgroups, beside it.
        if let Ok(pea_cgroups) = trellis_os::linux::peas::cgroups(&self.layout()) {
            let _ = pea_cgroups.remove_parent();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.options.backend == Backend::Linux && self.child.is_some() {
            self.destroy_all_containers();
        }
        if let Some(child) = self.child.take() {
            stop(child.id() as i32, self.options.backend);
        }
        self.remove_host_leftovers();
        if std::thread::panicking() {
            eprintln!("--- trellis server log ---\n{}", self.logs());
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes (tests wait on conditions, not sleeps).
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A response read off the wire by [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// The header block as sent (status line excluded).
    pub head: String,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One plain request written byte for byte as the Go client writes it (`Host: api`,
/// `Connection: close`, a JSON body with Content-Length); the response, within `timeout`.
pub async fn go_client_request(
    target: &Target,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> RawResponse {
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n");
    if let Some(body) = body {
        request.push_str(&format!(
            "Content-Length: {}\r\nContent-Type: application/json\r\n",
            body.len()
        ));
    }
    request.push_str("Accept-Encoding: gzip\r\nConnection: close\r\n\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    raw_exchange(target, request.as_bytes(), timeout)
        .await
        .expect("a response")
}

/// Sends raw bytes (a whole request, or half of one) and reads until the server closes the
/// connection or `timeout` passes. `None`: the server closed without answering.
pub async fn raw_exchange(
    target: &Target,
    request: &[u8],
    timeout: Duration,
) -> Option<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        request: &[u8],
    ) -> Vec<u8> {
        let _ = stream.write_all(request).await;
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        out
    }
    let read = async {
        match target {
            Target::Tcp(addr) => {
                exchange(
                    tokio::net::TcpStream::connect(addr).await.expect("connect"),
                    request,
                )
                .await
            }
            Target::Unix(path) => {
                exchange(
                    tokio::net::UnixStream::connect(path)
                        .await
                        .expect("connect"),
                    request,
                )
                .await
            }
        }
    };
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .expect("the server neither answered nor closed the connection in time");
    parse_response(&bytes)
}

/// Parses one HTTP/1.1 response (status, head, body by Content-Length, chunked or close).
pub fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..split]).to_string();
    let mut lines = head.splitn(2, "\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let rest_head = lines.next().unwrap_or("").replace("\r\n", "\n");
    let raw_body = &bytes[split + 4..];
    let mut response = RawResponse {
        status,
        head: rest_head,
        body: Vec::new(),
    };
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    response.body = if let Some(len) = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        raw_body[..len.min(raw_body.len())].to_vec()
    } else if chunked && response.header("connection").is_some() {
        // A plain streamed response (hyper closes these connections).
        dechunk(raw_body)
    } else {
        // A hijacked head announces chunked framing but raw bytes follow.
        raw_body.to_vec()
    };
    Some(response)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            break;
        };
        raw = &raw[end + 2..];
        if size == 0 || raw.len() < size {
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[(size + 2).min(raw.len())..];
    }
    out
}

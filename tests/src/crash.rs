//! The SIGKILL harness: a mixed Garden workload against a Linux-backend server that is killed
//! with SIGKILL at seeded moments and restarted each time, with a model of every promise the
//! server made, checked after each restart.
//!
//! Each round, a few workers drive the API concurrently (creates with properties, a memory
//! limit, NetIn and NetOut; property changes; stream-in; processes with and without a TTY,
//! some with more output than a pipe holds; NetIn mappings to a web server in the container;
//! NetOut rules; containers left to their grace time; destroys) until the server is killed.
//! A request answered before the kill is a promise; one cut short by the kill may or may not
//! have happened, and the first look after the restart settles which. After each restart:
//!
//! - every acknowledged create is listed, with its properties, memory limit and port
//!   mappings; every acknowledged destroy stays done; nothing else is listed;
//! - traffic to each mapped host port reaches the container's web server;
//! - NetOut: a sample of containers reach the ports their rules open on a target container
//!   and are refused on the others (traffic only between containers of this run);
//! - streamed-in files are there;
//! - every process re-attaches by id, and its output, over all its attaches, is exactly what
//!   it wrote (a piece may come twice, never missing), then its exit status;
//! - containers left alone are reaped once their grace time has passed.
//!
//! At the end everything is destroyed and the host objects of the server (mounts, cgroups,
//! links, network namespaces, nftables chains and elements, loop devices, files) are back to
//! what they were before the first container.
//!
//! The seed fixes each worker's choices and every kill moment; how far the server got when
//! it was killed depends on timing, so a seed replays the same workload, not the same
//! interleaving.

use crate::collect::{stdout_collector, Collected};
use crate::host_objects::HostObjects;
use crate::{eventually, TestServer};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use trellis_client::{Client, Error, ProcessIo, StreamInSpec};
use trellis_core::api::{
    ContainerSpec, IpRange, Limits, MemoryLimits, NetIn, NetOutRule, PortRange, ProcessSpec,
    Protocol, TtySpec, WindowSize,
};
use trellis_core::Rng;

#[derive(Debug, Clone)]
pub struct CrashOptions {
    pub seed: u64,
    /// SIGKILLs (each followed by a restart and the checks).
    pub kills: usize,
    /// Concurrent clients driving the workload.
    pub workers: usize,
    /// Containers alive at once, at most (creates turn into destroys above it).
    pub max_containers: usize,
    /// Each round's workload runs for a seeded time below this before the kill.
    pub max_round: Duration,
}

impl Default for CrashOptions {
    fn default() -> Self {
        CrashOptions {
            seed: 1,
            kills: 10,
            workers: 3,
            max_containers: 14,
            max_round: Duration::from_millis(1500),
        }
    }
}

/// What a run did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub kills: usize,
    /// Requests answered before a kill.
    pub acknowledged: usize,
    /// Requests in flight at a kill, settled after the restart.
    pub cut_short: usize,
    pub containers_created: usize,
    /// Container checks over all restarts (listing, properties, limit, mappings).
    pub containers_checked: usize,
    /// Processes whose whole output and exit status were checked.
    pub processes_completed: usize,
    /// Attaches by id after a restart.
    pub reattaches: usize,
    /// Connections checked: NetIn from the host, NetOut between containers.
    pub traffic_checks: usize,
    pub files_checked: usize,
    pub grace_reaped: usize,
    /// From SIGKILL to the restarted server's first answer.
    pub restarts: Vec<Duration>,
    /// The server's host objects before the first container, and after the last destroy.
    pub host_objects: Option<(HostObjects, HostObjects)>,
    pub elapsed: Duration,
    /// Time spent checking after restarts, over all rounds.
    pub checking: Duration,
    pub failures: Vec<String>,
    /// The end of the server's log, kept when something failed.
    pub server_log_tail: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut restarts = self.restarts.clone();
        restarts.sort();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let mut text = format!(
            "seed {}: {} kills in {:.1} s; {} requests acknowledged, {} cut short; {} containers \
             created, {} container checks; {} processes checked to their exit ({} re-attaches); \
             {} traffic checks; {} files; {} reaped by grace time; restart p50 {:.0} ms, max \
             {:.0} ms; {:.1} s checking",
            self.seed,
            self.kills,
            self.elapsed.as_secs_f64(),
            self.acknowledged,
            self.cut_short,
            self.containers_created,
            self.containers_checked,
            self.processes_completed,
            self.reattaches,
            self.traffic_checks,
            self.files_checked,
            self.grace_reaped,
            ms(restarts.get(restarts.len() / 2)),
            ms(restarts.last()),
            self.checking.as_secs_f64(),
        );
        if let Some((before, after)) = &self.host_objects {
            text.push_str(&format!(
                "\nhost objects before: {before:?}\nhost objects after:  {after:?}"
            ));
        }
        for failure in &self.failures {
            text.push_str(&format!("\nFAILED: {failure}"));
        }
        if !self.failures.is_empty() {
            text.push_str("\n--- the server's log, last lines ---\n");
            text.push_str(&self.server_log_tail);
        }
        text
    }
}

/// The grace time of containers created to be left alone.
const GRACE: Duration = Duration::from_millis(1500);
/// How late a grace reap may be (the reaper's tick, a restart).
const GRACE_SLACK: Duration = Duration::from_secs(8);
/// Any one request or process stream, at most.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Processes of the workload running at once, at most.
const MAX_PROCESSES: usize = 10;
/// Containers checked for NetOut and files after each restart.
const SAMPLE: usize = 3;
/// The target container's ports; NetOut rules open one or the other.
const TARGET_PORTS: [u16; 2] = [8080, 8081];
/// Where each container's own web server listens (NetIn maps to it).
const WEB_PORT: u16 = 8080;

/// Values a property may have; `None` is "absent". One entry once known.
type Allowed = Vec<Option<String>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Certainty {
    No,
    Maybe,
    Yes,
}

/// What the server promised about one container.
#[derive(Debug, Clone)]
struct Expect {
    properties: BTreeMap<String, Allowed>,
    memory_limit: u64,
    /// (host port once seen, container port).
    net_in: Vec<(Option<u32>, u32)>,
    /// NetIn requests cut short, by container port.
    maybe_net_in: Vec<u32>,
    /// Streamed-in files and their contents.
    files: Vec<(String, String)>,
    /// /www/index.html is there (a stream-in was acknowledged).
    www: bool,
    serving: Certainty,
    /// Target ports this container's NetOut rules open.
    net_out: BTreeMap<u16, Certainty>,
    /// A destroy is in flight: its processes' streams may end any way.
    destroying: bool,
}

impl Expect {
    fn of(spec: &ContainerSpec) -> Expect {
        Expect {
            properties: spec
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), vec![Some(v.clone())]))
                .collect(),
            memory_limit: spec.limits.memory_limits.limit_in_bytes,
            net_in: spec
                .netin
                .iter()
                .map(|n| (None, n.container_port))
                .collect(),
            maybe_net_in: Vec::new(),
            files: Vec::new(),
            www: false,
            serving: Certainty::No,
            net_out: spec
                .netout_rules
                .iter()
                .filter_map(|r| r.ports.first())
                .map(|p| (p.start, Certainty::Yes))
                .collect(),
            destroying: false,
        }
    }
}

/// One process of the workload.
#[derive(Debug)]
struct Proc {
    handle: String,
    expected: Vec<u8>,
    exit: i32,
    /// The longest prefix of `expected` delivered so far, over all attaches.
    received: Vec<u8>,
    /// The run was acknowledged (or an attach found it): it must be there.
    known: bool,
}

#[derive(Default)]
struct Model {
    live: BTreeMap<String, Expect>,
    maybe_created: BTreeMap<String, Expect>,
    maybe_destroyed: BTreeMap<String, Expect>,
    destroyed: BTreeSet<String>,
    /// Containers left to their grace time, and since when their timer surely runs.
    graced: BTreeMap<String, Instant>,
    maybe_graced: BTreeSet<String>,
    /// Containers a worker has a request in flight on.
    busy: BTreeSet<String>,
    processes: BTreeMap<String, Proc>,
    /// Ids of processes that ended (the server may still list them for late attaches).
    ended: BTreeSet<String>,
    next_id: u64,
    report: Report,
}

impl Model {
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn fail(&mut self, failure: String) {
        self.report.failures.push(failure);
    }

    /// A live container nobody else is working on.
    fn pick_idle(&self, rng: &mut Rng, want: impl Fn(&Expect) -> bool) -> Option<String> {
        let idle: Vec<&String> = self
            .live
            .iter()
            .filter(|(h, e)| !self.busy.contains(*h) && !e.destroying && want(e))
            .map(|(h, _)| h)
            .collect();
        (!idle.is_empty()).then(|| idle[rng.below(idle.len() as u64) as usize].clone())
    }

    fn running_processes(&self, handle: &str) -> usize {
        self.processes
            .values()
            .filter(|p| p.handle == handle)
            .count()
    }

    fn settle_process_ended(&mut self, id: &str) {
        self.processes.remove(id);
        self.ended.insert(id.to_string());
    }
}

struct Shared {
    model: Mutex<Model>,
    /// Set just before each SIGKILL, cleared once the server is back: an error seen while it
    /// is set may be the kill's doing.
    killed: AtomicBool,
    /// Tasks following process streams.
    streams: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

/// Runs the harness against a fresh Linux-backend server.
pub async fn run(options: CrashOptions) -> Report {
    let start = Instant::now();
    let mut server = TestServer::linux();
    let client = server.client();
    // The baseline is taken after one container has come and gone, so that what a server
    // makes once and keeps (its bridge locks, its directory of retired network states) counts
    // as its own.
    let warm_up = ContainerSpec {
        handle: "warm-up".into(),
        ..Default::default()
    };
    if let Err(e) = client.create(warm_up).await.map(drop) {
        return Report {
            failures: vec![format!("creating the warm-up container: {e}")],
            ..Default::default()
        };
    }
    let _ = client.destroy("warm-up").await;
    let before = HostObjects::after_removals(&server).await;
    let before_files = HostObjects::file_paths(&server);
    let shared = Arc::new(Shared {
        model: Mutex::new(Model {
            report: Report {
                seed: options.seed,
                ..Default::default()
            },
            ..Default::default()
        }),
        killed: AtomicBool::new(false),
        streams: Mutex::new(Vec::new()),
    });
    let target = match Target::start(&client).await {
        Ok(target) => target,
        Err(e) => {
            let mut report = std::mem::take(&mut shared.model().report);
            report
                .failures
                .push(format!("setting up the target container: {e}"));
            return report;
        }
    };
    let mut rng = Rng::new(options.seed);
    for round in 0..options.kills {
        let workers: Vec<JoinHandle<()>> = (0..options.workers)
            .map(|w| {
                let worker = Worker {
                    shared: shared.clone(),
                    client: client.clone(),
                    rng: Rng::new(options.seed ^ ((round as u64) << 32) ^ ((w as u64 + 1) << 48)),
                    target: target.clone(),
                    max_containers: options.max_containers,
                };
                tokio::spawn(worker.run())
            })
            .collect();
        let round_ms = options.max_round.as_millis().max(1) as u64;
        tokio::time::sleep(Duration::from_millis(50 + rng.below(round_ms))).await;

        shared.killed.store(true, Ordering::SeqCst);
        let killed_at = Instant::now();
        server.kill();
        for worker in workers {
            if tokio::time::timeout(REQUEST_TIMEOUT, worker).await.is_err() {
                shared
                    .model()
                    .fail(format!("round {round}: a worker hung after the kill"));
            }
        }
        join_streams(&shared, round).await;
        tokio::task::block_in_place(|| server.restart());
        let restarted_at = Instant::now();
        shared
            .model()
            .report
            .restarts
            .push(restarted_at - killed_at);
        shared.model().report.kills += 1;
        shared.killed.store(false, Ordering::SeqCst);

        verify(&shared, &client, &target, &mut rng, round, restarted_at).await;
        reattach(&shared, &client).await;
        shared.model().report.checking += restarted_at.elapsed();
        if !shared.model().report.failures.is_empty() {
            break;
        }
    }

    finish(&shared, &client, &target).await;
    let after = settled_host_objects(&server, &before).await;
    let mut report = std::mem::take(&mut shared.model().report);
    if after != before {
        let new_files: Vec<_> = HostObjects::file_paths(&server)
            .into_iter()
            .filter(|p| !before_files.contains(p))
            .collect();
        report.failures.push(format!(
            "leftovers on the host: before {before:?}, after {after:?}; new files {new_files:?}"
        ));
    }
    report.host_objects = Some((before, after));
    if !report.failures.is_empty() {
        let log = server.logs();
        let lines: Vec<&str> = log.lines().collect();
        report.server_log_tail = lines[lines.len().saturating_sub(300)..].join("\n");
    }
    report.elapsed = start.elapsed();
    report
}

/// A container that listens on [`TARGET_PORTS`], for the NetOut checks.
#[derive(Clone)]
struct Target {
    ip: std::net::Ipv4Addr,
}

impl Target {
    const HANDLE: &'static str = "target";

    async fn start(client: &Client) -> Result<Target, Error> {
        let container = client
            .create(ContainerSpec {
                handle: Target::HANDLE.into(),
                ..Default::default()
            })
            .await?;
        for port in TARGET_PORTS {
            container
                .run(
                    ProcessSpec {
                        id: format!("target-{port}"),
                        path: "httpd".into(),
                        args: vec![
                            "-f".into(),
                            "-p".into(),
                            port.to_string(),
                            "-h".into(),
                            "/".into(),
                        ],
                        ..Default::default()
                    },
                    ProcessIo::default(),
                )
                .await?;
        }
        let ip = container
            .info()
            .await?
            .container_ip
            .parse()
            .map_err(|e| Error::Process(format!("target address: {e}")))?;
        Ok(Target { ip })
    }
}

struct Worker {
    shared: Arc<Shared>,
    client: Client,
    rng: Rng,
    target: Target,
    max_containers: usize,
}

/// The operations of the workload, with their weights.
const OPS: [(Op, u64); 10] = [
    (Op::Create, 14),
    (Op::CreateGraced, 3),
    (Op::Destroy, 8),
    (Op::SetProperty, 12),
    (Op::RemoveProperty, 5),
    (Op::StreamIn, 7),
    (Op::Serve, 5),
    (Op::NetIn, 6),
    (Op::NetOut, 6),
    (Op::Run, 12),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Create,
    CreateGraced,
    Destroy,
    SetProperty,
    RemoveProperty,
    StreamIn,
    Serve,
    NetIn,
    NetOut,
    Run,
}

/// How a request ended, for the model.
enum Answer<T> {
    Done(T),
    /// Cut short by the kill: it may or may not have happened.
    CutShort,
    /// The server refused it with no kill in sight: a failure of the server.
    Failed,
}

impl Worker {
    async fn run(mut self) {
        let total: u64 = OPS.iter().map(|(_, w)| w).sum();
        while !self.shared.killed() {
            let mut roll = self.rng.below(total);
            let op = OPS
                .iter()
                .find(|(_, w)| {
                    let hit = roll < *w;
                    roll = roll.saturating_sub(*w);
                    hit
                })
                .map(|(op, _)| *op)
                .unwrap_or(Op::Create);
            let acted = self.step(op).await;
            if !acted {
                // Nothing to do this op on yet: let the others move.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }

    /// Classifies a request's result, recording failures and counts.
    fn answer<T>(
        &self,
        what: &str,
        result: Result<Result<T, Error>, tokio::time::error::Elapsed>,
    ) -> Answer<T> {
        let mut model = self.shared.model();
        match result {
            Ok(Ok(value)) => {
                model.report.acknowledged += 1;
                Answer::Done(value)
            }
            _ if self.shared.killed() => {
                model.report.cut_short += 1;
                Answer::CutShort
            }
            Ok(Err(e)) => {
                model.fail(format!("{what}: {e}"));
                Answer::Failed
            }
            Err(_) => {
                model.fail(format!("{what}: no answer in {REQUEST_TIMEOUT:?}"));
                Answer::Failed
            }
        }
    }

    /// One operation; false if there was nothing to do it on.
    async fn step(&mut self, op: Op) -> bool {
        match op {
            Op::Create | Op::CreateGraced => {
                if self.shared.model().live.len() >= self.max_containers {
                    return self.destroy().await;
                }
                self.create(op == Op::CreateGraced).await;
                true
            }
            Op::Destroy => self.destroy().await,
            Op::SetProperty | Op::RemoveProperty => self.property(op == Op::SetProperty).await,
            Op::StreamIn => self.stream_in().await,
            Op::Serve => self.serve().await,
            Op::NetIn => self.net_in().await,
            Op::NetOut => self.net_out().await,
            Op::Run => self.run_process().await,
        }
    }

    fn release(&self, handle: &str) {
        self.shared.model().busy.remove(handle);
    }

    async fn create(&mut self, graced: bool) {
        let n = self.shared.model().fresh_id();
        let handle = format!("c{n}");
        let mut spec = ContainerSpec {
            handle: handle.clone(),
            ..Default::default()
        };
        if graced {
            spec.grace_time = GRACE.as_nanos() as i64;
        } else {
            for k in 0..=self.rng.below(3) {
                spec.properties
                    .insert(format!("p{k}"), format!("v{}", self.rng.below(1000)));
            }
            spec.limits = Limits {
                memory_limits: MemoryLimits {
                    limit_in_bytes: (64 + self.rng.below(64)) << 20,
                },
                ..Default::default()
            };
            if self.rng.below(3) == 0 {
                spec.netin.push(NetIn {
                    host_port: 0,
                    container_port: u32::from(WEB_PORT),
                });
            }
            if self.rng.below(3) == 0 {
                let port = TARGET_PORTS[self.rng.below(2) as usize];
                spec.netout_rules.push(self.rule_to_target(port));
            }
        }
        let expect = Expect::of(&spec);
        self.shared.model().busy.insert(handle.clone());
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.client.create(spec)).await;
        let answer = self.answer(&format!("create {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        match answer {
            Answer::Done(_) => {
                model.report.containers_created += 1;
                if graced {
                    model.graced.insert(handle, Instant::now());
                } else {
                    model.live.insert(handle, expect);
                }
            }
            Answer::CutShort if graced => {
                model.maybe_graced.insert(handle);
            }
            Answer::CutShort => {
                model.maybe_created.insert(handle, expect);
            }
            Answer::Failed => {}
        }
    }

    fn rule_to_target(&self, port: u16) -> NetOutRule {
        NetOutRule {
            protocol: Protocol::Tcp,
            networks: vec![IpRange {
                start: Some(self.target.ip.into()),
                end: Some(self.target.ip.into()),
            }],
            ports: vec![PortRange {
                start: port,
                end: port,
            }],
            ..Default::default()
        }
    }

    async fn destroy(&mut self) -> bool {
        let handle = {
            let mut model = self.shared.model();
            let Some(handle) = model.pick_idle(&mut self.rng, |_| true) else {
                return false;
            };
            model.busy.insert(handle.clone());
            if let Some(e) = model.live.get_mut(&handle) {
                e.destroying = true;
            }
            handle
        };
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.client.destroy(&handle)).await;
        let answer = self.answer(&format!("destroy {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        let Some(expect) = model.live.remove(&handle) else {
            return true;
        };
        match answer {
            Answer::Done(()) => {
                model.destroyed.insert(handle.clone());
                let ids: Vec<String> = model
                    .processes
                    .iter()
                    .filter(|(_, p)| p.handle == handle)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in ids {
                    model.settle_process_ended(&id);
                }
            }
            Answer::CutShort => {
                model.maybe_destroyed.insert(handle, expect);
            }
            Answer::Failed => {
                model.live.insert(
                    handle,
                    Expect {
                        destroying: false,
                        ..expect
                    },
                );
            }
        }
        true
    }

    async fn property(&mut self, set: bool) -> bool {
        let (handle, key, old) = {
            let mut model = self.shared.model();
            let Some(handle) = model.pick_idle(&mut self.rng, |e| set || !e.properties.is_empty())
            else {
                return false;
            };
            let expect = &model.live[&handle];
            let key = if set {
                format!("p{}", self.rng.below(5))
            } else {
                let keys: Vec<&String> = expect.properties.keys().collect();
                keys[self.rng.below(keys.len() as u64) as usize].clone()
            };
            let old = expect.properties.get(&key).cloned().unwrap_or(vec![None]);
            model.busy.insert(handle.clone());
            (handle, key, old)
        };
        let container = self.client.container(handle.clone());
        let value = format!("v{}", self.rng.below(1000));
        let result = if set {
            tokio::time::timeout(REQUEST_TIMEOUT, container.set_property(&key, &value)).await
        } else {
            tokio::time::timeout(REQUEST_TIMEOUT, container.remove_property(&key)).await
        };
        // Removing a property that may not be there (an earlier cut-short request) is
        // allowed to fail as gdn does; nothing changed then.
        let unsure_removal = !set && old.contains(&None);
        let result = match result {
            Ok(Err(_)) if unsure_removal && !self.shared.killed() => Ok(Ok(())),
            other => other,
        };
        let answer = self.answer(&format!("property {key} of {handle}"), result);
        let new = set.then_some(value);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        if let Some(expect) = model.live.get_mut(&handle) {
            match answer {
                Answer::Done(()) => {
                    expect.properties.insert(key, vec![new]);
                }
                Answer::CutShort => {
                    let mut allowed = old;
                    if !allowed.contains(&new) {
                        allowed.push(new);
                    }
                    expect.properties.insert(key, allowed);
                }
                Answer::Failed => {}
            }
            expect
                .properties
                .retain(|_, allowed| allowed != &vec![None]);
        }
        true
    }

    async fn stream_in(&mut self) -> bool {
        let (handle, n) = {
            let mut model = self.shared.model();
            let Some(handle) = model.pick_idle(&mut self.rng, |_| true) else {
                return false;
            };
            model.busy.insert(handle.clone());
            (handle, model.fresh_id())
        };
        let path = format!("data/f{n}");
        let contents = format!("payload {n} of {handle}\n");
        let tar = tar_of(&[("www/index.html", &handle), (&path, &contents)]);
        let container = self.client.container(handle.clone());
        let request = container.stream_in(StreamInSpec {
            path: "/".into(),
            user: "root".into(),
            tar: Box::new(std::io::Cursor::new(tar)),
        });
        let result = tokio::time::timeout(REQUEST_TIMEOUT, request).await;
        let answer = self.answer(&format!("stream in to {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        if let (Answer::Done(()), Some(expect)) = (answer, model.live.get_mut(&handle)) {
            expect.www = true;
            expect.files.push((format!("/{path}"), contents));
        }
        true
    }

    async fn serve(&mut self) -> bool {
        let handle = {
            let mut model = self.shared.model();
            let Some(handle) =
                model.pick_idle(&mut self.rng, |e| e.www && e.serving == Certainty::No)
            else {
                return false;
            };
            model.busy.insert(handle.clone());
            handle
        };
        let spec = ProcessSpec {
            id: web_id(&handle),
            path: "httpd".into(),
            args: vec![
                "-f".into(),
                "-p".into(),
                WEB_PORT.to_string(),
                "-h".into(),
                "/www".into(),
            ],
            ..Default::default()
        };
        let container = self.client.container(handle.clone());
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, container.run(spec, ProcessIo::default())).await;
        // The web server runs on without a client attached.
        let answer = self.answer(&format!("run httpd in {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        if let Some(expect) = model.live.get_mut(&handle) {
            expect.serving = match answer {
                Answer::Done(_process) => Certainty::Yes,
                Answer::CutShort => Certainty::Maybe,
                Answer::Failed => Certainty::No,
            };
        }
        true
    }

    async fn net_in(&mut self) -> bool {
        let handle = {
            let mut model = self.shared.model();
            let Some(handle) = model.pick_idle(&mut self.rng, |e| e.net_in.len() < 3) else {
                return false;
            };
            model.busy.insert(handle.clone());
            handle
        };
        let container = self.client.container(handle.clone());
        let result =
            tokio::time::timeout(REQUEST_TIMEOUT, container.net_in(0, u32::from(WEB_PORT))).await;
        let answer = self.answer(&format!("net in to {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        if let Some(expect) = model.live.get_mut(&handle) {
            match answer {
                Answer::Done((host, container)) => expect.net_in.push((Some(host), container)),
                Answer::CutShort => expect.maybe_net_in.push(u32::from(WEB_PORT)),
                Answer::Failed => {}
            }
        }
        true
    }

    async fn net_out(&mut self) -> bool {
        let handle = {
            let mut model = self.shared.model();
            let Some(handle) = model.pick_idle(&mut self.rng, |_| true) else {
                return false;
            };
            model.busy.insert(handle.clone());
            handle
        };
        let port = TARGET_PORTS[self.rng.below(2) as usize];
        let rule = self.rule_to_target(port);
        let container = self.client.container(handle.clone());
        let result = tokio::time::timeout(REQUEST_TIMEOUT, container.net_out(&rule)).await;
        let answer = self.answer(&format!("net out from {handle}"), result);
        let mut model = self.shared.model();
        model.busy.remove(&handle);
        if let Some(expect) = model.live.get_mut(&handle) {
            let now = match answer {
                Answer::Done(()) => Certainty::Yes,
                Answer::CutShort => Certainty::Maybe,
                Answer::Failed => Certainty::No,
            };
            let was = expect.net_out.get(&port).copied().unwrap_or(Certainty::No);
            if now != Certainty::No && was != Certainty::Yes {
                expect.net_out.insert(port, now);
            }
        }
        true
    }

    async fn run_process(&mut self) -> bool {
        let (handle, id) = {
            let mut model = self.shared.model();
            if model.processes.len() >= MAX_PROCESSES {
                return false;
            }
            let Some(handle) = model.pick_idle(&mut self.rng, |_| true) else {
                return false;
            };
            if model.running_processes(&handle) >= 3 {
                return false;
            }
            model.busy.insert(handle.clone());
            let id = format!("r{}", model.fresh_id());
            (handle, id)
        };
        let workload = ProcessWorkload::draw(&mut self.rng, &id);
        self.shared.model().processes.insert(
            id.clone(),
            Proc {
                handle: handle.clone(),
                expected: workload.expected.clone(),
                exit: workload.exit,
                received: Vec::new(),
                known: false,
            },
        );
        let (io, collected) = stdout_collector();
        let container = self.client.container(handle.clone());
        let result = tokio::time::timeout(REQUEST_TIMEOUT, container.run(workload.spec, io)).await;
        let answer = self.answer(&format!("run {id} in {handle}"), result);
        self.release(&handle);
        match answer {
            Answer::Done(process) => {
                if let Some(p) = self.shared.model().processes.get_mut(&id) {
                    p.known = true;
                }
                follow(&self.shared, id, process, collected);
            }
            Answer::CutShort => {}
            Answer::Failed => {
                self.shared.model().processes.remove(&id);
            }
        }
        true
    }
}

fn web_id(handle: &str) -> String {
    format!("web-{handle}")
}

/// A process of the workload: what it runs and exactly what it writes.
struct ProcessWorkload {
    spec: ProcessSpec,
    expected: Vec<u8>,
    exit: i32,
}

impl ProcessWorkload {
    fn draw(rng: &mut Rng, id: &str) -> ProcessWorkload {
        let exit = rng.below(4) as i32;
        let kind = rng.below(4);
        let tty = kind == 0;
        let (script, expected) = if kind == 3 {
            // More than a pipe holds, at once: with nobody reading, the process waits.
            let count = 20_000 + rng.below(20_000);
            let expected: String = (1..=count).map(|i| format!("{i}\n")).collect();
            (format!("seq 1 {count}; exit {exit}"), expected)
        } else {
            let lines = 10 + rng.below(60);
            let pause = 0.01 + rng.below(40) as f64 / 1000.0;
            let expected: String = (0..lines).map(|i| format!("{id} line {i}\n")).collect();
            (
                format!(
                    "i=0; while [ $i -lt {lines} ]; do echo \"{id} line $i\"; i=$((i+1)); \
                     sleep {pause:.3}; done; exit {exit}"
                ),
                expected,
            )
        };
        // A terminal turns each newline into CR LF.
        let expected = if tty {
            expected.replace('\n', "\r\n")
        } else {
            expected
        };
        ProcessWorkload {
            spec: ProcessSpec {
                id: id.into(),
                path: "sh".into(),
                args: vec!["-c".into(), script],
                tty: tty.then_some(TtySpec {
                    window_size: Some(WindowSize {
                        columns: 80,
                        rows: 24,
                    }),
                }),
                ..Default::default()
            },
            expected: expected.into_bytes(),
            exit,
        }
    }
}

/// Follows a process's stream until it ends, then settles what it delivered in the model.
fn follow(
    shared: &Arc<Shared>,
    id: String,
    mut process: trellis_client::Process,
    collected: Collected,
) {
    let shared_for_task = shared.clone();
    let task = tokio::spawn(async move {
        let shared = shared_for_task;
        let status = tokio::time::timeout(REQUEST_TIMEOUT, process.wait()).await;
        drop(process);
        let (segment, _) = collected.finish(Duration::from_secs(10)).await;
        let killed = shared.killed();
        let mut model = shared.model();
        let Some(proc) = model.processes.get_mut(&id) else {
            return;
        };
        let handle = proc.handle.clone();
        let destroying = model.live.get(&handle).is_none_or(|e| e.destroying);
        let proc = model.processes.get_mut(&id).expect("looked up above");
        let cut_by_the_kill = killed && !matches!(status, Ok(Ok(_)));
        if destroying && !cut_by_the_kill {
            // Its container is going: how its stream ends is not a promise.
            model.settle_process_ended(&id);
            return;
        }
        // A destroy the kill cut short may not have happened: the container and this process
        // may be back after the restart, so what was delivered counts.
        let merged = merge(&proc.expected, &proc.received, &segment);
        let outcome = match merged {
            Ok(received) => {
                proc.received = received;
                match status {
                    Ok(Ok(code)) if proc.received == proc.expected && code == proc.exit => Ok(true),
                    Ok(Ok(code)) => Err(format!(
                        "process {id} in {handle} exited {code} (expected {}) after {} of {} \
                         bytes",
                        proc.exit,
                        proc.received.len(),
                        proc.expected.len()
                    )),
                    _ if killed => Ok(false),
                    Ok(Err(e)) => Err(format!("process {id} in {handle}: stream broke: {e}")),
                    Err(_) => Err(format!(
                        "process {id} in {handle}: no exit in {REQUEST_TIMEOUT:?}"
                    )),
                }
            }
            Err(e) => Err(format!("process {id} in {handle}: {e}")),
        };
        match outcome {
            Ok(true) => {
                model.report.processes_completed += 1;
                model.settle_process_ended(&id);
            }
            Ok(false) => {}
            Err(failure) => {
                model.settle_process_ended(&id);
                model.fail(failure);
            }
        }
    });
    shared
        .streams
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(task);
}

/// Adds what one attach delivered to what earlier ones did. An attach starts at the oldest
/// byte no client has taken, so it may repeat the end of what was received, but never skip.
fn merge(expected: &[u8], received: &[u8], segment: &[u8]) -> Result<Vec<u8>, String> {
    if segment.is_empty() {
        return Ok(received.to_vec());
    }
    for start in (0..=received.len()).rev() {
        if expected[start..].starts_with(segment) {
            let end = (start + segment.len()).max(received.len());
            return Ok(expected[..end].to_vec());
        }
    }
    let shown = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(80)]).into_owned();
    Err(format!(
        "output does not continue what was received ({} of {} bytes): got {:?}",
        received.len(),
        expected.len(),
        shown(segment)
    ))
}

/// Waits for every process stream to end (a kill ends them all).
async fn join_streams(shared: &Shared, round: usize) {
    let tasks = std::mem::take(&mut *shared.streams.lock().unwrap_or_else(|e| e.into_inner()));
    for task in tasks {
        if tokio::time::timeout(REQUEST_TIMEOUT, task).await.is_err() {
            shared
                .model()
                .fail(format!("round {round}: a process stream did not end"));
        }
    }
}

/// Re-attaches every process the model follows, by id.
async fn reattach(shared: &Arc<Shared>, client: &Client) {
    let ids: Vec<(String, String, bool)> = shared
        .model()
        .processes
        .iter()
        .map(|(id, p)| (id.clone(), p.handle.clone(), p.known))
        .collect();
    for (id, handle, known) in ids {
        let (io, collected) = stdout_collector();
        let attached = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.container(handle.clone()).attach(&id, io),
        )
        .await;
        let mut model = shared.model();
        match attached {
            Ok(Ok(process)) => {
                model.report.reattaches += 1;
                if let Some(p) = model.processes.get_mut(&id) {
                    p.known = true;
                }
                drop(model);
                follow(shared, id, process, collected);
            }
            // A run cut short by the kill that never started.
            Ok(Err(Error::ProcessNotFound { .. })) if !known => {
                model.processes.remove(&id);
            }
            Ok(Err(e)) => {
                model.settle_process_ended(&id);
                model.fail(format!("attach {id} in {handle} after the restart: {e}"));
            }
            Err(_) => {
                model.settle_process_ended(&id);
                model.fail(format!("attach {id} in {handle}: no answer"));
            }
        }
    }
}

/// Settles what the kill left open and checks every promise.
async fn verify(
    shared: &Shared,
    client: &Client,
    target: &Target,
    rng: &mut Rng,
    round: usize,
    restarted_at: Instant,
) {
    let listed: BTreeSet<String> = match client.containers(&BTreeMap::new()).await {
        Ok(list) => list.iter().map(|c| c.handle().to_string()).collect(),
        Err(e) => {
            shared.model().fail(format!("round {round}: list: {e}"));
            return;
        }
    };
    let handles: Vec<String> = {
        let mut model = shared.model();
        let model = &mut *model;
        for (handle, expect) in std::mem::take(&mut model.maybe_created) {
            if listed.contains(&handle) {
                model.report.containers_created += 1;
                model.live.insert(handle, expect);
            }
        }
        for handle in std::mem::take(&mut model.maybe_graced) {
            if listed.contains(&handle) {
                model.report.containers_created += 1;
                model.graced.insert(handle, restarted_at);
            }
        }
        for (handle, expect) in std::mem::take(&mut model.maybe_destroyed) {
            if listed.contains(&handle) {
                model.live.insert(
                    handle,
                    Expect {
                        destroying: false,
                        ..expect
                    },
                );
            } else {
                model.destroyed.insert(handle.clone());
                model.processes.retain(|_, p| p.handle != handle);
            }
        }
        // The restart started every grace timer again.
        for since in model.graced.values_mut() {
            *since = (*since).max(restarted_at);
        }
        let mut failures = Vec::new();
        for handle in model.live.keys() {
            if !listed.contains(handle) {
                failures.push(format!(
                    "round {round}: acknowledged container {handle} is gone"
                ));
            }
        }
        for handle in &listed {
            let known = model.live.contains_key(handle)
                || model.graced.contains_key(handle)
                || handle == Target::HANDLE;
            if model.destroyed.contains(handle) {
                failures.push(format!(
                    "round {round}: destroyed container {handle} is back"
                ));
            } else if !known {
                failures.push(format!(
                    "round {round}: unknown container {handle} is listed"
                ));
            }
        }
        let now = Instant::now();
        let mut reaped = Vec::new();
        for (handle, since) in &model.graced {
            if !listed.contains(handle) {
                reaped.push(handle.clone());
            } else if now > *since + GRACE + GRACE_SLACK {
                failures.push(format!("round {round}: {handle} outlived its grace time"));
            }
        }
        for handle in reaped {
            model.graced.remove(&handle);
            model.destroyed.insert(handle);
            model.report.grace_reaped += 1;
        }
        for failure in failures {
            model.fail(failure);
        }
        model.live.keys().cloned().collect()
    };

    for handle in &handles {
        check_container(shared, client, handle, round).await;
    }
    check_traffic(shared, client, target, rng, round).await;
}

/// Properties, memory limit, port mappings and process ids of one container.
async fn check_container(shared: &Shared, client: &Client, handle: &str, round: usize) {
    let container = client.container(handle.to_string());
    let info = container.info().await;
    let limits = container.current_memory_limits().await;
    let mut model = shared.model();
    let model = &mut *model;
    model.report.containers_checked += 1;
    let (info, limits) = match (info, limits) {
        (Ok(info), Ok(limits)) => (info, limits),
        (Err(e), _) | (_, Err(e)) => {
            model.fail(format!("round {round}: {handle}: {e}"));
            return;
        }
    };
    let known_ids: BTreeSet<String> = model
        .processes
        .iter()
        .filter(|(_, p)| p.handle == handle)
        .map(|(id, _)| id)
        .chain(&model.ended)
        .cloned()
        .collect();
    let Some(expect) = model.live.get_mut(handle) else {
        return;
    };
    let mut failures = Vec::new();
    let observed = info.properties.clone().unwrap_or_default();
    for (key, allowed) in &mut expect.properties {
        let value = observed.get(key).cloned();
        if allowed.contains(&value) {
            *allowed = vec![value];
        } else {
            failures.push(format!(
                "round {round}: {handle}: property {key} is {value:?}, expected one of {allowed:?}"
            ));
        }
    }
    expect
        .properties
        .retain(|_, allowed| allowed != &vec![None]);
    for key in observed.keys() {
        if !key.starts_with("garden.") && !expect.properties.contains_key(key) {
            failures.push(format!(
                "round {round}: {handle}: unexpected property {key}"
            ));
        }
    }
    if limits.limit_in_bytes != expect.memory_limit {
        failures.push(format!(
            "round {round}: {handle}: memory limit {} (expected {})",
            limits.limit_in_bytes, expect.memory_limit
        ));
    }
    // Port mappings: the promised ones in order, host ports as first seen; at most one more
    // per NetIn cut short.
    let mapped: Vec<(u32, u32)> = info
        .mapped_ports
        .unwrap_or_default()
        .iter()
        .map(|m| (m.host_port, m.container_port))
        .collect();
    let mut unmatched = mapped.clone();
    for (host, container_port) in &mut expect.net_in {
        let found = unmatched
            .iter()
            .position(|(h, c)| c == container_port && host.is_none_or(|host| host == *h));
        match found {
            Some(i) => {
                *host = Some(unmatched.remove(i).0);
            }
            None => failures.push(format!(
                "round {round}: {handle}: mapping {host:?} -> {container_port} missing from \
                 {mapped:?}"
            )),
        }
    }
    for container_port in std::mem::take(&mut expect.maybe_net_in) {
        if let Some(i) = unmatched.iter().position(|(_, c)| *c == container_port) {
            let (host, _) = unmatched.remove(i);
            expect.net_in.push((Some(host), container_port));
        }
    }
    if !unmatched.is_empty() {
        failures.push(format!(
            "round {round}: {handle}: unexpected mappings {unmatched:?}"
        ));
    }
    let web = web_id(handle);
    let listed_ids: Vec<String> = info.process_ids.unwrap_or_default();
    if expect.serving == Certainty::Maybe {
        expect.serving = if listed_ids.contains(&web) {
            Certainty::Yes
        } else {
            Certainty::No
        };
    }
    for id in &listed_ids {
        let known = known_ids.contains(id)
            || id.starts_with("check-")
            || (id == &web && expect.serving == Certainty::Yes);
        if !known {
            failures.push(format!(
                "round {round}: {handle}: unknown process {id} listed"
            ));
        }
    }
    if expect.serving == Certainty::Yes && !listed_ids.contains(&web) {
        failures.push(format!(
            "round {round}: {handle}: its web server is not listed"
        ));
    }
    for failure in failures {
        model.fail(failure);
    }
}

/// NetIn from the host to every serving container; NetOut and files on a sample.
async fn check_traffic(
    shared: &Shared,
    client: &Client,
    target: &Target,
    rng: &mut Rng,
    round: usize,
) {
    let live: Vec<(String, Expect)> = shared
        .model()
        .live
        .iter()
        .map(|(h, e)| (h.clone(), e.clone()))
        .collect();
    for (handle, expect) in &live {
        if expect.serving != Certainty::Yes {
            continue;
        }
        for (host, _) in &expect.net_in {
            let Some(port) = host.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            let body = http_get(port).await;
            shared.model().report.traffic_checks += 1;
            if body.as_deref() != Ok(handle.as_str()) {
                let seen = network_view(shared, client, handle).await;
                shared.model().fail(format!(
                    "round {round}: {handle}: NetIn on host port {port} answered {body:?}; {seen}"
                ));
            }
        }
    }
    for _ in 0..SAMPLE.min(live.len()) {
        let (handle, expect) = &live[rng.below(live.len() as u64) as usize];
        for port in TARGET_PORTS {
            let certainty = expect.net_out.get(&port).copied().unwrap_or(Certainty::No);
            let script = format!("echo | nc -w 2 {} {port}", target.ip);
            let connected = match check_run(shared, client, handle, &script).await {
                Some((status, _)) => status == 0,
                None => continue,
            };
            shared.model().report.traffic_checks += 1;
            let wrong = match certainty {
                Certainty::Yes => !connected,
                Certainty::No => connected,
                Certainty::Maybe => false,
            };
            if wrong {
                let seen = network_view(shared, client, handle).await;
                shared.model().fail(format!(
                    "round {round}: {handle}: NetOut to the target's port {port}: connected \
                     {connected}, rule {certainty:?}; {seen}"
                ));
            }
            if let Some(e) = shared.model().live.get_mut(handle) {
                if certainty == Certainty::Maybe {
                    e.net_out.insert(
                        port,
                        if connected {
                            Certainty::Yes
                        } else {
                            Certainty::No
                        },
                    );
                }
            }
        }
        for (path, contents) in &expect.files {
            let Some((status, out)) =
                check_run(shared, client, handle, &format!("cat {path}")).await
            else {
                continue;
            };
            let mut model = shared.model();
            model.report.files_checked += 1;
            if status != 0 || &out != contents {
                model.fail(format!(
                    "round {round}: {handle}: {path} reads {out:?} (status {status})"
                ));
            }
        }
    }
}

/// The container's address as Info reports it and as seen inside, for failure messages.
async fn network_view(shared: &Shared, client: &Client, handle: &str) -> String {
    let info = client.container(handle.to_string()).info().await;
    let inside = check_run(shared, client, handle, "ip -4 -o addr show; ps").await;
    format!(
        "Info: ip {:?} mapped {:?} processes {:?}; inside: {inside:?}",
        info.as_ref().map(|i| i.container_ip.clone()),
        info.as_ref().map(|i| i.mapped_ports.clone()),
        info.as_ref().map(|i| i.process_ids.clone()),
    )
}

/// Runs a check in a container to its end; None (after recording why) if it could not.
async fn check_run(
    shared: &Shared,
    client: &Client,
    handle: &str,
    script: &str,
) -> Option<(i32, String)> {
    let (io, collected) = stdout_collector();
    let id = format!("check-{}", shared.model().fresh_id());
    let spec = ProcessSpec {
        id,
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let run = async {
        let mut process = client.container(handle.to_string()).run(spec, io).await?;
        let status = process.wait().await;
        drop(process);
        status
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, run).await {
        Ok(Ok(status)) => {
            let (out, _) = collected.finish(Duration::from_secs(10)).await;
            Some((status, String::from_utf8_lossy(&out).into_owned()))
        }
        Ok(Err(e)) => {
            shared
                .model()
                .fail(format!("{handle}: running {script:?}: {e}"));
            None
        }
        Err(_) => {
            shared
                .model()
                .fail(format!("{handle}: {script:?} did not finish"));
            None
        }
    }
}

/// GET / from the host through a NetIn mapping on loopback; the body.
async fn http_get(port: u16) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(response)) => Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// The end of a run: every process to its exit, a last check, grace reaps, then every
/// container destroyed.
async fn finish(shared: &Arc<Shared>, client: &Client, target: &Target) {
    join_streams(shared, usize::MAX).await;
    let mut rng = Rng::new(0);
    verify(shared, client, target, &mut rng, usize::MAX, Instant::now()).await;
    let graced: Vec<String> = shared.model().graced.keys().cloned().collect();
    let reaped = eventually(GRACE + GRACE_SLACK, || async {
        let listed: BTreeSet<String> = client
            .containers(&BTreeMap::new())
            .await
            .map(|l| l.iter().map(|c| c.handle().to_string()).collect())
            .unwrap_or_default();
        graced.iter().all(|h| !listed.contains(h))
    })
    .await;
    if !reaped {
        shared
            .model()
            .fail(format!("containers outlived their grace time: {graced:?}"));
    }
    shared.model().report.grace_reaped += graced.len();
    let all = client
        .containers(&BTreeMap::new())
        .await
        .unwrap_or_default();
    for container in all {
        let handle = container.handle().to_string();
        if let Err(e) = client.destroy(&handle).await {
            shared
                .model()
                .fail(format!("final destroy of {handle}: {e}"));
        }
    }
    match client.containers(&BTreeMap::new()).await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => shared.model().fail(format!(
            "containers left after destroying all: {:?}",
            left.iter()
                .map(|c| c.handle().to_string())
                .collect::<Vec<_>>()
        )),
        Err(e) => shared.model().fail(format!("final list: {e}")),
    }
}

/// The server's host objects once its deferred removals are done (links and firewall chains
/// go about a second after a destroy; the kernel frees network namespaces asynchronously).
async fn settled_host_objects(server: &TestServer, before: &HostObjects) -> HostObjects {
    eventually(Duration::from_secs(60), || async {
        HostObjects::of(server) == *before
    })
    .await;
    HostObjects::of(server)
}

/// A tar of regular files (root-owned, 0644) with the given contents.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder
            .append_data(&mut header, path, contents.as_bytes())
            .expect("appending to an in-memory tar");
    }
    builder.into_inner().expect("an in-memory tar")
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_accepts_repeats_and_refuses_gaps() {
        let expected = b"abcdefgh";
        assert_eq!(merge(expected, b"", b"abc").unwrap(), b"abc");
        // A re-attach repeats what was already received, then continues.
        assert_eq!(merge(expected, b"abc", b"bcdef").unwrap(), b"abcdef");
        assert_eq!(merge(expected, b"abc", b"defgh").unwrap(), b"abcdefgh");
        // A shorter repeat changes nothing.
        assert_eq!(merge(expected, b"abcdef", b"cd").unwrap(), b"abcdef");
        // Skipping bytes is loss.
        assert!(merge(expected, b"abc", b"efgh").is_err());
        // Bytes never written are not output of this process.
        assert!(merge(expected, b"abc", b"dxy").is_err());
    }
}

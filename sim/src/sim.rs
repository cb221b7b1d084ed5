//! The simulation: a seeded workload of many concurrent clients driving the real core against
//! the fake OS, with effects failing and completing late, time advancing, and the server
//! crashing and restarting from its records. After every step the checks in `check` run
//! against an independent model of what clients were told.

use crate::check::{self, Model, ModelContainer};
use crate::fake_os::{FakeOs, Fault};
use crate::rng::SimRng;
use std::collections::BTreeMap;
use trellis_core::api::{ContainerSpec, ImageRef, NetIn, NetOutRule, ProcessSpec, Protocol};
use trellis_core::effect::Observation;
use trellis_core::properties::{self, Properties};
use trellis_core::{
    Command, Config, Core, Effect, InjectedBugs, Input, LeaseId, Output, Reply, RequestId, Time,
    SECOND,
};

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub steps: u64,
    pub bugs: InjectedBugs,
    /// Print one line per event.
    pub verbose: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub commands: u64,
    pub effects: u64,
    pub faults: u64,
    pub creates: u64,
    pub destroys: u64,
    pub expiries: u64,
    pub crashes: u64,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub step: u64,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub trace: u64,
    pub stats: Stats,
    pub failure: Option<Failure>,
}

/// Per-seed shape of the run, so different seeds explore different regimes.
#[derive(Debug, Clone)]
struct Regime {
    fault_per_mille: u64,
    crash_per_mille: u64,
}

struct InFlight {
    effect: Effect,
    /// Set once the fake OS has carried it out; delivered to the core later.
    outcome: Option<trellis_core::Outcome>,
}

pub(crate) struct RequestInfo {
    pub command: Command,
    /// Whether the core paused the container's timer for this request.
    pub paused: bool,
    /// The model container the request was aimed at when it was sent.
    pub target: Option<u64>,
}

pub struct Sim {
    opts: SimOptions,
    regime: Regime,
    rng: SimRng,
    now: Time,
    config: Config,
    core: Core,
    os: FakeOs,
    effects: Vec<InFlight>,
    observations: Vec<Observation>,
    requests: BTreeMap<RequestId, RequestInfo>,
    next_request: u64,
    leases: Vec<(LeaseId, String, u64)>,
    model: Model,
    trace: u64,
    step: u64,
    stats: Stats,
}

const HANDLES: [&str; 8] = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"];
const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 3] = ["1", "2", ""];

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let mut rng = SimRng::new(opts.seed);
        let regime = Regime {
            fault_per_mille: *rng.pick(&[0, 20, 50, 100]),
            crash_per_mille: *rng.pick(&[0, 2, 5, 10]),
        };
        let config = Config {
            network_pool: rng
                .pick(&["10.254.0.0/22", "10.254.0.0/28"])
                .parse()
                .expect("valid pool"),
            max_containers: *rng.pick(&[0, 6, 12]),
            default_grace_time: *rng.pick(&[0, 2 * SECOND, 10 * SECOND]),
            port_pool_start: 61001,
            port_pool_size: *rng.pick(&[3, 100]),
            external_ip: Some("192.0.2.10".parse().expect("valid ip")),
            depot: "/depot".into(),
            seed: rng.next_u64(),
            disable_privileged_containers: rng.below(2) == 0,
            host_networks: Vec::new(),
            bugs: opts.bugs,
        };
        let now = Time(1_000 * SECOND);
        Sim {
            core: Core::new(config.clone(), now),
            config,
            regime,
            rng,
            now,
            os: FakeOs::new(),
            effects: Vec::new(),
            observations: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            leases: Vec::new(),
            model: Model::default(),
            trace: 0xcbf2_9ce4_8422_2325,
            step: 0,
            stats: Stats::default(),
            opts,
        }
    }

    pub fn run(mut self) -> SimReport {
        let mut failure = None;
        while self.step < self.opts.steps {
            self.step += 1;
            if let Err(message) = self.one_step() {
                failure = Some(Failure {
                    step: self.step,
                    message,
                });
                break;
            }
        }
        if failure.is_none() {
            if let Err(message) = self.settle() {
                failure = Some(Failure {
                    step: self.step,
                    message,
                });
            }
        }
        SimReport {
            seed: self.opts.seed,
            steps: self.step,
            trace: self.trace,
            stats: self.stats,
            failure,
        }
    }

    fn record(&mut self, line: String) {
        for byte in line.bytes().chain([b'\n']) {
            self.trace ^= u64::from(byte);
            self.trace = self.trace.wrapping_mul(0x0100_0000_01b3);
        }
        if self.opts.verbose {
            println!("{line}");
        }
    }

    fn one_step(&mut self) -> Result<(), String> {
        let roll = self.rng.below(1000);
        if roll < self.regime.crash_per_mille {
            self.crash_and_restart()?;
        } else if roll < 330 && !self.effects.is_empty() {
            self.advance_effect()?;
        } else if roll < 400 && !self.observations.is_empty() {
            let at = self.rng.below(self.observations.len() as u64) as usize;
            let observation = self.observations.remove(at);
            self.feed(Input::Observed(observation))?;
        } else if roll < 430 {
            self.end_random_process()?;
        } else if roll < 460 && !self.leases.is_empty() {
            let at = self.rng.below(self.leases.len() as u64) as usize;
            let (lease, _, _) = self.leases[at].clone();
            self.send(Command::Release { lease })?;
        } else if roll < 540 {
            let nanos =
                *self
                    .rng
                    .pick(&[SECOND / 100, SECOND / 2, SECOND, 3 * SECOND, 12 * SECOND]);
            self.now = self.now.plus(nanos);
            self.feed(Input::Tick)?;
        } else {
            let command = self.random_command();
            self.send(command)?;
        }
        Ok(())
    }

    /// Moves one in-flight effect forward: carried out by the fake OS, or its outcome delivered.
    fn advance_effect(&mut self) -> Result<(), String> {
        let at = self.rng.below(self.effects.len() as u64) as usize;
        if self.effects[at].outcome.is_none() {
            let fault = if self.rng.below(1000) < self.regime.fault_per_mille {
                self.stats.faults += 1;
                if self.rng.below(2) == 0 {
                    Fault::Before
                } else {
                    Fault::After
                }
            } else {
                Fault::None
            };
            let outcome = self.os.apply(&self.effects[at].effect.kind, fault);
            self.record(format!(
                "{} {} carry {} {:?}",
                self.step, self.now.0, self.effects[at].effect.id, outcome
            ));
            self.effects[at].outcome = Some(outcome);
            self.collect_ended();
            return check::host(&self.os, &self.core);
        }
        let done = self.effects.remove(at);
        let outcome = done.outcome.expect("carried out");
        self.feed(Input::Outcome {
            effect: done.effect.id,
            outcome,
        })
    }

    fn collect_ended(&mut self) {
        for (handle, process_id) in std::mem::take(&mut self.os.ended) {
            self.observations
                .push(Observation::ProcessExited { handle, process_id });
        }
    }

    fn end_random_process(&mut self) -> Result<(), String> {
        let running: Vec<(String, String)> = self
            .os
            .containers
            .iter()
            .flat_map(|(h, c)| c.processes.iter().map(move |p| (h.clone(), p.clone())))
            .collect();
        if running.is_empty() {
            return Ok(());
        }
        let (handle, process_id) = self.rng.pick(&running).clone();
        self.os.end_process(&handle, &process_id);
        self.observations
            .push(Observation::ProcessExited { handle, process_id });
        Ok(())
    }

    fn send(&mut self, command: Command) -> Result<(), String> {
        self.stats.commands += 1;
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let handle = command.handle().map(str::to_string);
        let usable = handle
            .as_deref()
            .is_some_and(|h| self.core.container_state(h) == Some(properties::STATE_CREATED));
        let paused = usable && check::pauses_timer(&command);
        let target = handle
            .as_deref()
            .and_then(|h| self.model.containers.get(h))
            .map(|m| m.id);
        if let Some(h) = &handle {
            if let Some(m) = self.model.containers.get_mut(h) {
                if paused {
                    m.pauses += 1;
                }
                if usable {
                    m.note_sent(&command);
                }
            }
        }
        if let Command::Release { lease } = &command {
            if let Some(at) = self.leases.iter().position(|(l, _, _)| l == lease) {
                let (_, handle, id) = self.leases.remove(at);
                let now = self.now;
                if let Some(m) = self
                    .model
                    .containers
                    .get_mut(&handle)
                    .filter(|m| m.id == id)
                {
                    m.pauses -= 1;
                    m.last_end = now;
                }
            }
        }
        self.requests.insert(
            request,
            RequestInfo {
                command: command.clone(),
                paused,
                target,
            },
        );
        self.feed(Input::Command { request, command })
    }

    fn feed(&mut self, input: Input) -> Result<(), String> {
        self.record(format!("{} {} in {:?}", self.step, self.now.0, input));
        let outputs = self.core.step(self.now, input);
        self.handle_outputs(outputs)?;
        self.check_step()
    }

    fn handle_outputs(&mut self, outputs: Vec<Output>) -> Result<(), String> {
        for output in outputs {
            self.record(format!("{} {} out {:?}", self.step, self.now.0, output));
            match output {
                Output::Effect(effect) => {
                    self.stats.effects += 1;
                    self.effects.push(InFlight {
                        effect,
                        outcome: None,
                    });
                }
                Output::Reply { request, result } => {
                    let info = self.requests.remove(&request).ok_or_else(|| {
                        format!("reply to {request:?}, which is not waiting for one")
                    })?;
                    self.on_reply(info, result)?;
                }
            }
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        info: RequestInfo,
        result: Result<Reply, trellis_core::Error>,
    ) -> Result<(), String> {
        let now = self.now;
        match (&info.command, &result) {
            (Command::Create(spec), Ok(Reply::Created { .. }))
                if spec.privileged && self.config.disable_privileged_containers =>
            {
                return Err(
                    "a privileged create succeeded under --disable-privileged-containers".into(),
                );
            }
            (Command::Create(spec), Err(trellis_core::Error::PrivilegedContainersDisabled))
                if !(spec.privileged && self.config.disable_privileged_containers) =>
            {
                return Err(format!(
                    "create refused as privileged though privileged={} and disabled={}",
                    spec.privileged, self.config.disable_privileged_containers
                ));
            }
            (Command::Create(spec), Ok(Reply::Created { handle })) => {
                self.stats.creates += 1;
                if !spec.handle.is_empty() && spec.handle != *handle {
                    return Err(format!(
                        "create of {} answered with handle {handle}",
                        spec.handle
                    ));
                }
                if self.model.containers.get(handle).is_some_and(|m| !m.gone()) {
                    return Err(format!(
                        "create handed out handle {handle}, which a live container has"
                    ));
                }
                let grace = match spec.grace_time {
                    0 => self.config.default_grace_time,
                    g => g as u64,
                };
                let container =
                    ModelContainer::new(self.model.next_id(), spec.properties.clone(), grace, now);
                self.model.containers.insert(handle.clone(), container);
            }
            (Command::Destroy { handle }, Ok(_)) => {
                self.stats.destroys += 1;
                if self.core.container_state(handle).is_some() {
                    return Err(format!(
                        "destroy of {handle} succeeded but the core still has it"
                    ));
                }
                if self.os.containers.contains_key(handle) || self.os.records.contains_key(handle) {
                    return Err(format!(
                        "destroy of {handle} succeeded but the host still has {:?}",
                        self.os.containers.get(handle)
                    ));
                }
                self.model.containers.remove(handle);
            }
            // A destroy that failed half-way keeps retrying on its own.
            (Command::Destroy { handle }, Err(_))
                if self.core.container_state(handle) == Some("destroying") =>
            {
                if let Some(m) = self.model.containers.get_mut(handle) {
                    m.destroy_requested = true;
                }
            }
            (Command::Acquire { handle }, Ok(Reply::Leased(lease)))
            | (Command::Run { handle, .. }, Ok(Reply::ProcessStarted { lease, .. })) => {
                let id = info.target.unwrap_or(0);
                self.leases.push((*lease, handle.clone(), id));
            }
            (Command::List { filter }, Ok(Reply::Handles(handles))) => {
                check::list(&self.model, &self.core, filter, handles)?;
            }
            (Command::Property { handle, key }, result) => {
                check::property(&self.model, handle, key, result)?;
            }
            _ => {}
        }
        let holds_lease = matches!(
            result,
            Ok(Reply::Leased(_)) | Ok(Reply::ProcessStarted { .. })
        );
        if let Some(handle) = info.command.handle() {
            if let Some(m) = self
                .model
                .containers
                .get_mut(handle)
                .filter(|m| Some(m.id) == info.target)
            {
                if info.paused && !holds_lease {
                    m.pauses -= 1;
                    m.last_end = now;
                }
                if info.paused {
                    m.note_answered(&info.command, &result, now);
                }
            }
        }
        Ok(())
    }

    fn check_step(&mut self) -> Result<(), String> {
        let expired = check::grace(&mut self.model, &self.core, self.now)?;
        self.stats.expiries += expired;
        let view = self.core.view();
        check::allocations(&view)?;
        check::host(&self.os, &self.core)?;
        check::pauses(&self.model, &view)
    }

    fn crash_and_restart(&mut self) -> Result<(), String> {
        self.stats.crashes += 1;
        self.record(format!("{} {} crash", self.step, self.now.0));
        // Effects already handed to the host may or may not have happened before the crash.
        for inflight in std::mem::take(&mut self.effects) {
            if inflight.outcome.is_none() && self.rng.below(2) == 0 {
                let _ = self.os.apply(&inflight.effect.kind, Fault::None);
            }
        }
        self.os.ended.clear();
        self.observations.clear();
        self.leases.clear();
        for (_, info) in std::mem::take(&mut self.requests) {
            self.model.lost_in_crash(&info);
        }
        let config = Config {
            seed: self.rng.next_u64(),
            ..self.config.clone()
        };
        self.core = Core::restore(config, self.now, self.os.load_records());
        let input = Input::Reconcile(self.os.observe());
        self.record(format!("{} {} in {:?}", self.step, self.now.0, input));
        let outputs = self.core.step(self.now, input);
        self.handle_outputs(outputs)?;
        check::after_restart(&mut self.model, &self.core, self.now)?;
        self.check_step()
    }

    /// With faults and crashes over, everything must come to rest in agreement.
    fn settle(&mut self) -> Result<(), String> {
        self.regime.fault_per_mille = 0;
        self.leases.clear();
        for _ in 0..100_000 {
            if let Some(inflight) = self.effects.first() {
                if inflight.outcome.is_none() {
                    let outcome = self.os.apply(&inflight.effect.kind, Fault::None);
                    self.effects[0].outcome = Some(outcome);
                    self.collect_ended();
                } else {
                    let done = self.effects.remove(0);
                    self.feed(Input::Outcome {
                        effect: done.effect.id,
                        outcome: done.outcome.expect("carried out"),
                    })?;
                }
                continue;
            }
            if let Some(observation) = self.observations.pop() {
                self.feed(Input::Observed(observation))?;
                continue;
            }
            // Only retries may remain; grace timers are left alone (containers may live on).
            match self.core.next_retry() {
                Some(at) => {
                    self.now = self.now.max(at);
                    self.feed(Input::Tick)?;
                }
                None => break,
            }
        }
        check::at_rest(&self.core, &self.os, self.requests.len())
    }

    fn random_command(&mut self) -> Command {
        let handle = self.pick_handle();
        match self.rng.below(100) {
            0..=17 => Command::Create(Box::new(self.random_spec())),
            18..=27 => Command::Destroy { handle },
            28..=35 => Command::List {
                filter: self.random_filter(),
            },
            36..=39 => Command::Info { handle },
            40..=42 => Command::BulkInfo {
                handles: vec![handle, self.pick_handle()],
            },
            43..=45 => Command::Properties { handle },
            46..=50 => Command::Property {
                handle,
                key: self.rng.pick(&KEYS).to_string(),
            },
            51..=57 => Command::SetProperty {
                handle,
                key: self.rng.pick(&KEYS).to_string(),
                value: self.rng.pick(&VALUES).to_string(),
            },
            58..=61 => Command::RemoveProperty {
                handle,
                key: self.rng.pick(&KEYS).to_string(),
            },
            62..=65 => Command::SetGraceTime {
                handle,
                grace_time: *self.rng.pick(&[
                    0,
                    SECOND as i64 / 2,
                    2 * SECOND as i64,
                    10 * SECOND as i64,
                    -1,
                ]),
            },
            66..=68 => Command::Stop {
                handle,
                kill: self.rng.below(2) == 0,
            },
            69..=71 => Command::Metrics { handle },
            72..=73 => Command::BulkMetrics {
                handles: vec![handle, self.pick_handle()],
            },
            74..=76 => Command::NetIn {
                handle,
                host_port: *self.rng.pick(&[0, 0, 61005, 8080]),
                container_port: *self.rng.pick(&[0, 8080]),
            },
            77..=79 => Command::NetOut {
                handle,
                rules: self.random_rules(),
            },
            80..=89 => Command::Run {
                handle,
                spec: Box::new(ProcessSpec {
                    id: self.rng.pick(&["", "", "p1"]).to_string(),
                    path: self
                        .rng
                        .pick(&["sh", "sh", "missing-binary", ""])
                        .to_string(),
                    ..Default::default()
                }),
            },
            90..=96 => Command::Acquire { handle },
            _ => Command::Capacity,
        }
    }

    fn pick_handle(&mut self) -> String {
        let live: Vec<String> = self.model.containers.keys().cloned().collect();
        if !live.is_empty() && self.rng.below(10) < 7 {
            return self.rng.pick(&live).clone();
        }
        self.rng.pick(&HANDLES).to_string()
    }

    fn random_spec(&mut self) -> ContainerSpec {
        let mut properties = BTreeMap::new();
        for _ in 0..self.rng.below(3) {
            properties.insert(
                self.rng.pick(&KEYS).to_string(),
                self.rng.pick(&VALUES).to_string(),
            );
        }
        if self.rng.below(50) == 0 {
            properties.insert(properties::STATE.to_string(), "x".into());
        }
        let netin = (0..self.rng.below(2))
            .map(|_| NetIn {
                host_port: *self.rng.pick(&[0, 0, 61002]),
                container_port: 8080,
            })
            .collect();
        ContainerSpec {
            handle: if self.rng.below(2) == 0 {
                self.rng.pick(&HANDLES).to_string()
            } else {
                String::new()
            },
            grace_time: *self.rng.pick(&[
                0,
                0,
                SECOND as i64,
                3 * SECOND as i64,
                20 * SECOND as i64,
            ]),
            network: self
                .rng
                .pick(&[
                    "",
                    "",
                    "",
                    "10.1.0.0/29",
                    "10.1.0.3/29",
                    "10.1.0.6/29",
                    "10.254.0.0/24",
                    "bad",
                    "10.1.0.0/16",
                ])
                .to_string(),
            properties,
            image: ImageRef {
                uri: self.rng.pick(&["", "", "/img", "/missing"]).to_string(),
                ..Default::default()
            },
            netin,
            netout_rules: self.random_rules(),
            privileged: self.rng.below(4) == 0,
            ..Default::default()
        }
    }

    fn random_rules(&mut self) -> Vec<NetOutRule> {
        (0..self.rng.below(3))
            .map(|_| NetOutRule {
                protocol: *self
                    .rng
                    .pick(&[Protocol::All, Protocol::Tcp, Protocol::Udp]),
                ..Default::default()
            })
            .collect()
    }

    fn random_filter(&mut self) -> Properties {
        let mut filter = BTreeMap::new();
        for _ in 0..self.rng.below(3) {
            filter.insert(
                self.rng.pick(&KEYS).to_string(),
                self.rng.pick(&VALUES).to_string(),
            );
        }
        if self.rng.below(10) == 0 {
            filter.insert(
                properties::STATE.to_string(),
                self.rng.pick(&["all", "created"]).to_string(),
            );
        }
        filter
    }
}

//! The simulation: a seeded workload of many concurrent clients driving the real core against
//! the fake OS, with effects failing and completing late, time advancing, and the server
//! crashing and restarting from its records. After every step the checks in `check` run
//! against an independent model of what clients were told.

use crate::check::{
    self, Model, ModelContainer, BAD_HANDLES, HOST_NETWORK, IN_HOST_NETWORK, LONGEST_HANDLE,
    SPECIAL_NETWORKS,
};
use crate::rng::SimRng;
use std::collections::{BTreeMap, BTreeSet};
use trellis_core::api::{
    BindMount, ContainerSpec, ImageRef, NetIn, NetOutRule, ProcessSpec, Protocol,
};
use trellis_core::effect::{EffectKind, Observation};
use trellis_core::limits;
use trellis_core::properties::{self, Properties};
use trellis_core::{
    Command, Config, Core, CoreView, Effect, InjectedBugs, Input, LeaseId, Output, Reply,
    RequestId, Time, SECOND,
};
use trellis_fake::{FakeOs, Fault};

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    pub steps: u64,
    pub bugs: InjectedBugs,
    /// Print one line per event.
    pub verbose: bool,
    /// `--inject-bug late-adopt-exits`: after a restart, the exits of processes that ended while
    /// the server was down reach the core at any later moment, not before it serves (a driver
    /// that does not order them first).
    pub late_adopt_exits: bool,
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
    /// Requests refused for the handle rule or a bound.
    pub refusals: u64,
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

/// The run's trace hash, fed the text of every event as it is formatted (no string is built):
/// FNV-1a over 8-byte little-endian words, so that large requests stay cheap to hash. The same
/// events give the same hash on any machine.
struct Trace {
    hash: u64,
    /// Bytes waiting for a whole word.
    pending: [u8; 8],
    filled: usize,
}

impl Default for Trace {
    fn default() -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            filled: 0,
        }
    }
}

impl Trace {
    fn mix(&mut self, word: u64) {
        self.hash = (self.hash ^ word).wrapping_mul(0x0100_0000_01b3);
    }

    fn finish(mut self) -> u64 {
        // Only the bytes written count, not what earlier words left in the buffer.
        self.pending[self.filled..].fill(0);
        let tail = u64::from_le_bytes(self.pending) ^ self.filled as u64;
        self.mix(tail);
        self.hash
    }
}

impl std::fmt::Write for Trace {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut bytes = s.as_bytes();
        while self.filled > 0 && !bytes.is_empty() {
            self.pending[self.filled] = bytes[0];
            self.filled = (self.filled + 1) % 8;
            bytes = &bytes[1..];
            if self.filled == 0 {
                self.mix(u64::from_le_bytes(self.pending));
            }
        }
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        for &byte in words.remainder() {
            self.pending[self.filled] = byte;
            self.filled += 1;
        }
        Ok(())
    }
}

/// Adds one event to the trace (and prints it when verbose).
fn record(trace: &mut Trace, verbose: bool, line: std::fmt::Arguments<'_>) {
    use std::fmt::Write;
    if verbose {
        let line = line.to_string();
        println!("{line}");
        let _ = writeln!(trace, "{line}");
    } else {
        let _ = writeln!(trace, "{line}");
    }
}

/// Per-seed shape of the run, so different seeds explore different regimes.
#[derive(Debug, Clone)]
struct Regime {
    fault_per_mille: u64,
    crash_per_mille: u64,
}

struct InFlight {
    effect: Effect,
    /// The Run request a `SpawnProcess` serves.
    request: Option<RequestId>,
    /// Set once the fake OS has carried it out; delivered to the core later.
    outcome: Option<trellis_core::Outcome>,
}

pub(crate) struct RequestInfo {
    pub command: Command,
    /// Whether the core paused the container's timer for this request.
    pub paused: bool,
    /// The model container the request was aimed at when it was sent.
    pub target: Option<u64>,
    /// An Acquire that attaches to this process (by id) once it holds the container.
    pub attach: Option<String>,
    /// A Run with an id: whether that id was taken when it was sent.
    pub id_state: IdState,
}

/// Whether a process id was taken in a container when a Run named it, as the host has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdState {
    /// A process with this id runs: the Run must be refused.
    Taken,
    /// None runs, none is starting and no exit is on its way to the core: the id is free.
    Free,
    /// Something with the id is in motion, or the Run names no id or no usable container.
    Unsure,
}

/// A lease a simulated client holds: on a container (Acquire), and for a process connection
/// (Run, or an attach) on that process, by id and serial.
#[derive(Debug, Clone)]
struct SimLease {
    lease: LeaseId,
    handle: String,
    target: u64,
    process: Option<(String, u64)>,
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
    leases: Vec<SimLease>,
    /// Leases whose connection ends (its process's exit was delivered, or there was nothing to
    /// attach to): released at the end of the step.
    closing: Vec<LeaseId>,
    /// Run requests whose process the host started, with its serial.
    spawned: BTreeMap<RequestId, u64>,
    model: Model,
    trace: Trace,
    step: u64,
    stats: Stats,
    /// The core's state as the last step's checks saw it.
    checked_view: Option<CoreView>,
    /// The request being sent: a refusal must answer this one, at once.
    sending: Option<RequestId>,
    /// The request being sent was refused (for the handle rule or a bound).
    refused_at_once: bool,
}

const HANDLES: [&str; 8] = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"];
const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 3] = ["1", "2", ""];

/// The core's state as a refused request must leave it: everything but the clock (time passes
/// between steps without one) and when grace timers expire (an answered request restarts its
/// container's countdown, refused or not).
fn without_countdowns(mut view: CoreView) -> CoreView {
    view.now = Time(0);
    for c in &mut view.containers {
        c.expires_at = None;
    }
    view
}

/// The keys large property values go under.
fn big_key(i: u64) -> String {
    format!("big{i:02}")
}

fn longest_handle() -> String {
    "l".repeat(LONGEST_HANDLE)
}

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
            network_plugin: false,
            host_networks: if rng.below(2) == 0 {
                vec![HOST_NETWORK.parse().expect("valid network")]
            } else {
                vec![]
            },
            bugs: opts.bugs,
        };
        let now = Time(1_000 * SECOND);
        let mut os = FakeOs::new();
        os.host_networks = config.host_networks.clone();
        Sim {
            core: Core::new(config.clone(), now),
            config,
            regime,
            rng,
            now,
            os,
            effects: Vec::new(),
            observations: Vec::new(),
            requests: BTreeMap::new(),
            next_request: 1,
            leases: Vec::new(),
            closing: Vec::new(),
            spawned: BTreeMap::new(),
            model: Model::default(),
            trace: Trace::default(),
            step: 0,
            stats: Stats::default(),
            checked_view: None,
            sending: None,
            refused_at_once: false,
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
            trace: self.trace.finish(),
            stats: self.stats,
            failure,
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
            self.deliver(observation)?;
        } else if roll < 430 {
            self.end_random_process()?;
        } else if roll < 460 && !self.leases.is_empty() {
            let at = self.rng.below(self.leases.len() as u64) as usize;
            let lease = self.leases[at].lease;
            self.send(Command::Release { lease })?;
        } else if roll < 540 {
            let nanos =
                *self
                    .rng
                    .pick(&[SECOND / 100, SECOND / 2, SECOND, 3 * SECOND, 12 * SECOND]);
            self.pass_time(nanos)?;
        } else {
            let (command, attach) = self.random_command();
            self.send_attaching(command, attach)?;
        }
        self.close_leases()
    }

    /// Lets `nanos` pass as the server's loop sees it: it wakes at each deadline the core
    /// gives and ticks; the next input arrives at the end.
    fn pass_time(&mut self, nanos: u64) -> Result<(), String> {
        let until = self.now.plus(nanos);
        while let Some(deadline) = self.core.next_deadline().filter(|d| *d <= until) {
            self.now = self.now.max(deadline);
            self.feed(Input::Tick)?;
        }
        self.now = until;
        Ok(())
    }

    /// Connections that ended release their leases, as the server's connections do.
    fn close_leases(&mut self) -> Result<(), String> {
        // One at a time: the others are still closing while each is released.
        while let Some(lease) = self.closing.pop() {
            if self.leases.iter().any(|l| l.lease == lease) {
                self.send(Command::Release { lease })?;
            }
        }
        Ok(())
    }

    /// Delivers an observation to the core. An exit reaches the clients attached to the
    /// process (their connections end) and lets the keeper forget the process.
    fn deliver(&mut self, observation: Observation) -> Result<(), String> {
        let exited = match &observation {
            Observation::ProcessExited { handle, process_id } => {
                Some((handle.clone(), process_id.clone()))
            }
            _ => None,
        };
        // The exit reaches the core and the attached clients together.
        if let Some((handle, process_id)) = &exited {
            for l in &self.leases {
                if l.handle == *handle && l.process.as_ref().is_some_and(|(p, _)| p == process_id) {
                    self.closing.push(l.lease);
                }
            }
        }
        self.feed(Input::Observed(observation))?;
        if let Some((handle, process_id)) = exited {
            self.os.release_exited(&handle, &process_id);
        }
        Ok(())
    }

    /// Carries out the in-flight effect at `at`; a process started for a Run is noted by its
    /// serial.
    fn carry(&mut self, at: usize, fault: Fault) -> trellis_core::Outcome {
        let outcome = self.os.apply(&self.effects[at].effect.kind, fault);
        if let (
            EffectKind::SpawnProcess {
                handle, process_id, ..
            },
            Some(request),
            Ok(_),
        ) = (
            &self.effects[at].effect.kind,
            self.effects[at].request,
            &outcome,
        ) {
            if let Some(serial) = self.os.running(handle, process_id) {
                self.spawned.insert(request, serial);
            }
        }
        outcome
    }

    /// Runs and exits on their way between the host and the core: (handle, process id).
    fn processes_in_motion(&self) -> BTreeSet<(&str, &str)> {
        let spawns = self
            .effects
            .iter()
            .filter_map(|inflight| match &inflight.effect.kind {
                EffectKind::SpawnProcess {
                    handle, process_id, ..
                } => Some((handle.as_str(), process_id.as_str())),
                _ => None,
            });
        let exits = self.observations.iter().filter_map(|o| match o {
            Observation::ProcessExited { handle, process_id } => {
                Some((handle.as_str(), process_id.as_str()))
            }
            _ => None,
        });
        let ended = self.os.ended.iter().map(|(h, p)| (h.as_str(), p.as_str()));
        spawns.chain(exits).chain(ended).collect()
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
            let outcome = self.carry(at, fault);
            record(
                &mut self.trace,
                self.opts.verbose,
                format_args!(
                    "{} {} carry {} {:?}",
                    self.step, self.now.0, self.effects[at].effect.id, outcome
                ),
            );
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
        let running = self.os.running_processes();
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
        self.send_attaching(command, None)
    }

    /// Sends `command`; an Acquire with `attach` is an attach to that process.
    fn send_attaching(&mut self, command: Command, attach: Option<String>) -> Result<(), String> {
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
        // What a refusal must leave as it is: the core's state (but for the grace countdown a
        // refused request restarts, as any answered request does), and the model's note of
        // the property change, which the refusal takes back.
        // The state as the last step's checks saw it: nothing has changed the core since.
        let before = match self.checked_view.take() {
            Some(view) => view,
            None => without_countdowns(self.core.view()),
        };
        let effects_before = self.effects.len();
        let noted_change = match (&command, &handle) {
            (Command::SetProperty { key, .. } | Command::RemoveProperty { key, .. }, Some(h)) => {
                self.model
                    .containers
                    .get(h)
                    .map(|m| (key.clone(), m.changing.get(key).cloned()))
            }
            _ => None,
        };
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
        let id_state = match &command {
            Command::Run { handle, spec } if usable && !spec.id.is_empty() => {
                if self.os.running(handle, &spec.id).is_some() {
                    IdState::Taken
                } else if self
                    .processes_in_motion()
                    .contains(&(handle.as_str(), spec.id.as_str()))
                {
                    IdState::Unsure
                } else {
                    IdState::Free
                }
            }
            _ => IdState::Unsure,
        };
        if let Command::Release { lease } = &command {
            if let Some(at) = self.leases.iter().position(|l| l.lease == *lease) {
                let SimLease {
                    handle, target: id, ..
                } = self.leases.remove(at);
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
                attach,
                id_state,
            },
        );
        self.sending = Some(request);
        self.refused_at_once = false;
        let fed = self.feed(Input::Command { request, command });
        self.sending = None;
        fed?;
        if !self.refused_at_once {
            return Ok(());
        }
        if self.effects.len() != effects_before {
            return Err("a refused request emitted an effect".into());
        }
        if self.checked_view.as_ref() != Some(&before) {
            return Err("a refused request changed the core's state".into());
        }
        if let (Some(h), Some((key, noted))) = (&handle, noted_change) {
            if let Some(m) = self.model.containers.get_mut(h) {
                match noted {
                    Some(entry) => m.changing.insert(key, entry),
                    None => m.changing.remove(&key),
                };
            }
        }
        Ok(())
    }

    fn feed(&mut self, input: Input) -> Result<(), String> {
        record(
            &mut self.trace,
            self.opts.verbose,
            format_args!("{} {} in {:?}", self.step, self.now.0, input),
        );
        let outputs = self.core.step(self.now, input);
        self.handle_outputs(outputs)?;
        self.check_step()
    }

    fn handle_outputs(&mut self, outputs: Vec<Output>) -> Result<(), String> {
        for output in outputs {
            record(
                &mut self.trace,
                self.opts.verbose,
                format_args!("{} {} out {:?}", self.step, self.now.0, output),
            );
            match output {
                Output::Effect(effect) => {
                    self.stats.effects += 1;
                    let request = match &effect.kind {
                        EffectKind::SpawnProcess { .. } => self.sending,
                        _ => None,
                    };
                    self.effects.push(InFlight {
                        effect,
                        request,
                        outcome: None,
                    });
                }
                Output::Reply { request, result } => {
                    let info = self.requests.remove(&request).ok_or_else(|| {
                        format!("reply to {request:?}, which is not waiting for one")
                    })?;
                    self.on_reply(request, info, result)?;
                }
            }
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        request: RequestId,
        info: RequestInfo,
        result: Result<Reply, trellis_core::Error>,
    ) -> Result<(), String> {
        let now = self.now;
        check::bounds(
            &info.command,
            &result,
            &self.model,
            &self.config,
            &self.core,
        )?;
        let mapping: Vec<u32> = self
            .effects
            .iter()
            .filter_map(|e| match &e.effect.kind {
                EffectKind::MapPort { mapping, .. } => Some(mapping.host_port),
                _ => None,
            })
            .collect();
        check::resource_refusal(&info.command, &result, &self.config, &self.core, &mapping)?;
        if matches!(&result, Err(e) if check::is_bound_refusal(e)) {
            if self.sending != Some(request) {
                return Err(format!(
                    "{request:?} was refused ({}) only after it was sent: a refusal must come at once",
                    result.as_ref().err().map(ToString::to_string).unwrap_or_default()
                ));
            }
            self.refused_at_once = true;
            self.stats.refusals += 1;
        }
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
            (Command::Acquire { handle }, Ok(Reply::Leased(lease))) => {
                // An attach finds the process in the keeper: a running one holds the
                // connection (and the lease) until its exit; an exited one answers its status
                // at once, and an unknown one is refused; either way the lease goes.
                let process = info
                    .attach
                    .as_ref()
                    .and_then(|p| self.os.running(handle, p).map(|serial| (p.clone(), serial)));
                if info.attach.is_some() && process.is_none() {
                    self.closing.push(*lease);
                }
                self.leases.push(SimLease {
                    lease: *lease,
                    handle: handle.clone(),
                    target: info.target.unwrap_or(0),
                    process,
                });
            }
            (Command::Run { handle, spec }, Ok(Reply::ProcessStarted { lease, process_id })) => {
                if info.id_state == IdState::Taken {
                    return Err(format!(
                        "Run on {handle} started {process_id}, an id a running process has"
                    ));
                }
                if !spec.id.is_empty() && spec.id != *process_id {
                    return Err(format!("Run of {} answered as {process_id}", spec.id));
                }
                let Some(serial) = self.spawned.remove(&request) else {
                    return Err(format!(
                        "Run on {handle} answered that {process_id} started, which the host never started"
                    ));
                };
                self.model
                    .processes
                    .insert(serial, (handle.clone(), process_id.clone()));
                let running = self.os.running(handle, process_id) == Some(serial);
                if !running {
                    // It ended already: the connection gets its status at once.
                    self.closing.push(*lease);
                }
                self.leases.push(SimLease {
                    lease: *lease,
                    handle: handle.clone(),
                    target: info.target.unwrap_or(0),
                    process: running.then(|| (process_id.clone(), serial)),
                });
            }
            (Command::Run { handle, spec }, Err(trellis_core::Error::ProcessIdInUse { .. }))
                if info.id_state == IdState::Free =>
            {
                return Err(format!(
                    "Run on {handle} refused {} as in use, though no process has it",
                    spec.id
                ));
            }
            (Command::Run { .. }, _) => {
                self.spawned.remove(&request);
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
        // A step fires every timer due: otherwise the server's loop would wake again at once.
        if let Some(deadline) = self.core.next_deadline().filter(|d| *d <= self.now) {
            return Err(format!(
                "a step at {} left a deadline at {} (not after it)",
                self.now.0, deadline.0
            ));
        }
        let expired = check::grace(&mut self.model, &self.core, self.now)?;
        self.stats.expiries += expired;
        let view = self.core.view();
        check::allocations(&view)?;
        check::host(&self.os, &self.core)?;
        check::pauses(&self.model, &view)?;
        check::processes_accounted(&mut self.model, &self.os)?;
        let moving = self.processes_in_motion();
        check::processes(&view, &self.os, &moving)?;
        let leases: Vec<check::OpenLease<'_>> = self
            .leases
            .iter()
            .filter(|l| !self.closing.contains(&l.lease))
            .map(|l| {
                (
                    l.lease,
                    l.handle.as_str(),
                    l.process.as_ref().map(|(p, s)| (p.as_str(), *s)),
                )
            })
            .collect();
        check::leases(&view, self.leases.len(), &leases, &self.os, &moving)?;
        self.checked_view = Some(without_countdowns(view));
        Ok(())
    }

    fn crash_and_restart(&mut self) -> Result<(), String> {
        self.stats.crashes += 1;
        record(
            &mut self.trace,
            self.opts.verbose,
            format_args!("{} {} crash", self.step, self.now.0),
        );
        // Effects already handed to the host may or may not have happened before the crash.
        for inflight in std::mem::take(&mut self.effects) {
            if inflight.outcome.is_none() && self.rng.below(2) == 0 {
                let _ = self.os.apply(&inflight.effect.kind, Fault::None);
            }
        }
        // The server is gone, and whatever it was told with it; its clients' connections end.
        self.os.ended.clear();
        self.observations.clear();
        self.leases.clear();
        self.closing.clear();
        self.spawned.clear();
        for (_, info) in std::mem::take(&mut self.requests) {
            self.model
                .lost_in_crash(&info.command, info.target, info.paused);
        }
        // The processes outlive the server, and some end while it is down: their keepers
        // hold their exits.
        for (handle, process_id) in self.os.running_processes() {
            if self.rng.below(4) == 0 {
                self.os.end_process(&handle, &process_id);
            }
        }
        let config = Config {
            seed: self.rng.next_u64(),
            ..self.config.clone()
        };
        self.core = Core::restore(config, self.now, self.os.load_records());
        let input = Input::Reconcile(self.os.observe());
        record(
            &mut self.trace,
            self.opts.verbose,
            format_args!("{} {} in {:?}", self.step, self.now.0, input),
        );
        let outputs = self.core.step(self.now, input);
        self.handle_outputs(outputs)?;
        check::after_restart(&mut self.model, &self.core, self.now)?;
        self.check_step()?;
        // The server takes over the processes every init keeps (as the driver's
        // `adopt_processes`). Those that ended are reported as exits, before it serves anything
        // (they are none of the core's: their ids were free since the reconciliation).
        let kept: Vec<(String, String)> = self
            .os
            .containers
            .iter()
            .filter(|(_, c)| c.init)
            .flat_map(|(h, c)| c.exited.iter().map(move |p| (h.clone(), p.clone())))
            .collect();
        for (handle, process_id) in kept {
            let exit = Observation::ProcessExited { handle, process_id };
            if self.opts.late_adopt_exits {
                self.observations.push(exit);
            } else {
                self.deliver(exit)?;
            }
        }
        // Some of those found running end while they are taken over: their exits come later.
        for (handle, process_id) in self.os.running_processes() {
            if self.rng.below(8) == 0 {
                self.os.end_process(&handle, &process_id);
                self.observations
                    .push(Observation::ProcessExited { handle, process_id });
            }
        }
        self.close_leases()
    }

    /// With faults and crashes over, everything must come to rest in agreement.
    fn settle(&mut self) -> Result<(), String> {
        self.regime.fault_per_mille = 0;
        for _ in 0..100_000 {
            // Every client hangs up.
            if let Some(l) = self.leases.first() {
                let lease = l.lease;
                self.send(Command::Release { lease })?;
                continue;
            }
            if let Some(inflight) = self.effects.first() {
                if inflight.outcome.is_none() {
                    let outcome = self.carry(0, Fault::None);
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
                self.deliver(observation)?;
                self.close_leases()?;
                continue;
            }
            // Only timers may remain: retries, and grace times running out.
            match self.core.next_deadline() {
                Some(at) => {
                    self.now = self.now.max(at);
                    self.feed(Input::Tick)?;
                }
                None => break,
            }
        }
        check::at_rest(&self.core, &self.os, self.requests.len())
    }

    /// A command, and for an attach the process it attaches to.
    fn random_command(&mut self) -> (Command, Option<String>) {
        let handle = self.pick_handle();
        let command = match self.rng.below(100) {
            94..=96 => {
                let (handle, process_id) = self.pick_process();
                return (Command::Acquire { handle }, Some(process_id));
            }
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
            51..=57 => {
                let (key, value) = self.random_property();
                // A large value goes to the container nearest its record bound, under a key
                // it does not have yet: the request that takes a record over its bound.
                match self.fullest_container() {
                    Some((fullest, keys)) if value.len() == limits::MAX_PROPERTY_VALUE_BYTES => {
                        let key = (0..20)
                            .map(big_key)
                            .find(|k| !keys.contains(k))
                            .unwrap_or(key);
                        Command::SetProperty {
                            handle: fullest,
                            key,
                            value,
                        }
                    }
                    _ => Command::SetProperty { handle, key, value },
                }
            }
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
                // A pea's process id answers too.
                handles: vec![handle, self.pick_handle(), self.pick_process().1],
            },
            74..=76 => Command::NetIn {
                handle,
                host_port: *self.rng.pick(&[0, 0, 61005, 8080]),
                container_port: *self.rng.pick(&[0, 8080]),
            },
            77..=79 => Command::NetOut {
                handle,
                rules: self.random_rules(3),
            },
            80..=89 => Command::Run {
                handle,
                spec: Box::new(ProcessSpec {
                    id: self.rng.pick(&["", "", "p1"]).to_string(),
                    path: self
                        .rng
                        .pick(&["sh", "sh", "missing-binary", ""])
                        .to_string(),
                    // Now and then at the env bounds, or just over them.
                    env: match self.rng.below(40) {
                        0 => vec!["A=1".into(); limits::MAX_ENV_ENTRIES],
                        1 => vec!["A=1".into(); limits::MAX_ENV_ENTRIES + 1],
                        2 => vec![format!("A={}", "x".repeat(limits::MAX_ENV_BYTES))],
                        _ => vec![],
                    },
                    // Now and then a pea: a process with an image of its own.
                    image: ImageRef {
                        uri: self.rng.pick(&["", "", "", "/img"]).to_string(),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            },
            90..=93 => Command::Acquire { handle },
            _ => Command::Capacity,
        };
        (command, None)
    }

    /// A process to attach to: mostly one that runs, else one clients started, else any id.
    fn pick_process(&mut self) -> (String, String) {
        let running = self.os.running_processes();
        if !running.is_empty() && self.rng.below(4) != 0 {
            return self.rng.pick(&running).clone();
        }
        let known: Vec<(String, String)> = self.model.processes.values().cloned().collect();
        if !known.is_empty() && self.rng.below(2) == 0 {
            return self.rng.pick(&known).clone();
        }
        (self.pick_handle(), "p1".to_string())
    }

    fn pick_handle(&mut self) -> String {
        let live: Vec<String> = self.model.containers.keys().cloned().collect();
        if !live.is_empty() && self.rng.below(10) < 7 {
            return self.rng.pick(&live).clone();
        }
        self.rng.pick(&HANDLES).to_string()
    }

    /// The live container with the most property bytes, as clients know them, with its keys.
    fn fullest_container(&self) -> Option<(String, Vec<String>)> {
        self.model
            .containers
            .iter()
            .filter(|(_, m)| !m.gone())
            .max_by_key(|(_, m)| {
                m.props
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            })
            .map(|(handle, m)| (handle.clone(), m.props.keys().cloned().collect()))
    }

    /// A handle for a create: mostly a usual one, sometimes the longest one allowed, sometimes
    /// one the core must refuse.
    fn create_handle(&mut self) -> String {
        match self.rng.below(40) {
            0 => self.rng.pick(&BAD_HANDLES).to_string(),
            1 => "x".repeat(LONGEST_HANDLE + 1),
            2 => longest_handle(),
            3..=20 => self.rng.pick(&HANDLES).to_string(),
            _ => String::new(),
        }
    }

    /// A property to set: mostly small; now and then a large value under one of 20 keys (so a
    /// container's record can grow to its bound), or a key or value just over its bound.
    fn random_property(&mut self) -> (String, String) {
        match self.rng.below(40) {
            0 => (
                big_key(self.rng.below(20)),
                "v".repeat(limits::MAX_PROPERTY_VALUE_BYTES),
            ),
            1 => (
                "big".into(),
                "v".repeat(limits::MAX_PROPERTY_VALUE_BYTES + 1),
            ),
            2 => ("k".repeat(limits::MAX_PROPERTY_KEY_BYTES + 1), "1".into()),
            3 => ("k".repeat(limits::MAX_PROPERTY_KEY_BYTES), "1".into()),
            _ => (
                self.rng.pick(&KEYS).to_string(),
                self.rng.pick(&VALUES).to_string(),
            ),
        }
    }

    /// Now and then, puts a create at one of the bounds or just over it.
    fn random_bounds(&mut self, spec: &mut ContainerSpec) {
        let many = |n: usize, value: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("p{i:03}"), "v".repeat(value)))
                .collect()
        };
        // Under the keys large values are set with later, so that one more is too much.
        let large = |n: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| {
                    (
                        big_key(i as u64),
                        "v".repeat(limits::MAX_PROPERTY_VALUE_BYTES),
                    )
                })
                .collect()
        };
        let big = limits::MAX_PROPERTY_VALUE_BYTES;
        let mount = BindMount {
            src_path: "/src".into(),
            dst_path: "/dst".into(),
            ..Default::default()
        };
        match self.rng.below(200) {
            0 => {
                spec.properties
                    .insert("k".repeat(limits::MAX_PROPERTY_KEY_BYTES + 1), "1".into());
            }
            1 => {
                spec.properties.insert("big".into(), "v".repeat(big + 1));
            }
            2 => {
                spec.properties.insert("big".into(), "v".repeat(big));
            }
            3 => spec.properties = many(limits::MAX_PROPERTIES + 1, 1),
            4 => spec.properties = many(limits::MAX_PROPERTIES, 1),
            // Each value within bounds, too much together; and nearly too much.
            5 => spec.properties = large(limits::MAX_RECORD_BYTES / big),
            6..=8 => spec.properties = large(limits::MAX_RECORD_BYTES / big - 1),
            9 => spec.env = vec!["A=1".into(); limits::MAX_ENV_ENTRIES + 1],
            10 => spec.env = vec![format!("A={}", "x".repeat(limits::MAX_ENV_BYTES / 2)); 2],
            11 => spec.env = vec!["A=1".into(); limits::MAX_ENV_ENTRIES],
            12 => spec.bind_mounts = vec![mount; limits::MAX_BIND_MOUNTS + 1],
            13 => spec.bind_mounts = vec![mount; limits::MAX_BIND_MOUNTS],
            14 => spec.netout_rules = vec![NetOutRule::default(); limits::MAX_NETOUT_RULES + 1],
            15 => spec.netout_rules = vec![NetOutRule::default(); limits::MAX_NETOUT_RULES],
            _ => {}
        }
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
        let network = if self.rng.below(20) == 0 {
            match self.rng.below(6) {
                0 => IN_HOST_NETWORK.to_string(),
                _ => self.rng.pick(&SPECIAL_NETWORKS).to_string(),
            }
        } else {
            self.rng
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
                .to_string()
        };
        let mut spec = ContainerSpec {
            handle: self.create_handle(),
            grace_time: *self.rng.pick(&[
                0,
                0,
                SECOND as i64,
                3 * SECOND as i64,
                20 * SECOND as i64,
            ]),
            network,
            properties,
            image: ImageRef {
                uri: self.rng.pick(&["", "", "/img", "/missing"]).to_string(),
                ..Default::default()
            },
            netin,
            netout_rules: self.random_rules(40),
            privileged: self.rng.below(4) == 0,
            ..Default::default()
        };
        self.random_bounds(&mut spec);
        spec
    }

    /// A few rules; now and then (one time in `big_every`) just over half of what a container
    /// may have, so that two such requests in flight at once are too many together, or more
    /// than that in one go.
    fn random_rules(&mut self, big_every: u64) -> Vec<NetOutRule> {
        let count = match self.rng.below(big_every * 4) {
            0..=2 => limits::MAX_NETOUT_RULES / 2 + 1,
            3 => limits::MAX_NETOUT_RULES + 1,
            n => (n % 3) as usize,
        };
        (0..count)
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

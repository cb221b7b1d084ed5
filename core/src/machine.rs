//! The core: quinn-proto's `Endpoint` to the containers' `Connection`s. It routes each input
//! to the container it concerns, owns what containers share (the address and port pools, effect
//! ids and who waits for each effect, leases, the seeded generator) and answers what no single
//! container can (list, bulk requests, capacity). Create admission is in `admission`, restart
//! in `reconcile`, one container's own logic in `container`.

use crate::api::{Capacity, Metrics, PortMapping};
use crate::command::{Command, Input, Output, Reply, RequestId};
use crate::container::{Container, Ctx, Phase, Timer};
use crate::effect::{EffectId, EffectKind, EffectOutput, Observation, Outcome};
use crate::error::Error;
use crate::handle::Handle;
use crate::lease::Leases;
use crate::network::{NetworkAllocator, NetworkAssignment};
use crate::outbox::{CoreEvent, Outbox, Owner};
use crate::ports::PortAllocator;
use crate::properties::{self, Properties};
use crate::rng::Rng;
use crate::{Config, Time};
use std::collections::BTreeMap;

/// The entries of a bulk metrics request, gathered as their reads come back.
#[derive(Debug, Default)]
struct BulkGather {
    waiting: usize,
    entries: BTreeMap<String, Result<Metrics, Error>>,
}

pub struct Core {
    pub(crate) config: Config,
    pub(crate) now: Time,
    pub(crate) rng: Rng,
    pub(crate) next_incarnation: u64,
    pub(crate) containers: BTreeMap<Handle, Container>,
    pub(crate) network: NetworkAllocator,
    pub(crate) ports: PortAllocator,
    leases: Leases,
    bulk: BTreeMap<RequestId, BulkGather>,
    out: Outbox,
}

impl Core {
    pub fn new(config: Config, now: Time) -> Core {
        let mut network = NetworkAllocator::new(config.network_pool)
            .with_host_networks(config.host_networks.clone());
        if config.bugs.double_alloc {
            network.inject_double_alloc_bug();
        }
        Core {
            rng: Rng::new(config.seed),
            ports: PortAllocator::new(config.port_pool_start, config.port_pool_size),
            network,
            config,
            now,
            next_incarnation: 1,
            containers: BTreeMap::new(),
            leases: Leases::new(),
            bulk: BTreeMap::new(),
            out: Outbox::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Feed one input at time `now` (time never runs backwards: an earlier `now` is ignored).
    pub fn step(&mut self, now: Time, input: Input) -> Vec<Output> {
        self.now = self.now.max(now);
        match input {
            Input::Tick => {}
            Input::Command { request, command } => self.command(request, command),
            Input::Outcome { effect, outcome } => self.outcome(effect, outcome),
            Input::Observed(observation) => self.observed(observation),
            Input::Reconcile(host) => self.reconcile(host),
        }
        self.fire_timers();
        self.out.take_outputs()
    }

    /// When the core next needs a `Tick`, if ever. A step at any time fires every timer due
    /// by then, so after it this is always later than that time.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers().map(|(at, _, _)| at).min()
    }

    /// Every armed timer: (when, whose, which). The one table `next_deadline` and
    /// `fire_timers` both read.
    fn timers(&self) -> impl Iterator<Item = (Time, &Handle, Timer)> + '_ {
        let skip_expiry = self.config.bugs.skip_expiry;
        self.containers.values().flat_map(move |c| {
            c.timers
                .iter()
                .filter(move |(timer, _)| !(skip_expiry && *timer == Timer::Expiry))
                .map(move |(timer, at)| (at, &c.handle, timer))
        })
    }

    /// `garden.state` of a container (`creating`, `created`, `destroying`), if the core has it.
    pub fn container_state(&self, handle: &str) -> Option<&'static str> {
        self.containers.get(handle).map(|c| c.phase.garden_state())
    }

    /// The largest number of containers that may exist at once.
    pub fn max_containers(&self) -> u64 {
        let pool = self.network.pool_capacity();
        match self.config.max_containers {
            0 => pool,
            configured => configured.min(pool),
        }
    }

    // ----- routing to containers -----

    /// The containers, and what their handlers may use of the rest.
    pub(crate) fn split(&mut self) -> (&mut BTreeMap<Handle, Container>, Ctx<'_>) {
        let cx = Ctx {
            now: self.now,
            config: &self.config,
            out: &mut self.out,
            leases: &mut self.leases,
            ports: &mut self.ports,
            rng: &mut self.rng,
        };
        (&mut self.containers, cx)
    }

    /// Runs `f` on the container `handle`, if there is one, then does what it asked of the
    /// core.
    pub(crate) fn with_container<R>(
        &mut self,
        handle: &str,
        f: impl FnOnce(&mut Container, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let (containers, mut cx) = self.split();
        let result = containers.get_mut(handle).map(|c| f(c, &mut cx));
        self.settle();
        result
    }

    /// Does what containers asked of the core: removes those whose teardown is complete (and
    /// frees what they held), and completes bulk requests.
    fn settle(&mut self) {
        for event in self.out.take_events() {
            match event {
                CoreEvent::TornDown(handle) => {
                    let Some(c) = self.containers.remove(&handle) else {
                        continue;
                    };
                    if let Some(assignment) = c.network {
                        if !self.config.bugs.leak_ip {
                            self.network.release(assignment);
                        }
                    }
                    let ports = c.mapped_ports.iter().map(|m| m.host_port);
                    for port in ports.chain(c.held_ports.iter().copied()) {
                        self.ports.release(port);
                    }
                }
                CoreEvent::BulkMetric {
                    request,
                    entry,
                    result,
                } => {
                    let gather = self
                        .bulk
                        .get_mut(&request)
                        .expect("a bulk request waits for its metrics");
                    gather.entries.insert(entry, *result);
                    gather.waiting -= 1;
                    if gather.waiting == 0 {
                        let gather = self.bulk.remove(&request).expect("present");
                        self.out
                            .reply(request, Ok(Reply::BulkMetrics(gather.entries)));
                    }
                }
            }
        }
    }

    pub(crate) fn reply(&mut self, request: RequestId, result: Result<Reply, Error>) {
        self.out.reply(request, result);
    }

    // ----- commands -----

    fn command(&mut self, request: RequestId, command: Command) {
        let result = match command {
            Command::Create(spec) => return self.create(request, *spec),
            Command::Destroy { handle } => {
                let destroyed = self.with_container(&handle, |c, cx| c.destroy(cx, request));
                if destroyed.is_some() {
                    return;
                }
                Err(Error::ContainerNotFound { handle })
            }
            Command::List { filter } => Ok(Reply::Handles(self.list(&filter))),
            Command::BulkInfo { handles } => Ok(Reply::BulkInfo(
                handles
                    .into_iter()
                    .map(|h| (h.clone(), self.info_of(&h)))
                    .collect(),
            )),
            Command::BulkMetrics { handles } => return self.bulk_metrics(request, handles),
            Command::Capacity => {
                self.out
                    .effect(Owner::Capacity(request), EffectKind::ReadCapacity);
                return;
            }
            Command::Release { lease } => {
                if let Some((handle, incarnation)) = self.leases.release(lease) {
                    let now = self.now;
                    if let Some(c) = self
                        .containers
                        .get_mut(&handle)
                        .filter(|c| c.incarnation == incarnation)
                    {
                        c.unpause(now);
                    }
                }
                Ok(Reply::Done)
            }
            named => {
                // Commands on one container reach it only while it is usable: mid-create and
                // mid-destroy ones are not found.
                let handle = named
                    .handle()
                    .expect("container commands name a container")
                    .to_string();
                let served = self.with_container(&handle, |c, cx| {
                    let usable = c.phase.is_usable();
                    if usable {
                        c.command(cx, request, named);
                    }
                    usable
                });
                if served == Some(true) {
                    return;
                }
                Err(Error::ContainerNotFound { handle })
            }
        };
        self.out.reply(request, result);
    }

    pub(crate) fn list(&self, filter: &Properties) -> Vec<String> {
        self.containers
            .values()
            .filter(|c| properties::state_matches(c.phase.garden_state(), filter))
            .filter(|c| properties::matches(&c.all_properties(&self.config), filter))
            .map(|c| c.handle.to_string())
            .collect()
    }

    fn info_of(&self, handle: &str) -> Result<crate::api::ContainerInfo, Error> {
        match self.containers.get(handle) {
            Some(c) if c.phase.is_usable() => Ok(*c.info(&self.config)),
            _ => Err(Error::ContainerNotFound {
                handle: handle.to_string(),
            }),
        }
    }

    fn bulk_metrics(&mut self, request: RequestId, handles: Vec<String>) {
        let mut gather = BulkGather::default();
        let (containers, mut cx) = self.split();
        for entry in handles {
            if gather.entries.contains_key(&entry) {
                continue;
            }
            // A container's handle, or (as guardian answers) a pea's process id: the usable
            // container that runs (or kept) it.
            let target = match containers.get(entry.as_str()) {
                Some(c) if c.phase.is_usable() => Some((c.handle.clone(), None)),
                _ => containers
                    .values()
                    .find(|c| c.phase.is_usable() && c.processes.contains(&entry))
                    .map(|c| (c.handle.clone(), Some(entry.clone()))),
            };
            let Some((handle, pea)) = target else {
                let missing = Error::ContainerNotFound {
                    handle: entry.clone(),
                };
                gather.entries.insert(entry, Err(missing));
                continue;
            };
            gather.waiting += 1;
            gather.entries.insert(entry.clone(), Ok(Metrics::default()));
            let c = containers.get_mut(&handle).expect("found above");
            c.read_bulk_metrics(&mut cx, request, entry, pea);
        }
        if gather.waiting == 0 {
            self.out
                .reply(request, Ok(Reply::BulkMetrics(gather.entries)));
        } else {
            self.bulk.insert(request, gather);
        }
    }

    // ----- outcomes and observations -----

    fn outcome(&mut self, effect: EffectId, outcome: Outcome) {
        // An outcome for an effect the core no longer waits for (a duplicate, or one from before
        // a restart) changes nothing.
        match self.out.take_owner(effect) {
            None => {}
            Some(Owner::Container(handle)) => {
                self.with_container(&handle, |c, cx| c.outcome(cx, effect, outcome));
            }
            Some(Owner::Capacity(request)) => {
                let result = match outcome {
                    Ok(EffectOutput::Capacity {
                        memory_in_bytes,
                        disk_in_bytes,
                        schedulable_disk_in_bytes,
                    }) => Ok(Reply::Capacity(Capacity {
                        memory_in_bytes,
                        disk_in_bytes,
                        schedulable_disk_in_bytes,
                        max_containers: self.max_containers(),
                    })),
                    Ok(other) => Err(Error::unexpected_output("read-capacity", other)),
                    Err(e) => Err(Error::Host(e)),
                };
                self.out.reply(request, result);
            }
        }
    }

    fn observed(&mut self, observation: Observation) {
        match observation {
            Observation::ProcessExited { handle, process_id } => {
                self.with_container(&handle, |c, _| c.process_exited(&process_id));
            }
            Observation::OutOfMemory { handle } => {
                self.with_container(&handle, |c, cx| c.out_of_memory(cx));
            }
        }
    }

    // ----- timers -----

    /// Fires every timer due by now. Each is disarmed before it acts, so none is left due.
    fn fire_timers(&mut self) {
        let now = self.now;
        let due: Vec<(Handle, Timer)> = self
            .timers()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, handle, timer)| (handle.clone(), timer))
            .collect();
        for (handle, timer) in due {
            self.with_container(&handle, |c, cx| c.fire(cx, timer));
        }
    }

    // ----- inspection -----

    /// A read-only picture of the state, for checkers and debugging.
    pub fn view(&self) -> CoreView {
        CoreView {
            now: self.now,
            containers: self
                .containers
                .values()
                .map(|c| ContainerView {
                    handle: c.handle.to_string(),
                    state: c.phase.garden_state(),
                    stopped: matches!(c.phase, Phase::Stopped),
                    network: c.network,
                    mapped_ports: c.mapped_ports.clone(),
                    held_ports: c.held_ports.clone(),
                    properties: c.properties.clone(),
                    netout_rules: c.netout_rules.len(),
                    grace_time: c.grace_time,
                    pauses: c.pauses,
                    expires_at: c.timers.get(Timer::Expiry),
                    processes: c.processes.iter().cloned().collect(),
                    durable_version: c.durability.durable,
                    version: c.durability.version,
                })
                .collect(),
            allocations: self.network.allocations(),
            ports_taken: self.ports.taken().map(u32::from).collect(),
            effects_in_flight: self.out.effects_in_flight(),
            leases: self.leases.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreView {
    pub now: Time,
    pub containers: Vec<ContainerView>,
    pub allocations: Vec<NetworkAssignment>,
    pub ports_taken: Vec<u32>,
    pub effects_in_flight: usize,
    pub leases: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerView {
    pub handle: String,
    /// `creating`, `created` or `destroying`.
    pub state: &'static str,
    pub stopped: bool,
    pub network: Option<NetworkAssignment>,
    pub mapped_ports: Vec<PortMapping>,
    pub held_ports: Vec<u32>,
    pub properties: Properties,
    /// Net-out rules in force (from the spec and added later).
    pub netout_rules: usize,
    pub grace_time: u64,
    pub pauses: u32,
    pub expires_at: Option<Time>,
    pub processes: Vec<String>,
    pub durable_version: u64,
    pub version: u64,
}

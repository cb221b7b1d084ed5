//! The state machine: dispatch of inputs, the per-request commands, timers, and a read-only view
//! for checkers. Creation and teardown sagas live in `lifecycle`, restart in `reconcile`.

use crate::api::{Capacity, ContainerInfo, Metrics, NetInResponse, NetOutRule, PortMapping};
use crate::command::{Command, Input, LeaseId, Output, Reply, RequestId};
use crate::container::{Container, DurableWaiter, Phase, Timer};
use crate::effect::{Effect, EffectId, EffectKind, EffectOutput, Observation, Outcome};
use crate::error::Error;
use crate::handle::{self, Handle};
use crate::limits::{self, EnvOwner, LimitExceeded};
use crate::network::{NetworkAllocator, NetworkAssignment};
use crate::ports::{Port, PortAllocator};
use crate::properties::{self, Properties};
use crate::record::{self, ContainerRecord};
use crate::rng::Rng;
use crate::{Config, Time, SECOND};
use std::collections::BTreeMap;

/// Persist failures before waiting requests are told their change is not durable.
const PERSIST_FAILURES_BEFORE_ERROR: u32 = 3;

/// What an effect in flight is for.
#[derive(Debug)]
pub(crate) enum Pending {
    CreateStep {
        handle: String,
        step: crate::container::CreateStep,
    },
    Teardown {
        handle: String,
    },
    Persist {
        handle: String,
        version: u64,
    },
    Spawn {
        request: RequestId,
        handle: String,
        process_id: String,
    },
    Stop {
        request: RequestId,
        handle: String,
    },
    MapPort {
        request: RequestId,
        handle: String,
        mapping: PortMapping,
    },
    NetOut {
        request: RequestId,
        handle: String,
        rules: Vec<NetOutRule>,
    },
    Metrics {
        request: RequestId,
        handle: String,
    },
    BulkMetrics {
        request: RequestId,
        /// The container whose metrics (or pea's) are read.
        handle: String,
        /// The reply's key: the handle, or the pea's process id.
        entry: String,
    },
    Capacity {
        request: RequestId,
    },
}

impl Pending {
    /// The container this effect works on outside its create/teardown saga: its teardown waits
    /// for the effect, so that nothing it removes is re-created behind it.
    fn outside_saga(&self) -> Option<&str> {
        match self {
            Pending::Persist { handle, .. }
            | Pending::Spawn { handle, .. }
            | Pending::Stop { handle, .. }
            | Pending::MapPort { handle, .. }
            | Pending::NetOut { handle, .. }
            | Pending::Metrics { handle, .. }
            | Pending::BulkMetrics { handle, .. } => Some(handle),
            Pending::CreateStep { .. } | Pending::Teardown { .. } | Pending::Capacity { .. } => {
                None
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct BulkGather {
    pub waiting: usize,
    pub entries: BTreeMap<String, Result<Metrics, Error>>,
}

pub struct Core {
    pub(crate) config: Config,
    pub(crate) now: Time,
    pub(crate) rng: Rng,
    next_effect: u64,
    next_lease: u64,
    pub(crate) next_incarnation: u64,
    pub(crate) containers: BTreeMap<Handle, Container>,
    pub(crate) network: NetworkAllocator,
    pub(crate) ports: PortAllocator,
    pub(crate) pending: BTreeMap<EffectId, Pending>,
    /// Lease -> (handle, incarnation): a lease outliving its container must not touch a new
    /// container that took the same handle.
    leases: BTreeMap<LeaseId, (Handle, u64)>,
    bulk: BTreeMap<RequestId, BulkGather>,
    out: Vec<Output>,
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
            next_effect: 1,
            next_lease: 1,
            next_incarnation: 1,
            containers: BTreeMap::new(),
            pending: BTreeMap::new(),
            leases: BTreeMap::new(),
            bulk: BTreeMap::new(),
            out: Vec::new(),
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
        std::mem::take(&mut self.out)
    }

    /// When the core next needs a `Tick`, if ever. A step at any time fires every timer due
    /// by then, so after it this is always later than that time.
    pub fn next_deadline(&self) -> Option<Time> {
        self.timers().map(|(at, _, _)| at).min()
    }

    /// Every armed timer: (when, whose, which). The one table `next_deadline` and
    /// `fire_timers` both read.
    fn timers(&self) -> impl Iterator<Item = (Time, &str, Timer)> + '_ {
        let skip_expiry = self.config.bugs.skip_expiry;
        self.containers.values().flat_map(move |c| {
            c.timers
                .iter()
                .filter(move |(timer, _)| !(skip_expiry && *timer == Timer::Expiry))
                .map(move |(timer, at)| (at, c.handle.as_str(), timer))
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

    // ----- plumbing -----

    /// Sends an effect out and notes what it is for. The container's count of effects in
    /// flight is kept here and in `outcome`, and nowhere else.
    pub(crate) fn emit(&mut self, kind: EffectKind, pending: Pending) -> EffectId {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        if let Some(c) = pending
            .outside_saga()
            .and_then(|handle| self.containers.get_mut(handle))
        {
            c.in_flight += 1;
        }
        self.pending.insert(id, pending);
        self.out.push(Output::Effect(Effect { id, kind }));
        id
    }

    pub(crate) fn reply(&mut self, request: RequestId, result: Result<Reply, Error>) {
        self.out.push(Output::Reply { request, result });
    }

    /// Sends out an effect that serves a request on a container: the request holds the
    /// container's grace timer until it is answered.
    fn emit_for_request(&mut self, kind: EffectKind, pending: Pending) {
        let handle = pending
            .outside_saga()
            .expect("a request's effect works on its container");
        self.containers
            .get_mut(handle)
            .expect("requests are served on containers that exist")
            .pause();
        self.emit(kind, pending);
    }

    /// Replies to a request that paused `handle`'s timer, ending the pause.
    fn reply_paused(&mut self, handle: &str, request: RequestId, result: Result<Reply, Error>) {
        let now = self.now;
        if let Some(c) = self.containers.get_mut(handle) {
            c.unpause(now);
        }
        self.reply(request, result);
    }

    /// A container that requests may use; mid-create and mid-destroy ones are not found.
    fn usable(&mut self, handle: &str) -> Result<&mut Container, Error> {
        match self.containers.get_mut(handle) {
            Some(c) if c.phase.is_usable() => Ok(c),
            _ => Err(Error::ContainerNotFound {
                handle: handle.to_string(),
            }),
        }
    }

    /// A request that finishes at once still counts as activity: the countdown restarts.
    fn touch(&mut self, handle: &str) {
        let now = self.now;
        if let Some(c) = self.containers.get_mut(handle) {
            if c.pauses == 0 {
                c.arm(now);
            }
        }
    }

    fn new_lease(&mut self, handle: &str) -> LeaseId {
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let holder = match self.containers.get_key_value(handle) {
            Some((handle, c)) => (handle.clone(), c.incarnation),
            None => (Handle::existing(handle.to_string()), 0),
        };
        self.leases.insert(lease, holder);
        lease
    }

    // ----- commands -----

    fn command(&mut self, request: RequestId, command: Command) {
        let result = match command {
            Command::Create(spec) => return self.create(request, *spec),
            Command::Destroy { handle } => return self.destroy(request, handle),
            Command::List { filter } => Ok(Reply::Handles(self.list(&filter))),
            Command::BulkInfo { handles } => Ok(Reply::BulkInfo(
                handles
                    .into_iter()
                    .map(|h| (h.clone(), self.info_of(&h).map(|i| *i)))
                    .collect(),
            )),
            Command::BulkMetrics { handles } => return self.bulk_metrics(request, handles),
            Command::Capacity => {
                self.emit(EffectKind::ReadCapacity, Pending::Capacity { request });
                return;
            }
            Command::Release { lease } => {
                if let Some((handle, incarnation)) = self.leases.remove(&lease) {
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
            named => return self.container_command(request, named),
        };
        self.reply(request, result);
    }

    /// Commands on one existing container: they pause its grace timer while they run.
    fn container_command(&mut self, request: RequestId, command: Command) {
        let handle = command
            .handle()
            .expect("container commands name a container")
            .to_string();
        if let Err(e) = self.usable(&handle) {
            return self.reply(request, Err(e));
        }
        let result = match command {
            Command::Info { .. } => self.info_of(&handle).map(Reply::Info),
            Command::Properties { .. } => Ok(Reply::Properties(self.all_properties(&handle))),
            Command::Property { key, .. } => self
                .all_properties(&handle)
                .remove(&key)
                .map(Reply::Property)
                .ok_or(Error::PropertyNotFound { key }),
            Command::CurrentLimits { .. } => Ok(Reply::Limits(Box::new(
                self.containers[handle.as_str()].spec.limits.clone(),
            ))),
            Command::SetProperty { key, value, .. } => {
                return self.change_property(request, &handle, key, Some(value));
            }
            Command::RemoveProperty { key, .. } => {
                return self.change_property(request, &handle, key, None)
            }
            Command::SetGraceTime { grace_time, .. } => {
                return self.set_grace_time(request, &handle, grace_time)
            }
            Command::Stop { kill, .. } => {
                let kind = EffectKind::StopProcesses {
                    handle: handle.clone(),
                    kill,
                };
                return self.emit_for_request(kind, Pending::Stop { request, handle });
            }
            Command::Metrics { .. } => {
                let kind = EffectKind::ReadMetrics {
                    handle: handle.clone(),
                };
                return self.emit_for_request(kind, Pending::Metrics { request, handle });
            }
            Command::NetIn {
                host_port,
                container_port,
                ..
            } => return self.net_in(request, &handle, host_port, container_port),
            Command::NetOut { rules, .. } => return self.net_out(request, &handle, rules),
            Command::Run { spec, .. } => return self.run(request, &handle, *spec),
            Command::Acquire { .. } => {
                self.usable(&handle).expect("checked above").pause();
                Ok(Reply::Leased(self.new_lease(&handle)))
            }
            other => unreachable!("not a container command: {other:?}"),
        };
        self.touch(&handle);
        self.reply(request, result);
    }

    fn destroy(&mut self, request: RequestId, handle: String) {
        let Some(c) = self.containers.get_mut(handle.as_str()) else {
            return self.reply(request, Err(Error::ContainerNotFound { handle }));
        };
        match &mut c.phase {
            Phase::Creating { .. } => self.reply(request, Err(Error::StillBeingCreated { handle })),
            Phase::Destroying(teardown) => {
                // A teardown waiting to retry is retried now, for this caller; one that is
                // running is not started twice.
                if teardown.running || !c.timers.is_set(Timer::TeardownRetry) {
                    self.reply(request, Err(Error::AlreadyBeingDestroyed));
                } else {
                    c.timers.clear(Timer::TeardownRetry);
                    teardown.requesters.push(request);
                    self.advance_teardown(&handle);
                }
            }
            Phase::Active | Phase::Stopped => self.begin_teardown(
                &handle,
                crate::container::TeardownStep::ALL,
                Some(request),
                None,
            ),
        }
    }

    pub(crate) fn list(&self, filter: &Properties) -> Vec<String> {
        self.containers
            .values()
            .filter(|c| properties::state_matches(c.phase.garden_state(), filter))
            .filter(|c| properties::matches(&self.all_properties(&c.handle), filter))
            .map(|c| c.handle.to_string())
            .collect()
    }

    /// User properties plus the `garden.*` keys derived from the container's state.
    pub(crate) fn all_properties(&self, handle: &str) -> Properties {
        let c = &self.containers[handle];
        let mut all = c.properties.clone();
        all.insert(properties::STATE.into(), c.phase.garden_state().into());
        all.insert(properties::GRACE_TIME.into(), c.grace_time.to_string());
        // With a network plugin the addresses are those its answer gave (already among the
        // properties); the pool's assignment is only the core's bookkeeping then.
        if let Some(net) = c.network.filter(|_| !self.config.network_plugin) {
            all.insert(
                properties::CONTAINER_IP.into(),
                net.container_ip.to_string(),
            );
            all.insert(properties::HOST_IP.into(), net.gateway_ip().to_string());
        }
        if let Some(ip) = self.config.external_ip {
            all.entry(properties::EXTERNAL_IP.into())
                .or_insert_with(|| ip.to_string());
        }
        let ports: Vec<String> = c
            .mapped_ports
            .iter()
            .map(|m| {
                format!(
                    "{{\"HostPort\":{},\"ContainerPort\":{}}}",
                    m.host_port, m.container_port
                )
            })
            .collect();
        all.insert(
            properties::MAPPED_PORTS.into(),
            format!("[{}]", ports.join(",")),
        );
        all
    }

    fn info_of(&self, handle: &str) -> Result<Box<ContainerInfo>, Error> {
        let c = match self.containers.get(handle) {
            Some(c) if c.phase.is_usable() => c,
            _ => {
                return Err(Error::ContainerNotFound {
                    handle: handle.to_string(),
                })
            }
        };
        let properties = self.all_properties(handle);
        let property = |key: &str| properties.get(key).cloned().unwrap_or_default();
        Ok(Box::new(ContainerInfo {
            state: if matches!(c.phase, Phase::Stopped) {
                "stopped"
            } else {
                "active"
            }
            .to_string(),
            // gdn sends null until something happened.
            events: (!c.events.is_empty()).then(|| c.events.clone()),
            // As gdn: from the network properties.
            host_ip: property(properties::HOST_IP),
            container_ip: property(properties::CONTAINER_IP),
            container_ipv6: property(properties::CONTAINER_IPV6),
            external_ip: property(properties::EXTERNAL_IP),
            container_path: format!("{}/{}", self.config.depot.trim_end_matches('/'), handle),
            process_ids: Some(c.processes.iter().cloned().collect()),
            properties: Some(properties),
            mapped_ports: Some(c.mapped_ports.clone()),
        }))
    }

    fn change_property(
        &mut self,
        request: RequestId,
        handle: &str,
        key: String,
        value: Option<String>,
    ) {
        if properties::is_reserved(&key) {
            self.touch(handle);
            return self.reply(request, Err(Error::ReservedProperty { key }));
        }
        if let Some(value) = &value {
            if let Err(e) = self.check_new_property(handle, &key, value) {
                self.touch(handle);
                return self.reply(request, Err(e.into()));
            }
        }
        let c = self.containers.get_mut(handle).expect("caller checked");
        match value {
            Some(value) => {
                c.properties.insert(key, value);
            }
            None => {
                // Removing a missing key is not an error (guardian does not report one).
                if c.properties.remove(&key).is_none() {
                    self.touch(handle);
                    return self.reply(request, Ok(Reply::Done));
                }
            }
        }
        self.changed_and_reply(handle, request, Reply::Done);
    }

    /// Whether `handle` may take the property `key` = `value` (a new key or a new value).
    fn check_new_property(
        &self,
        handle: &str,
        key: &str,
        value: &str,
    ) -> Result<(), LimitExceeded> {
        limits::check_property(key, value)?;
        let properties = &self.containers[handle].properties;
        if !properties.contains_key(key) && properties.len() >= limits::MAX_PROPERTIES {
            return Err(LimitExceeded::PropertyCount);
        }
        self.check_record_growth(handle, |record| {
            record.properties.insert(key.to_string(), value.to_string());
        })
    }

    /// Net-out rules and port mappings whose effects are in flight: the container's record
    /// gains them when they succeed.
    fn in_flight_additions(&self, handle: &str) -> (Vec<NetOutRule>, Vec<PortMapping>) {
        let mut rules = Vec::new();
        let mut mappings = Vec::new();
        for pending in self.pending.values() {
            match pending {
                Pending::NetOut {
                    handle: h,
                    rules: r,
                    ..
                } if h == handle => rules.extend(r.iter().cloned()),
                Pending::MapPort {
                    handle: h, mapping, ..
                } if h == handle => mappings.push(*mapping),
                _ => {}
            }
        }
        (rules, mappings)
    }

    /// Refuses a change that would take `handle`'s record over [`limits::MAX_RECORD_BYTES`],
    /// measured as the record will be with the change and everything in flight in it, and with
    /// room for what the host may yet add ([`with_room_for_events`]). A record already over
    /// the bound (stored before the bound existed) may still shrink.
    fn check_record_growth(
        &self,
        handle: &str,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<(), LimitExceeded> {
        let (rules, mappings) = self.in_flight_additions(handle);
        let current = || {
            let mut record = with_room_for_events(self.containers[handle].record());
            record.netout_rules.extend(rules.iter().cloned());
            record.mapped_ports.extend(mappings.iter().copied());
            record
        };
        let mut changed = current();
        change(&mut changed);
        match limits::check_record(&changed) {
            Ok(_) => Ok(()),
            Err(LimitExceeded::RecordSize { bytes })
                if bytes <= record::encoded_len(&current()) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn set_grace_time(&mut self, request: RequestId, handle: &str, grace_time: i64) {
        let Ok(grace_time) = u64::try_from(grace_time) else {
            self.touch(handle);
            return self.reply(request, Err(Error::NegativeGraceTime { nanos: grace_time }));
        };
        let c = self.containers.get_mut(handle).expect("caller checked");
        c.grace_time = grace_time;
        self.changed_and_reply_then(handle, request, Reply::Done, grace_time == 0);
    }

    fn net_in(&mut self, request: RequestId, handle: &str, host_port: u32, container_port: u32) {
        let result = (|| {
            let container_port = Port::optional(container_port)?;
            // Measured with the widest ports: which one the pool hands out is not known yet.
            self.check_record_growth(handle, |record| {
                record.mapped_ports.push(PortMapping {
                    host_port: u32::MAX,
                    container_port: u32::MAX,
                })
            })?;
            let assignment = self.containers[handle]
                .network
                .expect("usable containers have a network");
            let mapping = self.ports.map(Port::optional(host_port)?, container_port)?;
            Ok((assignment, mapping))
        })();
        match result {
            Err(e) => {
                self.touch(handle);
                self.reply(request, Err(e));
            }
            Ok((assignment, mapping)) => {
                self.emit_for_request(
                    EffectKind::MapPort {
                        handle: handle.to_string(),
                        assignment,
                        mapping,
                    },
                    Pending::MapPort {
                        request,
                        handle: handle.to_string(),
                        mapping,
                    },
                );
            }
        }
    }

    fn net_out(&mut self, request: RequestId, handle: &str, rules: Vec<NetOutRule>) {
        if let Some(reason) = rules.iter().find_map(|r| r.validate().err()) {
            self.touch(handle);
            return self.reply(request, Err(Error::InvalidNetOutRule { reason }));
        }
        if rules.is_empty() {
            self.touch(handle);
            return self.reply(request, Ok(Reply::Done));
        }
        if let Err(e) = self.check_new_netout_rules(handle, &rules) {
            self.touch(handle);
            return self.reply(request, Err(e.into()));
        }
        let assignment = self.containers[handle]
            .network
            .expect("usable containers have a network");
        self.emit_for_request(
            EffectKind::AddNetOutRules {
                handle: handle.to_string(),
                assignment,
                rules: rules.clone(),
            },
            Pending::NetOut {
                request,
                handle: handle.to_string(),
                rules,
            },
        );
    }

    /// Whether `handle` may take `rules` on top of those it has and those in flight.
    fn check_new_netout_rules(
        &self,
        handle: &str,
        rules: &[NetOutRule],
    ) -> Result<(), LimitExceeded> {
        let (in_flight, _) = self.in_flight_additions(handle);
        limits::check_netout_rules(
            self.containers[handle].netout_rules.len() + in_flight.len() + rules.len(),
        )?;
        self.check_record_growth(handle, |record| {
            record.netout_rules.extend(rules.iter().cloned())
        })
    }

    fn run(&mut self, request: RequestId, handle: &str, spec: crate::api::ProcessSpec) {
        let checked = (|| {
            // A stopped container still runs new processes, as with gdn: Stop only ends the
            // processes that were running.
            let c = &self.containers[handle];
            if spec.path.is_empty() {
                return Err(Error::InvalidProcessSpec {
                    reason: "no path to run".into(),
                });
            }
            if !spec.bind_mounts.is_empty() && spec.image.uri.is_empty() {
                return Err(Error::InvalidProcessSpec {
                    reason: "bind mounts are only supported for processes with their own image"
                        .into(),
                });
            }
            limits::check_env(EnvOwner::Process, &spec.env)?;
            limits::check_bind_mounts(spec.bind_mounts.len())?;
            if let Some(bad) = spec.env.iter().find(|e| !e.contains('=')) {
                return Err(Error::InvalidProcessSpec {
                    reason: format!("environment entry '{bad}' is not KEY=VALUE"),
                });
            }
            if spec.id.is_empty() {
                return Ok(None);
            }
            handle::validate_process_id(&spec.id).map_err(|reason| Error::InvalidProcessId {
                process_id: spec.id.clone(),
                reason,
            })?;
            if c.processes.contains(&spec.id) {
                return Err(Error::ProcessIdInUse {
                    process_id: spec.id.clone(),
                });
            }
            Ok(Some(spec.id.clone()))
        })();
        let process_id = match checked {
            Err(e) => {
                self.touch(handle);
                return self.reply(request, Err(e));
            }
            Ok(Some(id)) => id,
            Ok(None) => loop {
                let id = self.rng.uuid();
                if !self.containers[handle].processes.contains(&id) {
                    break id;
                }
            },
        };
        let c = self.containers.get_mut(handle).expect("caller checked");
        c.processes.insert(process_id.clone());
        let env = c.image_env.iter().chain(&c.spec.env).cloned().collect();
        self.emit_for_request(
            EffectKind::SpawnProcess {
                handle: handle.to_string(),
                process_id: process_id.clone(),
                spec: Box::new(spec),
                env,
            },
            Pending::Spawn {
                request,
                handle: handle.to_string(),
                process_id,
            },
        );
    }

    fn bulk_metrics(&mut self, request: RequestId, handles: Vec<String>) {
        let mut gather = BulkGather::default();
        for entry in handles {
            if gather.entries.contains_key(&entry) {
                continue;
            }
            // A container's handle, or (as guardian answers) a pea's process id.
            let (handle, effect) = if self.is_usable(&entry) {
                let effect = EffectKind::ReadMetrics {
                    handle: entry.clone(),
                };
                (entry.clone(), effect)
            } else if let Some(owner) = self.owner_of_process(&entry) {
                let effect = EffectKind::ReadPeaMetrics {
                    handle: owner.clone(),
                    process_id: entry.clone(),
                };
                (owner, effect)
            } else {
                let missing = Error::ContainerNotFound {
                    handle: entry.clone(),
                };
                gather.entries.insert(entry, Err(missing));
                continue;
            };
            gather.waiting += 1;
            gather.entries.insert(entry.clone(), Ok(Metrics::default()));
            self.emit(
                effect,
                Pending::BulkMetrics {
                    request,
                    handle,
                    entry,
                },
            );
        }
        if gather.waiting == 0 {
            self.reply(request, Ok(Reply::BulkMetrics(gather.entries)));
        } else {
            self.bulk.insert(request, gather);
        }
    }

    // ----- durability -----

    /// Records a change to `handle`'s durable state and replies once it is stored.
    fn changed_and_reply(&mut self, handle: &str, request: RequestId, reply: Reply) {
        self.changed_and_reply_then(handle, request, reply, false);
    }

    fn changed_and_reply_then(
        &mut self,
        handle: &str,
        request: RequestId,
        reply: Reply,
        expire_if_idle: bool,
    ) {
        let version = self.changed(handle);
        let c = self.containers.get_mut(handle).expect("caller checked");
        c.pause();
        c.durability.waiters.push(DurableWaiter {
            request,
            version,
            reply,
            expire_if_idle,
        });
        self.flush_durable_waiters(handle);
    }

    /// Bumps the container's version and makes sure a write of it is on its way.
    pub(crate) fn changed(&mut self, handle: &str) -> u64 {
        let c = self.containers.get_mut(handle).expect("caller checked");
        c.durability.version += 1;
        let version = c.durability.version;
        self.persist_if_needed(handle);
        version
    }

    pub(crate) fn persist_if_needed(&mut self, handle: &str) {
        let now = self.now;
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        let d = &c.durability;
        if !c.phase.is_usable()
            || d.persisting
            || d.durable >= d.version
            || c.timers.get(Timer::PersistRetry).is_some_and(|t| t > now)
        {
            return;
        }
        c.durability.persisting = true;
        c.timers.clear(Timer::PersistRetry);
        let record = Box::new(c.record());
        let version = record.version;
        self.emit(
            EffectKind::PersistRecord {
                handle: handle.to_string(),
                record,
            },
            Pending::Persist {
                handle: handle.to_string(),
                version,
            },
        );
    }

    fn flush_durable_waiters(&mut self, handle: &str) {
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        let durable = c.durability.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut c.durability.waiters)
            .into_iter()
            .partition(|w| w.version <= durable);
        c.durability.waiters = waiting;
        for w in ready {
            self.reply_paused(handle, w.request, Ok(w.reply));
            let now = self.now;
            let c = self.containers.get_mut(handle).expect("still present");
            if w.expire_if_idle && c.pauses == 0 && c.grace_time == 0 {
                c.timers.set(Timer::Expiry, now);
            }
        }
    }

    fn persist_done(&mut self, handle: &str, version: u64, outcome: Outcome) {
        let now = self.now;
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        c.durability.persisting = false;
        match outcome {
            Ok(_) => {
                c.durability.durable = c.durability.durable.max(version);
                c.durability.failures = 0;
                self.flush_durable_waiters(handle);
            }
            Err(e) => {
                c.durability.failures += 1;
                c.timers.set(
                    Timer::PersistRetry,
                    now.plus(backoff(c.durability.failures)),
                );
                if c.durability.failures >= PERSIST_FAILURES_BEFORE_ERROR {
                    let waiters = std::mem::take(&mut c.durability.waiters);
                    for w in waiters {
                        self.reply_paused(handle, w.request, Err(Error::NotDurable(e.clone())));
                    }
                }
            }
        }
        self.persist_if_needed(handle);
        self.advance_teardown(handle);
    }

    // ----- outcomes -----

    fn outcome(&mut self, effect: EffectId, outcome: Outcome) {
        // An outcome for an effect the core no longer waits for (a duplicate, or one from before
        // a restart) changes nothing.
        let Some(pending) = self.pending.remove(&effect) else {
            return;
        };
        if let Some(c) = pending
            .outside_saga()
            .and_then(|handle| self.containers.get_mut(handle))
        {
            c.in_flight -= 1;
        }
        match pending {
            Pending::CreateStep { handle, step } => self.create_step_done(&handle, step, outcome),
            Pending::Teardown { handle } => self.teardown_step_done(&handle, outcome),
            Pending::Persist { handle, version } => self.persist_done(&handle, version, outcome),
            Pending::Spawn {
                request,
                handle,
                process_id,
            } => {
                self.effect_finished(&handle);
                match outcome {
                    Ok(_) => {
                        // The request's pause becomes the lease's: the process connection
                        // holds the container until the server releases it.
                        let lease = self.new_lease(&handle);
                        self.reply(request, Ok(Reply::ProcessStarted { process_id, lease }));
                    }
                    Err(e) => {
                        if let Some(c) = self.containers.get_mut(handle.as_str()) {
                            c.processes.remove(&process_id);
                        }
                        self.reply_paused(&handle, request, Err(Error::Host(e)));
                    }
                }
            }
            Pending::Stop { request, handle } => {
                self.effect_finished(&handle);
                // A container destroyed meanwhile has no processes left to stop either.
                self.finish_change(&handle, request, outcome, Ok(Reply::Done), |c| {
                    c.phase = Phase::Stopped;
                    Reply::Done
                });
            }
            Pending::MapPort {
                request,
                handle,
                mapping,
            } => {
                self.effect_finished(&handle);
                if outcome.is_err() || !self.is_usable(&handle) {
                    // The host may still forward the port until the container's network is
                    // torn down, so it stays held until then.
                    self.hold_port(&handle, mapping.host_port);
                }
                let gone = Err(Error::ContainerNotFound {
                    handle: handle.clone(),
                });
                self.finish_change(&handle, request, outcome, gone, |c| {
                    c.mapped_ports.push(mapping);
                    Reply::NetIn(NetInResponse {
                        host_port: mapping.host_port,
                        container_port: mapping.container_port,
                    })
                });
            }
            Pending::NetOut {
                request,
                handle,
                rules,
            } => {
                self.effect_finished(&handle);
                let gone = Err(Error::ContainerNotFound {
                    handle: handle.clone(),
                });
                self.finish_change(&handle, request, outcome, gone, |c| {
                    c.netout_rules.extend(rules);
                    Reply::Done
                });
            }
            Pending::Metrics { request, handle } => {
                self.effect_finished(&handle);
                let result = self.metrics_result(&handle, outcome);
                self.reply_paused(
                    &handle,
                    request,
                    result.map(|m| Reply::Metrics(Box::new(m))),
                );
            }
            Pending::BulkMetrics {
                request,
                handle,
                entry,
            } => {
                self.effect_finished(&handle);
                let result = self.metrics_result(&handle, outcome);
                let gather = self
                    .bulk
                    .get_mut(&request)
                    .expect("a bulk request waits for its metrics");
                gather.entries.insert(entry, result);
                gather.waiting -= 1;
                if gather.waiting == 0 {
                    let gather = self.bulk.remove(&request).expect("present");
                    self.reply(request, Ok(Reply::BulkMetrics(gather.entries)));
                }
            }
            Pending::Capacity { request } => {
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
                    Ok(other) => Err(unexpected_output("read-capacity", other)),
                    Err(e) => Err(Error::Host(e)),
                };
                self.reply(request, result);
            }
        }
    }

    fn is_usable(&self, handle: &str) -> bool {
        self.containers
            .get(handle)
            .is_some_and(|c| c.phase.is_usable())
    }

    /// Answers a request whose effect changes the container's durable state: a success is
    /// applied to the container (if it is still usable) and answered once stored; a container
    /// gone meanwhile gets `gone`, a failure the host's error.
    fn finish_change(
        &mut self,
        handle: &str,
        request: RequestId,
        outcome: Outcome,
        gone: Result<Reply, Error>,
        apply: impl FnOnce(&mut Container) -> Reply,
    ) {
        match outcome {
            Ok(_) if self.is_usable(handle) => {
                let c = self.containers.get_mut(handle).expect("usable");
                let reply = apply(c);
                self.unpause_only(handle);
                self.changed_and_reply(handle, request, reply);
            }
            Ok(_) => self.reply_paused(handle, request, gone),
            Err(e) => self.reply_paused(handle, request, Err(Error::Host(e))),
        }
    }

    /// The usable container that runs (or kept) process `process_id`, if one does.
    fn owner_of_process(&self, process_id: &str) -> Option<String> {
        self.containers
            .iter()
            .find(|(_, c)| c.phase.is_usable() && c.processes.contains(process_id))
            .map(|(handle, _)| handle.to_string())
    }

    fn metrics_result(&self, handle: &str, outcome: Outcome) -> Result<Metrics, Error> {
        match outcome {
            Ok(EffectOutput::Metrics(mut metrics)) => {
                let c = self
                    .containers
                    .get(handle)
                    .filter(|c| c.phase.is_usable())
                    .ok_or_else(|| Error::ContainerNotFound {
                        handle: handle.to_string(),
                    })?;
                let age = self.now.since(c.created_at);
                metrics.age = i64::try_from(age).unwrap_or(i64::MAX);
                metrics.cpu_entitlement =
                    crate::api::entitlement_over(metrics.cpu_entitlement, age);
                Ok(*metrics)
            }
            Ok(other) => Err(unexpected_output("read-metrics", other)),
            Err(e) => Err(Error::Host(e)),
        }
    }

    fn hold_port(&mut self, handle: &str, port: u32) {
        match self.containers.get_mut(handle) {
            Some(c) => c.held_ports.push(port),
            None => self.ports.release(port),
        }
    }

    /// One of the container's own effects is over; a teardown may have been waiting for it.
    fn effect_finished(&mut self, handle: &str) {
        self.advance_teardown(handle);
    }

    /// Ends a request's pause without replying (the reply follows once the change is durable,
    /// under a new pause).
    fn unpause_only(&mut self, handle: &str) {
        let now = self.now;
        if let Some(c) = self.containers.get_mut(handle) {
            c.unpause(now);
        }
    }

    fn observed(&mut self, observation: Observation) {
        match observation {
            Observation::ProcessExited { handle, process_id } => {
                if let Some(c) = self.containers.get_mut(handle.as_str()) {
                    c.processes.remove(&process_id);
                }
            }
            Observation::OutOfMemory { handle } => {
                let Some(c) = self.containers.get_mut(handle.as_str()) else {
                    return;
                };
                if c.events.iter().any(|e| e == OUT_OF_MEMORY) {
                    return;
                }
                c.events.push(OUT_OF_MEMORY.to_string());
                if c.phase.is_usable() {
                    self.changed(&handle);
                }
            }
        }
    }

    // ----- timers -----

    /// Fires every timer due by now. Each is disarmed before it acts, so none is left due.
    fn fire_timers(&mut self) {
        let now = self.now;
        let due: Vec<(String, Timer)> = self
            .timers()
            .filter(|(at, _, _)| *at <= now)
            .map(|(_, handle, timer)| (handle.to_string(), timer))
            .collect();
        for (handle, timer) in due {
            let Some(c) = self.containers.get_mut(handle.as_str()) else {
                continue;
            };
            if !c.timers.is_set(timer) {
                continue;
            }
            c.timers.clear(timer);
            match timer {
                Timer::PersistRetry => self.persist_if_needed(&handle),
                Timer::Expiry => {
                    if c.pauses == 0 && c.phase.is_usable() {
                        self.begin_teardown(
                            &handle,
                            crate::container::TeardownStep::ALL,
                            None,
                            None,
                        );
                    }
                }
                Timer::TeardownRetry => self.advance_teardown(&handle),
            }
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
            effects_in_flight: self.pending.len(),
            leases: self.leases.len(),
        }
    }
}

/// The event text gdn reports after an OOM kill.
pub(crate) const OUT_OF_MEMORY: &str = "Out of memory";

/// A record with room for what the host may add to it unasked: the OOM event (recorded once).
/// Bounds are checked on this, so that no record outgrows them later.
pub(crate) fn with_room_for_events(mut record: ContainerRecord) -> ContainerRecord {
    if !record.events.iter().any(|e| e == OUT_OF_MEMORY) {
        record.events.push(OUT_OF_MEMORY.to_string());
    }
    record
}

fn unexpected_output(effect: &str, output: EffectOutput) -> Error {
    Error::Host(crate::effect::EffectError::new(
        crate::effect::EffectErrorKind::Host,
        format!("host answered {effect} with {output:?}"),
    ))
}

/// Retry delay after `attempts` failures: 1 s, 2 s, 4 s ... capped at 64 s.
pub(crate) fn backoff(attempts: u32) -> u64 {
    SECOND << attempts.saturating_sub(1).min(6)
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

//! One container's state machine (quinn-proto's `Connection` to the core's `Endpoint`): its
//! commands, the outcomes of its effects, its timers, its create and teardown sagas and its
//! durability. It sees nothing of other containers; what it needs of the core comes in a
//! [`Ctx`], and what only the core can do goes out as a [`CoreEvent`].

mod commands;
mod durability;
mod info;
mod lifecycle;
mod outcome;
mod phase;
mod timers;

pub(crate) use durability::Durability;
pub(crate) use phase::{CreateStep, Phase, Teardown, TeardownStep};
pub(crate) use timers::{Timer, Timers};

use crate::api::{ContainerSpec, NetOutRule, PortMapping};
use crate::command::{Reply, RequestId};
use crate::effect::{EffectId, EffectKind};
use crate::error::Error;
use crate::handle::Handle;
use crate::lease::Leases;
use crate::network::NetworkAssignment;
use crate::outbox::{CoreEvent, Outbox, Owner};
use crate::ports::PortAllocator;
use crate::properties::Properties;
use crate::record::{ContainerRecord, RecordState};
use crate::rng::Rng;
use crate::{Config, Time};
use std::collections::{BTreeMap, BTreeSet};

/// What a container's handlers may use of the core: the time and configuration, the outbox,
/// the leases, the host-port pool (NetIn takes from it) and the seeded generator (process ids).
pub(crate) struct Ctx<'a> {
    pub now: Time,
    pub config: &'a Config,
    pub out: &'a mut Outbox,
    pub leases: &'a mut Leases,
    pub ports: &'a mut PortAllocator,
    pub rng: &'a mut Rng,
}

/// What one of the container's effects in flight is for.
#[derive(Debug)]
pub(crate) enum Task {
    CreateStep(CreateStep),
    Teardown,
    Persist {
        version: u64,
    },
    Spawn {
        request: RequestId,
        process_id: String,
    },
    Stop {
        request: RequestId,
    },
    MapPort {
        request: RequestId,
        mapping: PortMapping,
    },
    NetOut {
        request: RequestId,
        rules: Vec<NetOutRule>,
    },
    Metrics {
        request: RequestId,
    },
    /// `entry` is the bulk reply's key: the handle, or a pea's process id.
    BulkMetrics {
        request: RequestId,
        entry: String,
    },
}

impl Task {
    /// Work outside the create/teardown saga: teardown waits for it, so that nothing it
    /// removes is re-created behind it.
    fn outside_saga(&self) -> bool {
        !matches!(self, Task::CreateStep(_) | Task::Teardown)
    }
}

#[derive(Debug)]
pub(crate) struct Container {
    pub handle: Handle,
    /// Distinguishes this container from earlier ones with the same handle.
    pub incarnation: u64,
    pub spec: ContainerSpec,
    pub properties: Properties,
    pub grace_time: u64,
    /// `None` only for leftovers found at reconciliation that no record explains.
    pub network: Option<NetworkAssignment>,
    pub mapped_ports: Vec<PortMapping>,
    /// Ports a failed mapping may have left in place: unadvertised, but kept from others until
    /// the container's network is gone.
    pub held_ports: Vec<u32>,
    pub netout_rules: Vec<NetOutRule>,
    pub image_env: Vec<String>,
    pub created_at: Time,
    pub events: Vec<String>,
    pub processes: BTreeSet<String>,
    pub phase: Phase,
    /// Requests and leases currently holding the grace timer.
    pub pauses: u32,
    pub timers: Timers,
    /// The container's effects in flight, by id.
    tasks: BTreeMap<EffectId, Task>,
    pub durability: Durability,
}

impl Container {
    /// A container in `phase` with nothing in flight, no processes and nothing holding it.
    pub(crate) fn new(
        handle: Handle,
        incarnation: u64,
        spec: ContainerSpec,
        phase: Phase,
        created_at: Time,
    ) -> Container {
        Container {
            handle,
            incarnation,
            spec,
            properties: Properties::new(),
            grace_time: 0,
            network: None,
            mapped_ports: Vec::new(),
            held_ports: Vec::new(),
            netout_rules: Vec::new(),
            image_env: Vec::new(),
            created_at,
            events: Vec::new(),
            processes: BTreeSet::new(),
            phase,
            pauses: 0,
            timers: Timers::default(),
            tasks: BTreeMap::new(),
            durability: Durability::default(),
        }
    }

    pub(crate) fn record(&self) -> ContainerRecord {
        ContainerRecord {
            handle: self.handle.to_string(),
            spec: self.spec.clone(),
            properties: self.properties.clone(),
            grace_time: self.grace_time,
            state: if matches!(self.phase, Phase::Stopped) {
                RecordState::Stopped
            } else {
                RecordState::Active
            },
            network: self.network.expect("a recorded container has a network"),
            mapped_ports: self.mapped_ports.clone(),
            netout_rules: self.netout_rules.clone(),
            image_env: self.image_env.clone(),
            created_at: self.created_at,
            events: self.events.clone(),
            version: self.durability.version,
        }
    }

    /// Effects in flight outside the create/teardown saga.
    pub(crate) fn effects_in_flight(&self) -> usize {
        self.tasks.values().filter(|t| t.outside_saga()).count()
    }

    /// Sends out one of this container's effects.
    fn emit(&mut self, cx: &mut Ctx<'_>, kind: EffectKind, task: Task) {
        let id = cx.out.effect(Owner::Container(self.handle.clone()), kind);
        self.tasks.insert(id, task);
    }

    /// Sends out an effect that serves a request: the request holds the grace timer until it
    /// is answered.
    fn emit_for_request(&mut self, cx: &mut Ctx<'_>, kind: EffectKind, task: Task) {
        self.pause();
        self.emit(cx, kind, task);
    }

    /// Replies to a request that paused the grace timer, ending the pause.
    fn reply_paused(&mut self, cx: &mut Ctx<'_>, request: RequestId, result: Result<Reply, Error>) {
        self.unpause(cx.now);
        cx.out.reply(request, result);
    }

    /// Replies to a request that finished at once (and so still counts as activity).
    fn reply_now(&mut self, cx: &mut Ctx<'_>, request: RequestId, result: Result<Reply, Error>) {
        self.touch(cx.now);
        cx.out.reply(request, result);
    }

    /// Net-out rules and port mappings whose effects are in flight: the record gains them when
    /// they succeed.
    fn in_flight_additions(&self) -> (Vec<NetOutRule>, Vec<PortMapping>) {
        let mut rules = Vec::new();
        let mut mappings = Vec::new();
        for task in self.tasks.values() {
            match task {
                Task::NetOut { rules: r, .. } => rules.extend(r.iter().cloned()),
                Task::MapPort { mapping, .. } => mappings.push(*mapping),
                _ => {}
            }
        }
        (rules, mappings)
    }

    fn not_found(&self) -> Error {
        Error::ContainerNotFound {
            handle: self.handle.to_string(),
        }
    }

    /// Tells the core the container is gone once its teardown is complete.
    fn torn_down(&self, cx: &mut Ctx<'_>) {
        cx.out.event(CoreEvent::TornDown(self.handle.clone()));
    }
}

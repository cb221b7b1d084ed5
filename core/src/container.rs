//! One container as the core holds it, with its timers and its durability bookkeeping.

use crate::api::{ContainerSpec, NetOutRule, PortMapping};
use crate::command::{Reply, RequestId};
use crate::error::Error;
use crate::handle::Handle;
use crate::network::NetworkAssignment;
use crate::properties::{self, Properties};
use crate::record::{ContainerRecord, RecordState};
use crate::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum CreateStep {
    PrepareRootfs,
    CreateCgroup,
    SetupNetwork,
    StartInit,
    ConnectNetwork,
    Persist,
}

impl CreateStep {
    pub(crate) const ORDER: [CreateStep; 6] = [
        CreateStep::PrepareRootfs,
        CreateStep::CreateCgroup,
        CreateStep::SetupNetwork,
        CreateStep::StartInit,
        CreateStep::ConnectNetwork,
        CreateStep::Persist,
    ];

    /// The step after this one; `ConnectNetwork` is a step only with a network plugin.
    pub(crate) fn next(self, network_plugin: bool) -> Option<CreateStep> {
        let at = Self::ORDER
            .iter()
            .position(|s| *s == self)
            .expect("step is in ORDER");
        Self::ORDER[at + 1..]
            .iter()
            .copied()
            .find(|s| network_plugin || *s != CreateStep::ConnectNetwork)
    }

    /// The teardown step that undoes this one.
    pub(crate) fn undo(self) -> TeardownStep {
        match self {
            CreateStep::PrepareRootfs => TeardownStep::RemoveRootfs,
            CreateStep::CreateCgroup => TeardownStep::RemoveCgroup,
            CreateStep::SetupNetwork => TeardownStep::TeardownNetwork,
            CreateStep::StartInit => TeardownStep::KillContainer,
            CreateStep::ConnectNetwork => TeardownStep::TeardownNetwork,
            CreateStep::Persist => TeardownStep::DeleteRecord,
        }
    }
}

/// Teardown runs in this order whatever started it (destroy, a create's rollback, expiry,
/// reconciliation): processes first, then what they used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TeardownStep {
    KillContainer,
    TeardownNetwork,
    RemoveCgroup,
    RemoveRootfs,
    DeleteRecord,
}

impl TeardownStep {
    pub(crate) const ALL: [TeardownStep; 5] = [
        TeardownStep::KillContainer,
        TeardownStep::TeardownNetwork,
        TeardownStep::RemoveCgroup,
        TeardownStep::RemoveRootfs,
        TeardownStep::DeleteRecord,
    ];

    /// The given steps in teardown order, without repeats.
    pub(crate) fn ordered(steps: impl IntoIterator<Item = TeardownStep>) -> VecDeque<TeardownStep> {
        let set: BTreeSet<TeardownStep> = steps.into_iter().collect();
        set.into_iter().collect()
    }
}

#[derive(Debug)]
pub(crate) struct Teardown {
    /// Destroy requests waiting for the end.
    pub requesters: Vec<RequestId>,
    pub steps: VecDeque<TeardownStep>,
    pub running: bool,
    pub attempts: u32,
    /// Set when this teardown rolls back a create: that request fails with this cause.
    pub rollback_of: Option<(RequestId, Error)>,
}

#[derive(Debug)]
pub(crate) enum Phase {
    Creating {
        request: RequestId,
        done: Vec<CreateStep>,
    },
    Active,
    Stopped,
    Destroying(Teardown),
}

impl Phase {
    /// `garden.state` as List filters see it.
    pub(crate) fn garden_state(&self) -> &'static str {
        match self {
            Phase::Creating { .. } => "creating",
            Phase::Active | Phase::Stopped => properties::STATE_CREATED,
            Phase::Destroying(_) => "destroying",
        }
    }

    pub(crate) fn is_usable(&self) -> bool {
        matches!(self, Phase::Active | Phase::Stopped)
    }
}

/// What a container waits for the clock for. Due timers fire in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A failed record write is tried again.
    PersistRetry,
    /// The grace time ran out with nothing holding the container.
    Expiry,
    /// A failed teardown step is tried again.
    TeardownRetry,
}

/// A container's timers: the one table that both `Core::next_deadline` and `Core::fire_timers`
/// read, so that a tick fires every timer the deadline promised.
#[derive(Debug, Default)]
pub(crate) struct Timers(BTreeMap<Timer, Time>);

impl Timers {
    pub(crate) fn set(&mut self, timer: Timer, at: Time) {
        self.0.insert(timer, at);
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.0.remove(&timer);
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Time> {
        self.0.get(&timer).copied()
    }

    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.0.contains_key(&timer)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Timer, Time)> + '_ {
        self.0.iter().map(|(timer, at)| (*timer, *at))
    }
}

/// A reply held back until the change it acknowledges is durable.
#[derive(Debug)]
pub(crate) struct DurableWaiter {
    pub request: RequestId,
    pub version: u64,
    pub reply: Reply,
    /// SetGraceTime(0): once the reply is out and nothing holds the container, it expires at
    /// once (as gdn does).
    pub expire_if_idle: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Durability {
    pub version: u64,
    pub durable: u64,
    pub persisting: bool,
    pub failures: u32,
    pub waiters: Vec<DurableWaiter>,
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
    /// Effects in flight on this container outside its create/teardown saga; teardown waits
    /// for them so that nothing it removes is re-created behind it.
    pub in_flight: u32,
    pub durability: Durability,
}

impl Container {
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

    pub(crate) fn pause(&mut self) {
        self.pauses += 1;
        self.timers.clear(Timer::Expiry);
    }

    /// The last holder leaving starts a fresh full countdown.
    pub(crate) fn unpause(&mut self, now: Time) {
        self.pauses = self.pauses.saturating_sub(1);
        if self.pauses == 0 {
            self.arm(now);
        }
    }

    pub(crate) fn arm(&mut self, now: Time) {
        if self.grace_time > 0 && self.phase.is_usable() {
            self.timers.set(Timer::Expiry, now.plus(self.grace_time));
        } else {
            self.timers.clear(Timer::Expiry);
        }
    }
}

//! Where one step's results gather: replies and effects in the order they arose, who waits
//! for each effect in flight, and what a container asks of the core (quinn-proto's endpoint
//! events).

use crate::api::Metrics;
use crate::command::{Output, Reply, RequestId};
use crate::effect::{Effect, EffectId, EffectKind};
use crate::error::Error;
use crate::handle::Handle;
use std::collections::BTreeMap;

/// Who an effect's outcome goes to.
#[derive(Debug)]
pub(crate) enum Owner {
    /// The container's own task table says what the effect is for.
    Container(Handle),
    /// A capacity request, answered by the core itself.
    Capacity(RequestId),
}

/// What a container hands to the core, which alone can do it.
#[derive(Debug)]
pub(crate) enum CoreEvent {
    /// The container's teardown is complete: remove it and free what it held.
    TornDown(Handle),
    /// One entry of a bulk metrics request.
    BulkMetric {
        request: RequestId,
        entry: String,
        result: Box<Result<Metrics, Error>>,
    },
}

#[derive(Debug)]
pub(crate) struct Outbox {
    next_effect: u64,
    owners: BTreeMap<EffectId, Owner>,
    outputs: Vec<Output>,
    events: Vec<CoreEvent>,
}

impl Outbox {
    pub(crate) fn new() -> Outbox {
        Outbox {
            next_effect: 1,
            owners: BTreeMap::new(),
            outputs: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Sends an effect out; its outcome goes to `owner`.
    pub(crate) fn effect(&mut self, owner: Owner, kind: EffectKind) -> EffectId {
        let id = EffectId(self.next_effect);
        self.next_effect += 1;
        self.owners.insert(id, owner);
        self.outputs.push(Output::Effect(Effect { id, kind }));
        id
    }

    pub(crate) fn reply(&mut self, request: RequestId, result: Result<Reply, Error>) {
        self.outputs.push(Output::Reply { request, result });
    }

    pub(crate) fn event(&mut self, event: CoreEvent) {
        self.events.push(event);
    }

    /// Who waits for `effect`, if anyone still does (an outcome may be a duplicate, or from
    /// before a restart).
    pub(crate) fn take_owner(&mut self, effect: EffectId) -> Option<Owner> {
        self.owners.remove(&effect)
    }

    pub(crate) fn effects_in_flight(&self) -> usize {
        self.owners.len()
    }

    pub(crate) fn take_events(&mut self) -> Vec<CoreEvent> {
        std::mem::take(&mut self.events)
    }

    pub(crate) fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }
}

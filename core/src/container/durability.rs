//! A container's durability: each change bumps its version, one record write is in flight at a
//! time, and a reply that acknowledges a change waits until the change is stored.

use super::timers::backoff;
use super::{Container, Ctx, Task, Timer};
use crate::command::{Reply, RequestId};
use crate::effect::{EffectKind, Outcome};
use crate::error::Error;

/// Persist failures before waiting requests are told their change is not durable.
const PERSIST_FAILURES_BEFORE_ERROR: u32 = 3;

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

impl Container {
    /// Records a change to the durable state and replies once it is stored.
    pub(super) fn changed_and_reply(&mut self, cx: &mut Ctx<'_>, request: RequestId, reply: Reply) {
        self.changed_and_reply_then(cx, request, reply, false);
    }

    pub(super) fn changed_and_reply_then(
        &mut self,
        cx: &mut Ctx<'_>,
        request: RequestId,
        reply: Reply,
        expire_if_idle: bool,
    ) {
        let version = self.changed(cx);
        self.pause();
        self.durability.waiters.push(DurableWaiter {
            request,
            version,
            reply,
            expire_if_idle,
        });
        self.flush_durable_waiters(cx);
    }

    /// Bumps the version and makes sure a write of it is on its way.
    pub(crate) fn changed(&mut self, cx: &mut Ctx<'_>) -> u64 {
        self.durability.version += 1;
        self.persist_if_needed(cx);
        self.durability.version
    }

    pub(crate) fn persist_if_needed(&mut self, cx: &mut Ctx<'_>) {
        let d = &self.durability;
        if !self.phase.is_usable()
            || d.persisting
            || d.durable >= d.version
            || self
                .timers
                .get(Timer::PersistRetry)
                .is_some_and(|t| t > cx.now)
        {
            return;
        }
        self.durability.persisting = true;
        self.timers.clear(Timer::PersistRetry);
        let record = Box::new(self.record());
        let version = record.version;
        let kind = EffectKind::PersistRecord {
            handle: self.handle.to_string(),
            record,
        };
        self.emit(cx, kind, Task::Persist { version });
    }

    fn flush_durable_waiters(&mut self, cx: &mut Ctx<'_>) {
        let durable = self.durability.durable;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.durability.waiters)
            .into_iter()
            .partition(|w| w.version <= durable);
        self.durability.waiters = waiting;
        for w in ready {
            self.reply_paused(cx, w.request, Ok(w.reply));
            if w.expire_if_idle && self.pauses == 0 && self.grace_time == 0 {
                self.timers.set(Timer::Expiry, cx.now);
            }
        }
    }

    pub(super) fn persist_done(&mut self, cx: &mut Ctx<'_>, version: u64, outcome: Outcome) {
        self.durability.persisting = false;
        match outcome {
            Ok(_) => {
                self.durability.durable = self.durability.durable.max(version);
                self.durability.failures = 0;
                self.flush_durable_waiters(cx);
            }
            Err(e) => {
                self.durability.failures += 1;
                self.timers.set(
                    Timer::PersistRetry,
                    cx.now.plus(backoff(self.durability.failures)),
                );
                if self.durability.failures >= PERSIST_FAILURES_BEFORE_ERROR {
                    for w in std::mem::take(&mut self.durability.waiters) {
                        self.reply_paused(cx, w.request, Err(Error::NotDurable(e.clone())));
                    }
                }
            }
        }
        self.persist_if_needed(cx);
        self.advance_teardown(cx);
    }
}

//! A container's timers: the one table that both `Core::next_deadline` and `Core::fire_timers`
//! read, so that a tick fires every timer the deadline promised.

use super::{Container, Ctx, TeardownStep};
use crate::{Time, SECOND};
use std::collections::BTreeMap;

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

impl Container {
    /// Fires `timer` if it is still armed; it is disarmed before it acts, so it is not left due.
    pub(crate) fn fire(&mut self, cx: &mut Ctx<'_>, timer: Timer) {
        if !self.timers.is_set(timer) {
            return;
        }
        self.timers.clear(timer);
        match timer {
            Timer::PersistRetry => self.persist_if_needed(cx),
            Timer::Expiry => {
                if self.pauses == 0 && self.phase.is_usable() {
                    self.begin_teardown(cx, TeardownStep::ALL, None, None);
                }
            }
            Timer::TeardownRetry => self.advance_teardown(cx),
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

    /// A request that finishes at once still counts as activity: the countdown restarts.
    pub(crate) fn touch(&mut self, now: Time) {
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

/// Retry delay after `attempts` failures: 1 s, 2 s, 4 s ... capped at 64 s.
pub(crate) fn backoff(attempts: u32) -> u64 {
    SECOND << attempts.saturating_sub(1).min(6)
}

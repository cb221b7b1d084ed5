//! A fake process's state: the signal it was sent, its exit status, and waiting for them.

use crate::lock;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use trellis_core::api::{Signal, WindowSize};

/// A simulated process: its signal, its exit status, and whoever waits for them.
#[derive(Default)]
pub struct FakeProcess {
    state: Mutex<SimulatedState>,
    changed: Condvar,
}

#[derive(Default)]
pub(crate) struct SimulatedState {
    signal: Option<Signal>,
    status: Option<i32>,
    window: Option<WindowSize>,
}

impl FakeProcess {
    pub(crate) fn lock(&self) -> MutexGuard<'_, SimulatedState> {
        lock(&self.state)
    }

    pub(crate) fn deliver(&self, signal: Signal) {
        let mut state = self.lock();
        if state.status.is_none() && state.signal != Some(Signal::Kill) {
            state.signal = Some(signal);
        }
        self.changed.notify_all();
    }

    pub(crate) fn pending_signal(&self) -> Option<Signal> {
        self.lock().signal
    }

    pub(crate) fn finish(&self, code: i32) {
        self.lock().status = Some(code);
        self.changed.notify_all();
    }

    pub(crate) fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.status.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// Sleeps until `deadline` unless a signal comes first.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> Option<Signal> {
        let mut state = self.lock();
        loop {
            if let Some(signal) = state.signal {
                return Some(signal);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub(crate) fn set_window_size(&self, size: WindowSize) {
        self.lock().window = Some(size);
    }

    /// The last window size set, for tests of TTY resizing.
    pub fn window_size(&self) -> Option<WindowSize> {
        self.lock().window
    }
}

impl FakeProcess {
    /// Blocks until the process has exited; its exit status.
    pub fn wait(&self) -> i32 {
        let mut state = self.lock();
        loop {
            if let Some(code) = state.status {
                return code;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub(crate) fn signal_status(signal: Signal) -> i32 {
    match signal {
        Signal::Terminate => 128 + 15,
        Signal::Kill => 128 + 9,
    }
}

/// Why a program stopped early.
pub(crate) enum Interrupt {
    Signal(Signal),
    /// Its output's reader went away (SIGPIPE).
    BrokenPipe,
}

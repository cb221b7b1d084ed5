//! The core's driver: one task owns `trellis_core::Core`. Requests come in as commands over a
//! channel with a oneshot for the reply; effects run on blocking worker threads against the
//! host; their outcomes, the host's observations and timer ticks go back into the same loop.

use crate::processes::ProcessTable;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};
use trellis_core::effect::{EffectKind, Observation};
use trellis_core::{
    Command, Core, EffectError, EffectErrorKind, EffectId, Error, Input, LeaseId, Outcome, Output,
    Reply, RequestId, Time,
};
use trellis_os::{Host, SpawnRequest};

enum Message {
    Command {
        command: Command,
        reply: oneshot::Sender<Result<Reply, Error>>,
    },
    Outcome {
        effect: EffectId,
        outcome: Outcome,
    },
    Observed(Observation),
}

/// The request side of the core: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct CoreHandle {
    tx: mpsc::UnboundedSender<Message>,
}

/// The core's driver is gone (the server is shutting down).
pub fn unavailable() -> Error {
    Error::Host(EffectError::new(
        EffectErrorKind::Host,
        "the server is shutting down",
    ))
}

impl CoreHandle {
    pub async fn call(&self, command: Command) -> Result<Reply, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Command { command, reply })
            .map_err(|_| unavailable())?;
        rx.await.map_err(|_| unavailable())?
    }

    /// The driver has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Ends a lease; fire and forget (usable from `Drop`).
    pub fn release(&self, lease: LeaseId) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.send(Message::Command {
            command: Command::Release { lease },
            reply,
        });
    }

    pub fn lease_guard(&self, lease: LeaseId) -> LeaseGuard {
        LeaseGuard {
            core: self.clone(),
            lease: Some(lease),
        }
    }

    fn observe(&self, observation: Observation) {
        let _ = self.tx.send(Message::Observed(observation));
    }
}

/// Releases its lease when dropped: the container's grace timer may run again.
pub struct LeaseGuard {
    core: CoreHandle,
    lease: Option<LeaseId>,
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.core.release(lease);
        }
    }
}

/// Wall-clock nanoseconds: records keep creation times across restarts.
pub fn now() -> Time {
    Time(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    )
}

/// How many containers' processes are taken over at once at start.
const ADOPT_WORKERS: usize = 16;

pub struct Driver {
    core: Core,
    host: Arc<dyn Host>,
    processes: Arc<ProcessTable>,
    rx: mpsc::UnboundedReceiver<Message>,
    handle: CoreHandle,
    waiting: HashMap<RequestId, oneshot::Sender<Result<Reply, Error>>>,
    next_request: u64,
}

impl Driver {
    /// Rebuilds the core from the host's records, reconciles it with what the host has, and
    /// returns the driver (not yet running) and its handle.
    pub fn start(
        config: trellis_core::Config,
        host: Arc<dyn Host>,
        processes: Arc<ProcessTable>,
    ) -> Result<(Driver, CoreHandle), trellis_os::HostError> {
        let records = host.load_records()?;
        let observed = host.observe()?;
        info!(
            records = records.len(),
            found = observed.containers.len(),
            "restoring containers"
        );
        // Containers whose init runs, with the processes the core is told are running.
        let running: Vec<(String, BTreeSet<String>)> = observed
            .containers
            .iter()
            .filter(|(_, c)| c.init)
            .map(|(handle, c)| (handle.clone(), c.processes.iter().cloned().collect()))
            .collect();
        let mut core = Core::restore(config, now(), records);
        let outputs = core.step(now(), Input::Reconcile(observed));
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = CoreHandle { tx };
        let mut driver = Driver {
            core,
            host,
            processes,
            rx,
            handle: handle.clone(),
            waiting: HashMap::new(),
            next_request: 1,
        };
        driver.dispatch(outputs);
        driver.adopt_processes(&running);
        let sink = handle.clone();
        driver
            .host
            .watch_events(Box::new(move |observation| sink.observe(observation)));
        Ok((driver, handle))
    }

    /// Takes over the processes the host still keeps for these containers (started by an
    /// earlier server): their output, their exit, attaching to them by id.
    fn adopt_processes(&self, containers: &[(String, BTreeSet<String>)]) {
        // Each container's init answers over its own socket: ask several at once, so that a
        // thousand containers do not make a thousand round trips in a row before serving.
        let (host, processes, core) = (&*self.host, &self.processes, &self.handle);
        let adopted: usize = trellis_os::linux::parallel::map(containers, ADOPT_WORKERS, |c| {
            adopt_processes_of(host, processes, core, &c.0, &c.1)
        })
        .into_iter()
        .sum();
        if adopted > 0 {
            info!(
                processes = adopted,
                "re-attached processes kept by containers"
            );
        }
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        loop {
            // Every step fires all timers due by its time, so the next deadline is always later
            // than the last step: this loop cannot spin on one.
            let sleep_for = self
                .core
                .next_deadline()
                .map(|deadline| Duration::from_nanos(deadline.0.saturating_sub(now().0)));
            let message = match sleep_for {
                Some(wait) => {
                    tokio::select! {
                        m = self.rx.recv() => m,
                        _ = tokio::time::sleep_until((Instant::now() + wait).into()) => {
                            let outputs = self.core.step(now(), Input::Tick);
                            self.dispatch(outputs);
                            continue;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            let Some(message) = message else {
                return;
            };
            let input = match message {
                Message::Command { command, reply } => {
                    let request = RequestId(self.next_request);
                    self.next_request += 1;
                    self.waiting.insert(request, reply);
                    Input::Command { request, command }
                }
                Message::Outcome { effect, outcome } => Input::Outcome { effect, outcome },
                Message::Observed(observation) => Input::Observed(observation),
            };
            let outputs = self.core.step(now(), input);
            self.dispatch(outputs);
        }
    }

    fn dispatch(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Reply { request, result } => self.reply(request, result),
                Output::Effect(effect) => self.execute(effect.id, effect.kind),
            }
        }
    }

    fn reply(&mut self, request: RequestId, result: Result<Reply, Error>) {
        let Some(reply) = self.waiting.remove(&request) else {
            return;
        };
        if let Err(Ok(unclaimed)) = reply.send(result) {
            // The caller went away: a hold it was given must not pause the container forever.
            let lease = match unclaimed {
                Reply::ProcessStarted { lease, .. } | Reply::Leased(lease) => Some(lease),
                _ => None,
            };
            if let Some(lease) = lease {
                debug!(?lease, "caller gone; releasing its lease");
                self.handle.release(lease);
            }
        }
    }

    fn execute(&self, id: EffectId, kind: EffectKind) {
        let host = self.host.clone();
        let handle = self.handle.clone();
        let processes = self.processes.clone();
        debug!(effect = %id, kind = kind.name(), handle = kind.handle().unwrap_or(""), "effect");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let outcome = match &kind {
                EffectKind::SpawnProcess {
                    handle: container,
                    process_id,
                    spec,
                    env,
                } => spawn(
                    &*host, &processes, &handle, container, process_id, spec, env,
                ),
                other => {
                    let outcome = host.execute(other);
                    if let (EffectKind::DeleteRecord { handle: container }, Ok(_)) =
                        (other, &outcome)
                    {
                        processes.forget_container(container);
                    }
                    outcome
                }
            };
            debug!(effect = %id, kind = kind.name(), handle = kind.handle().unwrap_or(""), us = started.elapsed().as_micros() as u64, "effect done");
            if let Err(e) = &outcome {
                warn!(effect = %id, kind = kind.name(), handle = kind.handle().unwrap_or(""), error = %e, "effect failed");
            }
            let _ = handle.tx.send(Message::Outcome {
                effect: id,
                outcome,
            });
        });
    }
}

fn spawn(
    host: &dyn Host,
    processes: &Arc<ProcessTable>,
    core: &CoreHandle,
    container: &str,
    process_id: &str,
    spec: &trellis_core::api::ProcessSpec,
    env: &[String],
) -> Outcome {
    let io = host
        .spawn_process(SpawnRequest {
            handle: container,
            process_id,
            spec,
            env,
        })
        .map_err(EffectError::from)?;
    let exited = {
        let core = core.clone();
        let handle = container.to_string();
        let process_id = process_id.to_string();
        move || {
            debug!(handle, process_id, "process exited");
            core.observe(Observation::ProcessExited { handle, process_id });
        }
    };
    processes
        .register(container, process_id, io, exited)
        .map(|_| trellis_core::EffectOutput::Done)
        .map_err(|e| {
            error!(handle = container, process_id, error = %e, "could not serve the process's streams");
            EffectError::new(
                EffectErrorKind::Host,
                format!("serving the process's streams: {e}"),
            )
        })
}

/// Takes over one container's processes; returns how many.
fn adopt_processes_of(
    host: &dyn Host,
    processes: &Arc<ProcessTable>,
    core: &CoreHandle,
    container: &str,
    observed_running: &BTreeSet<String>,
) -> usize {
    let states = match host.processes(container) {
        Ok(states) => states,
        Err(e) => {
            warn!(handle = %container, error = %e, "listing the container's processes failed");
            return 0;
        }
    };
    let mut adopted = 0;
    for state in states {
        let io = match host.attach_process(container, &state.id) {
            Ok(io) => io,
            Err(e) => {
                warn!(handle = %container, process_id = %state.id, error = %e, "re-attaching a process failed");
                continue;
            }
        };
        // Only the exit of a process the core took for running may reach it: one that had
        // already ended when the host was observed was never the core's, and its id may be
        // in use again by the time this exit would arrive.
        let exited = {
            let core = core.clone();
            let handle = container.to_string();
            let process_id = state.id.clone();
            let known = observed_running.contains(&state.id);
            move || {
                if known {
                    core.observe(Observation::ProcessExited { handle, process_id })
                }
            }
        };
        match processes.register(container, &state.id, io, exited) {
            Ok(_) => adopted += 1,
            Err(e) => {
                warn!(handle = %container, process_id = %state.id, error = %e, "serving a re-attached process failed")
            }
        }
    }
    adopted
}

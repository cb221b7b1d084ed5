//! The outcomes of a container's effects, and what the host reports about it unasked.

use super::{Container, Ctx, Phase, Task};
use crate::api::{Metrics, NetInResponse};
use crate::command::{Reply, RequestId};
use crate::effect::{EffectId, EffectOutput, Outcome};
use crate::error::Error;
use crate::outbox::CoreEvent;
use crate::record::OUT_OF_MEMORY_EVENT;

impl Container {
    /// An effect of this container's finished. One it no longer waits for changes nothing.
    pub(crate) fn outcome(&mut self, cx: &mut Ctx<'_>, effect: EffectId, outcome: Outcome) {
        let Some(task) = self.tasks.remove(&effect) else {
            return;
        };
        // A teardown may have been waiting for this effect. (A record write's outcome moves
        // the teardown on itself, once the write's waiters are answered.)
        if task.outside_saga() && !matches!(task, Task::Persist { .. }) {
            self.advance_teardown(cx);
        }
        match task {
            Task::CreateStep(step) => self.create_step_done(cx, step, outcome),
            Task::Teardown => self.teardown_step_done(cx, outcome),
            Task::Persist { version } => self.persist_done(cx, version, outcome),
            Task::Spawn {
                request,
                process_id,
            } => match outcome {
                Ok(_) => {
                    // The request's pause becomes the lease's: the process connection holds
                    // the container until the server releases it.
                    let lease = cx.leases.grant(&self.handle, self.incarnation);
                    cx.out
                        .reply(request, Ok(Reply::ProcessStarted { process_id, lease }));
                }
                Err(e) => {
                    self.processes.remove(&process_id);
                    self.reply_paused(cx, request, Err(Error::Host(e)));
                }
            },
            // A container destroyed meanwhile has no processes left to stop either.
            Task::Stop { request } => {
                self.finish_change(cx, request, outcome, Ok(Reply::Done), |c| {
                    c.phase = Phase::Stopped;
                    Reply::Done
                })
            }
            Task::MapPort { request, mapping } => {
                if outcome.is_err() || !self.phase.is_usable() {
                    // The host may still forward the port until the network is torn down, so
                    // it stays held until then.
                    self.held_ports.push(mapping.host_port);
                }
                let gone = Err(self.not_found());
                self.finish_change(cx, request, outcome, gone, |c| {
                    c.mapped_ports.push(mapping);
                    Reply::NetIn(NetInResponse {
                        host_port: mapping.host_port,
                        container_port: mapping.container_port,
                    })
                });
            }
            Task::NetOut { request, rules } => {
                let gone = Err(self.not_found());
                self.finish_change(cx, request, outcome, gone, |c| {
                    c.netout_rules.extend(rules);
                    Reply::Done
                });
            }
            Task::Metrics { request } => {
                let result = self.metrics_result(cx, outcome);
                self.reply_paused(cx, request, result.map(|m| Reply::Metrics(Box::new(m))));
            }
            Task::BulkMetrics { request, entry } => {
                let result = self.metrics_result(cx, outcome);
                cx.out.event(CoreEvent::BulkMetric {
                    request,
                    entry,
                    result: Box::new(result),
                });
            }
        }
    }

    /// Answers a request whose effect changes the durable state: a success is applied (if the
    /// container is still usable) and answered once stored; a container being destroyed
    /// meanwhile answers `gone`, a failure the host's error.
    fn finish_change(
        &mut self,
        cx: &mut Ctx<'_>,
        request: RequestId,
        outcome: Outcome,
        gone: Result<Reply, Error>,
        apply: impl FnOnce(&mut Container) -> Reply,
    ) {
        match outcome {
            Ok(_) if self.phase.is_usable() => {
                let reply = apply(self);
                // The reply follows once the change is durable, under a pause of its own.
                self.unpause(cx.now);
                self.changed_and_reply(cx, request, reply);
            }
            Ok(_) => self.reply_paused(cx, request, gone),
            Err(e) => self.reply_paused(cx, request, Err(Error::Host(e))),
        }
    }

    fn metrics_result(&self, cx: &Ctx<'_>, outcome: Outcome) -> Result<Metrics, Error> {
        match outcome {
            Ok(EffectOutput::Metrics(mut metrics)) => {
                if !self.phase.is_usable() {
                    return Err(self.not_found());
                }
                let age = cx.now.since(self.created_at);
                metrics.age = i64::try_from(age).unwrap_or(i64::MAX);
                metrics.cpu_entitlement =
                    crate::api::entitlement_over(metrics.cpu_entitlement, age);
                Ok(*metrics)
            }
            Ok(other) => Err(Error::unexpected_output("read-metrics", other)),
            Err(e) => Err(Error::Host(e)),
        }
    }

    pub(crate) fn process_exited(&mut self, process_id: &str) {
        self.processes.remove(process_id);
    }

    /// The kernel killed a process for want of memory: an event, recorded once.
    pub(crate) fn out_of_memory(&mut self, cx: &mut Ctx<'_>) {
        if self.events.iter().any(|e| e == OUT_OF_MEMORY_EVENT) {
            return;
        }
        self.events.push(OUT_OF_MEMORY_EVENT.to_string());
        if self.phase.is_usable() {
            self.changed(cx);
        }
    }
}

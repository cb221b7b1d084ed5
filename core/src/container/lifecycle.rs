//! The create and teardown sagas.
//!
//! Create runs its steps one at a time (rootfs, cgroup, network, init, record). A failed step
//! rolls back every step already done, and the failed step itself (its effect may have done part
//! of its work), before the request fails with the cause. Teardown (destroy, rollback, expiry,
//! reconciliation) runs its steps in a fixed order; a failed step is retried with backoff, so a
//! container is never left half-removed and never shown as healthy.

use super::timers::backoff;
use super::{Container, CreateStep, Ctx, Phase, Task, Teardown, TeardownStep, Timer};
use crate::api::{ContainerSpec, ImageRef};
use crate::command::{Reply, RequestId};
use crate::effect::{EffectKind, EffectOutput, InitConfig, NetworkConfig, Outcome, PluginUpConfig};
use crate::error::Error;
use crate::handle;
use crate::limits::{self, EnvOwner};
use crate::record::RecordState;

impl Container {
    /// The first create step. It gets the image with its credentials, from the request's own
    /// spec: nothing stores them.
    pub(crate) fn begin_create(&mut self, cx: &mut Ctx<'_>, requested: &ContainerSpec) {
        let kind = EffectKind::PrepareRootfs {
            handle: self.handle.to_string(),
            image: ImageRef {
                uri: requested.image_uri().to_string(),
                ..requested.image.clone()
            },
            privileged: requested.privileged,
            disk: requested.limits.disk_limits,
        };
        self.emit(cx, kind, Task::CreateStep(CreateStep::PrepareRootfs));
    }

    /// The image's env becomes part of every process's env and of the record: it is bounded
    /// like the container's own.
    fn check_image_env(&self) -> Result<(), Error> {
        limits::check_env(EnvOwner::Image, &self.image_env)?;
        limits::check_record(&self.record().with_room_for_events())?;
        Ok(())
    }

    pub(super) fn create_step_done(
        &mut self,
        cx: &mut Ctx<'_>,
        step: CreateStep,
        outcome: Outcome,
    ) {
        let Phase::Creating { request, done } = &mut self.phase else {
            return;
        };
        let request = *request;
        let output = match outcome {
            Ok(output) => output,
            Err(e) => {
                let undo: Vec<TeardownStep> =
                    done.iter().chain([&step]).map(|s| s.undo()).collect();
                return self.begin_teardown(cx, undo, None, Some((request, Error::Host(e))));
            }
        };
        done.push(step);
        match (step, output) {
            (CreateStep::PrepareRootfs, EffectOutput::Rootfs { image_env }) => {
                self.image_env = image_env;
                if let Err(cause) = self.check_image_env() {
                    let undo: Vec<TeardownStep> =
                        self.create_steps_done().map(|s| s.undo()).collect();
                    return self.begin_teardown(cx, undo, None, Some((request, cause)));
                }
            }
            // As guardian, the plugin's answer lands among the container's properties.
            (CreateStep::ConnectNetwork, EffectOutput::NetworkProperties(answer)) => {
                self.properties.extend(answer);
            }
            _ => {}
        }
        match step.next(cx.config.network_plugin) {
            Some(next) => self.emit_create_step(cx, next),
            None => {
                self.phase = Phase::Active;
                self.arm(cx.now);
                self.persist_if_needed(cx);
                cx.out.reply(
                    request,
                    Ok(Reply::Created {
                        handle: self.handle.to_string(),
                    }),
                );
            }
        }
    }

    fn create_steps_done(&self) -> impl Iterator<Item = CreateStep> + '_ {
        let done = match &self.phase {
            Phase::Creating { done, .. } => done.as_slice(),
            _ => &[],
        };
        done.iter().copied()
    }

    fn emit_create_step(&mut self, cx: &mut Ctx<'_>, step: CreateStep) {
        let handle = self.handle.to_string();
        let assignment = self
            .network
            .expect("a container being created has a network");
        let kind = match step {
            CreateStep::PrepareRootfs => unreachable!("emitted by begin_create"),
            CreateStep::CreateCgroup => EffectKind::CreateCgroup {
                handle,
                limits: self.spec.limits.clone(),
                privileged: self.spec.privileged,
            },
            CreateStep::SetupNetwork => EffectKind::SetupNetwork {
                handle,
                config: NetworkConfig {
                    assignment,
                    port_mappings: self.mapped_ports.clone(),
                    netout_rules: self.netout_rules.clone(),
                    bandwidth: self.spec.limits.bandwidth_limits,
                    privileged: self.spec.privileged,
                },
            },
            CreateStep::StartInit => EffectKind::StartInit {
                config: InitConfig {
                    hostname: handle::hostname(&handle),
                    privileged: self.spec.privileged,
                    bind_mounts: self.spec.bind_mounts.clone(),
                    container_ip: (!cx.config.network_plugin).then_some(assignment.container_ip),
                },
                handle,
            },
            CreateStep::ConnectNetwork => EffectKind::ConnectNetwork {
                handle,
                config: PluginUpConfig {
                    properties: self.properties.clone(),
                    netin: self.spec.netin.clone(),
                    netout_rules: self.netout_rules.clone(),
                },
            },
            CreateStep::Persist => {
                // The record is written as it will be once created: version 1, active.
                self.durability.version = 1;
                self.durability.durable = 1;
                let mut record = self.record();
                record.state = RecordState::Active;
                EffectKind::PersistRecord {
                    handle,
                    record: Box::new(record),
                }
            }
        };
        self.emit(cx, kind, Task::CreateStep(step));
    }

    /// Starts removing the container: it disappears from view at once.
    pub(crate) fn begin_teardown(
        &mut self,
        cx: &mut Ctx<'_>,
        steps: impl IntoIterator<Item = TeardownStep>,
        requester: Option<RequestId>,
        rollback_of: Option<(RequestId, Error)>,
    ) {
        self.timers.clear(Timer::Expiry);
        self.phase = Phase::Destroying(Teardown {
            requesters: requester.into_iter().collect(),
            steps: TeardownStep::ordered(steps),
            running: false,
            attempts: 0,
            rollback_of,
        });
        // Requests waiting for a change to become durable keep waiting: the teardown waits for
        // the write in flight, and if the server crashes before the container is gone, the
        // change must have been stored before anyone was told it was made.
        self.advance_teardown(cx);
    }

    /// Runs the next teardown step, unless one is running, a retry is pending, or other effects
    /// on the container are still in flight.
    pub(crate) fn advance_teardown(&mut self, cx: &mut Ctx<'_>) {
        let in_flight = self.effects_in_flight();
        let Phase::Destroying(t) = &mut self.phase else {
            return;
        };
        if t.running || self.timers.is_set(Timer::TeardownRetry) || in_flight > 0 {
            return;
        }
        let Some(step) = t.steps.front().copied() else {
            return self.finish_teardown(cx);
        };
        t.running = true;
        let handle = self.handle.to_string();
        let kind = match step {
            TeardownStep::KillContainer => EffectKind::KillContainer { handle },
            TeardownStep::TeardownNetwork => EffectKind::TeardownNetwork {
                handle,
                assignment: self.network,
            },
            TeardownStep::RemoveCgroup => EffectKind::RemoveCgroup { handle },
            TeardownStep::RemoveRootfs => EffectKind::RemoveRootfs { handle },
            TeardownStep::DeleteRecord => EffectKind::DeleteRecord { handle },
        };
        self.emit(cx, kind, Task::Teardown);
    }

    pub(super) fn teardown_step_done(&mut self, cx: &mut Ctx<'_>, outcome: Outcome) {
        let Phase::Destroying(t) = &mut self.phase else {
            return;
        };
        t.running = false;
        match outcome {
            Ok(_) => {
                t.steps.pop_front();
                t.attempts = 0;
                self.advance_teardown(cx);
            }
            Err(e) => {
                t.attempts += 1;
                let retry_at = cx.now.plus(backoff(t.attempts));
                // Callers hear about the failure now; the retries go on without them.
                let requesters = std::mem::take(&mut t.requesters);
                let rollback = t.rollback_of.take();
                self.timers.set(Timer::TeardownRetry, retry_at);
                for request in requesters {
                    cx.out.reply(request, Err(Error::Host(e.clone())));
                }
                if let Some((request, cause)) = rollback {
                    cx.out.reply(request, Err(cause));
                }
            }
        }
    }

    /// Every step is done: everyone waiting hears so, and the core removes the container and
    /// frees what it held.
    fn finish_teardown(&mut self, cx: &mut Ctx<'_>) {
        // The container is gone for good: changes still waiting to be stored no longer matter.
        for w in std::mem::take(&mut self.durability.waiters) {
            cx.out.reply(w.request, Ok(w.reply));
        }
        if let Phase::Destroying(t) = &mut self.phase {
            for request in std::mem::take(&mut t.requesters) {
                cx.out.reply(request, Ok(Reply::Done));
            }
            if let Some((request, cause)) = t.rollback_of.take() {
                cx.out.reply(request, Err(cause));
            }
        }
        self.torn_down(cx);
    }
}

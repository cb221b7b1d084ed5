//! The create and teardown sagas.
//!
//! Create runs its steps one at a time (rootfs, cgroup, network, init, record). A failed step
//! rolls back every step already done, and the failed step itself (its effect may have done part
//! of its work), before the request fails with the cause. Teardown (destroy, rollback, expiry,
//! reconciliation) runs its steps in a fixed order; a failed step is retried with backoff, so a
//! container is never left half-removed and never shown as healthy.

use crate::api::ContainerSpec;
use crate::command::{Reply, RequestId};
use crate::container::{
    Container, CreateStep, Durability, Phase, Teardown, TeardownStep, Timer, Timers,
};
use crate::effect::{
    storable_spec, EffectKind, EffectOutput, InitConfig, NetworkConfig, Outcome, PluginUpConfig,
};
use crate::error::Error;
use crate::handle::{self, Handle};
use crate::limits::{self, EnvOwner};
use crate::machine::{backoff, with_room_for_events, Core, Pending};
use crate::network;
use crate::ports::Port;
use crate::properties;
use std::collections::BTreeSet;

impl Core {
    pub(crate) fn create(&mut self, request: RequestId, spec: ContainerSpec) {
        match self.admit(request, &spec) {
            Err(e) => self.reply(request, Err(e)),
            Ok(container) => {
                let handle = container.handle.to_string();
                self.containers.insert(container.handle.clone(), container);
                // The first step gets the image with its credentials; nothing stores them.
                self.emit(
                    EffectKind::PrepareRootfs {
                        handle: handle.clone(),
                        image: crate::api::ImageRef {
                            uri: spec.image_uri().to_string(),
                            ..spec.image.clone()
                        },
                        privileged: spec.privileged,
                        disk: spec.limits.disk_limits,
                    },
                    Pending::CreateStep {
                        handle,
                        step: CreateStep::PrepareRootfs,
                    },
                );
            }
        }
    }

    /// Checks a create request and takes what it needs (handle, address, ports), or takes nothing.
    fn admit(&mut self, request: RequestId, spec: &ContainerSpec) -> Result<Container, Error> {
        let handle = if spec.handle.is_empty() {
            loop {
                let generated = self.rng.uuid();
                if !self.containers.contains_key(generated.as_str()) {
                    break generated;
                }
            }
        } else {
            spec.handle.clone()
        };
        let handle = Handle::new(handle.clone())
            .map_err(|reason| Error::InvalidHandle { handle, reason })?;
        if self.containers.contains_key(&handle) {
            return Err(Error::HandleInUse {
                handle: handle.into(),
            });
        }
        if spec.privileged && self.config.disable_privileged_containers {
            return Err(Error::PrivilegedContainersDisabled);
        }
        if self.containers.len() as u64 >= self.max_containers() {
            return Err(Error::MaxContainersReached);
        }
        let grace_time = match spec.grace_time {
            0 => self.config.default_grace_time,
            g => u64::try_from(g).map_err(|_| Error::NegativeGraceTime { nanos: g })?,
        };
        if let Some(key) = spec.properties.keys().find(|k| properties::is_reserved(k)) {
            return Err(Error::ReservedProperty { key: key.clone() });
        }
        limits::check_properties(spec.properties.iter())?;
        limits::check_env(EnvOwner::Container, &spec.env)?;
        limits::check_bind_mounts(spec.bind_mounts.len())?;
        limits::check_netout_rules(spec.netout_rules.len())?;
        if let Some(bad) = spec.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::InvalidSpec {
                reason: format!("environment entry '{bad}' is not KEY=VALUE"),
            });
        }
        for mount in &spec.bind_mounts {
            if mount.src_path.is_empty() || !mount.dst_path.starts_with('/') {
                return Err(Error::InvalidSpec {
                    reason: format!(
                        "bind mount '{}' -> '{}' needs a source and an absolute destination",
                        mount.src_path, mount.dst_path
                    ),
                });
            }
        }
        if let Some(reason) = spec.netout_rules.iter().find_map(|r| r.validate().err()) {
            return Err(Error::InvalidNetOutRule { reason });
        }
        let mut requested_ports = Vec::with_capacity(spec.netin.len());
        for netin in &spec.netin {
            match (
                Port::optional(netin.host_port),
                Port::optional(netin.container_port),
            ) {
                (Ok(host), Ok(container)) => requested_ports.push((host, container)),
                _ => {
                    return Err(Error::InvalidSpec {
                        reason: format!(
                            "port mapping {}:{} is out of range",
                            netin.host_port, netin.container_port
                        ),
                    })
                }
            }
        }

        let wanted = network::parse(&spec.network)?;
        let assignment = self.network.allocate(wanted)?;
        let mut mapped_ports = Vec::new();
        // With a network plugin the spec's NetIn goes to the plugin's `up`, which maps them.
        if self.config.network_plugin {
            requested_ports.clear();
        }
        for (host, container) in requested_ports {
            match self.ports.map(host, container) {
                Ok(mapping) => mapped_ports.push(mapping),
                Err(e) => {
                    self.release_admitted(assignment, &mapped_ports);
                    return Err(e.into());
                }
            }
        }

        let container = Container {
            handle: handle.clone(),
            incarnation: 0,
            spec: ContainerSpec {
                handle: handle.into(),
                ..storable_spec(spec)
            },
            properties: spec.properties.clone(),
            grace_time,
            network: Some(assignment),
            mapped_ports,
            held_ports: Vec::new(),
            netout_rules: spec.netout_rules.clone(),
            image_env: Vec::new(),
            created_at: self.now,
            events: Vec::new(),
            processes: BTreeSet::new(),
            phase: Phase::Creating {
                request,
                done: Vec::new(),
            },
            pauses: 0,
            timers: Timers::default(),
            in_flight: 0,
            durability: Durability::default(),
        };
        // The image's env is not known yet; it is measured when the rootfs answers.
        if let Err(e) = limits::check_record(&with_room_for_events(container.record())) {
            self.release_admitted(assignment, &container.mapped_ports);
            return Err(e.into());
        }
        self.next_incarnation += 1;
        Ok(Container {
            incarnation: self.next_incarnation,
            ..container
        })
    }

    /// Gives back what `admit` took for a create it then refused.
    fn release_admitted(
        &mut self,
        assignment: crate::network::NetworkAssignment,
        mapped_ports: &[crate::api::PortMapping],
    ) {
        for m in mapped_ports {
            self.ports.release(m.host_port);
        }
        self.network.release(assignment);
    }

    /// The image's env becomes part of every process's env and of the record: it is bounded
    /// like the container's own.
    fn check_image_env(container: &Container) -> Result<(), Error> {
        limits::check_env(EnvOwner::Image, &container.image_env)?;
        limits::check_record(&with_room_for_events(container.record()))?;
        Ok(())
    }

    pub(crate) fn create_step_done(&mut self, handle: &str, step: CreateStep, outcome: Outcome) {
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        let Phase::Creating { request, done } = &mut c.phase else {
            return;
        };
        let request = *request;
        match outcome {
            Err(e) => {
                let undo: Vec<TeardownStep> =
                    done.iter().chain([&step]).map(|s| s.undo()).collect();
                self.begin_teardown(handle, undo, None, Some((request, Error::Host(e))));
            }
            Ok(output) => {
                done.push(step);
                match (step, output) {
                    (CreateStep::PrepareRootfs, EffectOutput::Rootfs { image_env }) => {
                        c.image_env = image_env;
                        if let Err(cause) = Self::check_image_env(c) {
                            let Phase::Creating { done, .. } = &c.phase else {
                                unreachable!("checked above")
                            };
                            let undo: Vec<TeardownStep> = done.iter().map(|s| s.undo()).collect();
                            return self.begin_teardown(handle, undo, None, Some((request, cause)));
                        }
                    }
                    // As guardian, the plugin's answer lands among the container's properties.
                    (CreateStep::ConnectNetwork, EffectOutput::NetworkProperties(answer)) => {
                        c.properties.extend(answer);
                    }
                    _ => {}
                }
                match step.next(self.config.network_plugin) {
                    Some(next) => self.emit_create_step(handle, next),
                    None => {
                        let now = self.now;
                        c.phase = Phase::Active;
                        c.arm(now);
                        self.persist_if_needed(handle);
                        self.reply(
                            request,
                            Ok(Reply::Created {
                                handle: handle.to_string(),
                            }),
                        );
                    }
                }
            }
        }
    }

    fn emit_create_step(&mut self, handle: &str, step: CreateStep) {
        let c = self.containers.get_mut(handle).expect("caller checked");
        let handle_owned = handle.to_string();
        let assignment = c.network.expect("a container being created has a network");
        let kind = match step {
            CreateStep::PrepareRootfs => unreachable!("emitted by create"),
            CreateStep::CreateCgroup => EffectKind::CreateCgroup {
                handle: handle_owned.clone(),
                limits: c.spec.limits.clone(),
                privileged: c.spec.privileged,
            },
            CreateStep::SetupNetwork => EffectKind::SetupNetwork {
                handle: handle_owned.clone(),
                config: NetworkConfig {
                    assignment,
                    port_mappings: c.mapped_ports.clone(),
                    netout_rules: c.netout_rules.clone(),
                    bandwidth: c.spec.limits.bandwidth_limits,
                    privileged: c.spec.privileged,
                },
            },
            CreateStep::StartInit => EffectKind::StartInit {
                handle: handle_owned.clone(),
                config: InitConfig {
                    hostname: handle::hostname(handle),
                    privileged: c.spec.privileged,
                    bind_mounts: c.spec.bind_mounts.clone(),
                    container_ip: (!self.config.network_plugin).then_some(assignment.container_ip),
                },
            },
            CreateStep::ConnectNetwork => EffectKind::ConnectNetwork {
                handle: handle_owned.clone(),
                config: PluginUpConfig {
                    properties: c.properties.clone(),
                    netin: c.spec.netin.clone(),
                    netout_rules: c.netout_rules.clone(),
                },
            },
            CreateStep::Persist => {
                // The record is written as it will be once created: version 1, active.
                c.durability.version = 1;
                c.durability.durable = 1;
                let mut record = c.record();
                record.state = crate::record::RecordState::Active;
                EffectKind::PersistRecord {
                    handle: handle_owned.clone(),
                    record: Box::new(record),
                }
            }
        };
        self.emit(
            kind,
            Pending::CreateStep {
                handle: handle_owned,
                step,
            },
        );
    }

    /// Starts removing `handle`: the container disappears from view at once.
    pub(crate) fn begin_teardown(
        &mut self,
        handle: &str,
        steps: impl IntoIterator<Item = TeardownStep>,
        requester: Option<RequestId>,
        rollback_of: Option<(RequestId, Error)>,
    ) {
        let c = self.containers.get_mut(handle).expect("caller checked");
        c.timers.clear(Timer::Expiry);
        c.phase = Phase::Destroying(Teardown {
            requesters: requester.into_iter().collect(),
            steps: TeardownStep::ordered(steps),
            running: false,
            attempts: 0,
            rollback_of,
        });
        // Requests waiting for a change to become durable keep waiting: the teardown waits for
        // the write in flight, and if the server crashes before the container is gone, the
        // change must have been stored before anyone was told it was made.
        self.advance_teardown(handle);
    }

    /// Runs the next teardown step, unless one is running, a retry is pending, or other effects
    /// on the container are still in flight.
    pub(crate) fn advance_teardown(&mut self, handle: &str) {
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        let in_flight = c.in_flight;
        let network = c.network;
        let Phase::Destroying(t) = &mut c.phase else {
            return;
        };
        if t.running || c.timers.is_set(Timer::TeardownRetry) || in_flight > 0 {
            return;
        }
        let Some(step) = t.steps.front().copied() else {
            return self.finish_teardown(handle);
        };
        t.running = true;
        let handle_owned = handle.to_string();
        let kind = match step {
            TeardownStep::KillContainer => EffectKind::KillContainer {
                handle: handle_owned.clone(),
            },
            TeardownStep::TeardownNetwork => EffectKind::TeardownNetwork {
                handle: handle_owned.clone(),
                assignment: network,
            },
            TeardownStep::RemoveCgroup => EffectKind::RemoveCgroup {
                handle: handle_owned.clone(),
            },
            TeardownStep::RemoveRootfs => EffectKind::RemoveRootfs {
                handle: handle_owned.clone(),
            },
            TeardownStep::DeleteRecord => EffectKind::DeleteRecord {
                handle: handle_owned.clone(),
            },
        };
        self.emit(
            kind,
            Pending::Teardown {
                handle: handle_owned,
            },
        );
    }

    pub(crate) fn teardown_step_done(&mut self, handle: &str, outcome: Outcome) {
        let now = self.now;
        let Some(c) = self.containers.get_mut(handle) else {
            return;
        };
        let Phase::Destroying(t) = &mut c.phase else {
            return;
        };
        t.running = false;
        match outcome {
            Ok(_) => {
                t.steps.pop_front();
                t.attempts = 0;
                self.advance_teardown(handle);
            }
            Err(e) => {
                t.attempts += 1;
                c.timers
                    .set(Timer::TeardownRetry, now.plus(backoff(t.attempts)));
                // Callers hear about the failure now; the retries go on without them.
                let requesters = std::mem::take(&mut t.requesters);
                let rollback = t.rollback_of.take();
                for request in requesters {
                    self.reply(request, Err(Error::Host(e.clone())));
                }
                if let Some((request, cause)) = rollback {
                    self.reply(request, Err(cause));
                }
            }
        }
    }

    fn finish_teardown(&mut self, handle: &str) {
        let c = self.containers.remove(handle).expect("caller checked");
        if let Some(assignment) = c.network {
            if !self.config.bugs.leak_ip {
                self.network.release(assignment);
            }
        }
        for port in c
            .mapped_ports
            .iter()
            .map(|m| m.host_port)
            .chain(c.held_ports.iter().copied())
        {
            self.ports.release(port);
        }
        // The container is gone for good: changes still waiting to be stored no longer matter.
        for w in c.durability.waiters {
            self.reply(w.request, Ok(w.reply));
        }
        let Phase::Destroying(t) = c.phase else {
            unreachable!("finishing a teardown")
        };
        for request in t.requesters {
            self.reply(request, Ok(Reply::Done));
        }
        if let Some((request, cause)) = t.rollback_of {
            self.reply(request, Err(cause));
        }
    }
}

//! The commands a usable container serves. Each either answers at once (which restarts the
//! grace countdown) or sends an effect out under a pause of the grace timer, answered when
//! the outcome comes back (see `outcome`).

use super::{Container, Ctx, Phase, Task, TeardownStep, Timer};
use crate::api::{NetOutRule, PortMapping, ProcessSpec};
use crate::command::{Command, Reply, RequestId};
use crate::effect::EffectKind;
use crate::error::Error;
use crate::handle;
use crate::limits::{self, EnvOwner, LimitExceeded};
use crate::ports::Port;
use crate::properties;
use crate::record::{self, ContainerRecord};

impl Container {
    /// Serves a command on this container, which is usable (neither mid-create nor
    /// mid-destroy).
    pub(crate) fn command(&mut self, cx: &mut Ctx<'_>, request: RequestId, command: Command) {
        let result = match command {
            Command::Info { .. } => Ok(Reply::Info(self.info(cx.config))),
            Command::Properties { .. } => Ok(Reply::Properties(self.all_properties(cx.config))),
            Command::Property { key, .. } => self
                .all_properties(cx.config)
                .remove(&key)
                .map(Reply::Property)
                .ok_or(Error::PropertyNotFound { key }),
            Command::CurrentLimits { .. } => Ok(Reply::Limits(Box::new(self.spec.limits.clone()))),
            Command::SetProperty { key, value, .. } => {
                return self.change_property(cx, request, key, Some(value));
            }
            Command::RemoveProperty { key, .. } => {
                return self.change_property(cx, request, key, None)
            }
            Command::SetGraceTime { grace_time, .. } => {
                return self.set_grace_time(cx, request, grace_time)
            }
            Command::Stop { kill, .. } => {
                let kind = EffectKind::StopProcesses {
                    handle: self.handle.to_string(),
                    kill,
                };
                return self.emit_for_request(cx, kind, Task::Stop { request });
            }
            Command::Metrics { .. } => {
                let kind = EffectKind::ReadMetrics {
                    handle: self.handle.to_string(),
                };
                return self.emit_for_request(cx, kind, Task::Metrics { request });
            }
            Command::NetIn {
                host_port,
                container_port,
                ..
            } => return self.net_in(cx, request, host_port, container_port),
            Command::NetOut { rules, .. } => return self.net_out(cx, request, rules),
            Command::Run { spec, .. } => return self.run(cx, request, *spec),
            Command::Acquire { .. } => {
                self.pause();
                Ok(Reply::Leased(
                    cx.leases.grant(&self.handle, self.incarnation),
                ))
            }
            other => unreachable!("not a container command: {other:?}"),
        };
        self.reply_now(cx, request, result);
    }

    /// Destroy: starts the teardown, or joins one waiting to retry. Unlike the other commands
    /// it reaches a container in any phase.
    pub(crate) fn destroy(&mut self, cx: &mut Ctx<'_>, request: RequestId) {
        match &mut self.phase {
            Phase::Creating { .. } => cx.out.reply(
                request,
                Err(Error::StillBeingCreated {
                    handle: self.handle.to_string(),
                }),
            ),
            Phase::Destroying(teardown) => {
                // A teardown waiting to retry is retried now, for this caller; one that is
                // running is not started twice.
                if teardown.running || !self.timers.is_set(Timer::TeardownRetry) {
                    cx.out.reply(request, Err(Error::AlreadyBeingDestroyed));
                } else {
                    teardown.requesters.push(request);
                    self.timers.clear(Timer::TeardownRetry);
                    self.advance_teardown(cx);
                }
            }
            Phase::Active | Phase::Stopped => {
                self.begin_teardown(cx, TeardownStep::ALL, Some(request), None)
            }
        }
    }

    /// Reads the metrics of this container, or of one of its peas, for one entry of a bulk
    /// request.
    pub(crate) fn read_bulk_metrics(
        &mut self,
        cx: &mut Ctx<'_>,
        request: RequestId,
        entry: String,
        pea: Option<String>,
    ) {
        let handle = self.handle.to_string();
        let kind = match pea {
            None => EffectKind::ReadMetrics { handle },
            Some(process_id) => EffectKind::ReadPeaMetrics { handle, process_id },
        };
        self.emit(cx, kind, Task::BulkMetrics { request, entry });
    }

    fn change_property(
        &mut self,
        cx: &mut Ctx<'_>,
        request: RequestId,
        key: String,
        value: Option<String>,
    ) {
        if properties::is_reserved(&key) {
            return self.reply_now(cx, request, Err(Error::ReservedProperty { key }));
        }
        match value {
            Some(value) => {
                if let Err(e) = self.check_new_property(&key, &value) {
                    return self.reply_now(cx, request, Err(e.into()));
                }
                self.properties.insert(key, value);
            }
            // Removing a missing key is not an error (guardian does not report one).
            None => {
                if self.properties.remove(&key).is_none() {
                    return self.reply_now(cx, request, Ok(Reply::Done));
                }
            }
        }
        self.changed_and_reply(cx, request, Reply::Done);
    }

    /// Whether the container may take the property `key` = `value` (a new key or a new value).
    fn check_new_property(&self, key: &str, value: &str) -> Result<(), LimitExceeded> {
        limits::check_property(key, value)?;
        if !self.properties.contains_key(key) && self.properties.len() >= limits::MAX_PROPERTIES {
            return Err(LimitExceeded::PropertyCount);
        }
        self.check_record_growth(|record| {
            record.properties.insert(key.to_string(), value.to_string());
        })
    }

    /// Refuses a change that would take the record over [`limits::MAX_RECORD_BYTES`],
    /// measured as the record will be with the change and everything in flight in it, and with
    /// room for what the host may yet add ([`ContainerRecord::with_room_for_events`]). A record already over
    /// the bound (stored before the bound existed) may still shrink.
    fn check_record_growth(
        &self,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<(), LimitExceeded> {
        let (rules, mappings) = self.in_flight_additions();
        let current = || {
            let mut record = self.record().with_room_for_events();
            record.netout_rules.extend(rules.iter().cloned());
            record.mapped_ports.extend(mappings.iter().copied());
            record
        };
        let mut changed = current();
        change(&mut changed);
        match limits::check_record(&changed) {
            Ok(_) => Ok(()),
            Err(LimitExceeded::RecordSize { bytes })
                if bytes <= record::encoded_len(&current()) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn set_grace_time(&mut self, cx: &mut Ctx<'_>, request: RequestId, grace_time: i64) {
        let Ok(grace_time) = u64::try_from(grace_time) else {
            return self.reply_now(
                cx,
                request,
                Err(Error::NegativeGraceTime { nanos: grace_time }),
            );
        };
        self.grace_time = grace_time;
        self.changed_and_reply_then(cx, request, Reply::Done, grace_time == 0);
    }

    fn net_in(
        &mut self,
        cx: &mut Ctx<'_>,
        request: RequestId,
        host_port: u32,
        container_port: u32,
    ) {
        let mapped = (|| {
            let container_port = Port::optional(container_port)?;
            // Measured with the widest ports: which one the pool hands out is not known yet.
            self.check_record_growth(|record| {
                record.mapped_ports.push(PortMapping {
                    host_port: u32::MAX,
                    container_port: u32::MAX,
                })
            })?;
            Ok(cx.ports.map(Port::optional(host_port)?, container_port)?)
        })();
        match mapped {
            Err(e) => self.reply_now(cx, request, Err(e)),
            Ok(mapping) => {
                let kind = EffectKind::MapPort {
                    handle: self.handle.to_string(),
                    assignment: self.network.expect("usable containers have a network"),
                    mapping,
                };
                self.emit_for_request(cx, kind, Task::MapPort { request, mapping });
            }
        }
    }

    fn net_out(&mut self, cx: &mut Ctx<'_>, request: RequestId, rules: Vec<NetOutRule>) {
        if let Some(reason) = rules.iter().find_map(|r| r.validate().err()) {
            return self.reply_now(cx, request, Err(Error::InvalidNetOutRule { reason }));
        }
        if rules.is_empty() {
            return self.reply_now(cx, request, Ok(Reply::Done));
        }
        if let Err(e) = self.check_new_netout_rules(&rules) {
            return self.reply_now(cx, request, Err(e.into()));
        }
        let kind = EffectKind::AddNetOutRules {
            handle: self.handle.to_string(),
            assignment: self.network.expect("usable containers have a network"),
            rules: rules.clone(),
        };
        self.emit_for_request(cx, kind, Task::NetOut { request, rules });
    }

    /// Whether the container may take `rules` on top of those it has and those in flight.
    fn check_new_netout_rules(&self, rules: &[NetOutRule]) -> Result<(), LimitExceeded> {
        let (in_flight, _) = self.in_flight_additions();
        limits::check_netout_rules(self.netout_rules.len() + in_flight.len() + rules.len())?;
        self.check_record_growth(|record| record.netout_rules.extend(rules.iter().cloned()))
    }

    fn run(&mut self, cx: &mut Ctx<'_>, request: RequestId, spec: ProcessSpec) {
        // A stopped container still runs new processes, as with gdn: Stop only ends the
        // processes that were running.
        let asked = spec.validate().and_then(|id| match id {
            Some(id) if self.processes.contains(&id) => {
                Err(Error::ProcessIdInUse { process_id: id })
            }
            id => Ok(id),
        });
        let process_id = match asked {
            Err(e) => return self.reply_now(cx, request, Err(e)),
            Ok(Some(id)) => id,
            Ok(None) => loop {
                let id = cx.rng.uuid();
                if !self.processes.contains(&id) {
                    break id;
                }
            },
        };
        self.processes.insert(process_id.clone());
        let kind = EffectKind::SpawnProcess {
            handle: self.handle.to_string(),
            process_id: process_id.clone(),
            env: self
                .image_env
                .iter()
                .chain(&self.spec.env)
                .cloned()
                .collect(),
            spec: Box::new(spec),
        };
        self.emit_for_request(
            cx,
            kind,
            Task::Spawn {
                request,
                process_id,
            },
        );
    }
}

impl ProcessSpec {
    /// The checks a process spec passes on its own; answers the id it asks for, if it asks
    /// for one.
    fn validate(&self) -> Result<Option<String>, Error> {
        if self.path.is_empty() {
            return Err(Error::InvalidProcessSpec {
                reason: "no path to run".into(),
            });
        }
        if !self.bind_mounts.is_empty() && self.image.uri.is_empty() {
            return Err(Error::InvalidProcessSpec {
                reason: "bind mounts are only supported for processes with their own image".into(),
            });
        }
        limits::check_env(EnvOwner::Process, &self.env)?;
        limits::check_bind_mounts(self.bind_mounts.len())?;
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::InvalidProcessSpec {
                reason: format!("environment entry '{bad}' is not KEY=VALUE"),
            });
        }
        if self.id.is_empty() {
            return Ok(None);
        }
        handle::validate_process_id(&self.id).map_err(|reason| Error::InvalidProcessId {
            process_id: self.id.clone(),
            reason,
        })?;
        Ok(Some(self.id.clone()))
    }
}

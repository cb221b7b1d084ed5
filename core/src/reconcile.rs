//! Restart: rebuild the core from its records, then reconcile with what the host really has.
//!
//! - A recorded container whose pieces are all present keeps running; its grace timer starts a
//!   fresh countdown. Its processes outlived the server: the core takes their ids from what the
//!   host found running (their ids stay taken until each one's exit is observed); a process that
//!   ended while the server was down is not among them, so its id is free again. No lease and no
//!   request holds a container after a restart.
//! - A recorded container with a piece missing cannot work: it is torn down (every teardown
//!   effect tolerates absent pieces) and its address is released.
//! - Anything on the host that no record explains (a create cut short by the crash, a destroy
//!   that had deleted the record) is torn down.
//! - Allocations come from records, plus whatever leftovers still hold on the host until
//!   their teardown is done; an address a half-created container held is free again after.

use crate::container::{Container, Phase, TeardownStep};
use crate::effect::{ObservedContainer, ObservedHost};
use crate::handle::Handle;
use crate::machine::Core;
use crate::record::{ContainerRecord, RecordState};
use crate::{Config, Time};
use std::collections::BTreeSet;

impl Core {
    /// A core holding the given records, before reconciliation. A record that clashes with one
    /// already loaded (an address or port held twice) is loaded without its allocations and torn
    /// down at reconciliation.
    pub fn restore(config: Config, now: Time, records: Vec<ContainerRecord>) -> Core {
        let mut core = Core::new(config, now);
        for record in records {
            if core.containers.contains_key(record.handle.as_str()) {
                continue;
            }
            let network_ok = core.network.claim(record.network).is_ok();
            let mut ports_ok = network_ok;
            let mut claimed = Vec::new();
            if ports_ok {
                for m in &record.mapped_ports {
                    if core.ports.hold(m.host_port) {
                        claimed.push(m.host_port);
                    } else {
                        ports_ok = false;
                        break;
                    }
                }
            }
            if network_ok && !ports_ok {
                for p in claimed {
                    core.ports.release(p);
                }
                core.network.release(record.network);
            }
            let sound = network_ok && ports_ok;
            core.next_incarnation += 1;
            let phase = match record.state {
                RecordState::Active => Phase::Active,
                RecordState::Stopped => Phase::Stopped,
            };
            let handle = Handle::existing(record.handle.clone());
            let mut container = Container::new(
                handle,
                core.next_incarnation,
                record.spec,
                phase,
                record.created_at,
            );
            container.properties = record.properties;
            container.grace_time = record.grace_time;
            if sound {
                container.network = Some(record.network);
                container.mapped_ports = record.mapped_ports;
            }
            container.netout_rules = record.netout_rules;
            container.image_env = record.image_env;
            container.events = record.events;
            container.durability.version = record.version;
            container.durability.durable = record.version;
            core.containers.insert(container.handle.clone(), container);
        }
        core
    }

    pub(crate) fn reconcile(&mut self, host: ObservedHost) {
        let recorded: Vec<Handle> = self.containers.keys().cloned().collect();
        for handle in recorded {
            let observed = host
                .containers
                .get(handle.as_str())
                .cloned()
                .unwrap_or_default();
            let processes = self.bugs_aside(observed_processes(&observed));
            let (containers, mut cx) = self.split();
            let c = containers.get_mut(&handle).expect("listed above");
            // Only freshly restored containers are judged; anything else is already in motion.
            if !(c.phase.is_usable() && c.effects_in_flight() == 0 && c.pauses == 0) {
                continue;
            }
            // A port mapped just before the crash, whose answer was lost, is held so that it is
            // not handed to anyone else while the host forwards it here.
            for mapping in &observed.ports {
                if !c.mapped_ports.contains(mapping) && cx.ports.hold(mapping.host_port) {
                    c.held_ports.push(mapping.host_port);
                }
            }
            // The processes outlived the server: their ids stay taken until their exits are
            // observed, also in a container about to be torn down (its kill reports them).
            c.processes = processes;
            // A clashing record was loaded without its network.
            if c.network.is_some() && observed.complete() {
                c.arm(cx.now);
            } else {
                c.begin_teardown(&mut cx, TeardownStep::ALL, None, None);
            }
        }
        for (handle, observed) in host.containers {
            if self.containers.contains_key(handle.as_str()) || !observed.anything() {
                continue;
            }
            self.next_incarnation += 1;
            let mut container = leftover(handle.clone(), self.next_incarnation, self.now);
            container.processes = self.bugs_aside(observed_processes(&observed));
            // What the leftover holds on the host stays taken until its teardown is done.
            if let Some(assignment) = observed.network {
                if self.network.claim(assignment).is_ok() {
                    container.network = Some(assignment);
                }
            }
            for mapping in observed.ports {
                if self.ports.hold(mapping.host_port) {
                    container.held_ports.push(mapping.host_port);
                }
            }
            self.containers.insert(container.handle.clone(), container);
            self.with_container(&handle, |c, cx| {
                c.begin_teardown(cx, TeardownStep::ALL, None, None)
            });
        }
    }
}

/// The processes a container's init still runs (none run without it: they die with it).
fn observed_processes(observed: &ObservedContainer) -> BTreeSet<String> {
    if observed.init {
        observed.processes.iter().cloned().collect()
    } else {
        BTreeSet::new()
    }
}

impl Core {
    /// `--inject-bug forget-processes`: a restart forgets the processes it found.
    fn bugs_aside(&self, processes: BTreeSet<String>) -> BTreeSet<String> {
        if self.config.bugs.forget_processes {
            BTreeSet::new()
        } else {
            processes
        }
    }
}

/// A container known only from what it left on the host.
fn leftover(handle: String, incarnation: u64, now: Time) -> Container {
    let spec = crate::api::ContainerSpec {
        handle: handle.clone(),
        ..Default::default()
    };
    Container::new(
        Handle::existing(handle),
        incarnation,
        spec,
        Phase::Active,
        now,
    )
}

//! An in-memory host: what exists per container, the depot of records, and the ports and
//! addresses in use. It carries out effects like the Linux host would, including their failure
//! modes (a failure may come before or after the work), and it notices effects that arrive in
//! an order a real host could not carry out; those are reported as violations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use trellis_core::api::Metrics;
use trellis_core::effect::{
    EffectError, EffectErrorKind, EffectKind, EffectOutput, ObservedContainer, ObservedHost,
    Outcome,
};
use trellis_core::network::NetworkAssignment;
use trellis_core::record::ContainerRecord;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeContainer {
    pub rootfs: bool,
    pub cgroup: bool,
    pub network: Option<NetworkAssignment>,
    pub init: bool,
    pub processes: BTreeSet<String>,
    /// Host port -> container port.
    pub ports: BTreeMap<u32, u32>,
    pub netout_rules: usize,
}

impl FakeContainer {
    pub fn is_empty(&self) -> bool {
        !self.rootfs
            && !self.cgroup
            && self.network.is_none()
            && !self.init
            && self.processes.is_empty()
    }
}

/// How an effect should fail, decided by the caller (the simulator's seeded choice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Fail without doing anything.
    Before,
    /// Do the work, then report failure (the answer was lost, or a later part failed).
    After,
}

#[derive(Debug, Default)]
pub struct FakeOs {
    pub containers: BTreeMap<String, FakeContainer>,
    /// The depot: records that survive a crash.
    pub records: BTreeMap<String, ContainerRecord>,
    /// Host ports mapped, and by whom.
    pub port_owners: BTreeMap<u32, String>,
    /// Effects that a real host could not have carried out in the state it was in: evidence
    /// that the core ordered its effects wrongly.
    pub violations: Vec<String>,
    /// Processes that ended because of an effect (kill, stop), to be reported as observations.
    pub ended: Vec<(String, String)>,
}

fn host_error(message: impl Into<String>) -> EffectError {
    EffectError::new(EffectErrorKind::Host, message)
}

impl FakeOs {
    pub fn new() -> FakeOs {
        FakeOs::default()
    }

    /// Carries out `effect` with the given fault.
    pub fn apply(&mut self, effect: &EffectKind, fault: Fault) -> Outcome {
        // A spawn either starts the process or fails cleanly; it never leaves one running that
        // it reported as failed.
        let fault = match (effect, fault) {
            (EffectKind::SpawnProcess { .. }, Fault::After) => Fault::Before,
            (_, fault) => fault,
        };
        if fault == Fault::Before {
            return Err(host_error(format!(
                "injected failure before {}",
                effect.name()
            )));
        }
        let result = self.carry_out(effect);
        match (fault, result) {
            (Fault::After, Ok(_)) => Err(host_error(format!(
                "injected failure after {}",
                effect.name()
            ))),
            (_, result) => result,
        }
    }

    fn violation(&mut self, what: String) -> Outcome {
        self.violations.push(what.clone());
        Err(host_error(what))
    }

    fn carry_out(&mut self, effect: &EffectKind) -> Outcome {
        use EffectKind::*;
        let handle = effect.handle().unwrap_or_default().to_string();
        match effect {
            PrepareRootfs { image, .. } => {
                if image.uri == "/missing" {
                    return Err(EffectError::new(
                        EffectErrorKind::InvalidRequest,
                        "no such rootfs: /missing",
                    ));
                }
                self.containers.entry(handle).or_default().rootfs = true;
                let image_env = if image.uri.is_empty() {
                    vec![]
                } else {
                    vec![format!("IMAGE={}", image.uri)]
                };
                Ok(EffectOutput::Rootfs { image_env })
            }
            CreateCgroup { .. } => {
                self.containers.entry(handle).or_default().cgroup = true;
                Ok(EffectOutput::Done)
            }
            SetupNetwork { config, .. } => {
                let ip = config.assignment.container_ip;
                if let Some(other) = self.ip_owner(ip).filter(|o| *o != handle) {
                    return self.violation(format!(
                        "setup-network for {handle}: {ip} is already configured for {other}"
                    ));
                }
                for m in &config.port_mappings {
                    if let Some(owner) =
                        self.port_owners.get(&m.host_port).filter(|o| **o != handle)
                    {
                        let owner = owner.clone();
                        return self.violation(format!(
                            "setup-network for {handle}: port {} belongs to {owner}",
                            m.host_port
                        ));
                    }
                }
                let c = self.containers.entry(handle.clone()).or_default();
                c.network = Some(config.assignment);
                c.netout_rules = config.netout_rules.len();
                for m in &config.port_mappings {
                    c.ports.insert(m.host_port, m.container_port);
                    self.port_owners.insert(m.host_port, handle.clone());
                }
                Ok(EffectOutput::Done)
            }
            StartInit { .. } => {
                let c = self.containers.entry(handle.clone()).or_default();
                if !(c.rootfs && c.cgroup && c.network.is_some()) {
                    return self.violation(format!(
                        "start-init for {handle} before its rootfs, cgroup and network"
                    ));
                }
                c.init = true;
                Ok(EffectOutput::Done)
            }
            PersistRecord { record, .. } => {
                let newer = self
                    .records
                    .get(&handle)
                    .is_none_or(|r| r.version <= record.version);
                if newer {
                    self.records.insert(handle, (**record).clone());
                }
                Ok(EffectOutput::Done)
            }
            KillContainer { .. } => {
                if let Some(c) = self.containers.get_mut(&handle) {
                    c.init = false;
                    for p in std::mem::take(&mut c.processes) {
                        self.ended.push((handle.clone(), p));
                    }
                }
                self.forget_if_empty(&handle);
                Ok(EffectOutput::Done)
            }
            TeardownNetwork { .. } => {
                if let Some(c) = self.containers.get_mut(&handle) {
                    c.network = None;
                    c.netout_rules = 0;
                    for (p, _) in std::mem::take(&mut c.ports) {
                        self.port_owners.remove(&p);
                    }
                }
                self.forget_if_empty(&handle);
                Ok(EffectOutput::Done)
            }
            RemoveCgroup { .. } => {
                if self
                    .containers
                    .get(&handle)
                    .is_some_and(|c| c.init || !c.processes.is_empty())
                {
                    return self.violation(format!(
                        "remove-cgroup for {handle} while its processes run"
                    ));
                }
                if let Some(c) = self.containers.get_mut(&handle) {
                    c.cgroup = false;
                }
                self.forget_if_empty(&handle);
                Ok(EffectOutput::Done)
            }
            RemoveRootfs { .. } => {
                if self.containers.get(&handle).is_some_and(|c| c.init) {
                    return self
                        .violation(format!("remove-rootfs for {handle} while its init runs"));
                }
                if let Some(c) = self.containers.get_mut(&handle) {
                    c.rootfs = false;
                }
                self.forget_if_empty(&handle);
                Ok(EffectOutput::Done)
            }
            DeleteRecord { .. } => {
                self.records.remove(&handle);
                Ok(EffectOutput::Done)
            }
            SpawnProcess {
                process_id, spec, ..
            } => {
                let Some(c) = self.containers.get_mut(&handle).filter(|c| c.init) else {
                    return Err(host_error(format!("container {handle} is not running")));
                };
                if spec.path == "missing-binary" {
                    return Err(EffectError::new(
                        EffectErrorKind::ExecutableNotFound,
                        "exec: \"missing-binary\": executable file not found in $PATH",
                    ));
                }
                if !c.processes.insert(process_id.clone()) {
                    return self.violation(format!(
                        "spawn-process for {handle}: process {process_id} already runs"
                    ));
                }
                Ok(EffectOutput::Done)
            }
            StopProcesses { .. } => {
                if let Some(c) = self.containers.get_mut(&handle) {
                    for p in std::mem::take(&mut c.processes) {
                        self.ended.push((handle.clone(), p));
                    }
                }
                Ok(EffectOutput::Done)
            }
            MapPort { mapping, .. } => {
                if self
                    .containers
                    .get(&handle)
                    .is_none_or(|c| c.network.is_none())
                {
                    return self.violation(format!("map-port for {handle} without a network"));
                }
                if let Some(owner) = self
                    .port_owners
                    .get(&mapping.host_port)
                    .filter(|o| **o != handle)
                {
                    let owner = owner.clone();
                    return self.violation(format!(
                        "map-port for {handle}: port {} belongs to {owner}",
                        mapping.host_port
                    ));
                }
                self.port_owners.insert(mapping.host_port, handle.clone());
                self.containers
                    .get_mut(&handle)
                    .expect("checked")
                    .ports
                    .insert(mapping.host_port, mapping.container_port);
                Ok(EffectOutput::Done)
            }
            AddNetOutRules { rules, .. } => {
                let Some(c) = self
                    .containers
                    .get_mut(&handle)
                    .filter(|c| c.network.is_some())
                else {
                    return self
                        .violation(format!("add-netout-rules for {handle} without a network"));
                };
                c.netout_rules += rules.len();
                Ok(EffectOutput::Done)
            }
            ReadMetrics { .. } => {
                let Some(c) = self.containers.get(&handle) else {
                    return Err(host_error(format!("no cgroup for {handle}")));
                };
                let mut metrics = Metrics::default();
                metrics.pid_stat.current = c.processes.len() as u64 + u64::from(c.init);
                Ok(EffectOutput::Metrics(Box::new(metrics)))
            }
            ReadCapacity => Ok(EffectOutput::Capacity {
                memory_in_bytes: 24 << 30,
                disk_in_bytes: 250 << 30,
                schedulable_disk_in_bytes: 250 << 30,
            }),
        }
    }

    fn forget_if_empty(&mut self, handle: &str) {
        if self
            .containers
            .get(handle)
            .is_some_and(FakeContainer::is_empty)
        {
            self.containers.remove(handle);
        }
    }

    fn ip_owner(&self, ip: Ipv4Addr) -> Option<String> {
        self.containers
            .iter()
            .find(|(_, c)| c.network.is_some_and(|n| n.container_ip == ip))
            .map(|(h, _)| h.clone())
    }

    /// A process ended on its own.
    pub fn end_process(&mut self, handle: &str, process_id: &str) -> bool {
        self.containers
            .get_mut(handle)
            .is_some_and(|c| c.processes.remove(process_id))
    }

    pub fn observe(&self) -> ObservedHost {
        ObservedHost {
            containers: self
                .containers
                .iter()
                .map(|(h, c)| {
                    (
                        h.clone(),
                        ObservedContainer {
                            rootfs: c.rootfs,
                            cgroup: c.cgroup,
                            network: c.network,
                            ports: c
                                .ports
                                .iter()
                                .map(|(h, c)| trellis_core::api::PortMapping {
                                    host_port: *h,
                                    container_port: *c,
                                })
                                .collect(),
                            init: c.init,
                            processes: c.processes.iter().cloned().collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn load_records(&self) -> Vec<ContainerRecord> {
        self.records.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_effects_are_violations() {
        let mut os = FakeOs::new();
        let init = EffectKind::StartInit {
            handle: "h".into(),
            config: trellis_core::effect::InitConfig {
                hostname: "h".into(),
                privileged: false,
                bind_mounts: vec![],
                container_ip: None,
            },
        };
        assert!(os.apply(&init, Fault::None).is_err());
        assert_eq!(os.violations.len(), 1);
    }

    #[test]
    fn fault_after_does_the_work() {
        let mut os = FakeOs::new();
        let cgroup = EffectKind::CreateCgroup {
            handle: "h".into(),
            limits: Default::default(),
            privileged: false,
        };
        assert!(os.apply(&cgroup, Fault::After).is_err());
        assert!(os.containers["h"].cgroup);
        assert!(os
            .apply(
                &EffectKind::RemoveCgroup { handle: "h".into() },
                Fault::None
            )
            .is_ok());
        assert!(os.containers.is_empty());
    }
}

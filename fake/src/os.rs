//! An in-memory host: what exists per container, the depot of records, and the ports and
//! addresses in use. It carries out effects like the Linux host would, including their failure
//! modes (a failure may come before or after the work), and it notices effects that a real
//! host could not carry out (in the order they came, with the names and sizes they have), or
//! that break the bounds the core promises; those are reported as violations.

use ipnetwork::Ipv4Network;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use trellis_core::api::Metrics;
use trellis_core::effect::{
    EffectError, EffectErrorKind, EffectKind, EffectOutput, ObservedContainer, ObservedHost,
    Outcome,
};
use trellis_core::limits;
use trellis_core::network::NetworkAssignment;
use trellis_core::record::ContainerRecord;

/// Control files the kernel puts in cgroup directories (v1 and v2): a container's cgroup
/// directory, named by its handle, cannot take one of these names beside its parent's.
const CGROUP_CONTROL_FILES: [&str; 32] = [
    "tasks",
    "notify_on_release",
    "release_agent",
    "cgroup.procs",
    "cgroup.clone_children",
    "cgroup.controllers",
    "cgroup.events",
    "cgroup.freeze",
    "cgroup.kill",
    "cgroup.subtree_control",
    "cgroup.threads",
    "cgroup.type",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.oom_control",
    "memory.stat",
    "memory.max",
    "memory.events",
    "pids.max",
    "pids.current",
    "cpu.shares",
    "cpu.weight",
    "cpu.stat",
    "cpuacct.usage_all",
    "cpuset.cpus",
    "cpuset.mems",
    "devices.allow",
    "devices.deny",
    "freezer.state",
    "blkio.weight",
    "io.max",
    "hugetlb.2MB.limit_in_bytes",
];

/// Ranges a real host routes specially ("this network", loopback, link-local, multicast,
/// limited broadcast): a container subnet there would take over their traffic.
const SPECIAL_RANGES: [&str; 5] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
];

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Why a Linux host could not name its objects after `handle`: the record's temporary file
/// `.<handle>.json.tmp` must fit in 255 bytes, every name must be one path component, a hidden
/// record would be skipped at the next start, and the cgroup directory must not collide with
/// a control file.
fn unnameable(handle: &str) -> Option<&'static str> {
    if handle.is_empty() || handle == "." || handle == ".." || handle.contains(['/', '\0']) {
        Some("not a path component")
    } else if format!(".{handle}.json.tmp").len() > 255 {
        Some("its record's temporary file name is too long")
    } else if handle.starts_with('.') {
        Some("its record would be hidden, and skipped at the next start")
    } else if CGROUP_CONTROL_FILES.contains(&handle) {
        Some("its cgroup directory collides with a control file")
    } else {
        None
    }
}

/// Whether an env is within the bounds the core promises, by our own counting.
fn env_within_bounds(env: &[String]) -> bool {
    env.len() <= limits::MAX_ENV_ENTRIES
        && env.iter().map(|e| e.len() + 1).sum::<usize>() <= limits::MAX_ENV_BYTES
}

/// Which bound a record the core asked to store breaks, by our own counting.
fn record_over_bounds(record: &ContainerRecord) -> Option<String> {
    let encoded = serde_json::to_vec(record).expect("records encode").len();
    if encoded > limits::MAX_RECORD_BYTES {
        return Some(format!("it is {encoded} bytes"));
    }
    if record.properties.len() > limits::MAX_PROPERTIES {
        return Some(format!("it has {} properties", record.properties.len()));
    }
    if let Some((key, value)) = record.properties.iter().find(|(k, v)| {
        k.len() > limits::MAX_PROPERTY_KEY_BYTES || v.len() > limits::MAX_PROPERTY_VALUE_BYTES
    }) {
        return Some(format!("property of {} + {} bytes", key.len(), value.len()));
    }
    if !env_within_bounds(&record.spec.env) || !env_within_bounds(&record.image_env) {
        return Some("an env over its bounds".into());
    }
    if record.spec.bind_mounts.len() > limits::MAX_BIND_MOUNTS {
        return Some(format!("{} bind mounts", record.spec.bind_mounts.len()));
    }
    if record.netout_rules.len() > limits::MAX_NETOUT_RULES {
        return Some(format!("{} net-out rules", record.netout_rules.len()));
    }
    None
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeContainer {
    pub rootfs: bool,
    pub cgroup: bool,
    pub network: Option<NetworkAssignment>,
    pub init: bool,
    /// Running processes: id -> serial (which spawn started it; ids are reused, serials not).
    pub processes: BTreeMap<String, u64>,
    /// Processes that ended whose exit the container's init (their keeper) still holds for the
    /// server: until the server releases them, or the init dies.
    pub exited: BTreeSet<String>,
    /// Host port -> container port.
    pub ports: BTreeMap<u32, u32>,
    pub netout_rules: usize,
    /// Processes that run with an image of their own (peas), by id: each has a root filesystem
    /// (and maybe a cgroup) of its own, which goes when its process is released, or with the
    /// container's rootfs and cgroup.
    pub peas: BTreeSet<String>,
}

impl FakeContainer {
    pub fn is_empty(&self) -> bool {
        !self.rootfs
            && !self.cgroup
            && self.network.is_none()
            && !self.init
            && self.processes.is_empty()
            && self.peas.is_empty()
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
    /// The host's own networks, which container subnets must stay off.
    pub host_networks: Vec<Ipv4Network>,
    /// Serials of every process that ended: its exit is recorded (in its keeper, or as killed
    /// with its container).
    pub exits: BTreeSet<u64>,
    next_serial: u64,
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
        let creates_something = matches!(
            effect,
            PrepareRootfs { .. }
                | CreateCgroup { .. }
                | SetupNetwork { .. }
                | StartInit { .. }
                | PersistRecord { .. }
        );
        if creates_something {
            if let Some(why) = unnameable(&handle) {
                return self.violation(format!(
                    "{} for handle {handle:?}, which a host cannot use: {why}",
                    effect.name()
                ));
            }
        }
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
            // The simulated servers run without a network plugin; a plugin that wires nothing
            // answers no properties.
            ConnectNetwork { .. } => Ok(EffectOutput::NetworkProperties(Default::default())),
            SetupNetwork { config, .. } => {
                let subnet = config.assignment.subnet;
                let forbidden = SPECIAL_RANGES
                    .iter()
                    .map(|r| r.parse::<Ipv4Network>().expect("valid range"))
                    .chain(self.host_networks.iter().copied())
                    .find(|r| overlaps(*r, subnet));
                if let Some(range) = forbidden {
                    return self.violation(format!(
                        "setup-network for {handle}: {subnet} overlaps {range}, which the host uses"
                    ));
                }
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
                if let Some(why) = record_over_bounds(record) {
                    return self.violation(format!(
                        "persist-record for {handle}: the record is over a bound: {why}"
                    ));
                }
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
                    // The keeper dies with the init: the exits it held go with it.
                    c.exited.clear();
                    for (p, serial) in std::mem::take(&mut c.processes) {
                        self.exits.insert(serial);
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
                    c.peas.clear();
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
                    c.peas.clear();
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
                if !env_within_bounds(&spec.env) || spec.bind_mounts.len() > limits::MAX_BIND_MOUNTS
                {
                    return self.violation(format!(
                        "spawn-process for {handle}: {} env entries and {} bind mounts are over \
                         the bounds",
                        spec.env.len(),
                        spec.bind_mounts.len()
                    ));
                }
                let Some(c) = self.containers.get_mut(&handle).filter(|c| c.init) else {
                    return Err(host_error(format!("container {handle} is not running")));
                };
                if spec.path == "missing-binary" {
                    return Err(EffectError::new(
                        EffectErrorKind::ExecutableNotFound,
                        "exec: \"missing-binary\": executable file not found in $PATH",
                    ));
                }
                if c.processes.contains_key(process_id) {
                    return self.violation(format!(
                        "spawn-process for {handle}: process {process_id} already runs"
                    ));
                }
                // The keeper replaces an exited process of the same id (the server let it go).
                self.next_serial += 1;
                let c = self.containers.get_mut(&handle).expect("checked above");
                c.exited.remove(process_id);
                c.processes.insert(process_id.clone(), self.next_serial);
                if spec.image.uri.is_empty() {
                    c.peas.remove(process_id);
                } else {
                    c.peas.insert(process_id.clone());
                }
                Ok(EffectOutput::Done)
            }
            StopProcesses { .. } => {
                let running: Vec<String> = self
                    .containers
                    .get(&handle)
                    .map(|c| c.processes.keys().cloned().collect())
                    .unwrap_or_default();
                for p in running {
                    self.end_process(&handle, &p);
                    self.ended.push((handle.clone(), p));
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
            ReadPeaMetrics { process_id, .. } => {
                let Some(c) = self
                    .containers
                    .get(&handle)
                    .filter(|c| c.peas.contains(process_id))
                else {
                    return Err(host_error(format!(
                        "process {process_id} of {handle} is not a pea"
                    )));
                };
                let mut metrics = Metrics::default();
                metrics.pid_stat.current = u64::from(c.processes.contains_key(process_id));
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

    /// A process ended (on its own, or stopped): its keeper holds its exit.
    pub fn end_process(&mut self, handle: &str, process_id: &str) -> bool {
        let Some(c) = self.containers.get_mut(handle) else {
            return false;
        };
        let Some(serial) = c.processes.remove(process_id) else {
            return false;
        };
        c.exited.insert(process_id.to_string());
        self.exits.insert(serial);
        true
    }

    /// The server has delivered an exit: the keeper lets the process go (unless a new process
    /// took its id since).
    pub fn release_exited(&mut self, handle: &str, process_id: &str) {
        if let Some(c) = self.containers.get_mut(handle) {
            if c.exited.remove(process_id) {
                c.peas.remove(process_id);
            }
        }
    }

    /// The serial of the process running as `process_id` in `handle`, if one does.
    pub fn running(&self, handle: &str, process_id: &str) -> Option<u64> {
        self.containers
            .get(handle)
            .and_then(|c| c.processes.get(process_id))
            .copied()
    }

    /// Every running process, as (handle, id).
    pub fn running_processes(&self) -> Vec<(String, String)> {
        self.containers
            .iter()
            .flat_map(|(h, c)| c.processes.keys().map(move |p| (h.clone(), p.clone())))
            .collect()
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
                            // Only running ones, and only while the init runs (as Linux).
                            processes: if c.init {
                                c.processes.keys().cloned().collect()
                            } else {
                                Vec::new()
                            },
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

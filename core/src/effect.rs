//! Effects: what the core asks the host to do, as plain data, and what comes back.
//!
//! The shape follows guardian's seams: a volumizer (rootfs), a containerizer (cgroup, init,
//! processes), a networker and a property/depot store. Every effect must be idempotent: it may be
//! retried after a failure or a crash, and undo effects must succeed when there is nothing left
//! to undo. Everything the host creates for a container must be findable again by its handle.

use crate::api::{
    BindMount, ContainerSpec, ImageRef, Limits, Metrics, NetOutRule, PortMapping, ProcessSpec,
};
use crate::network::NetworkAssignment;
use crate::record::ContainerRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EffectId(pub u64);

impl std::fmt::Display for EffectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "e{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub id: EffectId,
    pub kind: EffectKind,
}

/// Everything the host needs to give a container its network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub assignment: NetworkAssignment,
    /// Host port -> container port, applied as part of setup.
    pub port_mappings: Vec<PortMapping>,
    pub netout_rules: Vec<NetOutRule>,
    pub bandwidth: crate::api::BandwidthLimits,
    /// An unprivileged container's network namespace belongs to its user namespace.
    pub privileged: bool,
}

/// What a network plugin's `up` gets besides the init's pid (guardian's `UpInputs`): the
/// container's properties and the spec's NetIn and NetOut, as the create asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginUpConfig {
    pub properties: BTreeMap<String, String>,
    pub netin: Vec<crate::api::NetIn>,
    pub netout_rules: Vec<NetOutRule>,
}

/// Everything the container's init needs to build its world.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    pub hostname: String,
    pub privileged: bool,
    pub bind_mounts: Vec<BindMount>,
    /// For /etc/hosts: the handle resolves to this address (not known yet with a network
    /// plugin).
    pub container_ip: Option<std::net::Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectKind {
    // --- create, in this order ---
    /// Make the container's root filesystem (copy-on-write over the image). Answers `Rootfs`.
    PrepareRootfs {
        handle: String,
        image: ImageRef,
        privileged: bool,
        disk: crate::api::DiskLimits,
    },
    /// Make the container's cgroup and apply its limits and device allowlist (privileged
    /// containers may use a few more devices).
    CreateCgroup {
        handle: String,
        limits: Limits,
        privileged: bool,
    },
    /// Make the network namespace, link, addresses, NAT, port mappings and egress rules.
    SetupNetwork {
        handle: String,
        config: NetworkConfig,
    },
    /// Start the container's init (PID 1) inside its namespaces, rootfs and cgroup.
    StartInit {
        handle: String,
        config: InitConfig,
    },
    /// Only with a network plugin: connect the container's network namespace through the
    /// plugin, once its init runs. Answers `NetworkProperties`; undone by `TeardownNetwork`.
    ConnectNetwork {
        handle: String,
        config: PluginUpConfig,
    },
    /// Durably store the container's record (atomic replace). Later writes carry newer state.
    PersistRecord {
        handle: String,
        record: Box<ContainerRecord>,
    },

    // --- teardown, in this order; each must succeed when there is nothing to remove ---
    /// Kill every process of the container, init included, and wait until they are gone.
    KillContainer {
        handle: String,
    },
    /// Remove everything `SetupNetwork`, `MapPort` and `AddNetOutRules` made.
    TeardownNetwork {
        handle: String,
        assignment: Option<NetworkAssignment>,
    },
    RemoveCgroup {
        handle: String,
    },
    RemoveRootfs {
        handle: String,
    },
    DeleteRecord {
        handle: String,
    },

    // --- operations on a running container ---
    /// Start a process. The host keeps its stdio and exit status by (handle, process_id) and
    /// reports `Observation::ProcessExited` when it ends.
    SpawnProcess {
        handle: String,
        process_id: String,
        spec: Box<ProcessSpec>,
        /// Image env, then container env, in that order; the process spec's env goes last.
        env: Vec<String>,
    },
    /// Stop: SIGTERM every process but init (SIGKILL at once when `kill`), SIGKILL those left
    /// after the grace period, and answer when none remain.
    StopProcesses {
        handle: String,
        kill: bool,
    },
    MapPort {
        handle: String,
        assignment: NetworkAssignment,
        mapping: PortMapping,
    },
    AddNetOutRules {
        handle: String,
        assignment: NetworkAssignment,
        rules: Vec<NetOutRule>,
    },
    /// Answers `Metrics` (the core fills in `Age`).
    ReadMetrics {
        handle: String,
    },
    /// Answers `Metrics` for the pea `process_id` of `handle` (a process with an image of its
    /// own; guardian answers BulkMetrics for a pea's process id): its own cgroup's when it
    /// overrides the container's limits, else the container's, which it shares. Fails for a
    /// process that is not a pea.
    ReadPeaMetrics {
        handle: String,
        process_id: String,
    },
    /// Answers `Capacity`.
    ReadCapacity,
}

impl EffectKind {
    pub fn handle(&self) -> Option<&str> {
        use EffectKind::*;
        match self {
            PrepareRootfs { handle, .. }
            | CreateCgroup { handle, .. }
            | SetupNetwork { handle, .. }
            | StartInit { handle, .. }
            | ConnectNetwork { handle, .. }
            | PersistRecord { handle, .. }
            | KillContainer { handle }
            | TeardownNetwork { handle, .. }
            | RemoveCgroup { handle }
            | RemoveRootfs { handle }
            | DeleteRecord { handle }
            | SpawnProcess { handle, .. }
            | StopProcesses { handle, .. }
            | MapPort { handle, .. }
            | AddNetOutRules { handle, .. }
            | ReadMetrics { handle }
            | ReadPeaMetrics { handle, .. } => Some(handle),
            ReadCapacity => None,
        }
    }

    /// A short name for traces and logs.
    pub fn name(&self) -> &'static str {
        use EffectKind::*;
        match self {
            PrepareRootfs { .. } => "prepare-rootfs",
            CreateCgroup { .. } => "create-cgroup",
            SetupNetwork { .. } => "setup-network",
            StartInit { .. } => "start-init",
            ConnectNetwork { .. } => "connect-network",
            PersistRecord { .. } => "persist-record",
            KillContainer { .. } => "kill-container",
            TeardownNetwork { .. } => "teardown-network",
            RemoveCgroup { .. } => "remove-cgroup",
            RemoveRootfs { .. } => "remove-rootfs",
            DeleteRecord { .. } => "delete-record",
            SpawnProcess { .. } => "spawn-process",
            StopProcesses { .. } => "stop-processes",
            MapPort { .. } => "map-port",
            AddNetOutRules { .. } => "add-netout-rules",
            ReadMetrics { .. } => "read-metrics",
            ReadPeaMetrics { .. } => "read-pea-metrics",
            ReadCapacity => "read-capacity",
        }
    }
}

/// What a successful effect answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectOutput {
    Done,
    /// From `PrepareRootfs`: the image's configured environment (`KEY=VALUE`), if any.
    Rootfs {
        image_env: Vec<String>,
    },
    Metrics(Box<Metrics>),
    /// From `ConnectNetwork`: the properties the network plugin gives the container (its
    /// address as `garden.network.container-ip`, ...).
    NetworkProperties(BTreeMap<String, String>),
    Capacity {
        memory_in_bytes: u64,
        disk_in_bytes: u64,
        schedulable_disk_in_bytes: u64,
    },
}

/// Why an effect failed. The kind decides the Garden error type the caller sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct EffectError {
    pub kind: EffectErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectErrorKind {
    /// The program to run does not exist in the container (Garden's ExecutableNotFoundError).
    ExecutableNotFound,
    /// The request itself cannot work (bad user, missing bind mount source, bad image, ...).
    InvalidRequest,
    /// The host failed; retrying may help.
    Host,
}

impl EffectError {
    pub fn new(kind: EffectErrorKind, message: impl Into<String>) -> EffectError {
        EffectError {
            kind,
            message: message.into(),
        }
    }
}

pub type Outcome = Result<EffectOutput, EffectError>;

/// Things the host reports without being asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Observation {
    ProcessExited { handle: String, process_id: String },
    OutOfMemory { handle: String },
}

/// What really exists on the host, per handle, as the host found it at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedHost {
    pub containers: BTreeMap<String, ObservedContainer>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedContainer {
    pub rootfs: bool,
    pub cgroup: bool,
    /// The address the host has configured for the container, if any.
    pub network: Option<NetworkAssignment>,
    /// Host port mappings in place.
    pub ports: Vec<PortMapping>,
    /// The container's init is alive.
    pub init: bool,
    /// Ids of processes still running.
    pub processes: Vec<String>,
}

impl ObservedContainer {
    pub fn anything(&self) -> bool {
        self.rootfs
            || self.cgroup
            || self.network.is_some()
            || self.init
            || !self.processes.is_empty()
    }

    /// Every piece a working container needs is there.
    pub fn complete(&self) -> bool {
        self.rootfs && self.cgroup && self.network.is_some() && self.init
    }
}

/// Creation data a record keeps: the spec minus what must not be stored (registry password)
/// and what the record keeps elsewhere (the properties, which change).
pub fn storable_spec(spec: &ContainerSpec) -> ContainerSpec {
    let mut stored = spec.clone();
    stored.image.password.clear();
    stored.properties.clear();
    stored
}

//! The durable form of a container: one record per container, written atomically by the host
//! (`PersistRecord`) before the core acknowledges a change that must survive a restart.

use crate::api::{ContainerSpec, NetOutRule, PortMapping};
use crate::network::NetworkAssignment;
use crate::properties::Properties;
use crate::Time;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    Active,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub handle: String,
    /// The create request, without secrets.
    pub spec: ContainerSpec,
    /// User properties only; `garden.*` keys are derived.
    pub properties: Properties,
    /// Nanoseconds; 0 = never expires.
    pub grace_time: u64,
    pub state: RecordState,
    pub network: NetworkAssignment,
    pub mapped_ports: Vec<PortMapping>,
    /// Every egress rule in force, from the spec and from later NetOut calls.
    pub netout_rules: Vec<NetOutRule>,
    pub image_env: Vec<String>,
    pub created_at: Time,
    pub events: Vec<String>,
    /// Increases with every change; a host may ignore a write older than what it has.
    pub version: u64,
}

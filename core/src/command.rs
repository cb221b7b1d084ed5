//! The core's inputs and outputs.

use crate::api::{
    Capacity, ContainerInfo, ContainerSpec, Limits, Metrics, NetInResponse, NetOutRule, ProcessSpec,
};
use crate::effect::{Effect, EffectId, Observation, ObservedHost, Outcome};
use crate::error::Error;
use crate::properties::Properties;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Chosen by the driver; the core echoes it on the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// A hold on a container that pauses its grace timer until released (an attached process
/// connection, a file stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Only moves time forward (to the `now` given with it); timers fire.
    Tick,
    Command {
        request: RequestId,
        command: Command,
    },
    /// A host's answer to an effect.
    Outcome {
        effect: EffectId,
        outcome: Outcome,
    },
    Observed(Observation),
    /// Once, after `Core::restore`: what the host really has.
    Reconcile(ObservedHost),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Reply {
        request: RequestId,
        result: Result<Reply, Error>,
    },
    Effect(Effect),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create(Box<ContainerSpec>),
    Destroy {
        handle: String,
    },
    Stop {
        handle: String,
        kill: bool,
    },
    List {
        filter: Properties,
    },
    Info {
        handle: String,
    },
    BulkInfo {
        handles: Vec<String>,
    },
    Properties {
        handle: String,
    },
    Property {
        handle: String,
        key: String,
    },
    SetProperty {
        handle: String,
        key: String,
        value: String,
    },
    RemoveProperty {
        handle: String,
        key: String,
    },
    /// Nanoseconds.
    SetGraceTime {
        handle: String,
        grace_time: i64,
    },
    CurrentLimits {
        handle: String,
    },
    Metrics {
        handle: String,
    },
    BulkMetrics {
        handles: Vec<String>,
    },
    NetIn {
        handle: String,
        host_port: u32,
        container_port: u32,
    },
    /// NetOut (one rule) and BulkNetOut (many).
    NetOut {
        handle: String,
        rules: Vec<NetOutRule>,
    },
    Run {
        handle: String,
        spec: Box<ProcessSpec>,
    },
    /// Hold the container for a long request (attach, stream in/out).
    Acquire {
        handle: String,
    },
    Release {
        lease: LeaseId,
    },
    Capacity,
}

impl Command {
    /// The container a command names, if any.
    pub fn handle(&self) -> Option<&str> {
        use Command::*;
        match self {
            Destroy { handle }
            | Stop { handle, .. }
            | Info { handle }
            | Properties { handle }
            | Property { handle, .. }
            | SetProperty { handle, .. }
            | RemoveProperty { handle, .. }
            | SetGraceTime { handle, .. }
            | CurrentLimits { handle }
            | Metrics { handle }
            | NetIn { handle, .. }
            | NetOut { handle, .. }
            | Run { handle, .. }
            | Acquire { handle } => Some(handle),
            Create(spec) if !spec.handle.is_empty() => Some(&spec.handle),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Created {
        handle: String,
    },
    /// Success with nothing to say (`{}` on the wire).
    Done,
    Handles(Vec<String>),
    Info(Box<ContainerInfo>),
    BulkInfo(BTreeMap<String, Result<ContainerInfo, Error>>),
    Properties(Properties),
    Property(String),
    Limits(Box<Limits>),
    Metrics(Box<Metrics>),
    BulkMetrics(BTreeMap<String, Result<Metrics, Error>>),
    Capacity(Capacity),
    NetIn(NetInResponse),
    /// The process runs; the lease keeps the container's grace timer paused until released.
    ProcessStarted {
        process_id: String,
        lease: LeaseId,
    },
    Leased(LeaseId),
}

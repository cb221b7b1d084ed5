//! The Run body (`ProcessSpec`) and the messages of the hijacked process connection.

use super::go::{is_zero, nullable};
use super::spec::{BindMount, CpuLimits, ImageRef, MemoryLimits};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessSpec {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub id: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub path: String,
    /// Arguments after argv[0].
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub dir: String,
    /// A user name, `uid`, `name:group` or `uid:gid`; empty means root.
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub user: String,
    #[serde(deserialize_with = "nullable")]
    pub rlimits: ResourceLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProcessLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySpec>,
    #[serde(deserialize_with = "nullable")]
    pub image: ImageRef,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub bind_mounts: Vec<BindMount>,
}

/// setrlimit(2) values; soft and hard are set alike. `Some(0)` is a real limit of zero.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ResourceLimits {
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    pub address_space: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsize: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memlock: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msgqueue: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nice: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtprio: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigpending: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stack: Option<u64>,
}

/// Per-process cgroup overrides (a pea's own limits).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessLimits {
    #[serde(deserialize_with = "nullable")]
    pub cpu_limits: CpuLimits,
    #[serde(deserialize_with = "nullable")]
    pub memory_limits: MemoryLimits,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct TtySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_size: Option<WindowSize>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct WindowSize {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub columns: u16,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub rows: u16,
}

/// `signal` values on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signal {
    Terminate,
    Kill,
}

impl Signal {
    pub fn from_wire(value: u8) -> Option<Signal> {
        match value {
            0 => Some(Signal::Terminate),
            1 => Some(Signal::Kill),
            _ => None,
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Signal::Terminate => 0,
            Signal::Kill => 1,
        }
    }
}

//! The Create body (`ContainerSpec`) and the types it is built from, with Go's field names.

use super::go::{is_zero, nullable};
use super::net::{NetIn, NetOutRule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerSpec {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub handle: String,
    /// Nanoseconds; 0 means "the server's default".
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub grace_time: i64,
    /// Deprecated spelling of `image.uri`, still sent by older callers.
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub rootfs: String,
    #[serde(deserialize_with = "nullable")]
    pub image: ImageRef,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub bind_mounts: Vec<BindMount>,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub network: String,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "nullable"
    )]
    pub properties: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub privileged: bool,
    #[serde(deserialize_with = "nullable")]
    pub limits: Limits,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub netout_rules: Vec<NetOutRule>,
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub netin: Vec<NetIn>,
}

impl ContainerSpec {
    /// The image URI the caller asked for: `image.uri`, else the deprecated `rootfs`.
    pub fn image_uri(&self) -> &str {
        if self.image.uri.is_empty() {
            &self.rootfs
        } else {
            &self.image.uri
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ImageRef {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub uri: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub username: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub password: String,
}

// Registry passwords must never reach a log line.
impl std::fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRef")
            .field("uri", &self.uri)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct BindMount {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub src_path: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub dst_path: String,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub mode: BindMountMode,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub origin: BindMountOrigin,
}

/// Garden sends these enums as integers.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(try_from = "u8", into = "u8")]
pub enum BindMountMode {
    #[default]
    ReadOnly,
    ReadWrite,
}

impl TryFrom<u8> for BindMountMode {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, String> {
        match value {
            0 => Ok(Self::ReadOnly),
            1 => Ok(Self::ReadWrite),
            other => Err(format!(
                "unknown bind mount mode {other} (0 = read-only, 1 = read-write)"
            )),
        }
    }
}

impl From<BindMountMode> for u8 {
    fn from(mode: BindMountMode) -> u8 {
        mode as u8
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(try_from = "u8", into = "u8")]
pub enum BindMountOrigin {
    #[default]
    Host,
    Container,
}

impl TryFrom<u8> for BindMountOrigin {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, String> {
        match value {
            0 => Ok(Self::Host),
            1 => Ok(Self::Container),
            other => Err(format!(
                "unknown bind mount origin {other} (0 = host, 1 = container)"
            )),
        }
    }
}

impl From<BindMountOrigin> for u8 {
    fn from(origin: BindMountOrigin) -> u8 {
        origin as u8
    }
}

/// `limits` in a ContainerSpec: every sub-object is always sent, even when empty.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Limits {
    #[serde(deserialize_with = "nullable")]
    pub bandwidth_limits: BandwidthLimits,
    #[serde(deserialize_with = "nullable")]
    pub cpu_limits: CpuLimits,
    #[serde(deserialize_with = "nullable")]
    pub disk_limits: DiskLimits,
    #[serde(deserialize_with = "nullable")]
    pub memory_limits: MemoryLimits,
    #[serde(deserialize_with = "nullable")]
    pub pid_limits: PidLimits,
}

/// Bytes per second.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct BandwidthLimits {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub rate: u64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub burst: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CpuLimits {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub weight: u64,
    /// Deprecated alias of `weight`.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub limit_in_shares: u64,
}

impl CpuLimits {
    /// The CPU shares asked for: `weight`, else the deprecated `limit_in_shares`; 0 = unset.
    pub fn shares(&self) -> u64 {
        if self.weight > 0 {
            self.weight
        } else {
            self.limit_in_shares
        }
    }

    /// What CurrentCPULimits reports, as gdn does: the shares in `limit_in_shares` (on cgroup
    /// v2 the `cpu.weight` they convert to), and `weight` always 0.
    pub fn reported(&self, cgroup_v2: bool) -> CpuLimits {
        let shares = self.shares();
        CpuLimits {
            weight: 0,
            limit_in_shares: if cgroup_v2 {
                shares_to_weight(shares)
            } else {
                shares
            },
        }
    }
}

/// Converts cgroup v1 CPU shares to a v2 `cpu.weight` as runc does: 0 stays unset, and the
/// curve maps 2 → 1, 1024 → 100 and 262144 → 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    match shares {
        0 => 0,
        s if s <= 2 => 1,
        s if s >= 262_144 => 10_000,
        s => {
            let l = (s as f64).log2();
            let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
            10f64.powf(exponent).ceil() as u64
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct DiskLimits {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub inode_soft: u64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub inode_hard: u64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub byte_soft: u64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub byte_hard: u64,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub scope: DiskScope,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(try_from = "u8", into = "u8")]
pub enum DiskScope {
    /// The image's bytes count toward the limit.
    #[default]
    Total,
    /// Only what the container writes counts.
    Exclusive,
}

impl TryFrom<u8> for DiskScope {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, String> {
        match value {
            0 => Ok(Self::Total),
            1 => Ok(Self::Exclusive),
            other => Err(format!(
                "unknown disk limit scope {other} (0 = total, 1 = exclusive)"
            )),
        }
    }
}

impl From<DiskScope> for u8 {
    fn from(scope: DiskScope) -> u8 {
        scope as u8
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct MemoryLimits {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub limit_in_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PidLimits {
    /// 0 means unlimited.
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub max: u64,
}

//! Response bodies: Info, Metrics, Capacity, the error object and the bulk entries.
//! Go types without JSON tags serialize under their Go field names, so many keys are CamelCase.

use super::go::{is_zero, nullable};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerInfo {
    #[serde(rename = "State", deserialize_with = "nullable")]
    pub state: String,
    #[serde(rename = "Events")]
    pub events: Option<Vec<String>>,
    #[serde(rename = "HostIP", deserialize_with = "nullable")]
    pub host_ip: String,
    #[serde(rename = "ContainerIP", deserialize_with = "nullable")]
    pub container_ip: String,
    #[serde(rename = "ContainerIPv6", deserialize_with = "nullable")]
    pub container_ipv6: String,
    #[serde(rename = "ExternalIP", deserialize_with = "nullable")]
    pub external_ip: String,
    #[serde(rename = "ContainerPath", deserialize_with = "nullable")]
    pub container_path: String,
    #[serde(rename = "ProcessIDs")]
    pub process_ids: Option<Vec<String>>,
    #[serde(rename = "Properties")]
    pub properties: Option<BTreeMap<String, String>>,
    #[serde(rename = "MappedPorts")]
    pub mapped_ports: Option<Vec<PortMapping>>,
}

#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(default)]
pub struct PortMapping {
    #[serde(rename = "HostPort", deserialize_with = "nullable")]
    pub host_port: u32,
    #[serde(rename = "ContainerPort", deserialize_with = "nullable")]
    pub container_port: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Metrics {
    #[serde(rename = "MemoryStat", deserialize_with = "nullable")]
    pub memory_stat: MemoryStat,
    #[serde(rename = "CPUStat", deserialize_with = "nullable")]
    pub cpu_stat: CpuStat,
    #[serde(rename = "DiskStat", deserialize_with = "nullable")]
    pub disk_stat: DiskStat,
    #[serde(rename = "NetworkStat")]
    pub network_stat: Option<NetworkStat>,
    #[serde(rename = "PidStat", deserialize_with = "nullable")]
    pub pid_stat: PidStat,
    /// Nanoseconds since the container was created.
    #[serde(rename = "Age", deserialize_with = "nullable")]
    pub age: i64,
    /// Nanoseconds of CPU time the container is entitled to over its age. In a `ReadMetrics`
    /// outcome the host reports the entitlement per second of age instead, and the core
    /// scales it by `Age` ([`entitlement_over`]): the host has no notion of the core's clock.
    #[serde(rename = "CPUEntitlement", deserialize_with = "nullable")]
    pub cpu_entitlement: u64,
}

/// The CPU entitlement (ns) over `age_ns`, from the entitlement per second of age.
pub fn entitlement_over(per_second: u64, age_ns: u64) -> u64 {
    let total = u128::from(per_second) * u128::from(age_ns) / 1_000_000_000;
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// Every key is always present; the names mix cgroup-v1 style and Go style exactly as Garden does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct MemoryStat {
    pub active_anon: u64,
    pub active_file: u64,
    pub cache: u64,
    pub hierarchical_memory_limit: u64,
    pub inactive_anon: u64,
    pub inactive_file: u64,
    pub mapped_file: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub pgpgin: u64,
    pub pgpgout: u64,
    pub rss: u64,
    pub total_active_anon: u64,
    pub total_active_file: u64,
    pub total_cache: u64,
    pub total_inactive_anon: u64,
    pub total_inactive_file: u64,
    pub total_mapped_file: u64,
    pub total_pgfault: u64,
    pub total_pgmajfault: u64,
    pub total_pgpgin: u64,
    pub total_pgpgout: u64,
    pub total_rss: u64,
    pub total_unevictable: u64,
    pub unevictable: u64,
    pub swap: u64,
    pub hierarchical_memsw_limit: u64,
    pub total_swap: u64,
    #[serde(rename = "TotalUsageTowardLimit")]
    pub total_usage_toward_limit: u64,
    pub anon: u64,
    pub file: u64,
    pub swapcached: u64,
}

/// Cumulative CPU time in nanoseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct CpuStat {
    #[serde(rename = "Usage")]
    pub usage: u64,
    #[serde(rename = "User")]
    pub user: u64,
    #[serde(rename = "System")]
    pub system: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct DiskStat {
    #[serde(rename = "TotalBytesUsed")]
    pub total_bytes_used: u64,
    #[serde(rename = "TotalInodesUsed")]
    pub total_inodes_used: u64,
    #[serde(rename = "ExclusiveBytesUsed")]
    pub exclusive_bytes_used: u64,
    #[serde(rename = "ExclusiveInodesUsed")]
    pub exclusive_inodes_used: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NetworkStat {
    #[serde(rename = "RxBytes")]
    pub rx_bytes: u64,
    #[serde(rename = "TxBytes")]
    pub tx_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PidStat {
    #[serde(rename = "Current")]
    pub current: u64,
    /// 0 when there is no limit.
    #[serde(rename = "Max")]
    pub max: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Capacity {
    #[serde(skip_serializing_if = "is_zero")]
    pub memory_in_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub disk_in_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub schedulable_disk_in_bytes: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub max_containers: u64,
}

//! What a container's cgroup gets: its Garden limits combined with the server's limit flags
//! (gdn's `Limits` group and `--device-cgroup-rule`), worked out once for both cgroup versions
//! as guardian's `bundlerules.Limits` and runc work them out.

use crate::linux::security::devices::AllowRule;
use std::path::Path;
use trellis_core::api::Limits;

/// The server's settings for every container's cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupConfig {
    /// µs of CPU per [`CPU_PERIOD_US`] each CPU share allows (0: no quota).
    pub cpu_quota_per_share: u64,
    /// The block IO weight every container gets (10–1000; 0: the kernel's default).
    pub blockio_weight: u16,
    /// Throttles every container gets on each of the host's disks.
    pub io_max: IoMax,
    /// A memory limit leaves swap unlimited.
    pub disable_swap_limit: bool,
    /// Device rules privileged containers get besides (or instead of) the built-in ones.
    pub privileged_device_rules: Vec<AllowRule>,
    /// The CPU entitlement of one share, in % of a core (`None`: guardian's default, computed
    /// from the host's CPUs and memory).
    pub cpu_entitlement_per_share: Option<f64>,
}

/// Per-container IO throttles (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoMax {
    pub read_bps: u64,
    pub write_bps: u64,
    pub read_iops: u64,
    pub write_iops: u64,
}

/// Guardian's CFS period for CPU quotas.
pub const CPU_PERIOD_US: u64 = 100_000;
/// Guardian's smallest CPU quota: less starves even the container's init.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// What one IO throttle limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoLimit {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl IoLimit {
    /// The v1 `blkio` file.
    pub fn v1_file(self) -> &'static str {
        match self {
            IoLimit::ReadBps => "blkio.throttle.read_bps_device",
            IoLimit::WriteBps => "blkio.throttle.write_bps_device",
            IoLimit::ReadIops => "blkio.throttle.read_iops_device",
            IoLimit::WriteIops => "blkio.throttle.write_iops_device",
        }
    }

    /// The v2 `io.max` key.
    pub fn v2_key(self) -> &'static str {
        match self {
            IoLimit::ReadBps => "rbps",
            IoLimit::WriteBps => "wbps",
            IoLimit::ReadIops => "riops",
            IoLimit::WriteIops => "wiops",
        }
    }
}

/// A block device's `major:minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BlockDevice {
    pub major: u32,
    pub minor: u32,
}

/// One throttle on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    pub device: BlockDevice,
    pub limit: IoLimit,
    pub rate: u64,
}

/// Everything written to a container's cgroup (0 or `None`: left as the kernel has it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory: u64,
    /// Swap is capped with memory (v1 `memsw` = the limit; v2 `memory.swap.max` = 0).
    pub limit_swap: bool,
    pub shares: u64,
    /// µs per [`CPU_PERIOD_US`].
    pub cpu_quota: Option<u64>,
    pub pids: u64,
    /// A v1 blkio weight (10–1000); v2 converts it as runc does.
    pub blockio_weight: u16,
    pub throttles: Vec<Throttle>,
}

impl Resources {
    /// The container's `limits` under the server's `config`; `disks` lists the host's disks
    /// (read only when a throttle is set).
    pub fn new(
        limits: &Limits,
        config: &CgroupConfig,
        disks: impl FnOnce() -> Vec<BlockDevice>,
    ) -> Resources {
        let memory = limits.memory_limits.limit_in_bytes.min(i64::MAX as u64);
        let shares = limits.cpu_limits.shares();
        let cpu_quota = (config.cpu_quota_per_share > 0 && shares > 0).then(|| {
            shares
                .saturating_mul(config.cpu_quota_per_share)
                .clamp(MIN_CPU_QUOTA_US, i64::MAX as u64)
        });
        let io = config.io_max;
        let wanted = [
            (IoLimit::ReadBps, io.read_bps),
            (IoLimit::WriteBps, io.write_bps),
            (IoLimit::ReadIops, io.read_iops),
            (IoLimit::WriteIops, io.write_iops),
        ];
        let mut throttles = Vec::new();
        if wanted.iter().any(|(_, rate)| *rate > 0) {
            for device in disks() {
                for (limit, rate) in wanted.iter().filter(|(_, rate)| *rate > 0) {
                    throttles.push(Throttle {
                        device,
                        limit: *limit,
                        rate: *rate,
                    });
                }
            }
        }
        Resources {
            memory,
            limit_swap: !config.disable_swap_limit,
            shares,
            cpu_quota,
            pids: limits.pid_limits.max,
            blockio_weight: config.blockio_weight,
            throttles,
        }
    }
}

/// runc's mapping of a blkio weight (10–1000) onto the v2 `io.weight` range (1–10000).
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    match weight {
        0 => 0,
        w => 1 + u64::from(w.max(10) - 10) * 9999 / 990,
    }
}

/// The host's disks, as guardian finds them: every device in `<sys_block>` (normally
/// `/sys/block`) but loop, ram and device-mapper ones.
pub fn disks(sys_block: &Path) -> Vec<BlockDevice> {
    let Ok(entries) = std::fs::read_dir(sys_block) else {
        return Vec::new();
    };
    let mut disks: Vec<BlockDevice> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !["loop", "ram", "dm-"].iter().any(|p| name.starts_with(p))
        })
        .filter_map(|e| {
            let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
            let (major, minor) = dev.trim().split_once(':')?;
            let device = BlockDevice {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            };
            (device != BlockDevice { major: 0, minor: 0 }).then_some(device)
        })
        .collect();
    disks.sort();
    disks
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::api::{CpuLimits, MemoryLimits, PidLimits};

    fn limits(shares: u64) -> Limits {
        Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 1 << 30,
            },
            cpu_limits: CpuLimits {
                weight: shares,
                limit_in_shares: 0,
            },
            pid_limits: PidLimits { max: 10 },
            ..Limits::default()
        }
    }

    const DISK: BlockDevice = BlockDevice {
        major: 254,
        minor: 0,
    };

    #[test]
    fn without_flags_only_the_containers_limits_apply_and_swap_is_capped() {
        let r = Resources::new(&limits(512), &CgroupConfig::default(), || {
            panic!("no throttle asks for the disks")
        });
        assert_eq!(
            r,
            Resources {
                memory: 1 << 30,
                limit_swap: true,
                shares: 512,
                cpu_quota: None,
                pids: 10,
                blockio_weight: 0,
                throttles: vec![],
            }
        );
    }

    #[test]
    fn cpu_quota_is_shares_times_the_quota_per_share_with_guardians_floor() {
        let config = CgroupConfig {
            cpu_quota_per_share: 100,
            ..CgroupConfig::default()
        };
        assert_eq!(
            Resources::new(&limits(512), &config, Vec::new).cpu_quota,
            Some(51_200)
        );
        assert_eq!(
            Resources::new(&limits(5), &config, Vec::new).cpu_quota,
            Some(1_000)
        );
        // No shares, no quota.
        assert_eq!(
            Resources::new(&limits(0), &config, Vec::new).cpu_quota,
            None
        );
        let huge = CgroupConfig {
            cpu_quota_per_share: u64::MAX,
            ..CgroupConfig::default()
        };
        assert_eq!(
            Resources::new(&limits(2), &huge, Vec::new).cpu_quota,
            Some(i64::MAX as u64)
        );
    }

    #[test]
    fn each_throttle_set_applies_to_every_disk() {
        let config = CgroupConfig {
            io_max: IoMax {
                read_bps: 1000,
                write_iops: 7,
                ..IoMax::default()
            },
            blockio_weight: 200,
            disable_swap_limit: true,
            ..CgroupConfig::default()
        };
        let other = BlockDevice { major: 8, minor: 0 };
        let r = Resources::new(&limits(0), &config, || vec![other, DISK]);
        assert!(!r.limit_swap);
        assert_eq!(r.blockio_weight, 200);
        assert_eq!(
            r.throttles,
            [
                (other, IoLimit::ReadBps, 1000),
                (other, IoLimit::WriteIops, 7),
                (DISK, IoLimit::ReadBps, 1000),
                (DISK, IoLimit::WriteIops, 7),
            ]
            .map(|(device, limit, rate)| Throttle {
                device,
                limit,
                rate
            })
        );
    }

    #[test]
    fn blkio_weights_convert_as_runc_converts_them() {
        assert_eq!(blkio_to_io_weight(0), 0);
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(500), 4950);
        assert_eq!(blkio_to_io_weight(1000), 10_000);
    }

    #[test]
    fn disks_leave_out_loop_ram_and_device_mapper_devices() {
        let sys = tempfile::tempdir().expect("tempdir");
        for (name, dev) in [
            ("vda", "254:0\n"),
            ("sda", "8:0\n"),
            ("loop0", "7:0\n"),
            ("ram0", "1:0\n"),
            ("dm-0", "253:1\n"),
            ("odd", "garbage\n"),
        ] {
            std::fs::create_dir(sys.path().join(name)).expect("mkdir");
            std::fs::write(sys.path().join(name).join("dev"), dev).expect("write");
        }
        assert_eq!(
            disks(sys.path()),
            [BlockDevice { major: 8, minor: 0 }, DISK]
        );
        assert!(disks(&sys.path().join("absent")).is_empty());
    }
}

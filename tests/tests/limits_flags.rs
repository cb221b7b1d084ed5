//! The server's limit flags (gdn's `Limits` group, `--device-cgroup-rule`,
//! `--cpu-entitlement-per-share`) against the Linux backend, as root: each is read back from
//! the container's cgroup files (v1 or v2, whichever the host has) or seen in the container.

mod limits_support;

use limits_support::*;
use std::path::{Path, PathBuf};
use trellis_core::api::{ContainerSpec, CpuLimits, Limits, MemoryLimits};
use trellis_tests::{Backend, TestServer};

fn server_with(flags: &[&str]) -> TestServer {
    let mut options = TestServer::options(Backend::Linux);
    options.default_rootfs = Some(rootfs().display().to_string());
    options.extra_args = flags.iter().map(|f| f.to_string()).collect();
    TestServer::start(options)
}

fn v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// The container's directory in the hierarchy holding `file` (v1), or its only one (v2).
fn cgroup_file(dirs: &[PathBuf], file: &str) -> PathBuf {
    dirs.iter()
        .map(|d| d.join(file))
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("no cgroup of {dirs:?} has {file}"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn spec(handle: &str, shares: u64, memory: u64) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        limits: Limits {
            cpu_limits: CpuLimits {
                weight: shares,
                limit_in_shares: 0,
            },
            memory_limits: MemoryLimits {
                limit_in_bytes: memory,
            },
            ..Limits::default()
        },
        ..Default::default()
    }
}

/// The disks gdn throttles: /sys/block without loop, ram and device-mapper devices.
fn disks() -> Vec<String> {
    let mut disks: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            !["loop", "ram", "dm-"].iter().any(|p| name.starts_with(p))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .map(|dev| dev.trim().to_string())
        .collect();
    disks.sort();
    disks
}

#[tokio::test]
async fn cpu_quota_swap_and_io_throttle_flags_reach_the_cgroup() {
    let server = server_with(&[
        "--cpu-quota-per-share",
        "10",
        "--disable-swap-limit",
        "--container-io-max-read-bps",
        "1048576",
        "--container-io-max-write-iops",
        "50",
    ]);
    let client = server.client();
    let c = client
        .create(spec("flags", 512, 64 << 20))
        .await
        .expect("create");
    let dirs = cgroup_dirs(&server, &c);
    let disks = disks();
    assert!(!disks.is_empty(), "the host has a disk");
    if v2() {
        assert_eq!(read(&cgroup_file(&dirs, "cpu.max")), "5120 100000");
        assert_eq!(
            read(&cgroup_file(&dirs, "memory.max")),
            (64u64 << 20).to_string()
        );
        assert_eq!(read(&cgroup_file(&dirs, "memory.swap.max")), "max");
        let io_max = read(&cgroup_file(&dirs, "io.max"));
        for disk in &disks {
            let line = io_max
                .lines()
                .find(|l| l.starts_with(&format!("{disk} ")))
                .unwrap_or_else(|| panic!("{disk} in io.max: {io_max}"));
            assert!(
                line.contains("rbps=1048576") && line.contains("wiops=50"),
                "{line}"
            );
        }
    } else {
        assert_eq!(read(&cgroup_file(&dirs, "cpu.cfs_quota_us")), "5120");
        assert_eq!(read(&cgroup_file(&dirs, "cpu.cfs_period_us")), "100000");
        let memory = cgroup_file(&dirs, "memory.limit_in_bytes");
        assert_eq!(read(&memory), (64u64 << 20).to_string());
        let memsw = memory.with_file_name("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_ne!(
                read(&memsw),
                (64u64 << 20).to_string(),
                "swap left unlimited"
            );
        }
        let read_bps = read(&cgroup_file(&dirs, "blkio.throttle.read_bps_device"));
        let write_iops = read(&cgroup_file(&dirs, "blkio.throttle.write_iops_device"));
        for disk in &disks {
            assert!(
                read_bps.lines().any(|l| l == format!("{disk} 1048576")),
                "{read_bps}"
            );
            assert!(
                write_iops.lines().any(|l| l == format!("{disk} 50")),
                "{write_iops}"
            );
        }
        assert!(
            read(&cgroup_file(&dirs, "blkio.throttle.write_bps_device")).is_empty(),
            "only the throttles asked for"
        );
    }
    // A few shares still get guardian's 1 ms floor.
    let small = client
        .create(spec("flags-small", 2, 0))
        .await
        .expect("create");
    let small_dirs = cgroup_dirs(&server, &small);
    if v2() {
        assert_eq!(read(&cgroup_file(&small_dirs, "cpu.max")), "1000 100000");
    } else {
        assert_eq!(read(&cgroup_file(&small_dirs, "cpu.cfs_quota_us")), "1000");
    }
    // Processes still run at the floor.
    ok(&small, "i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done").await;
}

#[tokio::test]
async fn without_the_flags_swap_is_capped_and_there_is_no_quota_or_throttle() {
    let server = linux_server();
    let c = server
        .client()
        .create(spec("plain", 512, 64 << 20))
        .await
        .expect("create");
    let dirs = cgroup_dirs(&server, &c);
    if v2() {
        assert_eq!(read(&cgroup_file(&dirs, "cpu.max")), "max 100000");
        assert_eq!(read(&cgroup_file(&dirs, "memory.swap.max")), "0");
    } else {
        assert_eq!(read(&cgroup_file(&dirs, "cpu.cfs_quota_us")), "-1");
        let memsw = cgroup_file(&dirs, "memory.limit_in_bytes")
            .with_file_name("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            assert_eq!(read(&memsw), (64u64 << 20).to_string());
        }
        assert!(read(&cgroup_file(&dirs, "blkio.throttle.read_bps_device")).is_empty());
    }
}

#[tokio::test]
async fn blockio_weight_is_written_or_the_create_fails_saying_why() {
    let server = server_with(&["--default-container-blockio-weight", "500"]);
    let client = server.client();
    let parent = server.cgroup_parent();
    // Where the kernel offers a weight file: v1 with CFQ or BFQ, v2 with BFQ or io.weight.
    let weight_files: &[&str] = if v2() {
        &["io.bfq.weight", "io.weight"]
    } else {
        &["blkio.weight", "blkio.bfq.weight"]
    };
    let root = if v2() {
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/blkio")
    };
    let offered = weight_files
        .iter()
        .find(|f| root.join(f).exists() || root.join(&parent).join(f).exists());
    match (offered, client.create(spec("weighted", 0, 0)).await) {
        (Some(file), Ok(c)) => {
            let expected = match *file {
                "io.weight" => "4950",
                _ => "500",
            };
            let value = read(&cgroup_file(&cgroup_dirs(&server, &c), file));
            // io.weight reads "default N".
            assert!(value.ends_with(expected), "{file}: {value}");
        }
        (None, Err(e)) => {
            assert!(e.to_string().contains("block IO weight"), "{e}");
            assert!(client
                .containers(&Default::default())
                .await
                .expect("list")
                .is_empty());
            let left: Vec<_> = ["blkio", "memory", "cpu,cpuacct", "pids", ""]
                .iter()
                .map(|h| {
                    Path::new("/sys/fs/cgroup")
                        .join(h)
                        .join(&parent)
                        .join("weighted")
                })
                .filter(|d| d.exists())
                .collect();
            assert!(left.is_empty(), "the failed create left {left:?}");
        }
        (offered, created) => panic!("weight file {offered:?}, create {:?}", created.err()),
    }
}

#[tokio::test]
async fn device_rules_reach_privileged_containers_only() {
    // /dev/urandom read-only (m: init makes the node), and kmsg (1:11) readable, for
    // privileged containers.
    let server = server_with(&[
        "--device-cgroup-rule",
        "c 1:9 rm",
        "--device-cgroup-rule",
        "c 1:11 r",
    ]);
    let client = server.client();
    let privileged = client
        .create(ContainerSpec {
            handle: "devices-privileged".into(),
            privileged: true,
            ..Default::default()
        })
        .await
        .expect("create");
    let unprivileged = client
        .create(ContainerSpec {
            handle: "devices-unprivileged".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (code, _, err) = sh(&privileged, "echo x > /dev/urandom").await;
    assert_ne!(code, 0, "writing /dev/urandom is no longer allowed");
    assert!(err.contains("ermitted") || err.contains("denied"), "{err}");
    assert_eq!(
        ok(&privileged, "head -c 4 /dev/urandom | wc -c")
            .await
            .trim(),
        "4"
    );
    ok(&unprivileged, "echo x > /dev/urandom").await;
    if !v2() {
        let list = |c| read(&cgroup_file(&cgroup_dirs(&server, c), "devices.list"));
        let privileged_list = list(&privileged);
        assert!(
            privileged_list.lines().any(|l| l == "c 1:9 rm"),
            "{privileged_list}"
        );
        assert!(
            privileged_list.lines().any(|l| l == "c 1:11 r"),
            "{privileged_list}"
        );
        assert!(
            !privileged_list.lines().any(|l| l == "c 1:9 rwm"),
            "{privileged_list}"
        );
        let unprivileged_list = list(&unprivileged);
        assert!(
            unprivileged_list.lines().any(|l| l == "c 1:9 rwm"),
            "{unprivileged_list}"
        );
        assert!(!unprivileged_list.contains("1:11"), "{unprivileged_list}");
    }
}

#[tokio::test]
async fn cpu_entitlement_per_share_sets_the_entitlement_in_metrics() {
    // 2 shares at 50 % of a core each: one core, so the entitlement equals the age.
    let server = server_with(&["--cpu-entitlement-per-share", "50"]);
    let c = server
        .client()
        .create(spec("entitled", 2, 0))
        .await
        .expect("create");
    let metrics = c.metrics().await.expect("metrics");
    assert!(metrics.age > 0);
    assert_eq!(metrics.cpu_entitlement, metrics.age as u64);
}

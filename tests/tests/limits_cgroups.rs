//! Memory, CPU and pid limits, metrics and capacity through the Garden API against the Linux
//! backend (as root): each limit is read back and enforced on a workload in the container.

mod limits_support;

use limits_support::*;
use std::time::Duration;
use trellis_core::api::{ContainerSpec, CpuLimits, Limits, MemoryLimits, PidLimits};

fn with_limits(handle: &str, limits: Limits) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        limits,
        ..Default::default()
    }
}

#[tokio::test]
async fn memory_limit_is_read_back_charges_shm_and_ooms_into_info_events() {
    let server = linux_server();
    let client = server.client();
    let limits = Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 64 << 20,
        },
        ..Limits::default()
    };
    let c = client
        .create(with_limits("mem", limits))
        .await
        .expect("create");
    assert_eq!(
        c.current_memory_limits()
            .await
            .expect("limits")
            .limit_in_bytes,
        64 << 20
    );
    // Nothing else was limited: disk and bandwidth read back empty (GATS L4).
    assert_eq!(
        c.current_disk_limits().await.expect("disk"),
        Default::default()
    );
    assert_eq!(
        c.current_bandwidth_limits().await.expect("bandwidth"),
        Default::default()
    );

    let dirs = cgroup_dirs(&server, &c);
    assert!(
        !dirs.is_empty() && dirs.iter().all(|d| d.exists()),
        "{dirs:?}"
    );
    let before = c.metrics().await.expect("metrics").memory_stat;
    ok(&c, "dd if=/dev/zero of=/dev/shm/fits bs=1M count=58").await;
    let after = c.metrics().await.expect("metrics").memory_stat;
    assert!(
        after.total_usage_toward_limit >= before.total_usage_toward_limit + (50 << 20),
        "tmpfs pages count toward the limit: {before:?} -> {after:?}"
    );
    ok(&c, "rm /dev/shm/fits").await;
    let events = c.info().await.expect("info").events.unwrap_or_default();
    assert!(events.is_empty(), "no OOM within the limit: {events:?}");

    let (code, _, _) = sh(&c, "dd if=/dev/zero of=/dev/shm/over bs=1M count=65").await;
    assert_ne!(code, 0, "65 MiB must not fit in 64 MiB");
    let events = eventually("the OOM event", Duration::from_secs(10), || async {
        c.info()
            .await
            .expect("info")
            .events
            .filter(|events| !events.is_empty())
    })
    .await;
    assert_eq!(events, vec!["Out of memory".to_string()]);

    // The partial file keeps the cgroup at its limit, so nothing more runs in it (the OOM
    // killer may take init too); destroy must still clean up.
    client.destroy("mem").await.expect("destroy");
    let left: Vec<_> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "cgroups left after destroy: {left:?}");
}

#[tokio::test]
async fn cpu_limits_are_reported_as_gdn_reports_them_and_usage_moves() {
    let server = linux_server();
    let client = server.client();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let legacy = client
        .create(with_limits(
            "cpu-shares",
            Limits {
                cpu_limits: CpuLimits {
                    weight: 0,
                    limit_in_shares: 50,
                },
                ..Limits::default()
            },
        ))
        .await
        .expect("create");
    let weighted = client
        .create(with_limits(
            "cpu-weight",
            Limits {
                cpu_limits: CpuLimits {
                    weight: 1028,
                    limit_in_shares: 0,
                },
                ..Limits::default()
            },
        ))
        .await
        .expect("create");
    let reported = weighted.current_cpu_limits().await.expect("limits");
    if v2 {
        // GATS L3: the cpu.weight the shares convert to.
        assert_eq!(
            reported,
            CpuLimits {
                weight: 0,
                limit_in_shares: 101
            }
        );
    } else {
        // GATS L2/LM1: shares, weight 0.
        assert_eq!(
            legacy.current_cpu_limits().await.expect("limits"),
            CpuLimits {
                weight: 0,
                limit_in_shares: 50
            }
        );
        assert_eq!(
            reported,
            CpuLimits {
                weight: 0,
                limit_in_shares: 1028
            }
        );
    }

    let before = weighted.metrics().await.expect("metrics");
    ok(
        &weighted,
        "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done",
    )
    .await;
    let after = weighted.metrics().await.expect("metrics");
    assert!(
        after.cpu_stat.usage > before.cpu_stat.usage + 10_000_000,
        "{:?} -> {:?}",
        before.cpu_stat,
        after.cpu_stat
    );
    assert!(after.cpu_stat.user + after.cpu_stat.system > 0);
    // Entitlement grows with age and with shares.
    assert!(after.cpu_entitlement > before.cpu_entitlement, "{after:?}");
    assert!(after.age > before.age);
    let small = legacy.metrics().await.expect("metrics");
    assert!(
        small.cpu_entitlement < after.cpu_entitlement,
        "50 shares are entitled to less than 1028"
    );
}

#[tokio::test]
async fn pid_limit_stops_forks_and_shows_in_metrics() {
    let server = linux_server();
    let client = server.client();
    let limited = client
        .create(with_limits(
            "pids",
            Limits {
                pid_limits: PidLimits { max: 50 },
                ..Limits::default()
            },
        ))
        .await
        .expect("create");
    assert_eq!(limited.metrics().await.expect("metrics").pid_stat.max, 50);
    // GATS LM20's workload.
    let (code, _, err) = sh(
        &limited,
        "for i in $(seq 1 50); do /bin/sleep 2 & done; kill $(jobs -p) 2>/dev/null; exit 2",
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("can't fork"), "{err}");

    // 0 means no limit (GATS LM21, M4).
    let free = client
        .create(with_limits("no-pids", Limits::default()))
        .await
        .expect("create");
    let out = ok(
        &free,
        "for i in $(seq 1 60); do sleep 5 & done; ps | wc -l; kill $(jobs -p)",
    )
    .await;
    assert!(out.trim().parse::<u32>().expect("a count") > 60, "{out}");
    let metrics = free.metrics().await.expect("metrics");
    assert_eq!(metrics.pid_stat.max, 0);
    assert!(metrics.pid_stat.current >= 1, "init: {metrics:?}");
}

#[tokio::test]
async fn bulk_metrics_has_entries_for_known_and_unknown_handles() {
    let server = linux_server();
    let client = server.client();
    let c = client
        .create(with_limits("bulk", Limits::default()))
        .await
        .expect("create");
    ok(&c, "echo hello > /tmp/x").await;
    let entries = client
        .bulk_metrics(&["bulk", "no-such-container"])
        .await
        .expect("bulk metrics");
    let known = &entries["bulk"];
    assert!(known.err.is_none(), "{known:?}");
    assert!(known.metrics.memory_stat.total_usage_toward_limit > 0);
    assert!(known.metrics.pid_stat.current >= 1);
    assert!(known.metrics.age > 0);
    let unknown = entries["no-such-container"]
        .err
        .as_ref()
        .expect("an error entry");
    assert_eq!(unknown.kind, "ContainerNotFoundError");
}

#[tokio::test]
async fn capacity_reports_memory_and_the_depots_disk() {
    let server = linux_server();
    let capacity = server.client().capacity().await.expect("capacity");
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let mem_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().strip_suffix("kB"))
        .and_then(|k| k.trim().parse().ok())
        .expect("MemTotal");
    assert_eq!(capacity.memory_in_bytes, mem_kb * 1024);
    assert!(capacity.disk_in_bytes > 0);
    assert!(capacity.schedulable_disk_in_bytes > 0);
    assert!(capacity.schedulable_disk_in_bytes <= capacity.disk_in_bytes);
    assert!(capacity.max_containers > 0);
}

//! Limits and metrics of real containers through the Linux host (as root): each limit is
//! enforced on a workload inside the container, metrics move with the workload, and nothing
//! (cgroup, mount, loop device) outlives the container.

mod support;

use std::sync::mpsc;
use std::time::Duration;
use support::*;
use trellis_core::api::{
    CpuLimits, DiskLimits, DiskScope, ImageRef, Limits, MemoryLimits, PidLimits,
};
use trellis_core::effect::Observation;
use trellis_os::Host;

fn create_limited(t: &TestHost, handle: &str, limits: &Limits) {
    t.host
        .prepare_rootfs(handle, &ImageRef::default(), false, &limits.disk_limits)
        .expect("prepare rootfs");
    t.host
        .create_cgroup(handle, limits, false)
        .expect("create cgroup");
    t.host
        .start_init(handle, &init_config(handle, vec![]))
        .expect("start init");
}

fn mounted(path: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|l| l.split_whitespace().nth(4) == path.to_str())
}

#[test]
fn memory_limit_charges_shm_kills_beyond_it_and_reports_the_oom() {
    let t = host("limits-memory");
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    t.host.watch_events(Box::new(move |o| {
        let _ = tx.lock().expect("sender").send(o);
    }));
    let handle = "mem";
    let limits = Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 64 << 20,
        },
        ..Limits::default()
    };
    create_limited(&t, handle, &limits);
    let before = t.host.read_metrics(handle).expect("metrics");
    t.ok(handle, "dd if=/dev/zero of=/dev/shm/fits bs=1M count=58");
    let after = t.host.read_metrics(handle).expect("metrics");
    assert!(
        after.memory_stat.total_usage_toward_limit
            >= before.memory_stat.total_usage_toward_limit + (50 << 20),
        "the shm pages are the container's: {before:?} -> {after:?}"
    );
    t.ok(handle, "rm /dev/shm/fits");
    assert!(rx.try_recv().is_err(), "no OOM within the limit");

    let (code, _, _) = t.run(
        handle,
        sh("dd if=/dev/zero of=/dev/shm/over bs=1M count=65"),
    );
    assert_ne!(code, 0, "65 MiB does not fit in 64 MiB");
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).expect("an OOM"),
        Observation::OutOfMemory {
            handle: handle.into()
        }
    );
    t.destroy(handle);
    assert!(!t.host.cgroups.exists(handle));
}

#[test]
fn pid_limit_stops_forks_inside_the_container() {
    let t = host("limits-pids");
    let handle = "pids";
    let limits = Limits {
        pid_limits: PidLimits { max: 20 },
        ..Limits::default()
    };
    create_limited(&t, handle, &limits);
    let (code, _, err) = t.run(
        handle,
        sh("for i in $(seq 1 30); do sleep 5 & done; kill $(jobs -p) 2>/dev/null; exit 0"),
    );
    assert!(err.contains("can't fork"), "exit {code}: {err}");
    let metrics = t.host.read_metrics(handle).expect("metrics");
    assert_eq!(metrics.pid_stat.max, 20);
    assert!(metrics.pid_stat.current >= 1, "init at least: {metrics:?}");
    t.destroy(handle);
}

#[test]
fn cpu_metrics_move_with_the_workload() {
    let t = host("limits-cpu");
    let handle = "cpu";
    let limits = Limits {
        cpu_limits: CpuLimits {
            weight: 1024,
            limit_in_shares: 0,
        },
        ..Limits::default()
    };
    create_limited(&t, handle, &limits);
    let before = t.host.read_metrics(handle).expect("metrics");
    t.ok(handle, "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done");
    let after = t.host.read_metrics(handle).expect("metrics");
    assert!(
        after.cpu_stat.usage > before.cpu_stat.usage + 10_000_000,
        "{:?} -> {:?}",
        before.cpu_stat,
        after.cpu_stat
    );
    assert!(
        after.cpu_entitlement > 0,
        "the host reports the entitlement rate"
    );
    t.destroy(handle);
}

#[test]
fn disk_limit_gives_enospc_inside_and_usage_tracks_writes() {
    let t = host("limits-disk");
    let handle = "disk";
    let limits = Limits {
        disk_limits: DiskLimits {
            byte_hard: 10 << 20,
            scope: DiskScope::Exclusive,
            ..DiskLimits::default()
        },
        ..Limits::default()
    };
    create_limited(&t, handle, &limits);
    let scratch = t.host.layout.scratch_dir(handle);
    assert!(
        mounted(&scratch),
        "the scratch dir is a filesystem of its own"
    );
    let fresh = t.host.read_metrics(handle).expect("metrics").disk_stat;
    t.ok(
        handle,
        "dd if=/dev/zero of=/root/nine bs=1M count=9 && sync",
    );
    let used = t.host.read_metrics(handle).expect("metrics").disk_stat;
    let grown = used.exclusive_bytes_used - fresh.exclusive_bytes_used;
    assert!(
        (9 << 20..10 << 20).contains(&grown),
        "{fresh:?} -> {used:?}"
    );
    assert!(
        used.total_bytes_used > used.exclusive_bytes_used,
        "{used:?}"
    );
    let (code, _, err) = t.run(handle, sh("dd if=/dev/zero of=/root/two bs=1M count=2"));
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    // As another user too: one limit per container.
    let (code, _, err) = t.run(
        handle,
        sh_as("vcap", "dd if=/dev/zero of=/home/vcap/more bs=1M count=2"),
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("No space left on device"), "{err}");

    let image = t.host.layout.scratch_image(handle);
    t.destroy(handle);
    assert!(!mounted(&scratch));
    assert!(!image.exists());
}

#[test]
fn total_disk_limit_smaller_than_the_image_fails_the_create() {
    let t = host("limits-disk-small");
    let handle = "tiny";
    let err = t
        .host
        .prepare_rootfs(
            handle,
            &ImageRef::default(),
            false,
            &DiskLimits {
                byte_hard: 4096,
                scope: DiskScope::Total,
                ..DiskLimits::default()
            },
        )
        .expect_err("the busybox image is bigger than 4 KiB");
    assert_eq!(err.to_string(), "disk limit is smaller than volume size");
    t.host.remove_rootfs(handle).expect("teardown");
    assert!(!t.host.layout.container_dir(handle).exists());
}

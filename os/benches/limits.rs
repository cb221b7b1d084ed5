//! Limits benchmark (as root): creates N busybox containers through the Linux host (memory,
//! CPU and pid limits; some with a disk limit), then prints
//! - how long a BulkMetrics-sized sweep of `read_metrics` over all of them takes (sequential,
//!   as one worker would do it, and split over the machine's cores),
//! - create and destroy times, with and without a disk limit.
//!
//! `cargo bench -p trellis-os --bench limits [-- CONTAINERS [DISK_LIMITED]]` (default 250, 25).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;
use trellis_core::api::{
    CpuLimits, DiskLimits, DiskScope, ImageRef, Limits, MemoryLimits, PidLimits,
};

fn limits(disk: bool) -> Limits {
    Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 128 << 20,
        },
        cpu_limits: CpuLimits {
            weight: 512,
            limit_in_shares: 0,
        },
        pid_limits: PidLimits { max: 100 },
        disk_limits: if disk {
            DiskLimits {
                byte_hard: 100 << 20,
                scope: DiskScope::Exclusive,
                ..DiskLimits::default()
            }
        } else {
            DiskLimits::default()
        },
        ..Limits::default()
    }
}

fn create(t: &TestHost, handle: &str, limits: &Limits) -> Duration {
    let started = Instant::now();
    t.host
        .prepare_rootfs(handle, &ImageRef::default(), false, &limits.disk_limits)
        .expect("prepare rootfs");
    t.host
        .create_cgroup(handle, limits, false)
        .expect("create cgroup");
    t.host
        .start_init(handle, &init_config(handle, vec![]))
        .expect("start init");
    started.elapsed()
}

/// Destroy time and its steps: (total, kill, cgroup, rootfs).
fn destroy(t: &TestHost, handle: &str) -> [Duration; 4] {
    let started = Instant::now();
    t.host.kill_container(handle).expect("kill container");
    let killed = started.elapsed();
    t.host.remove_cgroup(handle).expect("remove cgroup");
    let cgroup = started.elapsed() - killed;
    t.host.remove_rootfs(handle).expect("remove rootfs");
    let total = started.elapsed();
    [total, killed, cgroup, total - killed - cgroup]
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let index = ((samples.len() - 1) as f64 * p).round() as usize;
    samples[index]
}

fn report(what: &str, samples: &mut [Duration]) {
    println!(
        "{what}: n={} p50={:.1?} p90={:.1?} max={:.1?}",
        samples.len(),
        percentile(samples, 0.5),
        percentile(samples, 0.9),
        percentile(samples, 1.0)
    );
}

/// CPU time this thread has used (the machine is shared, so wall time includes waiting).
fn thread_cpu_time() -> Duration {
    let mut ts = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn sweep(t: &TestHost, handles: &[String], threads: usize) -> Duration {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for chunk in handles.chunks(handles.len().div_ceil(threads)) {
            scope.spawn(move || {
                for handle in chunk {
                    let metrics = t.host.read_metrics(handle).expect("metrics");
                    assert!(metrics.pid_stat.current >= 1, "{handle} has its init");
                }
            });
        }
    });
    started.elapsed()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let containers = args.first().copied().unwrap_or(250);
    let disk_limited = args.get(1).copied().unwrap_or(25).min(containers);
    let t = host("bench-limits");

    let mut plain_create = Vec::new();
    let mut disk_create = Vec::new();
    let handles: Vec<String> = (0..containers).map(|i| format!("bench-{i}")).collect();
    for (i, handle) in handles.iter().enumerate() {
        let disk = i < disk_limited;
        let took = create(&t, handle, &limits(disk));
        if disk {
            disk_create.push(took);
        } else {
            plain_create.push(took);
        }
    }
    // Every container wrote a little, as live ones do.
    for handle in handles.iter().take(disk_limited + 5) {
        t.ok(handle, "echo hello > /root/file");
    }

    type Read<'a> = &'a dyn Fn(&str);
    let parts: [(&str, Read); 3] = [
        ("cgroups.metrics", &|h| {
            let _ = std::hint::black_box(t.host.cgroups.metrics(h).expect("cgroup"));
        }),
        ("rootfs.disk_usage", &|h| {
            let _ = std::hint::black_box(t.host.rootfs.disk_usage(h).expect("disk"));
        }),
        ("read_metrics", &|h| {
            let _ = std::hint::black_box(t.host.read_metrics(h).expect("metrics"));
        }),
    ];
    for (label, read) in parts {
        let mut wall = Vec::new();
        let mut cpu = Vec::new();
        for _ in 0..20 {
            let (started, cpu_started) = (Instant::now(), thread_cpu_time());
            for handle in &handles {
                read(handle);
            }
            wall.push(started.elapsed());
            cpu.push(thread_cpu_time() - cpu_started);
        }
        report(
            &format!("{label} of {containers} containers, wall"),
            &mut wall,
        );
        report(
            &format!("{label} of {containers} containers, CPU"),
            &mut cpu,
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sweeps: Vec<Duration> = (0..20).map(|_| sweep(&t, &handles, cores)).collect();
    report(
        &format!("read_metrics of {containers} containers, parallel ({cores} thread(s))"),
        &mut sweeps,
    );

    let mut plain_destroy = vec![Vec::new(); 4];
    let mut disk_destroy = vec![Vec::new(); 4];
    for (i, handle) in handles.iter().enumerate() {
        let steps = destroy(&t, handle);
        let into = if i < disk_limited {
            &mut disk_destroy
        } else {
            &mut plain_destroy
        };
        for (samples, took) in into.iter_mut().zip(steps) {
            samples.push(took);
        }
    }
    report(
        "create (rootfs + cgroup + init), no disk limit",
        &mut plain_create,
    );
    report(
        "create (rootfs + cgroup + init), 100 MiB disk limit",
        &mut disk_create,
    );
    for (label, samples) in [
        ("no disk limit", &mut plain_destroy),
        ("100 MiB disk limit", &mut disk_destroy),
    ] {
        for (step, samples) in ["destroy", "  kill", "  remove cgroup", "  remove rootfs"]
            .iter()
            .zip(samples.iter_mut())
        {
            report(&format!("{step}, {label}"), samples);
        }
    }
}

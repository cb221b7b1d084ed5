//! Nothing leaks across 1,000 full create/run/destroy cycles: mounts, cgroups, processes,
//! files, network namespaces and links are counted before and after (as root).

mod support;

use std::io::Read;
use std::time::Instant;
use support::*;
use trellis_core::api::{BandwidthLimits, Limits};
use trellis_core::effect::NetworkConfig;
use trellis_core::network::NetworkAssignment;
use trellis_os::Host;

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    mounts: usize,
    cgroups: usize,
    processes: usize,
    files: usize,
    links: usize,
    netns: usize,
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                        count_files(&e.path())
                    } else {
                        0
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

fn counts(t: &TestHost) -> Counts {
    let lines = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    Counts {
        mounts: lines("/proc/self/mountinfo"),
        cgroups: t.host.cgroups.handles().unwrap().len(),
        // Our children: a leaked init (or its zombie) is reparented to us, the subreaper.
        processes: std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(std::process::id())
            })
            .count(),
        files: count_files(&t.host.layout.depot) + count_files(&t.host.layout.run),
        links: std::fs::read_dir("/sys/class/net").unwrap().count(),
        netns: count_files(&t.host.layout.run.join("netns")),
    }
}

fn cycle(t: &TestHost, handle: &str) {
    let timing = std::env::var("TRELLIS_LEAK_TIMING").is_ok();
    let mut last = Instant::now();
    let mut step = |name: &str| {
        if timing {
            println!("{name}: {:?}", last.elapsed());
        }
        last = Instant::now();
    };
    let assignment = NetworkAssignment {
        subnet: "10.213.7.0/30".parse().unwrap(),
        container_ip: "10.213.7.1".parse().unwrap(),
    };
    t.host
        .prepare_rootfs(handle, &Default::default(), false, &Default::default())
        .unwrap();
    step("prepare_rootfs");
    t.host
        .create_cgroup(handle, &Limits::default(), false)
        .unwrap();
    step("create_cgroup");
    t.host
        .setup_network(
            handle,
            &NetworkConfig {
                assignment,
                port_mappings: vec![],
                netout_rules: vec![],
                bandwidth: BandwidthLimits::default(),
                privileged: false,
            },
        )
        .unwrap();
    step("setup_network");
    t.host
        .start_init(handle, &init_config(handle, vec![]))
        .unwrap();
    step("start_init");
    let spawned = t.spawn(handle, sh("echo hi"), &[]).unwrap();
    let mut out = String::new();
    let mut spawned = spawned;
    spawned.stdout.read_to_string(&mut out).unwrap();
    assert_eq!((spawned.wait(), out.as_str()), (0, "hi\n"));
    // A process still running at destroy goes with the container.
    step("run");
    let _left_running = t.spawn(handle, sh("sleep 1000"), &[]).unwrap();
    t.host.kill_container(handle).unwrap();
    step("kill_container");
    t.host.teardown_network(handle, Some(&assignment)).unwrap();
    step("teardown_network");
    t.host.remove_cgroup(handle).unwrap();
    step("remove_cgroup");
    t.host.remove_rootfs(handle).unwrap();
    step("remove_rootfs");
}

#[test]
fn a_thousand_create_destroy_cycles_leak_nothing() {
    let cycles: usize = std::env::var("TRELLIS_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = host("leaks");
    // Warm up: the image cache, the bridge's first use, the cgroup parent.
    for i in 0..3 {
        cycle(&t, &format!("warm-{i}"));
    }
    t.host.settle();
    let before = counts(&t);
    let start = Instant::now();
    for i in 0..cycles {
        cycle(&t, &format!("leak-{i}"));
    }
    let elapsed = start.elapsed();
    // Network namespaces (and the veths in them) are freed by the kernel asynchronously.
    // The deferred part of the removals (links, chains: see Networker::teardown).
    t.host.settle();
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let mut after = counts(&t);
    while after != before && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        after = counts(&t);
    }
    println!(
        "{cycles} create/run/destroy cycles in {:.1} s ({:.1} ms each); before {before:?}, after {after:?}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64
    );
    assert_eq!(before, after);
    let observed = t.host.observe().unwrap();
    assert!(observed.containers.is_empty(), "left behind: {observed:?}");
}

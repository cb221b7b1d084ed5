//! The cgroup component against the host's real cgroups (its own mode: v1 on the CI machine),
//! as root. Each test uses a parent cgroup of its own and removes it.

mod common;

use common::*;
use std::sync::mpsc;
use std::time::Duration;
use trellis_core::api::{CpuLimits, Limits, MemoryLimits, PidLimits};
use trellis_core::effect::Observation;
use trellis_os::linux::cgroup::{CgroupOptions, Cgroups, Mode};

fn cgroups(test: &str) -> Cgroups {
    Cgroups::with_options(CgroupOptions::new(unique_parent(test))).expect("cgroups")
}

/// The cgroup paths a process is in, from /proc/<pid>/cgroup.
fn cgroup_lines(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .expect("read /proc/pid/cgroup")
        .lines()
        .map(str::to_string)
        .collect()
}

fn memory_limits(bytes: u64) -> Limits {
    Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: bytes,
        },
        ..Limits::default()
    }
}

#[test]
fn create_place_list_and_remove() {
    let cg = cgroups("lifecycle");
    let _guard = ParentGuard(&cg);
    let handle = "lifecycle-1";
    assert!(!cg.exists(handle));
    cg.create(handle, &Limits::default(), false)
        .expect("create");
    cg.create(handle, &Limits::default(), false)
        .expect("create again is fine");
    assert!(cg.exists(handle));
    assert_eq!(cg.handles().expect("handles"), vec![handle.to_string()]);
    assert!(cg.pids(handle).expect("pids").is_empty());

    // A process and a grandchild in a nested cgroup (as peas would be) are both listed.
    let mut child = spawn_in(&cg, handle, &["sh", "-c", "sleep 1000 & sleep 1000"]);
    let lines = cgroup_lines(child.id());
    let suffix = format!("/{handle}");
    let placed: Vec<_> = lines.iter().filter(|l| l.ends_with(&suffix)).collect();
    match cg.mode() {
        Mode::V1 => {
            for controller in ["memory", "cpu", "cpuacct", "pids", "devices", "freezer"] {
                assert!(
                    placed.iter().any(|l| l
                        .split(':')
                        .nth(1)
                        .is_some_and(|c| c.split(',').any(|c| c == controller))),
                    "not in the {controller} cgroup: {lines:?}"
                );
            }
        }
        Mode::V2 => assert_eq!(placed.len(), 1, "{lines:?}"),
    }
    wait_for("both sleeps", Duration::from_secs(5), || {
        cg.pids(handle).expect("pids").len() >= 3
    });
    let pids = cg.pids(handle).expect("pids");
    assert!(pids.contains(&child.id()), "{pids:?}");

    // Remove kills everything inside, then the cgroup goes from every hierarchy.
    cg.remove(handle).expect("remove");
    let status = child.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!cg.exists(handle));
    assert!(cg.handles().expect("handles").is_empty());
    cg.remove(handle).expect("removing again is fine");
    assert!(cg
        .pids(handle)
        .expect("pids of a missing cgroup")
        .is_empty());
}

#[test]
fn a_process_moves_itself_into_every_hierarchy() {
    let cg = cgroups("self-placement");
    let _guard = ParentGuard(&cg);
    let handle = "self-1";
    cg.create(handle, &Limits::default(), false)
        .expect("create");
    let Some(files) = cg.self_placement_files(handle).expect("placement") else {
        assert_eq!(cg.mode(), Mode::V2, "only v2 leaves the move to the server");
        return;
    };
    // A shell (one thread) writes `0`, itself, into each file, then says so and sleeps.
    let moves: String = files
        .iter()
        .map(|f| format!("echo 0 > {} && ", f.display()))
        .collect();
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{moves}echo placed && exec sleep 1000"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
        &mut said,
    )
    .expect("read");
    assert_eq!(said, "placed\n");
    let lines = cgroup_lines(child.id());
    let suffix = format!("/{handle}");
    // Every v1 hierarchy the process is in (`0::` is a hybrid host's cgroup2 line).
    let hierarchies = lines.iter().filter(|l| !l.starts_with("0::")).count();
    let placed = lines.iter().filter(|l| l.ends_with(&suffix)).count();
    assert_eq!(placed, hierarchies, "{lines:?}");
    assert!(
        cg.pids(handle).expect("pids").contains(&child.id()),
        "{lines:?}"
    );
    cg.remove(handle).expect("remove");
    child.wait().expect("reap");
}

#[test]
fn remove_stops_a_fork_loop() {
    let cg = cgroups("forkloop");
    let _guard = ParentGuard(&cg);
    let handle = "forkloop-1";
    cg.create(
        handle,
        &Limits {
            pid_limits: PidLimits { max: 200 },
            ..Limits::default()
        },
        false,
    )
    .expect("create");
    let mut child = spawn_in(&cg, handle, &["sh", "-c", "while :; do sleep 100 & done"]);
    wait_for("the loop to fork", Duration::from_secs(5), || {
        cg.pids(handle).expect("pids").len() > 20
    });
    cg.remove(handle).expect("remove");
    child.wait().expect("reap");
    assert!(!cg.exists(handle));
}

#[test]
fn bad_handles_are_refused() {
    let cg = cgroups("names");
    let _guard = ParentGuard(&cg);
    assert!(cg.create("../escape", &Limits::default(), false).is_err());
    assert!(cg.create("", &Limits::default(), false).is_err());
    assert!(cg.metrics("nope").is_err(), "no cgroup, no metrics");
}

/// Where our parent cgroup is, in every hierarchy.
fn parent_dirs(cg: &Cgroups, parent: &str) -> Vec<std::path::PathBuf> {
    match cg.mode() {
        Mode::V2 => vec![std::path::Path::new("/sys/fs/cgroup").join(parent)],
        Mode::V1 => std::fs::read_dir("/sys/fs/cgroup")
            .expect("list hierarchies")
            .flatten()
            .map(|e| e.path().join(parent))
            .filter(|p| p.is_dir())
            .collect(),
    }
}

/// A handle naming one of the parent's control files would make its cgroup collide with that
/// file; such a name is refused, and never taken for a cgroup when looking or removing (a
/// create of one failing half-way could otherwise never be rolled back).
#[test]
fn names_of_control_files_are_never_cgroups() {
    let parent = unique_parent("control-files");
    let cg = Cgroups::with_options(CgroupOptions::new(parent.clone())).expect("cgroups");
    let _guard = ParentGuard(&cg);
    cg.create("ordinary", &Limits::default(), false)
        .expect("create");
    let dirs = parent_dirs(&cg, &parent);
    assert!(!dirs.is_empty());
    for name in [
        "tasks",
        "cgroup.procs",
        "notify_on_release",
        "memory.limit_in_bytes",
        "pids.max",
    ] {
        let error = cg.create(name, &Limits::default(), false).expect_err(name);
        assert!(
            error.to_string().contains("cgroup control file"),
            "{name}: {error}"
        );
        assert!(!cg.exists(name), "{name}");
        assert!(cg.pids(name).expect("pids").is_empty(), "{name}");
        cg.remove(name).expect("nothing to remove");
    }
    // The parent's own files are untouched, and nothing new appeared.
    for dir in &dirs {
        assert!(
            dir.join("tasks").is_file() || dir.join("cgroup.procs").is_file(),
            "{}",
            dir.display()
        );
    }
    assert_eq!(cg.handles().expect("handles"), ["ordinary"]);

    // A directory under such a name (made by an older server) is still a cgroup to remove.
    for dir in &dirs {
        std::fs::create_dir(dir.join("memory.legacy")).expect("make a legacy cgroup");
    }
    assert!(cg.exists("memory.legacy"));
    cg.remove("memory.legacy").expect("remove");
    assert!(!cg.exists("memory.legacy"));
    cg.remove("ordinary").expect("remove");
}

#[test]
fn memory_limit_is_enforced_with_swap_capped_and_reported_as_oom() {
    let cg = cgroups("memory");
    let _guard = ParentGuard(&cg);
    let (tx, rx) = mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    cg.watch_oom(Box::new(move |o| {
        let _ = tx.lock().expect("sender").send(o);
    }));
    let handle = "memory-1";
    cg.create(handle, &memory_limits(64 << 20), false)
        .expect("create");

    // Within the limit: 58 MiB of tmpfs pages are charged and fit.
    let fits = TempPath(format!("/dev/shm/{}-fits", unique_parent("shm")).into());
    let (code, _, err) = run_in(
        &cg,
        handle,
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", fits.0.display()),
            "bs=1M",
            "count=58",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let metrics = cg.metrics(handle).expect("metrics");
    assert!(
        metrics.memory_stat.total_usage_toward_limit >= 58 << 20,
        "tmpfs pages count: {:?}",
        metrics.memory_stat
    );
    if cg.mode() == Mode::V1 {
        assert_eq!(metrics.memory_stat.hierarchical_memory_limit, 64 << 20);
        assert_eq!(metrics.memory_stat.hierarchical_memsw_limit, 64 << 20);
    }
    assert!(rx.try_recv().is_err(), "no OOM yet");
    drop(fits);

    // Beyond it: the writer is killed (swap cannot absorb it) and the OOM is reported.
    let over = TempPath(format!("/dev/shm/{}-over", unique_parent("shm")).into());
    let (code, _, _) = run_in(
        &cg,
        handle,
        &[
            "dd",
            "if=/dev/zero",
            &format!("of={}", over.0.display()),
            "bs=1M",
            "count=65",
        ],
    );
    assert_ne!(code, Some(0), "65 MiB must not fit in 64 MiB");
    let observation = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("an OOM observation");
    assert_eq!(
        observation,
        Observation::OutOfMemory {
            handle: handle.to_string()
        }
    );
    drop(over);
    cg.remove(handle).expect("remove");
}

#[test]
fn pid_limit_stops_forks_and_shows_in_metrics() {
    let cg = cgroups("pids");
    let _guard = ParentGuard(&cg);
    let handle = "pids-1";
    cg.create(
        handle,
        &Limits {
            pid_limits: PidLimits { max: 10 },
            ..Limits::default()
        },
        false,
    )
    .expect("create");
    let metrics = cg.metrics(handle).expect("metrics");
    assert_eq!(metrics.pid_stat.max, 10);
    let (code, _, err) = run_in(
        &cg,
        handle,
        &[
            "sh",
            "-c",
            "for i in $(seq 1 20); do sleep 5 & done; kill $(jobs -p); wait",
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        err.contains("fork") || err.contains("Resource temporarily unavailable"),
        "{err}"
    );

    // No limit: Max reads 0 and forks succeed.
    let free = "pids-2";
    cg.create(free, &Limits::default(), false).expect("create");
    let mut sleeper = spawn_in(&cg, free, &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    wait_for("three processes", Duration::from_secs(5), || {
        cg.metrics(free).expect("metrics").pid_stat.current == 3
    });
    assert_eq!(cg.metrics(free).expect("metrics").pid_stat.max, 0);
    cg.remove(free).expect("remove");
    sleeper.wait().expect("reap");
    cg.remove(handle).expect("remove");
}

#[test]
fn cpu_shares_are_written_and_usage_moves() {
    let cg = cgroups("cpu");
    let _guard = ParentGuard(&cg);
    let handle = "cpu-1";
    let limits = Limits {
        cpu_limits: CpuLimits {
            weight: 512,
            limit_in_shares: 0,
        },
        ..Limits::default()
    };
    cg.create(handle, &limits, false).expect("create");
    let before = cg.metrics(handle).expect("metrics");
    assert_eq!(before.cpu_stat.usage, 0);
    let expected_rate = trellis_os::linux::cgroup::entitlement_per_second(
        match cg.mode() {
            Mode::V1 => 512,
            // What guardian computes back from cpu.weight.
            Mode::V2 => trellis_os::linux::cgroup::weight_to_shares(
                trellis_os::linux::cgroup::shares_to_weight(512),
            ),
        },
        trellis_os::linux::cgroup::default_entitlement_per_share(
            std::thread::available_parallelism().expect("cpus").get() as u64,
            trellis_os::linux::cgroup::mem_total().expect("memory"),
        ),
    );
    assert_eq!(before.cpu_entitlement, expected_rate);

    let (code, _, err) = run_in(
        &cg,
        handle,
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let after = cg.metrics(handle).expect("metrics");
    assert!(after.cpu_stat.usage > 10_000_000, "{:?}", after.cpu_stat);
    assert!(
        after.cpu_stat.user + after.cpu_stat.system > 0,
        "{:?}",
        after.cpu_stat
    );
    assert!(after.memory_stat.pgfault > 0, "{:?}", after.memory_stat);
    cg.remove(handle).expect("remove");
}

#[test]
fn out_of_range_limits_mean_no_limit_rather_than_an_error() {
    let cg = cgroups("huge");
    let _guard = ParentGuard(&cg);
    let handle = "huge-1";
    let limits = Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: u64::MAX,
        },
        cpu_limits: CpuLimits {
            weight: u64::MAX,
            limit_in_shares: 0,
        },
        pid_limits: PidLimits { max: u64::MAX },
        ..Limits::default()
    };
    cg.create(handle, &limits, false).expect("create");
    let metrics = cg.metrics(handle).expect("metrics");
    assert_eq!(metrics.pid_stat.max, 0, "unlimited");
    cg.remove(handle).expect("remove");
}

#[test]
fn capacity_reports_the_machines_memory() {
    let cg = cgroups("capacity");
    let capacity = cg.capacity().expect("capacity");
    assert_eq!(
        capacity.memory_in_bytes,
        trellis_os::linux::cgroup::mem_total().expect("memory")
    );
    assert!(capacity.memory_in_bytes > 256 << 20);
}

/// The first creates of a fresh server race to set up the parent cgroup: none may fail (v1
/// refused the parent's device rules once another create's container cgroup existed).
#[test]
fn concurrent_first_creates_all_succeed() {
    for round in 0..5 {
        let cg = cgroups(&format!("race{round}"));
        let _guard = ParentGuard(&cg);
        let start = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            let creates: Vec<_> = (0..8)
                .map(|i| {
                    let (cg, start) = (&cg, &start);
                    s.spawn(move || {
                        start.wait();
                        cg.create(&format!("race{round}-{i}"), &Limits::default(), false)
                    })
                })
                .collect();
            for (i, create) in creates.into_iter().enumerate() {
                let result = create.join().expect("a create thread");
                assert!(result.is_ok(), "round {round}, create {i}: {result:?}");
            }
        });
        for i in 0..8 {
            cg.remove(&format!("race{round}-{i}")).expect("remove");
        }
    }
}

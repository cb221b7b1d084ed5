//! The v2 backend against the kernel's cgroup2 hierarchy, whatever the host's mode: on a
//! unified host that is /sys/fs/cgroup; on a hybrid host (the CI machine) it is the cgroup2
//! mount next to the v1 hierarchies, where the memory, cpu and pids controllers stay bound
//! to v1, so limits needing them must fail clearly there and be enforced where they exist.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;
use trellis_core::api::{Limits, MemoryLimits};
use trellis_os::linux::cgroup::{CgroupConfig, CgroupOptions, Cgroups, Mode};
use trellis_os::linux::security::devices::AllowRule;

fn cgroups(test: &str) -> (Cgroups, PathBuf) {
    cgroups_with(test, CgroupConfig::default())
}

fn cgroups_with(test: &str, config: CgroupConfig) -> (Cgroups, PathBuf) {
    let root = cgroup2_root();
    let parent = unique_parent(test);
    let mut options = CgroupOptions::new(&parent);
    options.config = config;
    options.mode = Some(Mode::V2);
    options.v2_root = root.clone();
    let cg = Cgroups::with_options(options).expect("v2 cgroups");
    (cg, root.join(parent))
}

fn has_controller(root: &std::path::Path, name: &str) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .expect("cgroup.controllers")
        .split_whitespace()
        .any(|c| c == name)
}

#[test]
fn v2_create_place_list_kill_and_remove() {
    let (cg, parent) = cgroups("v2life");
    let _guard = ParentGuard(&cg);
    assert_eq!(cg.mode(), Mode::V2);
    let handle = "v2-1";
    cg.create(handle, &Limits::default(), false)
        .expect("create");
    cg.create(handle, &Limits::default(), false)
        .expect("create again");
    assert!(parent.join(handle).join("cgroup.procs").exists());
    assert_eq!(cg.handles().expect("handles"), vec![handle.to_string()]);

    let mut child = spawn_in(&cg, handle, &["sh", "-c", "sleep 1000 & sleep 1000"]);
    assert_eq!(v2_cgroup_of(child.id()), Some(parent.join(handle)));
    wait_for("both sleeps", Duration::from_secs(5), || {
        cg.pids(handle).expect("pids").len() >= 3
    });
    // Nested cgroups (peas) are included.
    std::fs::create_dir(parent.join(handle).join("nested")).expect("nested cgroup");
    let mut nested = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn");
    std::fs::write(
        parent.join(handle).join("nested/cgroup.procs"),
        nested.id().to_string(),
    )
    .expect("move into nested");
    assert!(cg.pids(handle).expect("pids").contains(&nested.id()));

    // Starting the processes took CPU time, counted even without the cpu controller.
    let metrics = cg.metrics(handle).expect("metrics");
    assert!(metrics.cpu_stat.usage > 0, "{:?}", metrics.cpu_stat);

    cg.remove(handle).expect("remove");
    for process in [&mut child, &mut nested] {
        let status = process.wait().expect("reap");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }
    assert!(!cg.exists(handle));
    assert!(!parent.join(handle).exists());
    cg.remove(handle).expect("remove again");
}

#[test]
fn v2_memory_limit_is_enforced_or_refused_clearly() {
    let (cg, _parent) = cgroups("v2mem");
    let _guard = ParentGuard(&cg);
    let handle = "v2-mem";
    let limits = Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 64 << 20,
        },
        ..Limits::default()
    };
    if !has_controller(&cgroup2_root(), "memory") {
        // Hybrid host: the memory controller is bound to v1.
        let err = cg
            .create(handle, &limits, false)
            .expect_err("no memory controller");
        assert!(
            err.to_string().contains("memory cgroup controller"),
            "{err}"
        );
        assert!(!cg.exists(handle), "a failed create leaves nothing behind");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    cg.watch_oom(Box::new(move |o| {
        let _ = tx.lock().expect("sender").send(o);
    }));
    cg.create(handle, &limits, false).expect("create");
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
    assert_ne!(code, Some(0));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).expect("OOM"),
        trellis_core::effect::Observation::OutOfMemory {
            handle: handle.to_string()
        }
    );
    drop(over);
    cg.remove(handle).expect("remove");
}

/// The device program lets a container's processes open the standard devices and nothing
/// else (on a hybrid host it is enforced too: device programs hang off the cgroup2 tree).
#[test]
fn v2_device_program_allows_only_the_container_devices() {
    let (cg, _parent) = cgroups("v2dev");
    let _guard = ParentGuard(&cg);
    let handle = "v2-dev";
    cg.create(handle, &Limits::default(), false)
        .expect("create");
    // A shell in the cgroup: /dev/null and /dev/urandom open; /dev/kmsg (1:11, only ever
    // read here) and the host's root disk do not.
    let dev = std::fs::metadata("/").expect("stat /");
    let disk = std::fs::read_dir("/dev")
        .expect("/dev")
        .flatten()
        .find(|e| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            e.metadata()
                .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == dev.dev())
        })
        .map(|e| e.path().display().to_string());
    let mut script = String::from(
        "head -c 1 /dev/urandom > /dev/null && echo urandom; \
         echo x > /dev/null && echo null; \
         head -c 1 /dev/kmsg > /dev/null 2>&1 || echo kmsg-denied; ",
    );
    if let Some(disk) = &disk {
        script.push_str(&format!(
            "head -c 1 {disk} > /dev/null 2>&1 || echo disk-denied; "
        ));
    }
    let (code, out, err) = run_in(&cg, handle, &["sh", "-c", &script]);
    assert_eq!(code, Some(0), "{out}{err}");
    let mut expected = "urandom\nnull\nkmsg-denied\n".to_string();
    if disk.is_some() {
        expected.push_str("disk-denied\n");
    }
    assert_eq!(out, expected);
    cg.remove(handle).expect("remove");
}

#[test]
fn v2_device_program_gives_privileged_containers_the_operators_rules() {
    // /dev/urandom read-only (m: inits make the node), for privileged containers only.
    let config = CgroupConfig {
        privileged_device_rules: vec![AllowRule::parse("c 1:9 rm").expect("parses")],
        ..CgroupConfig::default()
    };
    let (cg, _parent) = cgroups_with("v2devrules", config);
    let _guard = ParentGuard(&cg);
    let script = "head -c 1 /dev/urandom > /dev/null && echo urandom-read; \
                  echo x 2>/dev/null > /dev/urandom && echo urandom-written; \
                  echo x > /dev/null && echo null";
    for (handle, privileged, expected) in [
        ("v2-priv", true, "urandom-read\nnull\n"),
        ("v2-unpriv", false, "urandom-read\nurandom-written\nnull\n"),
    ] {
        cg.create(handle, &Limits::default(), privileged)
            .expect("create");
        let (code, out, err) = run_in(&cg, handle, &["sh", "-c", script]);
        assert_eq!(code, Some(0), "{handle}: {out}{err}");
        assert_eq!(out, expected, "{handle}: {err}");
        cg.remove(handle).expect("remove");
    }
}

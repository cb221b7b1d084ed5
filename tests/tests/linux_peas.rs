//! Peas over HTTP (as root): processes with an image of their own (`ProcessSpec.Image`). They
//! share every namespace of their container but the mount one, see their own image with the
//! container's /etc/hosts and /etc/resolv.conf, get their own cgroup only when they override
//! the container's limits, die with their container, and leave nothing behind.

mod linux_support;

use linux_support::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use trellis_core::api::{
    ContainerSpec, ImageRef, Limits, MemoryLimits, ProcessLimits, ProcessSpec, Signal,
};
use trellis_tests::{eventually, images, TestServer};

const MB: u64 = 1024 * 1024;

fn pea_image() -> ImageRef {
    ImageRef {
        uri: images::busybox_tar().display().to_string(),
        ..Default::default()
    }
}

fn pea(script: &str) -> ProcessSpec {
    ProcessSpec {
        image: pea_image(),
        ..sh(script)
    }
}

/// The pea directories of a container (`<depot>/<handle>/peas/*`).
fn pea_dirs(server: &TestServer, handle: &str) -> Vec<PathBuf> {
    std::fs::read_dir(server.depot().join(handle).join("peas"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Pea cgroups (those overriding their container's limits) in every hierarchy.
fn pea_cgroups(server: &TestServer) -> usize {
    trellis_tests::host_objects::count_cgroups(&format!("{}-peas", server.cgroup_parent()))
}

/// Mounts anywhere on the host under `dir`.
fn mounts_under(dir: &Path) -> usize {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir)))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pea_shares_every_namespace_but_the_mount_one() {
    for privileged in [false, true] {
        let c = create(ContainerSpec {
            privileged,
            ..Default::default()
        })
        .await;
        let script = "for ns in mnt net ipc pid user uts; do readlink /proc/self/ns/$ns; done";
        let outside = ok(&c, script).await;
        let inside = run(&c, pea(script)).await;
        assert_eq!(inside.status, 0, "{inside:?}");
        let outside: Vec<&str> = outside.lines().collect();
        let inside: Vec<&str> = inside.stdout.lines().collect();
        assert_eq!(outside.len(), 6);
        assert_ne!(
            outside[0], inside[0],
            "mount namespace (privileged: {privileged})"
        );
        assert_eq!(outside[1..], inside[1..], "privileged: {privileged}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pea_sees_its_own_image_and_the_containers_hosts_and_resolv_conf() {
    let c = create_default().await;
    ok(&c, "echo mine > /container-only").await;
    // Its own copy-on-write root, starting in /, whatever its user's home.
    let out = run(
        &c,
        pea(
            "pwd; ls /container-only 2>&1 || true; echo pea > /pea-only; cat /pea-only; \
             busybox | head -1; echo '10.1.2.3 from-pea' >> /etc/hosts; \
             echo 'search from-pea' >> /etc/resolv.conf",
        ),
    )
    .await;
    assert_eq!(out.status, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "/");
    assert!(lines[1].contains("No such file"), "{out:?}");
    assert_eq!(lines[2], "pea");
    assert!(lines[3].starts_with("BusyBox v"), "{out:?}");
    // What it wrote to its root stays there; the hosts and resolv.conf are the container's.
    let seen = ok(
        &c,
        "ls /pea-only 2>&1 || true; grep from-pea /etc/hosts /etc/resolv.conf",
    )
    .await;
    assert!(seen.contains("No such file"), "{seen}");
    assert!(seen.contains("/etc/hosts:10.1.2.3 from-pea"), "{seen}");
    assert!(seen.contains("/etc/resolv.conf:search from-pea"), "{seen}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peas_user_comes_from_its_images_passwd() {
    let c = create_default().await;
    let as_root = run(&c, pea("id -u; id -g")).await;
    assert_eq!((as_root.status, as_root.stdout.as_str()), (0, "0\n0\n"));
    let as_ids = run(
        &c,
        ProcessSpec {
            user: "1001:1002".into(),
            ..pea("id -u; id -g")
        },
    )
    .await;
    assert_eq!((as_ids.status, as_ids.stdout.as_str()), (0, "1001\n1002\n"));
    let err = run_with(
        &c,
        ProcessSpec {
            user: "invalid-user".into(),
            ..pea("true")
        },
        None,
    )
    .await
    .expect_err("an unknown user");
    assert!(
        err.to_string()
            .contains("unable to find user invalid-user: no matching entries in passwd file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peas_exit_status_output_and_signals_reach_the_client() {
    let c = create_default().await;
    let out = run(&c, pea("echo out; echo err >&2; exit 42")).await;
    assert_eq!(
        (out.status, out.stdout.as_str(), out.stderr.as_str()),
        (42, "out\n", "err\n")
    );
    let echoed = run_with(&c, pea("cat"), Some(b"through stdin".to_vec()))
        .await
        .expect("run");
    assert_eq!(echoed.stdout, "through stdin");

    let (io, collected) = trellis_tests::collect::stdout_collector();
    let mut process = c
        .run(
            pea("trap 'echo term; exit 3' TERM; echo ready; while true; do sleep 0.1; done"),
            io,
        )
        .await
        .expect("run");
    assert!(eventually(Duration::from_secs(20), || async { collected.len() >= 6 }).await);
    process.signal(Signal::Terminate).await.expect("signal");
    assert_eq!(process.wait().await.expect("wait"), 3);
    let (stdout, _) = collected.finish(Duration::from_secs(5)).await;
    assert_eq!(String::from_utf8_lossy(&stdout), "ready\nterm\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_ends_a_peas_process_with_the_containers() {
    let c = create_default().await;
    let script = |status: i32| {
        format!("trap 'exit {status}' TERM; echo ready; while true; do sleep 0.1; done")
    };
    let (io, process_out) = trellis_tests::collect::stdout_collector();
    let mut process = c.run(sh(&script(3)), io).await.expect("run");
    let (io, pea_out) = trellis_tests::collect::stdout_collector();
    let mut pea_process = c.run(pea(&script(4)), io).await.expect("run");
    // Stop only once both trap TERM.
    assert!(
        eventually(Duration::from_secs(20), || async {
            process_out.len() >= 6 && pea_out.len() >= 6
        })
        .await
    );
    c.stop(false).await.expect("stop");
    assert_eq!(process.wait().await.expect("wait"), 3);
    assert_eq!(pea_process.wait().await.expect("wait"), 4);
    let left = ok(&c, "ps -o comm").await;
    assert!(!left.contains("sleep"), "nothing outlives the stop: {left}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_executable_fails_the_run_and_leaves_no_pea() {
    let c = create_default().await;
    let err = run_with(
        &c,
        ProcessSpec {
            path: "does-not-exist".into(),
            image: pea_image(),
            ..Default::default()
        },
        None,
    )
    .await
    .expect_err("no such executable");
    assert!(
        err.to_string()
            .contains("executable file not found in $PATH"),
        "{err}"
    );
    assert!(pea_dirs(server(), c.handle()).is_empty());
    let err = run_with(
        &c,
        ProcessSpec {
            image: ImageRef {
                uri: "/no/such/image".into(),
                ..Default::default()
            },
            ..sh("true")
        },
        None,
    )
    .await
    .expect_err("no such image");
    assert!(err.to_string().contains("/no/such/image"), "{err}");
    assert!(pea_dirs(server(), c.handle()).is_empty());
    assert_eq!(
        mounts_under(&server().depot().join(c.handle()).join("peas")),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_mounts_need_an_image_and_are_applied_to_a_pea() {
    let c = create_default().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("file"), "from the host").expect("write");
    let bind = trellis_core::api::BindMount {
        src_path: dir.path().display().to_string(),
        dst_path: "/mnt/host".into(),
        ..Default::default()
    };
    let err = run_with(
        &c,
        ProcessSpec {
            bind_mounts: vec![bind.clone()],
            ..sh("true")
        },
        None,
    )
    .await
    .expect_err("bind mounts without an image");
    assert!(err.to_string().contains("bind mounts"), "{err}");
    let out = run(
        &c,
        ProcessSpec {
            bind_mounts: vec![bind],
            ..pea("cat /mnt/host/file")
        },
    )
    .await;
    assert_eq!((out.status, out.stdout.as_str()), (0, "from the host"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pea_shares_its_containers_limits_unless_it_overrides_them() {
    let c = create(ContainerSpec {
        limits: Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 64 * MB,
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let fill = |count: u64| {
        format!("dd if=/dev/zero of=/dev/shm/big bs=1M count={count} 2>/dev/null && echo done")
    };
    // Charged to the container: in its cgroup.
    let container_cgroup = ok(&c, "cat /proc/self/cgroup").await;
    let shared = run(&c, pea("cat /proc/self/cgroup")).await;
    assert_eq!(shared.stdout, container_cgroup);
    // An empty override: a cgroup of its own, without limits.
    let mut free = pea(&format!("{}; cat /proc/self/cgroup", fill(80)));
    free.limits = Some(ProcessLimits::default());
    let out = run(&c, free).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.starts_with("done\n"), "{out:?}");
    assert_ne!(
        out.stdout["done\n".len()..],
        container_cgroup,
        "a cgroup of its own"
    );
    // A memory override: its own cap.
    let mut capped = pea(&fill(48));
    capped.limits = Some(ProcessLimits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 32 * MB,
        },
        ..Default::default()
    });
    let out = run(&c, capped).await;
    assert_ne!(out.status, 0, "{out:?}");
    assert!(!out.stdout.contains("done"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn destroying_the_container_kills_its_peas_and_leaves_nothing() {
    let handle = "pea-destroyed";
    let c = create(ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    })
    .await;
    let (io, collected) = trellis_tests::collect::stdout_collector();
    let mut own = pea("echo up; exec sleep 100000");
    own.limits = Some(ProcessLimits::default());
    let mut first = c.run(own, io).await.expect("run");
    let (io, _) = trellis_tests::collect::stdout_collector();
    let mut second = c.run(pea("exec sleep 100000"), io).await.expect("run");
    assert!(eventually(Duration::from_secs(20), || async { collected.len() >= 3 }).await);
    assert_eq!(pea_dirs(server(), handle).len(), 2);
    assert!(pea_cgroups(server()) >= 1);
    // The host keeps no mount of a running pea's root.
    assert_eq!(
        mounts_under(&server().depot().join(handle)),
        1,
        "only the container's rootfs"
    );

    client().destroy(handle).await.expect("destroy");
    assert_eq!(first.wait().await.expect("wait"), 137);
    assert_eq!(second.wait().await.expect("wait"), 137);
    assert!(!server().depot().join(handle).exists());
    assert!(!std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .any(|e| std::fs::read_to_string(e.path().join("cmdline"))
            .is_ok_and(|c| c.starts_with("sleep\x00100000\x00"))));
    drop(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_pea_survives_a_server_restart_and_is_swept_when_its_keeper_is_gone() {
    let mut server = TestServer::linux();
    let client = server.client();
    let c = client
        .create(ContainerSpec {
            handle: "pea-restart".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (io, collected) = trellis_tests::collect::stdout_collector();
    let mut spec = pea("trap 'echo term; exit 7' TERM; echo up; while true; do sleep 0.1; done");
    spec.id = "kept-pea".into();
    spec.limits = Some(ProcessLimits::default());
    let process = c.run(spec, io).await.expect("run");
    assert!(eventually(Duration::from_secs(20), || async { collected.len() >= 3 }).await);
    drop(process);

    server.kill();
    server.restart();
    let client = server.client();
    let c = client.container("pea-restart");
    let (io, collected) = trellis_tests::collect::stdout_collector();
    let mut process = c
        .attach("kept-pea", io)
        .await
        .expect("attach after restart");
    process.signal(Signal::Terminate).await.expect("signal");
    assert_eq!(process.wait().await.expect("wait"), 7);
    let (stdout, _) = collected.finish(Duration::from_secs(5)).await;
    // "up" went to the first attachment.
    assert_eq!(String::from_utf8_lossy(&stdout), "term\n");
    assert_eq!(
        pea_dirs(&server, "pea-restart").len(),
        1,
        "kept until released"
    );

    client.destroy("pea-restart").await.expect("destroy");
    assert_eq!(pea_cgroups(&server), 0);
    assert_eq!(mounts_under(&server.depot()), 0);
    assert!(!server.depot().join("pea-restart").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn peas_are_confined_as_the_containers_processes() {
    let c = create_default().await;
    let caps = run(
        &c,
        pea("grep -E '^Cap(Eff|Bnd)' /proc/self/status; grep Seccomp: /proc/self/status"),
    )
    .await;
    assert!(
        caps.stdout.contains("CapEff:\t00000000a80425fb"),
        "{caps:?}"
    );
    assert!(caps.stdout.contains("Seccomp:\t2"), "{caps:?}");
    let user = run(
        &c,
        ProcessSpec {
            user: "1000:1000".into(),
            ..pea("grep CapEff /proc/self/status")
        },
    )
    .await;
    assert!(
        user.stdout.contains("CapEff:\t0000000000000000"),
        "{user:?}"
    );
    let unshare = run(&c, pea("unshare -U true")).await;
    assert_ne!(unshare.status, 0, "{unshare:?}");
    // A masked path: the host's /dev/null (or an empty tmpfs) over it.
    let masked = run(&c, pea("wc -c < /proc/timer_list")).await;
    assert_eq!(masked.stdout.trim(), "0", "{masked:?}");
}

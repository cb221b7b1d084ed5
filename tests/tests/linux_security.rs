//! Container root against the host, over HTTP (as root): each attack an unprivileged
//! container's root could try, and what a privileged container still may do.
//!
//! Every probe is harmless if it is not blocked: files are opened for appending and closed
//! without a byte written (`exec 3>>FILE`), mounts are read-only and of the container's own
//! paths, devices are only read. Nothing writes a host sysctl or another server's objects.

mod linux_support;

use linux_support::*;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use trellis_core::api::{BindMount, BindMountMode, BindMountOrigin, ContainerSpec};

/// Host uid and gid of an unprivileged container's root (gdn's "maximus").
const MAXIMUS: u32 = 4294967294;

/// Exits 0 if `file` can be opened for writing (nothing is written), else prints why not.
fn can_open_for_writing(file: &str) -> String {
    format!("(exec 3>>{file}) && echo 'OPENED {file}'")
}

fn privileged() -> ContainerSpec {
    ContainerSpec {
        privileged: true,
        ..Default::default()
    }
}

/// The host's root filesystem's block device (major, minor), as container root would find it.
fn host_root_device() -> (u64, u64) {
    let dev = std::fs::metadata("/").expect("stat /").dev();
    (libc::major(dev) as u64, libc::minor(dev) as u64)
}

/// A copy of the busybox rootfs that `change` may alter, as an image URI.
fn custom_image(name: &str, change: impl FnOnce(&Path)) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("trellis-image-{name}-"))
        .tempdir()
        .expect("a temporary directory");
    let root = dir.path().join("rootfs");
    trellis_tests::images::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(trellis_tests::images::busybox_rootfs())
            .arg(&root),
    );
    change(&root);
    let uri = root.display().to_string();
    (dir, uri)
}

#[tokio::test(flavor = "multi_thread")]
async fn container_root_cannot_open_or_mount_the_hosts_disk() {
    let c = create_default().await;
    let (major, minor) = host_root_device();
    let out = run(
        &c,
        sh(&format!(
            "mkdir -p /tmp/h; mknod /tmp/hd b {major} {minor} && echo MKNOD; \
             head -c 512 /tmp/hd >/dev/null && echo READ; \
             mount -t ext4 -o ro /tmp/hd /tmp/h && echo MOUNTED; \
             ls /tmp/h"
        )),
    )
    .await;
    for success in ["MKNOD", "READ", "MOUNTED"] {
        assert!(
            !out.stdout.contains(success),
            "container root got {success} on the host's disk: {out:?}"
        );
    }
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_root_cannot_change_its_cgroups() {
    let c = create(ContainerSpec {
        limits: trellis_core::api::Limits {
            pid_limits: trellis_core::api::PidLimits { max: 20 },
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let out = run(
        &c,
        sh(&format!(
            "mkdir -p /tmp/m; mount -t cgroup -o pids none /tmp/m && echo MOUNTED; \
             mount -o remount,rw /sys/fs/cgroup/pids && echo REMOUNTED; \
             {}; cat /sys/fs/cgroup/pids/pids.max",
            can_open_for_writing("/sys/fs/cgroup/pids/pids.max")
        )),
    )
    .await;
    assert!(!out.stdout.contains("MOUNTED"), "{out:?}");
    assert!(!out.stdout.contains("OPENED"), "{out:?}");
    // Its own cgroup is the root of its view (a cgroup namespace), limit intact.
    assert!(out.stdout.ends_with("20\n"), "{out:?}");
    let cgroups = ok(&c, "cat /proc/self/cgroup").await;
    assert!(
        cgroups.lines().all(|l| l.ends_with(":/")),
        "the container sees cgroup paths outside its own: {cgroups}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_kernel_settings_and_log_are_out_of_reach() {
    let c = create_default().await;
    let probes: Vec<String> = [
        "/proc/sys/kernel/core_pattern",
        "/proc/sys/kernel/panic",
        "/proc/sys/vm/drop_caches",
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sysrq-trigger",
        "/sys/kernel/uevent_helper",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ]
    .iter()
    .map(|f| can_open_for_writing(f))
    .collect();
    let out = run(
        &c,
        sh(&format!(
            "{}; mount -o remount,rw /sys && echo REMOUNTED; dmesg >/dev/null && echo DMESG; true",
            probes.join("; ")
        )),
    )
    .await;
    assert!(!out.stdout.contains("OPENED"), "{out:?}");
    assert!(!out.stdout.contains("REMOUNTED"), "{out:?}");
    assert!(!out.stdout.contains("DMESG"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unprivileged_containers_get_gdns_user_namespace_capabilities_and_seccomp() {
    let c = create_default().await;
    let maps = ok(&c, "cat /proc/self/uid_map /proc/self/gid_map").await;
    let lines: Vec<Vec<&str>> = maps
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let maximus = vec!["0", "4294967294", "1"];
    let rest = vec!["1", "1", "4294967293"];
    assert_eq!(lines, vec![maximus.clone(), rest.clone(), maximus, rest]);

    let status = |text: &str, field: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // Root, and init itself: the reduced set everywhere.
    for file in ["/proc/self/status", "/proc/1/status"] {
        let s = ok(&c, &format!("cat {file}")).await;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(status(&s, set), "00000000a80425fb", "{file} {set}");
        }
        assert_eq!(status(&s, "CapAmb"), "0000000000000000", "{file}");
        assert_eq!(status(&s, "Seccomp"), "2", "{file}");
    }
    // A non-root user: nothing effective.
    let s = run(&c, sh_as("1000:1000", "cat /proc/self/status"))
        .await
        .stdout;
    assert_eq!(status(&s, "CapInh"), "00000000a80425fb");
    assert_eq!(status(&s, "CapPrm"), "0000000000000000");
    assert_eq!(status(&s, "CapEff"), "0000000000000000");
    assert_eq!(status(&s, "CapBnd"), "00000000a80425fb");
    assert_eq!(status(&s, "NoNewPrivs"), "0");

    // No nested user namespaces (seccomp refuses them, as gdn's profile does), no keyrings.
    let out = run(&c, sh("unshare --user whoami")).await;
    assert_ne!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("Operation not permitted"), "{out:?}");
    // Huge ids are mapped (GATS U1).
    let out = run(&c, sh_as("1000000000:1000000000", "id")).await;
    assert!(
        out.stdout.starts_with("uid=1000000000 gid=1000000000"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proc_and_sys_are_masked_and_read_only_where_runc_masks_them() {
    let c = create_default().await;
    // Masked files read as /dev/null; masked directories are empty.
    let masked = ok(
        &c,
        "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats \
         /proc/timer_stats; do [ -e $f ] && stat -c \"$f %F %t,%T\" $f; done; \
         for d in /proc/acpi /proc/scsi /sys/firmware; do [ -e $d ] && echo \"$d [$(ls -A $d)]\"; done; true",
    )
    .await;
    assert!(
        masked.contains("/proc/keys character special file 1,3"),
        "{masked}"
    );
    for line in masked.lines() {
        assert!(
            line.ends_with("character special file 1,3") || line.ends_with("[]"),
            "not masked: {line}"
        );
    }
    let out = run(
        &c,
        sh(&format!(
            "{}; {}; grep -E '^(sysfs /sys|proc /proc/sys) ' /proc/mounts",
            can_open_for_writing("/proc/sys/kernel/hostname"),
            can_open_for_writing("/proc/sys/net/ipv4/ping_group_range"),
        )),
    )
    .await;
    assert!(!out.stdout.contains("OPENED"), "{out:?}");
    assert!(out.stdout.contains("sysfs /sys sysfs ro,"), "{out:?}");
    assert!(out.stdout.contains("proc /proc/sys proc ro,"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ownership_looks_right_from_inside_and_shifted_on_the_host() {
    let server = server();
    let c = create_default().await;
    // The image's ids as the image has them; root can write /root and chown.
    assert_eq!(
        ok(
            &c,
            "stat -c '%u:%g' / /bin/busybox /etc/passwd /root /home/vcap"
        )
        .await,
        "0:0\n0:0\n0:0\n0:0\n1000:1000\n"
    );
    ok(
        &c,
        "touch /root/potato && chown 1000:1000 /root/potato && mkdir /made-by-root",
    )
    .await;
    // Devices, ptys and the network files are container root's.
    assert_eq!(
        ok(
            &c,
            "stat -L -c '%u' /dev/pts /dev/ptmx /dev/pts/ptmx /etc/hosts /etc/resolv.conf"
        )
        .await,
        "0\n0\n0\n0\n0\n"
    );
    ok(&c, "echo '127.0.0.1 localhost' > /etc/hosts").await;
    let out = run(&c, sh_as("vcap", "echo nonsense > /etc/hosts")).await;
    assert_ne!(out.status, 0);
    assert!(out.stderr.contains("Permission denied"), "{out:?}");
    // A working directory made for a user is theirs.
    assert_eq!(
        run(
            &c,
            trellis_core::api::ProcessSpec {
                dir: "/made/for/vcap".into(),
                ..sh_as("vcap", "stat -c %u .")
            }
        )
        .await
        .stdout,
        "1000\n"
    );
    // Streamed-in files too.
    stream_in(&c, "/streamed", "", tar_of(&[("f", b"x", 0o644)]))
        .await
        .expect("stream in");
    assert_eq!(ok(&c, "stat -c %u /streamed/f").await, "0\n");

    // On the host: the writes landed in the container's layer with shifted ids, the image is
    // untouched.
    let upper = server.depot().join(c.handle()).join("scratch/upper");
    let owner = |p: &str| std::fs::metadata(upper.join(p)).map(|m| (m.uid(), m.gid()));
    assert_eq!(owner("root/potato").unwrap(), (1000, 1000));
    assert_eq!(owner("made-by-root").unwrap(), (MAXIMUS, MAXIMUS));
    assert_eq!(owner("streamed/f").unwrap(), (MAXIMUS, MAXIMUS));
    let image = trellis_tests::images::busybox_rootfs();
    assert!(!image.join("root/potato").exists());
    assert_eq!(std::fs::metadata(image.join("root")).unwrap().uid(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_standard_devices_can_be_used() {
    let c = create_default().await;
    let devices = ok(
        &c,
        "for d in null zero full random urandom tty pts/ptmx; do stat -c \"$d %t,%T\" /dev/$d; done; \
         ls /dev/fuse 2>&1; head -c 1 /dev/urandom | wc -c",
    )
    .await;
    for expected in [
        "null 1,3",
        "zero 1,5",
        "full 1,7",
        "random 1,8",
        "urandom 1,9",
        "tty 5,0",
        "pts/ptmx 5,2",
    ] {
        assert!(devices.contains(expected), "{expected}: {devices}");
    }
    assert!(
        devices.contains("No such file"),
        "unprivileged containers get no fuse: {devices}"
    );
    assert!(devices.ends_with("1\n"), "{devices}");

    // Not even privileged root may open a block device.
    let p = create(privileged()).await;
    let (major, minor) = host_root_device();
    let out = run(
        &p,
        sh(&format!(
            "mknod /tmp/hd b {major} {minor}; head -c 512 /tmp/hd > /dev/null && echo READ; \
             stat -c '%t,%T' /dev/fuse 2>/dev/null"
        )),
    )
    .await;
    assert!(!out.stdout.contains("READ"), "{out:?}");
    if Path::new("/dev/fuse").exists() {
        assert!(
            out.stdout.contains("a,e5"),
            "privileged containers get fuse: {out:?}"
        );
    }
}

/// GATS DV9 (nested Garden, cgroup v1): root in a privileged container sees its cgroup's real
/// path, mounts the devices hierarchy and allows itself every device; an unprivileged
/// container's cgroup beside it still denies all but the standard devices.
#[tokio::test(flavor = "multi_thread")]
async fn a_privileged_container_may_allow_itself_all_devices() {
    let p = create(privileged()).await;
    let other = create_default().await;
    let out = ok(
        &p,
        &format!(
            "line=$(grep ':devices:' /proc/self/cgroup); subdir=${{line##*:}}; \
             mkdir /tmp/devices-cgroup && mount -t cgroup -o devices none /tmp/devices-cgroup && \
             echo a > /tmp/devices-cgroup$subdir/devices.allow && \
             cat /tmp/devices-cgroup$subdir/devices.list; \
             echo ---; cat /tmp/devices-cgroup${{subdir%/*}}/{}/devices.list",
            other.handle()
        ),
    )
    .await;
    let (own, sibling) = out.split_once("---\n").expect("both lists");
    assert_eq!(own, "a *:* rwm\n", "{out}");
    assert!(
        !sibling.contains("a *:*") && sibling.contains("c 1:3 rwm"),
        "the unprivileged sibling must keep its rules: {sibling}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn privileged_containers_keep_their_powers() {
    let c = create(privileged()).await;
    let host_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    // Caps 0-37, less any this host's own bounding set lacks (CAP_SYS_RESOURCE on CI).
    let root_caps = format!("{:016x}", host_bounding & 0x3f_ffff_ffff);
    let s = ok(&c, "grep -E '^Cap(Inh|Prm|Eff|Bnd)' /proc/self/status").await;
    for line in s.lines() {
        assert!(line.ends_with(&root_caps), "{line} (want {root_caps})");
    }
    let s = run(&c, sh_as("1000:1000", "grep -E '^Cap' /proc/self/status"))
        .await
        .stdout;
    assert!(s.contains("CapInh:\t00000000a82425fb"), "{s}");
    assert!(s.contains("CapEff:\t0000000000000000"), "{s}");
    assert!(s.contains("CapBnd:\t00000000a82425fb"), "{s}");
    let out = ok(
        &c,
        "mkdir /tmp/t && mount -t tmpfs tmpfs /tmp/t && echo mounted; \
         cat /proc/self/uid_map; grep -c cgroup /proc/mounts; grep '^proc /proc ' /proc/mounts; \
         grep Seccomp: /proc/self/status",
    )
    .await;
    assert!(out.starts_with("mounted\n"), "{out}");
    assert!(out.contains(" 0 4294967295\n"), "no user namespace: {out}");
    assert!(
        out.contains("\n0\n"),
        "no cgroup mounts in privileged containers: {out}"
    );
    assert!(out.contains("proc /proc proc rw,"), "{out}");
    assert!(out.contains("Seccomp:\t0"), "{out}");
    // Its image is not id-shifted.
    assert_eq!(ok(&c, "stat -c %u /root /bin/busybox").await, "0\n0\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_may_refuse_privileged_containers() {
    let server = trellis_tests::TestServer::start(trellis_tests::ServerOptions {
        extra_args: vec!["--disable-privileged-containers".into()],
        ..trellis_tests::TestServer::linux_options()
    });
    let client = server.client();
    let err = client
        .create(privileged())
        .await
        .expect_err("a privileged create was accepted");
    assert!(
        err.to_string()
            .contains("privileged container creation is disabled"),
        "{err}"
    );
    assert!(client
        .containers(&Default::default())
        .await
        .unwrap()
        .is_empty());
    let c = client
        .create(ContainerSpec::default())
        .await
        .expect("unprivileged");
    client.destroy(c.handle()).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_new_privileges_applies_to_unprivileged_containers_only() {
    let server = trellis_tests::TestServer::start(trellis_tests::ServerOptions {
        extra_args: vec!["--no-new-privileges".into()],
        ..trellis_tests::TestServer::linux_options()
    });
    let client = server.client();
    let c = client
        .create(ContainerSpec::default())
        .await
        .expect("create");
    let out = ok(
        &c,
        "grep NoNewPrivs /proc/self/status /proc/1/status; cat /proc/sys/net/ipv4/ping_group_range",
    )
    .await;
    assert_eq!(
        out,
        "/proc/self/status:NoNewPrivs:\t1\n/proc/1/status:NoNewPrivs:\t1\n1\t65535\n"
    );
    let p = client
        .create(privileged())
        .await
        .expect("create privileged");
    assert_eq!(
        ok(&p, "grep NoNewPrivs /proc/self/status").await,
        "NoNewPrivs:\t0\n"
    );
    for h in [c.handle(), p.handle()] {
        client.destroy(h).await.expect("destroy");
    }
}

/// CVE-2019-5736: the runtime's binary, reached through /proc/<init>/exe, must not be writable.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_binary_cannot_be_overwritten_through_proc() {
    let c = create_default().await;
    let out = run(
        &c,
        sh(&format!(
            "{}; {}; readlink /proc/1/exe",
            can_open_for_writing("/proc/1/exe"),
            can_open_for_writing("/proc/self/fd/../../1/exe"),
        )),
    )
    .await;
    assert!(!out.stdout.contains("OPENED"), "{out:?}");
}

/// CVE-2024-21626: no descriptor of the runtime reaches a process, so none can serve as its
/// working directory.
#[tokio::test(flavor = "multi_thread")]
async fn no_runtime_descriptor_leaks_into_a_process() {
    let c = create_default().await;
    assert_eq!(ok(&c, "ls /proc/self/fd").await, "0\n1\n2\n3\n");
    // A marker only the host has: if a process's working directory were a host directory,
    // walking up from it would find it.
    let marker = tempfile::Builder::new()
        .prefix("trellis-escape-marker-")
        .tempdir_in("/")
        .unwrap();
    let name = marker
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for fd in 3..16 {
        let spec = trellis_core::api::ProcessSpec {
            dir: format!("/proc/self/fd/{fd}"),
            ..sh(&format!(
                "pwd; ls -d ../../../../../../{name} 2>/dev/null; true"
            ))
        };
        // Refusing the working directory is fine; running outside the container is not.
        if let Ok(out) = run_with(&c, spec, None).await {
            assert!(out.stdout.starts_with('/'), "fd {fd}: {out:?}");
            assert!(
                !out.stdout.contains(&name),
                "fd {fd} reached the host: {out:?}"
            );
        }
    }
}

/// CVE-2021-30465: a symlink in the image cannot point a mount outside the container.
#[tokio::test(flavor = "multi_thread")]
async fn bind_mount_targets_resolve_inside_the_container() {
    let outside = tempfile::tempdir().unwrap();
    let outside_path = outside.path().to_path_buf();
    let (_image, uri) = custom_image("symlink", |root| {
        std::os::unix::fs::symlink(&outside_path, root.join("escape")).unwrap();
    });
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("marker"), "from the source").unwrap();
    let c = create(ContainerSpec {
        bind_mounts: vec![BindMount {
            src_path: source.path().display().to_string(),
            dst_path: "/escape/target".into(),
            mode: BindMountMode::ReadOnly,
            origin: BindMountOrigin::Host,
        }],
        ..with_image(&uri)
    })
    .await;
    assert_eq!(ok(&c, "cat /escape/target/marker").await, "from the source");
    // The host path the symlink names got nothing.
    assert!(
        std::fs::read_dir(&outside_path).unwrap().next().is_none(),
        "a mount point was made outside the container"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&outside_path.display().to_string()));
}

/// The CVE-2025-31133 family: the runtime's own mount points and sources cannot be swapped
/// for symlinks by the image.
#[tokio::test(flavor = "multi_thread")]
async fn runtime_mount_points_cannot_be_redirected_by_the_image() {
    // /dev/null as a symlink to a sysctl: masking must still use the real null device.
    let (_image, uri) = custom_image("devnull", |root| {
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", root.join("dev/null")).unwrap();
    });
    let c = create(with_image(&uri)).await;
    let out = run(
        &c,
        sh(&format!(
            "stat -c '%F %t,%T' /proc/keys /dev/null; {}",
            can_open_for_writing("/proc/sys/kernel/core_pattern")
        )),
    )
    .await;
    assert_eq!(
        out.stdout, "character special file 1,3\ncharacter special file 1,3\n",
        "{out:?}"
    );
    // /proc as a symlink: refused with a clear error, nothing left behind.
    let (_image, uri) = custom_image("proc", |root| {
        std::fs::remove_dir_all(root.join("proc")).unwrap();
        std::os::unix::fs::symlink("/sys/kernel", root.join("proc")).unwrap();
    });
    let client = client();
    let err = client
        .create(with_image(&uri))
        .await
        .expect_err("a create with /proc as a symlink");
    assert!(err.to_string().contains("symlink"), "{err}");
}

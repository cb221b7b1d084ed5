//! Disk limits through the Garden API against the Linux backend (as root): the container's
//! writable layer holds exactly what the limit allows, for every user, privileged or not, and
//! usage shows in metrics.

mod limits_support;

use limits_support::*;
use trellis_client::Error;
use trellis_core::api::{ContainerSpec, DiskLimits, DiskScope, Limits};

fn disk(handle: &str, byte_hard: u64, scope: DiskScope, privileged: bool) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        privileged,
        limits: Limits {
            disk_limits: DiskLimits {
                byte_hard,
                scope,
                ..DiskLimits::default()
            },
            ..Limits::default()
        },
        ..Default::default()
    }
}

fn mounts_under(dir: &std::path::Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| std::path::Path::new(m).starts_with(dir))
        .count()
}

#[tokio::test]
async fn exclusive_limit_is_shared_by_users_and_usage_tracks_writes() {
    let server = linux_server();
    let client = server.client();
    let c = client
        .create(disk("excl", 10 << 20, DiskScope::Exclusive, false))
        .await
        .expect("create");
    // Readable back as set (gdn always answers {}; the issue asks for what was set).
    assert_eq!(
        c.current_disk_limits().await.expect("limits"),
        DiskLimits {
            byte_hard: 10 << 20,
            scope: DiskScope::Exclusive,
            ..DiskLimits::default()
        }
    );
    let fresh = c.metrics().await.expect("metrics").disk_stat;
    // GATS LM12: 9 MiB fits.
    ok(&c, "dd if=/dev/zero of=/root/nine bs=1M count=9 && sync").await;
    let used = c.metrics().await.expect("metrics").disk_stat;
    let grown = used.exclusive_bytes_used - fresh.exclusive_bytes_used;
    assert!(
        (9 << 20..10 << 20).contains(&grown),
        "{fresh:?} -> {used:?}"
    );
    assert!(used.total_bytes_used > used.exclusive_bytes_used);
    assert!(used.exclusive_inodes_used > fresh.exclusive_inodes_used);
    // GATS LM16: another user shares the same limit.
    let (code, _, err) = sh_as(
        &c,
        "vcap",
        "dd if=/dev/zero of=/home/vcap/two bs=1M count=2",
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    // Freeing space makes room again.
    ok(
        &c,
        "rm /root/nine && dd if=/dev/zero of=/root/eight bs=1M count=8",
    )
    .await;

    client.destroy("excl").await.expect("destroy");
    assert_eq!(
        mounts_under(&server.depot()),
        0,
        "no mount outlives the container"
    );
}

#[tokio::test]
async fn total_limit_counts_the_image_and_a_too_small_one_fails_create() {
    let server = linux_server();
    let client = server.client();
    let c = client
        .create(disk("total", 20 << 20, DiskScope::Total, false))
        .await
        .expect("create");
    let fresh = c.metrics().await.expect("metrics").disk_stat;
    // GATS LM8: total = image bytes + what the container wrote.
    assert!(
        fresh.total_bytes_used > fresh.exclusive_bytes_used + (1 << 20),
        "{fresh:?}"
    );
    let image = fresh.total_bytes_used - fresh.exclusive_bytes_used;
    let room = (20u64 << 20) - image;
    let fits = room / (1 << 20) - 1;
    ok(
        &c,
        &format!("dd if=/dev/zero of=/root/fits bs=1M count={fits}"),
    )
    .await;
    ok(&c, "rm /root/fits").await;
    // GATS LM10: the full limit cannot be written, the image already takes part of it.
    let (code, _, err) = sh(&c, "dd if=/dev/zero of=/root/all bs=1M count=20").await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");

    match client
        .create(disk("tiny", 4096, DiskScope::Total, false))
        .await
    {
        Err(e) => assert!(
            e.to_string()
                .contains("disk limit is smaller than volume size"),
            "{e}"
        ),
        Ok(_) => panic!("a 4 KiB total limit cannot hold the image"),
    }
    let listed = client.containers(&Default::default()).await.expect("list");
    assert!(
        listed.iter().all(|c| c.handle() != "tiny"),
        "failed create left a container"
    );
    assert!(
        !server.depot().join("tiny").exists(),
        "failed create left files"
    );
}

#[tokio::test]
async fn privileged_root_cannot_exceed_the_limit() {
    let server = linux_server();
    let client = server.client();
    let c = client
        .create(disk("priv", 10 << 20, DiskScope::Exclusive, true))
        .await
        .expect("create");
    // GATS LM18.
    let (code, _, err) = sh(&c, "dd if=/dev/zero of=/root/eleven bs=1M count=11").await;
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
}

#[tokio::test]
async fn containers_get_a_limit_each() {
    let server = linux_server();
    let client = server.client();
    // GATS LM17: 40 MiB in each of two containers limited to 50 MiB.
    for handle in ["each-1", "each-2"] {
        let c = client
            .create(disk(handle, 50 << 20, DiskScope::Exclusive, false))
            .await
            .expect("create");
        ok(&c, "dd if=/dev/zero of=/tmp/some-file bs=1M count=40").await;
    }
    for handle in ["each-1", "each-2"] {
        client.destroy(handle).await.expect("destroy");
    }
    match client.container("each-1").info().await {
        Err(Error::ContainerNotFound { .. }) => {}
        other => panic!("expected ContainerNotFound, got {other:?}"),
    }
}

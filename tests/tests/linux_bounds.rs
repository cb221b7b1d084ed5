//! The handle rule and the host's networks on a real Linux host, across restarts (as root):
//! handles that would collide with the host's own names are refused before anything is made;
//! every handle the rule allows survives a restart; a record's temporary file left by a crash
//! is removed at start; a container subnet may not overlap the host's own networks.

mod linux_support;

use linux_support::ok;
use std::path::Path;
use trellis_client::Error;
use trellis_core::api::ContainerSpec;
use trellis_core::handle::MAX_HANDLE_BYTES;
use trellis_tests::TestServer;

fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    }
}

/// The names in `dir`, sorted (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The server's parent cgroup directories in every hierarchy (v1) or the unified one (v2).
fn parent_cgroup_dirs(server: &TestServer) -> Vec<std::path::PathBuf> {
    let parent = server.cgroup_parent();
    let unified = Path::new("/sys/fs/cgroup").join(&parent);
    if unified.is_dir() {
        return vec![unified];
    }
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join(&parent))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn handles_that_would_collide_on_the_host_are_refused_and_leave_nothing() {
    let server = TestServer::linux();
    let client = server.client();
    // A container first, so that the parent cgroup and the depot exist to look at.
    let kept = client.create(spec("lb-kept")).await.expect("create");
    let depot_before = names_in(&server.depot());
    let records = server.dir().join("state").join("records");
    let records_before = names_in(&records);

    // `tasks` and `cgroup.procs` used to fail create with a 500 when the cgroup was made, and
    // the rollback then failed forever, leaving the overlay mount and the depot directory.
    let too_long = "h".repeat(MAX_HANDLE_BYTES + 1);
    for handle in [
        ".hidden",
        "tasks",
        "cgroup.procs",
        "pids.max",
        too_long.as_str(),
    ] {
        let error = client.create(spec(handle)).await.expect_err(handle);
        let Error::Server { status, message } = &error else {
            panic!("{handle}: {error:?}");
        };
        assert_eq!(*status, 500);
        assert!(message.starts_with("invalid handle '"), "{message}");
        assert_eq!(names_in(&server.depot()), depot_before, "{handle}");
        assert_eq!(names_in(&records), records_before, "{handle}");
    }
    // The parent's control files are what they were; no cgroup took their names.
    for dir in parent_cgroup_dirs(&server) {
        for name in ["tasks", "cgroup.procs", "pids.max"] {
            assert!(!dir.join(name).is_dir(), "{}/{name}", dir.display());
        }
    }
    let listed: Vec<String> = client
        .containers(&Default::default())
        .await
        .expect("list")
        .iter()
        .map(|c| c.handle().to_string())
        .collect();
    assert_eq!(listed, ["lb-kept"]);
    assert_eq!(ok(&kept, "echo alive").await, "alive\n");
    client.destroy("lb-kept").await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_allowed_handle_survives_a_restart_and_crash_leftovers_are_removed() {
    let mut server = TestServer::linux();
    let client = server.client();
    // The longest handle: its record's temporary file name is exactly 255 bytes.
    let longest = "l".repeat(MAX_HANDLE_BYTES);
    let handles = [longest.as_str(), "lb.my.app", "lb-x.json.tmp"];
    for handle in handles {
        client.create(spec(handle)).await.expect(handle);
    }
    // A crash in the middle of a create's record write leaves a temporary file (and one in
    // the middle of replacing a record, another).
    server.kill();
    let records = server.dir().join("state").join("records");
    std::fs::write(records.join(".lb-crashed.json.tmp"), b"{\"handle\":").expect("write");
    std::fs::write(records.join(".lb.my.app.json.tmp"), b"{}").expect("write");
    server.restart();

    let mut listed: Vec<String> = client
        .containers(&Default::default())
        .await
        .expect("list")
        .iter()
        .map(|c| c.handle().to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = handles.iter().map(|h| h.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected, "every container survives the restart");
    let left = names_in(&records);
    let mut records_expected: Vec<String> = handles.iter().map(|h| format!("{h}.json")).collect();
    records_expected.sort();
    assert_eq!(left, records_expected, "the temporary files are gone");
    for handle in handles {
        let container = client.container(handle);
        assert_eq!(ok(&container, "echo alive").await, "alive\n", "{handle}");
        client.destroy(handle).await.expect("destroy");
        assert!(!server.depot().join(handle).exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subnets_overlapping_the_hosts_networks_are_refused() {
    let server = TestServer::linux();
    let client = server.client();
    // What the server read at start: the host's own networks (addresses and routes).
    let host = trellis_os::linux::network::host_networks().expect("host networks");
    let outside_loopback: Vec<_> = host
        .iter()
        .filter(|n| !n.contains("127.0.0.1".parse().unwrap()))
        .collect();
    let mut refused = vec![
        "127.0.0.1".to_string(),
        "169.254.9.0/24".into(),
        "224.0.0.0/24".into(),
    ];
    // An address inside each of the host's networks (the first usable one).
    refused.extend(outside_loopback.iter().map(|n| {
        let first = u32::from(n.network()) + u32::from(n.prefix() < 31);
        std::net::Ipv4Addr::from(first).to_string()
    }));
    for network in &refused {
        let error = client
            .create(ContainerSpec {
                network: network.clone(),
                ..spec("lb-net")
            })
            .await
            .expect_err(network);
        let Error::Server { status, message } = &error else {
            panic!("{network}: {error:?}");
        };
        assert_eq!(*status, 500);
        assert!(
            message.contains("which containers cannot use"),
            "{network}: {message}"
        );
    }
    assert!(matches!(
        client.container("lb-net").info().await,
        Err(Error::ContainerNotFound { .. })
    ));
}

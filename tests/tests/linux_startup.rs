//! A Linux server's start and its end of life (as root): `--destroy-containers-on-startup`,
//! the open-file limit it raises for itself but not for its containers, the lock that keeps a
//! second server off its directories, and `trellis cleanup`, which removes everything a
//! server left on the host. Every host object inspected here belongs to a server the test
//! started (its own directories, tag and cgroup parent).

mod linux_support;

use linux_support::{ok, sh};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trellis_client::ProcessIo;
use trellis_core::api::{ContainerSpec, DiskLimits, Limits, ResourceLimits};
use trellis_tests::{eventually, TestServer};

/// A container with a disk limit: its writable layer is an ext4 image on a loop device.
fn disk_limited(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        limits: Limits {
            disk_limits: DiskLimits {
                byte_hard: 64 << 20,
                ..DiskLimits::default()
            },
            ..Limits::default()
        },
        ..Default::default()
    }
}

/// Creates the mix every test here wants: a container with a process running, one with a
/// disk limit, one with a port mapped in (to `host_port`).
async fn populate(server: &TestServer, prefix: &str, host_port: u32) {
    let client = server.client();
    let busy = client
        .create(ContainerSpec {
            handle: format!("{prefix}-busy"),
            ..Default::default()
        })
        .await
        .expect("create");
    drop(
        busy.run(sh("sleep 1000"), ProcessIo::default())
            .await
            .expect("run"),
    );
    client
        .create(disk_limited(&format!("{prefix}-disk")))
        .await
        .expect("create with a disk limit");
    let mapped = client
        .create(ContainerSpec {
            handle: format!("{prefix}-netin"),
            ..Default::default()
        })
        .await
        .expect("create");
    mapped.net_in(host_port, 8080).await.expect("net in");
}

/// The port the harness's pool starts at for this server (`--port-pool-start`), a host port
/// no other server uses.
fn own_port(server: &TestServer) -> u32 {
    let flags = server.server_flags();
    let at = flags
        .iter()
        .position(|f| f == "--port-pool-start")
        .expect("the harness gives a port pool");
    flags[at + 1].parse().expect("a port")
}

/// Pids of the containers' inits, from their pid files.
fn init_pids(server: &TestServer) -> Vec<i32> {
    std::fs::read_dir(server.depot())
        .expect("the depot")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("init.pid")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Alive: exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|state| !state.starts_with(['Z', 'X']))
}

/// Mount points under `dir` (mountinfo's field 5; the test's paths need no unescaping).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Loop devices whose backing file lies under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
        .filter_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Path::new(backing.trim_end().trim_end_matches(" (deleted)"))
                .starts_with(dir)
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// The hierarchies (or the v2 root) holding a cgroup of this name at their top.
fn cgroups_named(name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .expect("/sys/fs/cgroup")
        .flatten()
        .map(|e| e.path().join(name))
        .filter(|p| p.is_dir())
        .collect();
    let v2 = Path::new("/sys/fs/cgroup").join(name);
    if v2.is_dir() {
        found.push(v2);
    }
    found
}

/// Host links whose names start with one of `prefixes`.
fn links_named(prefixes: &[String]) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .collect()
}

/// The server's bridges and its containers' links (by the ids in their network states).
fn server_links(server: &TestServer, ids: &[String]) -> Vec<String> {
    let mut prefixes = vec![format!("trbr{}-", server.tag())];
    prefixes.extend(ids.iter().map(|id| format!("trv{id}-")));
    links_named(&prefixes)
}

/// The containers' network ids, from their network state files.
fn network_ids(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.dir().join("run/network/state"))
        .expect("network states")
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(state["id"].as_str()?.to_string())
        })
        .collect()
}

/// The server's nftables tables, listed (its NAT and port mappings, its egress chains).
fn nft_rules(tag: &str) -> String {
    trellis_os::linux::network::firewall::server_tables(tag)
        .iter()
        .map(|table| {
            let mut args = vec!["list", "table"];
            args.extend(table.split_whitespace());
            let out = Command::new("nft").args(&args).output().expect("nft");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

/// The containers' addresses, from their network state files.
fn container_ips(server: &TestServer) -> Vec<String> {
    std::fs::read_dir(server.dir().join("run/network/state"))
        .expect("network states")
        .flatten()
        .filter(|e| e.path().is_file())
        .filter_map(|e| {
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            Some(state["assignment"]["container_ip"].as_str()?.to_string())
        })
        .collect()
}

/// What of the containers the rules still name: their egress chains, their addresses (in the
/// `containers` set, in port mappings), the mapped host port.
fn rules_of(rules: &str, port: u32, ids: &[String], ips: &[String]) -> Vec<String> {
    let mut found: Vec<String> = ids
        .iter()
        .map(|id| format!("c-{id}"))
        .filter(|chain| rules.contains(&format!("chain {chain} ")))
        .collect();
    let words: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .collect();
    found.extend(
        ips.iter()
            .filter(|ip| words.contains(&ip.as_str()))
            .cloned(),
    );
    if rules.contains(&format!("{port} :")) || rules.contains(&format!("dport {port} ")) {
        found.push(format!("port {port}"));
    }
    found
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_containers_on_startup_leaves_nothing_of_them() {
    let mut server = TestServer::linux();
    let port = own_port(&server);
    populate(&server, "dos", port).await;
    let inits = init_pids(&server);
    let ids = network_ids(&server);
    assert_eq!((inits.len(), ids.len()), (3, 3));
    let depot = server.depot();
    let parent = server.cgroup_parent();
    let tag = server.tag().to_string();
    let ips = container_ips(&server);
    assert_eq!(ips.len(), 3);
    let before = rules_of(&nft_rules(&tag), port, &ids, &ips);
    assert_eq!(before.len(), 7, "{before:?} in:\n{}", nft_rules(&tag));

    server.terminate();
    assert!(
        inits.iter().all(|pid| alive(*pid)),
        "containers outlive a stop"
    );
    server.restart_with_args(&["--destroy-containers-on-startup"]);

    // Served only once they are gone.
    let client = server.client();
    assert!(client
        .containers(&Default::default())
        .await
        .expect("list")
        .is_empty());
    assert!(inits.iter().all(|pid| !alive(*pid)), "an init survived");
    assert_eq!(entries(&depot), Vec::<String>::new());
    assert_eq!(
        entries(&server.dir().join("state/records")),
        Vec::<String>::new()
    );
    assert_eq!(
        entries(&server.dir().join("run/netns")),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(server.dir()), Vec::<PathBuf>::new());
    assert_eq!(loops_under(&depot), Vec::<String>::new());
    for hierarchy in cgroups_named(&parent) {
        assert_eq!(
            entries(&hierarchy)
                .iter()
                .filter(|e| e.starts_with("dos-"))
                .count(),
            0
        );
    }
    // Links and bridges go in the background, shortly after.
    assert!(
        eventually(Duration::from_secs(30), || async {
            server_links(&server, &ids).is_empty()
        })
        .await,
        "left: {:?}",
        server_links(&server, &ids)
    );
    // Their egress chains and the port mapping's element are gone from the firewall.
    assert!(
        eventually(Duration::from_secs(30), || async {
            rules_of(&nft_rules(&tag), port, &ids, &ips).is_empty()
        })
        .await,
        "left: {:?}",
        rules_of(&nft_rules(&tag), port, &ids, &ips)
    );
    // The handles and the mapped host port are free again.
    let again = client
        .create(ContainerSpec {
            handle: "dos-netin".into(),
            ..Default::default()
        })
        .await
        .expect("create again");
    again
        .net_in(port, 8080)
        .await
        .expect("the host port is free");
    assert_eq!(ok(&again, "echo fresh").await, "fresh\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_raises_its_open_files_limit_but_containers_keep_the_one_it_started_with() {
    const STARTED_WITH: u64 = 512;
    let server = TestServer::start(trellis_tests::ServerOptions {
        soft_nofile: Some(STARTED_WITH),
        ..TestServer::linux_options()
    });
    let pid = server.pid().expect("the server runs");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("its limits");
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("an open files line")
        .split_whitespace()
        .collect();
    let (soft, hard) = (open_files[3], open_files[4]);
    let hard_limit: u64 = hard.parse().expect("a number");
    assert!(
        hard_limit > STARTED_WITH,
        "the test needs a hard limit above {STARTED_WITH}"
    );
    assert_eq!(soft, hard, "{limits}");
    let logs = server.logs();
    assert!(
        logs.contains(&format!("soft={hard_limit}"))
            && logs.contains(&format!("started_with={STARTED_WITH}")),
        "{logs}"
    );

    let container = server
        .client()
        .create(ContainerSpec::default())
        .await
        .expect("create");
    // As gdn's: a process gets the limit the server started with...
    assert_eq!(
        ok(&container, "ulimit -n; ulimit -Hn").await,
        format!("{STARTED_WITH}\n{hard_limit}\n")
    );
    // ... unless its spec says otherwise.
    let mut limited = sh("ulimit -n; ulimit -Hn");
    limited.rlimits = ResourceLimits {
        nofile: Some(100),
        ..ResourceLimits::default()
    };
    let out = linux_support::run(&container, limited).await;
    assert_eq!(out.stdout, "100\n100\n", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_directories_is_refused() {
    let server = TestServer::linux();
    let first = server.pid().expect("the server runs");
    // The same flags but another port: only the lock can stop it.
    let mut flags = server.server_flags().to_vec();
    let at = flags
        .iter()
        .position(|f| f == "--bind-port")
        .expect("a port");
    flags[at + 1] = "0".into();
    let socket = flags
        .iter()
        .position(|f| f == "--bind-socket")
        .expect("a socket");
    flags[socket + 1] = server.dir().join("second.sock").display().to_string();
    let output = Command::new(trellis_tests::binary())
        .arg("server")
        .args(&flags)
        .output()
        .expect("running a second server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.lock") && stderr.contains(&format!("pid {first}")),
        "{stderr}"
    );
    server
        .client()
        .ping()
        .await
        .expect("the first one serves on");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_refuses_while_the_server_runs() {
    let server = TestServer::linux();
    let container = server
        .client()
        .create(ContainerSpec {
            handle: "cr-kept".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (success, _, stderr) = server.run_cleanup();
    assert!(!success);
    assert!(stderr.contains("server.lock"), "{stderr}");
    assert_eq!(ok(&container, "echo untouched").await, "untouched\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_removes_everything_a_killed_server_left() {
    let mut server = TestServer::linux();
    populate(&server, "cl", own_port(&server)).await;
    let inits = init_pids(&server);
    let ids = network_ids(&server);
    let parent = server.cgroup_parent();
    let tag = server.tag().to_string();
    let depot = server.depot();
    let state = server.dir().join("state");
    let run = server.dir().join("run");
    // All of it is there to begin with.
    assert_eq!(inits.len(), 3);
    assert!(!mounts_under(server.dir()).is_empty());
    assert_eq!(loops_under(&depot).len(), 1);
    assert!(!cgroups_named(&parent).is_empty());
    assert!(!server_links(&server, &ids).is_empty());
    assert!(!trellis_os::linux::network::firewall::server_tables(&tag).is_empty());

    server.kill();
    let (success, stdout, stderr) = server.run_cleanup();
    assert!(success, "{stdout}{stderr}");
    assert!(
        stdout.contains("3 containers (3 inits were running)"),
        "{stdout}"
    );

    assert!(inits.iter().all(|pid| !alive(*pid)), "an init survived");
    assert_eq!(mounts_under(server.dir()), Vec::<PathBuf>::new());
    assert_eq!(loops_under(&depot), Vec::<String>::new());
    assert_eq!(loops_under(&state), Vec::<String>::new());
    assert_eq!(cgroups_named(&parent), Vec::<PathBuf>::new());
    assert_eq!(server_links(&server, &ids), Vec::<String>::new());
    assert_eq!(
        trellis_os::linux::network::firewall::server_tables(&tag),
        Vec::<String>::new()
    );
    let bridge_locks: Vec<String> = entries(Path::new("/run/trellis-network-locks"))
        .into_iter()
        .filter(|name| name.starts_with(&format!("trbr{tag}-")))
        .collect();
    assert_eq!(bridge_locks, Vec::<String>::new());
    for dir in [&depot, &state, &run] {
        assert_eq!(entries(dir), Vec::<String>::new(), "{}", dir.display());
    }

    // Nothing left to do the second time; and a server starts afresh on the directories.
    let (success, stdout, stderr) = server.run_cleanup();
    assert!(success, "{stdout}{stderr}");
    assert!(stdout.contains("0 containers"), "{stdout}");
    server.restart();
    assert!(server
        .client()
        .containers(&Default::default())
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn temporary_files_a_crash_left_are_removed_at_start() {
    let mut server = TestServer::linux();
    let kept = server
        .client()
        .create(ContainerSpec {
            handle: "tmp-kept".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    drop(kept);
    server.kill();
    // What a server killed mid-write leaves: a record and a network state not yet renamed into
    // place, an image half unpacked.
    let state = server.dir().join("state");
    let leftovers = [
        state.join("records/.tmp-half.json.tmp"),
        server.dir().join("run/network/state/.0123abcd.tmp"),
        state.join("images/tmp/busybox-99999/etc/passwd"),
    ];
    for path in &leftovers {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"half").unwrap();
    }
    server.restart();
    for path in &leftovers {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(!state.join("images/tmp/busybox-99999").exists());
    assert!(server
        .logs()
        .contains("removed temporary files a crash left"));
    // The real record and state are untouched: the container is served as before.
    let container = server.client().container("tmp-kept");
    assert_eq!(ok(&container, "echo still here").await, "still here\n");
    assert_eq!(
        entries(&state.join("records")),
        vec!["tmp-kept.json".to_string()]
    );
}

//! Nothing leaks across 1,000 create/run/destroy cycles through the server (as root): the
//! server's mounts, cgroups, processes, files, links and network namespaces are counted before
//! and after. `TRELLIS_LEAK_CYCLES` overrides the count.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use trellis_client::{Client, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_tests::host_objects::{count_cgroups, count_files, count_links, HostObjects};
use trellis_tests::TestServer;

#[derive(Debug, PartialEq, Eq)]
struct Counts {
    mounts: usize,
    cgroups: usize,
    processes: usize,
    files: usize,
    links: usize,
}

/// (pid, parent pid, command name) of every process.
fn process_table() -> Vec<(u32, u32, String)> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid, comm))
        })
        .collect()
}

/// Every descendant of `root` (zombies included).
/// The server's descendants but its zygote (which lives as long as the server).
fn descendants(root: u32) -> usize {
    let table = process_table();
    let is_zygote = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__trellis-zygote"))
    };
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, ppid, _) in &table {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut stack = vec![root];
    let mut count = 0;
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if !is_zygote(*child) {
                count += 1;
                stack.push(*child);
            }
        }
    }
    count
}

/// (pid, command, state) of each descendant of `root` but the zygote's subtree, to say what
/// leaked.
fn descendant_list(root: u32) -> Vec<(u32, String, String)> {
    let table = process_table();
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for (pid, ppid, comm) in &table {
            let zygote = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"__trellis-zygote"));
            if *ppid == parent && !zygote {
                let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')
                            .map(|(_, r)| r.trim().chars().take(1).collect())
                    })
                    .unwrap_or_default();
                found.push((*pid, comm.clone(), state));
                stack.push(*pid);
            }
        }
    }
    found
}

/// The server's cgroup parent, found from a container init's cgroup (e.g. `/trellis-1a2b3c4d`).
fn cgroup_parent(server_pid: u32) -> String {
    let init = process_table()
        .into_iter()
        .find(|(_, ppid, comm)| *ppid == server_pid && comm == "garden-init")
        .expect("a container init under the server")
        .0;
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).expect("its cgroups");
    let path = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers.split(',').any(|c| c == "memory") || controllers.is_empty())
                .then(|| path.to_string())
        })
        .expect("the init's memory cgroup");
    Path::new(&path)
        .parent()
        .expect("a container cgroup has a parent")
        .display()
        .to_string()
}

fn counts(server: &TestServer, parent: &str) -> Counts {
    let dir = server.dir().display().to_string();
    let pid = server.pid().expect("the server runs");
    Counts {
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.contains(&dir))
            .count(),
        cgroups: count_cgroups(parent),
        processes: descendants(pid),
        // The image cache (state/images) is kept on purpose; everything else must return to
        // what it was.
        files: count_files(&server.dir().join("depot"))
            + count_files(&server.dir().join("run"))
            + count_files(&server.dir().join("state/records")),
        links: count_links(server.tag()),
    }
}

async fn cycle(client: &Client, handle: &str) {
    let container = client
        .create(ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let mut process = container
        .run(
            ProcessSpec {
                path: "echo".into(),
                args: vec!["hi".into()],
                ..Default::default()
            },
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    assert_eq!(process.wait().await.expect("exit"), 0);
    drop(process);
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out_r, &mut out)
        .await
        .expect("output");
    assert_eq!(out, "hi\n");
    // A process still running at destroy goes with the container.
    let _left_running = container
        .run(
            ProcessSpec {
                path: "sleep".into(),
                args: vec!["1000".into()],
                ..Default::default()
            },
            ProcessIo::default(),
        )
        .await
        .expect("run");
    client.destroy(handle).await.expect("destroy");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_create_destroy_cycles_through_the_server_leak_nothing() {
    let cycles: usize = std::env::var("TRELLIS_LEAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // Concurrent clients, as a real server sees them; each runs its share of the cycles.
    const WORKERS: usize = 4;
    let server = TestServer::linux();
    let client = server.client();
    // Warm up (image cache, bridge, cgroup parent) with a container kept until the first
    // count, so the cgroup parent can be found from its init.
    let keeper = client
        .create(ContainerSpec {
            handle: "keeper".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let parent = cgroup_parent(server.pid().expect("the server runs"));
    for i in 0..3 {
        cycle(&client, &format!("warm-{i}")).await;
    }
    HostObjects::after_removals(&server).await;
    let before = counts(&server, &parent);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let client = client.clone();
        workers.push(tokio::spawn(async move {
            for i in (w..cycles).step_by(WORKERS) {
                cycle(&client, &format!("leak-{i}")).await;
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker");
    }
    let elapsed = start.elapsed();
    // Network namespaces (and the veths in them) are freed by the kernel asynchronously.
    let settled = trellis_tests::eventually(Duration::from_secs(30), || async {
        counts(&server, &parent) == before
    })
    .await;
    let after = counts(&server, &parent);
    println!(
        "{cycles} create/run/destroy cycles through the server ({WORKERS} clients) in {:.1} s \
         ({:.1} ms each); before {before:?}, after {after:?}",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / cycles as f64
    );
    assert!(
        settled,
        "leaked: before {before:?}, after {after:?}; the server's descendants: {:?}",
        descendant_list(server.pid().expect("the server runs"))
    );
    assert_eq!(
        client
            .containers(&BTreeMap::new())
            .await
            .expect("list")
            .into_iter()
            .map(|c| c.handle().to_string())
            .collect::<Vec<_>>(),
        vec![keeper.handle().to_string()]
    );
    client.destroy("keeper").await.expect("destroy");
    assert_eq!(count_cgroups(&parent), 0);
    assert_eq!(descendants(server.pid().expect("the server runs")), 0);
}

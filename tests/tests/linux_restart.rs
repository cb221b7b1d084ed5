//! Linux containers across a server restart (as root): they keep running and can be destroyed;
//! a container whose init died while the server was down is found dead (a zombie init counts
//! as dead: after a restart nobody may be left to reap it) and cleaned up.

mod linux_support;

use linux_support::{ok, run};
use std::time::Duration;
use trellis_client::Error;
use trellis_core::api::ContainerSpec;
use trellis_tests::{eventually, TestServer};

/// The pid of the container's init: the `garden-init` process whose cgroup names the handle.
fn init_pid(handle: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).ok()?;
        (comm.trim() == "garden-init" && cgroup.lines().any(|l| l.ends_with(&format!("/{handle}"))))
            .then_some(pid)
    })
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

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_restart_and_dead_inits_are_noticed() {
    let mut server = TestServer::linux();
    let client = server.client();
    for handle in ["rs-kept", "rs-dies"] {
        let c = client
            .create(ContainerSpec {
                handle: handle.into(),
                ..Default::default()
            })
            .await
            .expect("create");
        ok(&c, "echo before > /tmp/state").await;
    }
    let kept_init = init_pid("rs-kept").expect("rs-kept's init");
    let dying_init = init_pid("rs-dies").expect("rs-dies's init");

    // SIGTERM: the server exits 0 and leaves the containers running.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(alive(kept_init) && alive(dying_init));
    // While the server is down, one init dies. Its parent is now the machine's PID 1 (or
    // whatever adopted it), which may never reap it: it can stay a zombie.
    // SAFETY: killing a container init this test created.
    unsafe { libc::kill(dying_init, libc::SIGKILL) };
    assert!(eventually(Duration::from_secs(10), || async { !alive(dying_init) }).await);
    server.restart();

    // The living container still works, with its state.
    let kept = client.container("rs-kept");
    assert_eq!(ok(&kept, "cat /tmp/state").await, "before\n");
    // The dead one is noticed and removed.
    assert!(
        eventually(Duration::from_secs(30), || async {
            matches!(
                client.container("rs-dies").info().await,
                Err(Error::ContainerNotFound { .. })
            )
        })
        .await,
        "a container whose init died is still listed"
    );
    // Its teardown finishes in the background.
    let gone = server.depot().join("rs-dies");
    assert!(eventually(Duration::from_secs(30), || async { !gone.exists() }).await);

    // Destroying a container adopted across a restart kills its init (which nobody here
    // reaps) and everything else of it.
    let out = run(&kept, linux_support::sh("echo alive")).await;
    assert_eq!(out.stdout, "alive\n");
    client.destroy("rs-kept").await.expect("destroy");
    assert!(
        !alive(kept_init),
        "the init survived its container's destroy"
    );
    assert!(!server.depot().join("rs-kept").exists());
    // And the handle is free for a new container.
    let again = client
        .create(ContainerSpec {
            handle: "rs-kept".into(),
            ..Default::default()
        })
        .await
        .expect("create again");
    assert_eq!(
        run(&again, linux_support::sh("cat /tmp/state"))
            .await
            .status,
        1
    );
    client.destroy("rs-kept").await.expect("destroy");
}

/// Many containers across a crash (SIGKILL, so nothing is shut down): the restarted server
/// lists every one with its properties, and knows each one's own running process. The host
/// observes containers many at a time at start; nothing may be mixed up between them. (The
/// time a restart takes is measured by `trellis-restart-bench`, not here.)
#[tokio::test(flavor = "multi_thread")]
async fn fifty_containers_and_their_processes_survive_a_crash() {
    const COUNT: usize = 50;
    let mut server = TestServer::linux();
    let client = server.client();
    let mut creates = Vec::new();
    for i in 0..COUNT {
        let client = client.clone();
        creates.push(tokio::spawn(async move {
            let container = client
                .create(ContainerSpec {
                    handle: format!("many-{i}"),
                    properties: [("index".to_string(), i.to_string())].into(),
                    ..Default::default()
                })
                .await
                .expect("create");
            let mut spec = linux_support::sh(&format!("echo many-{i}; exec sleep 1000"));
            spec.id = format!("sleeper-{i}");
            // The process keeps running after its connection is gone.
            drop(
                container
                    .run(spec, trellis_client::ProcessIo::default())
                    .await
                    .expect("run"),
            );
        }));
    }
    for create in creates {
        create.await.expect("create task");
    }

    server.kill();
    server.restart();

    let mut listed: Vec<String> = client
        .containers(&Default::default())
        .await
        .expect("list")
        .iter()
        .map(|c| c.handle().to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = (0..COUNT).map(|i| format!("many-{i}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for i in 0..COUNT {
        let info = client
            .container(format!("many-{i}"))
            .info()
            .await
            .expect("info");
        assert_eq!(
            info.process_ids,
            Some(vec![format!("sleeper-{i}")]),
            "many-{i}'s processes"
        );
        assert_eq!(
            info.properties.unwrap_or_default().get("index"),
            Some(&i.to_string())
        );
    }
    // Each re-attaches to its own process: what it wrote before the crash, which nobody has
    // read, comes from it (processes are taken over many containers at a time).
    for i in 0..COUNT {
        let (writer, mut reader) = tokio::io::duplex(1 << 12);
        let io = trellis_client::ProcessIo {
            stdout: Some(Box::new(writer)),
            ..Default::default()
        };
        let attached = client
            .container(format!("many-{i}"))
            .attach(&format!("sleeper-{i}"), io)
            .await
            .expect("attach after the restart");
        let expected = format!("many-{i}\n");
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 64];
            while seen.len() < expected.len() {
                match tokio::io::AsyncReadExt::read(&mut reader, &mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(read.is_ok(), "many-{i}: nothing came");
        assert_eq!(String::from_utf8_lossy(&seen), expected);
        drop(attached);
    }
    // The processes are known, not just listed: their ids stay taken.
    let mut again = linux_support::sh("true");
    again.id = "sleeper-7".into();
    match client
        .container("many-7")
        .run(again, trellis_client::ProcessIo::default())
        .await
    {
        Err(err) => assert!(err.to_string().contains("already in use"), "{err}"),
        Ok(_) => panic!("a second process took a running process's id"),
    }
    // And the containers work.
    assert_eq!(ok(&client.container("many-49"), "echo up").await, "up\n");
}

//! Processes across a server killed with SIGKILL (as root): their keeper (the container's init)
//! holds their stdio, so they go on while the server is down, and a restarted server
//! re-attaches them by id: output nobody received is delivered, stdin still works, exit
//! statuses arrive (also of processes that ended while the server was down), signals and Stop
//! reach them, and Info lists exactly the live ones.

mod linux_support;

use linux_support::sh;
use std::time::Duration;
use trellis_client::{Container, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_tests::collect::stdout_collector;
use trellis_tests::{eventually, TestServer};

fn with_id(id: &str, spec: ProcessSpec) -> ProcessSpec {
    ProcessSpec {
        id: id.into(),
        ..spec
    }
}

async fn attach_and_wait(c: &Container, id: &str, io: ProcessIo) -> i32 {
    let mut p = c.attach(id, io).await.expect("attach after the restart");
    p.wait().await.expect("the exit status")
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_outlive_a_killed_server_and_lose_nothing() {
    let mut server = TestServer::linux();
    let client = server.client();
    let c = client
        .create(ContainerSpec {
            handle: "dur".into(),
            ..Default::default()
        })
        .await
        .expect("create");

    // A steady writer of numbered lines, read by a client while the server lives.
    let lines = 40_000;
    let writer = "i=0; while [ $i -lt 40 ]; do seq $((i*1000+1)) $((i*1000+1000)); i=$((i+1)); \
                  sleep 0.05; done; exit 3";
    let (io, before) = stdout_collector();
    let first = c
        .run(with_id("writer", sh(writer)), io)
        .await
        .expect("run the writer");
    // A process waiting for its stdin; one that ends while the server is down; a sleeper.
    let (stdin_holder, stdin_reader) = tokio::io::duplex(64);
    let reader = c
        .run(
            with_id("reader", sh("read line; echo got $line; exit 5")),
            ProcessIo {
                stdin: Some(Box::new(stdin_reader)),
                ..Default::default()
            },
        )
        .await
        .expect("run the reader");
    let early = c
        .run(
            with_id("early", sh("sleep 1; echo finished while down; exit 7")),
            ProcessIo::default(),
        )
        .await
        .expect("run the early one");
    let sleeper = c
        .run(
            with_id("sleeper", sh("exec sleep 1000")),
            ProcessIo::default(),
        )
        .await
        .expect("run the sleeper");
    assert!(
        eventually(Duration::from_secs(10), || async { before.len() > 10_000 }).await,
        "the writer's output started"
    );

    server.kill();
    drop((first, reader, early, sleeper, stdin_holder));
    // The writer goes on into its pipe (and waits when it is full); "early" ends.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart();
    let c = client.container("dur");

    // Everything the writer wrote arrives: what the first client got, then the rest (a piece
    // sent just before the kill may come again, none may be missing).
    let (io, after) = stdout_collector();
    assert_eq!(attach_and_wait(&c, "writer", io).await, 3);
    let expected: String = (1..=lines).map(|n| format!("{n}\n")).collect();
    let before = String::from_utf8(before.all().await).unwrap();
    let after = String::from_utf8(after.all().await).unwrap();
    assert!(
        expected.starts_with(&before),
        "the first client's output is out of order"
    );
    if !expected.ends_with(&after) {
        let start = expected.len().saturating_sub(after.len());
        let diverges = expected[start..]
            .bytes()
            .zip(after.bytes())
            .position(|(e, a)| e != a)
            .unwrap_or(0);
        let around =
            |s: &str, at: usize| s[at.saturating_sub(40)..(at + 40).min(s.len())].to_string();
        panic!(
            "the output after the restart ({} bytes) is not the stream's rest: at byte {diverges} \
             expected {:?}, got {:?}",
            after.len(),
            around(&expected[start..], diverges),
            around(&after, diverges)
        );
    }
    assert!(
        before.len() + after.len() >= expected.len(),
        "output was lost: {} + {} of {} bytes",
        before.len(),
        after.len(),
        expected.len()
    );

    // Stdin stayed open across the crash.
    let mut p = c
        .attach(
            "reader",
            ProcessIo {
                stdin: Some(Box::new(std::io::Cursor::new(b"hello\n".to_vec()))),
                stdout: None,
                stderr: None,
            },
        )
        .await
        .expect("attach the reader");
    assert_eq!(p.wait().await.unwrap(), 5);
    let (io, out) = stdout_collector();
    assert_eq!(attach_and_wait(&c, "reader", io).await, 5);
    assert_eq!(out.all().await, b"got hello\n");

    // A process that ended while the server was down: its output and status.
    let (io, out) = stdout_collector();
    assert_eq!(attach_and_wait(&c, "early", io).await, 7);
    assert_eq!(out.all().await, b"finished while down\n");

    // Info lists exactly the live processes; Stop reaches one started before the restart.
    let ids = c.info().await.unwrap().process_ids.unwrap_or_default();
    assert_eq!(ids, vec!["sleeper".to_string()]);
    c.stop(false).await.expect("stop");
    assert_eq!(
        attach_and_wait(&c, "sleeper", ProcessIo::default()).await,
        143
    );
    assert!(c
        .info()
        .await
        .unwrap()
        .process_ids
        .unwrap_or_default()
        .is_empty());
    client.destroy("dur").await.expect("destroy");
}

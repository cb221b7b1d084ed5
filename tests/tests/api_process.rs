//! The process protocol (Run, Attach, Stdout, Stderr) against the fake backend's simulated
//! processes: stdin, large outputs, exit codes, signals, re-attach, disconnects, fan-out, and
//! the exact response framing the Go client needs.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_client::{Client, Container, Error, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec, Signal, TtySpec, WindowSize};
use trellis_tests::{raw_exchange, TestServer};

fn spec(path: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        path: path.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    }
}

async fn container(client: &Client, handle: &str) -> Container {
    client
        .create(ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        })
        .await
        .expect("create")
}

/// An in-memory sink the test reads from: (what the process gets, what the test keeps).
fn sink() -> (
    Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    tokio::io::DuplexStream,
) {
    let (a, b) = tokio::io::duplex(1 << 16);
    (Box::new(a), b)
}

async fn read_all(mut reader: tokio::io::DuplexStream) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.expect("read");
    out
}

#[tokio::test]
async fn exit_codes_stdout_stderr_and_unknown_programs() {
    let server = TestServer::fake();
    for target in server.targets() {
        let client = Client::new(target);
        let c = container(&client, "codes").await;
        let (out, out_r) = sink();
        let (err, err_r) = sink();
        let mut p = c
            .run(
                spec("echo", &["to", "stdout"]),
                ProcessIo {
                    stdout: Some(out),
                    stderr: Some(err),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let outputs = tokio::join!(read_all(out_r), read_all(err_r), p.wait());
        assert_eq!(outputs.0, b"to stdout\n");
        assert_eq!(outputs.1, b"");
        assert_eq!(outputs.2.unwrap(), 0);

        let (err, err_r) = sink();
        let mut p = c
            .run(
                spec("stderr", &["oops"]),
                ProcessIo {
                    stderr: Some(err),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let (text, status) = tokio::join!(read_all(err_r), p.wait());
        assert_eq!(text, b"oops\n");
        assert_eq!(status.unwrap(), 0);

        let mut p = c
            .run(spec("exit", &["42"]), ProcessIo::default())
            .await
            .unwrap();
        assert_eq!(p.wait().await.unwrap(), 42);

        match c
            .run(spec("no-such-program", &[]), ProcessIo::default())
            .await
        {
            Err(Error::ExecutableNotFound { message }) => {
                assert!(message.contains("no-such-program"))
            }
            other => panic!(
                "expected ExecutableNotFound, got {:?}",
                other.map(|p| p.id().to_string())
            ),
        }
        match c.attach("never-started", ProcessIo::default()).await {
            Err(Error::ProcessNotFound { process_id }) => assert_eq!(process_id, "never-started"),
            other => panic!(
                "expected ProcessNotFound, got {:?}",
                other.map(|p| p.id().to_string())
            ),
        }
        match client
            .container("missing")
            .run(spec("echo", &[]), ProcessIo::default())
            .await
        {
            Err(Error::ContainerNotFound { handle }) => assert_eq!(handle, "missing"),
            other => panic!(
                "expected ContainerNotFound, got {:?}",
                other.map(|p| p.id().to_string())
            ),
        }
        client.destroy("codes").await.unwrap();
    }
}

#[tokio::test]
async fn stdin_round_trip_and_eof() {
    let server = TestServer::fake();
    let client = server.unix_client();
    let c = container(&client, "stdin").await;
    // 1 MiB of text, sent in the client's 32 KiB messages, echoed back by `cat`.
    let input: Vec<u8> = (0..(1 << 20)).map(|i| b'a' + (i % 26) as u8).collect();
    let (out, out_r) = sink();
    let mut p = c
        .run(
            spec("cat", &[]),
            ProcessIo {
                stdin: Some(Box::new(std::io::Cursor::new(input.clone()))),
                stdout: Some(out),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (echoed, status) = tokio::join!(read_all(out_r), p.wait());
    assert_eq!(status.unwrap(), 0, "cat ends at stdin EOF");
    assert_eq!(echoed.len(), input.len());
    assert!(echoed == input, "stdin came back changed");
}

#[tokio::test]
async fn a_large_output_arrives_whole_and_in_order() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "big").await;
    let total: u64 = 150_000_000;
    let (out_w, mut out_r) = tokio::io::duplex(1 << 20);
    let started = Instant::now();
    let mut p = c
        .run(
            spec("yes-bytes", &[&total.to_string()]),
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let count = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        let mut seen: u64 = 0;
        loop {
            let n = out_r.read(&mut buf).await.unwrap();
            if n == 0 {
                return seen;
            }
            for (i, b) in buf[..n].iter().enumerate() {
                let expected = if (seen + i as u64).is_multiple_of(2) {
                    b'y'
                } else {
                    b'\n'
                };
                assert_eq!(*b, expected, "byte {} out of order", seen + i as u64);
            }
            seen += n as u64;
        }
    });
    assert_eq!(p.wait().await.unwrap(), 0);
    let seen = count.await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(seen, total, "output was lost");
    println!(
        "stdout stream: {} MB in {secs:.2} s = {:.0} MB/s",
        total / 1_000_000,
        total as f64 / 1e6 / secs
    );
}

#[tokio::test]
async fn a_slow_reader_loses_nothing_and_does_not_block_others() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "slow").await;
    let total: u64 = 8_000_000;
    let (out_w, mut out_r) = tokio::io::duplex(4096);
    let mut slow = c
        .run(
            spec("yes-bytes", &[&total.to_string()]),
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // While the slow stream is held back, other requests and processes go on.
    let other = container(&client, "other").await;
    for _ in 0..5 {
        let mut p = other
            .run(spec("exit", &["0"]), ProcessIo::default())
            .await
            .unwrap();
        assert_eq!(p.wait().await.unwrap(), 0);
        other.info().await.unwrap();
    }
    let mut buf = vec![0u8; 1024];
    let mut seen = 0u64;
    loop {
        let n = out_r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        seen += n as u64;
        if seen % (1 << 20) < 1024 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(slow.wait().await.unwrap(), 0);
    assert_eq!(seen, total);
}

#[tokio::test]
async fn signals_end_processes_with_128_plus_n() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "signals").await;
    for (signal, status) in [(Signal::Terminate, 143), (Signal::Kill, 137)] {
        let mut p = c
            .run(spec("sleep", &["1000"]), ProcessIo::default())
            .await
            .unwrap();
        p.signal(signal).await.unwrap();
        assert_eq!(p.wait().await.unwrap(), status);
    }
    // Signals still arrive after the client sent stdin EOF (gdn stops reading at EOF).
    let mut p = c
        .run(
            spec("sleep", &["1000"]),
            ProcessIo {
                stdin: Some(Box::new(tokio::io::empty())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // A resize is accepted (and ignored by a process without a terminal).
    p.set_tty(TtySpec {
        window_size: Some(WindowSize {
            columns: 80,
            rows: 24,
        }),
    })
    .await
    .unwrap();
    p.signal(Signal::Kill).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), 137);
}

#[tokio::test]
async fn tty_merges_stderr_into_stdout() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "tty").await;
    let (out, out_r) = sink();
    let (err, err_r) = sink();
    let mut process_spec = spec("stderr", &["on", "the", "terminal"]);
    process_spec.tty = Some(TtySpec {
        window_size: Some(WindowSize {
            columns: 100,
            rows: 40,
        }),
    });
    let mut p = c
        .run(
            process_spec,
            ProcessIo {
                stdout: Some(out),
                stderr: Some(err),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (out, err, status) = tokio::join!(read_all(out_r), read_all(err_r), p.wait());
    assert_eq!(status.unwrap(), 0);
    assert_eq!(out, b"on the terminal\n");
    assert_eq!(err, b"");
}

#[tokio::test]
async fn reattach_by_id_to_running_and_exited_processes() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "reattach").await;

    // A running process, left by its first client, is reached again by its id.
    let mut sleeper = spec("sleep", &["1000"]);
    sleeper.id = "sleeper".into();
    let first = c.run(sleeper, ProcessIo::default()).await.unwrap();
    assert_eq!(first.id(), "sleeper");
    drop(first);
    let again = c.attach("sleeper", ProcessIo::default()).await.unwrap();
    let info = c.info().await.unwrap();
    assert!(info.process_ids.unwrap().contains(&"sleeper".to_string()));
    again.signal(Signal::Kill).await.unwrap();
    let mut again = again;
    assert_eq!(again.wait().await.unwrap(), 137);

    // Output produced while nobody was attached is kept for a later attach, and the exit
    // status of a finished process is still delivered.
    let mut echo = spec("echo", &["kept", "for", "later"]);
    echo.id = "early".into();
    let mut p = c.run(echo, ProcessIo::default()).await.unwrap();
    assert_eq!(p.wait().await.unwrap(), 0);
    drop(p);
    let (out, out_r) = sink();
    let mut late = c
        .attach(
            "early",
            ProcessIo {
                stdout: Some(out),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (text, status) = tokio::join!(read_all(out_r), late.wait());
    assert_eq!(text, b"kept for later\n");
    assert_eq!(status.unwrap(), 0);

    // A process id in use is refused.
    let mut dup = spec("sleep", &["1000"]);
    dup.id = "dup".into();
    let holder = c.run(dup.clone(), ProcessIo::default()).await.unwrap();
    assert!(c.run(dup, ProcessIo::default()).await.is_err());
    holder.signal(Signal::Kill).await.unwrap();
}

#[tokio::test]
async fn several_clients_attached_all_get_the_output() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "fanout").await;
    let (stdin_w, stdin_r) = tokio::io::duplex(1024);
    let (out1, out1_r) = sink();
    let mut cat = spec("cat", &[]);
    cat.id = "shared".into();
    let mut first = c
        .run(
            cat,
            ProcessIo {
                stdin: Some(Box::new(stdin_r)),
                stdout: Some(out1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (out2, out2_r) = sink();
    let mut second = c
        .attach(
            "shared",
            ProcessIo {
                stdout: Some(out2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut stdin_w = stdin_w;
    stdin_w.write_all(b"to everyone\n").await.unwrap();
    drop(stdin_w);
    let (a, b, s1, s2) = tokio::join!(
        read_all(out1_r),
        read_all(out2_r),
        first.wait(),
        second.wait()
    );
    assert_eq!(s1.unwrap(), 0);
    assert_eq!(s2.unwrap(), 0);
    assert_eq!(a, b"to everyone\n");
    assert_eq!(b, b"to everyone\n");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_leaves_the_process_running() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = container(&client, "gone").await;
    let total: u64 = 20_000_000;
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let mut producer = spec("yes-bytes", &[&total.to_string()]);
    producer.id = "producer".into();
    let first = c
        .run(
            producer,
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0;
    while seen < 1_000_000 {
        seen += out_r.read(&mut buf).await.unwrap();
    }
    drop(first);
    drop(out_r);
    // The server keeps serving, and the process is still there to attach to; what it writes
    // from now on reaches the new client, and it finishes normally.
    client.ping().await.unwrap();
    let (out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let mut again = c
        .attach(
            "producer",
            ProcessIo {
                stdout: Some(Box::new(out_w)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut rest = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = out_r.read(&mut buf).await.unwrap();
            if n == 0 {
                return rest;
            }
            rest += n as u64;
        }
    });
    assert_eq!(again.wait().await.unwrap(), 0);
    let rest = reader.await.unwrap();
    assert!(
        rest > 0 && rest < total,
        "the second client got the tail ({rest} bytes)"
    );
}

#[tokio::test]
async fn an_attached_process_keeps_its_container_alive() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    let c = client
        .create(ContainerSpec {
            handle: "held".into(),
            grace_time: 1_000_000_000,
            ..Default::default()
        })
        .await
        .unwrap();
    // The process outlives the grace time; its open connection pauses the timer.
    let mut p = c
        .run(spec("sleep", &["2.5"]), ProcessIo::default())
        .await
        .unwrap();
    assert_eq!(p.wait().await.unwrap(), 0);
    drop(p);
    c.info().await.expect("the container is still there");
    // Once idle, the container expires. (Polled with List, which does not count as use.)
    let gone = trellis_tests::eventually(Duration::from_secs(15), || {
        let client = client.clone();
        async move {
            matches!(
                client.lookup("held").await,
                Err(Error::ContainerNotFound { .. })
            )
        }
    })
    .await;
    assert!(gone, "the container should expire after its grace time");
}

/// The bytes of the process routes as the Go client parses them.
#[tokio::test]
async fn hijack_framing_is_what_the_go_client_needs() {
    let server = TestServer::fake();
    let client = server.tcp_client();
    container(&client, "raw").await;
    let target = &server.targets()[0];

    // Run: 201, chunked announced but raw JSON after, no Connection header.
    let body = r#"{"path":"echo","args":["hi"],"user":"root","rlimits":{},"image":{}}"#;
    let request = format!(
        "POST /containers/raw/processes HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}\n",
        body.len() + 1
    );
    let response = raw_exchange(target, request.as_bytes(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, 201);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(response.header("connection"), None);
    let text = String::from_utf8(response.body.clone()).unwrap();
    let messages: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{text}");
    assert!(messages[0]["stream_id"].as_str().is_some());
    assert_eq!(messages[1]["exit_status"], 0);
    assert_eq!(messages[0]["process_id"], messages[1]["process_id"]);

    // Errors on hijack routes: Content-Length framing and no Connection: close.
    let attach = "GET /containers/raw/processes/nope HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n\r\n";
    let response = raw_exchange(target, attach.as_bytes(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.header("connection"), None);
    assert!(response.header("content-length").is_some());
    assert_eq!(response.json()["Type"], "ProcessNotFoundError");
    assert_eq!(response.json()["ProcessID"], "nope");

    // A malformed Run body is a clear error, still framed for the Go client.
    let bad =
        "POST /containers/raw/processes HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\n{nope";
    let response = raw_exchange(target, bad.as_bytes(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(response.json()["Type"], "");
    assert!(response.header("content-length").is_some());

    // An unknown stream id: 200 headers, then the connection closes.
    let stdout = "GET /containers/raw/processes/p/attaches/999999/stdout HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n\r\n";
    let response = raw_exchange(target, stdout.as_bytes(), Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert!(response.body.is_empty());
}

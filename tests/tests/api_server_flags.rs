//! Server flags that shape the API listener and the log: `--read-header-timeout`,
//! `--log-format lager` and `--log-time-format` (fake backend).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use trellis_tests::{Backend, TestServer};

fn fake_with(flags: &[&str]) -> TestServer {
    let mut options = TestServer::options(Backend::Fake);
    options.extra_args = flags.iter().map(|f| f.to_string()).collect();
    TestServer::start(options)
}

/// Everything the server sends until it closes the connection. The read timeout only keeps a
/// broken server from hanging the test: it is far beyond the header timeout under test and
/// below Trellis's 30 s default, which therefore cannot be what closed the connection.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => received,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => received,
        Err(e) => panic!(
            "the server kept a stalled request open ({e}); got {:?}",
            String::from_utf8_lossy(&received)
        ),
    }
}

#[test]
fn a_stalled_request_head_is_cut_off_after_the_read_header_timeout() {
    let server = fake_with(&["--read-header-timeout", "1s"]);
    let addr = server.tcp_addr.expect("tcp");

    // Part of a head, then nothing: answered 408 and closed.
    let mut partial = TcpStream::connect(addr).expect("connect");
    partial
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let reply = String::from_utf8_lossy(&read_until_closed(&mut partial)).to_string();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");

    // Nothing at all: closed without a word.
    let mut silent = TcpStream::connect(addr).expect("connect");
    assert!(read_until_closed(&mut silent).is_empty());

    // A kept-alive connection's second request is hyper's: cut off too.
    let mut kept = TcpStream::connect(addr).expect("connect");
    kept.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\n")
        .expect("write");
    let reply = String::from_utf8_lossy(&read_until_closed(&mut kept)).to_string();
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 1, "{reply}");

    // Whole requests are served as ever.
    assert!(server.ping_sync());
}

#[test]
fn read_header_timeout_takes_go_durations_and_refuses_others() {
    for good in ["0", "30s", "1m30s"] {
        let server = fake_with(&["--read-header-timeout", good]);
        assert!(server.ping_sync(), "{good}");
    }
    let status = std::process::Command::new(trellis_tests::binary())
        .args([
            "server",
            "--backend",
            "fake",
            "--read-header-timeout",
            "soon",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run trellis");
    assert_eq!(status.code(), Some(2));
}

/// Every line of the server's log, parsed: each must be one JSON object.
fn json_lines(server: &TestServer) -> Vec<serde_json::Value> {
    let logs = server.logs();
    assert!(!logs.trim().is_empty(), "the server logged nothing");
    logs.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

#[tokio::test]
async fn lager_logs_are_json_lines_as_gdn_writes_them() {
    let mut server = fake_with(&["--log-format", "lager", "--skip-setup"]);
    let client = server.client();
    client.ping().await.expect("ping");
    let _ = client.destroy("no-such-container").await;
    server.terminate();

    let lines = json_lines(&server);
    for line in &lines {
        let object = line.as_object().expect("an object");
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 5, "{line}");
        for key in ["timestamp", "level", "source", "message", "data"] {
            assert!(object.contains_key(key), "{key} in {line}");
        }
        let timestamp = line["timestamp"].as_str().expect("a string");
        // lager's RFC 3339 with nanoseconds, in UTC: 2026-01-02T03:04:05.123456789Z.
        assert_eq!(timestamp.len(), 30, "{timestamp}");
        assert!(
            timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
            "{timestamp}"
        );
        assert!(
            ["debug", "info", "error", "fatal"].contains(&line["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert_eq!(line["source"], "trellis");
        assert!(
            line["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("trellis.")),
            "{line}"
        );
        assert!(line["data"].is_object(), "{line}");
    }
    // The warning about --skip-setup: lager has no warning level.
    let warning = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("skip-setup"))
        })
        .expect("the --skip-setup warning");
    assert_eq!(warning["level"], "info");
    assert_eq!(warning["data"]["warning"], true);
    // A request's line: its span's fields are its data.
    let refused = lines
        .iter()
        .find(|l| l["message"] == "trellis.request.request-failed")
        .expect("the failed destroy's line");
    assert_eq!(refused["data"]["handle"], "no-such-container");
    assert_eq!(refused["data"]["status"], 404);
}

#[tokio::test]
async fn lager_logs_with_unix_epoch_times_carry_numeric_levels() {
    let mut server = fake_with(&["--log-format", "lager", "--log-time-format", "unix-epoch"]);
    server.client().ping().await.expect("ping");
    server.terminate();
    for line in json_lines(&server) {
        let timestamp = line["timestamp"].as_str().expect("a string");
        let (seconds, nanos) = timestamp.split_once('.').expect("seconds.nanoseconds");
        assert!(seconds.parse::<u64>().expect("seconds") > 1_600_000_000);
        assert_eq!(nanos.len(), 9, "{timestamp}");
        assert!(line["log_level"].as_u64().is_some_and(|l| l <= 3), "{line}");
        assert!(line.get("level").is_none(), "{line}");
        assert_eq!(line["source"], "trellis");
        assert!(line["data"].is_object(), "{line}");
    }
}

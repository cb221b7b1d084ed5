//! insta snapshots of the exact JSON bodies the server emits for every plain route (fake
//! backend), requests sent as the Go client sends them. A change to a field name, a null that
//! becomes an empty list, or a new key shows up here for review: the Go client decodes these
//! bytes. Values that differ between runs (the server's temporary depot) are replaced by a
//! placeholder; everything else is as sent.

use std::time::Duration;
use trellis_client::Target;
use trellis_tests::{go_client_request, TestServer};

const TIMEOUT: Duration = Duration::from_secs(20);

/// One line per exchange: `METHOD PATH -> STATUS BODY`, the body exactly as sent.
struct Transcript {
    target: Target,
    depot: String,
    lines: Vec<String>,
}

impl Transcript {
    async fn call(&mut self, method: &str, path: &str, body: Option<&str>) {
        let response = go_client_request(&self.target, method, path, body, TIMEOUT).await;
        let text = String::from_utf8_lossy(&response.body)
            .trim_end_matches('\n')
            .replace(&self.depot, "[DEPOT]");
        self.lines
            .push(format!("{method} {path} -> {} {text}", response.status));
    }

    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

fn spec(handle: &str, extra: &str) -> String {
    format!(
        r#"{{"handle":"{handle}",{extra}"image":{{}},"limits":{{"bandwidth_limits":{{"rate":1000,"burst":2000}},"cpu_limits":{{"weight":512}},"disk_limits":{{"byte_hard":4096,"scope":1}},"memory_limits":{{"limit_in_bytes":1073741824}},"pid_limits":{{"max":100}}}}}}"#
    )
}

/// A fake-backend server with fixed pools, so addresses and ports are the same every run.
fn server() -> TestServer {
    TestServer::start(trellis_tests::ServerOptions {
        network_pool: Some("10.254.0.0/22".into()),
        port_pool: Some((61001, 100)),
        ..TestServer::options(trellis_tests::Backend::Fake)
    })
}

fn transcript(server: &TestServer) -> Transcript {
    Transcript {
        target: server.targets().remove(0),
        depot: server.depot().display().to_string(),
        lines: Vec::new(),
    }
}

#[tokio::test]
async fn bodies_of_the_container_routes() {
    let server = server();
    let mut t = transcript(&server);
    t.call("GET", "/ping", None).await;
    t.call(
        "POST",
        "/containers",
        Some(&spec(
            "snap",
            r#""network":"10.212.9.0/30","properties":{"owner":"me"},"env":["A=1"],"grace_time":60000000000,"#,
        )),
    )
    .await;
    t.call("GET", "/containers", None).await;
    t.call("GET", "/containers?owner=me", None).await;
    t.call("GET", "/containers?owner=someone-else", None).await;
    t.call("GET", "/containers/snap/info", None).await;
    t.call("GET", "/containers/bulk_info?handles=snap%2Cmissing", None)
        .await;
    t.call("GET", "/containers/snap/properties", None).await;
    t.call(
        "PUT",
        "/containers/snap/properties/color",
        Some(r#"{"value":"blue"}"#),
    )
    .await;
    t.call("GET", "/containers/snap/properties/color", None)
        .await;
    t.call("DELETE", "/containers/snap/properties/color", None)
        .await;
    t.call("GET", "/containers/snap/properties/color", None)
        .await;
    t.call(
        "POST",
        "/containers/snap/net/in",
        Some(r#"{"handle":"snap","host_port":0,"container_port":8080}"#),
    )
    .await;
    t.call(
        "POST",
        "/containers/snap/net/out",
        Some(r#"{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.9"}],"ports":[{"start":80,"end":81}]}"#),
    )
    .await;
    t.call("POST", "/containers/snap/net/out/bulk", Some("[{}]"))
        .await;
    for kind in ["bandwidth", "cpu", "disk", "memory"] {
        t.call("GET", &format!("/containers/snap/limits/{kind}"), None)
            .await;
    }
    t.call("PUT", "/containers/snap/grace_time", Some("120000000000"))
        .await;
    t.call("PUT", "/containers/snap/stop", Some(r#"{"kill":true}"#))
        .await;
    t.call("GET", "/containers/snap/info", None).await;
    t.call("DELETE", "/containers/snap", None).await;
    t.call("DELETE", "/containers/snap", None).await;
    insta::assert_snapshot!(t.text());
}

#[tokio::test]
async fn bodies_of_errors() {
    let server = server();
    let mut t = transcript(&server);
    t.call("GET", "/containers/nope/info", None).await;
    t.call("GET", "/containers/nope/properties/k", None).await;
    t.call("POST", "/containers", Some("{not json")).await;
    t.call("POST", "/containers", Some(r#"{"handle":7}"#)).await;
    t.call("POST", "/containers", Some(&spec("bad/handle", "")))
        .await;
    t.call(
        "POST",
        "/containers",
        Some(&spec("net", r#""network":"10.0.0.0/33","#)),
    )
    .await;
    t.call("POST", "/containers", Some(&spec("dup", ""))).await;
    t.call("POST", "/containers", Some(&spec("dup", ""))).await;
    t.call("GET", "/containers/dup/properties/missing", None)
        .await;
    t.call(
        "POST",
        "/containers/dup/net/out",
        Some(r#"{"protocol":0,"ports":[{"start":1,"end":2}]}"#),
    )
    .await;
    t.call("GET", "/no/such/route", None).await;
    t.call("POST", "/ping", None).await;
    t.call("DELETE", "/containers/dup", None).await;
    insta::assert_snapshot!(t.text());
}

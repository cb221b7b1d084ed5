//! Every plain route of the Garden API over real HTTP, on TCP and on the unix socket, against
//! the fake backend: success, unknown container, bad input. Requests are written byte for byte
//! as the Go client writes them (`Host: api`, `Connection: close`, compact JSON plus newline).

use serde_json::{json, Value};
use std::time::Duration;
use trellis_client::Target;
use trellis_tests::{go_client_request, raw_exchange, RawResponse, TestServer};

const TIMEOUT: Duration = Duration::from_secs(20);

/// One plain request as the Go client sends it.
async fn call(target: &Target, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    go_client_request(target, method, path, body, TIMEOUT).await
}

fn assert_error(response: &RawResponse, status: u16, kind: &str) -> Value {
    assert_eq!(
        response.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = response.json();
    assert_eq!(body["Type"], kind, "{body}");
    // The five keys the Go client decodes, always present.
    for key in ["Type", "Message", "Handle", "ProcessID", "Binary"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }
    assert!(!body["Message"].as_str().unwrap_or("").is_empty());
    body
}

fn assert_ok(response: &RawResponse) -> Value {
    assert_eq!(
        response.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&response.body)
    );
    assert!(
        response.body.ends_with(b"\n"),
        "Go's encoder ends bodies with a newline"
    );
    response.json()
}

const EMPTY_SPEC: &str = r#"{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}"#;

fn spec_with(handle: &str, extra: &str) -> String {
    format!(
        r#"{{"handle":"{handle}",{extra}"image":{{}},"limits":{{"bandwidth_limits":{{"rate":1000,"burst":2000}},"cpu_limits":{{"weight":512}},"disk_limits":{{"byte_hard":4096,"scope":1}},"memory_limits":{{"limit_in_bytes":1073741824}},"pid_limits":{{"max":100}}}}}}"#
    )
}

#[tokio::test]
async fn ping_capacity_and_list_on_both_transports() {
    let server = TestServer::fake();
    for target in server.targets() {
        assert_eq!(
            assert_ok(&call(&target, "GET", "/ping", None).await),
            json!({})
        );
        let capacity = assert_ok(&call(&target, "GET", "/capacity", None).await);
        assert!(capacity["memory_in_bytes"].as_u64().unwrap() > 0);
        assert!(capacity["max_containers"].as_u64().unwrap() > 0);
        let list = assert_ok(&call(&target, "GET", "/containers", None).await);
        assert_eq!(
            list,
            json!({"Handles": []}),
            "an empty list is [], never null"
        );
    }
}

#[tokio::test]
async fn create_info_list_destroy() {
    let server = TestServer::fake();
    for (i, target) in server.targets().iter().enumerate() {
        let handle = format!("life-{i}");
        let created = assert_ok(
            &call(
                target,
                "POST",
                "/containers",
                Some(&spec_with(
                    &handle,
                    r#""properties":{"app":"web","a b":"c&d=e"},"#,
                )),
            )
            .await,
        );
        assert_eq!(created, json!({ "Handle": handle }));

        // A generated handle when none is given.
        let generated = assert_ok(&call(target, "POST", "/containers", Some(EMPTY_SPEC)).await);
        let generated = generated["Handle"].as_str().unwrap().to_string();
        assert!(!generated.is_empty());

        let info =
            assert_ok(&call(target, "GET", &format!("/containers/{handle}/info"), None).await);
        assert_eq!(info["State"], "active");
        assert_eq!(info["Properties"]["app"], "web");
        assert!(info["ContainerIP"].as_str().unwrap().starts_with("10."));
        assert!(info["ContainerPath"].as_str().unwrap().ends_with(&handle));

        // Property filters, form-encoded like the Go client writes them.
        let filtered =
            assert_ok(&call(target, "GET", "/containers?a+b=c%26d%3De&app=web", None).await);
        assert_eq!(filtered["Handles"], json!([handle]));
        let none = assert_ok(&call(target, "GET", "/containers?app=db", None).await);
        assert_eq!(none["Handles"], json!([]));

        let all = assert_ok(&call(target, "GET", "/containers", None).await);
        let handles: Vec<&str> = all["Handles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        assert!(handles.contains(&handle.as_str()) && handles.contains(&generated.as_str()));

        // A duplicate handle is a generic error.
        let duplicate = call(target, "POST", "/containers", Some(&spec_with(&handle, ""))).await;
        assert_error(&duplicate, 500, "");

        assert_eq!(
            assert_ok(&call(target, "DELETE", &format!("/containers/{handle}"), None).await),
            json!({})
        );
        let gone = call(target, "DELETE", &format!("/containers/{handle}"), None).await;
        let body = assert_error(&gone, 404, "ContainerNotFoundError");
        assert_eq!(body["Handle"], handle.as_str());
        let info = call(target, "GET", &format!("/containers/{handle}/info"), None).await;
        assert_error(&info, 404, "ContainerNotFoundError");
        assert_ok(&call(target, "DELETE", &format!("/containers/{generated}"), None).await);
    }
}

#[tokio::test]
async fn every_container_route_reports_an_unknown_handle_as_not_found() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    let routes: &[(&str, &str, Option<&str>)] = &[
        ("GET", "/containers/nope/info", None),
        ("DELETE", "/containers/nope", None),
        ("PUT", "/containers/nope/stop", Some(r#"{"kill":false}"#)),
        ("GET", "/containers/nope/files?source=%2Fetc&user=", None),
        ("GET", "/containers/nope/limits/bandwidth", None),
        ("GET", "/containers/nope/limits/cpu", None),
        ("GET", "/containers/nope/limits/disk", None),
        ("GET", "/containers/nope/limits/memory", None),
        (
            "POST",
            "/containers/nope/net/in",
            Some(r#"{"handle":"nope","container_port":8080}"#),
        ),
        ("POST", "/containers/nope/net/out", Some("{}")),
        ("POST", "/containers/nope/net/out/bulk", Some("[{}]")),
        ("PUT", "/containers/nope/grace_time", Some("1000000000")),
        ("GET", "/containers/nope/properties", None),
        ("GET", "/containers/nope/properties/k", None),
        (
            "PUT",
            "/containers/nope/properties/k",
            Some(r#"{"value":"v"}"#),
        ),
        ("DELETE", "/containers/nope/properties/k", None),
        ("GET", "/containers/nope/metrics", None),
    ];
    for (method, path, body) in routes {
        let response = call(target, method, path, *body).await;
        let body = assert_error(&response, 404, "ContainerNotFoundError");
        assert_eq!(body["Handle"], "nope", "{method} {path}");
    }
    // StreamIn with a body, as the Go client sends it (chunked).
    let request = "PUT /containers/nope/files?destination=%2Ftmp&user= HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let response = raw_exchange(target, request.as_bytes(), TIMEOUT)
        .await
        .unwrap();
    assert_error(&response, 404, "ContainerNotFoundError");
}

#[tokio::test]
async fn bulk_info_and_bulk_metrics_report_per_handle() {
    let server = TestServer::fake();
    let target = &server.targets()[1];
    assert_ok(&call(target, "POST", "/containers", Some(&spec_with("b1", ""))).await);
    assert_ok(&call(target, "POST", "/containers", Some(&spec_with("b2", ""))).await);

    let info = assert_ok(
        &call(
            target,
            "GET",
            "/containers/bulk_info?handles=b1%2Cb2%2Cmissing",
            None,
        )
        .await,
    );
    assert_eq!(info["b1"]["Err"], Value::Null);
    assert_eq!(info["b1"]["Info"]["State"], "active");
    assert_eq!(info["b2"]["Info"]["State"], "active");
    assert_eq!(info["missing"]["Err"]["Type"], "ContainerNotFoundError");
    assert_eq!(info["missing"]["Info"]["State"], "");

    let metrics = assert_ok(
        &call(
            target,
            "GET",
            "/containers/bulk_metrics?handles=b1%2Cmissing",
            None,
        )
        .await,
    );
    assert_eq!(metrics["b1"]["Err"], Value::Null);
    assert!(metrics["b1"]["Metrics"]["Age"].as_i64().unwrap() >= 0);
    assert_eq!(metrics["missing"]["Err"]["Type"], "ContainerNotFoundError");

    // No handles, or no parameter at all: an empty answer (gdn panics on the latter).
    assert_eq!(
        assert_ok(&call(target, "GET", "/containers/bulk_info?handles=", None).await),
        json!({})
    );
    assert_eq!(
        assert_ok(&call(target, "GET", "/containers/bulk_metrics", None).await),
        json!({})
    );
}

#[tokio::test]
async fn limits_net_stop_grace_properties_and_metrics() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    let create = spec_with("l", r#""properties":{"owner":"me"},"#);
    assert_ok(&call(target, "POST", "/containers", Some(&create)).await);

    let get = |path: &'static str| {
        let target = target.clone();
        async move { assert_ok(&call(&target, "GET", &format!("/containers/l{path}"), None).await) }
    };
    assert_eq!(
        get("/limits/bandwidth").await,
        json!({"rate":1000,"burst":2000})
    );
    // Reported as gdn does: the shares in limit_in_shares (the fake host is cgroup v1).
    assert_eq!(get("/limits/cpu").await, json!({"limit_in_shares":512}));
    assert_eq!(
        get("/limits/disk").await,
        json!({"byte_hard":4096,"scope":1})
    );
    assert_eq!(
        get("/limits/memory").await,
        json!({"limit_in_bytes":1073741824})
    );

    let net_in = assert_ok(
        &call(
            target,
            "POST",
            "/containers/l/net/in",
            Some(r#"{"handle":"l","container_port":8080}"#),
        )
        .await,
    );
    assert_eq!(net_in["container_port"], 8080);
    let host_port = net_in["host_port"].as_u64().unwrap();
    assert!(host_port > 0);
    let same = assert_ok(
        &call(
            target,
            "POST",
            "/containers/l/net/in",
            Some(r#"{"handle":"l"}"#),
        )
        .await,
    );
    assert_eq!(
        same["host_port"], same["container_port"],
        "container port 0 means the host port"
    );
    let info = get("/info").await;
    assert_eq!(info["MappedPorts"][0]["HostPort"], host_port);
    assert_eq!(info["MappedPorts"][0]["ContainerPort"], 8080);

    assert_eq!(assert_ok(&call(target, "POST", "/containers/l/net/out", Some(r#"{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.9"}],"ports":[{"start":80,"end":90}],"log":true}"#)).await), json!({}));
    assert_eq!(
        assert_ok(
            &call(
                target,
                "POST",
                "/containers/l/net/out/bulk",
                Some(r#"[{},{"protocol":3,"icmps":{}}]"#)
            )
            .await
        ),
        json!({})
    );
    // gdn filters IPv4 only and refuses ICMPv6 rules in its own words.
    let refused = call(
        target,
        "POST",
        "/containers/l/net/out",
        Some(r#"{"protocol":4}"#),
    )
    .await;
    assert_eq!(
        assert_error(&refused, 500, "")["Message"],
        "invalid protocol: 4"
    );
    assert_eq!(
        assert_ok(&call(target, "POST", "/containers/l/net/out/bulk", Some("null\n")).await),
        json!({})
    );
    // A rule whose range runs backwards is refused with a clear message.
    let backwards = call(
        target,
        "POST",
        "/containers/l/net/out",
        Some(r#"{"networks":[{"start":"10.0.0.9","end":"10.0.0.1"}]}"#),
    )
    .await;
    let body = assert_error(&backwards, 500, "");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .contains("start is after end"),
        "{body}"
    );

    assert_eq!(get("/properties").await["owner"], "me");
    assert_eq!(
        assert_ok(
            &call(
                target,
                "PUT",
                "/containers/l/properties/colour%20key",
                Some(r#"{"value":"blue"}"#)
            )
            .await
        ),
        json!({})
    );
    assert_eq!(
        get("/properties/colour%20key").await,
        json!({"value":"blue"})
    );
    assert_eq!(
        assert_ok(
            &call(
                target,
                "DELETE",
                "/containers/l/properties/colour%20key",
                None
            )
            .await
        ),
        json!({})
    );
    let missing = call(target, "GET", "/containers/l/properties/colour%20key", None).await;
    let body = assert_error(&missing, 500, "");
    assert!(body["Message"].as_str().unwrap().contains("colour key"));
    // Removing a missing key is not an error (guardian does not report one).
    assert_ok(&call(target, "DELETE", "/containers/l/properties/never-set", None).await);
    // The server's own keys cannot be changed.
    let reserved = call(
        target,
        "PUT",
        "/containers/l/properties/garden.state",
        Some(r#"{"value":"x"}"#),
    )
    .await;
    assert_error(&reserved, 500, "");

    let metrics = get("/metrics").await;
    for key in [
        "MemoryStat",
        "CPUStat",
        "DiskStat",
        "NetworkStat",
        "PidStat",
        "Age",
        "CPUEntitlement",
    ] {
        assert!(metrics.get(key).is_some(), "{key} missing in {metrics}");
    }
    assert!(metrics["MemoryStat"].get("TotalUsageTowardLimit").is_some());

    assert_eq!(
        assert_ok(
            &call(
                target,
                "PUT",
                "/containers/l/grace_time",
                Some("90000000000\n")
            )
            .await
        ),
        json!({})
    );
    assert_eq!(get("/properties").await["garden.grace-time"], "90000000000");

    assert_eq!(
        assert_ok(
            &call(
                target,
                "PUT",
                "/containers/l/stop",
                Some(r#"{"kill":false}"#)
            )
            .await
        ),
        json!({})
    );
    assert_eq!(get("/info").await["State"], "stopped");
    assert_ok(
        &call(
            target,
            "PUT",
            "/containers/l/stop",
            Some(r#"{"kill":true}"#),
        )
        .await,
    );
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    // A body that cannot be decoded is a plain Garden error (500), as gdn answers it.
    let cases: &[(&str, &str, &str, u16)] = &[
        ("POST", "/containers", "{not json", 500),
        ("POST", "/containers", r#"{"handle":3}"#, 500),
        ("POST", "/containers", r#"{"grace_time":"1s"}"#, 500),
        (
            "POST",
            "/containers",
            r#"{"limits":{"memory_limits":{"limit_in_bytes":-1}}}"#,
            500,
        ),
        (
            "POST",
            "/containers",
            r#"{"bind_mounts":[{"mode":7}]}"#,
            500,
        ),
        (
            "POST",
            "/containers",
            r#"{"netout_rules":[{"protocol":9}]}"#,
            500,
        ),
        ("POST", "/containers", "", 500),
        ("POST", "/containers", r#"{"network":"10.0.0.0/33"}"#, 500),
        ("POST", "/containers", r#"{"network":"banana"}"#, 500),
        ("POST", "/containers", r#"{"handle":"a/b"}"#, 500),
        ("POST", "/containers", r#"{"grace_time":-5}"#, 500),
    ];
    for (method, path, body, status) in cases {
        let response = call(target, method, path, Some(body)).await;
        assert_error(&response, *status, "");
    }
    assert_eq!(
        assert_ok(&call(target, "GET", "/containers", None).await),
        json!({"Handles": []}),
        "no bad create may leave a container behind"
    );

    assert_ok(&call(target, "POST", "/containers", Some(&spec_with("bad", ""))).await);
    let container_cases: &[(&str, &str, &str)] = &[
        ("PUT", "/containers/bad/stop", r#"{"kill":"yes"}"#),
        ("PUT", "/containers/bad/grace_time", r#""1s""#),
        ("PUT", "/containers/bad/properties/k", r#"["v"]"#),
        ("POST", "/containers/bad/net/in", r#"{"host_port":-1}"#),
        (
            "POST",
            "/containers/bad/net/out",
            r#"{"ports":[{"start":70000}]}"#,
        ),
        ("POST", "/containers/bad/net/out/bulk", r#"{}"#),
    ];
    for (method, path, body) in container_cases {
        let response = call(target, method, path, Some(body)).await;
        assert_error(&response, 500, "");
    }
    let out_of_range = call(
        target,
        "POST",
        "/containers/bad/net/in",
        Some(r#"{"container_port":70000}"#),
    )
    .await;
    assert_error(&out_of_range, 500, "");
    let negative = call(target, "PUT", "/containers/bad/grace_time", Some("-1")).await;
    assert_error(&negative, 500, "");
    let info = assert_ok(&call(target, "GET", "/containers/bad/info", None).await);
    assert_eq!(info["State"], "active");
    assert_eq!(info["MappedPorts"], json!([]));
    assert!(info["Properties"].get("k").is_none());
}

#[tokio::test]
async fn unknown_routes_wrong_methods_and_huge_bodies() {
    let server = TestServer::fake();
    let target = &server.targets()[1];
    assert_error(&call(target, "GET", "/nope", None).await, 404, "");
    assert_error(
        &call(target, "GET", "/containers/h/properties/x/y%20z", None).await,
        404,
        "",
    );
    assert_error(&call(target, "POST", "/ping", Some("{}")).await, 405, "");
    assert_error(&call(target, "PATCH", "/containers", None).await, 405, "");
    assert_error(
        &call(target, "GET", "/containers/%zz/info", None).await,
        400,
        "",
    );

    // Over the body guard (far above what any request within the core's bounds needs): a
    // plain Garden error, as for every request over a bound.
    let huge = format!(r#"{{"handle":"{}"}}"#, "x".repeat(9 << 20));
    let response = call(target, "POST", "/containers", Some(&huge)).await;
    let body = assert_error(&response, 500, "");
    assert!(body["Message"].as_str().unwrap().contains("larger than"));
    assert_eq!(
        assert_ok(&call(target, "GET", "/containers", None).await)["Handles"],
        json!([])
    );
}

#[tokio::test]
async fn half_sent_requests_and_garbage_never_stick_the_server() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    // Garbage instead of a request line.
    let response = raw_exchange(target, b"\x16\x03\x01 not http\r\n\r\n", TIMEOUT)
        .await
        .unwrap();
    assert_error(&response, 400, "");
    // A JSON body shorter than its Content-Length, then the client stops sending: the request
    // waits for its body; meanwhile other requests are served.
    let stalled = tokio::spawn({
        let target = target.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let Target::Tcp(addr) = &target else {
                unreachable!()
            };
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"POST /containers HTTP/1.1\r\nHost: api\r\nContent-Length: 100\r\n\r\n{\"handle\":")
                .await
                .unwrap();
            stream
        }
    });
    let _held = stalled.await.unwrap();
    for _ in 0..20 {
        assert_ok(&call(target, "GET", "/ping", None).await);
    }
    // A request head that never ends.
    let half = tokio::spawn({
        let target = target.clone();
        async move {
            use tokio::io::AsyncWriteExt;
            let Target::Tcp(addr) = &target else {
                unreachable!()
            };
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /ping HTTP/1.1\r\nHost: a")
                .await
                .unwrap();
            stream
        }
    });
    let _held2 = half.await.unwrap();
    assert_ok(&call(target, "GET", "/capacity", None).await);
    assert!(server.ping_sync());
}

//! The handle rule, the bounds on input and the Garden error types, over real HTTP against the
//! fake backend: every refusal is a 500 with the `Type` gdn sends for the case (`""` for all of
//! these), a message naming the rule, and changes nothing the API can see.

use serde_json::{json, Value};
use std::time::Duration;
use trellis_client::{ProcessIo, Target};
use trellis_core::api::ProcessSpec;
use trellis_core::handle::MAX_HANDLE_BYTES;
use trellis_core::limits;
use trellis_tests::{go_client_request, RawResponse, TestServer};

const TIMEOUT: Duration = Duration::from_secs(20);

async fn call(target: &Target, method: &str, path: &str, body: Option<&str>) -> RawResponse {
    go_client_request(target, method, path, body, TIMEOUT).await
}

/// A Garden error: status, `Type` and the five keys; returns the message.
fn garden_error(response: &RawResponse, status: u16, kind: &str) -> String {
    let text = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, status, "body: {text}");
    let body = response.json();
    assert_eq!(body["Type"], kind, "{body}");
    for key in ["Type", "Message", "Handle", "ProcessID", "Binary"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }
    body["Message"].as_str().unwrap_or_default().to_string()
}

fn ok(response: &RawResponse) -> Value {
    assert_eq!(
        response.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

async fn list(target: &Target) -> Value {
    ok(&call(target, "GET", "/containers", None).await)["Handles"].clone()
}

async fn create(target: &Target, spec: Value) -> RawResponse {
    call(target, "POST", "/containers", Some(&spec.to_string())).await
}

#[tokio::test]
async fn handles_no_host_object_could_be_named_after_are_refused_up_front() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    let too_long = "h".repeat(MAX_HANDLE_BYTES + 1);
    let cases = [
        (".hidden", "must not start with '.'"),
        ("tasks", "cgroup control file"),
        ("cgroup.procs", "cgroup control file"),
        ("memory.limit_in_bytes", "cgroup control file"),
        ("notify_on_release", "cgroup control file"),
        (too_long.as_str(), "must be at most 245 bytes long, not 246"),
    ];
    for (handle, rule) in cases {
        let message = garden_error(&create(target, json!({ "handle": handle })).await, 500, "");
        assert!(message.starts_with("invalid handle '"), "{message}");
        assert!(message.contains(rule), "{handle}: {message}");
        assert_eq!(
            list(target).await,
            json!([]),
            "{handle} left something listed"
        );
    }
    // 255 bytes, which used to pass validation and fail at the last step, is refused the same.
    let message = garden_error(
        &create(target, json!({ "handle": "h".repeat(255) })).await,
        500,
        "",
    );
    assert!(message.contains("not 255"), "{message}");
    // A refused handle is shown shortened in the message.
    assert!(message.len() < 200, "{message}");

    // The longest allowed handle, and names that merely contain dots, work.
    let longest = "h".repeat(MAX_HANDLE_BYTES);
    for handle in [longest.as_str(), "my.app", "memory", "tasks2"] {
        let created = ok(&create(target, json!({ "handle": handle })).await);
        assert_eq!(created["Handle"], handle);
    }
    assert_eq!(list(target).await.as_array().map(Vec::len), Some(4));
}

#[tokio::test]
async fn properties_over_their_bounds_are_refused_and_change_nothing() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    ok(&create(
        target,
        json!({ "handle": "web", "properties": { "a": "1" } }),
    )
    .await);
    let put = |key: String, value: String| async move {
        let path = format!("/containers/web/properties/{key}");
        call(
            target,
            "PUT",
            &path,
            Some(&json!({ "value": value }).to_string()),
        )
        .await
    };

    let value = "v".repeat(limits::MAX_PROPERTY_VALUE_BYTES + 1);
    let message = garden_error(&put("big".into(), value).await, 500, "");
    assert_eq!(
        message,
        "limit exceeded: property 'big' has a value of 65537 bytes; the limit is 65536"
    );
    let message = garden_error(
        &put("k".repeat(limits::MAX_PROPERTY_KEY_BYTES + 1), "1".into()).await,
        500,
        "",
    );
    assert_eq!(
        message,
        "limit exceeded: property key is 1025 bytes long; the limit is 1024"
    );
    // Values at the bound are taken until the record would outgrow its bound.
    let mut stored = 0;
    let message = loop {
        let response = put(format!("big{stored:02}"), "v".repeat(65536)).await;
        if response.status != 200 {
            break garden_error(&response, 500, "");
        }
        stored += 1;
        assert!(stored < 100, "the record bound never applied");
    };
    assert_eq!(stored, 15);
    assert!(
        message.starts_with("limit exceeded: the container's record would be "),
        "{message}"
    );
    let properties = ok(&call(target, "GET", "/containers/web/properties", None).await);
    let properties = properties.as_object().expect("an object");
    assert!(!properties.contains_key("big") && !properties.contains_key("big15"));
    assert_eq!(properties["a"], "1");

    // A create with too many properties, or too large ones together, is refused whole.
    let many: serde_json::Map<String, Value> = (0..=limits::MAX_PROPERTIES)
        .map(|i| (format!("k{i}"), json!("")))
        .collect();
    let message = garden_error(
        &create(target, json!({ "handle": "many", "properties": many })).await,
        500,
        "",
    );
    assert_eq!(
        message,
        "limit exceeded: a container may have at most 256 properties"
    );
    let large: serde_json::Map<String, Value> = (0..16)
        .map(|i| (format!("k{i}"), json!("v".repeat(65536))))
        .collect();
    let message = garden_error(
        &create(target, json!({ "handle": "large", "properties": large })).await,
        500,
        "",
    );
    assert!(message.contains("record would be"), "{message}");
    assert_eq!(list(target).await, json!(["web"]));
}

#[tokio::test]
async fn env_bind_mounts_and_net_out_rules_over_their_bounds_are_refused() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    let env = vec!["A=1"; limits::MAX_ENV_ENTRIES + 1];
    let mounts = vec![json!({"src_path": "/a", "dst_path": "/b"}); limits::MAX_BIND_MOUNTS + 1];
    let rules = vec![json!({"protocol": 1}); limits::MAX_NETOUT_RULES + 1];
    for (spec, expected) in [
        (
            json!({ "handle": "c", "env": env }),
            "limit exceeded: the container's environment has 1025 entries; the limit is 1024",
        ),
        (
            json!({ "handle": "c", "bind_mounts": mounts }),
            "limit exceeded: 257 bind mounts; the limit is 256",
        ),
        (
            json!({ "handle": "c", "netout_rules": rules }),
            "limit exceeded: the container would have 1025 net-out rules; the limit is 1024",
        ),
    ] {
        assert_eq!(garden_error(&create(target, spec).await, 500, ""), expected);
    }
    assert_eq!(list(target).await, json!([]));

    // Net-out rules added later count with the spec's.
    ok(&create(
        target,
        json!({ "handle": "c", "netout_rules": vec![json!({"protocol": 1}); 1000] }),
    )
    .await);
    let more = json!(vec![json!({"protocol": 1}); 25]).to_string();
    let message = garden_error(
        &call(target, "POST", "/containers/c/net/out/bulk", Some(&more)).await,
        500,
        "",
    );
    assert_eq!(
        message,
        "limit exceeded: the container would have 1025 net-out rules; the limit is 1024"
    );
    let fits = json!(vec![json!({"protocol": 1}); 24]).to_string();
    ok(&call(target, "POST", "/containers/c/net/out/bulk", Some(&fits)).await);
}

#[tokio::test]
async fn networks_containers_cannot_use_are_refused() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    for (network, range) in [
        ("127.0.0.1", "127.0.0.0/8 (loopback)"),
        ("0.0.0.0/8", "0.0.0.0/8 (\"this network\")"),
        ("169.254.1.0/24", "169.254.0.0/16 (link-local)"),
        ("224.0.0.0/24", "224.0.0.0/4 (multicast)"),
    ] {
        let message = garden_error(
            &create(target, json!({ "handle": "n", "network": network })).await,
            500,
            "",
        );
        assert!(
            message.contains(&format!("overlaps {range}, which containers cannot use")),
            "{network}: {message}"
        );
    }
    assert_eq!(list(target).await, json!([]));
    ok(&create(target, json!({ "handle": "n", "network": "10.99.0.0/24" })).await);
}

/// Each error travels with the `Type` gdn gives the same case: the two not-found types (404)
/// where gdn uses them, and `""` (500) where gdn answers a plain error, as it does for a
/// duplicate process id (`errors.New("process ID '...' already in use")` in guardian) and for
/// a body it cannot decode.
#[tokio::test]
async fn errors_carry_the_garden_type_gdn_sends() {
    let server = TestServer::fake();
    let target = &server.targets()[0];
    ok(&create(target, json!({ "handle": "web" })).await);

    let message = garden_error(
        &call(target, "GET", "/containers/nope/info", None).await,
        404,
        "ContainerNotFoundError",
    );
    assert_eq!(message, "unknown handle: nope");
    garden_error(
        &call(target, "DELETE", "/containers/nope", None).await,
        404,
        "ContainerNotFoundError",
    );
    garden_error(
        &call(target, "POST", "/containers", Some(r#"{"handle":"web"}"#)).await,
        500,
        "",
    );
    garden_error(
        &call(target, "GET", "/containers/web/properties/missing", None).await,
        500,
        "",
    );
    // gdn decodes the body before anything else and answers a failure as a plain error (500).
    for body in ["{not json", "", r#"{"handle":3}"#] {
        garden_error(
            &call(target, "POST", "/containers", Some(body)).await,
            500,
            "",
        );
    }
    garden_error(
        &call(target, "PUT", "/containers/web/grace_time", Some("\"x\"")).await,
        500,
        "",
    );

    // A duplicate process id: a plain error with gdn's message.
    let web = server.client().container("web");
    let sleeper = || ProcessSpec {
        id: "same-id".into(),
        path: "sleep".into(),
        args: vec!["30".into()],
        ..Default::default()
    };
    let _first = web.run(sleeper(), ProcessIo::default()).await.expect("run");
    match web.run(sleeper(), ProcessIo::default()).await {
        Err(trellis_client::Error::Server { status, message }) => {
            assert_eq!(status, 500);
            assert_eq!(message, "process ID 'same-id' already in use");
        }
        other => panic!(
            "a duplicate process id: {:?}",
            other.map(|p| p.id().to_string())
        ),
    }
    match web.attach("nope", ProcessIo::default()).await {
        Err(trellis_client::Error::ProcessNotFound { process_id }) => {
            assert_eq!(process_id, "nope")
        }
        other => panic!(
            "attach to an unknown process: {:?}",
            other.map(|p| p.id().to_string())
        ),
    }
}

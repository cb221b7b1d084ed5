//! Networking across a server killed with SIGKILL (as root): NetOut rules and NetIn mappings
//! are exactly what they were, no more and no less. Traffic only between containers of this
//! test and from the host to them over loopback.

mod linux_support;

use linux_support::{ok, run, sh};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_client::{Client, Container, ProcessIo};
use trellis_core::api::{ContainerSpec, IpRange, NetOutRule, PortRange, ProcessSpec, Protocol};
use trellis_tests::{eventually, TestServer};

fn rule_to(ip: std::net::Ipv4Addr, port: u16) -> NetOutRule {
    NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some(ip.into()),
            end: Some(ip.into()),
        }],
        ports: vec![PortRange {
            start: port,
            end: port,
        }],
        ..Default::default()
    }
}

async fn serve(c: &Container, port: u16, body: &str) {
    ok(
        c,
        &format!("mkdir -p /www{port} && printf '%s' '{body}' > /www{port}/index.html"),
    )
    .await;
    c.run(
        ProcessSpec {
            id: format!("web-{port}"),
            path: "httpd".into(),
            args: vec![
                "-f".into(),
                "-p".into(),
                port.to_string(),
                "-h".into(),
                format!("/www{port}"),
            ],
            ..Default::default()
        },
        ProcessIo::default(),
    )
    .await
    .expect("httpd");
}

async fn connects(c: &Container, ip: std::net::Ipv4Addr, port: u16) -> bool {
    run(c, sh(&format!("echo | nc -w 2 {ip} {port}")))
        .await
        .status
        == 0
}

async fn get(port: u32) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await else {
        return "refused".into();
    };
    let _ = s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").await;
    let mut r = String::new();
    let _ = s.read_to_string(&mut r).await;
    r.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(r)
}

/// (container, port) -> connects, for every container and both target ports.
async fn reachability(
    client: &Client,
    handles: &[&str],
    ip: std::net::Ipv4Addr,
) -> BTreeMap<(String, u16), bool> {
    let mut seen = BTreeMap::new();
    for h in handles {
        for port in [8080, 8081] {
            seen.insert(
                (h.to_string(), port),
                connects(&client.container(*h), ip, port).await,
            );
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread")]
async fn net_out_and_net_in_are_exactly_restored_after_sigkill() {
    let mut server = TestServer::linux();
    let client = server.client();
    let create = |handle: &str, rules: Vec<NetOutRule>| {
        let client = client.clone();
        let handle = handle.to_string();
        async move {
            client
                .create(ContainerSpec {
                    handle,
                    netout_rules: rules,
                    ..Default::default()
                })
                .await
                .expect("create")
        }
    };
    let target = create("rn-target", vec![]).await;
    serve(&target, 8080, "t8080").await;
    serve(&target, 8081, "t8081").await;
    let ip: std::net::Ipv4Addr = target.info().await.unwrap().container_ip.parse().unwrap();
    let _none = create("rn-none", vec![]).await;
    let _at_create = create("rn-create", vec![rule_to(ip, 8080)]).await;
    let later = create("rn-later", vec![]).await;
    later.net_out(&rule_to(ip, 8081)).await.expect("net out");
    let web = create("rn-web", vec![]).await;
    serve(&web, 8080, "web").await;
    let (host_port, _) = web.net_in(0, 8080).await.expect("net in");
    let handles = ["rn-none", "rn-create", "rn-later"];
    let before = reachability(&client, &handles, ip).await;
    let expected: BTreeMap<(String, u16), bool> = [
        (("rn-none".to_string(), 8080), false),
        (("rn-none".to_string(), 8081), false),
        (("rn-create".to_string(), 8080), true),
        (("rn-create".to_string(), 8081), false),
        (("rn-later".to_string(), 8080), false),
        (("rn-later".to_string(), 8081), true),
    ]
    .into();
    assert_eq!(before, expected, "before the kill");
    assert_eq!(get(host_port).await, "web");

    server.kill();
    server.restart();
    let after = reachability(&client, &handles, ip).await;
    assert_eq!(after, expected, "after the restart");
    let served = eventually(Duration::from_secs(5), || async {
        get(host_port).await == "web"
    })
    .await;
    assert!(served, "NetIn after the restart: {}", get(host_port).await);
}

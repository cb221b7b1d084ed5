//! gdn's per-container networking flags over HTTP against the Linux backend (as root): the TCP
//! sysctls (`--tcp-keepalive-*`, `--tcp-retries*`) inside containers and not on the host, and
//! `--enable-container-network-metrics`. Traffic only flows between the host and the
//! containers these tests create.

mod linux_support;

use linux_support::{http_get, ok, serve_http};
use std::net::SocketAddr;
use trellis_client::{Client, Container};
use trellis_core::api::ContainerSpec;
use trellis_tests::TestServer;

fn server_with(args: &[&str]) -> TestServer {
    let mut options = TestServer::linux_options();
    options
        .extra_args
        .extend(args.iter().map(|a| a.to_string()));
    TestServer::start(options)
}

fn host_sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
        .expect("host sysctl")
        .trim()
        .to_string()
}

async fn create(client: &Client, handle: &str, privileged: bool) -> Container {
    client
        .create(ContainerSpec {
            handle: handle.into(),
            privileged,
            ..Default::default()
        })
        .await
        .expect("create")
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_sysctls_are_set_in_each_container_and_never_on_the_host() {
    let names = [
        "tcp_keepalive_time",
        "tcp_keepalive_intvl",
        "tcp_keepalive_probes",
        "tcp_retries1",
        "tcp_retries2",
    ];
    let host_before: Vec<String> = names.iter().map(|n| host_sysctl(n)).collect();
    let server = server_with(&[
        "--tcp-keepalive-time",
        "1234",
        "--tcp-keepalive-interval",
        "23",
        "--tcp-keepalive-probes",
        "4",
        "--tcp-retries1",
        "5",
    ]);
    let client = server.client();
    let expected = ["1234", "23", "4", "5", host_before[4].as_str()];
    for (handle, privileged) in [("nf-sysctl", false), ("nf-sysctl-privileged", true)] {
        let c = create(&client, handle, privileged).await;
        let script = names
            .iter()
            .map(|n| format!("cat /proc/sys/net/ipv4/{n}"))
            .collect::<Vec<_>>()
            .join(" && ");
        let seen = ok(&c, &script).await;
        // The unset one (tcp_retries2) carries the host's value into the namespace, as gdn.
        assert_eq!(seen.lines().collect::<Vec<_>>(), expected, "{handle}");
    }
    let host_after: Vec<String> = names.iter().map(|n| host_sysctl(n)).collect();
    assert_eq!(host_after, host_before, "the host's own settings changed");
}

/// busybox httpd serving `body` on port 8080, and a GET of it from the host.
async fn serve_and_fetch(container: &Container, body: &str) {
    let ip: std::net::Ipv4Addr = container
        .info()
        .await
        .expect("info")
        .container_ip
        .parse()
        .expect("an ip");
    let address = SocketAddr::from((ip, 8080));
    let _httpd = serve_http(container, address, body).await;
    let got = http_get(address).expect("GET from the host");
    assert_eq!(got.len(), body.len(), "short response");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_network_metrics_count_the_containers_traffic_when_enabled() {
    let server = server_with(&["--enable-container-network-metrics"]);
    let client = server.client();
    let c = create(&client, "nf-metrics", false).await;
    let before = c
        .metrics()
        .await
        .expect("metrics")
        .network_stat
        .expect("network figures with the flag");
    serve_and_fetch(&c, &"x".repeat(100_000)).await;
    let after = c
        .metrics()
        .await
        .expect("metrics")
        .network_stat
        .expect("network figures with the flag");
    assert!(
        after.tx_bytes >= before.tx_bytes + 100_000,
        "{before:?} -> {after:?}"
    );
    assert!(after.rx_bytes > before.rx_bytes, "{before:?} -> {after:?}");
    let bulk = client
        .bulk_metrics(&["nf-metrics"])
        .await
        .expect("bulk metrics");
    let bulk = bulk["nf-metrics"]
        .metrics
        .network_stat
        .expect("bulk network figures");
    assert!(bulk.tx_bytes >= after.tx_bytes, "{after:?} -> {bulk:?}");
}

//! Container networking over HTTP against the Linux backend (as root): what Info and the
//! properties report, NetIn from the host, NetOut opening the default-deny firewall between
//! containers, shared and separate subnets, bandwidth limits read back, no network metrics by default, and
//! the host links gone after destroy. Traffic only flows between the host and containers
//! these tests create, or between those containers.

mod linux_support;

use linux_support::*;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;
use trellis_client::{Container, Error};
use trellis_core::api::{
    BandwidthLimits, ContainerSpec, IpRange, Limits, NetOutRule, PortRange, Protocol,
};
use trellis_tests::eventually;

fn host_command(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host's address as gdn reports it: the first IPv4 address of the default route's
/// interface, read with `ip` (an independent path from the server's netlink query).
fn default_route_address() -> Option<Ipv4Addr> {
    let route = host_command("ip", &["-4", "-o", "route", "show", "default"]);
    let mut words = route.split_whitespace();
    words.find(|w| *w == "dev")?;
    let dev = words.next()?;
    let addrs = host_command("ip", &["-4", "-o", "addr", "show", "dev", dev]);
    let mut words = addrs.split_whitespace();
    words.find(|w| *w == "inet")?;
    words.next()?.split('/').next()?.parse().ok()
}

fn ip_of(info: &trellis_core::api::ContainerInfo) -> Ipv4Addr {
    info.container_ip.parse().expect("a container ip")
}

/// Starts busybox httpd serving `body` on `port` of the container's address.
async fn http_server(container: &Container, port: u16, body: &str) -> trellis_client::Process {
    let ip = ip_of(&container.info().await.expect("info"));
    serve_http(container, SocketAddr::from((ip, port)), body).await
}

/// From inside `container`, whether a TCP connection to `to:port` succeeds.
async fn connects(container: &Container, to: Ipv4Addr, port: u16) -> bool {
    run(container, sh(&format!("echo hi | nc -w 2 {to} {port}")))
        .await
        .status
        == 0
}

async fn pings(container: &Container, to: Ipv4Addr) -> bool {
    run(container, sh(&format!("ping -c 1 -W 2 {to}")))
        .await
        .status
        == 0
}

#[tokio::test(flavor = "multi_thread")]
async fn info_reports_the_addresses_external_ip_and_mapped_ports() {
    let c = create(ContainerSpec {
        handle: "nh-info".into(),
        ..Default::default()
    })
    .await;
    let info = c.info().await.expect("info");
    let container_ip = ip_of(&info);
    let host_ip: Ipv4Addr = info.host_ip.parse().expect("a host ip");
    // A /30 from the pool: network, container (+1), gateway (+2), broadcast.
    assert_eq!(u32::from(host_ip), u32::from(container_ip) + 1, "{info:?}");
    let expected_external = default_route_address()
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    assert_eq!(info.external_ip, expected_external);

    // The container sees its address on its own interface and the gateway as its route.
    let inside = ok(&c, "ip -4 -o addr; ip route").await;
    assert!(
        inside.contains(&format!("inet {container_ip}/30")),
        "{inside}"
    );
    assert!(
        inside.contains(&format!("default via {host_ip}")),
        "{inside}"
    );

    let (first_host, first_container) = c.net_in(0, 8080).await.expect("net in");
    assert_eq!(first_container, 8080);
    // Container port 0 means the same as the host port.
    let (second_host, second_container) = c.net_in(0, 0).await.expect("net in");
    assert_eq!(second_container, second_host);
    assert_ne!(first_host, second_host);

    let info = c.info().await.expect("info");
    let mapped: Vec<(u32, u32)> = info
        .mapped_ports
        .unwrap_or_default()
        .iter()
        .map(|m| (m.host_port, m.container_port))
        .collect();
    assert_eq!(mapped, vec![(first_host, 8080), (second_host, second_host)]);
    let properties = c.properties().await.expect("properties");
    assert_eq!(
        properties.get("garden.network.container-ip"),
        Some(&container_ip.to_string())
    );
    assert_eq!(
        properties.get("garden.network.host-ip"),
        Some(&host_ip.to_string())
    );
    assert_eq!(
        properties.get("garden.network.external-ip").cloned(),
        default_route_address().map(|ip| ip.to_string())
    );
    let mapped_property = properties
        .get("garden.network.mapped-ports")
        .expect("mapped-ports property");
    assert!(
        mapped_property.contains(&format!("\"HostPort\":{first_host}")),
        "{mapped_property}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn net_in_publishes_a_server_in_the_container_to_the_host() {
    let web = create(ContainerSpec {
        handle: "nh-web".into(),
        ..Default::default()
    })
    .await;
    let _httpd = http_server(&web, 8080, "hello from the container").await;
    let (host_port, _) = web.net_in(0, 8080).await.expect("net in");
    let host_port = u16::try_from(host_port).expect("a port");

    // From the host itself, through loopback (DNAT applies to locally made connections).
    let body = http_get(SocketAddr::from(([127, 0, 0, 1], host_port))).expect("GET via NetIn");
    assert_eq!(body, "hello from the container");

    // The same host port cannot be mapped twice, here or in another container.
    let other = create(ContainerSpec {
        handle: "nh-web-other".into(),
        ..Default::default()
    })
    .await;
    let err = other
        .net_in(u32::from(host_port), 8080)
        .await
        .expect_err("a host port in use");
    assert!(!matches!(err, Error::ContainerNotFound { .. }), "{err}");
    assert!(err.to_string().contains(&host_port.to_string()), "{err}");
    // The failed mapping changed nothing: the first still answers.
    let body = http_get(SocketAddr::from(([127, 0, 0, 1], host_port))).expect("GET via NetIn");
    assert_eq!(body, "hello from the container");

    // Destroying the container takes the mapping with it.
    client().destroy("nh-web").await.expect("destroy");
    assert!(http_get(SocketAddr::from(([127, 0, 0, 1], host_port))).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_subnets_connect_and_net_out_opens_the_default_deny_firewall() {
    let spec = |handle: &str, network: &str| ContainerSpec {
        handle: handle.into(),
        network: network.into(),
        ..Default::default()
    };
    let one = create(spec("nh-one", "10.212.1.0/29")).await;
    let two = create(spec("nh-two", "10.212.1.0/29")).await;
    let far = create(spec("nh-far", "10.212.2.0/30")).await;
    let two_ip = ip_of(&two.info().await.unwrap());
    let one_ip = ip_of(&one.info().await.unwrap());
    let far_ip = ip_of(&far.info().await.unwrap());
    assert_eq!(far_ip, Ipv4Addr::new(10, 212, 2, 1));
    for ip in [one_ip, two_ip] {
        // In the /29, never its network, gateway (.6) or broadcast (.7) address.
        let [a, b, c, d] = ip.octets();
        assert!((a, b, c) == (10, 212, 1) && (1..=5).contains(&d), "{ip}");
    }
    assert_ne!(one_ip, two_ip);

    // Neighbours on one subnet reach each other; other subnets are denied by default.
    assert!(pings(&one, two_ip).await);
    assert!(pings(&two, one_ip).await);
    assert!(!pings(&one, far_ip).await);

    let _allowed = http_server(&far, 8080, "far").await;
    let _other_port = http_server(&far, 9090, "far other").await;
    assert!(!connects(&one, far_ip, 8080).await);

    one.net_out(&NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some(far_ip.into()),
            end: Some(far_ip.into()),
        }],
        ports: vec![PortRange {
            start: 8000,
            end: 8100,
        }],
        ..Default::default()
    })
    .await
    .expect("net out");
    assert!(connects(&one, far_ip, 8080).await);
    // What the rule does not name stays denied: another port, ICMP, and the neighbour's egress.
    assert!(!connects(&one, far_ip, 9090).await);
    assert!(!pings(&one, far_ip).await);
    assert!(!connects(&two, far_ip, 8080).await);

    // BulkNetOut: several rules in one call.
    two.bulk_net_out(&[
        NetOutRule {
            protocol: Protocol::Tcp,
            networks: vec![IpRange {
                start: Some(far_ip.into()),
                end: None,
            }],
            ports: vec![PortRange {
                start: 9090,
                end: 9090,
            }],
            ..Default::default()
        },
        NetOutRule {
            protocol: Protocol::Icmp,
            networks: vec![IpRange {
                start: Some(far_ip.into()),
                end: None,
            }],
            ..Default::default()
        },
    ])
    .await
    .expect("bulk net out");
    assert!(connects(&two, far_ip, 9090).await);
    assert!(pings(&two, far_ip).await);
    assert!(!connects(&two, far_ip, 8080).await);

    // An invalid rule is a clear error and changes nothing.
    let err = one
        .net_out(&NetOutRule {
            protocol: Protocol::All,
            ports: vec![PortRange { start: 1, end: 2 }],
            ..Default::default()
        })
        .await
        .expect_err("ports without a port protocol");
    assert!(!err.to_string().is_empty());
    assert!(connects(&one, far_ip, 8080).await);
}

/// A freed address handed to a new container on a bridge that stays up: the host and a
/// neighbour on the subnet reach the new container at once (stale ARP entries, or a bridge
/// still sending the MAC to the old port, would make it unreachable for up to 45 seconds).
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_address_is_reachable_at_once_on_a_subnet_that_stays_up() {
    let spec = |handle: &str, network: &str| ContainerSpec {
        handle: handle.into(),
        network: network.into(),
        ..Default::default()
    };
    let neighbour = create(spec("nh-neighbour", "10.212.6.9/24")).await;
    let address = Ipv4Addr::new(10, 212, 6, 5);
    {
        let first = create(spec("nh-reused", "10.212.6.5/24")).await;
        assert_eq!(ip_of(&first.info().await.unwrap()), address);
        // The host and the neighbour both learn the first container's MAC.
        let _httpd = http_server(&first, 8080, "first").await;
        assert!(connects(&neighbour, address, 8080).await);
    }
    let second = create(spec("nh-reused-again", "10.212.6.5/24")).await;
    assert_eq!(ip_of(&second.info().await.unwrap()), address);
    let _httpd = http_server(&second, 8080, "second").await;
    assert_eq!(
        http_get(SocketAddr::from((address, 8080))).expect("GET from the host"),
        "second"
    );
    assert!(
        connects(&neighbour, address, 8080).await,
        "the neighbour still sends to the old MAC"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bandwidth_limits_read_back_and_metrics_have_no_network_figures_by_default() {
    let limits = BandwidthLimits {
        rate: 10_000_000,
        burst: 1_000_000,
    };
    let c = create(ContainerSpec {
        handle: "nh-bandwidth".into(),
        limits: Limits {
            bandwidth_limits: limits,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    assert_eq!(c.current_bandwidth_limits().await.expect("limits"), limits);
    // As gdn without --enable-container-network-metrics (linux_network_flags has it on).
    assert_eq!(c.metrics().await.expect("metrics").network_stat, None);

    // No limit asked: zeros, as gdn reports.
    let plain = create(ContainerSpec {
        handle: "nh-no-bandwidth".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        plain.current_bandwidth_limits().await.expect("limits"),
        BandwidthLimits::default()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_removes_the_links_and_the_bridge() {
    let spec = |handle: &str| ContainerSpec {
        handle: handle.into(),
        network: "10.212.3.0/29".into(),
        ..Default::default()
    };
    let a = create(spec("nh-gone-a")).await;
    let b = create(spec("nh-gone-b")).await;
    // Bridges are named by the server's tag and the subnet's address in hex.
    let bridge = format!("trbr{}-0ad40300", server().tag());
    let links = host_command("ip", &["-o", "link"]);
    assert!(links.contains(&bridge), "{links}");
    let ip = ip_of(&a.info().await.unwrap());
    drop(a);
    // The neighbour keeps the bridge.
    assert!(host_command("ip", &["-o", "link"]).contains(&bridge));
    drop(b);
    let gone = eventually(Duration::from_secs(10), || {
        let bridge = bridge.clone();
        async move { !host_command("ip", &["-o", "link"]).contains(&bridge) }
    })
    .await;
    assert!(gone, "bridge {bridge} still there");
    let routes = host_command("ip", &["-4", "-o", "route"]);
    assert!(!routes.contains("10.212.3.0/29"), "{routes}");
    // The firewall's part goes with the deferred half of each removal, maybe after the bridge.
    let forgotten = eventually(Duration::from_secs(10), || {
        let ip = ip.to_string();
        async move {
            let ruleset = host_command("nft", &["list", "ruleset"]);
            !ruleset.contains(&ip) && !ruleset.contains("10.212.3.0/29")
        }
    })
    .await;
    let ruleset = host_command("nft", &["list", "ruleset"]);
    assert!(forgotten, "{ruleset}");
}

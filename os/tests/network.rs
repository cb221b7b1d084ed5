//! The networker against the real kernel (needs root, nft, tc, nsenter, busybox): namespaces,
//! veths, bridges, nftables rules and tc made and removed for real.
//!
//! Safety: traffic only goes between the host and namespaces these tests create, or between two
//! such namespaces. Each test has its own tag (so its own nftables table and bridge names) and
//! its own subnets outside the server's default pool.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use trellis_core::api::{
    BandwidthLimits, IcmpControl, IpRange, NetOutRule, PortMapping, PortRange, Protocol,
};
use trellis_core::effect::NetworkConfig;
use trellis_core::network::NetworkAssignment;
use trellis_os::linux::network::{NetworkSettings, Networker};
use trellis_os::{HostError, Layout, LinuxConfig};

struct Fixture {
    networker: Networker,
    config: LinuxConfig,
    layout: Layout,
    tag: String,
    root: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        Fixture::with_settings(tag, NetworkSettings::default())
    }

    fn with_settings(tag: &str, mut settings: NetworkSettings) -> Fixture {
        let root = std::env::temp_dir().join(format!("trellis-net-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let layout = Layout::new(root.join("depot"), root.join("state"), root.join("run"));
        settings.tag = tag.to_string();
        let config = LinuxConfig {
            cgroup: Default::default(),
            layout: layout.clone(),
            default_rootfs: String::new(),
            helper_binary: None,
            network: settings,
            security: Default::default(),
            registry: Default::default(),
            image_plugins: Default::default(),
        };
        Fixture {
            networker: Networker::new(&config).expect("networker starts"),
            config,
            layout,
            tag: tag.to_string(),
            root,
        }
    }

    fn setup(&self, handle: &str, subnet: &str, ip: &str) -> NetworkAssignment {
        self.setup_with(handle, subnet, ip, |_| {})
    }

    fn setup_with(
        &self,
        handle: &str,
        subnet: &str,
        ip: &str,
        edit: impl FnOnce(&mut NetworkConfig),
    ) -> NetworkAssignment {
        let assignment = NetworkAssignment {
            subnet: subnet.parse().unwrap(),
            container_ip: ip.parse().unwrap(),
        };
        let mut config = NetworkConfig {
            assignment,
            port_mappings: vec![],
            netout_rules: vec![],
            bandwidth: BandwidthLimits::default(),
            privileged: false,
        };
        edit(&mut config);
        self.networker
            .setup(handle, &config)
            .unwrap_or_else(|e| panic!("setup {handle}: {e}"));
        assignment
    }

    fn netns(&self, handle: &str) -> PathBuf {
        self.layout.netns_file(handle)
    }

    /// Runs a busybox applet in the container's network namespace.
    fn exec(&self, handle: &str, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.netns(handle).display()))
            .arg("busybox")
            .args(args)
            .output()
            .expect("nsenter runs")
    }

    fn spawn(&self, handle: &str, args: &[&str]) -> Guard {
        Guard(
            Command::new("nsenter")
                .arg(format!("--net={}", self.netns(handle).display()))
                .arg("busybox")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nsenter spawns"),
        )
    }

    fn table(&self) -> String {
        format!("trellis{}", self.tag)
    }

    /// The containers' egress chains in this server's egress tables.
    fn egress_chains(&self) -> Vec<String> {
        let listing = cmd("nft", &["list", "chains", "netdev"]);
        let mut ours = false;
        let mut chains = Vec::new();
        for line in listing.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix("table netdev ") {
                ours = table.starts_with(&format!("{}-egress-", self.table()));
            } else if ours && line.starts_with("chain ") {
                chains.push(line.to_string());
            }
        }
        chains
    }

    fn bridge_prefix(&self) -> String {
        format!("trbr{}-", self.tag)
    }

    /// Everything of ours still on the host: links with our bridge prefix or on our bridges,
    /// container chains and map elements in our table, namespaces, state files.
    fn leftovers(&self) -> Vec<String> {
        self.networker.settle();
        let mut left = Vec::new();
        let links = cmd("ip", &["-o", "link", "show"]);
        for line in links.lines() {
            if line.contains(&self.bridge_prefix()) {
                left.push(line.to_string());
            }
        }
        let table = cmd("nft", &["list", "table", "ip", &self.table()]);
        for line in table.lines() {
            let line = line.trim();
            if line.starts_with("elements") {
                left.push(line.to_string());
            }
        }
        left.extend(self.egress_chains());
        let routes = cmd("ip", &["-o", "route", "show"]);
        for line in routes.lines() {
            if line.contains(&self.bridge_prefix()) {
                left.push(line.to_string());
            }
        }
        let state_dir = self.layout.network_state_dir();
        for dir in [
            self.layout.netns_dir(),
            state_dir.clone(),
            state_dir.join(".retired"),
        ] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    if entry.file_name() != ".retired" {
                        left.push(entry.path().display().to_string());
                    }
                }
            }
        }
        left
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(handles) = self.networker.handles() {
            for handle in handles {
                let _ = self.networker.teardown(&handle, None);
            }
        }
        self.networker.settle();
        trellis_os::linux::network::firewall::delete_server_tables(&self.tag);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cmd(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("command runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ping(f: &Fixture, from: &str, to: Ipv4Addr) -> bool {
    f.exec(from, &["ping", "-c", "1", "-W", "2", &to.to_string()])
        .status
        .success()
}

/// Connects from `from`'s namespace to `to:port` with busybox nc; true if it connected.
fn tcp_connects(f: &Fixture, from: &str, to: Ipv4Addr, port: u16) -> bool {
    f.exec(
        from,
        &[
            "sh",
            "-c",
            &format!("echo hi | busybox nc -w 2 {to} {port}"),
        ],
    )
    .status
    .success()
}

fn http_server(f: &Fixture, handle: &str, port: u16, body: &[u8]) -> Guard {
    let dir = f.root.join(format!("www-{handle}-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), body).unwrap();
    let guard = f.spawn(
        handle,
        &[
            "httpd",
            "-f",
            "-p",
            &port.to_string(),
            "-h",
            dir.to_str().unwrap(),
        ],
    );
    let ip = container_ip(f, handle);
    wait_for("httpd to listen", || {
        TcpStream::connect_timeout(&(ip, port).into(), Duration::from_millis(200)).is_ok()
    });
    guard
}

fn container_ip(f: &Fixture, handle: &str) -> Ipv4Addr {
    f.networker.observe(handle).unwrap().unwrap().0.container_ip
}

/// GET / over plain TCP from the host; returns the body.
fn http_get(address: (Ipv4Addr, u16)) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&address.into(), Duration::from_secs(3))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(0);
    Ok(response[split..].to_vec())
}

#[test]
fn setup_builds_the_namespace_and_teardown_removes_everything() {
    let f = Fixture::new("a1");
    let a = f.setup("alpha", "10.211.1.0/30", "10.211.1.1");
    assert_eq!(a.gateway_ip(), Ipv4Addr::new(10, 211, 1, 2));

    let addresses = String::from_utf8(f.exec("alpha", &["ip", "-o", "addr"]).stdout).unwrap();
    assert!(addresses.contains("inet 10.211.1.1/30"), "{addresses}");
    assert!(addresses.contains("lo"), "{addresses}");
    let routes = String::from_utf8(f.exec("alpha", &["ip", "route"]).stdout).unwrap();
    assert!(routes.contains("default via 10.211.1.2"), "{routes}");
    let links = String::from_utf8(f.exec("alpha", &["ip", "-o", "link"]).stdout).unwrap();
    assert!(links.contains("mtu 1500"), "{links}");
    assert!(links.contains("lo: <LOOPBACK,UP"), "{links}");

    let bridge = cmd("ip", &["-o", "addr", "show", "dev", "trbra1-0ad30100"]);
    assert!(bridge.contains("inet 10.211.1.2/30"), "{bridge}");

    assert_eq!(
        std::fs::read_to_string(f.layout.hosts_file("alpha")).unwrap(),
        "127.0.0.1 localhost\n10.211.1.1 alpha\n"
    );
    assert!(f.layout.resolv_conf_file("alpha").exists());
    // Without --allow-host-access the container may not open connections to the host.
    assert!(!ping(&f, "alpha", a.gateway_ip()));
    // The host reaches its container.
    let host_ping = Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", "10.211.1.1"])
        .status()
        .unwrap();
    assert!(host_ping.success());

    assert_eq!(f.networker.handles().unwrap(), vec!["alpha".to_string()]);
    assert_eq!(f.networker.observe("alpha").unwrap().unwrap().0, a);

    f.networker.teardown("alpha", Some(&a)).unwrap();
    assert_eq!(f.leftovers(), Vec::<String>::new());
    assert!(!f.layout.hosts_file("alpha").exists());
    // Idempotent, also without an assignment.
    f.networker.teardown("alpha", Some(&a)).unwrap();
    f.networker.teardown("alpha", None).unwrap();
    assert!(f.networker.observe("alpha").unwrap().is_none());
}

#[test]
fn setup_is_idempotent() {
    let f = Fixture::new("a2");
    let a = f.setup("again", "10.211.2.0/30", "10.211.2.1");
    f.setup("again", "10.211.2.0/30", "10.211.2.1");
    assert!(ping_from_host(Ipv4Addr::new(10, 211, 2, 1)));
    f.networker.teardown("again", Some(&a)).unwrap();
    assert_eq!(f.leftovers(), Vec::<String>::new());
}

fn ping_from_host(ip: Ipv4Addr) -> bool {
    Command::new("busybox")
        .args(["ping", "-c", "1", "-W", "2", &ip.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn containers_on_a_shared_subnet_reach_each_other_and_others_do_not() {
    let f = Fixture::new("a3");
    f.setup("one", "10.211.3.0/29", "10.211.3.1");
    f.setup("two", "10.211.3.0/29", "10.211.3.2");
    f.setup("far", "10.211.4.0/30", "10.211.4.1");

    assert!(ping(&f, "one", Ipv4Addr::new(10, 211, 3, 2)));
    assert!(ping(&f, "two", Ipv4Addr::new(10, 211, 3, 1)));
    // Across subnets, egress is denied by default.
    assert!(!ping(&f, "one", Ipv4Addr::new(10, 211, 4, 1)));
    assert!(!ping(&f, "far", Ipv4Addr::new(10, 211, 3, 1)));

    // Destroying one neighbour keeps the shared bridge for the other.
    f.networker.teardown("two", None).unwrap();
    assert!(cmd("ip", &["-o", "link"]).contains("trbra3-0ad30300"));
    assert!(ping_from_host(Ipv4Addr::new(10, 211, 3, 1)));
    f.networker.teardown("one", None).unwrap();
    f.networker.settle();
    assert!(!cmd("ip", &["-o", "link"]).contains("trbra3-0ad30300"));
}

#[test]
fn netout_rules_open_the_default_deny_firewall() {
    let f = Fixture::new("a4");
    f.setup("client", "10.211.5.0/30", "10.211.5.1");
    f.setup("server", "10.211.6.0/30", "10.211.6.1");
    f.setup("other", "10.211.7.0/30", "10.211.7.1");
    let server = Ipv4Addr::new(10, 211, 6, 1);
    let other = Ipv4Addr::new(10, 211, 7, 1);
    let _a = http_server(&f, "server", 8080, b"server\n");
    let _b = http_server(&f, "other", 8080, b"other\n");

    assert!(!tcp_connects(&f, "client", server, 8080));
    assert!(!ping(&f, "client", server));

    let assignment = f.networker.observe("client").unwrap().unwrap().0;
    let tcp_to_server = NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some(server.into()),
            end: None,
        }],
        ports: vec![PortRange {
            start: 8000,
            end: 8100,
        }],
        icmps: None,
        log: true,
    };
    let ping_server = NetOutRule {
        protocol: Protocol::Icmp,
        networks: vec![IpRange {
            start: Some(server.into()),
            end: Some(server.into()),
        }],
        ports: vec![],
        icmps: Some(IcmpControl {
            kind: 8,
            code: None,
        }),
        log: false,
    };
    f.networker
        .add_netout_rules("client", &assignment, &[tcp_to_server, ping_server])
        .unwrap();
    assert!(tcp_connects(&f, "client", server, 8080));
    assert!(ping(&f, "client", server));
    // Still denied: another container the rules do not name.
    assert!(!tcp_connects(&f, "client", other, 8080));
    assert!(!ping(&f, "client", other));

    // An invalid rule is refused as invalid, and changes nothing.
    let bad = NetOutRule {
        protocol: Protocol::All,
        ports: vec![PortRange { start: 1, end: 2 }],
        ..Default::default()
    };
    assert!(matches!(
        f.networker.add_netout_rules("client", &assignment, &[bad]),
        Err(HostError::Invalid(_))
    ));
}

#[test]
fn deny_networks_override_netout_rules() {
    let mut settings = NetworkSettings::default();
    settings.firewall.deny_networks = vec!["10.211.9.0/24".parse().unwrap()];
    let f = Fixture::with_settings("a5", settings);
    let allow_all = NetOutRule::default();
    f.setup_with("client", "10.211.8.0/30", "10.211.8.1", |c| {
        c.netout_rules = vec![allow_all]
    });
    f.setup("denied", "10.211.9.0/30", "10.211.9.1");
    f.setup("allowed", "10.211.10.0/30", "10.211.10.1");
    assert!(ping(&f, "client", Ipv4Addr::new(10, 211, 10, 1)));
    assert!(!ping(&f, "client", Ipv4Addr::new(10, 211, 9, 1)));
}

#[test]
fn net_in_publishes_a_container_port_on_the_host() {
    let f = Fixture::new("a6");
    let a = f.setup_with("web", "10.211.11.0/30", "10.211.11.1", |c| {
        c.port_mappings = vec![PortMapping {
            host_port: 61901,
            container_port: 8080,
        }]
    });
    f.setup("neighbour", "10.211.12.0/30", "10.211.12.1");
    let _server = http_server(&f, "web", 8080, b"hello from web\n");

    // From the host, on loopback and on the bridge address.
    assert_eq!(
        http_get((Ipv4Addr::LOCALHOST, 61901)).unwrap(),
        b"hello from web\n"
    );
    assert_eq!(
        http_get((a.gateway_ip(), 61901)).unwrap(),
        b"hello from web\n"
    );

    // A mapping added later.
    f.networker
        .map_port(
            "web",
            &a,
            &PortMapping {
                host_port: 61902,
                container_port: 8080,
            },
        )
        .unwrap();
    assert_eq!(
        http_get((Ipv4Addr::LOCALHOST, 61902)).unwrap(),
        b"hello from web\n"
    );
    assert_eq!(f.networker.observe("web").unwrap().unwrap().1.len(), 2);

    // From another container, through its own gateway (a host address), and hairpin from
    // the container itself.
    let fetched = f.exec(
        "neighbour",
        &["wget", "-q", "-O", "-", "http://10.211.12.2:61901/"],
    );
    assert_eq!(String::from_utf8_lossy(&fetched.stdout), "hello from web\n");
    let hairpin = f.exec(
        "web",
        &["wget", "-q", "-O", "-", "http://10.211.11.2:61902/"],
    );
    assert_eq!(String::from_utf8_lossy(&hairpin.stdout), "hello from web\n");

    // A host port already published by another container, or held by a host listener, is
    // refused as invalid.
    let n = f.networker.observe("neighbour").unwrap().unwrap().0;
    assert!(matches!(
        f.networker.map_port(
            "neighbour",
            &n,
            &PortMapping {
                host_port: 61901,
                container_port: 80
            }
        ),
        Err(HostError::Invalid(_))
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:61903").unwrap();
    assert!(matches!(
        f.networker.map_port(
            "neighbour",
            &n,
            &PortMapping {
                host_port: 61903,
                container_port: 80
            }
        ),
        Err(HostError::Invalid(_))
    ));
    drop(listener);

    f.networker.teardown("web", None).unwrap();
    assert!(http_get((Ipv4Addr::LOCALHOST, 61901)).is_err());
    f.networker.teardown("neighbour", None).unwrap();
    assert_eq!(f.leftovers(), Vec::<String>::new());
}

#[test]
fn failed_setup_leaves_nothing_behind() {
    let f = Fixture::new("a7");
    let listener = std::net::TcpListener::bind("127.0.0.1:61904").unwrap();
    let config = NetworkConfig {
        assignment: NetworkAssignment {
            subnet: "10.211.13.0/30".parse().unwrap(),
            container_ip: "10.211.13.1".parse().unwrap(),
        },
        port_mappings: vec![PortMapping {
            host_port: 61904,
            container_port: 80,
        }],
        netout_rules: vec![],
        bandwidth: BandwidthLimits::default(),
        privileged: false,
    };
    assert!(matches!(
        f.networker.setup("busy", &config),
        Err(HostError::Invalid(_))
    ));
    drop(listener);
    let bad_rule = NetOutRule {
        protocol: Protocol::IcmpV6,
        ..Default::default()
    };
    let config = NetworkConfig {
        netout_rules: vec![bad_rule],
        port_mappings: vec![],
        ..config
    };
    assert!(f.networker.setup("bad-rule", &config).is_err());
    assert_eq!(f.leftovers(), Vec::<String>::new());
}

#[test]
fn dns_files_follow_the_host_or_the_operator() {
    let host_resolv = std::env::temp_dir().join(format!("trellis-resolv-{}", std::process::id()));
    std::fs::write(
        &host_resolv,
        "search corp\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n",
    )
    .unwrap();
    let mut settings = NetworkSettings {
        host_resolv_conf: host_resolv.clone(),
        ..Default::default()
    };
    settings.dns.additional_host_entries = vec!["10.9.9.9 db".into()];
    let f = Fixture::with_settings("a8", settings);
    f.setup("named", "10.211.14.0/30", "10.211.14.1");
    assert_eq!(
        std::fs::read_to_string(f.layout.resolv_conf_file("named")).unwrap(),
        "search corp\nnameserver 10.0.0.2\n"
    );
    assert_eq!(
        std::fs::read_to_string(f.layout.hosts_file("named")).unwrap(),
        "127.0.0.1 localhost\n10.211.14.1 named\n10.9.9.9 db\n"
    );
    let mut settings = NetworkSettings::default();
    settings.dns.dns_servers = vec!["10.1.1.1".parse().unwrap()];
    let g = Fixture::with_settings("a9", settings);
    g.setup("flagged", "10.211.15.0/30", "10.211.15.1");
    assert_eq!(
        std::fs::read_to_string(g.layout.resolv_conf_file("flagged")).unwrap(),
        "nameserver 10.1.1.1\n"
    );
    let _ = std::fs::remove_file(host_resolv);
}

#[test]
fn bandwidth_limits_slow_transfers_to_about_the_rate() {
    // With --enable-container-network-metrics, so the counters are read below.
    let f = Fixture::with_settings(
        "b1",
        NetworkSettings {
            container_metrics: true,
            ..NetworkSettings::default()
        },
    );
    let rate: u64 = 400_000;
    f.setup_with("slow", "10.211.16.0/30", "10.211.16.1", |c| {
        c.bandwidth = BandwidthLimits {
            rate,
            burst: 20_000,
        }
    });
    f.setup("fast", "10.211.17.0/30", "10.211.17.1");
    let body = vec![b'x'; 1_200_000];
    let _slow = http_server(&f, "slow", 8080, &body);
    let _fast = http_server(&f, "fast", 8080, &body);

    let timed = |ip: Ipv4Addr| {
        let start = Instant::now();
        let got = http_get((ip, 8080)).unwrap();
        assert_eq!(got.len(), body.len());
        start.elapsed()
    };
    let slow = timed(Ipv4Addr::new(10, 211, 16, 1));
    let fast = timed(Ipv4Addr::new(10, 211, 17, 1));
    let throughput = body.len() as f64 / slow.as_secs_f64();
    eprintln!("limited to {rate} B/s: {throughput:.0} B/s over {slow:?}; unlimited: {fast:?}");
    assert!(
        throughput < rate as f64 * 1.3,
        "{throughput} B/s exceeds the limit"
    );
    assert!(
        throughput > rate as f64 * 0.5,
        "{throughput} B/s is far below the limit"
    );

    // Counters see the transfer: the container sent the body.
    let stats = f
        .networker
        .stats("slow")
        .unwrap()
        .expect("metrics are enabled");
    assert!(stats.tx_bytes >= body.len() as u64, "{stats:?}");
    assert!(stats.rx_bytes > 0, "{stats:?}");
}

#[test]
fn two_hundred_cycles_leave_nothing_behind() {
    let f = Fixture::new("c1");
    let rule = NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some("10.211.30.1".parse().unwrap()),
            end: None,
        }],
        ports: vec![PortRange { start: 80, end: 0 }],
        icmps: None,
        log: false,
    };
    for i in 0..200u32 {
        let handle = format!("cycle-{i}");
        let third = 20 + (i % 4);
        f.setup_with(
            &handle,
            &format!("10.211.{third}.0/30"),
            &format!("10.211.{third}.1"),
            |c| {
                c.port_mappings = vec![PortMapping {
                    host_port: 62000 + i,
                    container_port: 8080,
                }];
                c.netout_rules = vec![rule.clone()];
                if i % 10 == 0 {
                    c.bandwidth = BandwidthLimits {
                        rate: 1_000_000,
                        burst: 10_000,
                    };
                }
            },
        );
        f.networker.teardown(&handle, None).unwrap();
    }
    assert_eq!(f.leftovers(), Vec::<String>::new());
}

/// Teardown leaves part of the removal for later (chain, dispatch entry, links); a server
/// starting before that ran, as after a crash, finishes it from the retired state.
#[test]
fn a_start_finishes_removals_a_crash_cut_short() {
    let f = Fixture::new("c9");
    f.setup("cut-short", "10.211.40.0/30", "10.211.40.1");
    f.networker.teardown("cut-short", None).unwrap();
    let retired = f.layout.network_state_dir().join(".retired");
    let chains = || {
        let mut left: Vec<String> = cmd("nft", &["list", "table", "ip", &f.table()])
            .lines()
            .filter(|l| l.trim().starts_with("elements"))
            .map(str::to_string)
            .collect();
        left.extend(f.egress_chains());
        left
    };
    // Still lingering: the chain and its entries are there.
    assert_eq!(std::fs::read_dir(&retired).unwrap().count(), 1);
    assert!(!chains().is_empty());
    let restarted = Networker::new(&f.config).expect("restarts");
    assert_eq!(std::fs::read_dir(&retired).unwrap().count(), 0);
    assert_eq!(chains(), Vec::<String>::new());
    drop(restarted);
    assert_eq!(f.leftovers(), Vec::<String>::new());
}

#[test]
fn startup_removes_orphan_bridges_and_container_chains() {
    let f = Fixture::new("c2");
    assert!(Command::new("ip")
        .args(["link", "add", "trbrc2-0ad31f00", "type", "bridge"])
        .status()
        .unwrap()
        .success());
    // And a container chain that no state accounts for (a lost state, an older server).
    let table = format!("{}-egress-0", f.table());
    assert!(Command::new("nft")
        .args(["add", "table", "netdev", &table])
        .status()
        .unwrap()
        .success());
    assert!(Command::new("nft")
        .args([
            "add",
            "chain",
            "netdev",
            &table,
            "c-0000000000",
            "{ type filter hook ingress device \"trv0000000000-0\" priority 0; policy accept; }",
        ])
        .status()
        .unwrap()
        .success());
    let again = Fixture::new("c2");
    // The chain goes before the start returns; the bridge in the background, which settling
    // waits for.
    assert!(!cmd("nft", &["list", "chains", "netdev"]).contains("c-0000000000"));
    again.networker.settle();
    assert!(!cmd("ip", &["-o", "link"]).contains("trbrc2-0ad31f00"));
    assert!(!cmd("nft", &["list", "chains", "netdev"]).contains("c-0000000000"));
    drop(again);
    drop(f);
}

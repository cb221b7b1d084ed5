//! `--network-plugin` over HTTP against the Linux backend (as root), with a plugin of the
//! tests' own (`trellis-test-network-plugin`) that wires containers with the CNI `bridge` and
//! `host-local` plugins on a bridge and subnet of each test's own, and logs every call. Traffic
//! only flows between the host and the containers these tests create.

mod linux_support;

use linux_support::{http_get, ok, run, serve_http, sh};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use trellis_core::api::{ContainerSpec, IpRange, NetIn, NetOutRule, PortRange, Protocol};
use trellis_tests::{eventually, TestServer};

/// A server whose containers the test plugin wires, on a bridge and subnet of its own.
struct PluginServer {
    server: Option<TestServer>,
    dir: tempfile::TempDir,
    bridge: String,
    subnet_prefix: String,
}

impl PluginServer {
    fn start(plugin_args: &[&str], server_args: &[&str]) -> PluginServer {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let slot = (std::process::id().wrapping_mul(7).wrapping_add(n)) % 250;
        let dir = tempfile::Builder::new()
            .prefix("trellis-netplugin-")
            .tempdir()
            .expect("a temporary directory");
        let bridge = format!("trnp{slot}");
        let subnet_prefix = format!("10.213.{slot}");
        let plugin = env!("CARGO_BIN_EXE_trellis-test-network-plugin");
        let mut options = TestServer::linux_options();
        options
            .extra_args
            .extend(["--network-plugin", plugin].iter().map(|s| s.to_string()));
        let log = dir.path().join("calls.log").display().to_string();
        let data_dir = dir.path().join("ipam").display().to_string();
        let subnet = format!("{subnet_prefix}.0/24");
        let mut extra: Vec<&str> = vec![
            "--log",
            &log,
            "--bridge",
            &bridge,
            "--subnet",
            &subnet,
            "--data-dir",
            &data_dir,
        ];
        extra.extend(plugin_args);
        for arg in extra {
            options
                .extra_args
                .push(format!("--network-plugin-extra-arg={arg}"));
        }
        options
            .extra_args
            .extend(server_args.iter().map(|s| s.to_string()));
        PluginServer {
            server: Some(TestServer::start(options)),
            dir,
            bridge,
            subnet_prefix,
        }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().expect("running")
    }

    fn server_mut(&mut self) -> &mut TestServer {
        self.server.as_mut().expect("running")
    }

    /// Every call the plugin logged, in order.
    fn calls(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }

    fn calls_of(&self, action: &str, handle: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["action"] == action && c["handle"] == handle)
            .collect()
    }

    /// The addresses host-local holds.
    fn leased(&self) -> Vec<String> {
        let store = self.dir.path().join("ipam").join("trellis-test");
        std::fs::read_dir(store)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&self.subnet_prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Links plugged into the test's bridge (the containers' host ends).
    fn bridge_ports(&self) -> String {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn plugin_path() -> &'static str {
        env!("CARGO_BIN_EXE_trellis-test-network-plugin")
    }

    /// Nothing of `handle` is left: no address leased, no link on the bridge, no namespace,
    /// no network files.
    async fn assert_nothing_left_of(&self, handle: &str) {
        assert_eq!(
            self.leased(),
            Vec::<String>::new(),
            "host-local still leases"
        );
        let layout = self.server().layout();
        assert!(!layout.netns_file(handle).exists(), "namespace file left");
        assert!(!layout.hosts_file(handle).exists(), "hosts file left");
        assert!(
            !layout.resolv_conf_file(handle).exists(),
            "resolv.conf left"
        );
        let plugin_state =
            trellis_os::linux::network::plugin::states_dir(&layout.network_state_dir())
                .join(handle);
        assert!(!plugin_state.exists(), "plugin state left");
        // The container's end goes with its namespace, which the kernel frees in the
        // background once unmounted; the host end goes with it.
        let unplugged = eventually(Duration::from_secs(10), || async {
            self.bridge_ports().is_empty()
        })
        .await;
        assert!(
            unplugged,
            "links left on the bridge: {}",
            self.bridge_ports()
        );
    }
}

impl Drop for PluginServer {
    fn drop(&mut self) {
        // Its containers go first (their `down`), then the bridge the CNI plugin made.
        drop(self.server.take());
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

fn nsfs_inode(path: impl AsRef<Path>) -> u64 {
    std::fs::metadata(path).expect("a namespace").ino()
}

fn address(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("an address")
}

fn tcp_rule(port: u16) -> NetOutRule {
    NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some("192.0.2.1".parse().unwrap()),
            end: Some("192.0.2.9".parse().unwrap()),
        }],
        ports: vec![PortRange {
            start: port,
            end: port,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plugin_wires_the_container_and_its_answer_is_the_containers_network() {
    let plugin = PluginServer::start(&[], &["--enable-container-network-metrics"]);
    let client = plugin.server().client();
    let properties = [
        ("network.app_id", "app-1"),
        ("log_config", "{\"guid\":\"g\"}"),
        ("owner", "me"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let c = client
        .create(ContainerSpec {
            handle: "np-wired".into(),
            properties,
            netin: vec![NetIn {
                host_port: 0,
                container_port: 8080,
            }],
            netout_rules: vec![tcp_rule(53)],
            ..Default::default()
        })
        .await
        .expect("create");

    // `up`, once, with the init's pid (its network namespace is the container's), the
    // network properties without their prefix, and the spec's NetIn and NetOut as asked.
    let ups = plugin.calls_of("up", "np-wired");
    assert_eq!(ups.len(), 1, "{ups:?}");
    let up = &ups[0];
    let pid = up["input"]["Pid"].as_i64().expect("a pid");
    let layout = plugin.server().layout();
    assert_eq!(
        nsfs_inode(format!("/proc/{pid}/ns/net")),
        nsfs_inode(layout.netns_file("np-wired"))
    );
    assert_eq!(
        up["input"]["Properties"],
        json!({"app_id": "app-1", "log_config": "{\"guid\":\"g\"}"})
    );
    assert_eq!(
        up["input"]["netin"],
        json!([{"host_port": 0, "container_port": 8080}])
    );
    assert_eq!(
        up["input"]["netout_rules"],
        json!([{"protocol": 1, "networks": [{"start": "192.0.2.1", "end": "192.0.2.9"}], "ports": [{"start": 53, "end": 53}]}])
    );
    let args: Vec<&str> = up["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args[..2],
        [
            "--log",
            plugin.dir.path().join("calls.log").to_str().unwrap()
        ]
    );
    assert_eq!(
        args[args.len() - 4..],
        ["--action", "up", "--handle", "np-wired"]
    );

    // Info and the properties are the plugin's answer.
    let info = c.info().await.expect("info");
    let ip = info.container_ip.clone();
    assert!(
        ip.starts_with(&format!("{}.", plugin.subnet_prefix)),
        "{info:?}"
    );
    assert_eq!(info.host_ip, format!("{}.1", plugin.subnet_prefix));
    let props = info.properties.clone().unwrap();
    assert_eq!(props["garden.network.container-ip"], ip);
    assert_eq!(props["garden.network.interface"], "eth0");
    assert_eq!(props["test-plugin.wired"], "np-wired");
    assert_eq!(props["owner"], "me");
    assert_eq!(
        info.mapped_ports,
        Some(vec![]),
        "the plugin maps the spec's NetIn"
    );

    // The container's name resolution follows the answer.
    assert_eq!(
        ok(&c, "cat /etc/resolv.conf").await,
        "nameserver 192.0.2.53\nsearch plugin.test\n"
    );
    let hosts = ok(&c, "cat /etc/hosts").await;
    assert!(hosts.contains(&format!("{ip} np-wired\n")), "{hosts}");

    // Reachable from the host at that address.
    let body = "y".repeat(50_000);
    let _httpd = serve_http(&c, address(&ip, 8080), &body).await;
    assert_eq!(http_get(address(&ip, 8080)).expect("GET"), body);

    // Network metrics: the interface the answer named, counted inside the namespace.
    let stat = c
        .metrics()
        .await
        .expect("metrics")
        .network_stat
        .expect("network figures with --enable-container-network-metrics");
    assert!(stat.tx_bytes >= 50_000, "{stat:?}");
    assert!(stat.rx_bytes > 0, "{stat:?}");
    let bulk = client
        .bulk_metrics(&["np-wired"])
        .await
        .expect("bulk metrics");
    let bulk_stat = bulk["np-wired"].metrics.network_stat.expect("bulk figures");
    assert!(bulk_stat.tx_bytes >= stat.tx_bytes, "{bulk_stat:?}");

    assert!(
        !plugin.bridge_ports().is_empty(),
        "the container's link is on the bridge"
    );
    assert_eq!(plugin.leased(), vec![ip.clone()]);
    client.destroy("np-wired").await.expect("destroy");
    let downs = plugin.calls_of("down", "np-wired");
    assert_eq!(downs.len(), 1, "{downs:?}");
    assert_eq!(downs[0]["input"], Value::Null);
    plugin.assert_nothing_left_of("np-wired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn net_in_and_net_out_are_forwarded_to_the_plugin() {
    let plugin = PluginServer::start(&[], &["--external-ip", "192.0.2.200"]);
    let client = plugin.server().client();
    let c = client
        .create(ContainerSpec {
            handle: "np-forward".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let ip = c.info().await.expect("info").container_ip;

    let (host_port, container_port) = c.net_in(0, 8080).await.expect("net-in");
    assert_eq!(container_port, 8080);
    let net_ins = plugin.calls_of("net-in", "np-forward");
    assert_eq!(net_ins.len(), 1);
    assert_eq!(
        net_ins[0]["input"],
        json!({"HostIP": "192.0.2.200", "HostPort": host_port, "ContainerIP": ip, "ContainerPort": 8080})
    );
    let info = c.info().await.expect("info");
    assert_eq!(info.mapped_ports.unwrap()[0].host_port, host_port);

    c.net_out(&tcp_rule(80)).await.expect("net-out");
    let net_outs = plugin.calls_of("net-out", "np-forward");
    assert_eq!(net_outs.len(), 1);
    assert_eq!(
        net_outs[0]["input"],
        json!({"container_ip": ip, "netout_rule": serde_json::to_value(tcp_rule(80)).unwrap()})
    );
    c.bulk_net_out(&[tcp_rule(81), tcp_rule(82)])
        .await
        .expect("bulk-net-out");
    let bulk = plugin.calls_of("bulk-net-out", "np-forward");
    assert_eq!(bulk.len(), 1);
    assert_eq!(
        bulk[0]["input"],
        json!({"container_ip": ip, "netout_rules": [
            serde_json::to_value(tcp_rule(81)).unwrap(),
            serde_json::to_value(tcp_rule(82)).unwrap(),
        ]})
    );
    client.destroy("np-forward").await.expect("destroy");
    plugin.assert_nothing_left_of("np-forward").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugin_fails_the_create_with_its_words_and_leaks_nothing() {
    let plugin = PluginServer::start(&["--fail", "up"], &[]);
    let client = plugin.server().client();
    let err = client
        .create(ContainerSpec {
            handle: "np-refused".into(),
            ..Default::default()
        })
        .await
        .expect_err("the plugin refuses up");
    let message = err.to_string();
    assert!(message.contains(PluginServer::plugin_path()), "{message}");
    assert!(message.contains("'up'"), "{message}");
    assert!(
        message.contains("test plugin refuses up for np-refused"),
        "{message}"
    );
    // The plugin had wired the container before failing: `down` undid it.
    let actions: Vec<Value> = plugin
        .calls()
        .into_iter()
        .map(|c| c["action"].clone())
        .collect();
    assert_eq!(actions, vec![json!("up"), json!("down")]);
    assert!(client
        .containers(&Default::default())
        .await
        .expect("list")
        .is_empty());
    plugin.assert_nothing_left_of("np-refused").await;
    assert!(!plugin.server().depot().join("np-refused").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_keeps_plugin_networks_and_destroys_them_with_down() {
    let mut plugin = PluginServer::start(&[], &[]);
    let client = plugin.server().client();
    let c = client
        .create(ContainerSpec {
            handle: "np-restart".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let before = c.info().await.expect("info");
    let _httpd = serve_http(&c, address(&before.container_ip, 8080), "still here").await;

    plugin.server_mut().terminate();
    plugin.server_mut().restart();
    let client = plugin.server().client();
    let c = client.container("np-restart");
    let after = c.info().await.expect("info after restart");
    assert_eq!(after.container_ip, before.container_ip);
    assert_eq!(after.properties, before.properties);
    assert_eq!(
        http_get(address(&after.container_ip, 8080)).expect("GET"),
        "still here"
    );
    assert_eq!(plugin.calls_of("up", "np-restart").len(), 1, "no second up");
    assert!(plugin.calls_of("down", "np-restart").is_empty());

    client.destroy("np-restart").await.expect("destroy");
    assert_eq!(plugin.calls_of("down", "np-restart").len(), 1);
    plugin.assert_nothing_left_of("np-restart").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn destroy_on_startup_and_cleanup_run_down() {
    let mut plugin = PluginServer::start(&[], &[]);
    for handle in ["np-startup-1", "np-startup-2"] {
        plugin
            .server()
            .client()
            .create(ContainerSpec {
                handle: handle.into(),
                ..Default::default()
            })
            .await
            .expect("create");
    }
    assert_eq!(plugin.leased().len(), 2);
    plugin.server_mut().terminate();
    plugin
        .server_mut()
        .restart_with_args(&["--destroy-containers-on-startup"]);
    assert!(plugin
        .server()
        .client()
        .containers(&Default::default())
        .await
        .expect("list")
        .is_empty());
    for handle in ["np-startup-1", "np-startup-2"] {
        assert_eq!(plugin.calls_of("down", handle).len(), 1, "{handle}");
        plugin.assert_nothing_left_of(handle).await;
    }

    // `trellis cleanup` with the same flags runs `down` too.
    plugin
        .server()
        .client()
        .create(ContainerSpec {
            handle: "np-cleanup".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    plugin.server_mut().terminate();
    let (cleaned, _, stderr) = plugin.server().run_cleanup();
    assert!(cleaned, "{stderr}");
    assert_eq!(plugin.calls_of("down", "np-cleanup").len(), 1);
    assert_eq!(plugin.leased(), Vec::<String>::new());
    plugin.server_mut().restart();
}

#[tokio::test(flavor = "multi_thread")]
async fn tcp_sysctls_reach_plugin_wired_containers() {
    let plugin = PluginServer::start(&[], &["--tcp-retries2", "9"]);
    let c = plugin
        .server()
        .client()
        .create(ContainerSpec {
            handle: "np-sysctl".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let out = run(&c, sh("cat /proc/sys/net/ipv4/tcp_retries2")).await;
    assert_eq!(out.stdout.trim(), "9", "{out:?}");
}

//! Networking with real containers (root): the init joins the namespace the networker made,
//! sees its address and route, gets the hosts and resolv.conf files, and reaches a neighbour on
//! its subnet. Traffic stays between containers this test creates and the host.

mod support;

use std::path::PathBuf;
use support::{rootfs, sh, sh_as, TestHost};
use trellis_core::api::{BandwidthLimits, Limits};
use trellis_core::effect::{InitConfig, NetworkConfig};
use trellis_core::network::NetworkAssignment;
use trellis_os::linux::network::NetworkSettings;
use trellis_os::{Layout, LinuxConfig, LinuxHost};

fn host(name: &str, tag: &str) -> TestHost {
    let base = std::env::temp_dir().join(format!("trellis-os-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let layout = Layout::new(base.join("depot"), base.join("state"), base.join("run"));
    let host = LinuxHost::new(LinuxConfig {
        cgroup: Default::default(),
        layout,
        default_rootfs: rootfs().to_string_lossy().into_owned(),
        helper_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_trellis-os-helper"))),
        network: NetworkSettings {
            tag: tag.into(),
            ..Default::default()
        },
        security: Default::default(),
        registry: Default::default(),
        image_plugins: Default::default(),
    })
    .expect("LinuxHost::new");
    TestHost { host, base }
}

fn assignment(subnet: &str, ip: &str) -> NetworkAssignment {
    NetworkAssignment {
        subnet: subnet.parse().unwrap(),
        container_ip: ip.parse().unwrap(),
    }
}

/// The core's create order: rootfs, cgroup, network, init.
fn create(t: &TestHost, handle: &str, network: NetworkAssignment) {
    t.host
        .prepare_rootfs(handle, &Default::default(), false, &Default::default())
        .expect("prepare rootfs");
    t.host
        .create_cgroup(handle, &Limits::default(), false)
        .expect("create cgroup");
    t.host
        .setup_network(
            handle,
            &NetworkConfig {
                assignment: network,
                port_mappings: vec![],
                netout_rules: vec![],
                bandwidth: BandwidthLimits::default(),
                privileged: false,
            },
        )
        .expect("setup network");
    t.host
        .start_init(
            handle,
            &InitConfig {
                hostname: trellis_core::handle::hostname(handle),
                privileged: false,
                bind_mounts: vec![],
                container_ip: Some(network.container_ip),
            },
        )
        .expect("start init");
}

/// The core's teardown order.
fn destroy(t: &TestHost, handle: &str, network: NetworkAssignment) {
    t.host.kill_container(handle).expect("kill");
    t.host
        .teardown_network(handle, Some(&network))
        .expect("teardown network");
    t.host.remove_cgroup(handle).expect("remove cgroup");
    t.host.remove_rootfs(handle).expect("remove rootfs");
}

#[test]
fn containers_get_their_network_and_files() {
    let t = host("netc", "n1");
    let a = assignment("10.213.1.0/29", "10.213.1.1");
    let b = assignment("10.213.1.0/29", "10.213.1.2");
    create(&t, "net-a", a);
    create(&t, "net-b", b);

    let (code, out, err) = t.run(
        "net-a",
        sh("ip -o addr; ip route; cat /etc/hosts /etc/resolv.conf"),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("inet 10.213.1.1/29"), "{out}");
    assert!(out.contains("default via 10.213.1.6"), "{out}");
    assert!(
        out.contains("127.0.0.1 localhost\n10.213.1.1 net-a\n"),
        "{out}"
    );

    // Neighbours on a subnet reach each other; localhost resolves through /etc/hosts.
    let (code, out, _) = t.run("net-a", sh("ping -c 1 -W 2 10.213.1.2"));
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = t.run("net-b", sh("ping -c 1 -W 2 localhost"));
    assert_eq!(code, 0, "{out}");

    // Container root may rewrite its hosts and resolv.conf; other users may not.
    let (code, _, err) = t.run(
        "net-a",
        sh("echo NONSENSE > /etc/hosts && echo x > /etc/resolv.conf"),
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = t.run("net-b", sh_as("nobody", "echo NONSENSE > /etc/hosts"));
    assert_ne!(code, 0);
    assert!(err.contains("Permission denied"), "{err}");

    destroy(&t, "net-a", a);
    destroy(&t, "net-b", b);
    assert!(t.host.network.handles().unwrap().is_empty());
    t.host.network.settle();
    assert!(!std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
        .contains("trbrn1-"));
}

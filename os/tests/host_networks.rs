//! The host's own networks, as the server gives them to the core at start (as root): read in a
//! private network namespace made for the test, so the machine's own links play no part.

use ipnetwork::Ipv4Network;
use std::process::Command;

fn ip(args: &str) {
    let status = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args}");
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

#[test]
fn addresses_and_routes_count_but_trellis_bridges_and_the_default_route_do_not() {
    // A thread of its own: the namespace is per thread, and the netlink thread and the `ip`
    // processes it starts inherit it.
    let networks = std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the network");
        ip("link set lo up");
        ip("link add uplink type veth peer name uplink-peer");
        ip("link set uplink-peer up");
        ip("link set uplink up");
        ip("addr add 198.18.10.7/24 dev uplink");
        ip("addr add 198.18.99.1/32 dev uplink");
        ip("route add 198.18.64.0/20 via 198.18.10.1");
        ip("route add blackhole 198.19.0.0/16");
        ip("route add default via 198.18.10.1");
        // Trellis's own bridges (any server's tag): containers' subnets, not the host's.
        ip("link add trbrzz-c6120004 type bridge");
        ip("link set trbrzz-c6120004 up");
        ip("addr add 198.18.200.6/30 dev trbrzz-c6120004");
        trellis_os::linux::network::host_networks().expect("host networks")
    })
    .join()
    .expect("the namespace thread");

    for expected in [
        "127.0.0.0/8",
        "198.18.10.0/24",
        "198.18.99.1/32",
        "198.18.64.0/20",
        "198.19.0.0/16",
    ] {
        assert!(
            networks.contains(&net(expected)),
            "{expected} in {networks:?}"
        );
    }
    assert!(
        !networks.iter().any(|n| n.prefix() == 0),
        "the default route is not a network: {networks:?}"
    );
    assert!(
        !networks
            .iter()
            .any(|n| n.contains("198.18.200.5".parse().unwrap())),
        "a Trellis bridge's subnet is not the host's: {networks:?}"
    );
    let mut sorted = networks.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(networks, sorted, "sorted, without repeats");
}

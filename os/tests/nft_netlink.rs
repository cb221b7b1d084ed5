//! The firewall's transactions sent as nf_tables netlink batches against the same
//! transactions rendered as `nft` scripts: both must leave the kernel in the same state
//! (needs root, nft and iproute2's `ip netns`).
//!
//! Safety: everything happens in a network namespace this test creates and removes; the host's
//! ruleset is never touched and no packet is sent.

use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use trellis_core::api::{IcmpControl, IpRange, NetOutRule, PortRange, Protocol};
use trellis_os::linux::network::firewall::{self, run_nft, ContainerRules, Ruleset, Transaction};

/// A network namespace of our own, removed on drop.
struct Netns(String);

impl Netns {
    fn new(which: &str) -> Netns {
        let name = format!("trellis-nfq{which}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip netns add");
        assert!(status.success(), "ip netns add {name}");
        Netns(name)
    }

    /// Runs `work` on a thread inside the namespace (commands it spawns start there too).
    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("enter the namespace");
                    work()
                })
                .join()
                .expect("namespace thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A container's egress chain, listed under a neutral name.
fn nft_list(chain: &str) -> String {
    let output = Command::new("nft")
        .args(["list", "chain", "netdev", "trq-egress-0", chain])
        .stderr(Stdio::inherit())
        .output()
        .expect("run nft list");
    assert!(output.status.success(), "nft list chain {chain}");
    String::from_utf8(output.stdout)
        .unwrap()
        .replace(&format!("chain {chain} {{"), "chain X {")
}

/// A container's egress chain, as setup makes it, by script.
fn egress_chain(chain: &str) -> String {
    format!(
        "add table netdev trq-egress-0\nadd chain netdev trq-egress-0 {chain} {{ type filter hook \
         ingress device \"trvq-0\" priority 0; policy accept; }}\n"
    )
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn net(start: &str, end: Option<&str>) -> IpRange {
    IpRange {
        start: ip(start),
        end: end.and_then(ip),
    }
}

fn ports(ranges: &[(u16, u16)]) -> Vec<PortRange> {
    ranges
        .iter()
        .map(|&(start, end)| PortRange { start, end })
        .collect()
}

/// Each protocol; one and several networks (single addresses, ranges, overlapping, touching,
/// from 0 and to the top); one and several port ranges; ICMP type with and without code; log
/// on and off.
fn variants() -> Vec<NetOutRule> {
    let tcp = |networks: Vec<IpRange>, p: &[(u16, u16)], log: bool| NetOutRule {
        protocol: Protocol::Tcp,
        networks,
        ports: ports(p),
        icmps: None,
        log,
    };
    let udp = |networks: Vec<IpRange>, p: &[(u16, u16)], log: bool| NetOutRule {
        protocol: Protocol::Udp,
        ..tcp(networks, p, log)
    };
    let icmp = |networks: Vec<IpRange>, icmps: Option<IcmpControl>, log: bool| NetOutRule {
        protocol: Protocol::Icmp,
        networks,
        icmps,
        log,
        ..Default::default()
    };
    let all = |networks: Vec<IpRange>, log: bool| NetOutRule {
        networks,
        log,
        ..Default::default()
    };
    vec![
        all(vec![], false),
        all(vec![], true),
        all(vec![net("10.9.0.1", None)], false),
        all(vec![net("10.9.0.1", Some("10.9.0.200"))], true),
        all(vec![net("10.9.1.0", Some("10.9.1.255"))], false),
        all(
            vec![
                net("10.9.0.1", Some("10.9.0.5")),
                net("10.9.0.3", None),
                net("10.9.0.6", Some("10.9.0.9")),
                net("192.168.7.0", Some("192.168.7.255")),
            ],
            false,
        ),
        all(vec![net("10.1.0.1", None), net("10.1.0.3", None)], true),
        all(
            vec![net("0.0.0.0", Some("9.255.255.255")), net("11.0.0.0", None)],
            false,
        ),
        all(vec![net("0.0.0.0", Some("255.255.255.255"))], false),
        all(
            vec![
                net("10.0.0.0", None),
                net("200.0.0.0", Some("255.255.255.255")),
            ],
            false,
        ),
        tcp(vec![], &[], false),
        tcp(vec![], &[(80, 0)], false),
        tcp(vec![], &[(8080, 8090)], true),
        tcp(vec![net("10.2.0.1", None)], &[(80, 0), (443, 0)], false),
        tcp(
            vec![
                net("10.1.0.0", Some("10.1.0.255")),
                net("10.0.0.1", Some("10.0.0.5")),
            ],
            &[(8080, 8090), (80, 0), (8085, 9000)],
            true,
        ),
        tcp(vec![], &[(0, 5), (7, 0)], false),
        tcp(vec![], &[(100, 200), (65535, 0)], false),
        tcp(vec![], &[(1, 65535)], false),
        udp(vec![], &[], true),
        udp(vec![], &[(53, 0)], false),
        udp(
            vec![net("10.3.0.0", Some("10.3.255.255"))],
            &[(1000, 2000)],
            false,
        ),
        udp(
            vec![net("10.4.0.1", None), net("10.5.0.1", None)],
            &[(53, 0), (5353, 0), (6000, 7000)],
            true,
        ),
        icmp(vec![], None, false),
        icmp(
            vec![],
            Some(IcmpControl {
                kind: 8,
                code: None,
            }),
            false,
        ),
        icmp(
            vec![net("10.2.0.1", None)],
            Some(IcmpControl {
                kind: 8,
                code: Some(0),
            }),
            true,
        ),
        icmp(
            vec![net("10.6.0.1", None), net("10.6.0.9", Some("10.6.0.20"))],
            Some(IcmpControl {
                kind: 3,
                code: Some(4),
            }),
            false,
        ),
        icmp(vec![net("10.7.0.0", Some("10.7.0.255"))], None, true),
    ]
}

#[test]
fn netlink_insertion_matches_the_nft_script() {
    let ns = Netns::new("a");
    let ruleset = Ruleset {
        table: "ip trq".into(),
        bridge_prefix: "trbrq-".into(),
    };
    let container = |chain: &'static str| ContainerRules {
        handle: "some app",
        table: "trq-egress-0",
        chain,
        device: "trvq-0",
        subnet: "10.254.0.0/30".parse().unwrap(),
        ip: "10.254.0.1".parse().unwrap(),
    };
    let rules = variants();
    let (a, b) = ns.run(|| {
        let setup = egress_chain("a") + &egress_chain("b");
        run_nft("create the chains", &setup).expect("create the chains");
        // One call per rule, then all of them in one call.
        let calls: Vec<&[NetOutRule]> = rules
            .iter()
            .map(std::slice::from_ref)
            .chain([&rules[..]])
            .collect();
        for rules in calls {
            let insertion = |chain| {
                ruleset
                    .netout_insertion(&container(chain), rules)
                    .unwrap()
                    .expect("rules to insert")
            };
            run_nft("insert", &insertion("a").script()).expect("nft inserts");
            firewall::send(&insertion("b")).expect("netlink inserts");
        }
        (nft_list("a"), nft_list("b"))
    });
    assert_eq!(a.lines().count(), 2 * rules.len() + 5, "{a}");
    assert!(
        a.contains("ip daddr { 10.0.0.1-10.0.0.5, 10.1.0.0/24 }"),
        "{a}"
    );
    assert_eq!(a, b);
}

#[test]
fn a_failed_batch_inserts_nothing_and_says_why() {
    let ns = Netns::new("b");
    let ruleset = Ruleset {
        table: "ip trq".into(),
        bridge_prefix: "trbrq-".into(),
    };
    let rules = |chain: &'static str| ContainerRules {
        handle: "h",
        table: "trq-egress-0",
        chain,
        device: "trvq-0",
        subnet: "10.254.0.0/30".parse().unwrap(),
        ip: "10.254.0.1".parse().unwrap(),
    };
    ns.run(|| {
        run_nft("create the chain", &egress_chain("a")).unwrap();
        // No such chain: the kernel refuses and nothing is left behind.
        let insertion = ruleset
            .netout_insertion(&rules("missing"), &variants())
            .unwrap()
            .unwrap();
        let error = firewall::send(&insertion).unwrap_err();
        assert_eq!(error.errno(), Some(nix::errno::Errno::ENOENT), "{error}");
        assert_eq!(nft_list("a").lines().count(), 5);
        let sets = Command::new("nft").args(["list", "sets"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&sets.stdout).contains("__set"));
    });
}

/// Transactions as one `nft` script.
fn scripts(transactions: &[Transaction]) -> String {
    transactions.iter().map(Transaction::script).collect()
}

/// Everything in the namespace: our table and the containers' tables.
fn nft_list_table() -> String {
    let output = Command::new("nft")
        .args(["list", "ruleset"])
        .stderr(Stdio::inherit())
        .output()
        .expect("run nft list");
    assert!(output.status.success(), "nft list table");
    String::from_utf8(output.stdout).unwrap()
}

/// A container's setup and teardown sent as netlink batches leave the kernel exactly as the
/// same transactions run as `nft` scripts: the scripts run in one namespace, the batches (by
/// the `Firewall` production uses) in another, both tables built by the same globals script,
/// compared after every step.
#[test]
fn container_setup_and_teardown_match_the_nft_scripts() {
    use trellis_core::api::PortMapping;
    use trellis_os::linux::network::firewall::{Firewall, FirewallSettings};
    let (old, new) = (Netns::new("c"), Netns::new("d"));
    let ruleset = Ruleset {
        table: "ip trq".into(),
        bridge_prefix: "trbrq-".into(),
    };
    let settings = FirewallSettings {
        deny_networks: vec!["10.200.0.0/16".parse().unwrap()],
        allow_host_access: false,
    };
    let containers = [
        (
            "app-1",
            "c-0000000001",
            "trv0000000001-0",
            "10.254.0.0/30",
            "10.254.0.2",
        ),
        (
            "app 2",
            "c-0000000002",
            "trv0000000002-0",
            "10.254.0.4/30",
            "10.254.0.6",
        ),
        (
            "app-3",
            "c-0000000003",
            "trv0000000003-0",
            "10.254.0.0/30",
            "10.254.0.3",
        ),
        (
            "app-4",
            "c-0000000004",
            "trv0000000004-0",
            "10.254.1.0/24",
            "10.254.1.77",
        ),
    ];
    let rules = |i: usize| ContainerRules {
        handle: containers[i].0,
        table: if i == 2 {
            "trq-egress-1"
        } else {
            "trq-egress-0"
        },
        chain: containers[i].1,
        device: containers[i].2,
        subnet: containers[i].3.parse().unwrap(),
        ip: containers[i].4.parse().unwrap(),
    };
    let all = variants();
    let netout: [Vec<NetOutRule>; 4] = [vec![], all.clone(), vec![], all[3..9].to_vec()];
    let mapping = |host_port, container_port| PortMapping {
        host_port,
        container_port,
    };
    let ports: [Vec<PortMapping>; 4] = [
        vec![],
        vec![mapping(61001, 8080), mapping(61002, 22)],
        vec![mapping(61003, 80)],
        vec![mapping(61004, 65535)],
    ];
    let firewall = || Firewall::new(ruleset.clone());

    // Each step: the script in `old`, the batch in `new`, then the two tables.
    let step = |script: &(dyn Fn() -> String + Sync), batch: &(dyn Fn(&Firewall) + Sync)| {
        let a = old.run(|| {
            run_nft("step", &script()).expect("the script applies");
            nft_list_table()
        });
        let b = new.run(|| {
            batch(&firewall());
            nft_list_table()
        });
        assert_eq!(a, b);
        a
    };
    step(&|| ruleset.globals_script(&settings), &|f| {
        f.install_globals(&settings).unwrap()
    });
    for i in 0..containers.len() {
        let listed = step(
            &|| {
                scripts(
                    &ruleset
                        .container_setup(&rules(i), &netout[i], &ports[i])
                        .unwrap(),
                )
            },
            &|f| f.add_container(&rules(i), &netout[i], &ports[i]).unwrap(),
        );
        assert!(
            listed.contains(&format!("chain {} {{", containers[i].1)),
            "{listed}"
        );
    }
    // Re-running a setup rebuilds the chain in place.
    step(
        &|| {
            scripts(
                &ruleset
                    .container_setup(&rules(1), &netout[1], &ports[1])
                    .unwrap(),
            )
        },
        &|f| f.add_container(&rules(1), &netout[1], &ports[1]).unwrap(),
    );
    // A port mapped to a running container, and unmapped.
    let listed = step(
        &|| {
            ruleset
                .port_mapping(&rules(0), &mapping(62005, 7))
                .unwrap()
                .script()
        },
        &|f| f.map_port(&rules(0), &mapping(62005, 7)).unwrap(),
    );
    assert!(listed.contains("62005 : 10.254.0.2 . 7"), "{listed}");
    step(
        &|| {
            scripts(
                ruleset
                    .ports_removal(&rules(0), &[mapping(62005, 7)])
                    .unwrap()
                    .as_slice(),
            )
        },
        &|f| f.remove_ports(&rules(0), &[mapping(62005, 7)]).unwrap(),
    );
    // Removal in its two parts: the port mappings, then the rest.
    let ruleset = &ruleset;
    let remove = |c: ContainerRules<'static>, ports: Vec<PortMapping>, forget: bool| {
        step(
            &|| {
                let mut removal: Vec<Transaction> = ruleset
                    .ports_removal(&c, &ports)
                    .unwrap()
                    .into_iter()
                    .collect();
                removal.push(ruleset.chain_removal(&c));
                if forget {
                    removal.push(ruleset.address_removal(&c).unwrap());
                }
                scripts(&removal)
            },
            &|f| {
                f.remove_ports(&c, &ports).unwrap();
                f.remove_container(&c).unwrap();
                if forget {
                    f.forget_address(&c).unwrap()
                }
            },
        )
    };
    let listed = remove(rules(1), ports[1].clone(), true);
    assert!(!listed.contains("c-0000000002"), "{listed}");
    assert!(!listed.contains("61001"), "{listed}");
    assert!(!listed.contains("10.254.0.6"), "{listed}");
    assert!(listed.contains("c-0000000003"), "{listed}");
    // Removing again, and removing what was never added, succeed and change nothing.
    remove(rules(1), ports[1].clone(), true);
    let never = ContainerRules {
        chain: "c-0000000009",
        ip: "10.254.0.9".parse().unwrap(),
        ..rules(0)
    };
    let after = remove(never, vec![mapping(61009, 9)], true);
    assert_eq!(after, listed);
    // An address another container holds keeps its `containers` element.
    let kept = remove(rules(0), ports[0].clone(), false);
    assert!(!kept.contains("c-0000000001"), "{kept}");
    assert!(kept.contains("10.254.0.2"), "{kept}");
    for i in [0, 2, 3] {
        remove(rules(i), ports[i].clone(), true);
    }
    // A port now mapped to another container: setup refuses it as before; teardown of the old
    // owner leaves the new owner's mapping alone.
    new.run(|| {
        let f = firewall();
        f.add_container(&rules(0), &[], &ports[1]).unwrap();
        let clash = f.add_container(&rules(2), &[], &[mapping(61001, 1)]);
        assert!(
            matches!(&clash, Err(trellis_os::host::HostError::Invalid(_))),
            "{clash:?}"
        );
        assert!(!nft_list_table().contains("10.254.0.3"));
        f.remove_ports(&rules(2), &[mapping(61001, 1)]).unwrap();
        assert!(nft_list_table().contains("61001 : 10.254.0.2 . 8080"));
        f.remove_ports(&rules(0), &ports[1]).unwrap();
        assert!(!nft_list_table().contains("6100"));
    });
}

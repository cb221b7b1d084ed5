//! The bodies below were captured from the unmodified Go client and server; ours must read them
//! and write them back byte for byte.

use super::*;

fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(captured: &str) {
    let value: T = serde_json::from_str(captured).expect("captured body parses");
    assert_eq!(serde_json::to_string(&value).unwrap(), captured);
}

#[test]
fn empty_container_spec_is_what_the_go_client_sends() {
    let captured = r#"{"image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}"#;
    assert_eq!(
        serde_json::to_string(&ContainerSpec::default()).unwrap(),
        captured
    );
    round_trip::<ContainerSpec>(captured);
}

#[test]
fn full_container_spec_round_trips() {
    round_trip::<ContainerSpec>(
        r#"{"handle":"my-handle","grace_time":30000000000,"rootfs":"/old/rootfs","image":{"uri":"docker:///busybox#1.36","username":"u","password":"p"},"bind_mounts":[{"src_path":"/src","dst_path":"/dst","mode":1,"origin":1},{"src_path":"/a","dst_path":"/b"}],"network":"10.254.0.0/30","properties":{"app":"web","owner":"me"},"env":["A=1","B=2"],"privileged":true,"limits":{"bandwidth_limits":{"rate":1000,"burst":2000},"cpu_limits":{"weight":512,"limit_in_shares":256},"disk_limits":{"inode_soft":1,"inode_hard":2,"byte_soft":3,"byte_hard":4,"scope":1},"memory_limits":{"limit_in_bytes":1073741824},"pid_limits":{"max":100}},"netout_rules":[{"protocol":1,"networks":[{"start":"1.2.3.4","end":"1.2.3.4"},{"start":"10.0.0.0","end":"10.0.0.255"}],"ports":[{"start":80,"end":80},{"start":8080,"end":8090}],"log":true},{"protocol":3,"icmps":{"type":8,"code":0}},{}],"netin":[{"host_port":0,"container_port":8080},{"host_port":61000,"container_port":22}]}"#,
    );
}

#[test]
fn nulls_decode_to_zero_values_like_go() {
    let spec: ContainerSpec = serde_json::from_str(
        r#"{"handle":null,"image":null,"limits":null,"properties":null,"env":null,"netin":null,"grace_time":null}"#,
    )
    .unwrap();
    assert_eq!(spec, ContainerSpec::default());
    let rules: Vec<NetOutRule> =
        serde_json::from_str("[{},{\"protocol\":4,\"icmps\":{}}]").unwrap();
    assert_eq!(rules[1].protocol, Protocol::IcmpV6);
    assert_eq!(
        rules[1].icmps,
        Some(IcmpControl {
            kind: 0,
            code: None
        })
    );
}

#[test]
fn unknown_enum_values_are_rejected() {
    assert!(serde_json::from_str::<NetOutRule>(r#"{"protocol":9}"#).is_err());
    assert!(serde_json::from_str::<BindMount>(r#"{"mode":2}"#).is_err());
    assert!(serde_json::from_str::<DiskLimits>(r#"{"scope":7}"#).is_err());
}

#[test]
fn process_specs_round_trip() {
    round_trip::<ProcessSpec>(r#"{"path":"x","rlimits":{},"image":{}}"#);
    round_trip::<ProcessSpec>(
        r#"{"id":"my-proc","path":"/bin/cat","env":["X=1"],"dir":"/tmp","rlimits":{"nofile":1024},"limits":{"cpu_limits":{},"memory_limits":{"limit_in_bytes":5}},"tty":{"window_size":{"columns":80,"rows":24}},"image":{"uri":"/rootfs"},"bind_mounts":[{"src_path":"/s","dst_path":"/d"}]}"#,
    );
    let spec: ProcessSpec = serde_json::from_str(r#"{"path":"x","rlimits":{"nproc":0}}"#).unwrap();
    assert_eq!(
        spec.rlimits.nproc,
        Some(0),
        "an explicit zero rlimit is a limit"
    );
}

#[test]
fn info_and_zero_info_match_the_reference_server() {
    round_trip::<ContainerInfo>(
        r#"{"State":"active","Events":["oom"],"HostIP":"10.0.0.1","ContainerIP":"10.0.0.2","ContainerIPv6":"","ExternalIP":"192.168.1.1","ContainerPath":"/var/x","ProcessIDs":["p1"],"Properties":{"k":"v"},"MappedPorts":[{"HostPort":61001,"ContainerPort":8080}]}"#,
    );
    assert_eq!(
        serde_json::to_string(&ContainerInfo::default()).unwrap(),
        r#"{"State":"","Events":null,"HostIP":"","ContainerIP":"","ContainerIPv6":"","ExternalIP":"","ContainerPath":"","ProcessIDs":null,"Properties":null,"MappedPorts":null}"#
    );
}

#[test]
fn metrics_match_the_reference_server() {
    let captured = r#"{"MemoryStat":{"active_anon":0,"active_file":0,"cache":0,"hierarchical_memory_limit":0,"inactive_anon":0,"inactive_file":0,"mapped_file":0,"pgfault":0,"pgmajfault":0,"pgpgin":0,"pgpgout":0,"rss":0,"total_active_anon":0,"total_active_file":0,"total_cache":0,"total_inactive_anon":0,"total_inactive_file":0,"total_mapped_file":0,"total_pgfault":0,"total_pgmajfault":0,"total_pgpgin":0,"total_pgpgout":0,"total_rss":0,"total_unevictable":0,"unevictable":0,"swap":0,"hierarchical_memsw_limit":0,"total_swap":0,"TotalUsageTowardLimit":0,"anon":0,"file":0,"swapcached":0},"CPUStat":{"Usage":0,"User":0,"System":0},"DiskStat":{"TotalBytesUsed":0,"TotalInodesUsed":0,"ExclusiveBytesUsed":0,"ExclusiveInodesUsed":0},"NetworkStat":null,"PidStat":{"Current":0,"Max":0},"Age":1000000000,"CPUEntitlement":0}"#;
    let metrics = Metrics {
        age: 1_000_000_000,
        ..Default::default()
    };
    assert_eq!(serde_json::to_string(&metrics).unwrap(), captured);
    round_trip::<Metrics>(captured);
}

#[test]
fn small_bodies_match_the_reference_server() {
    round_trip::<Capacity>(
        r#"{"memory_in_bytes":1,"disk_in_bytes":2,"schedulable_disk_in_bytes":3}"#,
    );
    round_trip::<NetInResponse>(r#"{"host_port":61001,"container_port":8080}"#);
    round_trip::<CpuLimits>(r#"{"weight":3,"limit_in_shares":4}"#);
    round_trip::<DiskLimits>(r#"{"byte_hard":5,"scope":1}"#);
    round_trip::<NetOutRule>(r#"{"protocol":2,"networks":[{"start":"::1","end":"::1"}]}"#);
    let bulk: Vec<NetOutRule> = serde_json::from_str::<Option<Vec<NetOutRule>>>("null")
        .unwrap()
        .unwrap_or_default();
    assert!(bulk.is_empty());
}

#[test]
fn registry_passwords_never_reach_debug_output() {
    let image = ImageRef {
        uri: "docker:///x".into(),
        username: "u".into(),
        password: "hunter2".into(),
    };
    let printed = format!("{image:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("<redacted>"));
}

#[test]
fn netout_rule_validation() {
    let backwards: NetOutRule = serde_json::from_str(
        r#"{"protocol":1,"networks":[{"start":"10.0.0.9","end":"10.0.0.1"}]}"#,
    )
    .unwrap();
    assert!(backwards.validate().is_err());
    let icmp_on_tcp: NetOutRule =
        serde_json::from_str(r#"{"protocol":1,"icmps":{"type":8}}"#).unwrap();
    assert!(icmp_on_tcp.validate().is_err());
    for (protocol, name) in [(0, "ALL"), (3, "ICMP")] {
        let with_ports: NetOutRule = serde_json::from_str(&format!(
            r#"{{"protocol":{protocol},"ports":[{{"start":80,"end":81}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            with_ports.validate(),
            Err(format!("Ports cannot be specified for Protocol {name}"))
        );
    }
    let ok: NetOutRule = serde_json::from_str(
        r#"{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.9"}],"ports":[{"start":80,"end":90}],"log":true}"#,
    )
    .unwrap();
    assert!(ok.validate().is_ok());
}

#[test]
fn entitlement_scales_with_age() {
    use super::entitlement_over;
    assert_eq!(entitlement_over(250_000_000, 4_000_000_000), 1_000_000_000);
    assert_eq!(entitlement_over(0, 4_000_000_000), 0);
    assert_eq!(entitlement_over(u64::MAX, u64::MAX), u64::MAX);
}

#[test]
fn cpu_limits_are_reported_as_gdn_reports_them() {
    use super::{shares_to_weight, CpuLimits};
    let legacy = CpuLimits {
        weight: 0,
        limit_in_shares: 50,
    };
    // GATS L2 (v1): {LimitInShares: 50, Weight: 0}.
    assert_eq!(legacy.reported(false), legacy);
    let weighted = CpuLimits {
        weight: 1028,
        limit_in_shares: 0,
    };
    assert_eq!(
        weighted.reported(false),
        CpuLimits {
            weight: 0,
            limit_in_shares: 1028
        }
    );
    // GATS L3 and LM2 (v2): the converted cpu.weight in LimitInShares.
    assert_eq!(weighted.reported(true).limit_in_shares, 101);
    let lm2 = CpuLimits {
        weight: 280,
        limit_in_shares: 0,
    };
    assert_eq!(
        lm2.reported(true),
        CpuLimits {
            weight: 0,
            limit_in_shares: 37
        }
    );
    assert_eq!(CpuLimits::default().reported(true), CpuLimits::default());
    for (shares, weight) in [
        (0, 0),
        (2, 1),
        (1024, 100),
        (262_144, 10_000),
        (u64::MAX, 10_000),
    ] {
        assert_eq!(shares_to_weight(shares), weight, "{shares}");
    }
}

//! The handle rule and the bounds on input: a request over a bound is refused at once with a
//! clear Garden error and changes nothing; one within bounds works; no stored record outgrows
//! the record bound.

mod support;

use std::collections::BTreeMap;
use support::Driver;
use trellis_core::api::{BindMount, ContainerSpec, ImageRef, NetOutRule, ProcessSpec};
use trellis_core::handle::{InvalidName, MAX_HANDLE_BYTES};
use trellis_core::limits::{self, EnvOwner, LimitExceeded};
use trellis_core::network::{Forbidden, NetworkError};
use trellis_core::{Command, Config, Error, ErrorKind, Reply};

/// Sends `command`, which must be refused at once without changing the core's state or
/// emitting an effect; returns the error.
fn refused(d: &mut Driver, command: Command) -> Error {
    let before = d.core.view();
    let effects = d.effects.len();
    let r = d.send(command);
    let error = match d.reply(r) {
        Some(Err(e)) => e,
        other => panic!("expected an immediate refusal, got {other:?}"),
    };
    assert_eq!(d.effects.len(), effects, "a refusal emits no effect");
    assert_eq!(d.core.view(), before, "a refusal changes nothing");
    assert_eq!(error.kind(), ErrorKind::Generic);
    error
}

fn create(spec: ContainerSpec) -> Command {
    Command::Create(Box::new(spec))
}

/// Sends a command that must succeed once its effects are done.
fn accepted(d: &mut Driver, command: Command) -> Reply {
    let r = d.send(command);
    d.answer(|_| false);
    match d.reply(r) {
        Some(Ok(reply)) => reply,
        other => panic!("expected success, got {other:?}"),
    }
}

fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    }
}

fn set(handle: &str, key: &str, value: &str) -> Command {
    Command::SetProperty {
        handle: handle.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn props(n: usize, value_len: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("k{i:03}"), "v".repeat(value_len)))
        .collect()
}

#[test]
fn handles_that_cannot_name_host_objects_are_refused_before_anything_is_taken() {
    let mut d = Driver::new(Config::default());
    let too_long = "h".repeat(MAX_HANDLE_BYTES + 1);
    for (handle, reason) in [
        (".hidden", InvalidName::Hidden),
        ("tasks", InvalidName::CgroupFileName),
        ("notify_on_release", InvalidName::CgroupFileName),
        ("release_agent", InvalidName::CgroupFileName),
        ("cgroup.procs", InvalidName::CgroupFileName),
        ("memory.limit_in_bytes", InvalidName::CgroupFileName),
        ("pids.max", InvalidName::CgroupFileName),
        (
            too_long.as_str(),
            InvalidName::TooLong {
                len: MAX_HANDLE_BYTES + 1,
                max: MAX_HANDLE_BYTES,
            },
        ),
        ("a/b", InvalidName::Slash),
        ("..", InvalidName::DotPath),
    ] {
        let error = refused(
            &mut d,
            create(ContainerSpec {
                netin: vec![Default::default()],
                ..spec(handle)
            }),
        );
        assert_eq!(
            error,
            Error::InvalidHandle {
                handle: handle.into(),
                reason
            },
            "{handle}"
        );
    }
    assert_eq!(
        Error::InvalidHandle {
            handle: "tasks".into(),
            reason: InvalidName::CgroupFileName
        }
        .to_string(),
        "invalid handle 'tasks': must not be the name of a cgroup control file (tasks, \
         notify_on_release, release_agent, cgroup.*, or <controller>.* such as memory.* or \
         pids.*)"
    );
    // The longest handle, and ordinary names with dots, work.
    for handle in [
        "h".repeat(MAX_HANDLE_BYTES),
        "my.app".into(),
        "memory".into(),
    ] {
        accepted(&mut d, create(spec(&handle)));
    }
}

#[test]
fn a_create_over_any_bound_is_refused_and_takes_nothing() {
    let mut d = Driver::new(Config::default());
    let cases: Vec<(ContainerSpec, LimitExceeded)> = vec![
        (
            ContainerSpec {
                properties: [("k".repeat(1025), String::new())].into(),
                ..spec("c")
            },
            LimitExceeded::PropertyKey { len: 1025 },
        ),
        (
            ContainerSpec {
                properties: [("k".into(), "v".repeat(64 * 1024 + 1))].into(),
                ..spec("c")
            },
            LimitExceeded::PropertyValue {
                key: "k".into(),
                len: 64 * 1024 + 1,
            },
        ),
        (
            ContainerSpec {
                properties: props(257, 0),
                ..spec("c")
            },
            LimitExceeded::PropertyCount,
        ),
        (
            ContainerSpec {
                env: vec!["A=1".into(); 1025],
                ..spec("c")
            },
            LimitExceeded::EnvEntries {
                whose: EnvOwner::Container,
                count: 1025,
            },
        ),
        (
            ContainerSpec {
                env: vec![format!("A={}", "x".repeat(70_000)); 2],
                ..spec("c")
            },
            LimitExceeded::EnvBytes {
                whose: EnvOwner::Container,
                bytes: 2 * 70_003,
            },
        ),
        (
            ContainerSpec {
                bind_mounts: vec![
                    BindMount {
                        src_path: "/src".into(),
                        dst_path: "/dst".into(),
                        ..Default::default()
                    };
                    257
                ],
                ..spec("c")
            },
            LimitExceeded::BindMounts { count: 257 },
        ),
        (
            ContainerSpec {
                netout_rules: vec![NetOutRule::default(); 1025],
                ..spec("c")
            },
            LimitExceeded::NetOutRules { count: 1025 },
        ),
    ];
    for (spec, expected) in cases {
        let error = refused(&mut d, create(spec));
        assert_eq!(error, Error::LimitExceeded(expected.clone()));
        assert_eq!(error.to_string(), format!("limit exceeded: {expected}"));
    }
    // Properties each within bounds but too much together: refused after the address and a
    // port were taken, which are given back.
    let error = refused(
        &mut d,
        create(ContainerSpec {
            properties: props(16, 64 * 1024),
            netin: vec![Default::default()],
            ..spec("c")
        }),
    );
    assert!(
        matches!(error, Error::LimitExceeded(LimitExceeded::RecordSize { bytes }) if bytes > limits::MAX_RECORD_BYTES),
        "{error:?}"
    );
    assert!(d.core.view().allocations.is_empty());
    assert!(d.core.view().ports_taken.is_empty());
    assert!(error
        .to_string()
        .starts_with("limit exceeded: the container's record would be "));
}

#[test]
fn a_create_at_every_bound_works() {
    let mut d = Driver::new(Config::default());
    let entry = format!("A={}", "x".repeat(125));
    accepted(
        &mut d,
        create(ContainerSpec {
            properties: props(256, 64),
            // 1024 entries of 128 bytes with their NULs: exactly the byte bound too.
            env: vec![entry; 1024],
            bind_mounts: vec![
                BindMount {
                    src_path: "/src".into(),
                    dst_path: "/dst".into(),
                    ..Default::default()
                };
                256
            ],
            netout_rules: vec![NetOutRule::default(); 1024],
            ..spec(&"h".repeat(MAX_HANDLE_BYTES))
        }),
    );
    accepted(
        &mut d,
        create(ContainerSpec {
            properties: [("k".repeat(1024), "v".repeat(64 * 1024))].into(),
            ..spec("big-value")
        }),
    );
    assert!(d
        .persisted_record_bytes
        .iter()
        .all(|b| *b <= limits::MAX_RECORD_BYTES));
}

#[test]
fn set_property_respects_every_bound_and_a_refusal_changes_nothing() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    assert_eq!(
        refused(&mut d, set("web", &"k".repeat(1025), "v")),
        Error::LimitExceeded(LimitExceeded::PropertyKey { len: 1025 })
    );
    assert_eq!(
        refused(&mut d, set("web", "k", &"v".repeat(65537))),
        Error::LimitExceeded(LimitExceeded::PropertyValue {
            key: "k".into(),
            len: 65537
        })
    );
    for (key, _) in props(256, 1) {
        accepted(&mut d, set("web", &key, "1"));
    }
    assert_eq!(
        refused(&mut d, set("web", "one-more", "1")),
        Error::LimitExceeded(LimitExceeded::PropertyCount)
    );
    // At the count, existing keys still change and removals work.
    accepted(&mut d, set("web", "k000", "2"));
    accepted(
        &mut d,
        Command::RemoveProperty {
            handle: "web".into(),
            key: "k000".into(),
        },
    );
    accepted(&mut d, set("web", "one-more", "1"));
}

#[test]
fn the_record_bound_holds_across_property_changes() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let big = "v".repeat(64 * 1024);
    let mut stored = 0;
    loop {
        let r = d.send(set("web", &format!("big{stored:02}"), &big));
        d.answer(|_| false);
        match d.reply(r) {
            Some(Ok(Reply::Done)) => stored += 1,
            Some(Err(Error::LimitExceeded(LimitExceeded::RecordSize { bytes }))) => {
                assert!(bytes > limits::MAX_RECORD_BYTES);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        stored, 15,
        "15 values of 64 KiB fit in 1 MiB with the rest of the record"
    );
    // Refused again (changing nothing), while a smaller value still fits.
    refused(&mut d, set("web", "big15", &big));
    accepted(&mut d, set("web", "big00", "small"));
    accepted(&mut d, set("web", "another", &"v".repeat(60_000)));
    assert!(!d.persisted_record_bytes.is_empty());
    assert!(
        d.persisted_record_bytes
            .iter()
            .all(|b| *b <= limits::MAX_RECORD_BYTES),
        "largest record stored: {:?}",
        d.persisted_record_bytes.iter().max()
    );
}

#[test]
fn net_out_rules_are_bounded_counting_those_in_flight() {
    let mut d = Driver::new(Config::default());
    accepted(
        &mut d,
        create(ContainerSpec {
            netout_rules: vec![NetOutRule::default(); 24],
            ..spec("web")
        }),
    );
    let netout = |n: usize| Command::NetOut {
        handle: "web".into(),
        rules: vec![NetOutRule::default(); n],
    };
    // 1000 rules on their way to the host: not yet the container's, but they will be.
    let in_flight = d.send(netout(1000));
    assert_eq!(
        refused(&mut d, netout(1)),
        Error::LimitExceeded(LimitExceeded::NetOutRules { count: 1025 })
    );
    d.answer(|_| false);
    assert_eq!(d.reply(in_flight), Some(Ok(Reply::Done)));
    assert_eq!(d.core.view().containers[0].netout_rules, 1024);
    refused(&mut d, netout(1));
    // Nothing to add is nothing over the bound.
    accepted(&mut d, netout(0));
}

#[test]
fn a_process_env_over_the_bound_is_refused() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let run = |env: Vec<String>, bind_mounts: Vec<BindMount>| Command::Run {
        handle: "web".into(),
        spec: Box::new(ProcessSpec {
            path: "sh".into(),
            env,
            // A process may have bind mounts only with an image of its own.
            image: ImageRef {
                uri: if bind_mounts.is_empty() {
                    String::new()
                } else {
                    "docker:///busybox".to_string()
                },
                ..Default::default()
            },
            bind_mounts,
            ..Default::default()
        }),
    };
    assert_eq!(
        refused(&mut d, run(vec!["A=1".into(); 1025], vec![])),
        Error::LimitExceeded(LimitExceeded::EnvEntries {
            whose: EnvOwner::Process,
            count: 1025
        })
    );
    assert!(matches!(
        refused(
            &mut d,
            run(vec![format!("A={}", "x".repeat(128 * 1024))], vec![])
        ),
        Error::LimitExceeded(LimitExceeded::EnvBytes {
            whose: EnvOwner::Process,
            ..
        })
    ));
    assert_eq!(
        refused(&mut d, run(vec![], vec![BindMount::default(); 257])),
        Error::LimitExceeded(LimitExceeded::BindMounts { count: 257 })
    );
    assert!(matches!(
        accepted(&mut d, run(vec!["A=1".into(); 1024], vec![])),
        Reply::ProcessStarted { .. }
    ));
}

#[test]
fn an_image_env_over_the_bound_fails_the_create_and_leaves_nothing() {
    let mut d = Driver::new(Config::default());
    d.image_env = vec!["A=1".into(); 1025];
    let r = d.send(create(spec("web")));
    let carried_out = std::cell::RefCell::new(Vec::new());
    d.answer(|kind| {
        carried_out.borrow_mut().push(kind.name());
        false
    });
    assert_eq!(
        d.reply(r),
        Some(Err(Error::LimitExceeded(LimitExceeded::EnvEntries {
            whose: EnvOwner::Image,
            count: 1025
        })))
    );
    assert_eq!(
        carried_out.into_inner(),
        ["prepare-rootfs", "remove-rootfs"]
    );
    let view = d.core.view();
    assert!(view.containers.is_empty() && view.allocations.is_empty());
}

#[test]
fn networks_the_host_uses_or_treats_specially_are_refused() {
    let mut d = Driver::new(Config {
        host_networks: vec!["192.0.2.0/24".parse().unwrap()],
        ..Config::default()
    });
    for (network, forbidden) in [
        ("192.0.2.5", "192.0.2.0/24"),
        ("192.0.0.0/16", "192.0.2.0/24"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("169.254.10.0/24", "169.254.0.0/16"),
        ("224.1.0.0/16", "224.0.0.0/4"),
        ("0.0.0.4/30", "0.0.0.0/8"),
        ("255.255.255.252/30", "255.255.255.255/32"),
    ] {
        let error = refused(
            &mut d,
            create(ContainerSpec {
                network: network.into(),
                ..spec("web")
            }),
        );
        let Error::Network(NetworkError::Forbidden { overlaps, .. }) = &error else {
            panic!("{network}: {error:?}");
        };
        let range = match overlaps {
            Forbidden::Special { range, .. } => *range,
            Forbidden::Host { network } => *network,
        };
        assert_eq!(range.to_string(), forbidden, "{network}");
        assert!(error.to_string().contains("which containers cannot use"));
    }
    accepted(
        &mut d,
        create(ContainerSpec {
            network: "192.0.3.0/24".into(),
            ..spec("web")
        }),
    );
}

#[test]
fn a_pool_overlapping_the_host_is_refused_at_start() {
    let config = Config {
        network_pool: "192.0.2.0/26".parse().unwrap(),
        host_networks: vec!["192.0.2.0/24".parse().unwrap()],
        ..Config::default()
    };
    assert!(config.validate().is_err());
    assert_eq!(Config::default().validate(), Ok(()));
}

//! Focused behaviours of the core that clients rely on.

mod support;

use support::Driver;
use trellis_core::api::{BindMount, ContainerSpec, NetIn, NetInResponse, ProcessSpec};
use trellis_core::effect::{EffectError, EffectErrorKind, EffectKind, EffectOutput};
use trellis_core::{Command, Config, Error, Input, Reply, SECOND};

#[test]
fn max_containers_holds_under_concurrent_creates() {
    let mut d = Driver::new(Config {
        max_containers: 3,
        ..Config::default()
    });
    let requests: Vec<_> = (0..5)
        .map(|i| {
            d.send(Command::Create(Box::new(ContainerSpec {
                handle: format!("c{i}"),
                ..Default::default()
            })))
        })
        .collect();
    // Nothing has finished, yet the last two are refused at once.
    for r in &requests[3..] {
        assert_eq!(d.reply(*r), Some(Err(Error::MaxContainersReached)));
    }
    d.answer(|_| false);
    for r in &requests[..3] {
        assert!(matches!(d.reply(*r), Some(Ok(Reply::Created { .. }))));
    }
}

#[test]
fn duplicate_handle_names_the_handle() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let r = d.send(Command::Create(Box::new(ContainerSpec {
        handle: "web".into(),
        ..Default::default()
    })));
    let err = d.reply(r).unwrap().unwrap_err();
    assert_eq!(err.to_string(), "Handle 'web' already in use");
}

#[test]
fn generated_handles_are_unique_uuids() {
    let mut d = Driver::new(Config::default());
    let mut handles = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let r = d.send(Command::Create(Box::default()));
        d.answer(|_| false);
        let Some(Ok(Reply::Created { handle })) = d.reply(r) else {
            panic!("create failed")
        };
        assert_eq!(handle.len(), 36);
        assert!(handles.insert(handle));
    }
}

#[test]
fn requests_mid_create_and_mid_destroy_get_defined_answers() {
    let mut d = Driver::new(Config::default());
    let create = d.send(Command::Create(Box::new(ContainerSpec {
        handle: "web".into(),
        ..Default::default()
    })));
    let destroy = d.send(Command::Destroy {
        handle: "web".into(),
    });
    assert!(matches!(
        d.reply(destroy),
        Some(Err(Error::StillBeingCreated { .. }))
    ));
    let info = d.send(Command::Info {
        handle: "web".into(),
    });
    assert!(matches!(
        d.reply(info),
        Some(Err(Error::ContainerNotFound { .. }))
    ));
    d.answer(|_| false);
    assert!(d.reply(create).is_some());

    let first = d.send(Command::Destroy {
        handle: "web".into(),
    });
    let second = d.send(Command::Destroy {
        handle: "web".into(),
    });
    assert_eq!(d.reply(second), Some(Err(Error::AlreadyBeingDestroyed)));
    assert_eq!(d.core.container_state("web"), Some("destroying"));
    let list = d.send(Command::List {
        filter: Default::default(),
    });
    assert_eq!(d.reply(list), Some(Ok(Reply::Handles(vec![]))));
    d.answer(|_| false);
    assert_eq!(d.reply(first), Some(Ok(Reply::Done)));
}

#[test]
fn a_failed_destroy_is_retried_and_can_be_retried_by_the_caller() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let destroy = d.send(Command::Destroy {
        handle: "web".into(),
    });
    d.answer(|k| matches!(k, EffectKind::RemoveCgroup { .. }));
    assert!(matches!(d.reply(destroy), Some(Err(Error::Host(_)))));
    assert_eq!(
        d.core.container_state("web"),
        Some("destroying"),
        "never listed as healthy again"
    );
    let retry_at = d.core.next_deadline().expect("a retry is scheduled");
    assert_eq!(retry_at, d.now.plus(SECOND));
    // The caller retries before the timer: it runs now, and succeeds.
    let again = d.send(Command::Destroy {
        handle: "web".into(),
    });
    d.answer(|_| false);
    assert_eq!(d.reply(again), Some(Ok(Reply::Done)));
    assert_eq!(d.core.container_state("web"), None);
    assert!(d.core.view().allocations.is_empty());
}

#[test]
fn a_tick_fires_every_timer_due_by_its_time() {
    let mut d = Driver::new(Config {
        default_grace_time: 2 * SECOND,
        ..Config::default()
    });
    d.create("idle");
    d.create("web");
    let destroy = d.send(Command::Destroy {
        handle: "web".into(),
    });
    d.answer(|k| matches!(k, EffectKind::RemoveRootfs { .. }));
    assert!(d.reply(destroy).unwrap().is_err());
    // Past both the teardown's retry (1 s) and the grace time (2 s): one tick fires both, and
    // leaves no deadline the server's loop would wake for again at once.
    d.now = d.now.plus(3 * SECOND);
    let out = d.core.step(d.now, Input::Tick);
    d.absorb(out);
    assert_eq!(d.core.container_state("idle"), Some("destroying"));
    assert!(d
        .effects
        .iter()
        .any(|e| matches!(&e.kind, EffectKind::RemoveRootfs { handle } if handle == "web")));
    assert!(d.core.next_deadline().is_none_or(|at| at > d.now));
    d.answer(|_| false);
    assert_eq!(d.core.container_state("idle"), None);
    assert_eq!(d.core.container_state("web"), None);
}

#[test]
fn teardown_retries_on_its_own_with_backoff() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let destroy = d.send(Command::Destroy {
        handle: "web".into(),
    });
    d.answer(|k| matches!(k, EffectKind::RemoveRootfs { .. }));
    assert!(d.reply(destroy).unwrap().is_err());
    d.now = d.now.plus(SECOND);
    let out = d.core.step(d.now, Input::Tick);
    d.absorb(out);
    d.answer(|k| matches!(k, EffectKind::RemoveRootfs { .. }));
    assert_eq!(
        d.core.next_deadline(),
        Some(d.now.plus(2 * SECOND)),
        "backoff doubles"
    );
    d.now = d.now.plus(2 * SECOND);
    let out = d.core.step(d.now, Input::Tick);
    d.absorb(out);
    d.answer(|_| false);
    assert_eq!(d.core.container_state("web"), None);
}

#[test]
fn properties_reserved_missing_and_removed() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let r = d.send(Command::SetProperty {
        handle: "web".into(),
        key: "garden.state".into(),
        value: "x".into(),
    });
    assert!(matches!(
        d.reply(r),
        Some(Err(Error::ReservedProperty { .. }))
    ));
    let r = d.send(Command::Property {
        handle: "web".into(),
        key: "nope".into(),
    });
    assert_eq!(
        d.reply(r).unwrap().unwrap_err().to_string(),
        "property does not exist: nope"
    );
    let r = d.send(Command::RemoveProperty {
        handle: "web".into(),
        key: "nope".into(),
    });
    assert_eq!(d.reply(r), Some(Ok(Reply::Done)));
    let r = d.send(Command::SetProperty {
        handle: "web".into(),
        key: "k".into(),
        value: "v".into(),
    });
    assert_eq!(d.reply(r), None, "answered only once stored");
    d.answer(|_| false);
    assert_eq!(d.reply(r), Some(Ok(Reply::Done)));
}

#[test]
fn a_change_that_cannot_be_stored_is_reported() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let r = d.send(Command::SetProperty {
        handle: "web".into(),
        key: "k".into(),
        value: "v".into(),
    });
    for _ in 0..3 {
        d.answer(|k| matches!(k, EffectKind::PersistRecord { .. }));
        if d.replies.is_empty() {
            d.now = d.core.next_deadline().expect("persist retry");
            let out = d.core.step(d.now, Input::Tick);
            d.absorb(out);
        }
    }
    assert!(matches!(d.reply(r), Some(Err(Error::NotDurable(_)))));
}

#[test]
fn process_ids_are_unique_while_running_and_bind_mounts_need_an_image() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let spec = |id: &str| {
        Box::new(ProcessSpec {
            id: id.into(),
            path: "sleep".into(),
            ..Default::default()
        })
    };
    let first = d.send(Command::Run {
        handle: "web".into(),
        spec: spec("same-id"),
    });
    let second = d.send(Command::Run {
        handle: "web".into(),
        spec: spec("same-id"),
    });
    let err = d.reply(second).unwrap().unwrap_err();
    assert_eq!(err.to_string(), "process ID 'same-id' already in use");
    d.answer(|_| false);
    assert!(matches!(
        d.reply(first),
        Some(Ok(Reply::ProcessStarted { .. }))
    ));
    let mounts = Box::new(ProcessSpec {
        path: "ls".into(),
        bind_mounts: vec![BindMount {
            src_path: "/a".into(),
            dst_path: "/b".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let r = d.send(Command::Run {
        handle: "web".into(),
        spec: mounts,
    });
    assert!(matches!(
        d.reply(r),
        Some(Err(Error::InvalidProcessSpec { .. }))
    ));
    let out = d.core.step(
        d.now,
        Input::Observed(trellis_core::effect::Observation::ProcessExited {
            handle: "web".into(),
            process_id: "same-id".into(),
        }),
    );
    d.absorb(out);
    let third = d.send(Command::Run {
        handle: "web".into(),
        spec: spec("same-id"),
    });
    d.answer(|_| false);
    assert!(
        matches!(d.reply(third), Some(Ok(Reply::ProcessStarted { .. }))),
        "an exited process's id is free again"
    );
}

#[test]
fn executable_not_found_travels_as_its_garden_type() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let r = d.send(Command::Run {
        handle: "web".into(),
        spec: Box::new(ProcessSpec {
            path: "nope".into(),
            ..Default::default()
        }),
    });
    let e = d.effects.remove(0);
    let outcome = Err(EffectError::new(
        EffectErrorKind::ExecutableNotFound,
        "exec: \"nope\": executable file not found in $PATH",
    ));
    let out = d.core.step(
        d.now,
        Input::Outcome {
            effect: e.id,
            outcome,
        },
    );
    d.absorb(out);
    let err = d.reply(r).unwrap().unwrap_err();
    assert_eq!(err.kind(), trellis_core::ErrorKind::ExecutableNotFound);
}

#[test]
fn bulk_metrics_reports_unknown_handles_per_entry() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    d.now = d.now.plus(3 * SECOND);
    let r = d.send(Command::BulkMetrics {
        handles: vec!["web".into(), "ghost".into()],
    });
    d.answer(|_| false);
    let Some(Ok(Reply::BulkMetrics(entries))) = d.reply(r) else {
        panic!("no bulk reply")
    };
    assert_eq!(entries["web"].as_ref().unwrap().age, (3 * SECOND) as i64);
    assert!(matches!(
        entries["ghost"],
        Err(Error::ContainerNotFound { .. })
    ));
}

#[test]
fn capacity_is_bounded_by_the_pool() {
    let mut d = Driver::new(Config {
        network_pool: "10.254.0.0/28".parse().unwrap(),
        max_containers: 100,
        ..Config::default()
    });
    let r = d.send(Command::Capacity);
    let e = d.effects.remove(0);
    let out = d.core.step(
        d.now,
        Input::Outcome {
            effect: e.id,
            outcome: Ok(EffectOutput::Capacity {
                memory_in_bytes: 1,
                disk_in_bytes: 2,
                schedulable_disk_in_bytes: 3,
            }),
        },
    );
    d.absorb(out);
    let Some(Ok(Reply::Capacity(c))) = d.reply(r) else {
        panic!("no capacity")
    };
    assert_eq!(c.max_containers, 4);
}

#[test]
fn metrics_scale_the_hosts_entitlement_rate_by_age() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    d.now = d.now.plus(4 * SECOND);
    let r = d.send(Command::Metrics {
        handle: "web".into(),
    });
    let e = d.effects.remove(0);
    assert!(matches!(e.kind, EffectKind::ReadMetrics { .. }));
    // The host reports 0.25 core per second of age.
    let outcome = Ok(EffectOutput::Metrics(Box::new(
        trellis_core::api::Metrics {
            cpu_entitlement: 250_000_000,
            ..Default::default()
        },
    )));
    let out = d.core.step(
        d.now,
        Input::Outcome {
            effect: e.id,
            outcome,
        },
    );
    d.absorb(out);
    let Some(Ok(Reply::Metrics(metrics))) = d.reply(r) else {
        panic!("no metrics reply")
    };
    assert_eq!(metrics.age, (4 * SECOND) as i64);
    assert_eq!(metrics.cpu_entitlement, SECOND);
}

#[test]
fn bulk_metrics_answer_for_a_peas_process_id_by_its_container() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    let run = d.send(Command::Run {
        handle: "web".into(),
        spec: Box::new(ProcessSpec {
            id: "pea-1".into(),
            path: "sh".into(),
            image: trellis_core::api::ImageRef {
                uri: "/pea-image".into(),
                ..Default::default()
            },
            ..Default::default()
        }),
    });
    d.answer(|_| false);
    assert!(matches!(
        d.reply(run),
        Some(Ok(Reply::ProcessStarted { .. }))
    ));
    let r = d.send(Command::BulkMetrics {
        handles: vec!["pea-1".into(), "web".into(), "nothing".into()],
    });
    let kinds: Vec<EffectKind> = d.effects.iter().map(|e| e.kind.clone()).collect();
    assert_eq!(
        kinds,
        vec![
            EffectKind::ReadPeaMetrics {
                handle: "web".into(),
                process_id: "pea-1".into(),
            },
            EffectKind::ReadMetrics {
                handle: "web".into()
            },
        ]
    );
    d.answer(|_| false);
    let Some(Ok(Reply::BulkMetrics(entries))) = d.reply(r) else {
        panic!("no bulk metrics reply")
    };
    assert!(entries["pea-1"].is_ok());
    assert!(entries["web"].is_ok());
    assert!(matches!(
        entries["nothing"],
        Err(Error::ContainerNotFound { .. })
    ));
}

#[test]
fn ports_out_of_range_are_refused_with_gardens_errors_and_take_nothing() {
    let mut d = Driver::new(Config::default());
    d.create("web");
    for (host_port, container_port, message) in [
        (0, 70000, "host port 70000 is out of range (1-65535)"),
        (65536, 0, "host port 65536 is out of range (1-65535)"),
    ] {
        let r = d.send(Command::NetIn {
            handle: "web".into(),
            host_port,
            container_port,
        });
        assert_eq!(d.reply(r).unwrap().unwrap_err().to_string(), message);
    }
    let r = d.send(Command::Create(Box::new(ContainerSpec {
        handle: "bad-port".into(),
        netin: vec![NetIn {
            host_port: 8080,
            container_port: 65536,
        }],
        ..Default::default()
    })));
    assert!(matches!(
        d.reply(r),
        Some(Err(Error::InvalidSpec { reason })) if reason == "port mapping 8080:65536 is out of range"
    ));
    assert!(d.core.view().ports_taken.is_empty());
    let r = d.send(Command::NetIn {
        handle: "web".into(),
        host_port: 65535,
        container_port: 0,
    });
    d.answer(|_| false);
    assert_eq!(
        d.reply(r),
        Some(Ok(Reply::NetIn(NetInResponse {
            host_port: 65535,
            container_port: 65535,
        })))
    );
}

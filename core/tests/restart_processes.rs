//! Processes outlive the server: after a restart the core takes their ids from what the host
//! found running, and forgets the ones that ended while it was down.

#[allow(dead_code)] // Not every test file uses every helper.
mod support;

use support::Driver;
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_core::effect::{
    EffectKind, EffectOutput, Observation, ObservedContainer, ObservedHost,
};
use trellis_core::record::ContainerRecord;
use trellis_core::{Command, Config, Core, Error, Input, Reply, SECOND};

fn spec(id: &str) -> Box<ProcessSpec> {
    Box::new(ProcessSpec {
        id: id.into(),
        path: "sh".into(),
        ..Default::default()
    })
}

/// Creates `handle` with `grace_time` (answering every effect) and returns its last record.
fn create(d: &mut Driver, handle: &str, grace_time: i64) -> ContainerRecord {
    let r = d.send(Command::Create(Box::new(ContainerSpec {
        handle: handle.into(),
        grace_time,
        ..Default::default()
    })));
    let mut record = None;
    while !d.effects.is_empty() {
        let e = d.effects.remove(0);
        let outcome = match &e.kind {
            EffectKind::PrepareRootfs { .. } => EffectOutput::Rootfs { image_env: vec![] },
            EffectKind::PersistRecord { record: r, .. } => {
                record = Some((**r).clone());
                EffectOutput::Done
            }
            _ => EffectOutput::Done,
        };
        let out = d.core.step(
            d.now,
            Input::Outcome {
                effect: e.id,
                outcome: Ok(outcome),
            },
        );
        d.absorb(out);
    }
    assert!(matches!(d.reply(r), Some(Ok(Reply::Created { .. }))));
    record.expect("a create stores its record")
}

fn run(d: &mut Driver, handle: &str, id: &str) -> Result<Reply, Error> {
    let r = d.send(Command::Run {
        handle: handle.into(),
        spec: spec(id),
    });
    d.answer(|_| false);
    d.reply(r).expect("a run is answered once its spawn is")
}

/// What the host has of a whole container running `processes`.
fn whole(record: &ContainerRecord, processes: &[&str]) -> ObservedContainer {
    ObservedContainer {
        rootfs: true,
        cgroup: true,
        network: Some(record.network),
        ports: vec![],
        init: true,
        processes: processes.iter().map(|p| p.to_string()).collect(),
    }
}

/// A crash and a restart from `records`, reconciled with `host`: a fresh core.
fn restart(d: &mut Driver, config: Config, records: Vec<ContainerRecord>, host: ObservedHost) {
    d.effects.clear();
    d.replies.clear();
    d.core = Core::restore(config, d.now, records);
    let out = d.core.step(d.now, Input::Reconcile(host));
    d.absorb(out);
}

fn processes(d: &Driver, handle: &str) -> Vec<String> {
    d.core
        .view()
        .containers
        .into_iter()
        .find(|c| c.handle == handle)
        .map(|c| c.processes)
        .unwrap_or_default()
}

#[test]
fn live_processes_keep_their_ids_and_ended_ones_free_theirs() {
    let mut d = Driver::new(Config::default());
    let record = create(&mut d, "web", 0);
    for id in ["a", "b", "c"] {
        assert!(matches!(
            run(&mut d, "web", id),
            Ok(Reply::ProcessStarted { .. })
        ));
    }
    // "c" ended while the server was down.
    let mut host = ObservedHost::default();
    host.containers
        .insert("web".into(), whole(&record, &["a", "b"]));
    restart(&mut d, Config::default(), vec![record], host);
    assert!(d.effects.is_empty(), "a whole container is left alone");
    assert_eq!(processes(&d, "web"), ["a", "b"]);

    assert_eq!(
        run(&mut d, "web", "a"),
        Err(Error::ProcessIdInUse {
            process_id: "a".into()
        }),
        "a process started before the restart still has its id"
    );
    assert!(
        matches!(run(&mut d, "web", "c"), Ok(Reply::ProcessStarted { .. })),
        "a process that ended while the server was down freed its id"
    );
    let r = d.send(Command::Info {
        handle: "web".into(),
    });
    match d.reply(r) {
        Some(Ok(Reply::Info(info))) => {
            assert_eq!(
                info.process_ids,
                Some(vec!["a".into(), "b".into(), "c".into()])
            )
        }
        other => panic!("info answered {other:?}"),
    }

    // An adopted process's exit frees its id, as any other's.
    let out = d.core.step(
        d.now,
        Input::Observed(Observation::ProcessExited {
            handle: "web".into(),
            process_id: "a".into(),
        }),
    );
    d.absorb(out);
    assert!(matches!(
        run(&mut d, "web", "a"),
        Ok(Reply::ProcessStarted { .. })
    ));
}

#[test]
fn nothing_holds_a_container_after_a_restart_and_its_countdown_starts_afresh() {
    let mut d = Driver::new(Config::default());
    let record = create(&mut d, "web", 10 * SECOND as i64);
    // A process connection (its lease) held the container when the server died.
    assert!(matches!(
        run(&mut d, "web", "a"),
        Ok(Reply::ProcessStarted { .. })
    ));
    assert_eq!(d.core.view().containers[0].pauses, 1);

    d.now = d.now.plus(60 * SECOND);
    let mut host = ObservedHost::default();
    host.containers.insert("web".into(), whole(&record, &["a"]));
    restart(&mut d, Config::default(), vec![record], host);
    let view = d.core.view();
    assert_eq!(view.leases, 0);
    assert_eq!(view.containers[0].pauses, 0);
    assert_eq!(view.containers[0].expires_at, Some(d.now.plus(10 * SECOND)));
    assert_eq!(view.containers[0].processes, ["a"]);

    // A running process does not hold the container: only connections and requests do.
    d.now = d.now.plus(10 * SECOND);
    let out = d.core.step(d.now, Input::Tick);
    d.absorb(out);
    assert_eq!(d.core.container_state("web"), Some("destroying"));
    assert!(matches!(
        d.effects.first().map(|e| &e.kind),
        Some(EffectKind::KillContainer { .. })
    ));
}

#[test]
fn a_container_torn_down_at_restart_lists_its_processes_until_their_exits() {
    let mut d = Driver::new(Config::default());
    let record = create(&mut d, "web", 0);
    assert!(matches!(
        run(&mut d, "web", "a"),
        Ok(Reply::ProcessStarted { .. })
    ));
    // Its network is gone: it cannot work and is torn down, processes first.
    let mut host = ObservedHost::default();
    host.containers.insert(
        "web".into(),
        ObservedContainer {
            network: None,
            ..whole(&record, &["a"])
        },
    );
    // And something no record explains still runs a process.
    host.containers.insert(
        "stray".into(),
        ObservedContainer {
            rootfs: true,
            cgroup: true,
            init: true,
            processes: vec!["s".into()],
            ..Default::default()
        },
    );
    restart(&mut d, Config::default(), vec![record], host);
    assert_eq!(d.core.container_state("web"), Some("destroying"));
    assert_eq!(processes(&d, "web"), ["a"]);
    assert_eq!(processes(&d, "stray"), ["s"]);
    for (handle, id) in [("web", "a"), ("stray", "s")] {
        let out = d.core.step(
            d.now,
            Input::Observed(Observation::ProcessExited {
                handle: handle.into(),
                process_id: id.into(),
            }),
        );
        d.absorb(out);
        assert!(processes(&d, handle).is_empty());
    }
    d.answer(|_| false);
    assert!(d.core.view().containers.is_empty());
}

#[test]
fn a_container_without_its_init_has_no_processes() {
    let mut d = Driver::new(Config::default());
    let record = create(&mut d, "web", 0);
    let mut host = ObservedHost::default();
    host.containers.insert(
        "web".into(),
        ObservedContainer {
            init: false,
            ..whole(&record, &["a"])
        },
    );
    restart(&mut d, Config::default(), vec![record], host);
    assert_eq!(d.core.container_state("web"), Some("destroying"));
    assert!(processes(&d, "web").is_empty());
}

#[test]
fn the_forget_processes_bug_forgets_them() {
    let config = Config {
        bugs: trellis_core::InjectedBugs {
            forget_processes: true,
            ..Default::default()
        },
        ..Config::default()
    };
    let mut d = Driver::new(config.clone());
    let record = create(&mut d, "web", 0);
    let mut host = ObservedHost::default();
    host.containers.insert("web".into(), whole(&record, &["a"]));
    restart(&mut d, config, vec![record], host);
    assert!(processes(&d, "web").is_empty());
}

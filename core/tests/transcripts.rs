//! Readable transcripts of the core's state transitions: each input, what the core answered
//! with, and the state at the end. Reviewed as insta snapshots.

use std::fmt::Write;
use trellis_core::api::ContainerSpec;
use trellis_core::effect::{
    EffectError, EffectErrorKind, EffectKind, EffectOutput, ObservedContainer, ObservedHost,
};
use trellis_core::network::NetworkAssignment;
use trellis_core::record::{ContainerRecord, RecordState};
use trellis_core::{Command, Config, Core, Effect, Input, Output, Reply, RequestId, Time, SECOND};

struct Script {
    core: Core,
    now: Time,
    next_request: u64,
    /// Effects answered in order unless a test answers them itself.
    effects: Vec<Effect>,
    log: String,
}

fn describe_effect(kind: &EffectKind) -> String {
    let handle = kind.handle().unwrap_or("-");
    match kind {
        EffectKind::SetupNetwork { config, .. } => format!(
            "{} {handle} ip={} gw={} ports={:?}",
            kind.name(),
            config.assignment.container_ip,
            config.assignment.gateway_ip(),
            config
                .port_mappings
                .iter()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>()
        ),
        EffectKind::TeardownNetwork { assignment, .. } => {
            format!(
                "{} {handle} ip={}",
                kind.name(),
                assignment
                    .map(|a| a.container_ip.to_string())
                    .unwrap_or("?".into())
            )
        }
        EffectKind::PersistRecord { record, .. } => {
            format!(
                "{} {handle} v{} {:?} props={:?}",
                kind.name(),
                record.version,
                record.state,
                record.properties
            )
        }
        EffectKind::StartInit { config, .. } => {
            format!("{} {handle} hostname={}", kind.name(), config.hostname)
        }
        _ => format!("{} {handle}", kind.name()),
    }
}

fn describe_reply(result: &Result<Reply, trellis_core::Error>) -> String {
    match result {
        Ok(Reply::Created { handle }) => format!("created {handle}"),
        Ok(Reply::Done) => "ok".into(),
        Ok(Reply::Handles(h)) => format!("handles {h:?}"),
        Ok(Reply::Info(info)) => format!(
            "info state={} ip={} host_ip={} props={:?}",
            info.state,
            info.container_ip,
            info.host_ip,
            info.properties.clone().unwrap_or_default()
        ),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error {:?}: {e}", e.kind()),
    }
}

impl Script {
    fn new(config: Config) -> Script {
        let now = Time(100 * SECOND);
        Script {
            core: Core::new(config, now),
            now,
            next_request: 1,
            effects: Vec::new(),
            log: String::new(),
        }
    }

    fn absorb(&mut self, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Effect(effect) => {
                    writeln!(
                        self.log,
                        "    -> effect {} {}",
                        effect.id,
                        describe_effect(&effect.kind)
                    )
                    .unwrap();
                    self.effects.push(effect);
                }
                Output::Reply { request, result } => {
                    writeln!(
                        self.log,
                        "    -> reply r{} {}",
                        request.0,
                        describe_reply(&result)
                    )
                    .unwrap();
                }
            }
        }
    }

    fn at(&mut self, seconds: u64) -> &mut Self {
        self.now = Time(100 * SECOND + seconds * SECOND);
        writeln!(self.log, "t+{seconds}s").unwrap();
        self
    }

    fn send(&mut self, command: Command) -> &mut Self {
        let request = RequestId(self.next_request);
        self.next_request += 1;
        let shown = match &command {
            Command::Create(spec) => format!(
                "Create handle={:?} network={:?} grace={}",
                spec.handle, spec.network, spec.grace_time
            ),
            other => format!("{other:?}"),
        };
        writeln!(self.log, "  r{} {shown}", request.0).unwrap();
        let outputs = self
            .core
            .step(self.now, Input::Command { request, command });
        self.absorb(outputs);
        self
    }

    fn tick(&mut self) -> &mut Self {
        writeln!(self.log, "  tick").unwrap();
        let outputs = self.core.step(self.now, Input::Tick);
        self.absorb(outputs);
        self
    }

    /// Answers every pending effect with success (or `fail` for the effect named so), in order,
    /// until none is left.
    fn complete(&mut self, fail: Option<&str>) -> &mut Self {
        while !self.effects.is_empty() {
            let effect = self.effects.remove(0);
            let outcome = if Some(effect.kind.name()) == fail {
                Err(EffectError::new(
                    EffectErrorKind::Host,
                    format!("{} broke", effect.kind.name()),
                ))
            } else {
                match effect.kind {
                    EffectKind::PrepareRootfs { .. } => Ok(EffectOutput::Rootfs {
                        image_env: vec!["PATH=/bin".into()],
                    }),
                    _ => Ok(EffectOutput::Done),
                }
            };
            writeln!(
                self.log,
                "  {} {}",
                effect.id,
                if outcome.is_ok() { "done" } else { "FAILED" }
            )
            .unwrap();
            let outputs = self.core.step(
                self.now,
                Input::Outcome {
                    effect: effect.id,
                    outcome,
                },
            );
            self.absorb(outputs);
        }
        self
    }

    fn state(&mut self) -> String {
        let view = self.core.view();
        let mut out = std::mem::take(&mut self.log);
        writeln!(out, "state:").unwrap();
        for c in &view.containers {
            writeln!(
                out,
                "  {} {}{} ip={} grace={}s pauses={} expires={:?}",
                c.handle,
                c.state,
                if c.stopped { " (stopped)" } else { "" },
                c.network
                    .map(|n| n.container_ip.to_string())
                    .unwrap_or("-".into()),
                c.grace_time / SECOND,
                c.pauses,
                c.expires_at
                    .map(|t| format!("t+{}s", (t.0 - 100 * SECOND) / SECOND))
            )
            .unwrap();
        }
        writeln!(
            out,
            "  allocations: {:?}",
            view.allocations
                .iter()
                .map(|a| a.container_ip.to_string())
                .collect::<Vec<_>>()
        )
        .unwrap();
        out
    }
}

fn spec(handle: &str, network: &str) -> Box<ContainerSpec> {
    Box::new(ContainerSpec {
        handle: handle.into(),
        network: network.into(),
        ..Default::default()
    })
}

#[test]
fn create_and_destroy() {
    let mut s = Script::new(Config::default());
    s.at(0)
        .send(Command::Create(spec("web", "")))
        .complete(None);
    s.send(Command::List {
        filter: Default::default(),
    });
    s.send(Command::Destroy {
        handle: "web".into(),
    })
    .complete(None);
    s.send(Command::List {
        filter: Default::default(),
    });
    insta::assert_snapshot!(s.state());
}

#[test]
fn failed_create_rolls_back_every_step_and_frees_the_address() {
    let mut s = Script::new(Config::default());
    s.at(0)
        .send(Command::Create(spec("web", "")))
        .complete(Some("start-init"));
    s.send(Command::Create(spec("web", ""))).complete(None);
    insta::assert_snapshot!(s.state());
}

#[test]
fn shared_subnet_and_explicit_ip() {
    let mut s = Script::new(Config::default());
    s.at(0);
    s.send(Command::Create(spec("a", "10.2.0.0/24")))
        .complete(None);
    s.send(Command::Create(spec("b", "10.2.0.0/24")))
        .complete(None);
    s.send(Command::Create(spec("c", "10.2.0.9/24")))
        .complete(None);
    s.send(Command::Create(spec("d", "10.2.0.9/24")));
    s.send(Command::Create(spec("e", "10.2.0.0/16")));
    s.send(Command::Create(spec("f", "10.254.0.0/24")));
    s.send(Command::Destroy { handle: "a".into() })
        .complete(None);
    insta::assert_snapshot!(s.state());
}

#[test]
fn grace_time_counts_from_the_last_request_and_holds_while_leased() {
    let mut s = Script::new(Config::default());
    let mut web = spec("web", "");
    web.grace_time = (5 * SECOND) as i64;
    s.at(0).send(Command::Create(web)).complete(None);
    s.at(3).send(Command::Info {
        handle: "web".into(),
    });
    s.at(7).tick();
    s.send(Command::Acquire {
        handle: "web".into(),
    });
    s.at(20).tick();
    s.send(Command::Release {
        lease: trellis_core::LeaseId(1),
    });
    s.at(24).tick();
    s.at(25).tick().complete(None);
    insta::assert_snapshot!(s.state());
}

#[test]
fn set_grace_time_zero_expires_at_once() {
    let mut s = Script::new(Config::default());
    s.at(0)
        .send(Command::Create(spec("web", "")))
        .complete(None);
    s.at(1)
        .send(Command::SetGraceTime {
            handle: "web".into(),
            grace_time: 0,
        })
        .complete(None);
    insta::assert_snapshot!(s.state());
}

#[test]
fn restore_keeps_whole_containers_and_tears_down_the_rest() {
    let record = |handle: &str, ip: &str| ContainerRecord {
        handle: handle.into(),
        spec: ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        },
        properties: [("owner".to_string(), handle.to_string())].into(),
        grace_time: 0,
        state: RecordState::Active,
        network: NetworkAssignment {
            subnet: format!("{ip}/30")
                .parse::<ipnetwork::Ipv4Network>()
                .map(|n| ipnetwork::Ipv4Network::new(n.network(), 30).unwrap())
                .unwrap(),
            container_ip: ip.parse().unwrap(),
        },
        mapped_ports: vec![],
        netout_rules: vec![],
        image_env: vec![],
        created_at: Time(0),
        events: vec![],
        version: 4,
    };
    let mut s = Script::new(Config::default());
    s.core = Core::restore(
        Config::default(),
        s.now,
        vec![
            record("whole", "10.254.0.1"),
            record("broken", "10.254.0.5"),
        ],
    );
    let complete = |net: &str| ObservedContainer {
        rootfs: true,
        cgroup: true,
        network: Some(NetworkAssignment {
            subnet: format!("{net}/30").parse().unwrap(),
            container_ip: net
                .parse::<std::net::Ipv4Addr>()
                .map(|a| std::net::Ipv4Addr::from(u32::from(a) + 1))
                .unwrap(),
        }),
        ports: vec![],
        init: true,
        processes: vec!["p1".into()],
    };
    let mut host = ObservedHost::default();
    host.containers
        .insert("whole".into(), complete("10.254.0.0"));
    host.containers.insert(
        "broken".into(),
        ObservedContainer {
            init: false,
            ..complete("10.254.0.4")
        },
    );
    host.containers.insert(
        "half-made".into(),
        ObservedContainer {
            rootfs: true,
            cgroup: true,
            ..Default::default()
        },
    );
    writeln!(
        s.log,
        "  reconcile: whole complete, broken without init, half-made has a rootfs and cgroup only"
    )
    .unwrap();
    let outputs = s.core.step(s.now, Input::Reconcile(host));
    s.absorb(outputs);
    s.complete(None);
    s.send(Command::Info {
        handle: "whole".into(),
    });
    insta::assert_snapshot!(s.state());
}

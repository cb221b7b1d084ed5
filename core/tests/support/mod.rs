//! A test driver for the core: sends commands, answers effects (all succeed unless told to
//! fail), and collects replies.

use trellis_core::api::ContainerSpec;
use trellis_core::effect::{EffectError, EffectErrorKind, EffectKind, EffectOutput};
use trellis_core::{
    Command, Config, Core, Effect, Error, Input, Output, Reply, RequestId, Time, SECOND,
};

pub struct Driver {
    pub core: Core,
    pub now: Time,
    next: u64,
    pub effects: Vec<Effect>,
    pub replies: Vec<(RequestId, Result<Reply, Error>)>,
    /// What `PrepareRootfs` answers as the image's env.
    pub image_env: Vec<String>,
    /// The encoded size of every record the core asked to store, in order.
    pub persisted_record_bytes: Vec<usize>,
}

impl Driver {
    pub fn new(config: Config) -> Driver {
        Driver {
            core: Core::new(config, Time(SECOND)),
            now: Time(SECOND),
            next: 1,
            effects: vec![],
            replies: vec![],
            image_env: vec![],
            persisted_record_bytes: vec![],
        }
    }

    pub fn absorb(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Effect(e) => self.effects.push(e),
                Output::Reply { request, result } => self.replies.push((request, result)),
            }
        }
    }

    pub fn send(&mut self, command: Command) -> RequestId {
        let request = RequestId(self.next);
        self.next += 1;
        let out = self
            .core
            .step(self.now, Input::Command { request, command });
        self.absorb(out);
        request
    }

    pub fn reply(&mut self, request: RequestId) -> Option<Result<Reply, Error>> {
        let at = self.replies.iter().position(|(r, _)| *r == request)?;
        Some(self.replies.remove(at).1)
    }

    pub fn answer(&mut self, fail: impl Fn(&EffectKind) -> bool) {
        while !self.effects.is_empty() {
            let e = self.effects.remove(0);
            if let EffectKind::PersistRecord { record, .. } = &e.kind {
                self.persisted_record_bytes
                    .push(trellis_core::record::encoded_len(record));
            }
            let outcome = if fail(&e.kind) {
                Err(EffectError::new(EffectErrorKind::Host, "broken"))
            } else if matches!(e.kind, EffectKind::PrepareRootfs { .. }) {
                Ok(EffectOutput::Rootfs {
                    image_env: self.image_env.clone(),
                })
            } else if matches!(
                e.kind,
                EffectKind::ReadMetrics { .. } | EffectKind::ReadPeaMetrics { .. }
            ) {
                Ok(EffectOutput::Metrics(Box::default()))
            } else {
                Ok(EffectOutput::Done)
            };
            let out = self.core.step(
                self.now,
                Input::Outcome {
                    effect: e.id,
                    outcome,
                },
            );
            self.absorb(out);
        }
    }

    pub fn create(&mut self, handle: &str) {
        let r = self.send(Command::Create(Box::new(ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        })));
        self.answer(|_| false);
        assert!(matches!(self.reply(r), Some(Ok(Reply::Created { .. }))));
    }
}

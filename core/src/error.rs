//! Errors the core answers requests with, and the class of Garden error each one is (the
//! wire names and HTTP statuses of those classes are `trellis_proto`'s).

use crate::effect::{EffectError, EffectErrorKind, EffectOutput};
use crate::handle::{self, InvalidName};
use crate::limits::LimitExceeded;
use crate::network::NetworkError;
use crate::ports::PortError;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    #[error("unknown handle: {handle}")]
    ContainerNotFound { handle: String },
    #[error("unknown process: {process_id}")]
    ProcessNotFound { process_id: String },
    #[error("Handle '{handle}' already in use")]
    HandleInUse { handle: String },
    #[error("invalid handle '{}': {reason}", handle::shown(handle))]
    InvalidHandle { handle: String, reason: InvalidName },
    #[error("max containers reached")]
    MaxContainersReached,
    /// gdn's words for a privileged create under `--disable-privileged-containers`.
    #[error("privileged container creation is disabled")]
    PrivilegedContainersDisabled,
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error("container already being destroyed")]
    AlreadyBeingDestroyed,
    #[error("container {handle} is still being created")]
    StillBeingCreated { handle: String },
    #[error("property does not exist: {key}")]
    PropertyNotFound { key: String },
    #[error("property {key} is managed by the server and cannot be changed")]
    ReservedProperty { key: String },
    #[error("process ID '{process_id}' already in use")]
    ProcessIdInUse { process_id: String },
    #[error("invalid process ID '{}': {reason}", handle::shown(process_id))]
    InvalidProcessId {
        process_id: String,
        reason: InvalidName,
    },
    #[error("limit exceeded: {0}")]
    LimitExceeded(#[from] LimitExceeded),
    #[error("invalid grace time {nanos}ns: must not be negative")]
    NegativeGraceTime { nanos: i64 },
    #[error("invalid container spec: {reason}")]
    InvalidSpec { reason: String },
    #[error("invalid process spec: {reason}")]
    InvalidProcessSpec { reason: String },
    // The reason alone, as gdn words it: clients match the whole message.
    #[error("{reason}")]
    InvalidNetOutRule { reason: String },
    #[error("{0}")]
    Host(#[from] EffectError),
    #[error("the change was applied but could not be stored durably: {0}")]
    NotDurable(EffectError),
}

/// The Garden error types the Go client distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ContainerNotFound,
    ProcessNotFound,
    ExecutableNotFound,
    ServiceUnavailable,
    Unrecoverable,
    Generic,
}

impl Error {
    /// The host answered an effect with an output of another effect's kind.
    pub(crate) fn unexpected_output(effect: &str, output: EffectOutput) -> Error {
        Error::Host(EffectError::new(
            EffectErrorKind::Host,
            format!("host answered {effect} with {output:?}"),
        ))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ContainerNotFound { .. } => ErrorKind::ContainerNotFound,
            Error::ProcessNotFound { .. } => ErrorKind::ProcessNotFound,
            Error::Host(EffectError {
                kind: EffectErrorKind::ExecutableNotFound,
                ..
            }) => ErrorKind::ExecutableNotFound,
            _ => ErrorKind::Generic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_kinds_are_the_ones_gdn_sends() {
        assert_eq!(
            Error::HandleInUse { handle: "h".into() }.to_string(),
            "Handle 'h' already in use"
        );
        let exe = Error::Host(EffectError::new(
            EffectErrorKind::ExecutableNotFound,
            "exec: \"nope\": executable file not found in $PATH",
        ));
        assert_eq!(exe.kind(), ErrorKind::ExecutableNotFound);
        let missing = Error::ProcessNotFound {
            process_id: "p".into(),
        };
        assert_eq!(missing.kind(), ErrorKind::ProcessNotFound);
    }
}

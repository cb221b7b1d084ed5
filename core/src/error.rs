//! Errors the core answers requests with, and the Garden error type each one travels as.

use crate::api::ErrorBody;
use crate::effect::{EffectError, EffectErrorKind};
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

impl ErrorKind {
    /// The `Type` string on the wire.
    pub fn wire_name(self) -> &'static str {
        match self {
            ErrorKind::ContainerNotFound => "ContainerNotFoundError",
            ErrorKind::ProcessNotFound => "ProcessNotFoundError",
            ErrorKind::ExecutableNotFound => "ExecutableNotFoundError",
            ErrorKind::ServiceUnavailable => "ServiceUnavailableError",
            ErrorKind::Unrecoverable => "UnrecoverableError",
            ErrorKind::Generic => "",
        }
    }

    /// 404 for the two not-found types, 500 for everything else (as the reference server does).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::ContainerNotFound | ErrorKind::ProcessNotFound => 404,
            _ => 500,
        }
    }

    pub fn from_wire_name(name: &str) -> ErrorKind {
        match name {
            "ContainerNotFoundError" => ErrorKind::ContainerNotFound,
            "ProcessNotFoundError" => ErrorKind::ProcessNotFound,
            "ExecutableNotFoundError" => ErrorKind::ExecutableNotFound,
            "ServiceUnavailableError" => ErrorKind::ServiceUnavailable,
            "UnrecoverableError" => ErrorKind::Unrecoverable,
            _ => ErrorKind::Generic,
        }
    }
}

impl Error {
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

    /// The five-key error object the Go client decodes.
    pub fn to_body(&self) -> ErrorBody {
        let mut body = ErrorBody {
            kind: self.kind().wire_name().to_string(),
            message: self.to_string(),
            ..Default::default()
        };
        match self {
            Error::ContainerNotFound { handle } => body.handle = handle.clone(),
            Error::ProcessNotFound { process_id } => body.process_id = process_id.clone(),
            _ => {}
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bodies_match_the_reference_server() {
        let body = Error::ContainerNotFound {
            handle: "missing".into(),
        }
        .to_body();
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: missing","Handle":"missing","ProcessID":"","Binary":""}"#
        );
        let body = Error::ProcessNotFound {
            process_id: "p-404".into(),
        }
        .to_body();
        assert_eq!(body.kind, "ProcessNotFoundError");
        assert_eq!(body.process_id, "p-404");
        assert_eq!(
            Error::HandleInUse { handle: "h".into() }.to_string(),
            "Handle 'h' already in use"
        );
        let exe = Error::Host(EffectError::new(
            EffectErrorKind::ExecutableNotFound,
            "exec: \"nope\": executable file not found in $PATH",
        ));
        assert_eq!(exe.kind().wire_name(), "ExecutableNotFoundError");
        assert_eq!(exe.kind().http_status(), 500);
        assert_eq!(ErrorKind::ContainerNotFound.http_status(), 404);
    }
}

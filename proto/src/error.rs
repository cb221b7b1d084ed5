//! Garden errors on the wire: the `Type` name and HTTP status of each class of error, and the
//! five-key error object built from a core error.

use crate::messages::ErrorBody;
use trellis_core::{Error, ErrorKind};

/// The `Type` string the Go client switches on.
pub fn wire_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ContainerNotFound => "ContainerNotFoundError",
        ErrorKind::ProcessNotFound => "ProcessNotFoundError",
        ErrorKind::ExecutableNotFound => "ExecutableNotFoundError",
        ErrorKind::ServiceUnavailable => "ServiceUnavailableError",
        ErrorKind::Unrecoverable => "UnrecoverableError",
        ErrorKind::Generic => "",
    }
}

/// The class a `Type` string names; unknown names are plain errors, as in the Go client.
pub fn kind_of(wire_name: &str) -> ErrorKind {
    match wire_name {
        "ContainerNotFoundError" => ErrorKind::ContainerNotFound,
        "ProcessNotFoundError" => ErrorKind::ProcessNotFound,
        "ExecutableNotFoundError" => ErrorKind::ExecutableNotFound,
        "ServiceUnavailableError" => ErrorKind::ServiceUnavailable,
        "UnrecoverableError" => ErrorKind::Unrecoverable,
        _ => ErrorKind::Generic,
    }
}

/// 404 for the two not-found types, 500 for everything else (as the reference server does).
pub fn http_status(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::ContainerNotFound | ErrorKind::ProcessNotFound => 404,
        _ => 500,
    }
}

/// The five-key error object the Go client decodes.
pub fn error_body(error: &Error) -> ErrorBody {
    let mut body = ErrorBody {
        kind: wire_name(error.kind()).to_string(),
        message: error.to_string(),
        ..Default::default()
    };
    match error {
        Error::ContainerNotFound { handle } => body.handle = handle.clone(),
        Error::ProcessNotFound { process_id } => body.process_id = process_id.clone(),
        _ => {}
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::effect::{EffectError, EffectErrorKind};

    #[test]
    fn wire_bodies_match_the_reference_server() {
        let body = error_body(&Error::ContainerNotFound {
            handle: "missing".into(),
        });
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: missing","Handle":"missing","ProcessID":"","Binary":""}"#
        );
        let body = error_body(&Error::ProcessNotFound {
            process_id: "p-404".into(),
        });
        assert_eq!(body.kind, "ProcessNotFoundError");
        assert_eq!(body.process_id, "p-404");
        let exe = Error::Host(EffectError::new(
            EffectErrorKind::ExecutableNotFound,
            "exec: \"nope\": executable file not found in $PATH",
        ));
        assert_eq!(error_body(&exe).kind, "ExecutableNotFoundError");
        assert_eq!(http_status(exe.kind()), 500);
        assert_eq!(http_status(ErrorKind::ContainerNotFound), 404);
    }

    #[test]
    fn every_kind_survives_the_wire() {
        for kind in [
            ErrorKind::ContainerNotFound,
            ErrorKind::ProcessNotFound,
            ErrorKind::ExecutableNotFound,
            ErrorKind::ServiceUnavailable,
            ErrorKind::Unrecoverable,
            ErrorKind::Generic,
        ] {
            assert_eq!(kind_of(wire_name(kind)), kind);
        }
        assert_eq!(kind_of("SomethingNew"), ErrorKind::Generic);
    }
}

//! The errors a Garden client sees, typed as garden's Go client types them.

use trellis_core::ErrorKind;
use trellis_proto::error::kind_of;
use trellis_proto::messages::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown handle: {handle}")]
    ContainerNotFound { handle: String },
    #[error("unknown process: {process_id}")]
    ProcessNotFound { process_id: String },
    #[error("{message}")]
    ExecutableNotFound { message: String },
    #[error("{message}")]
    ServiceUnavailable { message: String },
    #[error("{message}")]
    Unrecoverable { message: String },
    /// Any other error the server reported (`Type` empty or unknown).
    #[error("{message}")]
    Server { status: u16, message: String },
    /// The server answered something that is not a Garden response.
    #[error("bad response (status {status}): {detail}")]
    BadResponse { status: u16, detail: String },
    #[error("connection: {0}")]
    Connection(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(String),
    /// The process connection ended without an exit status, or reported an error.
    #[error("process: {0}")]
    Process(String),
    #[error("invalid target {0:?}: expected host:port or a unix socket path")]
    InvalidTarget(String),
}

impl Error {
    /// Rebuilds the typed error from the server's five-key error object, as the Go client does.
    pub fn from_body(status: u16, body: ErrorBody) -> Error {
        match kind_of(&body.kind) {
            ErrorKind::ContainerNotFound => Error::ContainerNotFound {
                handle: body.handle,
            },
            ErrorKind::ProcessNotFound => Error::ProcessNotFound {
                process_id: body.process_id,
            },
            ErrorKind::ExecutableNotFound => Error::ExecutableNotFound {
                message: body.message,
            },
            ErrorKind::ServiceUnavailable => Error::ServiceUnavailable {
                message: body.message,
            },
            ErrorKind::Unrecoverable => Error::Unrecoverable {
                message: body.message,
            },
            ErrorKind::Generic => Error::Server {
                status,
                message: body.message,
            },
        }
    }

    /// The HTTP status of a server-reported error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::ContainerNotFound { .. } | Error::ProcessNotFound { .. } => Some(404),
            Error::Server { status, .. } | Error::BadResponse { status, .. } => Some(*status),
            Error::ExecutableNotFound { .. }
            | Error::ServiceUnavailable { .. }
            | Error::Unrecoverable { .. } => Some(500),
            _ => None,
        }
    }
}

impl From<hyper::Error> for Error {
    fn from(e: hyper::Error) -> Error {
        Error::Http(e.to_string())
    }
}

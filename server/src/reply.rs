//! What the server answers: Garden error bodies for every kind of failure, JSON responses for
//! the plain routes, and the exact response heads of the hijacked routes.

use crate::head::{BodyError, HeadError};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::{header, Response, StatusCode};
use serde::Serialize;
use trellis_core::{Error, ErrorKind};
use trellis_proto::body::BadRequest;
use trellis_proto::error::{error_body, http_status, wire_name};
use trellis_proto::messages::ErrorBody;
use trellis_proto::RouteError;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Every way a request can fail, with the Garden error it travels as.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Core(#[from] Error),
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Head(#[from] HeadError),
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("timed out waiting for the request")]
    Timeout,
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Core(e) => http_status(e.kind()),
            ApiError::BadRequest(e) => e.http_status(),
            ApiError::Route(e) => e.http_status(),
            ApiError::Head(HeadError::TooLarge) => 431,
            ApiError::Head(_) => 400,
            // Over a bound: a plain Garden error, like every other request over a bound.
            ApiError::Body(BodyError::TooLarge { .. }) => 500,
            ApiError::Body(_) => 400,
            ApiError::Timeout => 408,
            ApiError::ServiceUnavailable(_) | ApiError::Internal(_) => 500,
        }
    }

    pub fn body(&self) -> ErrorBody {
        match self {
            ApiError::Core(e) => error_body(e),
            ApiError::ServiceUnavailable(message) => ErrorBody {
                kind: wire_name(ErrorKind::ServiceUnavailable).into(),
                message: message.clone(),
                ..Default::default()
            },
            other => ErrorBody {
                message: other.to_string(),
                ..Default::default()
            },
        }
    }

    /// The Garden `Type` of this error, for logs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ApiError::Core(e) => wire_name(e.kind()),
            ApiError::ServiceUnavailable(_) => wire_name(ErrorKind::ServiceUnavailable),
            _ => "",
        }
    }
}

/// Compact JSON plus the newline Go's encoder writes.
pub fn json_bytes<T: Serialize>(value: &T) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        // Serializing our own response types cannot fail; answer something decodable anyway.
        format!("{{\"Type\":\"\",\"Message\":\"encoding response: {e}\",\"Handle\":\"\",\"ProcessID\":\"\",\"Binary\":\"\"}}")
            .into_bytes()
    });
    bytes.push(b'\n');
    Bytes::from(bytes)
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn json_response<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    let mut response = Response::new(full(json_bytes(value)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

pub fn ok<T: Serialize>(value: &T) -> Response<Body> {
    json_response(200, value)
}

/// `{}`: success with nothing to say (an empty body would break the Go client).
pub fn empty_ok() -> Response<Body> {
    ok(&serde_json::Map::new())
}

pub fn error_response(error: &ApiError) -> Response<Body> {
    json_response(error.status(), &error.body())
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

fn http_date() -> String {
    httpdate(std::time::SystemTime::now())
}

/// An RFC 7231 date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let days = secs / 86_400;
    let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        months[(month - 1) as usize]
    )
}

/// The head of a hijacked response: HTTP/1.1, a nominal `Transfer-Encoding: chunked` and no
/// `Connection: close`, which is what makes the Go client keep the socket; raw bytes follow.
pub fn hijack_head(status: u16, json: bool) -> Vec<u8> {
    let content_type = if json {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} {}\r\n{content_type}Date: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        reason(status),
        http_date()
    )
    .into_bytes()
}

/// An error answer on a hijack route: Content-Length framing and no `Connection: close`, or the
/// Go client drops the typed error.
pub fn hijack_error(error: &ApiError) -> Vec<u8> {
    let body = json_bytes(&error.body());
    let status = error.status();
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nDate: {}\r\nContent-Length: {}\r\n\r\n",
        reason(status),
        http_date(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// A complete response on a connection the server closes next (used before hyper is involved,
/// for requests whose head could not be read).
pub fn closing_error(error: &ApiError) -> Vec<u8> {
    let body = json_bytes(&error.body());
    let status = error.status();
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nDate: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        http_date(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates() {
        assert_eq!(httpdate(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            httpdate(UNIX_EPOCH + Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            httpdate(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "Thu, 29 Feb 2024 12:34:56 GMT"
        );
    }

    #[test]
    fn hijack_heads_keep_the_connection() {
        let head = String::from_utf8(hijack_head(201, true)).unwrap();
        assert!(head.starts_with("HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"));
        assert!(!head.to_ascii_lowercase().contains("connection"));
        let err = String::from_utf8(hijack_error(&ApiError::Core(Error::ProcessNotFound {
            process_id: "p".into(),
        })))
        .unwrap();
        assert!(err.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(err.contains("Content-Length: "));
        assert!(!err.to_ascii_lowercase().contains("connection"));
        assert!(err.ends_with("\"ProcessID\":\"p\",\"Binary\":\"\"}\n"));
    }
}

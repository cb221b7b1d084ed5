//! Decoding the JSON request bodies clients send (bounded, with Go's decoding rules). The fuzz
//! targets call these same functions.

use crate::messages::{NetInRequest, PropertyValue, StopRequest};
use serde::de::DeserializeOwned;
use thiserror::Error;
use trellis_core::api::{ContainerSpec, NetOutRule, ProcessSpec};

/// The largest JSON request body accepted: a guard on what one request may make the server
/// buffer, not a bound clients should meet. The core's bounds (`trellis_core::limits`) are
/// what a request meets, with an error naming the bound: any request within them fits here,
/// as its JSON is at most six times what the stored record holds (Go's encoder writes `<`, `>`
/// and `&` as `\u003c`, six bytes for one) and the record is at most 1 MiB.
pub const MAX_JSON_BODY: usize = 8 * trellis_core::limits::MAX_RECORD_BYTES;

/// A request the server cannot make sense of. Travels as a Garden error with an empty `Type`
/// and status 500, as gdn answers a body it cannot decode.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadRequest {
    #[error("invalid {what} in request body: {reason}")]
    Json { what: &'static str, reason: String },
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Other(String),
}

impl BadRequest {
    /// 500, as for every Garden error but the two not-found ones: gdn decodes a body before
    /// anything else and answers a failure as a plain error.
    pub fn http_status(&self) -> u16 {
        500
    }
}

fn decode<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, BadRequest> {
    if body.len() > MAX_JSON_BODY {
        return Err(BadRequest::TooLarge {
            limit: MAX_JSON_BODY,
        });
    }
    serde_json::from_slice(body).map_err(|e| BadRequest::Json {
        what,
        reason: e.to_string(),
    })
}

/// A body that must be a JSON object. serde would also take an array for a struct (its fields
/// in order); Go's decoder refuses that, and so do we. `null` is the zero value, as in Go.
fn decode_object<T: DeserializeOwned + Default>(
    what: &'static str,
    body: &[u8],
) -> Result<T, BadRequest> {
    if body.len() > MAX_JSON_BODY {
        return Err(BadRequest::TooLarge {
            limit: MAX_JSON_BODY,
        });
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace());
    match start.map(|i| body[i]) {
        Some(b'{') => decode(what, body),
        Some(b'n') => decode::<Option<T>>(what, body).map(Option::unwrap_or_default),
        Some(_) => Err(BadRequest::Json {
            what,
            reason: "expected a JSON object".into(),
        }),
        None => Err(BadRequest::Json {
            what,
            reason: "the body is empty".into(),
        }),
    }
}

pub fn container_spec(body: &[u8]) -> Result<ContainerSpec, BadRequest> {
    decode_object("container spec", body)
}

pub fn process_spec(body: &[u8]) -> Result<ProcessSpec, BadRequest> {
    decode_object("process spec", body)
}

pub fn net_out_rule(body: &[u8]) -> Result<NetOutRule, BadRequest> {
    decode_object("net-out rule", body)
}

/// BulkNetOut's body: an array of rules; `null` (a nil Go slice) is an empty list.
pub fn net_out_rules(body: &[u8]) -> Result<Vec<NetOutRule>, BadRequest> {
    Ok(decode::<Option<Vec<NetOutRule>>>("net-out rules", body)?.unwrap_or_default())
}

pub fn net_in(body: &[u8]) -> Result<NetInRequest, BadRequest> {
    decode_object("net-in request", body)
}

pub fn property_value(body: &[u8]) -> Result<PropertyValue, BadRequest> {
    decode_object("property value", body)
}

pub fn stop_request(body: &[u8]) -> Result<StopRequest, BadRequest> {
    decode_object("stop request", body)
}

/// SetGraceTime's body: a bare integer of nanoseconds.
pub fn grace_time(body: &[u8]) -> Result<i64, BadRequest> {
    decode("grace time (nanoseconds)", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        assert_eq!(net_out_rules(b"null\n").unwrap(), vec![]);
        assert_eq!(
            net_out_rules(b"[{},{\"protocol\":4,\"icmps\":{}}]")
                .unwrap()
                .len(),
            2
        );
        assert_eq!(grace_time(b"90000000000\n").unwrap(), 90_000_000_000);
        assert!(grace_time(b"\"1s\"").is_err());
        assert!(container_spec(b"{\"handle\":3}").is_err());
        assert!(container_spec(b"").is_err());
        assert!(property_value(b"[\"v\"]").is_err());
        assert_eq!(property_value(b" null").unwrap(), PropertyValue::default());
        assert!(stop_request(b"{\"kill\":true}").unwrap().kill);
        let big = vec![b' '; MAX_JSON_BODY + 1];
        assert_eq!(
            container_spec(&big),
            Err(BadRequest::TooLarge {
                limit: MAX_JSON_BODY
            })
        );
    }
}

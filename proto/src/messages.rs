//! The bodies that exist only on the wire: envelopes around domain values (`{"Handle":..}`,
//! bulk entries), the error object, and the messages of a hijacked process connection. The
//! domain types they carry (ContainerSpec, Info, Metrics, ...) live in `trellis_core::api`.

use serde::{Deserialize, Serialize};
use trellis_core::api::go::{is_zero, nullable};
use trellis_core::api::{ContainerInfo, Metrics, TtySpec};

/// The error object of every failed request and of failed bulk entries: all five keys, always.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ErrorBody {
    #[serde(rename = "Type", deserialize_with = "nullable")]
    pub kind: String,
    #[serde(rename = "Message", deserialize_with = "nullable")]
    pub message: String,
    #[serde(rename = "Handle", deserialize_with = "nullable")]
    pub handle: String,
    #[serde(rename = "ProcessID", deserialize_with = "nullable")]
    pub process_id: String,
    #[serde(rename = "Binary", deserialize_with = "nullable")]
    pub binary: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerInfoEntry {
    #[serde(rename = "Info", deserialize_with = "nullable")]
    pub info: ContainerInfo,
    #[serde(rename = "Err")]
    pub err: Option<ErrorBody>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerMetricsEntry {
    #[serde(rename = "Metrics", deserialize_with = "nullable")]
    pub metrics: Metrics,
    #[serde(rename = "Err")]
    pub err: Option<ErrorBody>,
}

/// `{"Handles":[...]}` (List).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct HandlesBody {
    #[serde(rename = "Handles", deserialize_with = "nullable")]
    pub handles: Vec<String>,
}

/// `{"Handle":"..."}` (Create).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct HandleBody {
    #[serde(rename = "Handle", deserialize_with = "nullable")]
    pub handle: String,
}

/// `{"value":"..."}` (Property, SetProperty).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PropertyValue {
    #[serde(deserialize_with = "nullable")]
    pub value: String,
}

/// `{"kill":bool}` (Stop).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct StopRequest {
    #[serde(deserialize_with = "nullable")]
    pub kill: bool,
}

/// Body of `POST /containers/:handle/net/in`. The handle in the body is ignored (the path wins).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NetInRequest {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub handle: String,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub host_port: u32,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub container_port: u32,
}

/// The one message type exchanged on a Run/Attach connection, in both directions.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ProcessPayload {
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub process_id: String,
    #[serde(
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub stream_id: String,
    /// 0 stdin, 1 stdout, 2 stderr; only stdin travels client to server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u8>,
}

#[cfg(test)]
mod tests {
    //! Bodies captured from the unmodified Go client and server: read and written back byte
    //! for byte.
    use super::*;

    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(captured: &str) {
        let value: T = serde_json::from_str(captured).expect("captured body parses");
        assert_eq!(serde_json::to_string(&value).unwrap(), captured);
    }

    #[test]
    fn envelopes_match_the_reference_server() {
        round_trip::<ErrorBody>(
            r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: missing","Handle":"missing","ProcessID":"","Binary":""}"#,
        );
        round_trip::<NetInRequest>(r#"{"handle":"my-handle","container_port":8080}"#);
        round_trip::<HandlesBody>(r#"{"Handles":["h1","h2"]}"#);
        round_trip::<HandleBody>(r#"{"Handle":"h1"}"#);
        round_trip::<PropertyValue>(r#"{"value":"v"}"#);
    }

    #[test]
    fn process_payloads_round_trip() {
        round_trip::<ProcessPayload>(r#"{"process_id":"4a7b1c2e-proc","stream_id":"1"}"#);
        round_trip::<ProcessPayload>(r#"{"process_id":"p","source":0,"data":"hello\n"}"#);
        round_trip::<ProcessPayload>(r#"{"process_id":"p","source":0}"#);
        round_trip::<ProcessPayload>(
            r#"{"process_id":"p","tty":{"window_size":{"columns":100,"rows":40}}}"#,
        );
        round_trip::<ProcessPayload>(r#"{"process_id":"p","signal":0}"#);
        round_trip::<ProcessPayload>(r#"{"process_id":"p","exit_status":3}"#);
        round_trip::<ProcessPayload>(r#"{"process_id":"p","error":"container destroyed"}"#);
        round_trip::<ProcessPayload>(r#"{"process_id":"p","tty":{}}"#);
    }
}

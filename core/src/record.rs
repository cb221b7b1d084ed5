//! The durable form of a container: one record per container, written atomically by the host
//! (`PersistRecord`) before the core acknowledges a change that must survive a restart.

use crate::api::{ContainerSpec, NetOutRule, PortMapping};
use crate::network::NetworkAssignment;
use crate::properties::Properties;
use crate::Time;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordState {
    Active,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub handle: String,
    /// The create request, without secrets.
    pub spec: ContainerSpec,
    /// User properties only; `garden.*` keys are derived.
    pub properties: Properties,
    /// Nanoseconds; 0 = never expires.
    pub grace_time: u64,
    pub state: RecordState,
    pub network: NetworkAssignment,
    pub mapped_ports: Vec<PortMapping>,
    /// Every egress rule in force, from the spec and from later NetOut calls.
    pub netout_rules: Vec<NetOutRule>,
    pub image_env: Vec<String>,
    pub created_at: Time,
    pub events: Vec<String>,
    /// Increases with every change; a host may ignore a write older than what it has.
    pub version: u64,
}

/// How a record is stored: JSON. The host writes exactly these bytes, and the core bounds their
/// length ([`crate::limits::MAX_RECORD_BYTES`]), so the bound is on what is really written.
pub fn encode(record: &ContainerRecord) -> Vec<u8> {
    serde_json::to_vec(record).expect("a record always encodes: its maps have string keys")
}

/// Reads a stored record back.
pub fn decode(bytes: &[u8]) -> Result<ContainerRecord, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The length of [`encode`]'s output, counted without building it.
pub fn encoded_len(record: &ContainerRecord) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, record)
        .expect("a record always encodes: its maps have string keys");
    counter.0
}

// How the host names record files, fixed here beside the handle rule that depends on them:
// `<handle>.json`, written first as `.<handle>.json.tmp` and renamed into place.
const FILE_SUFFIX: &str = ".json";
const TEMP_PREFIX: &str = ".";
const TEMP_SUFFIX: &str = ".tmp";

/// What the record's temporary file name adds to the handle.
pub const TEMP_FILE_AFFIX_BYTES: usize = TEMP_PREFIX.len() + FILE_SUFFIX.len() + TEMP_SUFFIX.len();

/// `<handle>.json`.
pub fn file_name(handle: &str) -> String {
    format!("{handle}{FILE_SUFFIX}")
}

/// `.<handle>.json.tmp`: hidden, so never taken for a record.
pub fn temp_file_name(handle: &str) -> String {
    format!("{TEMP_PREFIX}{handle}{FILE_SUFFIX}{TEMP_SUFFIX}")
}

/// Whether a file in the records directory is a temporary file a write left behind.
pub fn is_temp_file_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(&format!("{FILE_SUFFIX}{TEMP_SUFFIX}"))
}

/// Whether a file in the records directory holds a record: not a temporary file (whose prefix
/// no handle may start with, see `handle::validate`), and named like a record.
pub fn is_record_file_name(name: &str) -> bool {
    !name.starts_with(TEMP_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// The event text gdn reports after an OOM kill.
pub(crate) const OUT_OF_MEMORY_EVENT: &str = "Out of memory";

impl ContainerRecord {
    /// The record with room for what the host may add to it unasked: the OOM event (recorded
    /// once). Bounds are checked on this, so that no record outgrows them later.
    pub(crate) fn with_room_for_events(mut self) -> ContainerRecord {
        if !self.events.iter().any(|e| e == OUT_OF_MEMORY_EVENT) {
            self.events.push(OUT_OF_MEMORY_EVENT.to_string());
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ContainerRecord {
        ContainerRecord {
            handle: "h\"<\u{1}é".into(),
            spec: Default::default(),
            properties: [("k".to_string(), "v\n\"x\"".to_string())].into(),
            grace_time: 5,
            state: RecordState::Active,
            network: NetworkAssignment {
                subnet: "10.254.0.0/30".parse().unwrap(),
                container_ip: "10.254.0.1".parse().unwrap(),
            },
            mapped_ports: vec![],
            netout_rules: vec![NetOutRule::default()],
            image_env: vec!["A=1".into()],
            created_at: Time(7),
            events: vec![],
            version: 3,
        }
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        let record = record();
        assert_eq!(encoded_len(&record), encode(&record).len());
        assert_eq!(decode(&encode(&record)).unwrap(), record);
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("web"), "web.json");
        assert_eq!(temp_file_name("web"), ".web.json.tmp");
        assert_eq!(
            temp_file_name("web").len(),
            "web".len() + TEMP_FILE_AFFIX_BYTES
        );
        assert!(is_temp_file_name(".web.json.tmp"));
        assert!(!is_temp_file_name("web.json"));
        assert!(!is_temp_file_name(".web.json"));
        assert!(is_record_file_name("web.json"));
        assert!(is_record_file_name("x.json.json"));
        assert!(!is_record_file_name(".web.json.tmp"));
        assert!(!is_record_file_name("web.json.tmp"));
    }
}

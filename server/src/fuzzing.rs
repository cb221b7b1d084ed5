//! Entry points for the fuzz targets in `fuzz/` and for the seed replay test: each takes
//! arbitrary bytes through the same parsing code the server runs on client input, and checks
//! what must always hold (no panic; decoded bodies re-encode to the same value).

use crate::head::{decode_chunked, parse_head};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use trellis_proto::body::{self as wire, MAX_JSON_BODY};
use trellis_proto::route::parse_query;
use trellis_proto::stream::PayloadDecoder;
use trellis_proto::Route;

/// A decoded body, encoded again the way the server or client would, must decode to the same
/// value (the Go-compatible omitempty/default rules must agree with each other).
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let encoded = serde_json::to_vec(value).expect("our own types always encode");
    let again: T = serde_json::from_slice(&encoded).unwrap_or_else(|e| {
        panic!(
            "re-decoding {} failed: {e}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(&again, value, "round trip changed the value");
}

/// The first request head on a connection, its route, and a chunked body after it.
pub fn request_head(data: &[u8]) {
    if let Ok(Some((head, len))) = parse_head(data) {
        assert!(len <= data.len());
        if let Ok(r) = Route::parse(&head.method, &head.target) {
            let _ = r.is_hijack();
            let _ = r.handle();
        }
        let _ = decode_chunked(&data[len..], MAX_JSON_BODY);
    }
}

pub fn container_spec(data: &[u8]) {
    if let Ok(spec) = wire::container_spec(data) {
        round_trips(&spec);
        if let Ok(request) = trellis_core::network::parse(&spec.network) {
            let _ = request;
        }
        for rule in &spec.netout_rules {
            let _ = rule.validate();
        }
    }
}

pub fn process_spec(data: &[u8]) {
    if let Ok(spec) = wire::process_spec(data) {
        round_trips(&spec);
    }
}

pub fn net_out_rule(data: &[u8]) {
    if let Ok(rule) = wire::net_out_rule(data) {
        round_trips(&rule);
        let _ = rule.validate();
    }
    if let Ok(rules) = wire::net_out_rules(data) {
        round_trips(&rules);
        for rule in &rules {
            let _ = rule.validate();
        }
    }
}

pub fn net_in(data: &[u8]) {
    if let Ok(request) = wire::net_in(data) {
        round_trips(&request);
    }
    if let Ok(spec_entries) = serde_json::from_slice::<Vec<trellis_core::api::NetIn>>(data) {
        round_trips(&spec_entries);
    }
}

/// Property bodies, the properties map, the List filter query and SetGraceTime's integer.
pub fn properties(data: &[u8]) {
    if let Ok(value) = wire::property_value(data) {
        round_trips(&value);
    }
    if let Ok(map) = serde_json::from_slice::<std::collections::BTreeMap<String, String>>(data) {
        round_trips(&map);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let filter = parse_query(text);
        for key in filter.keys() {
            let _ = trellis_core::properties::is_reserved(key);
        }
    }
    let _ = wire::grace_time(data);
    let _ = wire::stop_request(data);
}

/// The message stream of a process connection, fed in pieces: the first byte of the input
/// picks where it is cut.
pub fn payload_stream(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut).max(1);
    let mut decoder = PayloadDecoder::new();
    for piece in rest.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => round_trips(&message),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

/// The network spec of a ContainerSpec (`""`, `a.b.c.d/n`, `a.b.c.d`).
pub fn network_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(request) = trellis_core::network::parse(&text) {
        let _ = format!("{request:?}");
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/seeds/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("container_spec", container_spec),
    ("process_spec", process_spec),
    ("net_out_rule", net_out_rule),
    ("net_in", net_in),
    ("properties", properties),
    ("payload_stream", payload_stream),
    ("network_spec", network_spec),
];

/// Replays the committed fuzz seed corpus (`fuzz/seeds/<target>/`) through the same entry
/// points the fuzz targets use, so CI catches a regression without running the fuzzer.
#[cfg(test)]
mod seed_replay {
    use super::TARGETS;
    use std::path::Path;

    #[test]
    fn every_seed_passes_its_target() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = seeds.join(name);
            let entries = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("seed directory {} is missing: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                let data = std::fs::read(&path).expect("a readable seed");
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: seed {} panics", path.display());
                count += 1;
            }
            assert!(count > 0, "{name} has no seeds");
            replayed += count;
        }
        assert!(replayed >= TARGETS.len());
    }
}

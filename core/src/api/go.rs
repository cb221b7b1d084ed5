//! Serde helpers that reproduce the JSON rules of Go's `encoding/json`, which the Garden client
//! and reference server use: `null` decodes to the zero value, `omitempty` drops zero scalars,
//! and `net.IP` travels as a (possibly empty) string.

use serde::{Deserialize, Deserializer, Serializer};
use std::net::IpAddr;

/// Go leaves the zero value in place when a field is `null`; serde would reject it.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

pub fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A Go `net.IP`: the empty string (or `null`) is "no address".
pub mod opt_ip {
    use super::*;

    pub fn serialize<S: Serializer>(ip: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match ip {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

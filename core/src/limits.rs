//! Bounds on what a client may give a container, enforced when a request is admitted: a
//! request over a bound is refused whole, and changes nothing.
//!
//! gdn enforces none of these. They are generous for what Garden clients store (Diego sets a
//! dozen short properties, a few dozen env entries and net-out rules) and keep what one
//! container costs the server bounded: its record is rewritten and fsynced on every change and
//! its properties are copied into every Info and BulkInfo reply.

use crate::handle;
use crate::record::{self, ContainerRecord};
use std::fmt;
use thiserror::Error;

/// Property keys are names, and travel in URL paths (`/containers/:handle/properties/:key`).
pub const MAX_PROPERTY_KEY_BYTES: usize = 1024;

/// Room for a sizeable JSON document in one value.
pub const MAX_PROPERTY_VALUE_BYTES: usize = 64 * 1024;

/// User properties per container (the `garden.*` ones are derived and not counted).
pub const MAX_PROPERTIES: usize = 256;

/// The stored record of a container: properties, spec (env, bind mounts, rules, ...), the
/// image's env, port mappings and rules added later, together, as encoded. At 1 MiB one write
/// with its fsync stays in the low milliseconds, and Info replies stay small enough to serve
/// hundreds at once.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Entries in one environment: the container's, the image's, or one process's.
pub const MAX_ENV_ENTRIES: usize = 1024;

/// Bytes in one environment, counting each entry's terminating NUL as execve does. A process
/// gets the image's, the container's and its own: 3 x 128 KiB stays well inside what execve
/// takes beside the arguments (a quarter of the stack limit, 2 MiB by default), and any single
/// entry fits the kernel's limit on one string (MAX_ARG_STRLEN, 128 KiB with its NUL).
pub const MAX_ENV_BYTES: usize = 128 * 1024;

/// Bind mounts of a container (or of a process with its own image): each is a mount the init
/// makes before the container starts.
pub const MAX_BIND_MOUNTS: usize = 256;

/// Net-out rules of a container, from its spec and added later together. Each becomes rules in
/// the container's own egress chain; large application security group sets are hundreds.
pub const MAX_NETOUT_RULES: usize = 1024;

/// The longest handle (see [`crate::handle`] for why).
pub const MAX_HANDLE_BYTES: usize = handle::MAX_HANDLE_BYTES;

/// Whose environment is over a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvOwner {
    Container,
    Image,
    Process,
}

impl fmt::Display for EnvOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EnvOwner::Container => "the container's",
            EnvOwner::Image => "the image's",
            EnvOwner::Process => "the process's",
        })
    }
}

/// A request over one of the bounds above.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitExceeded {
    #[error("property key is {len} bytes long; the limit is {MAX_PROPERTY_KEY_BYTES}")]
    PropertyKey { len: usize },
    #[error(
        "property '{key}' has a value of {len} bytes; the limit is {MAX_PROPERTY_VALUE_BYTES}"
    )]
    PropertyValue { key: String, len: usize },
    #[error("a container may have at most {MAX_PROPERTIES} properties")]
    PropertyCount,
    #[error("{whose} environment has {count} entries; the limit is {MAX_ENV_ENTRIES}")]
    EnvEntries { whose: EnvOwner, count: usize },
    #[error("{whose} environment is {bytes} bytes; the limit is {MAX_ENV_BYTES}")]
    EnvBytes { whose: EnvOwner, bytes: usize },
    #[error("{count} bind mounts; the limit is {MAX_BIND_MOUNTS}")]
    BindMounts { count: usize },
    #[error("the container would have {count} net-out rules; the limit is {MAX_NETOUT_RULES}")]
    NetOutRules { count: usize },
    #[error(
        "the container's record would be {bytes} bytes; the limit is {MAX_RECORD_BYTES} \
         (its properties, env, rules and the rest of its spec, stored together)"
    )]
    RecordSize { bytes: usize },
}

pub fn check_property(key: &str, value: &str) -> Result<(), LimitExceeded> {
    if key.len() > MAX_PROPERTY_KEY_BYTES {
        return Err(LimitExceeded::PropertyKey { len: key.len() });
    }
    if value.len() > MAX_PROPERTY_VALUE_BYTES {
        return Err(LimitExceeded::PropertyValue {
            key: key.to_string(),
            len: value.len(),
        });
    }
    Ok(())
}

/// A whole set of properties, as a create gives them.
pub fn check_properties<'a>(
    properties: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), LimitExceeded> {
    if properties.len() > MAX_PROPERTIES {
        return Err(LimitExceeded::PropertyCount);
    }
    for (key, value) in properties {
        check_property(key, value)?;
    }
    Ok(())
}

pub fn check_env(whose: EnvOwner, env: &[String]) -> Result<(), LimitExceeded> {
    if env.len() > MAX_ENV_ENTRIES {
        return Err(LimitExceeded::EnvEntries {
            whose,
            count: env.len(),
        });
    }
    let bytes = env.iter().map(|e| e.len() + 1).sum();
    if bytes > MAX_ENV_BYTES {
        return Err(LimitExceeded::EnvBytes { whose, bytes });
    }
    Ok(())
}

pub fn check_bind_mounts(count: usize) -> Result<(), LimitExceeded> {
    if count > MAX_BIND_MOUNTS {
        return Err(LimitExceeded::BindMounts { count });
    }
    Ok(())
}

pub fn check_netout_rules(count: usize) -> Result<(), LimitExceeded> {
    if count > MAX_NETOUT_RULES {
        return Err(LimitExceeded::NetOutRules { count });
    }
    Ok(())
}

/// The record's encoded length, if within [`MAX_RECORD_BYTES`].
pub fn check_record(record: &ContainerRecord) -> Result<usize, LimitExceeded> {
    let bytes = record::encoded_len(record);
    if bytes > MAX_RECORD_BYTES {
        return Err(LimitExceeded::RecordSize { bytes });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_bounds_are_inclusive() {
        let key = "k".repeat(MAX_PROPERTY_KEY_BYTES);
        let value = "v".repeat(MAX_PROPERTY_VALUE_BYTES);
        assert_eq!(check_property(&key, &value), Ok(()));
        assert_eq!(
            check_property(&format!("{key}k"), ""),
            Err(LimitExceeded::PropertyKey { len: 1025 })
        );
        assert_eq!(
            check_property("k", &format!("{value}v")),
            Err(LimitExceeded::PropertyValue {
                key: "k".into(),
                len: 65537
            })
        );
    }

    #[test]
    fn property_count() {
        let many: std::collections::BTreeMap<String, String> = (0..=MAX_PROPERTIES)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert_eq!(
            check_properties(many.iter()),
            Err(LimitExceeded::PropertyCount)
        );
        assert_eq!(check_properties(many.iter().skip(1)), Ok(()));
    }

    #[test]
    fn env_counts_entries_and_bytes_with_their_nul() {
        let entries: Vec<String> = (0..MAX_ENV_ENTRIES).map(|i| format!("V{i}=1")).collect();
        assert_eq!(check_env(EnvOwner::Container, &entries), Ok(()));
        let too_many: Vec<String> = (0..=MAX_ENV_ENTRIES).map(|_| "A=1".into()).collect();
        assert_eq!(
            check_env(EnvOwner::Process, &too_many),
            Err(LimitExceeded::EnvEntries {
                whose: EnvOwner::Process,
                count: 1025
            })
        );
        // One entry of MAX_ENV_BYTES - 1 bytes plus its NUL is exactly the limit.
        let one = vec![format!("A={}", "x".repeat(MAX_ENV_BYTES - 3))];
        assert_eq!(check_env(EnvOwner::Image, &one), Ok(()));
        let over = vec![format!("A={}", "x".repeat(MAX_ENV_BYTES - 2))];
        assert_eq!(
            check_env(EnvOwner::Image, &over),
            Err(LimitExceeded::EnvBytes {
                whose: EnvOwner::Image,
                bytes: MAX_ENV_BYTES + 1
            })
        );
        assert_eq!(
            LimitExceeded::EnvBytes {
                whose: EnvOwner::Image,
                bytes: 131073
            }
            .to_string(),
            "the image's environment is 131073 bytes; the limit is 131072"
        );
    }

    #[test]
    fn counts() {
        assert_eq!(check_bind_mounts(MAX_BIND_MOUNTS), Ok(()));
        assert_eq!(
            check_bind_mounts(MAX_BIND_MOUNTS + 1),
            Err(LimitExceeded::BindMounts { count: 257 })
        );
        assert_eq!(check_netout_rules(MAX_NETOUT_RULES), Ok(()));
        assert_eq!(
            check_netout_rules(MAX_NETOUT_RULES + 1),
            Err(LimitExceeded::NetOutRules { count: 1025 })
        );
    }
}

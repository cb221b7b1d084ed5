//! Container properties and the List filter.
//!
//! User properties are stored; the `garden.*` keys guardian reports are derived from the
//! container's state when read, so they can never disagree with it.

use std::collections::BTreeMap;

pub type Properties = BTreeMap<String, String>;

pub const STATE: &str = "garden.state";
pub const GRACE_TIME: &str = "garden.grace-time";
pub const CONTAINER_IP: &str = "garden.network.container-ip";
pub const HOST_IP: &str = "garden.network.host-ip";
/// Set only by a network plugin's answer.
pub const CONTAINER_IPV6: &str = "garden.network.container-ipv6";
pub const EXTERNAL_IP: &str = "garden.network.external-ip";
pub const MAPPED_PORTS: &str = "garden.network.mapped-ports";

/// `garden.state=all` in a List filter shows containers in every state.
pub const STATE_ALL: &str = "all";
pub const STATE_CREATED: &str = "created";

/// Keys the server owns; callers may read them but not set or remove them.
pub fn is_reserved(key: &str) -> bool {
    matches!(
        key,
        STATE | GRACE_TIME | CONTAINER_IP | HOST_IP | EXTERNAL_IP | MAPPED_PORTS
    )
}

/// True when `properties` satisfies every pair of `filter`. A pair with an empty value matches a
/// container that lacks the key (or has it empty). `garden.state` is handled by the caller.
pub fn matches(properties: &Properties, filter: &Properties) -> bool {
    filter
        .iter()
        .filter(|(key, _)| key.as_str() != STATE)
        .all(|(key, wanted)| match properties.get(key) {
            Some(value) => value == wanted,
            None => wanted.is_empty(),
        })
}

/// Whether a container in `state` is listed under `filter`: only created ones, unless the filter
/// names a state (or `all`).
pub fn state_matches(state: &str, filter: &Properties) -> bool {
    match filter.get(STATE).map(String::as_str) {
        None => state == STATE_CREATED,
        Some(STATE_ALL) => true,
        Some(wanted) => state == wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn props(pairs: &[(&str, &str)]) -> Properties {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn all_pairs_must_match() {
        let p = props(&[("a", "1"), ("b", "2")]);
        assert!(matches(&p, &props(&[])));
        assert!(matches(&p, &props(&[("a", "1")])));
        assert!(matches(&p, &props(&[("a", "1"), ("b", "2")])));
        assert!(!matches(&p, &props(&[("a", "1"), ("b", "3")])));
        assert!(!matches(&p, &props(&[("c", "1")])));
    }

    #[test]
    fn empty_value_matches_a_missing_key() {
        let p = props(&[("a", "1")]);
        assert!(matches(&p, &props(&[("c", "")])));
        assert!(!matches(&p, &props(&[("a", "")])));
    }

    #[test]
    fn state_filter() {
        assert!(state_matches("created", &props(&[])));
        assert!(!state_matches("creating", &props(&[])));
        assert!(state_matches("creating", &props(&[(STATE, "all")])));
        assert!(state_matches(
            "destroying",
            &props(&[(STATE, "destroying")])
        ));
    }

    proptest! {
        /// The filter agrees with a direct reading of its definition.
        #[test]
        fn filter_agrees_with_definition(
            p in proptest::collection::btree_map("[abc]", "[xy]?", 0..4),
            f in proptest::collection::btree_map("[abcd]", "[xy]?", 0..4),
        ) {
            let expected = f.iter().all(|(k, v)| p.get(k).map(|pv| pv == v).unwrap_or(v.is_empty()));
            prop_assert_eq!(matches(&p, &f), expected);
        }
    }
}

//! Names of the host objects that belong to a container or a subnet.
//!
//! Interface names must fit IFNAMSIZ (15 bytes), far less than a handle, so each container gets
//! a short random id, recorded in its network state file. Bridges are named by their subnet so
//! that every container on a subnet finds the same one.

use ipnetwork::Ipv4Network;
use std::io::Read;

/// Every bridge we create starts with this (then the server's tag and `-`); the firewall
/// matches container traffic by it.
pub const BRIDGE_PREFIX: &str = "trbr";
/// Every veth (host end, container end) and ifb we create starts with this.
pub const LINK_PREFIX: &str = "trv";
/// Digits in a container's network id: 10 base-32 digits, 50 random bits.
pub const ID_DIGITS: usize = 10;

const BASE32: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

/// A fresh random container network id, e.g. `0k3v9a1bq2`.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(render_id(u64::from_le_bytes(bytes)))
}

fn render_id(mut value: u64) -> String {
    let mut digits = vec![b'0'; ID_DIGITS];
    for digit in digits.iter_mut().rev() {
        *digit = BASE32[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8(digits).expect("base32 digits are ASCII")
}

pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_DIGITS && id.bytes().all(|b| BASE32.contains(&b))
}

/// The names one container's network uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkNames {
    /// Host end of the veth pair, a port of the subnet's bridge.
    pub host_veth: String,
    /// Container end, inside the container's network namespace (not renamed, as gdn does).
    pub container_veth: String,
    /// Intermediate device that shapes traffic coming from the container.
    pub ifb: String,
    /// The nftables table (netdev family) holding the container's egress chain: one of 32,
    /// by the id's last digit. Tables are few so that the kernel's walks over every table
    /// stay short, and many so that each holds few chains (a rule change makes the kernel
    /// validate its whole table).
    pub firewall_table: String,
    /// The container's egress chain in that table, hooked on its host veth.
    pub firewall_chain: String,
}

impl LinkNames {
    /// The names of the container `id` of the server tagged `tag`.
    pub fn for_id(tag: &str, id: &str) -> LinkNames {
        LinkNames {
            host_veth: format!("{LINK_PREFIX}{id}-0"),
            container_veth: format!("{LINK_PREFIX}{id}-1"),
            ifb: format!("{LINK_PREFIX}{id}-i"),
            firewall_table: format!(
                "{}{}",
                firewall_table_prefix(tag),
                id.chars().last().unwrap_or('0')
            ),
            firewall_chain: format!("c-{id}"),
        }
    }
}

/// What the names of a server's egress tables start with: `trellis<tag>-egress-`.
pub fn firewall_table_prefix(tag: &str) -> String {
    format!("trellis{tag}-egress-")
}

/// The bridge of a subnet: the prefix and the network address in hex, like gdn's
/// `wbrdg-0afe0000`. Subnets that differ only in prefix length cannot coexist (the core
/// refuses overlapping subnets), so the address alone is unique.
pub fn bridge_name(bridge_prefix: &str, subnet: Ipv4Network) -> String {
    format!("{bridge_prefix}{:08x}", u32::from(subnet.network()))
}

/// The bridge prefix of a server with `tag`: `trbr<tag>-`.
pub fn bridge_prefix(tag: &str) -> String {
    format!("{BRIDGE_PREFIX}{tag}-")
}

/// A tag keeps two servers (or a test) on one host apart: at most 2 characters, letters and
/// digits, as gdn's `--tag`.
pub fn is_valid_tag(tag: &str) -> bool {
    tag.len() <= 2 && tag.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A random locally administered unicast MAC, so that a bridge keeps one address whatever
/// ports come and go (its neighbours' ARP caches stay right).
pub fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] | 0x02) & !0x01;
    Ok(mac)
}

/// The log prefix of a container's logged NetOut rules: the first 28 characters of the handle
/// (as gdn), restricted to characters that need no quoting.
pub fn log_prefix(handle: &str) -> String {
    handle
        .chars()
        .take(28)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz() {
        let id = new_id().unwrap();
        assert!(is_valid_id(&id), "{id}");
        let names = LinkNames::for_id("zz", &id);
        for name in [&names.host_veth, &names.container_veth, &names.ifb] {
            assert!(name.len() <= 15, "{name} is too long");
        }
        let bridge = bridge_name(&bridge_prefix("xy"), "255.255.255.252/30".parse().unwrap());
        assert_eq!(bridge, "trbrxy-fffffffc");
        assert!(bridge.len() <= 15);
    }

    #[test]
    fn ids_render_in_base32() {
        assert_eq!(render_id(0), "0000000000");
        assert_eq!(render_id(31), "000000000v");
        assert_eq!(render_id(32), "0000000010");
        assert_ne!(new_id().unwrap(), new_id().unwrap());
    }

    #[test]
    fn bridge_names_follow_the_subnet_address() {
        assert_eq!(
            bridge_name(&bridge_prefix(""), "10.254.0.0/30".parse().unwrap()),
            "trbr-0afe0000"
        );
        assert_eq!(
            bridge_name(&bridge_prefix(""), "192.168.12.0/24".parse().unwrap()),
            "trbr-c0a80c00"
        );
    }

    #[test]
    fn log_prefixes_are_short_and_safe() {
        assert_eq!(log_prefix("my-app"), "my-app");
        assert_eq!(log_prefix("a \"quoted\" handle"), "a__quoted__handle");
        assert_eq!(log_prefix(&"x".repeat(40)).len(), 28);
    }

    #[test]
    fn random_macs_are_local_unicast() {
        let mac = random_mac().unwrap();
        assert_eq!(mac[0] & 0x03, 0x02);
    }
}

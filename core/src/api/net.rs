//! Port mappings (NetIn) and egress rules (NetOut) as Garden spells them.

use super::go::{is_zero, nullable, opt_ip};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A port mapping inside a ContainerSpec. Unlike the NetIn route's body, both keys are always sent.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NetIn {
    #[serde(deserialize_with = "nullable")]
    pub host_port: u32,
    #[serde(deserialize_with = "nullable")]
    pub container_port: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NetInResponse {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub host_port: u32,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub container_port: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(default)]
pub struct NetOutRule {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub protocol: Protocol,
    /// Inclusive ranges; empty means every address.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub networks: Vec<IpRange>,
    /// Inclusive ranges; empty means every port. Ignored for ICMP.
    #[serde(skip_serializing_if = "Vec::is_empty", deserialize_with = "nullable")]
    pub ports: Vec<PortRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmps: Option<IcmpControl>,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub log: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "u8", into = "u8")]
pub enum Protocol {
    #[default]
    All,
    Tcp,
    Udp,
    Icmp,
    IcmpV6,
}

impl TryFrom<u8> for Protocol {
    type Error = String;
    fn try_from(value: u8) -> Result<Self, String> {
        Ok(match value {
            0 => Self::All,
            1 => Self::Tcp,
            2 => Self::Udp,
            3 => Self::Icmp,
            4 => Self::IcmpV6,
            other => {
                return Err(format!(
                    "unknown protocol {other} (0 all, 1 tcp, 2 udp, 3 icmp, 4 icmpv6)"
                ))
            }
        })
    }
}

impl From<Protocol> for u8 {
    fn from(protocol: Protocol) -> u8 {
        protocol as u8
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct IpRange {
    #[serde(with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub start: Option<IpAddr>,
    #[serde(with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub end: Option<IpAddr>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct PortRange {
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub start: u16,
    #[serde(skip_serializing_if = "is_zero", deserialize_with = "nullable")]
    pub end: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(default)]
pub struct IcmpControl {
    #[serde(
        rename = "type",
        skip_serializing_if = "is_zero",
        deserialize_with = "nullable"
    )]
    pub kind: u8,
    /// Absent means any code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl NetOutRule {
    /// Garden's rules for a NetOut rule, checked here so every backend refuses alike: ranges
    /// that run backwards, mixed address families, ports on a protocol without ports, ICMP
    /// controls on a protocol that has none, and ICMPv6 (gdn filters IPv4 only).
    pub fn validate(&self) -> Result<(), String> {
        for range in &self.networks {
            match (range.start, range.end) {
                (Some(IpAddr::V4(a)), Some(IpAddr::V4(b))) if a > b => {
                    return Err(format!("invalid network range {a}-{b}: start is after end"))
                }
                (Some(IpAddr::V6(a)), Some(IpAddr::V6(b))) if a > b => {
                    return Err(format!("invalid network range {a}-{b}: start is after end"))
                }
                (Some(IpAddr::V4(_)), Some(IpAddr::V6(_)))
                | (Some(IpAddr::V6(_)), Some(IpAddr::V4(_))) => {
                    return Err(
                        "invalid network range: start and end are of different address families"
                            .into(),
                    )
                }
                (None, None) => return Err("invalid network range: no start or end address".into()),
                _ => {}
            }
        }
        for range in &self.ports {
            if range.start > range.end && range.end != 0 {
                return Err(format!(
                    "invalid port range {}-{}: start is after end",
                    range.start, range.end
                ));
            }
        }
        // gdn's words, which clients match on. Like gdn, we filter IPv4 only.
        if self.protocol == Protocol::IcmpV6 {
            return Err("invalid protocol: 4".into());
        }
        if !self.ports.is_empty() {
            let name = match self.protocol {
                Protocol::All => Some("ALL"),
                Protocol::Icmp => Some("ICMP"),
                Protocol::Tcp | Protocol::Udp | Protocol::IcmpV6 => None,
            };
            if let Some(name) = name {
                return Err(format!("Ports cannot be specified for Protocol {name}"));
            }
        }
        if self.icmps.is_some() && !matches!(self.protocol, Protocol::Icmp | Protocol::IcmpV6) {
            return Err("icmp type/code given for a non-ICMP protocol".into());
        }
        Ok(())
    }
}

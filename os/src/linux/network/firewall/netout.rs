//! NetOut rules as egress rules of the firewall's model: checked, their ranges merged, one
//! kernel rule each (several ranges go into one anonymous set).

use super::model::{Match, Rule, Transport};
use crate::host::{HostError, HostResult};
use crate::linux::network::naming::log_prefix;
use std::net::{IpAddr, Ipv4Addr};
use trellis_core::api::{NetOutRule, Protocol};

/// The rule for `rule` of the container `handle` (whose name prefixes what it logs).
/// Garden's own checks (`NetOutRule::validate`, which the core already applied) come first,
/// then what this host cannot do: IPv6.
pub fn netout_rule(rule: &NetOutRule, handle: &str) -> HostResult<Rule> {
    let invalid = |m: String| HostError::Invalid(m);
    rule.validate().map_err(invalid)?;
    let protocol = match rule.protocol {
        Protocol::All => None,
        Protocol::Tcp => Some(Transport::Tcp),
        Protocol::Udp => Some(Transport::Udp),
        Protocol::Icmp => Some(Transport::Icmp),
        Protocol::IcmpV6 => return Err(invalid("invalid protocol: 4".into())),
    };
    let mut networks = Vec::new();
    for range in &rule.networks {
        let ip = |a: Option<IpAddr>| -> HostResult<Option<u32>> {
            match a {
                None => Ok(None),
                Some(IpAddr::V4(v4)) => Ok(Some(u32::from(v4))),
                Some(IpAddr::V6(v6)) => Err(invalid(format!(
                    "IPv6 destinations are not supported: {v6}"
                ))),
            }
        };
        let (start, end) = match (ip(range.start)?, ip(range.end)?) {
            (Some(a), Some(b)) => (a.min(b), a.max(b)),
            (Some(a), None) | (None, Some(a)) => (a, a),
            (None, None) => return Err(invalid("a network range needs an address".into())),
        };
        networks.push((start, end));
    }
    let mut matches = Vec::new();
    matches.extend(protocol.map(Match::Protocol));
    if !networks.is_empty() {
        let ranges = merged(networks)
            .into_iter()
            .map(|(a, b)| (Ipv4Addr::from(a), Ipv4Addr::from(b)))
            .collect();
        matches.push(Match::DestinationRanges(ranges));
    }
    if let Some(transport @ (Transport::Tcp | Transport::Udp)) = protocol {
        let ports: Vec<_> = rule
            .ports
            .iter()
            .map(|p| {
                let end = if p.end == 0 { p.start } else { p.end };
                (u32::from(p.start.min(end)), u32::from(p.start.max(end)))
            })
            .collect();
        if !ports.is_empty() {
            let ranges = merged(ports)
                .into_iter()
                .map(|(a, b)| (a as u16, b as u16))
                .collect();
            matches.push(Match::DestinationPorts(transport, ranges));
        }
    }
    if let Some(icmp) = rule.icmps {
        matches.push(Match::Icmp {
            kind: icmp.kind,
            code: icmp.code,
        });
    }
    Ok(Rule {
        matches,
        log_prefix: rule.log.then(|| format!("{} ", log_prefix(handle))),
    })
}

/// Sorted, with overlapping and touching ranges joined (nft refuses overlapping intervals).
fn merged(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::api::{IcmpControl, IpRange, PortRange};

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn text(rule: &NetOutRule, handle: &str) -> HostResult<String> {
        netout_rule(rule, handle).map(|r| r.text())
    }

    #[test]
    fn a_tcp_rule_with_ranges_is_one_nft_rule() {
        let rule = NetOutRule {
            protocol: Protocol::Tcp,
            networks: vec![
                IpRange {
                    start: ip("10.1.0.0"),
                    end: ip("10.1.0.255"),
                },
                IpRange {
                    start: ip("10.0.0.1"),
                    end: ip("10.0.0.5"),
                },
                IpRange {
                    start: ip("10.0.0.3"),
                    end: None,
                },
            ],
            ports: vec![
                PortRange {
                    start: 8080,
                    end: 8090,
                },
                PortRange { start: 80, end: 0 },
                PortRange {
                    start: 8085,
                    end: 9000,
                },
            ],
            icmps: None,
            log: true,
        };
        assert_eq!(
            text(&rule, "my app").unwrap(),
            "meta l4proto tcp ip daddr { 10.0.0.1-10.0.0.5, 10.1.0.0-10.1.0.255 } \
             tcp dport { 80, 8080-9000 } log prefix \"my_app \" \
             meta mark set meta mark | 0x00100000 accept"
        );
    }

    #[test]
    fn all_and_icmp_rules() {
        assert_eq!(
            text(&NetOutRule::default(), "h").unwrap(),
            "meta mark set meta mark | 0x00100000 accept"
        );
        let icmp = NetOutRule {
            protocol: Protocol::Icmp,
            icmps: Some(IcmpControl {
                kind: 8,
                code: Some(0),
            }),
            networks: vec![IpRange {
                start: ip("10.2.0.1"),
                end: None,
            }],
            ..Default::default()
        };
        assert_eq!(
            text(&icmp, "h").unwrap(),
            "meta l4proto icmp ip daddr { 10.2.0.1 } icmp type 8 icmp code 0 \
             meta mark set meta mark | 0x00100000 accept"
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_gdns_messages() {
        let ports_on_all = NetOutRule {
            ports: vec![PortRange { start: 1, end: 2 }],
            ..Default::default()
        };
        assert!(matches!(
            netout_rule(&ports_on_all, "h"),
            Err(HostError::Invalid(m)) if m == "Ports cannot be specified for Protocol ALL"
        ));
        let v6 = NetOutRule {
            protocol: Protocol::IcmpV6,
            ..Default::default()
        };
        assert!(
            matches!(netout_rule(&v6, "h"), Err(HostError::Invalid(m)) if m == "invalid protocol: 4")
        );
        let v6_net = NetOutRule {
            networks: vec![IpRange {
                start: ip("::1"),
                end: None,
            }],
            ..Default::default()
        };
        assert!(matches!(
            netout_rule(&v6_net, "h"),
            Err(HostError::Invalid(_))
        ));
    }

    #[test]
    fn ranges_merge() {
        assert_eq!(
            merged(vec![(5, 9), (1, 3), (4, 4), (20, 30)]),
            vec![(1, 9), (20, 30)]
        );
        assert_eq!(merged(vec![(0, u32::MAX), (7, 8)]), vec![(0, u32::MAX)]);
    }
}

//! A container's part of the firewall, as transactions of the model: its egress chain in its
//! netdev table, its address and port mappings in our shared table, and their removal.

use super::model::{Change, Element, Family, Match, Rule, Transaction};
use super::netout::netout_rule;
use super::{ContainerRules, Ruleset};
use crate::host::{HostError, HostResult};
use trellis_core::api::{NetOutRule, PortMapping};

impl Ruleset {
    /// A transaction on our shared table.
    fn shared(&self) -> HostResult<Transaction> {
        let table = self.table.strip_prefix("ip ").ok_or_else(|| {
            HostError::Unexpected(format!("table {} is not of the ip family", self.table))
        })?;
        Ok(Transaction::new(Family::Ip, table))
    }

    /// A transaction on the container's netdev table, which first makes sure the table and
    /// the container's chain exist.
    fn own(c: &ContainerRules<'_>) -> Transaction {
        let mut own = Transaction::new(Family::Netdev, c.table);
        own.changes.push(Change::AddTable);
        own.changes.push(Change::AddIngressChain {
            chain: c.chain.into(),
            device: c.device.into(),
        });
        own
    }

    /// (Re)builds the container's egress chain with its create-time NetOut rules, then
    /// publishes its address and port mappings: the container's table, then ours. Every rule
    /// is checked before anything is built.
    pub fn container_setup(
        &self,
        c: &ContainerRules<'_>,
        netout: &[NetOutRule],
        ports: &[PortMapping],
    ) -> HostResult<[Transaction; 2]> {
        if c.subnet.prefix() == 0 {
            return Err(HostError::Unexpected(format!(
                "invalid container subnet {}",
                c.subnet
            )));
        }
        let netout = netout_rules(c, netout)?;
        let netin = ports
            .iter()
            .map(|m| netin_element(c, m))
            .collect::<HostResult<Vec<_>>>()?;
        let mut own = Self::own(c);
        own.changes.push(Change::FlushChain(c.chain.into()));
        // Its own subnet it may always reach.
        own.changes.push(Change::AppendRule {
            chain: c.chain.into(),
            rule: Rule {
                matches: vec![Match::DestinationNetwork(c.subnet)],
                log_prefix: None,
            },
        });
        own.changes.extend(netout);
        let mut shared = self.shared()?;
        shared
            .changes
            .push(Change::AddElement(Element::Container(c.ip)));
        shared
            .changes
            .extend(netin.into_iter().map(Change::AddElement));
        Ok([own, shared])
    }

    /// Inserts NetOut rules at the head of the container's egress chain (`None` for no
    /// rules). Every rule is checked before anything is built.
    pub fn netout_insertion(
        &self,
        c: &ContainerRules<'_>,
        rules: &[NetOutRule],
    ) -> HostResult<Option<Transaction>> {
        if rules.is_empty() {
            return Ok(None);
        }
        let mut own = Transaction::new(Family::Netdev, c.table);
        own.changes = netout_rules(c, rules)?;
        Ok(Some(own))
    }

    /// Publishes one more port mapping.
    pub fn port_mapping(
        &self,
        c: &ContainerRules<'_>,
        mapping: &PortMapping,
    ) -> HostResult<Transaction> {
        let mut shared = self.shared()?;
        shared
            .changes
            .push(Change::AddElement(netin_element(c, mapping)?));
        Ok(shared)
    }

    /// Removes port mappings (`None`: nothing valid to remove; mappings with invalid ports
    /// were never made). Each element is added before it is deleted, so the transaction
    /// succeeds whether or not it is still there.
    pub fn ports_removal(
        &self,
        c: &ContainerRules<'_>,
        ports: &[PortMapping],
    ) -> HostResult<Option<Transaction>> {
        let elements: Vec<_> = ports
            .iter()
            .filter_map(|m| netin_element(c, m).ok())
            .collect();
        if elements.is_empty() {
            return Ok(None);
        }
        let mut shared = self.shared()?;
        for element in elements {
            shared.changes.push(Change::AddElement(element));
            shared.changes.push(Change::DeleteElement(element));
        }
        Ok(Some(shared))
    }

    /// Removes the container's chain: added (with its table) before it is flushed and
    /// deleted, so the removal succeeds whether or not it is still there. The table stays for
    /// other containers.
    pub fn chain_removal(&self, c: &ContainerRules<'_>) -> Transaction {
        let mut own = Self::own(c);
        own.changes.push(Change::FlushChain(c.chain.into()));
        own.changes.push(Change::DeleteChain(c.chain.into()));
        own
    }

    /// Removes the container's `containers` element, added before it is deleted.
    pub fn address_removal(&self, c: &ContainerRules<'_>) -> HostResult<Transaction> {
        let mut shared = self.shared()?;
        let element = Element::Container(c.ip);
        shared.changes.push(Change::AddElement(element));
        shared.changes.push(Change::DeleteElement(element));
        Ok(shared)
    }
}

/// The insertions of NetOut rules at the head of the container's chain (each goes first, so
/// the last one ends up at the head).
fn netout_rules(c: &ContainerRules<'_>, rules: &[NetOutRule]) -> HostResult<Vec<Change>> {
    rules
        .iter()
        .map(|rule| {
            Ok(Change::InsertRule {
                chain: c.chain.into(),
                rule: netout_rule(rule, c.handle)?,
            })
        })
        .collect()
}

/// A `netin` element: host port -> container address . container port.
fn netin_element(c: &ContainerRules<'_>, mapping: &PortMapping) -> HostResult<Element> {
    Ok(Element::NetIn {
        host_port: port_number(mapping.host_port, "host")?,
        ip: c.ip,
        port: port_number(mapping.container_port, "container")?,
    })
}

fn port_number(port: u32, which: &str) -> HostResult<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(HostError::Invalid(format!("invalid {which} port {port}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ruleset() -> Ruleset {
        Ruleset {
            table: "ip trellis".into(),
            bridge_prefix: "trbr-".into(),
        }
    }

    fn container() -> ContainerRules<'static> {
        ContainerRules {
            handle: "h",
            table: "trellis-egress-9",
            chain: "c-0123456789",
            device: "trv0123456789-0",
            subnet: "10.254.0.0/30".parse().unwrap(),
            ip: Ipv4Addr::new(10, 254, 0, 1),
        }
    }

    #[test]
    fn removal_deletes_only_the_containers_own_objects() {
        let chain = ruleset().chain_removal(&container()).script();
        assert!(chain.contains("delete chain netdev trellis-egress-9 c-0123456789\n"));
        assert!(!chain.contains("delete table"));
        assert!(!chain.contains("ip trellis"), "{chain}");
        let address = ruleset().address_removal(&container()).unwrap().script();
        assert_eq!(
            address,
            "add element ip trellis containers { 10.254.0.1 }\n\
             delete element ip trellis containers { 10.254.0.1 }\n"
        );
        let mapping = |host_port| PortMapping {
            host_port,
            container_port: 8080,
        };
        let ports = ruleset()
            .ports_removal(&container(), &[mapping(61001), mapping(70000)])
            .unwrap()
            .expect("a valid port to remove");
        assert_eq!(
            ports.script(),
            "add element ip trellis netin { 61001 : 10.254.0.1 . 8080 }\n\
             delete element ip trellis netin { 61001 }\n"
        );
        let invalid_only = ruleset()
            .ports_removal(&container(), &[mapping(0)])
            .unwrap();
        assert_eq!(invalid_only, None);
    }

    #[test]
    fn the_egress_chain_hooks_the_host_veth_and_marks_only_what_it_allows() {
        let [own, shared] = ruleset().container_setup(&container(), &[], &[]).unwrap();
        let own = own.script();
        assert!(own.contains(
            "add chain netdev trellis-egress-9 c-0123456789 { type filter hook ingress device \"trv0123456789-0\" priority 0; policy accept; }"
        ), "{own}");
        assert!(own.contains(
            "add rule netdev trellis-egress-9 c-0123456789 ip daddr 10.254.0.0/30 meta mark set meta mark | 0x00100000 accept"
        ), "{own}");
        assert_eq!(
            shared.script(),
            "add element ip trellis containers { 10.254.0.1 }\n"
        );
    }

    #[test]
    fn a_bad_port_or_rule_refuses_the_whole_setup() {
        let bad_port = PortMapping {
            host_port: 0,
            container_port: 80,
        };
        assert!(matches!(
            ruleset().container_setup(&container(), &[], &[bad_port]),
            Err(HostError::Invalid(m)) if m == "invalid host port 0"
        ));
        let v6 = NetOutRule {
            protocol: trellis_core::api::Protocol::IcmpV6,
            ..Default::default()
        };
        assert!(matches!(
            ruleset().container_setup(&container(), &[v6], &[]),
            Err(HostError::Invalid(_))
        ));
    }
}

//! The global part of our table (what all containers share): declared and rebuilt in place by
//! one `nft` script at start, the only place it is written.

use super::{FirewallSettings, ALLOWED_MARK};
use std::fmt::Write as _;

/// Names the objects of one server: `ip trellis<tag>`, bridges `trbr<tag>-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// `ip trellis<tag>`
    pub table: String,
    /// `trbr<tag>-`
    pub bridge_prefix: String,
}

impl Ruleset {
    fn declarations(&self, script: &mut String) {
        let t = &self.table;
        let _ = writeln!(script, "add table {t}");
        let _ = writeln!(
            script,
            "add map {t} netin {{ type inet_service : ipv4_addr . inet_service; }}"
        );
        let _ = writeln!(
            script,
            "add set {t} denied {{ type ipv4_addr; flags interval; }}"
        );
        let _ = writeln!(script, "add set {t} containers {{ type ipv4_addr; }}");
        for (chain, hook) in [
            ("forward_filter", "type filter hook forward priority filter"),
            ("input_filter", "type filter hook input priority filter"),
            ("nat_prerouting", "type nat hook prerouting priority dstnat"),
            ("nat_output", "type nat hook output priority -100"),
            (
                "nat_postrouting",
                "type nat hook postrouting priority srcnat",
            ),
        ] {
            let _ = writeln!(script, "add chain {t} {chain} {{ {hook}; policy accept; }}");
        }
    }

    /// The whole global part of the table, rebuilt in place (containers' chains and map elements
    /// are kept, so running containers keep their networking across a server restart).
    pub fn globals_script(&self, settings: &FirewallSettings) -> String {
        let t = &self.table;
        let bridges = format!("\"{}*\"", self.bridge_prefix);
        let mut s = String::new();
        self.declarations(&mut s);
        for chain in [
            "forward_filter",
            "input_filter",
            "nat_prerouting",
            "nat_output",
            "nat_postrouting",
        ] {
            let _ = writeln!(s, "flush chain {t} {chain}");
        }
        let _ = writeln!(s, "flush set {t} denied");
        if !settings.deny_networks.is_empty() {
            let list: Vec<String> = settings
                .deny_networks
                .iter()
                .map(|n| n.to_string())
                .collect();
            let _ = writeln!(s, "add element {t} denied {{ {} }}", list.join(", "));
        }
        let rules = [
            (
                "forward_filter",
                "ct state established,related accept".to_string(),
            ),
            ("forward_filter", "ct status dnat accept".to_string()),
            (
                "forward_filter",
                format!(
                    "iifname {bridges} ip daddr @denied reject with icmp type admin-prohibited"
                ),
            ),
            (
                "forward_filter",
                format!("iifname {bridges} meta mark & {ALLOWED_MARK:#010x} == {ALLOWED_MARK:#010x} accept"),
            ),
            (
                "forward_filter",
                format!("iifname {bridges} reject with icmp type admin-prohibited"),
            ),
            (
                "input_filter",
                format!("iifname {bridges} ct state established,related accept"),
            ),
            (
                "input_filter",
                if settings.allow_host_access {
                    format!("iifname {bridges} accept")
                } else {
                    format!("iifname {bridges} reject with icmp type host-prohibited")
                },
            ),
            (
                "nat_prerouting",
                "fib daddr type local dnat ip to tcp dport map @netin".to_string(),
            ),
            (
                "nat_output",
                "fib daddr type local dnat ip to tcp dport map @netin".to_string(),
            ),
            (
                "nat_postrouting",
                format!("iifname {bridges} oifname != {bridges} masquerade"),
            ),
            (
                "nat_postrouting",
                format!("ct status dnat oifname {bridges} ip saddr 127.0.0.0/8 masquerade"),
            ),
            (
                "nat_postrouting",
                format!("ct status dnat oifname {bridges} ip saddr @containers masquerade"),
            ),
        ];
        for (chain, rule) in rules {
            let _ = writeln!(s, "add rule {t} {chain} {rule}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_is_default_deny_past_the_containers_chains() {
        let ruleset = Ruleset {
            table: "ip trellis".into(),
            bridge_prefix: "trbr-".into(),
        };
        // A container's chain accepts unmarked traffic; forward_filter rejects what lacks the
        // mark.
        let globals = ruleset.globals_script(&FirewallSettings::default());
        let forward: Vec<&str> = globals
            .lines()
            .filter(|l| l.starts_with("add rule ip trellis forward_filter"))
            .collect();
        assert_eq!(
            forward[forward.len() - 2..],
            [
                "add rule ip trellis forward_filter iifname \"trbr-*\" meta mark & 0x00100000 == 0x00100000 accept",
                "add rule ip trellis forward_filter iifname \"trbr-*\" reject with icmp type admin-prohibited",
            ]
        );
    }
}

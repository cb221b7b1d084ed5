//! NAT and filtering with nftables: a table of our own (`ip trellis<tag>`) for what all
//! containers share, and each container's egress rules in a chain of its own.
//!
//! Layout:
//! - `c-<id>` in `netdev trellis<tag>-egress-<digit>` (32 tables, by the id's last digit): a
//!   chain on the ingress hook of the container's host-side veth, so it sees exactly what the
//!   container sends, whatever addresses it claims. Traffic to the container's own subnet and
//!   whatever its NetOut rules allow (accept, or log and accept) gets the [`ALLOWED_MARK`]
//!   bit. Adding a rule costs about the same however many containers exist: the kernel
//!   validates every chain of the table a rule goes into (1/32 of the containers), and walks
//!   the list of all tables (a few) on every change. One table for all containers made the
//!   first grow with the containers; one table each, the second.
//! - `forward_filter` (hook forward): established/related and published-port (DNAT) traffic
//!   passes; traffic from our bridges to a `--deny-network` destination is rejected; the rest
//!   from our bridges passes only with the mark: egress is default-deny.
//! - `input_filter` (hook input): containers reach the host only with `--allow-host-access`
//!   (replies to the host's own connections always pass).
//! - `nat_prerouting`/`nat_output`: TCP to any local address on a mapped host port is DNATed
//!   through the `netin` map (host port -> container address and port), so a published port
//!   answers on the external IP, on loopback, and from other containers.
//! - `nat_postrouting`: traffic leaving through a non-container interface is masqueraded;
//!   DNATed traffic from loopback or from a container (the `containers` set: the input
//!   interface is not known there when the bridge calls netfilter) is masqueraded so replies
//!   come back through the host (hairpin).
//!
//! Every change is one transaction per table: it applies whole or not at all. The global part
//! is an `nft -f` script, run once at start; per-container changes are nf_tables netlink
//! batches (see `nftnl`), because `nft` reads the whole table first and so costs more the more
//! containers there are. The container scripts are kept as the reference the batches are
//! tested against.
//!
//! Removal comes in two parts. The port mappings go at once (the host port and the address
//! may go to another container straight away). The container's chain and its `containers`
//! element go later, off destroy's path (see `Networker::teardown`): on this kernel any
//! nf_tables deletion waits for an RCU grace period, 10 to 20 ms. Until then the stale chain
//! hooks a device that is gone with the container's namespace, and matches nothing.

use super::naming::log_prefix;
use super::nftnl::{self, AnonSet, Base, CmpOp, ElemData, Expr, SetKey};
use crate::host::{HostError, HostResult};
use ipnetwork::Ipv4Network;
use nix::errno::Errno;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use trellis_core::api::{IcmpControl, NetOutRule, PortMapping, Protocol};

/// Runs an nft script (`nft -f -`) as one transaction.
pub fn run_nft(context: &str, script: &str) -> HostResult<()> {
    crate::linux::command::run_script(context, "nft", &["-f", "-"], script)
}

/// Deletes every nftables table of the server tagged `tag`: `ip trellis<tag>` and its egress
/// tables. For tests, benchmarks and `trellis cleanup`, after a server whose containers are
/// gone (a server leaves its tables in place when it stops, for the containers that keep
/// running). [`server_tables`] tells what is left.
pub fn delete_server_tables(tag: &str) {
    let mut script = String::new();
    for table in server_tables(tag) {
        let _ = writeln!(script, "delete table {table}");
    }
    if !script.is_empty() {
        if let Err(e) = run_nft("delete the server's nftables tables", &script) {
            tracing::warn!("{e}");
        }
    }
}

/// The nftables tables of the server tagged `tag`, as `<family> <name>`: `ip trellis<tag>` and
/// `netdev trellis<tag>-egress-*` (the `-` keeps tags apart: `trellisa-` is not `trellisab-`).
pub fn server_tables(tag: &str) -> Vec<String> {
    let prefix = super::naming::firewall_table_prefix(tag);
    let listing = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    listing
        .lines()
        .filter_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["table", "ip", name] if name == format!("trellis{tag}") => {
                    Some(format!("ip {name}"))
                }
                ["table", "netdev", name] if name.starts_with(&prefix) => {
                    Some(format!("netdev {name}"))
                }
                _ => None,
            },
        )
        .collect()
}

/// Operator settings for the firewall.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    /// `--deny-network`: destinations no container may reach, whatever its NetOut rules say.
    pub deny_networks: Vec<Ipv4Network>,
    /// `--allow-host-access`: containers may open connections to the host's own addresses.
    pub allow_host_access: bool,
}

/// What the firewall needs to know about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRules<'a> {
    pub handle: &'a str,
    /// The netdev table holding the container's egress chain (shared with other containers).
    pub table: &'a str,
    /// The container's egress chain.
    pub chain: &'a str,
    /// The host end of its veth pair, whose ingress its egress chain hooks.
    pub device: &'a str,
    pub subnet: Ipv4Network,
    pub ip: Ipv4Addr,
}

/// The packet mark bit that a container's egress chain sets on what it allows.
pub const ALLOWED_MARK: u32 = 0x0010_0000;

pub struct Firewall {
    ruleset: Ruleset,
}

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

    /// The container's table as `nft` names it.
    fn container_table(c: &ContainerRules<'_>) -> String {
        format!("netdev {}", c.table)
    }

    /// `add chain` for the container's egress chain, on its host veth's ingress.
    fn chain_declaration(c: &ContainerRules<'_>) -> String {
        format!(
            "add chain {} {} {{ type filter hook ingress device \"{}\" priority 0; policy accept; }}",
            Self::container_table(c),
            c.chain,
            c.device
        )
    }

    /// (Re)builds a container's egress chain with its create-time rules and publishes its
    /// address and port mappings.
    pub fn container_script(
        &self,
        c: &ContainerRules<'_>,
        netout: &[NetOutRule],
        ports: &[PortMapping],
    ) -> HostResult<String> {
        let t = &self.table;
        let own = Self::container_table(c);
        let mut s = String::new();
        self.declarations(&mut s);
        let _ = writeln!(s, "add table {own}");
        let chain = c.chain;
        let _ = writeln!(s, "{}", Self::chain_declaration(c));
        let _ = writeln!(s, "flush chain {own} {chain}");
        let _ = writeln!(
            s,
            "add rule {own} {chain} ip daddr {} {}",
            c.subnet,
            allow_text()
        );
        s.push_str(&self.netout_script(c, netout)?);
        let _ = writeln!(s, "add element {t} containers {{ {} }}", c.ip);
        for mapping in ports {
            s.push_str(&self.port_script(c, mapping)?);
        }
        Ok(s)
    }

    /// Inserts NetOut rules at the head of the container's egress chain.
    pub fn netout_script(
        &self,
        c: &ContainerRules<'_>,
        rules: &[NetOutRule],
    ) -> HostResult<String> {
        let own = Self::container_table(c);
        let mut s = String::new();
        for rule in rules {
            let _ = writeln!(
                s,
                "insert rule {own} {} {}",
                c.chain,
                netout_rule(rule, c.handle)?
            );
        }
        Ok(s)
    }

    /// The same insertions as [`Ruleset::netout_script`], as an nf_tables netlink batch
    /// (`None` for no rules). Every rule is checked before anything is sent.
    pub fn netout_batch(
        &self,
        c: &ContainerRules<'_>,
        rules: &[NetOutRule],
    ) -> HostResult<Option<nftnl::Batch>> {
        if rules.is_empty() {
            return Ok(None);
        }
        let exprs = rules
            .iter()
            .map(|rule| netout_exprs(rule, c.handle))
            .collect::<HostResult<Vec<_>>>()?;
        let mut batch = Self::container_batch_for(c);
        for rule in &exprs {
            batch.insert_rule(c.chain, rule);
        }
        Ok(Some(batch))
    }

    /// An empty netlink batch for our table.
    fn batch(&self) -> HostResult<nftnl::Batch> {
        let table = self.table.strip_prefix("ip ").ok_or_else(|| {
            HostError::Unexpected(format!("table {} is not of the ip family", self.table))
        })?;
        Ok(nftnl::Batch::new(nftnl::FAMILY_IPV4, table, 1))
    }

    /// An empty netlink batch for the container's own table.
    fn container_batch_for(c: &ContainerRules<'_>) -> nftnl::Batch {
        nftnl::Batch::new(nftnl::FAMILY_NETDEV, c.table, 1)
    }

    /// A `netin` element: host port -> container address . container port.
    fn netin_element(
        c: &ContainerRules<'_>,
        mapping: &PortMapping,
    ) -> HostResult<(Vec<u8>, ElemData)> {
        let host = port_number(mapping.host_port, "host")?;
        let container = port_number(mapping.container_port, "container")?;
        Ok((
            host.to_be_bytes().to_vec(),
            ElemData::Value(nftnl::concat(&[&c.ip.octets(), &container.to_be_bytes()])),
        ))
    }

    /// `ip daddr <subnet>` + [`allow_text`] as nft compiles it in a netdev chain.
    fn subnet_allow(subnet: Ipv4Network) -> HostResult<Vec<Expr>> {
        let prefix = subnet.prefix();
        if prefix == 0 {
            return Err(HostError::Unexpected(format!(
                "invalid container subnet {subnet}"
            )));
        }
        let mut exprs = ipv4_only();
        exprs.push(Expr::Payload {
            base: Base::Network,
            offset: 16,
            len: 4,
        });
        if prefix < 32 {
            exprs.push(Expr::Bitwise {
                mask: subnet.mask().octets().to_vec(),
                xor: vec![0; 4],
            });
        }
        exprs.push(Expr::Cmp {
            op: CmpOp::Eq,
            data: subnet.network().octets().to_vec(),
        });
        exprs.extend(allow_exprs());
        Ok(exprs)
    }

    /// [`Ruleset::container_script`] without the declarations (the globals are installed at
    /// start), as netlink batches: the container's table, then our table's elements. Every
    /// rule is checked before anything is built.
    pub fn container_batches(
        &self,
        c: &ContainerRules<'_>,
        netout: &[NetOutRule],
        ports: &[PortMapping],
    ) -> HostResult<[nftnl::Batch; 2]> {
        let netout = netout
            .iter()
            .map(|rule| netout_exprs(rule, c.handle))
            .collect::<HostResult<Vec<_>>>()?;
        let subnet = Self::subnet_allow(c.subnet)?;
        let netin = ports
            .iter()
            .map(|m| Self::netin_element(c, m))
            .collect::<HostResult<Vec<_>>>()?;
        let mut own = Self::container_batch_for(c);
        own.add_table();
        own.add_device_chain(c.chain, nftnl::HOOK_INGRESS, c.device, 0);
        own.flush_chain(c.chain);
        own.add_rule(c.chain, &subnet);
        for rule in &netout {
            own.insert_rule(c.chain, rule);
        }
        let mut shared = self.batch()?;
        shared.add_element("containers", &c.ip.octets(), None);
        for (key, data) in &netin {
            shared.add_element("netin", key, Some(data));
        }
        Ok([own, shared])
    }

    /// [`Ruleset::removal_script`]'s first part as a netlink batch: the container's chain,
    /// added (with its table) before it is flushed and deleted, so the removal succeeds
    /// whether or not it is still there. The table stays for other containers.
    pub fn removal_batch(&self, c: &ContainerRules<'_>) -> nftnl::Batch {
        let mut own = Self::container_batch_for(c);
        own.add_table();
        own.add_device_chain(c.chain, nftnl::HOOK_INGRESS, c.device, 0);
        own.flush_chain(c.chain);
        own.delete_chain(c.chain);
        own
    }

    /// [`Ruleset::removal_script`]'s second part (`forget_address`): the `containers` element,
    /// added before it is deleted.
    pub fn forget_batch(&self, c: &ContainerRules<'_>) -> HostResult<nftnl::Batch> {
        let mut shared = self.batch()?;
        shared.add_element("containers", &c.ip.octets(), None);
        shared.delete_element("containers", &c.ip.octets());
        Ok(shared)
    }

    /// [`Ruleset::ports_removal_script`] as a netlink batch (`None`: nothing valid to remove).
    /// Mappings with invalid ports are skipped, as the script skips them.
    pub fn ports_removal_batch(
        &self,
        c: &ContainerRules<'_>,
        ports: &[PortMapping],
    ) -> HostResult<Option<nftnl::Batch>> {
        let elements: Vec<_> = ports
            .iter()
            .filter_map(|m| Self::netin_element(c, m).ok())
            .collect();
        if elements.is_empty() {
            return Ok(None);
        }
        let mut batch = self.batch()?;
        for (key, data) in &elements {
            batch.add_element("netin", key, Some(data));
            batch.delete_element("netin", key);
        }
        Ok(Some(batch))
    }

    /// [`Ruleset::port_script`] as a netlink batch.
    pub fn port_batch(
        &self,
        c: &ContainerRules<'_>,
        mapping: &PortMapping,
    ) -> HostResult<nftnl::Batch> {
        let (key, data) = Self::netin_element(c, mapping)?;
        let mut batch = self.batch()?;
        batch.add_element("netin", &key, Some(&data));
        Ok(batch)
    }

    pub fn port_script(&self, c: &ContainerRules<'_>, mapping: &PortMapping) -> HostResult<String> {
        let host = port_number(mapping.host_port, "host")?;
        let container = port_number(mapping.container_port, "container")?;
        Ok(format!(
            "add element {} netin {{ {host} : {} . {container} }}\n",
            self.table, c.ip
        ))
    }
}

fn port_number(port: u32, which: &str) -> HostResult<u16> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(HostError::Invalid(format!("invalid {which} port {port}"))),
    }
}

/// Removes what the container owns, in two parts (see the module comment). Each element is
/// added before it is deleted, so a transaction succeeds whether or not it is still there.
impl Ruleset {
    /// The container's chain and (`forget_address`: no other container holds the address)
    /// its `containers` element.
    pub fn removal_script(&self, c: &ContainerRules<'_>, forget_address: bool) -> String {
        let t = &self.table;
        let own = Self::container_table(c);
        let chain = c.chain;
        let mut s = String::new();
        self.declarations(&mut s);
        let _ = writeln!(s, "add table {own}");
        let _ = writeln!(s, "{}", Self::chain_declaration(c));
        let _ = writeln!(s, "flush chain {own} {chain}");
        let _ = writeln!(s, "delete chain {own} {chain}");
        if forget_address {
            let _ = writeln!(s, "add element {t} containers {{ {} }}", c.ip);
            let _ = writeln!(s, "delete element {t} containers {{ {} }}", c.ip);
        }
        s
    }

    /// The container's port mappings.
    pub fn ports_removal_script(&self, c: &ContainerRules<'_>, ports: &[PortMapping]) -> String {
        let mut s = String::new();
        self.declarations(&mut s);
        for mapping in ports {
            if let Ok(p) = self.port_script(c, mapping) {
                s.push_str(&p);
                let _ = writeln!(
                    s,
                    "delete element {} netin {{ {} }}",
                    self.table, mapping.host_port
                );
            }
        }
        s
    }
}

/// A NetOut rule, checked and reduced to what it matches: the protocol, merged destination
/// ranges and port ranges (empty: any), the ICMP type and code, and whether to log.
struct NetOutMatch {
    /// nft's name, the IP protocol number, and the port field's keyword (tcp/udp only).
    protocol: Option<(&'static str, u8, Option<&'static str>)>,
    networks: Vec<(u32, u32)>,
    ports: Vec<(u32, u32)>,
    icmp: Option<IcmpControl>,
    log: bool,
}

impl NetOutMatch {
    /// Garden's own rules (`NetOutRule::validate`, which the core already applied) and then
    /// what this host cannot do: IPv6.
    fn parse(rule: &NetOutRule) -> HostResult<NetOutMatch> {
        let invalid = |m: String| HostError::Invalid(m);
        rule.validate().map_err(invalid)?;
        let protocol = match rule.protocol {
            Protocol::All => None,
            Protocol::Tcp => Some(("tcp", 6, Some("tcp dport"))),
            Protocol::Udp => Some(("udp", 17, Some("udp dport"))),
            Protocol::Icmp => Some(("icmp", 1, None)),
            Protocol::IcmpV6 => return Err(invalid("invalid protocol: 4".into())),
        };
        let has_ports = matches!(protocol, Some((_, _, Some(_))));
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
        let ports = if has_ports {
            rule.ports
                .iter()
                .map(|p| {
                    let end = if p.end == 0 { p.start } else { p.end };
                    (u32::from(p.start.min(end)), u32::from(p.start.max(end)))
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(NetOutMatch {
            protocol,
            networks: merged(networks),
            ports: merged(ports),
            icmp: rule.icmps,
            log: rule.log,
        })
    }
}

/// One NetOut rule as one nft rule: every network and port range of the rule goes into one
/// anonymous set, so a rule is one insertion however many ranges it has.
pub fn netout_rule(rule: &NetOutRule, handle: &str) -> HostResult<String> {
    let m = NetOutMatch::parse(rule)?;
    let mut out = String::new();
    if let Some((name, _, _)) = m.protocol {
        let _ = write!(out, "meta l4proto {name} ");
    }
    if !m.networks.is_empty() {
        let set = m
            .networks
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    Ipv4Addr::from(a).to_string()
                } else {
                    format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
                }
            })
            .collect::<Vec<_>>();
        let _ = write!(out, "ip daddr {{ {} }} ", set.join(", "));
    }
    if let Some((_, _, Some(keyword))) = m.protocol {
        if !m.ports.is_empty() {
            let set = m
                .ports
                .iter()
                .map(|&(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>();
            let _ = write!(out, "{keyword} {{ {} }} ", set.join(", "));
        }
    }
    if let Some(icmp) = m.icmp {
        let _ = write!(out, "icmp type {} ", icmp.kind);
        if let Some(code) = icmp.code {
            let _ = write!(out, "icmp code {code} ");
        }
    }
    if m.log {
        let _ = write!(out, "log prefix \"{} \" ", log_prefix(handle));
    }
    out.push_str(&allow_text());
    Ok(out)
}

/// What an egress rule does with what it matches: mark it allowed, and stop there.
fn allow_text() -> String {
    format!("meta mark set meta mark | {ALLOWED_MARK:#010x} accept")
}

/// [`allow_text`] as nft compiles it.
fn allow_exprs() -> Vec<Expr> {
    vec![
        Expr::MetaMark,
        Expr::Bitwise {
            mask: (!ALLOWED_MARK).to_ne_bytes().to_vec(),
            xor: ALLOWED_MARK.to_ne_bytes().to_vec(),
        },
        Expr::MetaSetMark,
        Expr::Accept,
    ]
}

/// `meta protocol ip`: what nft puts ahead of the first IPv4 header match in a netdev chain.
fn ipv4_only() -> Vec<Expr> {
    vec![
        Expr::MetaProtocol,
        Expr::Cmp {
            op: CmpOp::Eq,
            data: 0x0800u16.to_be_bytes().to_vec(),
        },
    ]
}

/// The same rule as nf_tables expressions, exactly those nft compiles [`netout_rule`]'s text
/// to (nft turns a one-element set into a plain comparison, or a pair of them for a range,
/// and matches an ICMP type and code with one two-byte comparison), so the kernel holds the
/// same rule either way. Still one kernel rule per NetOut rule: several ranges become an
/// anonymous set sent in the same batch.
pub fn netout_exprs(rule: &NetOutRule, handle: &str) -> HostResult<Vec<Expr>> {
    let m = NetOutMatch::parse(rule)?;
    let mut exprs = Vec::new();
    if let Some((_, number, _)) = m.protocol {
        exprs.push(Expr::MetaL4proto);
        exprs.push(Expr::Cmp {
            op: CmpOp::Eq,
            data: vec![number],
        });
    }
    let matching = |exprs: &mut Vec<Expr>, ranges: &[(u32, u32)], key: SetKey| {
        let bytes = |v: u32| match key {
            SetKey::Ipv4Daddr => v.to_be_bytes().to_vec(),
            SetKey::TcpDport | SetKey::UdpDport => (v as u16).to_be_bytes().to_vec(),
        };
        match ranges {
            [(a, b)] if a == b => exprs.push(Expr::Cmp {
                op: CmpOp::Eq,
                data: bytes(*a),
            }),
            [(a, b)] => {
                exprs.push(Expr::Cmp {
                    op: CmpOp::Gte,
                    data: bytes(*a),
                });
                exprs.push(Expr::Cmp {
                    op: CmpOp::Lte,
                    data: bytes(*b),
                });
            }
            _ => exprs.push(Expr::Lookup(AnonSet {
                key,
                ranges: ranges.iter().map(|&(a, b)| (bytes(a), bytes(b))).collect(),
            })),
        }
    };
    if !m.networks.is_empty() {
        exprs.extend(ipv4_only());
        exprs.push(Expr::Payload {
            base: Base::Network,
            offset: 16,
            len: 4,
        });
        matching(&mut exprs, &m.networks, SetKey::Ipv4Daddr);
    }
    if !m.ports.is_empty() {
        let key = match m.protocol {
            Some((_, 6, _)) => SetKey::TcpDport,
            _ => SetKey::UdpDport,
        };
        exprs.push(Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
        });
        matching(&mut exprs, &m.ports, key);
    }
    if let Some(icmp) = m.icmp {
        let mut data = vec![icmp.kind];
        data.extend(icmp.code);
        exprs.push(Expr::Payload {
            base: Base::Transport,
            offset: 0,
            len: data.len() as u32,
        });
        exprs.push(Expr::Cmp {
            op: CmpOp::Eq,
            data,
        });
    }
    if m.log {
        exprs.push(Expr::Log {
            prefix: format!("{} ", log_prefix(handle)),
        });
    }
    exprs.extend(allow_exprs());
    Ok(exprs)
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

impl Firewall {
    pub fn new(ruleset: Ruleset) -> Firewall {
        Firewall { ruleset }
    }

    pub fn install_globals(&self, settings: &FirewallSettings) -> HostResult<()> {
        run_nft("install firewall", &self.ruleset.globals_script(settings))
    }

    /// Builds the container's table with its create-time NetOut rules, and publishes its
    /// address and port mappings, as nf_tables netlink batches (the same kernel state as
    /// [`Ruleset::container_script`], without `nft` reading the whole table first).
    pub fn add_container(
        &self,
        c: &ContainerRules<'_>,
        netout: &[NetOutRule],
        ports: &[PortMapping],
    ) -> HostResult<()> {
        let [own, shared] = self.ruleset.container_batches(c, netout, ports)?;
        let context = || format!("set up firewall for {}", c.handle);
        nftnl::send(own).map_err(|e| e.context(context()))?;
        nftnl::send(shared).map_err(|e| {
            if e.errno() == Some(Errno::EEXIST) && !ports.is_empty() {
                HostError::Invalid(format!(
                    "a host port of {:?} is already mapped to another container",
                    ports.iter().map(|p| p.host_port).collect::<Vec<_>>()
                ))
            } else {
                e.context(context())
            }
        })
    }

    /// Inserts NetOut rules at the head of the container's chain, in one nf_tables netlink
    /// batch (not through `nft`, which would first read the whole table: this way the cost
    /// does not grow with the number of containers). The rules end up in the same order as
    /// [`Ruleset::netout_script`]'s `insert rule` lines would put them.
    pub fn add_netout(&self, c: &ContainerRules<'_>, rules: &[NetOutRule]) -> HostResult<()> {
        let batch = self.ruleset.netout_batch(c, rules)?;
        let Some(batch) = batch else {
            return Ok(());
        };
        nftnl::send(batch).map_err(|e| e.context(format!("add net-out rules for {}", c.handle)))
    }

    /// Publishes one more port mapping: one netlink batch with the same element as
    /// [`Ruleset::port_script`].
    pub fn map_port(&self, c: &ContainerRules<'_>, mapping: &PortMapping) -> HostResult<()> {
        let batch = self.ruleset.port_batch(c, mapping)?;
        nftnl::send(batch).map_err(|e| {
            if e.errno() == Some(Errno::EEXIST) {
                HostError::Invalid(format!(
                    "host port {} is already mapped to another container",
                    mapping.host_port
                ))
            } else {
                e.context(format!("map port for {}", c.handle))
            }
        })
    }

    /// Removes the container's port mappings (one batch; should a recorded host port since
    /// have gone to another container, its element differs and cannot be re-added, so each
    /// port is then removed on its own, leaving others' alone).
    pub fn remove_ports(&self, c: &ContainerRules<'_>, ports: &[PortMapping]) -> HostResult<()> {
        let Some(batch) = self.ruleset.ports_removal_batch(c, ports)? else {
            return Ok(());
        };
        if nftnl::send(batch).is_ok() {
            return Ok(());
        }
        for mapping in ports {
            if let Some(batch) = self
                .ruleset
                .ports_removal_batch(c, std::slice::from_ref(mapping))?
            {
                let _ = nftnl::send(batch);
            }
        }
        Ok(())
    }

    /// Deletes the chains in the netdev tables named `<prefix>...` for which `keep` says no
    /// (those of containers a crash or a lost state left behind). Listed with `nft`, once at
    /// start.
    pub fn remove_chains_unless(
        &self,
        prefix: &str,
        keep: impl Fn(&str) -> bool,
    ) -> HostResult<()> {
        let output = std::process::Command::new("nft")
            .args(["list", "chains", "netdev"])
            .output()
            .map_err(|e| HostError::io("run nft list chains", e))?;
        let listing = String::from_utf8_lossy(&output.stdout);
        let mut table = None;
        let mut script = String::new();
        for line in listing.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix("table netdev ") {
                table = name
                    .trim_end_matches(" {")
                    .starts_with(prefix)
                    .then(|| name.trim_end_matches(" {").to_string());
            } else if let (Some(table), Some(chain)) = (&table, line.strip_prefix("chain ")) {
                let chain = chain.trim_end_matches(" {");
                if !keep(chain) {
                    let _ = writeln!(script, "flush chain netdev {table} {chain}");
                    let _ = writeln!(script, "delete chain netdev {table} {chain}");
                }
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        run_nft("remove orphaned container chains", &script)
    }

    /// Removes the container's egress chain.
    pub fn remove_container(&self, c: &ContainerRules<'_>) -> HostResult<()> {
        self.send_removal(c, self.ruleset.removal_batch(c))
    }

    /// Removes the container's `containers` element (when no other container holds its
    /// address).
    pub fn forget_address(&self, c: &ContainerRules<'_>) -> HostResult<()> {
        self.send_removal(c, self.ruleset.forget_batch(c)?)
    }

    fn send_removal(&self, c: &ContainerRules<'_>, batch: nftnl::Batch) -> HostResult<()> {
        nftnl::send(batch).map_err(|e| e.context(format!("remove firewall of {}", c.handle)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::api::{IcmpControl, IpRange, PortRange};

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
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
            netout_rule(&rule, "my app").unwrap(),
            "meta l4proto tcp ip daddr { 10.0.0.1-10.0.0.5, 10.1.0.0-10.1.0.255 } \
             tcp dport { 80, 8080-9000 } log prefix \"my_app \" \
             meta mark set meta mark | 0x00100000 accept"
        );
    }

    #[test]
    fn all_and_icmp_rules() {
        assert_eq!(
            netout_rule(&NetOutRule::default(), "h").unwrap(),
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
            netout_rule(&icmp, "h").unwrap(),
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
        let script = ruleset().removal_script(&container(), true);
        assert!(script.contains("delete chain netdev trellis-egress-9 c-0123456789\n"));
        assert!(!script.contains("delete table"));
        assert!(script.contains("delete element ip trellis containers { 10.254.0.1 }"));
        assert!(!script.contains("flush chain ip trellis forward_filter"));
        assert!(!script.contains("element ip trellis netin"));
        let kept = ruleset().removal_script(&container(), false);
        assert!(!kept.contains("element ip trellis containers"), "{kept}");

        let ports = ruleset().ports_removal_script(
            &container(),
            &[PortMapping {
                host_port: 61001,
                container_port: 8080,
            }],
        );
        assert!(ports.contains("add element ip trellis netin { 61001 : 10.254.0.1 . 8080 }"));
        assert!(ports.contains("delete element ip trellis netin { 61001 }"));
        assert!(!ports.contains("c-0123456789"));
    }

    #[test]
    fn the_egress_chain_hooks_the_host_veth_and_marks_only_what_it_allows() {
        let script = ruleset().container_script(&container(), &[], &[]).unwrap();
        assert!(script.contains(
            "add chain netdev trellis-egress-9 c-0123456789 { type filter hook ingress device \"trv0123456789-0\" priority 0; policy accept; }"
        ), "{script}");
        assert!(script.contains(
            "add rule netdev trellis-egress-9 c-0123456789 ip daddr 10.254.0.0/30 meta mark set meta mark | 0x00100000 accept"
        ), "{script}");
        // The policy accepts unmarked traffic here; forward_filter rejects what lacks the mark.
        let globals = ruleset().globals_script(&FirewallSettings::default());
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

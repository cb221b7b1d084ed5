//! The one representation of what the firewall changes for a container: typed transactions
//! of table, chain, rule and element changes. Production renders them as nf_tables netlink
//! batches ([`Transaction::batch`]); the tests render the same transactions as `nft` scripts
//! ([`Transaction::script`]) and check that both leave the kernel in the same state.

use super::ALLOWED_MARK;
use crate::linux::network::nftnl::{self, AnonSet, Base, CmpOp, ElemData, Expr, SetKey};
use ipnetwork::Ipv4Network;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `ip`: our shared table.
    Ip,
    /// `netdev`: the tables of containers' egress chains.
    Netdev,
}

impl Family {
    fn keyword(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Netdev => "netdev",
        }
    }

    fn number(self) -> u8 {
        match self {
            Family::Ip => nftnl::FAMILY_IPV4,
            Family::Netdev => nftnl::FAMILY_NETDEV,
        }
    }
}

/// Changes to one table, applied whole or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub family: Family,
    pub table: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The table, unless it exists.
    AddTable,
    /// A base chain on `device`'s ingress hook (priority 0, policy accept), unless it exists.
    AddIngressChain {
        chain: String,
        device: String,
    },
    FlushChain(String),
    /// The chain, which must exist and be empty.
    DeleteChain(String),
    /// The rule, at the end of the chain.
    AppendRule {
        chain: String,
        rule: Rule,
    },
    /// The rule, at the head of the chain.
    InsertRule {
        chain: String,
        rule: Rule,
    },
    /// The element; the same element already there is no error, the same key with other
    /// data is (EEXIST).
    AddElement(Element),
    /// The element, which must exist.
    DeleteElement(Element),
}

/// An element of a set or map of our shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// `containers { <ip> }`: a container address, masqueraded when it reaches a published
    /// port (hairpin).
    Container(Ipv4Addr),
    /// `netin { <host port> : <ip> . <port> }`: a published port.
    NetIn {
        host_port: u16,
        ip: Ipv4Addr,
        port: u16,
    },
}

/// An egress rule: packets matching every match are marked allowed (after being logged, with
/// a log prefix) and accepted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub log_prefix: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Icmp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Icmp => "icmp",
        }
    }

    fn number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
            Transport::Icmp => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `meta l4proto <protocol>`
    Protocol(Transport),
    /// `ip daddr <network>/<prefix>`
    DestinationNetwork(Ipv4Network),
    /// `ip daddr { <ranges> }`: sorted, disjoint, non-touching inclusive ranges.
    DestinationRanges(Vec<(Ipv4Addr, Ipv4Addr)>),
    /// `tcp dport { <ranges> }` or `udp dport ...` (not ICMP), ranges as above.
    DestinationPorts(Transport, Vec<(u16, u16)>),
    /// `icmp type <kind> [icmp code <code>]`
    Icmp { kind: u8, code: Option<u8> },
}

impl Transaction {
    pub fn new(family: Family, table: &str) -> Transaction {
        Transaction {
            family,
            table: table.into(),
            changes: Vec::new(),
        }
    }

    /// As an `nft -f` script.
    pub fn script(&self) -> String {
        let table = format!("{} {}", self.family.keyword(), self.table);
        let mut s = String::new();
        for change in &self.changes {
            let _ = match change {
                Change::AddTable => writeln!(s, "add table {table}"),
                Change::AddIngressChain { chain, device } => writeln!(
                    s,
                    "add chain {table} {chain} {{ type filter hook ingress device \"{device}\" \
                     priority 0; policy accept; }}"
                ),
                Change::FlushChain(chain) => writeln!(s, "flush chain {table} {chain}"),
                Change::DeleteChain(chain) => writeln!(s, "delete chain {table} {chain}"),
                Change::AppendRule { chain, rule } => {
                    writeln!(s, "add rule {table} {chain} {}", rule.text())
                }
                Change::InsertRule { chain, rule } => {
                    writeln!(s, "insert rule {table} {chain} {}", rule.text())
                }
                Change::AddElement(element) => {
                    writeln!(s, "add element {table} {}", element.text(true))
                }
                Change::DeleteElement(element) => {
                    writeln!(s, "delete element {table} {}", element.text(false))
                }
            };
        }
        s
    }

    /// As an nf_tables netlink batch.
    pub fn batch(&self) -> nftnl::Batch {
        let mut batch = nftnl::Batch::new(self.family.number(), &self.table, 1);
        for change in &self.changes {
            match change {
                Change::AddTable => batch.add_table(),
                Change::AddIngressChain { chain, device } => {
                    batch.add_device_chain(chain, nftnl::HOOK_INGRESS, device, 0)
                }
                Change::FlushChain(chain) => batch.flush_chain(chain),
                Change::DeleteChain(chain) => batch.delete_chain(chain),
                Change::AppendRule { chain, rule } => batch.add_rule(chain, &rule.exprs()),
                Change::InsertRule { chain, rule } => batch.insert_rule(chain, &rule.exprs()),
                Change::AddElement(element) => {
                    let (set, key, data) = element.encoded();
                    batch.add_element(set, &key, data.as_ref())
                }
                Change::DeleteElement(element) => {
                    let (set, key, _) = element.encoded();
                    batch.delete_element(set, &key)
                }
            }
        }
        batch
    }
}

impl Element {
    /// `<set> { <key> }`, with the data when `with_data` (an addition names it, a deletion
    /// the key only).
    fn text(&self, with_data: bool) -> String {
        match *self {
            Element::Container(ip) => format!("containers {{ {ip} }}"),
            Element::NetIn {
                host_port,
                ip,
                port,
                ..
            } if with_data => format!("netin {{ {host_port} : {ip} . {port} }}"),
            Element::NetIn { host_port, .. } => format!("netin {{ {host_port} }}"),
        }
    }

    /// The set's name, the key and the data as the kernel stores them.
    fn encoded(&self) -> (&'static str, Vec<u8>, Option<ElemData>) {
        match *self {
            Element::Container(ip) => ("containers", ip.octets().to_vec(), None),
            Element::NetIn {
                host_port,
                ip,
                port,
                ..
            } => (
                "netin",
                host_port.to_be_bytes().to_vec(),
                Some(ElemData::Value(nftnl::concat(&[
                    &ip.octets(),
                    &port.to_be_bytes(),
                ]))),
            ),
        }
    }
}

impl Rule {
    /// In nft's syntax.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for m in &self.matches {
            match m {
                Match::Protocol(p) => write!(out, "meta l4proto {} ", p.name()),
                Match::DestinationNetwork(network) => write!(out, "ip daddr {network} "),
                Match::DestinationRanges(ranges) => {
                    write!(out, "ip daddr {{ {} }} ", set_text(ranges))
                }
                Match::DestinationPorts(p, ranges) => {
                    write!(out, "{} dport {{ {} }} ", p.name(), set_text(ranges))
                }
                Match::Icmp { kind, code } => match code {
                    Some(code) => write!(out, "icmp type {kind} icmp code {code} "),
                    None => write!(out, "icmp type {kind} "),
                },
            }
            .expect("writing to a string");
        }
        if let Some(prefix) = &self.log_prefix {
            let _ = write!(out, "log prefix \"{prefix}\" ");
        }
        let _ = write!(out, "meta mark set meta mark | {ALLOWED_MARK:#010x} accept");
        out
    }

    /// The expressions nft compiles [`Rule::text`] to in a netdev chain (nft turns a
    /// one-element set into a plain comparison, or a pair of them for a range, puts a check
    /// for IPv4 ahead of an IPv4 header match, and matches an ICMP type and code with one
    /// two-byte comparison), so the kernel holds the same rule either way. Several ranges
    /// become an anonymous set sent in the same batch.
    pub fn exprs(&self) -> Vec<Expr> {
        let mut exprs = Vec::new();
        for m in &self.matches {
            match m {
                Match::Protocol(p) => {
                    exprs.push(Expr::MetaL4proto);
                    exprs.push(Expr::Cmp {
                        op: CmpOp::Eq,
                        data: vec![p.number()],
                    });
                }
                Match::DestinationNetwork(network) => {
                    exprs.extend(destination_address());
                    if network.prefix() < 32 {
                        exprs.push(Expr::Bitwise {
                            mask: network.mask().octets().to_vec(),
                            xor: vec![0; 4],
                        });
                    }
                    exprs.push(Expr::Cmp {
                        op: CmpOp::Eq,
                        data: network.network().octets().to_vec(),
                    });
                }
                Match::DestinationRanges(ranges) => {
                    exprs.extend(destination_address());
                    let bytes = |ip: Ipv4Addr| ip.octets().to_vec();
                    exprs.extend(ranges_exprs(ranges, SetKey::Ipv4Daddr, bytes));
                }
                Match::DestinationPorts(p, ranges) => {
                    exprs.push(Expr::Payload {
                        base: Base::Transport,
                        offset: 2,
                        len: 2,
                    });
                    let key = match p {
                        Transport::Tcp => SetKey::TcpDport,
                        _ => SetKey::UdpDport,
                    };
                    let bytes = |port: u16| port.to_be_bytes().to_vec();
                    exprs.extend(ranges_exprs(ranges, key, bytes));
                }
                Match::Icmp { kind, code } => {
                    let mut data = vec![*kind];
                    data.extend(code);
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
            }
        }
        if let Some(prefix) = &self.log_prefix {
            exprs.push(Expr::Log {
                prefix: prefix.clone(),
            });
        }
        exprs.extend([
            Expr::MetaMark,
            Expr::Bitwise {
                mask: (!ALLOWED_MARK).to_ne_bytes().to_vec(),
                xor: ALLOWED_MARK.to_ne_bytes().to_vec(),
            },
            Expr::MetaSetMark,
            Expr::Accept,
        ]);
        exprs
    }
}

/// `a, b-c, ...`
fn set_text<T: PartialEq + std::fmt::Display>(ranges: &[(T, T)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `meta protocol ip` (what nft puts ahead of an IPv4 header match in a netdev chain), then
/// the destination address loaded.
fn destination_address() -> [Expr; 3] {
    [
        Expr::MetaProtocol,
        Expr::Cmp {
            op: CmpOp::Eq,
            data: 0x0800u16.to_be_bytes().to_vec(),
        },
        Expr::Payload {
            base: Base::Network,
            offset: 16,
            len: 4,
        },
    ]
}

/// The comparison of the loaded value with `ranges`, as nft compiles a set of them.
fn ranges_exprs<T: Copy + PartialEq>(
    ranges: &[(T, T)],
    key: SetKey,
    bytes: impl Fn(T) -> Vec<u8>,
) -> Vec<Expr> {
    match ranges {
        [(a, b)] if a == b => vec![Expr::Cmp {
            op: CmpOp::Eq,
            data: bytes(*a),
        }],
        [(a, b)] => vec![
            Expr::Cmp {
                op: CmpOp::Gte,
                data: bytes(*a),
            },
            Expr::Cmp {
                op: CmpOp::Lte,
                data: bytes(*b),
            },
        ],
        _ => vec![Expr::Lookup(AnonSet {
            key,
            ranges: ranges.iter().map(|&(a, b)| (bytes(a), bytes(b))).collect(),
        })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_as_nft_writes_it() {
        let rule = Rule {
            matches: vec![
                Match::Protocol(Transport::Tcp),
                Match::DestinationRanges(vec![
                    ("10.0.0.1".parse().unwrap(), "10.0.0.5".parse().unwrap()),
                    ("10.1.0.7".parse().unwrap(), "10.1.0.7".parse().unwrap()),
                ]),
                Match::DestinationPorts(Transport::Tcp, vec![(80, 80), (8080, 9000)]),
            ],
            log_prefix: Some("my_app ".into()),
        };
        assert_eq!(
            rule.text(),
            "meta l4proto tcp ip daddr { 10.0.0.1-10.0.0.5, 10.1.0.7 } \
             tcp dport { 80, 8080-9000 } log prefix \"my_app \" \
             meta mark set meta mark | 0x00100000 accept"
        );
    }

    #[test]
    fn one_range_is_compared_and_several_are_looked_up() {
        let ports = |ranges| Rule {
            matches: vec![Match::DestinationPorts(Transport::Udp, ranges)],
            log_prefix: None,
        };
        let exprs = ports(vec![(53, 53)]).exprs();
        assert!(matches!(&exprs[1], Expr::Cmp { op: CmpOp::Eq, data } if data == &[0, 53]));
        let exprs = ports(vec![(1000, 2000)]).exprs();
        assert!(matches!(&exprs[1], Expr::Cmp { op: CmpOp::Gte, .. }));
        assert!(matches!(&exprs[2], Expr::Cmp { op: CmpOp::Lte, .. }));
        let exprs = ports(vec![(53, 53), (1000, 2000)]).exprs();
        assert!(
            matches!(&exprs[1], Expr::Lookup(set) if set.key == SetKey::UdpDport && set.ranges.len() == 2)
        );
    }

    #[test]
    fn elements_name_their_data_only_when_added() {
        let mut t = Transaction::new(Family::Ip, "trellis");
        let netin = Element::NetIn {
            host_port: 61001,
            ip: Ipv4Addr::new(10, 254, 0, 1),
            port: 8080,
        };
        t.changes.push(Change::AddElement(netin));
        t.changes.push(Change::DeleteElement(netin));
        assert_eq!(
            t.script(),
            "add element ip trellis netin { 61001 : 10.254.0.1 . 8080 }\n\
             delete element ip trellis netin { 61001 }\n"
        );
    }
}

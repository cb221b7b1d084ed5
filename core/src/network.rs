//! Subnet and IP allocation with Garden's `network` spec rules.
//!
//! - `""`: a free /30 from the pool;
//! - `a.b.c.d/n` with the host bits zero: a free IP in that subnet, which several containers share;
//! - `a.b.c.d/n` otherwise: exactly that IP.
//!
//! A subnet never hands out its network address, its broadcast address, or the address one below
//! broadcast, which is the gateway (the host side of the container's link).
//!
//! A subnet asked for must not overlap a range the host treats specially whatever its
//! configuration ([`SPECIAL_RANGES`]: "this network", loopback, link-local, multicast, limited
//! broadcast), nor one of the host's own networks (given by the server as configuration): the
//! container's link and routes would take over traffic that belongs elsewhere. Neither may the
//! pool ([`check_pool`], at start).

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use thiserror::Error;

/// The prefix of the subnets carved out of the pool.
pub const POOL_SUBNET_PREFIX: u8 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkRequest {
    Pool,
    AnyIpIn(Ipv4Network),
    Exact { subnet: Ipv4Network, ip: Ipv4Addr },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetworkError {
    #[error("invalid network spec '{spec}': expected an IPv4 address or CIDR such as 10.2.0.0/24")]
    Unparseable { spec: String },
    #[error("invalid network spec '{spec}': a /{prefix} subnet has no address for a container")]
    SubnetTooSmall { spec: String, prefix: u8 },
    #[error("invalid network spec '{spec}': {ip} is the {role} address of {subnet}")]
    ReservedAddress {
        spec: String,
        ip: Ipv4Addr,
        role: &'static str,
        subnet: Ipv4Network,
    },
    #[error("the requested subnet {subnet} overlaps the dynamic allocation range {pool}")]
    OverlapsPool {
        subnet: Ipv4Network,
        pool: Ipv4Network,
    },
    #[error("the requested subnet {subnet} overlaps subnet {existing}, which is already in use")]
    OverlapsSubnet {
        subnet: Ipv4Network,
        existing: Ipv4Network,
    },
    #[error("the requested IP {ip} is already allocated")]
    IpTaken { ip: Ipv4Addr },
    #[error("no IP addresses are left in subnet {subnet}")]
    SubnetFull { subnet: Ipv4Network },
    #[error("insufficient subnets remaining in the pool {pool}")]
    PoolExhausted { pool: Ipv4Network },
    #[error("the requested subnet {subnet} overlaps {overlaps}, which containers cannot use")]
    Forbidden {
        subnet: Ipv4Network,
        overlaps: Forbidden,
    },
}

/// Ranges no container subnet may overlap on any host, with what they are.
pub const SPECIAL_RANGES: [([u8; 4], u8, &str); 5] = [
    ([0, 0, 0, 0], 8, "\"this network\""),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([255, 255, 255, 255], 32, "limited broadcast"),
];

/// What a subnet overlaps that containers cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forbidden {
    /// One of [`SPECIAL_RANGES`].
    Special {
        range: Ipv4Network,
        what: &'static str,
    },
    /// One of the host's own networks.
    Host { network: Ipv4Network },
}

impl std::fmt::Display for Forbidden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forbidden::Special { range, what } => write!(f, "{range} ({what})"),
            Forbidden::Host { network } => write!(f, "{network} (a network of this host)"),
        }
    }
}

/// The first range `subnet` overlaps that containers cannot use, if any.
pub fn forbidden_overlap(subnet: Ipv4Network, host_networks: &[Ipv4Network]) -> Option<Forbidden> {
    let special = SPECIAL_RANGES.iter().find_map(|&(address, prefix, what)| {
        let range = Ipv4Network::new(Ipv4Addr::from(address), prefix)
            .expect("special ranges are valid networks");
        overlaps(subnet, range).then_some(Forbidden::Special { range, what })
    });
    special.or_else(|| {
        host_networks
            .iter()
            .find(|n| overlaps(subnet, **n))
            .map(|&network| Forbidden::Host { network })
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("the network pool {pool} overlaps {overlaps}, which containers cannot use")]
pub struct PoolForbidden {
    pub pool: Ipv4Network,
    pub overlaps: Forbidden,
}

/// A pool (`--network-pool`) must not overlap what containers cannot use either.
pub fn check_pool(pool: Ipv4Network, host_networks: &[Ipv4Network]) -> Result<(), PoolForbidden> {
    match forbidden_overlap(pool, host_networks) {
        Some(overlaps) => Err(PoolForbidden { pool, overlaps }),
        None => Ok(()),
    }
}

/// What a container holds: its subnet and its address in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAssignment {
    pub subnet: Ipv4Network,
    pub container_ip: Ipv4Addr,
}

impl NetworkAssignment {
    /// The host side of the container's link: one below broadcast.
    pub fn gateway_ip(&self) -> Ipv4Addr {
        gateway(self.subnet)
    }
}

pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.broadcast()) - 1)
}

pub fn parse(spec: &str) -> Result<NetworkRequest, NetworkError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(NetworkRequest::Pool);
    }
    let unparseable = || NetworkError::Unparseable {
        spec: spec.to_string(),
    };
    // A bare address means that address in its /30, as gdn reads it.
    let with_prefix = if spec.contains('/') {
        spec.to_string()
    } else {
        format!("{spec}/{POOL_SUBNET_PREFIX}")
    };
    let given: Ipv4Network = with_prefix.parse().map_err(|_| unparseable())?;
    if given.prefix() > POOL_SUBNET_PREFIX {
        return Err(NetworkError::SubnetTooSmall {
            spec: spec.to_string(),
            prefix: given.prefix(),
        });
    }
    let subnet = Ipv4Network::new(given.network(), given.prefix()).map_err(|_| unparseable())?;
    let ip = given.ip();
    if ip == subnet.network() {
        return Ok(NetworkRequest::AnyIpIn(subnet));
    }
    let role = if ip == subnet.broadcast() {
        Some("broadcast")
    } else if ip == gateway(subnet) {
        Some("gateway")
    } else {
        None
    };
    if let Some(role) = role {
        return Err(NetworkError::ReservedAddress {
            spec: spec.to_string(),
            ip,
            role,
            subnet,
        });
    }
    Ok(NetworkRequest::Exact { subnet, ip })
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SubnetUse {
    ips: BTreeSet<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAllocator {
    pool: Ipv4Network,
    /// The host's own networks, which no static subnet may overlap.
    host_networks: Vec<Ipv4Network>,
    /// Every subnet with at least one container, keyed by network address.
    subnets: BTreeMap<Ipv4Network, SubnetUse>,
    /// Test-only fault: hand out an address that is already taken.
    double_alloc_bug: bool,
}

impl NetworkAllocator {
    pub fn new(pool: Ipv4Network) -> NetworkAllocator {
        NetworkAllocator {
            pool,
            host_networks: Vec::new(),
            subnets: BTreeMap::new(),
            double_alloc_bug: false,
        }
    }

    /// Static subnets overlapping any of `networks` are refused.
    pub fn with_host_networks(mut self, networks: Vec<Ipv4Network>) -> NetworkAllocator {
        self.host_networks = networks;
        self
    }

    pub fn inject_double_alloc_bug(&mut self) {
        self.double_alloc_bug = true;
    }

    pub fn pool(&self) -> Ipv4Network {
        self.pool
    }

    /// How many /30 subnets the pool holds, which bounds how many pool containers can exist.
    pub fn pool_capacity(&self) -> u64 {
        if self.pool.prefix() > POOL_SUBNET_PREFIX {
            0
        } else {
            1u64 << (POOL_SUBNET_PREFIX - self.pool.prefix())
        }
    }

    pub fn allocate(&mut self, request: NetworkRequest) -> Result<NetworkAssignment, NetworkError> {
        let assignment = match request {
            NetworkRequest::Pool => self.free_pool_subnet()?,
            NetworkRequest::AnyIpIn(subnet) => {
                self.check_static_subnet(subnet)?;
                let ip = self.free_ip_in(subnet)?;
                NetworkAssignment {
                    subnet,
                    container_ip: ip,
                }
            }
            NetworkRequest::Exact { subnet, ip } => {
                self.check_static_subnet(subnet)?;
                let taken = self
                    .subnets
                    .get(&subnet)
                    .is_some_and(|u| u.ips.contains(&ip));
                if taken && !self.double_alloc_bug {
                    return Err(NetworkError::IpTaken { ip });
                }
                NetworkAssignment {
                    subnet,
                    container_ip: ip,
                }
            }
        };
        self.subnets
            .entry(assignment.subnet)
            .or_default()
            .ips
            .insert(assignment.container_ip);
        Ok(assignment)
    }

    /// Re-takes an allocation recorded before a restart. Fails if it clashes with one already held.
    pub fn claim(&mut self, assignment: NetworkAssignment) -> Result<(), NetworkError> {
        if let Some((&existing, _)) = self
            .subnets
            .iter()
            .find(|(s, _)| **s != assignment.subnet && overlaps(**s, assignment.subnet))
        {
            return Err(NetworkError::OverlapsSubnet {
                subnet: assignment.subnet,
                existing,
            });
        }
        let inserted = self
            .subnets
            .entry(assignment.subnet)
            .or_default()
            .ips
            .insert(assignment.container_ip);
        if inserted {
            Ok(())
        } else {
            Err(NetworkError::IpTaken {
                ip: assignment.container_ip,
            })
        }
    }

    pub fn release(&mut self, assignment: NetworkAssignment) {
        if let Some(used) = self.subnets.get_mut(&assignment.subnet) {
            used.ips.remove(&assignment.container_ip);
            if used.ips.is_empty() {
                self.subnets.remove(&assignment.subnet);
            }
        }
    }

    /// Every (subnet, ip) currently held, in order.
    pub fn allocations(&self) -> Vec<NetworkAssignment> {
        self.subnets
            .iter()
            .flat_map(|(subnet, used)| {
                used.ips.iter().map(move |ip| NetworkAssignment {
                    subnet: *subnet,
                    container_ip: *ip,
                })
            })
            .collect()
    }

    fn free_pool_subnet(&self) -> Result<NetworkAssignment, NetworkError> {
        let base = u32::from(self.pool.network());
        let size = 1u32 << (32 - POOL_SUBNET_PREFIX);
        for index in 0..self.pool_capacity() as u32 {
            let network = Ipv4Addr::from(base + index * size);
            let subnet =
                Ipv4Network::new(network, POOL_SUBNET_PREFIX).expect("a /30 is a valid prefix");
            if self.double_alloc_bug || !self.subnets.contains_key(&subnet) {
                return Ok(NetworkAssignment {
                    subnet,
                    container_ip: Ipv4Addr::from(base + index * size + 1),
                });
            }
        }
        Err(NetworkError::PoolExhausted { pool: self.pool })
    }

    fn check_static_subnet(&self, subnet: Ipv4Network) -> Result<(), NetworkError> {
        if let Some(overlaps) = forbidden_overlap(subnet, &self.host_networks) {
            return Err(NetworkError::Forbidden { subnet, overlaps });
        }
        if overlaps(subnet, self.pool) {
            return Err(NetworkError::OverlapsPool {
                subnet,
                pool: self.pool,
            });
        }
        if let Some(existing) = self
            .subnets
            .keys()
            .find(|s| **s != subnet && overlaps(**s, subnet))
        {
            return Err(NetworkError::OverlapsSubnet {
                subnet,
                existing: *existing,
            });
        }
        Ok(())
    }

    fn free_ip_in(&self, subnet: Ipv4Network) -> Result<Ipv4Addr, NetworkError> {
        let used = self.subnets.get(&subnet);
        let first = u32::from(subnet.network()) + 1;
        let gateway = u32::from(gateway(subnet));
        (first..gateway)
            .map(Ipv4Addr::from)
            .find(|ip| self.double_alloc_bug || !used.is_some_and(|u| u.ips.contains(ip)))
            .ok_or(NetworkError::SubnetFull { subnet })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    fn pool() -> NetworkAllocator {
        NetworkAllocator::new(net("10.254.0.0/22"))
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(parse(""), Ok(NetworkRequest::Pool));
        assert_eq!(
            parse("10.2.0.0/24"),
            Ok(NetworkRequest::AnyIpIn(net("10.2.0.0/24")))
        );
        assert_eq!(
            parse("10.2.0.7/24"),
            Ok(NetworkRequest::Exact {
                subnet: net("10.2.0.0/24"),
                ip: "10.2.0.7".parse().unwrap()
            })
        );
        assert!(matches!(
            parse("10.2.0.255/24"),
            Err(NetworkError::ReservedAddress {
                role: "broadcast",
                ..
            })
        ));
        assert!(matches!(
            parse("10.2.0.254/24"),
            Err(NetworkError::ReservedAddress {
                role: "gateway",
                ..
            })
        ));
        assert!(matches!(
            parse("10.2.0.0/31"),
            Err(NetworkError::SubnetTooSmall { .. })
        ));
        assert_eq!(
            parse("10.2.0.5"),
            Ok(NetworkRequest::Exact {
                subnet: net("10.2.0.4/30"),
                ip: "10.2.0.5".parse().unwrap()
            }),
            "a bare address is taken in its /30"
        );
        assert!(matches!(
            parse("banana/24"),
            Err(NetworkError::Unparseable { .. })
        ));
        assert!(matches!(
            parse("::1/64"),
            Err(NetworkError::Unparseable { .. })
        ));
    }

    #[test]
    fn pool_hands_out_distinct_slash_30s_with_the_first_host_address() {
        let mut alloc = pool();
        let a = alloc.allocate(NetworkRequest::Pool).unwrap();
        let b = alloc.allocate(NetworkRequest::Pool).unwrap();
        assert_eq!(a.subnet, net("10.254.0.0/30"));
        assert_eq!(a.container_ip, "10.254.0.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(a.gateway_ip(), "10.254.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(b.subnet, net("10.254.0.4/30"));
        assert_eq!(alloc.pool_capacity(), 256);
    }

    #[test]
    fn pool_exhaustion_is_an_error_and_release_frees() {
        let mut alloc = NetworkAllocator::new(net("10.254.0.0/29"));
        let a = alloc.allocate(NetworkRequest::Pool).unwrap();
        alloc.allocate(NetworkRequest::Pool).unwrap();
        assert!(matches!(
            alloc.allocate(NetworkRequest::Pool),
            Err(NetworkError::PoolExhausted { .. })
        ));
        alloc.release(a);
        assert_eq!(alloc.allocate(NetworkRequest::Pool).unwrap(), a);
    }

    #[test]
    fn shared_subnet_gives_distinct_ips_and_skips_reserved_ones() {
        let mut alloc = pool();
        let subnet = net("10.9.0.0/29");
        let ips: Vec<_> = (0..5)
            .map(|_| {
                alloc
                    .allocate(NetworkRequest::AnyIpIn(subnet))
                    .unwrap()
                    .container_ip
            })
            .collect();
        let expected: Vec<Ipv4Addr> = (1..=5).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(
            ips, expected,
            ".0 network, .6 gateway and .7 broadcast are never used"
        );
        assert!(matches!(
            alloc.allocate(NetworkRequest::AnyIpIn(subnet)),
            Err(NetworkError::SubnetFull { .. })
        ));
    }

    #[test]
    fn static_subnet_rules() {
        let mut alloc = pool();
        assert!(matches!(
            alloc.allocate(NetworkRequest::AnyIpIn(net("10.254.1.0/24"))),
            Err(NetworkError::OverlapsPool { .. })
        ));
        alloc
            .allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/24")))
            .unwrap();
        assert!(matches!(
            alloc.allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/16"))),
            Err(NetworkError::OverlapsSubnet { .. })
        ));
        let exact = NetworkRequest::Exact {
            subnet: net("10.9.0.0/24"),
            ip: "10.9.0.7".parse().unwrap(),
        };
        alloc.allocate(exact).unwrap();
        assert!(matches!(
            alloc.allocate(exact),
            Err(NetworkError::IpTaken { .. })
        ));
    }

    #[test]
    fn special_ranges_are_refused_whatever_the_form() {
        let mut alloc = pool();
        for (spec, range) in [
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.5.0.0/24", "127.0.0.0/8"),
            ("0.0.0.0/8", "0.0.0.0/8"),
            ("0.1.2.3/24", "0.0.0.0/8"),
            ("169.254.1.0/24", "169.254.0.0/16"),
            ("169.0.0.0/8", "169.254.0.0/16"),
            ("224.0.0.0/24", "224.0.0.0/4"),
            ("239.255.255.1", "224.0.0.0/4"),
            ("255.255.255.252/30", "255.255.255.255/32"),
            ("128.0.0.0/1", "169.254.0.0/16"),
        ] {
            let err = alloc.allocate(parse(spec).unwrap()).unwrap_err();
            match err {
                NetworkError::Forbidden {
                    overlaps: Forbidden::Special { range: r, .. },
                    ..
                } => assert_eq!(r, net(range), "{spec}"),
                other => panic!("{spec}: {other:?}"),
            }
        }
        assert!(alloc.allocations().is_empty(), "a refusal takes nothing");
        assert_eq!(
            alloc
                .allocate(parse("127.0.0.1").unwrap())
                .unwrap_err()
                .to_string(),
            "the requested subnet 127.0.0.0/30 overlaps 127.0.0.0/8 (loopback), which \
             containers cannot use"
        );
        // Just outside every range is fine.
        for spec in [
            "1.0.0.0/24",
            "126.255.255.252/30",
            "169.253.0.0/16",
            "223.255.255.0/24",
        ] {
            alloc.allocate(parse(spec).unwrap()).unwrap();
        }
    }

    #[test]
    fn host_networks_are_refused() {
        let mut alloc = pool().with_host_networks(vec![net("192.0.2.0/24"), net("10.20.0.0/16")]);
        for spec in ["192.0.2.0/26", "192.0.2.5", "192.0.0.0/16", "10.20.30.0/24"] {
            let err = alloc.allocate(parse(spec).unwrap()).unwrap_err();
            assert!(
                matches!(
                    err,
                    NetworkError::Forbidden {
                        overlaps: Forbidden::Host { .. },
                        ..
                    }
                ),
                "{spec}: {err:?}"
            );
        }
        assert_eq!(
            alloc
                .allocate(parse("192.0.2.5").unwrap())
                .unwrap_err()
                .to_string(),
            "the requested subnet 192.0.2.4/30 overlaps 192.0.2.0/24 (a network of this host), \
             which containers cannot use"
        );
        alloc.allocate(parse("192.0.3.0/24").unwrap()).unwrap();
        // The pool is not the host's to forbid: it was checked at start.
        alloc.allocate(NetworkRequest::Pool).unwrap();
    }

    #[test]
    fn a_pool_must_not_overlap_what_containers_cannot_use() {
        let host = [net("192.0.2.0/24")];
        assert_eq!(check_pool(net("10.254.0.0/22"), &host), Ok(()));
        assert_eq!(
            check_pool(net("192.0.2.0/28"), &host)
                .unwrap_err()
                .to_string(),
            "the network pool 192.0.2.0/28 overlaps 192.0.2.0/24 (a network of this host), \
             which containers cannot use"
        );
        assert!(check_pool(net("169.254.0.0/22"), &[]).is_err());
        assert!(check_pool(net("0.0.0.0/0"), &[]).is_err());
    }

    #[test]
    fn a_subnet_is_freed_with_its_last_container() {
        let mut alloc = pool();
        let a = alloc
            .allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/24")))
            .unwrap();
        let b = alloc
            .allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/24")))
            .unwrap();
        alloc.release(a);
        assert!(
            alloc
                .allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/16")))
                .is_err(),
            "b still holds the /24"
        );
        alloc.release(b);
        assert!(alloc.allocations().is_empty());
        alloc
            .allocate(NetworkRequest::AnyIpIn(net("10.9.0.0/16")))
            .unwrap();
    }
}

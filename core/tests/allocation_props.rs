//! Property tests: allocate/release sequences never hand out an address twice and always give
//! back what they took.

use proptest::prelude::*;
use std::collections::BTreeSet;
use trellis_core::network::{NetworkAllocator, NetworkAssignment, NetworkRequest};
use trellis_core::ports::{Port, PortAllocator};

#[derive(Debug, Clone)]
enum Op {
    Pool,
    AnyIn(u8),
    Exact(u8, u8),
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Pool),
        2 => (0u8..3).prop_map(Op::AnyIn),
        2 => (0u8..3, 1u8..7).prop_map(|(s, i)| Op::Exact(s, i)),
        3 => (0usize..64).prop_map(Op::Release),
    ]
}

fn subnet(index: u8) -> ipnetwork::Ipv4Network {
    // Three static /29s outside the pool, one of them overlapping a /28 request.
    [
        "10.9.0.0/29".parse().unwrap(),
        "10.9.0.8/29".parse().unwrap(),
        "10.9.0.0/28".parse().unwrap(),
    ][index as usize]
}

proptest! {
    #[test]
    fn no_double_allocation_and_full_release(ops in proptest::collection::vec(op(), 1..200)) {
        let mut alloc = NetworkAllocator::new("10.254.0.0/28".parse().unwrap());
        let mut held: Vec<NetworkAssignment> = Vec::new();
        for op in ops {
            let request = match op {
                Op::Pool => Some(NetworkRequest::Pool),
                Op::AnyIn(s) => Some(NetworkRequest::AnyIpIn(subnet(s))),
                Op::Exact(s, i) => {
                    let net = subnet(s);
                    let ip = std::net::Ipv4Addr::from(u32::from(net.network()) + u32::from(i));
                    if ip == trellis_core::network::gateway(net) || ip == net.broadcast() {
                        None
                    } else {
                        Some(NetworkRequest::Exact { subnet: net, ip })
                    }
                }
                Op::Release(i) => {
                    if !held.is_empty() {
                        let a = held.remove(i % held.len());
                        alloc.release(a);
                    }
                    None
                }
            };
            if let Some(request) = request {
                if let Ok(a) = alloc.allocate(request) {
                    prop_assert!(!held.iter().any(|h| h.container_ip == a.container_ip), "{} handed out twice", a.container_ip);
                    prop_assert!(a.container_ip != a.subnet.network() && a.container_ip != a.subnet.broadcast() && a.container_ip != a.gateway_ip());
                    held.push(a);
                }
            }
            let mut expected = held.clone();
            expected.sort_by_key(|a| (a.subnet, a.container_ip));
            let mut actual = alloc.allocations();
            actual.sort_by_key(|a| (a.subnet, a.container_ip));
            prop_assert_eq!(actual, expected);
            // Subnets in use never overlap unless equal.
            let subnets: BTreeSet<_> = held.iter().map(|a| a.subnet).collect();
            for x in &subnets {
                for y in &subnets {
                    prop_assert!(x == y || !(x.contains(y.network()) || y.contains(x.network())));
                }
            }
        }
        for a in held.drain(..) {
            alloc.release(a);
        }
        prop_assert!(alloc.allocations().is_empty());
    }

    #[test]
    fn ports_are_held_once(ops in proptest::collection::vec((any::<bool>(), 0u32..6), 1..100)) {
        let mut ports = PortAllocator::new(61001, 4);
        let mut held = BTreeSet::new();
        for (take, n) in ops {
            if take {
                let got = if n == 0 { ports.acquire_any() } else { ports.acquire(Port::new(61000 + n).unwrap()) };
                if let Ok(p) = got {
                    prop_assert!(held.insert(p), "port {} handed out twice", p);
                }
            } else if let Some(&p) = held.iter().nth(n as usize % held.len().max(1)) {
                held.remove(&p);
                ports.release(p.into());
            }
            prop_assert_eq!(ports.taken().collect::<BTreeSet<_>>(), held.clone());
        }
    }
}

//! Links, addresses and routes through rtnetlink, behind a small blocking interface.
//!
//! rtnetlink is asynchronous; each [`with_netlink`] call runs on a fresh thread of its own with
//! a single-threaded runtime, which lets it first enter a container's network namespace
//! (namespaces are per thread) without touching any other thread, and keeps the blocking
//! `Host` methods free of the server's runtime.

use crate::host::{HostError, HostResult};
use futures_util::TryStreamExt;
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

/// A netlink connection in one network namespace.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

/// Runs `work` with a netlink connection in the namespace bound at `netns` (the host's when
/// `None`).
pub fn with_netlink<T: Send>(
    netns: Option<&Path>,
    work: impl FnOnce(&Netlink) -> HostResult<T> + Send,
) -> HostResult<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(path) = netns {
                    let file = std::fs::File::open(path).map_err(|e| {
                        HostError::io(format!("open network namespace {}", path.display()), e)
                    })?;
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        HostError::sys(format!("enter network namespace {}", path.display()), e)
                    })?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| HostError::io("start netlink runtime", e))?;
                let (connection, handle, _) = runtime
                    .block_on(async { rtnetlink::new_connection() })
                    .map_err(|e| HostError::io("open netlink socket", e))?;
                runtime.spawn(connection);
                work(&Netlink { runtime, handle })
            })
            .join()
            .map_err(|_| HostError::Unexpected("netlink thread panicked".into()))?
    })
}

/// The kernel's refusal as its errno (matchable by callers); anything else rtnetlink reports
/// (a message it could not decode, a closed connection) described.
fn failed(what: impl std::fmt::Display, e: rtnetlink::Error) -> HostError {
    match errno(&e) {
        Some(errno) => HostError::sys(what.to_string(), errno),
        None => HostError::Unexpected(format!("{what}: netlink: {e}")),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) if m.raw_code() != 0 => {
            Some(Errno::from_raw(-m.raw_code()))
        }
        _ => None,
    }
}

/// What we read back from a link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub controller: Option<u32>,
    pub alias: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl From<LinkMessage> for Link {
    fn from(message: LinkMessage) -> Link {
        let mut link = Link {
            index: message.header.index,
            ..Default::default()
        };
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Controller(index) => link.controller = Some(index),
                LinkAttribute::IfAlias(alias) => link.alias = Some(alias),
                LinkAttribute::Address(mac) => link.mac = mac.try_into().ok(),
                LinkAttribute::Stats64(stats) => {
                    link.rx_bytes = stats.rx_bytes;
                    link.tx_bytes = stats.tx_bytes;
                }
                _ => {}
            }
        }
        link
    }
}

impl Netlink {
    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    pub fn link(&self, name: &str) -> HostResult<Option<Link>> {
        let result = self.block(async {
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
        });
        match result {
            Ok(message) => Ok(message.map(Link::from)),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(failed(format!("look up link {name}"), e)),
        }
    }

    pub fn links(&self) -> HostResult<Vec<Link>> {
        self.block(async {
            self.handle
                .link()
                .get()
                .execute()
                .map_ok(Link::from)
                .try_collect::<Vec<_>>()
                .await
        })
        .map_err(|e| failed("list links", e))
    }

    /// Whether any link is attached to the bridge `index`. The kernel filters the dump by
    /// controller, so its cost does not grow with the host's links (a dump of all of them
    /// per teardown parsed every container's links).
    pub fn has_ports(&self, index: u32) -> HostResult<bool> {
        let mut request = self.handle.link().get();
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::Controller(index));
        let ports = self
            .block(async {
                request
                    .execute()
                    .map_ok(Link::from)
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| failed(format!("list the ports of bridge {index}"), e))?;
        // Checked again here, in case a kernel answers the dump unfiltered.
        Ok(ports.iter().any(|l| l.controller == Some(index)))
    }

    /// Creates a bridge (multicast snooping off, a fixed random MAC, the given MTU), unless
    /// it exists; returns its index either way.
    pub fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> HostResult<u32> {
        if let Some(link) = self.link(name)? {
            return Ok(link.index);
        }
        let message = LinkBridge::new(name)
            .mcast_snooping(false)
            .address(mac.to_vec())
            .mtu(mtu)
            .build();
        match self.block(self.handle.link().add(message).execute()) {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(Errno::EEXIST) => {}
            Err(e) => return Err(failed(format!("create bridge {name}"), e)),
        }
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| HostError::Unexpected(format!("bridge {name} vanished after creation")))
    }

    /// Creates a veth pair whose `peer` end is born in the namespace `peer_netns`. Its MAC is
    /// random: a container given a freed address must not look like the old one, whose port
    /// (and namespace, still answering) may linger on the bridge for a moment.
    pub fn create_veth(
        &self,
        name: &str,
        peer: &str,
        mtu: u32,
        peer_netns: &std::fs::File,
    ) -> HostResult<()> {
        use std::os::fd::AsRawFd;
        let peer_message = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let message = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .mtu(mtu)
            .build();
        self.block(self.handle.link().add(message).execute())
            .map_err(|e| failed(format!("create veth {name}/{peer}"), e))
    }

    /// Attaches the host end to its bridge, labels it with the handle, brings it up.
    pub fn attach_to_bridge(&self, index: u32, bridge: u32, alias: &str) -> HostResult<()> {
        let message = LinkUnspec::new_with_index(index)
            .controller(bridge)
            .txqueuelen(1)
            .alias(alias)
            .up()
            .build();
        self.block(self.handle.link().set(message).execute())
            .map_err(|e| failed(format!("attach link {index} to bridge {bridge}"), e))?;
        // Hairpin: when the bridge passes traffic through netfilter (br_netfilter), a
        // container reaching its own published port is DNATed back out the port it came in.
        let port = LinkBridgePort::new(index).hairpin(true).build();
        self.block(self.handle.link().set_port(port).execute())
            .map_err(|e| failed(format!("set hairpin mode on link {index}"), e))
    }

    pub fn set_up(&self, index: u32, mtu: Option<u32>) -> HostResult<()> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        self.block(self.handle.link().set(builder.build()).execute())
            .map_err(|e| failed(format!("bring link {index} up"), e))
    }

    /// Adds `ip/prefix` to the link; an address already there is fine.
    pub fn ensure_address(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> HostResult<()> {
        match self.block(
            self.handle
                .address()
                .add(index, IpAddr::V4(ip), prefix)
                .replace()
                .execute(),
        ) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(Errno::EEXIST) => Ok(()),
            Err(e) => Err(failed(format!("add address {ip}/{prefix}"), e)),
        }
    }

    pub fn ensure_default_route(&self, gateway: Ipv4Addr) -> HostResult<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.block(self.handle.route().add(route).replace().execute())
            .map_err(|e| failed(format!("add default route via {gateway}"), e))
    }

    /// Forgets what the host's neighbour (ARP) cache holds for `ip` on the link `index`. A new
    /// container given a freed address has a new MAC; while the bridge keeps its carrier (other
    /// ports stay up) the old entry can stay REACHABLE for tens of seconds, and the host's
    /// packets go to a MAC nobody has. An entry that is not there is fine.
    pub fn forget_neighbour(&self, index: u32, ip: Ipv4Addr) -> HostResult<()> {
        use rtnetlink::packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourMessage,
        };
        use rtnetlink::packet_route::AddressFamily;
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.block(self.handle.neighbours().del(message).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(Errno::ENOENT) | Some(Errno::ENODEV)) => Ok(()),
            Err(e) => Err(failed(format!("forget the neighbour entry of {ip}"), e)),
        }
    }

    /// Deletes a link by name; a link that is not there is fine.
    pub fn delete_link(&self, name: &str) -> HostResult<()> {
        let Some(link) = self.link(name)? else {
            return Ok(());
        };
        match self.block(self.handle.link().del(link.index).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(Errno::ENODEV) | Some(Errno::ENOENT)) => Ok(()),
            Err(e) => Err(failed(format!("delete link {name}"), e)),
        }
    }

    pub fn create_ifb(&self, name: &str) -> HostResult<u32> {
        if let Some(link) = self.link(name)? {
            return Ok(link.index);
        }
        let message = rtnetlink::LinkIfb::new(name).build();
        self.block(self.handle.link().add(message).execute())
            .map_err(|e| failed(format!("create ifb {name}"), e))?;
        let index = self
            .link(name)?
            .map(|l| l.index)
            .ok_or_else(|| HostError::Unexpected(format!("ifb {name} vanished after creation")))?;
        self.set_up(index, None)?;
        Ok(index)
    }

    /// The host's IPv4 networks as its links and main routing table have them: the subnet of
    /// every address, and the destination of every route but the default one, each with the
    /// link it is on (`None` for a route without one, such as a blackhole).
    pub fn ipv4_networks(&self) -> HostResult<Vec<(ipnetwork::Ipv4Network, Option<u32>)>> {
        use rtnetlink::packet_route::route::{RouteAddress, RouteHeader};
        let subnet = |ip: Ipv4Addr, prefix: u8| {
            ipnetwork::Ipv4Network::new(ip, prefix)
                .and_then(|n| ipnetwork::Ipv4Network::new(n.network(), prefix))
                .ok()
        };
        let addresses = self
            .block(async {
                self.handle
                    .address()
                    .get()
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| failed("list addresses", e))?;
        let mut networks = Vec::new();
        for message in &addresses {
            // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on point-to-point
            // links, and the address itself (alone) elsewhere.
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(network) = local
                .or(address)
                .and_then(|ip| subnet(ip, message.header.prefix_len))
            {
                networks.push((network, Some(message.header.index)));
            }
        }
        let routes: Vec<RouteMessage> = self
            .block(async {
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| failed("list routes", e))?;
        for route in &routes {
            let main = route.header.table == RouteHeader::RT_TABLE_MAIN
                || route
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
            let prefix = route.header.destination_prefix_length;
            if !main || prefix == 0 {
                continue;
            }
            let destination = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let link = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            if let Some(network) = destination.and_then(|ip| subnet(ip, prefix)) {
                networks.push((network, link));
            }
        }
        Ok(networks)
    }

    /// The first IPv4 address of the interface that carries the main table's default route:
    /// the address other hosts know this one by. Reads kernel state only; sends nothing.
    pub fn default_route_address(&self) -> HostResult<Option<Ipv4Addr>> {
        let routes: Vec<RouteMessage> = self
            .block(async {
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| failed("list routes", e))?;
        let oif = routes.iter().find_map(|route| {
            if route.header.destination_prefix_length != 0 || route.header.table != 254 {
                return None;
            }
            route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
        });
        let Some(oif) = oif else {
            return Ok(None);
        };
        let addresses = self
            .block(async {
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(oif)
                    .execute()
                    .try_collect::<Vec<_>>()
                    .await
            })
            .map_err(|e| failed("list addresses", e))?;
        Ok(addresses.iter().find_map(|message| {
            message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        }))
    }
}

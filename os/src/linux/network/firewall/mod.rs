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
//! (`globals`) is an `nft -f` script, run once at start. A container's part (`container`) is
//! built as transactions of one typed model (`model`; NetOut rules from `netout`), sent as
//! nf_tables netlink batches (see `nftnl`), because `nft` reads the whole table first and so
//! costs more the more containers there are. The model renders the same transactions as
//! `nft` scripts too: the reference the batches are tested against.
//!
//! Removal comes in two parts. The port mappings go at once (the host port and the address
//! may go to another container straight away). The container's chain and its `containers`
//! element go later, off destroy's path (see `Networker::teardown`): on this kernel any
//! nf_tables deletion waits for an RCU grace period, 10 to 20 ms. Until then the stale chain
//! hooks a device that is gone with the container's namespace, and matches nothing.

mod container;
mod globals;
pub mod model;
mod netout;

pub use globals::Ruleset;
pub use model::Transaction;
pub use netout::netout_rule;

use super::nftnl;
use crate::host::{HostError, HostResult};
use ipnetwork::Ipv4Network;
use nix::errno::Errno;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use trellis_core::api::{NetOutRule, PortMapping};

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

/// Sends a transaction as one nf_tables netlink batch.
pub fn send(transaction: &Transaction) -> HostResult<()> {
    nftnl::send(transaction.batch())
}

impl Firewall {
    pub fn new(ruleset: Ruleset) -> Firewall {
        Firewall { ruleset }
    }

    pub fn install_globals(&self, settings: &FirewallSettings) -> HostResult<()> {
        run_nft("install firewall", &self.ruleset.globals_script(settings))
    }

    /// Builds the container's chain with its create-time NetOut rules, and publishes its
    /// address and port mappings ([`Ruleset::container_setup`]).
    pub fn add_container(
        &self,
        c: &ContainerRules<'_>,
        netout: &[NetOutRule],
        ports: &[PortMapping],
    ) -> HostResult<()> {
        let [own, shared] = self.ruleset.container_setup(c, netout, ports)?;
        let context = || format!("set up firewall for {}", c.handle);
        send(&own).map_err(|e| e.context(context()))?;
        send(&shared).map_err(|e| {
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

    /// Inserts NetOut rules at the head of the container's chain, in one transaction.
    pub fn add_netout(&self, c: &ContainerRules<'_>, rules: &[NetOutRule]) -> HostResult<()> {
        let Some(insertion) = self.ruleset.netout_insertion(c, rules)? else {
            return Ok(());
        };
        send(&insertion).map_err(|e| e.context(format!("add net-out rules for {}", c.handle)))
    }

    /// Publishes one more port mapping.
    pub fn map_port(&self, c: &ContainerRules<'_>, mapping: &PortMapping) -> HostResult<()> {
        send(&self.ruleset.port_mapping(c, mapping)?).map_err(|e| {
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

    /// Removes the container's port mappings (one transaction; should a recorded host port
    /// since have gone to another container, its element differs and cannot be re-added, so
    /// each port is then removed on its own, leaving others' alone).
    pub fn remove_ports(&self, c: &ContainerRules<'_>, ports: &[PortMapping]) -> HostResult<()> {
        let Some(removal) = self.ruleset.ports_removal(c, ports)? else {
            return Ok(());
        };
        if send(&removal).is_ok() {
            return Ok(());
        }
        for mapping in ports {
            if let Some(removal) = self
                .ruleset
                .ports_removal(c, std::slice::from_ref(mapping))?
            {
                if let Err(e) = send(&removal) {
                    tracing::debug!(
                        handle = c.handle,
                        "host port {} left alone: {e}",
                        mapping.host_port
                    );
                }
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
                    tracing::info!("removing orphaned firewall chain {table} {chain}");
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
        send(&self.ruleset.chain_removal(c))
            .map_err(|e| e.context(format!("remove firewall of {}", c.handle)))
    }

    /// Removes the container's `containers` element (when no other container holds its
    /// address).
    pub fn forget_address(&self, c: &ContainerRules<'_>) -> HostResult<()> {
        send(&self.ruleset.address_removal(c)?)
            .map_err(|e| e.context(format!("remove the address of {}", c.handle)))
    }
}

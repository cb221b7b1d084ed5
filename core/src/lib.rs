//! Trellis core: the Garden container model as a pure state machine.
//!
//! No I/O, no threads, no clock, no ambient randomness. The driver (the server, or the
//! simulator) calls [`Core::step`] with the current time and one [`Input`]: a client command,
//! the outcome of an effect, an unsolicited observation, or a tick. The core answers with
//! [`Output`]s: replies to commands and [`Effect`]s for the host to carry out, whose outcomes
//! come back as later inputs. Same inputs, same outputs.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod admission;
pub mod api;
pub mod command;
mod container;
pub mod effect;
pub mod error;
pub mod handle;
mod lease;
pub mod limits;
mod machine;
pub mod network;
mod outbox;
pub mod ports;
pub mod properties;
mod reconcile;
pub mod record;
mod rng;

pub use command::{Command, Input, LeaseId, Output, Reply, RequestId};
pub use effect::{
    Effect, EffectError, EffectErrorKind, EffectId, EffectKind, EffectOutput, Outcome,
};
pub use error::{Error, ErrorKind};
pub use machine::{ContainerView, Core, CoreView};
pub use rng::Rng;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// A logical timestamp in nanoseconds. The driver decides what it counts from; the core only
/// compares and subtracts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Time(pub u64);

impl Time {
    pub fn plus(self, nanos: u64) -> Time {
        Time(self.0.saturating_add(nanos))
    }

    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

pub const SECOND: u64 = 1_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Where pool subnets come from.
    pub network_pool: Ipv4Network,
    /// The host's own IPv4 networks (its addresses' subnets and its routes), which no container
    /// subnet may overlap. The server reads them from the host at start; the core cannot look.
    #[serde(default)]
    pub host_networks: Vec<Ipv4Network>,
    /// Configured cap on containers; 0 means only the pool bounds it.
    pub max_containers: u64,
    /// Nanoseconds; used when a spec gives none. 0 means containers never expire.
    pub default_grace_time: u64,
    /// Host ports handed out for NetIn with `host_port: 0`.
    pub port_pool_start: u32,
    pub port_pool_size: u32,
    /// Reported as `ExternalIP` and `garden.network.external-ip`.
    pub external_ip: Option<std::net::Ipv4Addr>,
    /// Reported as `ContainerPath` (`<depot>/<handle>`).
    pub depot: String,
    /// Seeds generated handles and process ids.
    pub seed: u64,
    /// `--disable-privileged-containers`: privileged creates are refused.
    #[serde(default)]
    pub disable_privileged_containers: bool,
    /// `--network-plugin`: an external plugin wires containers' networks. Each create then
    /// connects the network after the init started (the plugin needs its pid), the plugin's
    /// answer gives the container's network properties (its address among them), and the
    /// ports of the spec's NetIn are the plugin's to map.
    #[serde(default)]
    pub network_plugin: bool,
    /// Deliberate defects, for proving that the simulator's checks catch them. Never set in
    /// production.
    #[serde(default)]
    pub bugs: InjectedBugs,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            network_pool: "10.254.0.0/22".parse().expect("valid default pool"),
            host_networks: Vec::new(),
            max_containers: 0,
            default_grace_time: 0,
            port_pool_start: 61001,
            port_pool_size: 4534,
            external_ip: None,
            depot: "/var/lib/trellis/depot".to_string(),
            seed: 0,
            disable_privileged_containers: false,
            network_plugin: false,
            bugs: InjectedBugs::default(),
        }
    }
}

impl Config {
    /// Refuses a configuration the core cannot serve safely: a pool overlapping the host's
    /// networks or a range containers cannot use.
    pub fn validate(&self) -> Result<(), network::PoolForbidden> {
        network::check_pool(self.network_pool, &self.host_networks)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedBugs {
    /// Destroy forgets to release the container's IP.
    pub leak_ip: bool,
    /// The allocator hands out addresses already in use.
    pub double_alloc: bool,
    /// Grace timers never fire.
    pub skip_expiry: bool,
    /// A restart forgets the processes the host still runs.
    #[serde(default)]
    pub forget_processes: bool,
}

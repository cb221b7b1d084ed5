//! Container networking (the networker): network namespaces, veth pairs on per-subnet bridges,
//! NAT, port mappings, egress rules, bandwidth. To be built by the "container networking" work.

use super::LinuxConfig;
use crate::host::{HostError, HostResult};
use trellis_core::api::{NetOutRule, NetworkStat, PortMapping};
use trellis_core::effect::NetworkConfig;
use trellis_core::network::NetworkAssignment;

pub struct Networker {}

fn unavailable(what: &str) -> HostError {
    HostError::Failed(format!(
        "{what}: networking is not implemented on this host yet"
    ))
}

impl Networker {
    pub fn new(_config: &LinuxConfig) -> HostResult<Networker> {
        Ok(Networker {})
    }

    pub fn setup(&self, _handle: &str, _config: &NetworkConfig) -> HostResult<()> {
        Err(unavailable("setup network"))
    }

    pub fn teardown(
        &self,
        _handle: &str,
        _assignment: Option<&NetworkAssignment>,
    ) -> HostResult<()> {
        Ok(())
    }

    pub fn map_port(
        &self,
        _handle: &str,
        _assignment: &NetworkAssignment,
        _mapping: &PortMapping,
    ) -> HostResult<()> {
        Err(unavailable("net-in"))
    }

    pub fn add_netout_rules(
        &self,
        _handle: &str,
        _assignment: &NetworkAssignment,
        _rules: &[NetOutRule],
    ) -> HostResult<()> {
        Err(unavailable("net-out"))
    }

    /// The address and port mappings the host has in place for `handle`.
    pub fn observe(
        &self,
        _handle: &str,
    ) -> HostResult<Option<(NetworkAssignment, Vec<PortMapping>)>> {
        Ok(None)
    }

    pub fn handles(&self) -> HostResult<Vec<String>> {
        Ok(Vec::new())
    }

    pub fn stats(&self, _handle: &str) -> HostResult<Option<NetworkStat>> {
        Ok(None)
    }
}

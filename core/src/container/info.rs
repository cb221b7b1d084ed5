//! What a container shows of itself: its properties (with the derived `garden.*` keys) and
//! its Info.

use super::{Container, Phase};
use crate::api::ContainerInfo;
use crate::properties::{self, Properties};
use crate::Config;

impl Container {
    /// User properties plus the `garden.*` keys derived from the container's state.
    pub(crate) fn all_properties(&self, config: &Config) -> Properties {
        let mut all = self.properties.clone();
        all.insert(properties::STATE.into(), self.phase.garden_state().into());
        all.insert(properties::GRACE_TIME.into(), self.grace_time.to_string());
        // With a network plugin the addresses are those its answer gave (already among the
        // properties); the pool's assignment is only the core's bookkeeping then.
        if let Some(net) = self.network.filter(|_| !config.network_plugin) {
            all.insert(
                properties::CONTAINER_IP.into(),
                net.container_ip.to_string(),
            );
            all.insert(properties::HOST_IP.into(), net.gateway_ip().to_string());
        }
        if let Some(ip) = config.external_ip {
            all.entry(properties::EXTERNAL_IP.into())
                .or_insert_with(|| ip.to_string());
        }
        let ports: Vec<String> = self
            .mapped_ports
            .iter()
            .map(|m| {
                format!(
                    "{{\"HostPort\":{},\"ContainerPort\":{}}}",
                    m.host_port, m.container_port
                )
            })
            .collect();
        all.insert(
            properties::MAPPED_PORTS.into(),
            format!("[{}]", ports.join(",")),
        );
        all
    }

    /// Info of a usable container.
    pub(crate) fn info(&self, config: &Config) -> Box<ContainerInfo> {
        let properties = self.all_properties(config);
        let property = |key: &str| properties.get(key).cloned().unwrap_or_default();
        Box::new(ContainerInfo {
            state: if matches!(self.phase, Phase::Stopped) {
                "stopped"
            } else {
                "active"
            }
            .to_string(),
            // gdn sends null until something happened.
            events: (!self.events.is_empty()).then(|| self.events.clone()),
            // As gdn: from the network properties.
            host_ip: property(properties::HOST_IP),
            container_ip: property(properties::CONTAINER_IP),
            container_ipv6: property(properties::CONTAINER_IPV6),
            external_ip: property(properties::EXTERNAL_IP),
            container_path: format!("{}/{}", config.depot.trim_end_matches('/'), self.handle),
            process_ids: Some(self.processes.iter().cloned().collect()),
            properties: Some(properties),
            mapped_ports: Some(self.mapped_ports.clone()),
        })
    }
}

//! Create admission: a create request is checked, and what it needs of what containers share
//! (its handle, its address, its host ports) is taken, or nothing is. The create saga itself is
//! the container's (`container::lifecycle`).

use crate::api::{ContainerSpec, PortMapping};
use crate::command::RequestId;
use crate::container::{Container, Phase};
use crate::effect::storable_spec;
use crate::error::Error;
use crate::handle::Handle;
use crate::limits::{self, EnvOwner};
use crate::machine::Core;
use crate::network::{self, NetworkAssignment, NetworkRequest};
use crate::ports::Port;
use crate::properties;

impl Core {
    pub(crate) fn create(&mut self, request: RequestId, spec: ContainerSpec) {
        match self.admit(request, &spec) {
            Err(e) => self.reply(request, Err(e)),
            Ok(container) => {
                let handle = container.handle.clone();
                self.containers.insert(handle.clone(), container);
                self.with_container(&handle, |c, cx| c.begin_create(cx, &spec));
            }
        }
    }

    /// Checks a create request and takes what it needs (handle, address, ports), or takes nothing.
    fn admit(&mut self, request: RequestId, spec: &ContainerSpec) -> Result<Container, Error> {
        let handle = if spec.handle.is_empty() {
            loop {
                let generated = self.rng.uuid();
                if !self.containers.contains_key(generated.as_str()) {
                    break generated;
                }
            }
        } else {
            spec.handle.clone()
        };
        let handle = Handle::new(handle.clone())
            .map_err(|reason| Error::InvalidHandle { handle, reason })?;
        if self.containers.contains_key(&handle) {
            return Err(Error::HandleInUse {
                handle: handle.into(),
            });
        }
        if spec.privileged && self.config.disable_privileged_containers {
            return Err(Error::PrivilegedContainersDisabled);
        }
        if self.containers.len() as u64 >= self.max_containers() {
            return Err(Error::MaxContainersReached);
        }
        let ValidSpec {
            grace_time,
            mut requested_ports,
            network: wanted,
        } = spec.validate()?;
        let grace_time = grace_time.unwrap_or(self.config.default_grace_time);
        let assignment = self.network.allocate(wanted)?;
        let mut mapped_ports = Vec::new();
        // With a network plugin the spec's NetIn goes to the plugin's `up`, which maps them.
        if self.config.network_plugin {
            requested_ports.clear();
        }
        for (host, container) in requested_ports {
            match self.ports.map(host, container) {
                Ok(mapping) => mapped_ports.push(mapping),
                Err(e) => {
                    self.release_admitted(assignment, &mapped_ports);
                    return Err(e.into());
                }
            }
        }

        let stored_spec = ContainerSpec {
            handle: handle.to_string(),
            ..storable_spec(spec)
        };
        let creating = Phase::Creating {
            request,
            done: Vec::new(),
        };
        let mut container = Container::new(handle, 0, stored_spec, creating, self.now);
        container.properties = spec.properties.clone();
        container.grace_time = grace_time;
        container.network = Some(assignment);
        container.mapped_ports = mapped_ports;
        container.netout_rules = spec.netout_rules.clone();
        // The image's env is not known yet; it is measured when the rootfs answers.
        if let Err(e) = limits::check_record(&container.record().with_room_for_events()) {
            self.release_admitted(assignment, &container.mapped_ports);
            return Err(e.into());
        }
        self.next_incarnation += 1;
        container.incarnation = self.next_incarnation;
        Ok(container)
    }

    /// Gives back what `admit` took for a create it then refused.
    fn release_admitted(&mut self, assignment: NetworkAssignment, mapped_ports: &[PortMapping]) {
        for m in mapped_ports {
            self.ports.release(m.host_port);
        }
        self.network.release(assignment);
    }
}

/// What a valid create spec asks for, read once.
struct ValidSpec {
    /// `None`: the server's default.
    grace_time: Option<u64>,
    /// NetIn's (host, container) ports; `None` asks the pool (host) or means the same
    /// (container).
    requested_ports: Vec<(Option<Port>, Option<Port>)>,
    network: NetworkRequest,
}

impl ContainerSpec {
    /// The checks a create spec passes on its own, whatever else exists.
    fn validate(&self) -> Result<ValidSpec, Error> {
        let grace_time = match self.grace_time {
            0 => None,
            g => Some(u64::try_from(g).map_err(|_| Error::NegativeGraceTime { nanos: g })?),
        };
        if let Some(key) = self.properties.keys().find(|k| properties::is_reserved(k)) {
            return Err(Error::ReservedProperty { key: key.clone() });
        }
        limits::check_properties(self.properties.iter())?;
        limits::check_env(EnvOwner::Container, &self.env)?;
        limits::check_bind_mounts(self.bind_mounts.len())?;
        limits::check_netout_rules(self.netout_rules.len())?;
        if let Some(bad) = self.env.iter().find(|e| !e.contains('=')) {
            return Err(Error::InvalidSpec {
                reason: format!("environment entry '{bad}' is not KEY=VALUE"),
            });
        }
        for mount in &self.bind_mounts {
            if mount.src_path.is_empty() || !mount.dst_path.starts_with('/') {
                return Err(Error::InvalidSpec {
                    reason: format!(
                        "bind mount '{}' -> '{}' needs a source and an absolute destination",
                        mount.src_path, mount.dst_path
                    ),
                });
            }
        }
        if let Some(reason) = self.netout_rules.iter().find_map(|r| r.validate().err()) {
            return Err(Error::InvalidNetOutRule { reason });
        }
        let mut requested_ports = Vec::with_capacity(self.netin.len());
        for netin in &self.netin {
            match (
                Port::optional(netin.host_port),
                Port::optional(netin.container_port),
            ) {
                (Ok(host), Ok(container)) => requested_ports.push((host, container)),
                _ => {
                    return Err(Error::InvalidSpec {
                        reason: format!(
                            "port mapping {}:{} is out of range",
                            netin.host_port, netin.container_port
                        ),
                    })
                }
            }
        }

        Ok(ValidSpec {
            grace_time,
            requested_ports,
            network: network::parse(&self.network)?,
        })
    }
}

//! Host ports for NetIn: a configured range hands out ports for `host_port: 0`, and every port
//! mapped on the host (from the range or asked for explicitly) is held by one container at a time.

use crate::api::PortMapping;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortError {
    #[error("host port {port} is already mapped")]
    InUse { port: u32 },
    #[error("host port {port} is out of range (1-65535)")]
    OutOfRange { port: u32 },
    #[error("insufficient ports available in the pool {first}-{last}")]
    PoolExhausted { first: u32, last: u32 },
}

/// A TCP port number on the host or in a container: never 0 (Garden's "not given") nor above
/// 65535. Garden's JSON carries ports as u32; [`Port::new`] is where a number from it (or from
/// a record or the host) becomes a port, so nothing past it checks the range again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Port(u16);

impl Port {
    pub fn new(number: u32) -> Result<Port, PortError> {
        match u16::try_from(number) {
            Ok(port) if port != 0 => Ok(Port(port)),
            _ => Err(PortError::OutOfRange { port: number }),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// A port Garden's JSON may leave out: 0 is "not given".
    pub fn optional(number: u32) -> Result<Option<Port>, PortError> {
        match number {
            0 => Ok(None),
            number => Port::new(number).map(Some),
        }
    }
}

impl TryFrom<u32> for Port {
    type Error = PortError;

    fn try_from(number: u32) -> Result<Port, PortError> {
        Port::new(number)
    }
}

impl From<Port> for u32 {
    fn from(port: Port) -> u32 {
        u32::from(port.0)
    }
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAllocator {
    first: u32,
    count: u32,
    /// Where the next search starts, so a released port is not handed out again at once.
    cursor: u32,
    taken: BTreeSet<Port>,
}

impl PortAllocator {
    pub fn new(first: u32, count: u32) -> PortAllocator {
        PortAllocator {
            first,
            count,
            cursor: 0,
            taken: BTreeSet::new(),
        }
    }

    pub fn acquire_any(&mut self) -> Result<Port, PortError> {
        for offset in 0..self.count {
            let number = self.first + (self.cursor + offset) % self.count;
            // A pool configured past 65535 has numbers in it that are no port.
            let Ok(port) = Port::new(number) else {
                continue;
            };
            if self.taken.insert(port) {
                self.cursor = (number - self.first + 1) % self.count;
                return Ok(port);
            }
        }
        Err(PortError::PoolExhausted {
            first: self.first,
            last: self.first + self.count.saturating_sub(1),
        })
    }

    pub fn acquire(&mut self, port: Port) -> Result<Port, PortError> {
        if !self.taken.insert(port) {
            return Err(PortError::InUse { port: port.into() });
        }
        Ok(port)
    }

    /// Takes the host port of a NetIn: the one asked for, or one from the pool. A container
    /// port not given is the host port.
    pub fn map(
        &mut self,
        host: Option<Port>,
        container: Option<Port>,
    ) -> Result<PortMapping, PortError> {
        let host = match host {
            Some(port) => self.acquire(port)?,
            None => self.acquire_any()?,
        };
        Ok(PortMapping {
            host_port: host.into(),
            container_port: container.unwrap_or(host).into(),
        })
    }

    /// Takes a port the host already forwards (a record's or one observed), if it is a port
    /// and free.
    pub fn hold(&mut self, number: u32) -> bool {
        Port::new(number).is_ok_and(|port| self.taken.insert(port))
    }

    /// Gives back a mapped port. Mappings keep Garden's u32; a number that is no port was
    /// never taken.
    pub fn release(&mut self, number: u32) {
        if let Ok(port) = Port::new(number) {
            self.taken.remove(&port);
        }
    }

    pub fn taken(&self) -> impl Iterator<Item = Port> + '_ {
        self.taken.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(number: u32) -> Port {
        Port::new(number).unwrap()
    }

    #[test]
    fn hands_out_each_port_once_and_round_robins() {
        let mut ports = PortAllocator::new(61001, 3);
        assert_eq!(ports.acquire_any(), Ok(port(61001)));
        assert_eq!(ports.acquire_any(), Ok(port(61002)));
        ports.release(61001);
        assert_eq!(
            ports.acquire_any(),
            Ok(port(61003)),
            "a just-released port is not reused first"
        );
        assert_eq!(ports.acquire_any(), Ok(port(61001)));
        assert!(matches!(
            ports.acquire_any(),
            Err(PortError::PoolExhausted { .. })
        ));
    }

    #[test]
    fn explicit_ports_collide_with_pool_ports() {
        let mut ports = PortAllocator::new(61001, 3);
        assert_eq!(ports.acquire(port(61001)), Ok(port(61001)));
        assert_eq!(
            ports.acquire(port(61001)),
            Err(PortError::InUse { port: 61001 })
        );
        assert_eq!(ports.acquire_any(), Ok(port(61002)));
        assert_eq!(ports.acquire(port(8080)), Ok(port(8080)));
    }

    #[test]
    fn a_port_is_1_to_65535() {
        assert_eq!(Port::new(0), Err(PortError::OutOfRange { port: 0 }));
        assert_eq!(Port::new(65536), Err(PortError::OutOfRange { port: 65536 }));
        assert_eq!(Port::new(70000), Err(PortError::OutOfRange { port: 70000 }));
        assert_eq!(Port::new(65535).map(u32::from), Ok(65535));
        assert_eq!(Port::new(1).map(Port::get), Ok(1));
    }

    #[test]
    fn a_pool_past_65535_hands_out_only_real_ports() {
        let mut ports = PortAllocator::new(65535, 3);
        assert_eq!(ports.acquire_any(), Ok(port(65535)));
        assert!(matches!(
            ports.acquire_any(),
            Err(PortError::PoolExhausted { .. })
        ));
    }
}

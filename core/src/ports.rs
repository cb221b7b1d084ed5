//! Host ports for NetIn: a configured range hands out ports for `host_port: 0`, and every port
//! mapped on the host (from the range or asked for explicitly) is held by one container at a time.

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortAllocator {
    first: u32,
    count: u32,
    /// Where the next search starts, so a released port is not handed out again at once.
    cursor: u32,
    taken: BTreeSet<u32>,
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

    pub fn acquire_any(&mut self) -> Result<u32, PortError> {
        for offset in 0..self.count {
            let port = self.first + (self.cursor + offset) % self.count;
            if !self.taken.contains(&port) {
                self.taken.insert(port);
                self.cursor = (port - self.first + 1) % self.count;
                return Ok(port);
            }
        }
        Err(PortError::PoolExhausted {
            first: self.first,
            last: self.first + self.count.saturating_sub(1),
        })
    }

    pub fn acquire(&mut self, port: u32) -> Result<u32, PortError> {
        if port == 0 || port > 65535 {
            return Err(PortError::OutOfRange { port });
        }
        if !self.taken.insert(port) {
            return Err(PortError::InUse { port });
        }
        Ok(port)
    }

    pub fn release(&mut self, port: u32) {
        self.taken.remove(&port);
    }

    pub fn taken(&self) -> impl Iterator<Item = u32> + '_ {
        self.taken.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_each_port_once_and_round_robins() {
        let mut ports = PortAllocator::new(61001, 3);
        assert_eq!(ports.acquire_any(), Ok(61001));
        assert_eq!(ports.acquire_any(), Ok(61002));
        ports.release(61001);
        assert_eq!(
            ports.acquire_any(),
            Ok(61003),
            "a just-released port is not reused first"
        );
        assert_eq!(ports.acquire_any(), Ok(61001));
        assert!(matches!(
            ports.acquire_any(),
            Err(PortError::PoolExhausted { .. })
        ));
    }

    #[test]
    fn explicit_ports_collide_with_pool_ports() {
        let mut ports = PortAllocator::new(61001, 3);
        assert_eq!(ports.acquire(61001), Ok(61001));
        assert_eq!(ports.acquire(61001), Err(PortError::InUse { port: 61001 }));
        assert_eq!(ports.acquire_any(), Ok(61002));
        assert_eq!(
            ports.acquire(70000),
            Err(PortError::OutOfRange { port: 70000 })
        );
        assert_eq!(ports.acquire(8080), Ok(8080));
    }
}

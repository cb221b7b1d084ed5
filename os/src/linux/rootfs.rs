//! Root filesystems (the volumizer): images unpacked once into a shared read-only cache, and a
//! copy-on-write overlay per container. To be built by the "real Linux containers" work.

use super::LinuxConfig;
use crate::host::{HostCapacity, HostError, HostResult, Rootfs};
use trellis_core::api::{DiskLimits, DiskStat, ImageRef};

pub struct RootfsManager {}

fn unavailable(what: &str) -> HostError {
    HostError::Failed(format!(
        "{what}: root filesystems are not implemented on this host yet"
    ))
}

impl RootfsManager {
    pub fn new(_config: &LinuxConfig) -> HostResult<RootfsManager> {
        Ok(RootfsManager {})
    }

    pub fn prepare(
        &self,
        _handle: &str,
        _image: &ImageRef,
        _privileged: bool,
        _disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        Err(unavailable("prepare rootfs"))
    }

    pub fn remove(&self, _handle: &str) -> HostResult<()> {
        Ok(())
    }

    pub fn exists(&self, _handle: &str) -> bool {
        false
    }

    pub fn handles(&self) -> HostResult<Vec<String>> {
        Ok(Vec::new())
    }

    pub fn disk_usage(&self, _handle: &str) -> HostResult<DiskStat> {
        Ok(DiskStat::default())
    }

    pub fn capacity(&self) -> HostResult<HostCapacity> {
        Err(unavailable("disk capacity"))
    }
}

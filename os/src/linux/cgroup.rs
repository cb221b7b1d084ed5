//! Cgroups (v1 and v2): one cgroup per container under a parent of ours, limits, metrics, OOM
//! events, and the machine's capacity. To be built by the "resource limits" work.

use super::LinuxConfig;
use crate::host::{HostCapacity, HostError, HostResult, ObservationSink};
use trellis_core::api::{Limits, Metrics};

pub struct Cgroups {}

fn unavailable(what: &str) -> HostError {
    HostError::Failed(format!(
        "{what}: cgroups are not implemented on this host yet"
    ))
}

impl Cgroups {
    pub fn new(_config: &LinuxConfig) -> HostResult<Cgroups> {
        Ok(Cgroups {})
    }

    pub fn create(&self, _handle: &str, _limits: &Limits) -> HostResult<()> {
        Err(unavailable("create cgroup"))
    }

    /// Moves `pid` into the container's cgroup (every hierarchy).
    pub fn add_process(&self, _handle: &str, _pid: u32) -> HostResult<()> {
        Err(unavailable("join cgroup"))
    }

    /// Every pid in the container's cgroup.
    pub fn pids(&self, _handle: &str) -> HostResult<Vec<u32>> {
        Ok(Vec::new())
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

    pub fn metrics(&self, _handle: &str) -> HostResult<Metrics> {
        Err(unavailable("metrics"))
    }

    pub fn capacity(&self) -> HostResult<HostCapacity> {
        Err(unavailable("memory capacity"))
    }

    pub fn watch_oom(&self, _sink: ObservationSink) {}
}

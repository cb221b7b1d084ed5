//! The container runtime (the containerizer): init, processes, and files in and out. To be
//! built by the "real Linux containers" work.

use super::cgroup::Cgroups;
use super::LinuxConfig;
use crate::host::{FilePath, HostError, HostResult, SpawnRequest, Spawned};
use std::io::{Read, Write};
use trellis_core::effect::InitConfig;

pub struct Runtime {}

fn unavailable(what: &str) -> HostError {
    HostError::Failed(format!(
        "{what}: containers are not implemented on this host yet"
    ))
}

impl Runtime {
    pub fn new(_config: &LinuxConfig) -> HostResult<Runtime> {
        Ok(Runtime {})
    }

    pub fn start_init(
        &self,
        _handle: &str,
        _config: &InitConfig,
        _cgroups: &Cgroups,
    ) -> HostResult<()> {
        Err(unavailable("start init"))
    }

    pub fn kill_container(&self, _handle: &str, _cgroups: &Cgroups) -> HostResult<()> {
        Ok(())
    }

    pub fn spawn(&self, _request: SpawnRequest<'_>, _cgroups: &Cgroups) -> HostResult<Spawned> {
        Err(unavailable("run"))
    }

    pub fn stop_processes(&self, _handle: &str, _kill: bool, _cgroups: &Cgroups) -> HostResult<()> {
        Err(unavailable("stop"))
    }

    pub fn stream_in(&self, _to: FilePath<'_>, _tar: &mut dyn Read) -> HostResult<()> {
        Err(unavailable("stream in"))
    }

    pub fn stream_out(&self, _from: FilePath<'_>, _tar: &mut dyn Write) -> HostResult<()> {
        Err(unavailable("stream out"))
    }

    pub fn init_running(&self, _handle: &str) -> bool {
        false
    }

    pub fn processes(&self, _handle: &str) -> Vec<String> {
        Vec::new()
    }

    pub fn handles(&self) -> HostResult<Vec<String>> {
        Ok(Vec::new())
    }
}

//! Trellis host adapter: carries out the core's effects.
//!
//! [`Host`] is the boundary: one blocking method per kind of effect. [`execute`] maps an effect
//! to its method and its result back to an outcome for the core. The Linux implementation lives
//! here; the simulator provides an in-memory one.

pub mod helper;
pub mod host;
pub mod layout;
pub mod linux;
pub mod users;

pub use host::{
    decode_exit_status, encode_exit_status, FilePath, Host, HostCapacity, HostError, HostResult,
    ObservationSink, ProcessIo, ProcessState, Rootfs, SpawnRequest, KILLED_WITH_CONTAINER,
};
pub use layout::Layout;
pub use linux::{LinuxConfig, LinuxHost};

use trellis_core::effect::{EffectError, EffectErrorKind, EffectKind, EffectOutput, Outcome};

/// Carries out one effect on `host`. `SpawnProcess` is not handled here: its stdio must go to
/// whoever serves the process's streams, so the caller uses [`Host::spawn_process`] directly.
pub fn execute(host: &dyn Host, effect: &EffectKind) -> Outcome {
    use EffectKind::*;
    let done = |r: HostResult<()>| r.map(|()| EffectOutput::Done).map_err(EffectError::from);
    match effect {
        PrepareRootfs {
            handle,
            image,
            privileged,
            disk,
        } => host
            .prepare_rootfs(handle, image, *privileged, disk)
            .map(|r| EffectOutput::Rootfs {
                image_env: r.image_env,
            })
            .map_err(EffectError::from),
        CreateCgroup {
            handle,
            limits,
            privileged,
        } => done(host.create_cgroup(handle, limits, *privileged)),
        SetupNetwork { handle, config } => done(host.setup_network(handle, config)),
        StartInit { handle, config } => done(host.start_init(handle, config)),
        ConnectNetwork { handle, config } => host
            .connect_network(handle, config)
            .map(EffectOutput::NetworkProperties)
            .map_err(EffectError::from),
        PersistRecord { record, .. } => done(host.persist_record(record)),
        KillContainer { handle } => done(host.kill_container(handle)),
        TeardownNetwork { handle, assignment } => {
            done(host.teardown_network(handle, assignment.as_ref()))
        }
        RemoveCgroup { handle } => done(host.remove_cgroup(handle)),
        RemoveRootfs { handle } => done(host.remove_rootfs(handle)),
        DeleteRecord { handle } => done(host.delete_record(handle)),
        StopProcesses { handle, kill } => done(host.stop_processes(handle, *kill)),
        MapPort {
            handle,
            assignment,
            mapping,
        } => done(host.map_port(handle, assignment, mapping)),
        AddNetOutRules {
            handle,
            assignment,
            rules,
        } => done(host.add_netout_rules(handle, assignment, rules)),
        ReadMetrics { handle } => host
            .read_metrics(handle)
            .map(|m| EffectOutput::Metrics(Box::new(m)))
            .map_err(EffectError::from),
        ReadPeaMetrics { handle, process_id } => host
            .read_pea_metrics(handle, process_id)
            .map(|m| EffectOutput::Metrics(Box::new(m)))
            .map_err(EffectError::from),
        ReadCapacity => host
            .read_capacity()
            .map(|c| EffectOutput::Capacity {
                memory_in_bytes: c.memory_in_bytes,
                disk_in_bytes: c.disk_in_bytes,
                schedulable_disk_in_bytes: c.schedulable_disk_in_bytes,
            })
            .map_err(EffectError::from),
        SpawnProcess { .. } => Err(EffectError::new(
            EffectErrorKind::Host,
            "spawn-process goes through Host::spawn_process, not execute",
        )),
    }
}

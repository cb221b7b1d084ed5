//! The Linux host: carries out effects with namespaces, mounts, cgroups, netlink and nftables.
//!
//! Each seam is its own component, the shape of guardian's: `rootfs` (the volumizer),
//! `cgroup`, `network` (the networker), `runtime` (init, processes, files: the containerizer)
//! and `depot` (durable records). `LinuxHost` only routes effects to them.

pub mod cgroup;
pub mod cleanup;
pub mod command;
pub mod depot;
pub mod disk;
pub mod image;
pub mod image_plugin;
pub mod mount_api;
pub mod network;
pub mod open_files;
pub mod parallel;
pub mod peas;
pub mod registry;
pub mod rootfs;
pub mod runtime;
pub mod security;
pub mod server_lock;
pub mod temp_files;

use crate::host::*;
use crate::layout::Layout;
use std::io::{Read, Write};
use trellis_core::api::{
    DiskLimits, ImageRef, Limits, Metrics, NetOutRule, PortMapping, Signal, WindowSize,
};
use trellis_core::effect::{
    EffectError, EffectErrorKind, EffectKind, EffectOutput, InitConfig, NetworkConfig,
    ObservedContainer, ObservedHost, Outcome, PluginUpConfig,
};
use trellis_core::network::NetworkAssignment;
use trellis_core::record::ContainerRecord;

/// Server-wide settings the Linux host needs.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    pub layout: Layout,
    /// The image used when a create names none.
    pub default_rootfs: String,
    /// The binary whose hidden helper subcommands run container inits; `None` means this
    /// executable (the `trellis` server). Tests of this crate point it at `trellis-os-helper`.
    pub helper_binary: Option<std::path::PathBuf>,
    /// Container networking: MTU, DNS, firewall flags.
    pub network: network::NetworkSettings,
    /// The user namespace mapping and the other security flags.
    pub security: security::SecuritySettings,
    /// The default registry of `docker://` images, the insecure ones and the proxies.
    pub registry: registry::RegistrySettings,
    /// The server's flags for every container's cgroup (gdn's limit flags, device rules).
    pub cgroup: cgroup::CgroupConfig,
    /// External image plugins (`--image-plugin`...); none means images are unpacked here.
    pub image_plugins: image_plugin::ImagePluginSettings,
}

pub struct LinuxHost {
    pub layout: Layout,
    pub depot: depot::Depot,
    pub rootfs: rootfs::RootfsManager,
    pub cgroups: cgroup::Cgroups,
    pub network: network::Networker,
    pub runtime: runtime::Runtime,
    /// The cgroups of peas that override their container's limits (see `peas`).
    pub pea_cgroups: cgroup::Cgroups,
    /// One pea removal at a time (a release and a sweep may meet).
    peas_lock: std::sync::Mutex<()>,
}

/// How many containers `observe` looks at at once. Observing one is mostly waiting: for its
/// init to be scheduled and answer over its socket (the first time after the init started,
/// also for it to fault in the code that answers). So many more than the CPUs keep them busy.
const OBSERVE_WORKERS: usize = 32;

impl LinuxHost {
    pub fn new(config: LinuxConfig) -> HostResult<LinuxHost> {
        let layout = config.layout.clone();
        // The quick checks first: a host that cannot run containers is refused before the
        // networker changes anything.
        let depot = depot::Depot::new(layout.records_dir())?;
        let rootfs = rootfs::RootfsManager::new(&config)?;
        let cgroups = cgroup::Cgroups::new(&config)?;
        let pea_cgroups = peas::cgroups(&layout)?;
        // The networker (nft, netlink dumps of every link) and the runtime (a sealed copy of
        // the binary) take most of a start's setup, and neither needs the other: set them up
        // side by side.
        let (network, runtime) = std::thread::scope(|scope| {
            let network = std::thread::Builder::new()
                .name("networker-setup".into())
                .spawn_scoped(scope, || network::Networker::new(&config));
            let runtime = runtime::Runtime::new(&config);
            let network = match network {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                // No thread to spare: do it here.
                Err(_) => network::Networker::new(&config),
            };
            (network, runtime)
        });
        Ok(LinuxHost {
            depot,
            rootfs,
            cgroups,
            network: network?,
            runtime: runtime?,
            pea_cgroups,
            peas_lock: std::sync::Mutex::new(()),
            layout,
        })
    }

    /// What the host has of one container.
    fn observe_container(&self, handle: &str) -> HostResult<ObservedContainer> {
        let (network, ports) = match self.network.observe(handle)? {
            Some((assignment, ports)) => (Some(assignment), ports),
            None => (None, Vec::new()),
        };
        let init = self.runtime.init_running(handle);
        if init {
            self.sweep_peas(handle, true);
        }
        Ok(ObservedContainer {
            rootfs: self.rootfs.exists(handle),
            cgroup: self.cgroups.exists(handle),
            network,
            ports,
            init,
            // A container without a running init has no processes to ask it for.
            processes: if init {
                self.runtime.processes(handle)
            } else {
                Vec::new()
            },
        })
    }
}

/// One method per kind of effect; [`Host::execute`] routes each effect to its method.
impl LinuxHost {
    pub fn prepare_rootfs(
        &self,
        handle: &str,
        image: &ImageRef,
        privileged: bool,
        disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        self.rootfs.prepare(handle, image, privileged, disk)
    }

    pub fn create_cgroup(&self, handle: &str, limits: &Limits, privileged: bool) -> HostResult<()> {
        self.cgroups.create(handle, limits, privileged)
    }

    pub fn setup_network(&self, handle: &str, config: &NetworkConfig) -> HostResult<()> {
        self.network.setup(handle, config)
    }

    pub fn start_init(&self, handle: &str, config: &InitConfig) -> HostResult<()> {
        self.runtime.start_init(handle, config, &self.cgroups)
    }

    pub fn connect_network(
        &self,
        handle: &str,
        config: &PluginUpConfig,
    ) -> HostResult<std::collections::BTreeMap<String, String>> {
        let pid = self.runtime.init_pid(handle).ok_or_else(|| {
            HostError::Unexpected(format!("container {handle} has no running init to network"))
        })?;
        self.network.connect(handle, pid, config)
    }

    pub fn persist_record(&self, record: &ContainerRecord) -> HostResult<()> {
        self.depot.persist(record)
    }

    pub fn kill_container(&self, handle: &str) -> HostResult<()> {
        self.runtime.kill_container(handle, &self.cgroups)
    }

    pub fn teardown_network(
        &self,
        handle: &str,
        assignment: Option<&NetworkAssignment>,
    ) -> HostResult<()> {
        self.network.teardown(handle, assignment)
    }

    pub fn remove_cgroup(&self, handle: &str) -> HostResult<()> {
        self.remove_peas(handle)?;
        self.cgroups.remove(handle)
    }

    pub fn remove_rootfs(&self, handle: &str) -> HostResult<()> {
        self.remove_peas(handle)?;
        self.rootfs.remove(handle)
    }

    pub fn delete_record(&self, handle: &str) -> HostResult<()> {
        self.depot.delete(handle)
    }

    pub fn stop_processes(&self, handle: &str, kill: bool) -> HostResult<()> {
        self.runtime.stop_processes(handle, kill, &self.cgroups)
    }

    pub fn map_port(
        &self,
        handle: &str,
        assignment: &NetworkAssignment,
        mapping: &PortMapping,
    ) -> HostResult<()> {
        self.network.map_port(handle, assignment, mapping)
    }

    pub fn add_netout_rules(
        &self,
        handle: &str,
        assignment: &NetworkAssignment,
        rules: &[NetOutRule],
    ) -> HostResult<()> {
        self.network.add_netout_rules(handle, assignment, rules)
    }

    pub fn read_metrics(&self, handle: &str) -> HostResult<Metrics> {
        let mut metrics = self.cgroups.metrics(handle)?;
        metrics.disk_stat = self.rootfs.disk_usage(handle)?;
        metrics.network_stat = self.network.stats(handle)?;
        Ok(metrics)
    }

    pub fn read_pea_metrics(&self, handle: &str, process_id: &str) -> HostResult<Metrics> {
        self.pea_metrics(handle, process_id)
    }

    pub fn read_capacity(&self) -> HostResult<HostCapacity> {
        let mut capacity = self.cgroups.capacity()?;
        let disk = self.rootfs.capacity()?;
        capacity.disk_in_bytes = disk.disk_in_bytes;
        capacity.schedulable_disk_in_bytes = disk.schedulable_disk_in_bytes;
        Ok(capacity)
    }
}

impl Host for LinuxHost {
    fn execute(&self, effect: &EffectKind) -> Outcome {
        use EffectKind::*;
        let done = |r: HostResult<()>| r.map(|()| EffectOutput::Done).map_err(EffectError::from);
        let answer = |r: HostResult<EffectOutput>| r.map_err(EffectError::from);
        match effect {
            PrepareRootfs {
                handle,
                image,
                privileged,
                disk,
            } => answer(
                self.prepare_rootfs(handle, image, *privileged, disk)
                    .map(|r| EffectOutput::Rootfs {
                        image_env: r.image_env,
                    }),
            ),
            CreateCgroup {
                handle,
                limits,
                privileged,
            } => done(self.create_cgroup(handle, limits, *privileged)),
            SetupNetwork { handle, config } => done(self.setup_network(handle, config)),
            StartInit { handle, config } => done(self.start_init(handle, config)),
            ConnectNetwork { handle, config } => answer(
                self.connect_network(handle, config)
                    .map(EffectOutput::NetworkProperties),
            ),
            PersistRecord { record, .. } => done(self.persist_record(record)),
            KillContainer { handle } => done(self.kill_container(handle)),
            TeardownNetwork { handle, assignment } => {
                done(self.teardown_network(handle, assignment.as_ref()))
            }
            RemoveCgroup { handle } => done(self.remove_cgroup(handle)),
            RemoveRootfs { handle } => done(self.remove_rootfs(handle)),
            DeleteRecord { handle } => done(self.delete_record(handle)),
            StopProcesses { handle, kill } => done(self.stop_processes(handle, *kill)),
            MapPort {
                handle,
                assignment,
                mapping,
            } => done(self.map_port(handle, assignment, mapping)),
            AddNetOutRules {
                handle,
                assignment,
                rules,
            } => done(self.add_netout_rules(handle, assignment, rules)),
            ReadMetrics { handle } => answer(
                self.read_metrics(handle)
                    .map(|m| EffectOutput::Metrics(Box::new(m))),
            ),
            ReadPeaMetrics { handle, process_id } => answer(
                self.read_pea_metrics(handle, process_id)
                    .map(|m| EffectOutput::Metrics(Box::new(m))),
            ),
            ReadCapacity => answer(self.read_capacity().map(|c| EffectOutput::Capacity {
                memory_in_bytes: c.memory_in_bytes,
                disk_in_bytes: c.disk_in_bytes,
                schedulable_disk_in_bytes: c.schedulable_disk_in_bytes,
            })),
            SpawnProcess { .. } => Err(EffectError::new(
                EffectErrorKind::Host,
                "spawn-process goes through Host::spawn_process, not execute",
            )),
        }
    }

    fn spawn_process(&self, request: SpawnRequest<'_>) -> HostResult<ProcessIo> {
        if request.spec.image.uri.is_empty() {
            // An exited pea of the same id would otherwise keep its requests.
            self.released(request.handle, request.process_id)?;
            self.runtime.spawn(request)
        } else {
            self.spawn_pea(request)
        }
    }

    fn attach_process(&self, handle: &str, process_id: &str) -> HostResult<ProcessIo> {
        self.runtime.attach(handle, process_id)
    }

    fn processes(&self, handle: &str) -> HostResult<Vec<ProcessState>> {
        self.runtime.process_states(handle)
    }

    fn signal_process(&self, handle: &str, process_id: &str, signal: Signal) -> HostResult<()> {
        self.runtime.signal(handle, process_id, signal)
    }

    fn resize_process(&self, handle: &str, process_id: &str, size: WindowSize) -> HostResult<()> {
        self.runtime.resize(handle, process_id, size)
    }

    fn close_process_stdin(&self, handle: &str, process_id: &str) -> HostResult<()> {
        self.runtime.close_stdin(handle, process_id)
    }

    fn release_process(&self, handle: &str, process_id: &str) -> HostResult<()> {
        // A pea goes even if its keeper is already gone (a stop killed it).
        let released = self.runtime.release(handle, process_id);
        self.released(handle, process_id)?;
        released
    }

    fn cgroup_v2(&self) -> bool {
        self.cgroups.mode() == cgroup::Mode::V2
    }

    fn settle(&self) {
        self.network.settle();
    }

    fn stream_in(&self, to: FilePath<'_>, tar: &mut dyn Read) -> HostResult<()> {
        self.runtime.stream_in(to, tar)
    }

    fn stream_out(&self, from: FilePath<'_>, tar: &mut dyn Write) -> HostResult<()> {
        self.runtime.stream_out(from, tar)
    }

    fn watch_events(&self, sink: ObservationSink) {
        self.cgroups.watch_oom(sink)
    }

    fn load_records(&self) -> HostResult<Vec<ContainerRecord>> {
        self.depot.load_all()
    }

    fn observe(&self) -> HostResult<ObservedHost> {
        let mut handles = std::collections::BTreeSet::new();
        handles.extend(self.rootfs.handles()?);
        handles.extend(self.cgroups.handles()?);
        handles.extend(self.network.handles()?);
        handles.extend(self.runtime.handles()?);
        let handles: Vec<String> = handles.into_iter().collect();
        let observed = parallel::map(&handles, OBSERVE_WORKERS, |handle| {
            self.observe_container(handle)
        });
        let mut host = ObservedHost::default();
        for (handle, container) in handles.into_iter().zip(observed) {
            host.containers.insert(handle, container?);
        }
        Ok(host)
    }
}

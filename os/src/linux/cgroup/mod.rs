//! Cgroups (v1 and v2): one cgroup per container under a parent of ours, limits, metrics, OOM
//! events, and the machine's memory capacity.
//!
//! The mode is detected at start: a cgroup2 filesystem on `/sys/fs/cgroup` means the unified
//! hierarchy (v2); anything else means the v1 hierarchies mounted under it (a hybrid host's
//! empty `unified` mount is ignored). Each backend works on the cgroup files directly rather
//! than through cgroups-rs: metrics for hundreds of containers per BulkMetrics call must read
//! only the handful of files they need (cgroups-rs reads a dozen or more per controller and
//! panics on unexpected file contents), and stop/destroy need recursive pid listing and the
//! freezer/`cgroup.kill`, which it does not offer.

pub mod device_program;
mod files;
mod oom;
pub mod resources;
pub mod stats;
pub mod v1;
pub mod v2;

use super::security::devices::{self, AllowRule};
use super::LinuxConfig;
use crate::host::{HostCapacity, HostError, HostResult, ObservationSink};
use oom::OomWatcher;
use resources::Resources;
pub use resources::{CgroupConfig, IoMax};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use trellis_core::api::{Limits, Metrics};

/// Which cgroup interface the host offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    V1,
    V2,
}

/// Where the cgroups live. `Cgroups::new` derives it from the server's layout; tests and
/// tools name their own parent so that they never touch a server's containers.
#[derive(Debug, Clone)]
pub struct CgroupOptions {
    /// The directory name of our parent cgroup, directly under each hierarchy's root.
    pub parent: String,
    /// The cgroup mode; `None` detects it.
    pub mode: Option<Mode>,
    /// The cgroup2 mount to use in v2 mode (normally `/sys/fs/cgroup`).
    pub v2_root: PathBuf,
    /// The server's limit flags.
    pub config: CgroupConfig,
}

impl CgroupOptions {
    pub fn new(parent: impl Into<String>) -> CgroupOptions {
        CgroupOptions {
            parent: parent.into(),
            mode: None,
            v2_root: PathBuf::from(CGROUP_ROOT),
            config: CgroupConfig::default(),
        }
    }
}

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The container's cgroup: what a backend does with it.
pub(crate) trait Backend: Send + Sync {
    fn mode(&self) -> Mode;
    /// Makes the container's cgroup (idempotently), writes its resources and lets it use only
    /// the devices `devices` allows.
    fn create(&self, handle: &str, resources: &Resources, devices: &[AllowRule]) -> HostResult<()>;
    /// The cgroup filesystems an unprivileged container gets, read-only, at /sys/fs/cgroup.
    fn container_view(&self) -> CgroupView;
    fn add_process(&self, handle: &str, pid: u32) -> HostResult<()>;
    /// The files a single-threaded process writes `0` into to move itself into the
    /// container's cgroup (v1's `tasks`), or `None` where it cannot (v2).
    fn self_placement_files(&self, handle: &str) -> Option<Vec<PathBuf>>;
    /// The container's cgroup directory, for a process to be forked straight into it
    /// (cgroup2's `CLONE_INTO_CGROUP`), or `None` where that cannot be (v1).
    fn fork_target_dir(&self, handle: &str) -> Option<PathBuf>;
    /// Every pid in the container's cgroup and its descendants.
    fn pids(&self, handle: &str) -> HostResult<Vec<u32>>;
    /// Sends SIGKILL to every process in the cgroup, so that nothing escapes by forking.
    fn kill_all(&self, handle: &str) -> HostResult<()>;
    /// Removes the cgroup and its descendants; `Ok(false)` when some are still busy.
    fn remove_dirs(&self, handle: &str) -> HostResult<bool>;
    fn exists(&self, handle: &str) -> bool;
    fn handles(&self) -> HostResult<Vec<String>>;
    /// Removes our parent cgroup if no container is left in it.
    fn remove_parent(&self) -> HostResult<()>;
    /// The figures that change: memory, CPU time, current pids.
    fn metrics(&self, handle: &str) -> HostResult<Metrics>;
    /// The figures only a create changes (read once per container, then cached).
    fn settings(&self, handle: &str) -> HostResult<Settings>;
    /// What the OOM watcher must open to hear about the container's OOM kills.
    fn oom_source(&self, handle: &str) -> oom::Source;
}

/// The cgroup filesystems mounted read-only at /sys/fs/cgroup in an unprivileged container, in
/// its cgroup namespace (so they show its own cgroup as the root).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CgroupView {
    None,
    /// One mount per v1 hierarchy, named as on the host.
    V1(Vec<CgroupHierarchyView>),
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CgroupHierarchyView {
    /// The directory name under /sys/fs/cgroup (`cpu,cpuacct`, `memory`, `systemd`).
    pub dir: String,
    /// The options that select the hierarchy (`cpu`, `cpuacct`, `name=systemd`).
    pub options: Vec<String>,
}

/// A container's pid limit and CPU shares, as the kernel has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// 0 = unlimited.
    pub pid_max: u64,
    /// v1 `cpu.shares`; on v2 computed back from `cpu.weight`.
    pub shares: u64,
}

/// How many containers' OOM watches a start registers at once.
const OOM_WATCH_WORKERS: usize = 8;

pub struct Cgroups {
    backend: Box<dyn Backend>,
    oom: Arc<OomWatcher>,
    machine: Machine,
    config: CgroupConfig,
    /// Per container, so that metrics read only the files that change.
    settings: Mutex<HashMap<String, Settings>>,
}

/// Moves the calling thread (the whole process, if it has only the one) into the cgroup whose
/// `tasks` file is `tasks`: see [`Cgroups::self_placement_files`].
pub fn move_self_into(tasks: &Path) -> HostResult<()> {
    files::write(tasks, "0")
}

/// Facts about the machine that the CPU entitlement depends on.
#[derive(Debug, Clone, Copy)]
struct Machine {
    cpus: u64,
    memory_in_bytes: u64,
}

impl Cgroups {
    pub fn new(config: &LinuxConfig) -> HostResult<Cgroups> {
        Cgroups::with_options(CgroupOptions {
            config: config.cgroup.clone(),
            ..CgroupOptions::new(config.layout.cgroup_parent())
        })
    }

    pub fn with_options(options: CgroupOptions) -> HostResult<Cgroups> {
        validate_name(&options.parent)?;
        let mode = match options.mode {
            Some(mode) => mode,
            None => detect_mode()?,
        };
        let backend: Box<dyn Backend> = match mode {
            Mode::V1 => Box::new(v1::V1::discover(&options.parent)?),
            Mode::V2 => Box::new(v2::V2::new(&options.v2_root, &options.parent)?),
        };
        let machine = Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64)
                .unwrap_or(1),
            memory_in_bytes: mem_total()?,
        };
        Ok(Cgroups {
            backend,
            oom: Arc::new(OomWatcher::new()?),
            machine,
            config: options.config,
            settings: Mutex::new(HashMap::new()),
        })
    }

    pub fn mode(&self) -> Mode {
        self.backend.mode()
    }

    /// Creates the container's cgroup with its limits under the server's flags and its device
    /// allowlist (privileged containers may also use /dev/fuse and the operator's device
    /// rules). Idempotent: an existing cgroup gets them written
    /// again.
    pub fn create(&self, handle: &str, limits: &Limits, privileged: bool) -> HostResult<()> {
        // The core admits no other handle; this keeps anyone else from making a cgroup that
        // collides with a control file of our parent.
        trellis_core::handle::validate(handle).map_err(|reason| {
            HostError::Invalid(format!(
                "cannot make a cgroup for handle {handle:?}: {reason}"
            ))
        })?;
        let extra = &self.config.privileged_device_rules;
        let devices = devices::allow_rules(privileged, devices::host_has_fuse(), extra);
        let resources = Resources::new(limits, &self.config, || {
            resources::disks(Path::new("/sys/block"))
        });
        let created = self
            .backend
            .create(handle, &resources, &devices)
            .and_then(|()| self.backend.settings(handle));
        match created {
            Ok(settings) => {
                self.lock_settings().insert(handle.to_string(), settings);
                self.oom.watch(handle, self.backend.oom_source(handle));
                Ok(())
            }
            Err(e) => {
                // Leave nothing half-made behind; the core retries or tears down.
                let _ = self.backend.remove_dirs(handle);
                Err(e)
            }
        }
    }

    /// What an unprivileged container sees at /sys/fs/cgroup.
    pub fn container_view(&self) -> CgroupView {
        self.backend.container_view()
    }

    /// Moves `pid` (its whole thread group) into the container's cgroup: one write per
    /// hierarchy.
    pub fn add_process(&self, handle: &str, pid: u32) -> HostResult<()> {
        validate_name(handle)?;
        self.backend.add_process(handle, pid)
    }

    /// Where a single-threaded process about to start the container moves itself into the
    /// container's cgroups (see [`move_self_into`]), or `None` on v2, where it is forked
    /// straight into them ([`Cgroups::fork_target`]) or, on a kernel too old for that, placed
    /// by the server ([`Cgroups::add_process`]).
    ///
    /// Moving another process (`add_process`) write-locks the kernel's global threadgroup
    /// lock, which waits for an RCU grace period: about 10 ms per container start on a v1 host,
    /// most of a create. A thread that moves itself through v1's `tasks` file skips that lock
    /// (the kernel takes it only to keep another process's thread group stable).
    pub fn self_placement_files(&self, handle: &str) -> HostResult<Option<Vec<PathBuf>>> {
        validate_name(handle)?;
        Ok(self.backend.self_placement_files(handle))
    }

    /// The container's cgroup directory, opened, for a single-threaded process to fork the
    /// process that starts the container straight into it (`clone3` with
    /// `CLONE_INTO_CGROUP`, cgroup2 only, Linux 5.7 and later), or `None` on v1 (where that
    /// process moves itself, see [`Cgroups::self_placement_files`]).
    ///
    /// A process forked into its cgroup is never migrated, so it skips the threadgroup lock
    /// that [`Cgroups::add_process`] takes (the v2 counterpart of v1's cheap self-move).
    pub fn fork_target(&self, handle: &str) -> HostResult<Option<OwnedFd>> {
        validate_name(handle)?;
        let Some(dir) = self.backend.fork_target_dir(handle) else {
            return Ok(None);
        };
        // O_RDONLY and O_CLOEXEC come with `File::open`; a cgroup is a directory.
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&dir)
            .map(|dir| Some(OwnedFd::from(dir)))
            .map_err(|e| HostError::io(format!("opening the cgroup {}", dir.display()), e))
    }

    /// Every pid in the container's cgroup, nested cgroups included. Empty when the cgroup
    /// does not exist.
    pub fn pids(&self, handle: &str) -> HostResult<Vec<u32>> {
        validate_name(handle)?;
        self.backend.pids(handle)
    }

    /// Kills whatever still runs in the cgroup and removes it. Succeeds when it is already
    /// gone; fails (for the core to retry) if processes refuse to die within a few seconds.
    pub fn remove(&self, handle: &str) -> HostResult<()> {
        validate_name(handle)?;
        self.oom.unwatch(handle);
        self.lock_settings().remove(handle);
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let mut pause = Duration::from_millis(1);
        loop {
            if !self.backend.exists(handle) {
                return Ok(());
            }
            if self.backend.remove_dirs(handle)? {
                return Ok(());
            }
            self.backend.kill_all(handle)?;
            if Instant::now() >= deadline {
                let pids = self.backend.pids(handle).unwrap_or_default();
                return Err(HostError::Unexpected(format!(
                    "remove cgroup {handle}: still busy after {REMOVE_TIMEOUT:?} (pids {pids:?})"
                )));
            }
            // Killed processes leave the cgroup asynchronously, and rmdir answers EBUSY until
            // they have: a bounded retry the kernel forces.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    pub fn exists(&self, handle: &str) -> bool {
        validate_name(handle).is_ok() && self.backend.exists(handle)
    }

    /// Every container cgroup under our parent.
    pub fn handles(&self) -> HostResult<Vec<String>> {
        self.backend.handles()
    }

    /// Removes our (empty) parent cgroup, e.g. when a test or an uninstall is done with it.
    pub fn remove_parent(&self) -> HostResult<()> {
        self.backend.remove_parent()
    }

    /// Memory, CPU and pid figures. `cpu_entitlement` holds the container's entitlement per
    /// second of age (ns of CPU time); the core scales it by the container's age.
    pub fn metrics(&self, handle: &str) -> HostResult<Metrics> {
        validate_name(handle)?;
        let mut metrics = self.backend.metrics(handle)?;
        let cached = self.lock_settings().get(handle).copied();
        let settings = match cached {
            Some(settings) => settings,
            None => {
                // A container from before a restart.
                let settings = self.backend.settings(handle)?;
                self.lock_settings().insert(handle.to_string(), settings);
                settings
            }
        };
        metrics.pid_stat.max = settings.pid_max;
        let per_share = self.config.cpu_entitlement_per_share.unwrap_or_else(|| {
            default_entitlement_per_share(self.machine.cpus, self.machine.memory_in_bytes)
        });
        metrics.cpu_entitlement = entitlement_per_second(settings.shares, per_share);
        Ok(metrics)
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Settings>> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The machine's memory; the disk figures come from the depot's filesystem elsewhere.
    pub fn capacity(&self) -> HostResult<HostCapacity> {
        Ok(HostCapacity {
            memory_in_bytes: mem_total()?,
            ..HostCapacity::default()
        })
    }

    /// Reports `Observation::OutOfMemory` for every OOM kill in a container's cgroup, from a
    /// thread of its own. Containers that already exist are watched from now on (a few at
    /// once: each registration is a handful of syscalls, and a start may find thousands).
    pub fn watch_oom(&self, sink: ObservationSink) {
        if let Ok(handles) = self.backend.handles() {
            super::parallel::map(&handles, OOM_WATCH_WORKERS, |handle| {
                self.oom.watch(handle, self.backend.oom_source(handle))
            });
        }
        OomWatcher::start(&self.oom, sink);
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.oom.stop();
    }
}

/// How long `remove` keeps killing before it reports failure.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Cgroup directory names come from handles; refuse anything that could leave our parent. (A
/// name that could never be a container's cgroup, such as a control file's, is only ever
/// looked at: a non-directory is never taken for a cgroup.)
fn validate_name(name: &str) -> HostResult<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.len() > 255
    {
        return Err(HostError::Invalid(format!("{name:?} cannot name a cgroup")));
    }
    Ok(())
}

/// A cgroup2 filesystem on `/sys/fs/cgroup` means the unified hierarchy.
pub fn detect_mode() -> HostResult<Mode> {
    let fs = nix::sys::statfs::statfs(CGROUP_ROOT)
        .map_err(|e| HostError::io(format!("statfs {CGROUP_ROOT}"), std::io::Error::from(e)))?;
    Ok(
        if fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
            Mode::V2
        } else {
            Mode::V1
        },
    )
}

/// `MemTotal` from /proc/meminfo, in bytes.
pub fn mem_total() -> HostResult<u64> {
    let meminfo = files::read("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| HostError::Unexpected("/proc/meminfo has no MemTotal".into()))
}

pub use trellis_core::api::shares_to_weight;

/// What to write to `pids.max`: the kernel refuses numbers of PID_MAX_LIMIT (4194304) and
/// above, which cannot be reached anyway, so those mean no limit.
pub(crate) fn pids_max_value(max: u64) -> String {
    const PID_MAX_LIMIT: u64 = 4_194_304;
    if max >= PID_MAX_LIMIT {
        "max".to_string()
    } else {
        max.to_string()
    }
}

/// The inverse of [`shares_to_weight`] (guardian uses it for the v2 CPU entitlement).
pub fn weight_to_shares(weight: u64) -> u64 {
    match weight {
        0 => 0,
        1 => 2,
        w if w >= 10_000 => 262_144,
        w => {
            let w = w as f64;
            let c = 612.0 * (((w - 1.0) * w).sqrt().log10() + 7.0 / 34.0);
            let l = (-125.0 + (125.0f64 * 125.0 + 4.0 * c).sqrt()) / 2.0;
            2f64.powf(l).round() as u64
        }
    }
}

/// Guardian's default entitlement of one share, in % of a core: (cpus × 100) / (memory in MiB).
pub fn default_entitlement_per_share(cpus: u64, memory_in_bytes: u64) -> f64 {
    let memory_mib = memory_in_bytes / (1024 * 1024);
    if memory_mib == 0 {
        return 0.0;
    }
    (cpus * 100) as f64 / memory_mib as f64
}

/// Guardian's CPU entitlement, per second of age: shares × (per-share % of one core) / 100, in
/// ns of CPU per second of wall time.
pub fn entitlement_per_second(shares: u64, per_share_percent: f64) -> u64 {
    // `as` saturates: a negative or absurd percentage gives 0 or u64::MAX, never UB.
    (shares as f64 * per_share_percent / 100.0 * 1e9) as u64
}

pub(crate) fn child(root: &Path, parent: &str, handle: &str) -> PathBuf {
    root.join(parent).join(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_to_weights_as_runc_does() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(1028), 101);
        assert_eq!(shares_to_weight(280), 37);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(u64::MAX), 10_000);
    }

    #[test]
    fn weights_convert_back_to_shares() {
        assert_eq!(weight_to_shares(0), 0);
        assert_eq!(weight_to_shares(1), 2);
        // Guardian solves for the geometric mean of w−1 and w, so weight 100 (shares 1024)
        // comes back as 1017, which still converts to weight 100.
        assert_eq!(weight_to_shares(100), 1017);
        assert_eq!(weight_to_shares(10_000), 262_144);
        for shares in [2u64, 50, 280, 1024, 1028, 5000, 100_000] {
            let weight = shares_to_weight(shares);
            // The weight is rounded up, so the round trip lands at or above the shares that
            // give that weight, and maps back to the same weight.
            assert_eq!(
                shares_to_weight(weight_to_shares(weight)),
                weight,
                "{shares}"
            );
        }
    }

    #[test]
    fn entitlement_follows_guardians_formula() {
        // 4 cores, 16 GiB: 0.0244 % of a core per share, so 1024 shares is 0.25 core.
        let per_share = default_entitlement_per_share(4, 16 << 30);
        assert_eq!(entitlement_per_second(1024, per_share), 250_000_000);
        assert_eq!(entitlement_per_second(0, per_share), 0);
        assert_eq!(default_entitlement_per_share(4, 0), 0.0);
        // --cpu-entitlement-per-share 0.5: 200 shares are one core.
        assert_eq!(entitlement_per_second(200, 0.5), 1_000_000_000);
    }

    #[test]
    fn pid_limits_beyond_the_kernels_range_mean_no_limit() {
        assert_eq!(pids_max_value(50), "50");
        assert_eq!(pids_max_value(4_194_303), "4194303");
        assert_eq!(pids_max_value(4_194_304), "max");
        assert_eq!(pids_max_value(u64::MAX), "max");
    }

    #[test]
    fn names_that_escape_the_parent_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name("handle-1").is_ok());
    }
}

//! cgroup v2: `<root>/<parent>/<handle>` in the unified hierarchy.

use super::files::{self, parse_u64_or_max};
use super::oom::Source;
use super::resources::{blkio_to_io_weight, Resources, CPU_PERIOD_US};
use super::stats;
use super::{
    device_program, pids_max_value, shares_to_weight, weight_to_shares, Backend, CgroupView, Mode,
    Settings,
};
use crate::host::{HostError, HostResult};
use crate::linux::security::devices::AllowRule;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use trellis_core::api::Metrics;

/// The controllers containers get, when the kernel offers them: those their limits and
/// metrics use.
const WANTED: &[&str] = &["cpu", "io", "memory", "pids"];

pub struct V2 {
    root: PathBuf,
    parent: String,
    /// Whether `root` is a real cgroup2 mount, where device programs can be attached (unit
    /// tests use a plain directory tree).
    device_control: bool,
    parent_ready: AtomicBool,
    /// Serialises the parent's setup: two creates at once must not both set it up (v1: the
    /// device rules cannot be changed once the other's container cgroup exists).
    parent_setup: std::sync::Mutex<()>,
}

impl V2 {
    pub fn new(root: &Path, parent: &str) -> HostResult<V2> {
        if !root.join("cgroup.procs").exists() {
            return Err(HostError::Unexpected(format!(
                "{} is not a cgroup2 mount",
                root.display()
            )));
        }
        const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
        let device_control = nix::sys::statfs::statfs(root)
            .is_ok_and(|fs| fs.filesystem_type().0 == CGROUP2_SUPER_MAGIC);
        Ok(V2 {
            root: root.to_path_buf(),
            parent: parent.to_string(),
            device_control,
            parent_ready: AtomicBool::new(false),
            parent_setup: std::sync::Mutex::new(()),
        })
    }

    fn dir(&self, handle: &str) -> PathBuf {
        super::child(&self.root, &self.parent, handle)
    }

    /// Makes our parent and hands it (and through it, each container) every wanted controller
    /// the root offers.
    fn ensure_parent(&self) -> HostResult<()> {
        if self.parent_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _setup = self.parent_setup.lock().unwrap_or_else(|e| e.into_inner());
        if self.parent_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let parent = self.root.join(&self.parent);
        files::mkdir(&parent)?;
        let available = files::read(self.root.join("cgroup.controllers"))?;
        for controller in WANTED
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
        {
            for dir in [&self.root, &parent] {
                let enabled = files::read(dir.join("cgroup.subtree_control"))?;
                if !enabled.split_whitespace().any(|e| e == *controller) {
                    files::write(
                        dir.join("cgroup.subtree_control"),
                        &format!("+{controller}"),
                    )?;
                }
            }
        }
        self.parent_ready.store(true, Ordering::Release);
        Ok(())
    }

    fn apply_limits(&self, dir: &Path, resources: &Resources) -> HostResult<()> {
        if resources.memory > 0 {
            let memory = resources.memory.to_string();
            files::write(need(dir, "memory.max", "memory")?, &memory)?;
            // Guardian's swap limit equal to the memory limit: runc writes L − L = 0.
            let swap = dir.join("memory.swap.max");
            if resources.limit_swap && swap.exists() {
                files::write(swap, "0")?;
            }
        }
        let weight = shares_to_weight(resources.shares);
        if weight > 0 {
            files::write(need(dir, "cpu.weight", "cpu")?, &weight.to_string())?;
        }
        if let Some(quota) = resources.cpu_quota {
            files::write(
                need(dir, "cpu.max", "cpu")?,
                &format!("{quota} {CPU_PERIOD_US}"),
            )?;
        }
        if resources.pids > 0 {
            files::write(
                need(dir, "pids.max", "pids")?,
                &pids_max_value(resources.pids),
            )?;
        }
        if resources.blockio_weight > 0 {
            // As runc: BFQ takes the blkio weight as it is; io.weight its conversion.
            let bfq = dir.join("io.bfq.weight");
            if bfq.exists() {
                files::write(bfq, &resources.blockio_weight.to_string())?;
            } else {
                files::write(
                    need(dir, "io.weight", "io")?,
                    &blkio_to_io_weight(resources.blockio_weight).to_string(),
                )?;
            }
        }
        if !resources.throttles.is_empty() {
            let io_max = need(dir, "io.max", "io")?;
            for throttle in &resources.throttles {
                let device = throttle.device;
                files::write(
                    &io_max,
                    &format!(
                        "{}:{} {}={}",
                        device.major,
                        device.minor,
                        throttle.limit.v2_key(),
                        throttle.rate
                    ),
                )?;
            }
        }
        Ok(())
    }
}

/// Attaches the device program for `devices` to the cgroup at `dir`.
pub fn restrict_devices(dir: &Path, devices: &[AllowRule]) -> HostResult<()> {
    let program = device_program::load(devices)
        .map_err(|e| HostError::io("loading the device program", e))?;
    let cgroup = std::fs::File::open(dir)
        .map_err(|e| HostError::io(format!("opening {}", dir.display()), e))?;
    device_program::attach(program.as_fd(), cgroup.as_fd()).map_err(|e| {
        HostError::io(
            format!("attaching the device program to {}", dir.display()),
            e,
        )
    })
}

/// The control file, or an error saying which controller is missing.
fn need(dir: &Path, file: &str, controller: &str) -> HostResult<PathBuf> {
    let path = dir.join(file);
    if path.exists() {
        Ok(path)
    } else {
        Err(HostError::Unexpected(format!(
            "the {controller} cgroup controller is not available, so its limit cannot be applied"
        )))
    }
}

impl Backend for V2 {
    fn mode(&self) -> Mode {
        Mode::V2
    }

    fn create(&self, handle: &str, resources: &Resources, devices: &[AllowRule]) -> HostResult<()> {
        self.ensure_parent()?;
        let dir = self.dir(handle);
        if let Err(e) = files::mkdir(&dir) {
            // Someone removed our parent; set it up again once.
            self.parent_ready.store(false, Ordering::Release);
            self.ensure_parent().map_err(|_| e)?;
            files::mkdir(&dir)?;
        }
        if self.device_control {
            restrict_devices(&dir, devices)?;
        }
        self.apply_limits(&dir, resources)
    }

    fn container_view(&self) -> CgroupView {
        CgroupView::V2
    }

    fn add_process(&self, handle: &str, pid: u32) -> HostResult<()> {
        files::write(self.dir(handle).join("cgroup.procs"), &pid.to_string())
    }

    fn self_placement_files(&self, _handle: &str) -> Option<Vec<PathBuf>> {
        // cgroup2 moves single threads only within threaded subtrees.
        None
    }

    fn fork_target_dir(&self, handle: &str) -> Option<PathBuf> {
        Some(self.dir(handle))
    }

    fn pids(&self, handle: &str) -> HostResult<Vec<u32>> {
        let mut pids = Vec::new();
        files::pids_recursive(&self.dir(handle), &mut pids)?;
        Ok(pids)
    }

    fn kill_all(&self, handle: &str) -> HostResult<()> {
        let dir = self.dir(handle);
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            // The kernel kills every process in the subtree, forks included.
            return match files::write(&kill_file, "1") {
                Ok(()) => Ok(()),
                Err(_) if !dir.exists() => Ok(()),
                Err(e) => Err(e),
            };
        }
        for pid in self.pids(handle)? {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        Ok(())
    }

    fn remove_dirs(&self, handle: &str) -> HostResult<bool> {
        files::remove_tree(&self.dir(handle))
    }

    fn exists(&self, handle: &str) -> bool {
        self.dir(handle).is_dir()
    }

    fn handles(&self) -> HostResult<Vec<String>> {
        files::subdirs(&self.root.join(&self.parent))
    }

    fn remove_parent(&self) -> HostResult<()> {
        self.parent_ready.store(false, Ordering::Release);
        let dir = self.root.join(&self.parent);
        if !files::subdirs(&dir)?.is_empty() || !files::remove_tree(&dir)? {
            return Err(HostError::Unexpected(format!(
                "{} still has containers",
                dir.display()
            )));
        }
        Ok(())
    }

    fn metrics(&self, handle: &str) -> HostResult<Metrics> {
        let dir = self.dir(handle);
        let mut metrics = Metrics {
            // cpu.stat is there with or without the cpu controller.
            cpu_stat: stats::cpu_stat_v2(&files::read(dir.join("cpu.stat"))?),
            ..Metrics::default()
        };
        if let Some(text) = files::read_optional(dir.join("memory.stat"))? {
            metrics.memory_stat = stats::memory_stat(&text);
            metrics.memory_stat.total_usage_toward_limit =
                stats::usage_toward_limit_v2(&metrics.memory_stat);
        }
        if let Some(current) = files::read_optional(dir.join("pids.current"))? {
            metrics.pid_stat.current = parse_u64_or_max(&current).unwrap_or(0);
        }
        Ok(metrics)
    }

    fn settings(&self, handle: &str) -> HostResult<Settings> {
        let dir = self.dir(handle);
        let mut settings = Settings::default();
        if let Some(max) = files::read_optional(dir.join("pids.max"))? {
            settings.pid_max = parse_u64_or_max(&max).unwrap_or(0);
        }
        if let Some(weight) = files::read_optional(dir.join("cpu.weight"))? {
            // What guardian does for the entitlement on v2.
            settings.shares = weight_to_shares(weight.trim().parse().unwrap_or(0));
        }
        Ok(settings)
    }

    fn oom_source(&self, handle: &str) -> Source {
        let events = self.dir(handle).join("memory.events");
        if events.exists() {
            Source::V2 { events }
        } else {
            Source::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroup::resources::{BlockDevice, CgroupConfig, IoMax};
    use trellis_core::api::{CpuLimits, Limits, MemoryLimits, PidLimits};

    fn resources(limits: &Limits, config: &CgroupConfig) -> Resources {
        Resources::new(limits, config, || {
            vec![BlockDevice {
                major: 254,
                minor: 0,
            }]
        })
    }

    /// A directory tree shaped like a cgroup2 mount whose container cgroup already has the
    /// controller files, so that the values written can be read back without the kernel.
    fn fake_tree(controllers: &str) -> (tempfile::TempDir, V2) {
        let root = tempfile::tempdir().expect("tempdir");
        let container = root.path().join("trellis-x").join("c1");
        std::fs::create_dir_all(&container).expect("mkdir");
        for dir in [root.path(), &root.path().join("trellis-x")] {
            std::fs::write(dir.join("cgroup.controllers"), controllers).expect("write");
            std::fs::write(dir.join("cgroup.subtree_control"), "").expect("write");
        }
        std::fs::write(root.path().join("cgroup.procs"), "").expect("write");
        for file in [
            "memory.max",
            "memory.swap.max",
            "cpu.weight",
            "cpu.max",
            "pids.max",
            "io.weight",
            "io.max",
        ] {
            std::fs::write(container.join(file), "").expect("write");
        }
        let v2 = V2::new(root.path(), "trellis-x").expect("v2");
        (root, v2)
    }

    fn read(root: &tempfile::TempDir, file: &str) -> String {
        std::fs::read_to_string(root.path().join("trellis-x/c1").join(file)).expect("read")
    }

    #[test]
    fn limits_are_written_as_guardian_writes_them() {
        let (root, v2) = fake_tree("cpu memory pids");
        let limits = Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 64 << 20,
            },
            cpu_limits: CpuLimits {
                weight: 1028,
                limit_in_shares: 0,
            },
            pid_limits: PidLimits { max: 50 },
            ..Limits::default()
        };
        v2.create("c1", &resources(&limits, &CgroupConfig::default()), &[])
            .expect("create");
        assert_eq!(read(&root, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&root, "memory.swap.max"), "0");
        assert_eq!(read(&root, "cpu.weight"), "101");
        assert_eq!(read(&root, "pids.max"), "50");
        for untouched in ["cpu.max", "io.weight", "io.max"] {
            assert_eq!(read(&root, untouched), "", "{untouched}");
        }
    }

    #[test]
    fn the_servers_limit_flags_are_written_as_runc_writes_them() {
        let (root, v2) = fake_tree("cpu io memory pids");
        let limits = Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 64 << 20,
            },
            cpu_limits: CpuLimits {
                weight: 0,
                limit_in_shares: 512,
            },
            ..Limits::default()
        };
        let config = CgroupConfig {
            cpu_quota_per_share: 10,
            blockio_weight: 500,
            io_max: IoMax {
                write_iops: 7,
                ..IoMax::default()
            },
            disable_swap_limit: true,
            ..CgroupConfig::default()
        };
        v2.create("c1", &resources(&limits, &config), &[])
            .expect("create");
        assert_eq!(read(&root, "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read(&root, "memory.swap.max"), "", "swap left unlimited");
        assert_eq!(read(&root, "cpu.max"), "5120 100000");
        assert_eq!(read(&root, "io.weight"), "4950");
        assert_eq!(read(&root, "io.max"), "254:0 wiops=7");

        // BFQ takes the blkio weight unconverted.
        std::fs::write(root.path().join("trellis-x/c1/io.bfq.weight"), "").expect("write");
        v2.create("c1", &resources(&limits, &config), &[])
            .expect("create again");
        assert_eq!(read(&root, "io.bfq.weight"), "500");
    }

    #[test]
    fn a_limit_without_its_controller_is_a_clear_error() {
        let (root, v2) = fake_tree("");
        std::fs::remove_file(root.path().join("trellis-x/c1/memory.max")).expect("rm");
        let limits = Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 1 << 20,
            },
            ..Limits::default()
        };
        let err = v2
            .create("c1", &resources(&limits, &CgroupConfig::default()), &[])
            .expect_err("no memory controller");
        assert!(
            err.to_string().contains("memory cgroup controller"),
            "{err}"
        );
    }

    #[test]
    fn metrics_come_from_the_v2_files() {
        let (root, v2) = fake_tree("cpu memory pids");
        let dir = root.path().join("trellis-x/c1");
        std::fs::write(
            dir.join("cpu.stat"),
            "usage_usec 300\nuser_usec 200\nsystem_usec 100\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("memory.stat"),
            "anon 4096\nfile 8192\ninactive_file 1024\nswapcached 0\n",
        )
        .expect("write");
        std::fs::write(dir.join("pids.current"), "3\n").expect("write");
        std::fs::write(dir.join("cpu.weight"), "100\n").expect("write");
        let m = v2.metrics("c1").expect("metrics");
        assert_eq!(
            (m.cpu_stat.usage, m.cpu_stat.user, m.cpu_stat.system),
            (300_000, 200_000, 100_000)
        );
        assert_eq!(m.memory_stat.anon, 4096);
        assert_eq!(m.memory_stat.total_usage_toward_limit, 4096 + 8192 - 1024);
        assert_eq!(m.pid_stat.current, 3);
        let settings = v2.settings("c1").expect("settings");
        assert_eq!(settings.pid_max, 0, "unset reads as unlimited");
        assert_eq!(
            settings.shares, 1017,
            "shares computed back from the weight"
        );
    }
}

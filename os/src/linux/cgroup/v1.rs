//! cgroup v1: a directory `<parent>/<handle>` in every mounted hierarchy.

use super::files::{self, parse_u64_or_max};
use super::oom::Source;
use super::resources::{Resources, CPU_PERIOD_US};
use super::stats;
use super::{pids_max_value, Backend, CgroupHierarchyView, CgroupView, Mode, Settings};
use crate::host::{HostError, HostResult};
use crate::linux::security::devices::AllowRule;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use trellis_core::api::Metrics;

/// One mounted v1 hierarchy: its mount point and the controllers bound to it (a named
/// hierarchy such as `name=systemd` has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
    /// Mount options that identify it (`memory`, `cpu,cpuacct`, `name=systemd`).
    pub key: String,
}

pub struct V1 {
    parent: String,
    hierarchies: Vec<Hierarchy>,
    /// Where the controllers we read or write live (`None` when not mounted).
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuacct: Option<PathBuf>,
    pids: Option<PathBuf>,
    freezer: Option<PathBuf>,
    cpuset: Option<PathBuf>,
    devices: Option<PathBuf>,
    blkio: Option<PathBuf>,
    /// The hierarchy whose `cgroup.procs` lists the container's processes.
    primary: PathBuf,
    parent_ready: AtomicBool,
    /// Serialises the parent's setup: two creates at once must not both set it up (v1: the
    /// device rules cannot be changed once the other's container cgroup exists).
    parent_setup: std::sync::Mutex<()>,
}

impl V1 {
    /// Finds the v1 hierarchies from /proc/self/mountinfo.
    pub fn discover(parent: &str) -> HostResult<V1> {
        let mountinfo = files::read("/proc/self/mountinfo")?;
        let known = files::read("/proc/cgroups")?;
        let controllers: BTreeSet<&str> = known
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        V1::with_hierarchies(parent, parse_mountinfo(&mountinfo, &controllers))
    }

    pub fn with_hierarchies(parent: &str, hierarchies: Vec<Hierarchy>) -> HostResult<V1> {
        let find = |name: &str| {
            hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == name))
                .map(|h| h.mount.clone())
        };
        let pids = find("pids");
        let memory = find("memory");
        let freezer = find("freezer");
        let primary = pids
            .clone()
            .or_else(|| memory.clone())
            .or_else(|| freezer.clone())
            .or_else(|| hierarchies.first().map(|h| h.mount.clone()))
            .ok_or_else(|| HostError::Unexpected("no cgroup v1 hierarchy is mounted".into()))?;
        Ok(V1 {
            parent: parent.to_string(),
            memory,
            cpu: find("cpu"),
            cpuacct: find("cpuacct"),
            pids,
            freezer,
            cpuset: find("cpuset"),
            devices: find("devices"),
            blkio: find("blkio"),
            primary,
            hierarchies,
            parent_ready: AtomicBool::new(false),
            parent_setup: std::sync::Mutex::new(()),
        })
    }

    pub fn hierarchies(&self) -> &[Hierarchy] {
        &self.hierarchies
    }

    fn dir(&self, mount: &Path, handle: &str) -> PathBuf {
        super::child(mount, &self.parent, handle)
    }

    /// Our parent cgroup in every hierarchy, set up as guardian sets up `garden`: cpusets
    /// copied from the root (a cpuset cgroup without cpus cannot take processes) and
    /// inherited by children. Its devices stay as inherited (everything, as `garden`'s under
    /// the root): each container's own cgroup denies all but its rules, and v1 lets a
    /// privileged container (init-namespace CAP_SYS_ADMIN) `echo a > devices.allow` for itself
    /// only under a parent that allows everything (GATS DV9, nested Garden).
    fn ensure_parent(&self) -> HostResult<()> {
        if self.parent_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _setup = self.parent_setup.lock().unwrap_or_else(|e| e.into_inner());
        if self.parent_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for h in &self.hierarchies {
            let dir = h.mount.join(&self.parent);
            files::mkdir(&dir)?;
            if Some(&h.mount) == self.cpuset.as_ref() {
                copy_cpuset(&h.mount, &dir)?;
                files::write(dir.join("cgroup.clone_children"), "1")?;
            }
        }
        self.parent_ready.store(true, Ordering::Release);
        Ok(())
    }

    fn apply_limits(&self, handle: &str, resources: &Resources) -> HostResult<()> {
        if resources.memory > 0 {
            let dir = self.need(&self.memory, "memory", handle)?;
            let memory = resources.memory.to_string();
            files::write(dir.join("memory.limit_in_bytes"), &memory)?;
            // No swap beyond the limit. Absent when the kernel does not account swap.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if resources.limit_swap && memsw.exists() {
                files::write(memsw, &memory)?;
            }
        }
        if resources.shares > 0 {
            let dir = self.need(&self.cpu, "cpu", handle)?;
            files::write(dir.join("cpu.shares"), &resources.shares.to_string())?;
        }
        if let Some(quota) = resources.cpu_quota {
            let dir = self.need(&self.cpu, "cpu", handle)?;
            files::write(dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
            files::write(dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if resources.pids > 0 {
            let dir = self.need(&self.pids, "pids", handle)?;
            files::write(dir.join("pids.max"), &pids_max_value(resources.pids))?;
        }
        if resources.blockio_weight > 0 {
            let dir = self.need(&self.blkio, "blkio", handle)?;
            // As runc: CFQ's file, else BFQ's.
            let file = ["blkio.weight", "blkio.bfq.weight"]
                .iter()
                .map(|f| dir.join(f))
                .find(|f| f.exists())
                .ok_or_else(|| {
                    HostError::Unexpected(
                        "a block IO weight needs blkio.weight or blkio.bfq.weight, which this \
                         kernel offers only with the BFQ IO scheduler"
                            .into(),
                    )
                })?;
            files::write(file, &resources.blockio_weight.to_string())?;
        }
        for throttle in &resources.throttles {
            let dir = self.need(&self.blkio, "blkio", handle)?;
            let device = throttle.device;
            files::write(
                dir.join(throttle.limit.v1_file()),
                &format!("{}:{} {}", device.major, device.minor, throttle.rate),
            )?;
        }
        Ok(())
    }

    fn need(&self, mount: &Option<PathBuf>, controller: &str, handle: &str) -> HostResult<PathBuf> {
        mount.as_ref().map(|m| self.dir(m, handle)).ok_or_else(|| {
            HostError::Unexpected(format!(
                "the {controller} cgroup controller is not mounted, so its limit cannot be applied"
            ))
        })
    }
}

impl Backend for V1 {
    fn mode(&self) -> Mode {
        Mode::V1
    }

    fn create(&self, handle: &str, resources: &Resources, devices: &[AllowRule]) -> HostResult<()> {
        self.ensure_parent()?;
        for h in &self.hierarchies {
            let dir = self.dir(&h.mount, handle);
            if let Err(e) = files::mkdir(&dir) {
                // Someone removed our parent; set it up again once.
                self.parent_ready.store(false, Ordering::Release);
                self.ensure_parent().map_err(|_| e)?;
                files::mkdir(&dir)?;
            }
            if Some(&h.mount) == self.cpuset.as_ref() {
                copy_cpuset(&h.mount.join(&self.parent), &dir)?;
            }
            if Some(&h.mount) == self.devices.as_ref() {
                files::write(dir.join("devices.deny"), "a")?;
                for rule in devices {
                    files::write(dir.join("devices.allow"), &rule.v1_line())?;
                }
            }
        }
        self.apply_limits(handle, resources)
    }

    fn container_view(&self) -> CgroupView {
        CgroupView::V1(
            self.hierarchies
                .iter()
                .filter_map(|h| {
                    let dir = h.mount.file_name()?.to_str()?.to_string();
                    Some(CgroupHierarchyView {
                        dir,
                        options: h.key.split(',').map(str::to_string).collect(),
                    })
                })
                .collect(),
        )
    }

    fn add_process(&self, handle: &str, pid: u32) -> HostResult<()> {
        let pid = pid.to_string();
        for h in &self.hierarchies {
            files::write(self.dir(&h.mount, handle).join("cgroup.procs"), &pid)?;
        }
        Ok(())
    }

    fn self_placement_files(&self, handle: &str) -> Option<Vec<PathBuf>> {
        Some(
            self.hierarchies
                .iter()
                .map(|h| self.dir(&h.mount, handle).join("tasks"))
                .collect(),
        )
    }

    fn fork_target_dir(&self, _handle: &str) -> Option<PathBuf> {
        // CLONE_INTO_CGROUP takes only a cgroup2 directory.
        None
    }

    fn pids(&self, handle: &str) -> HostResult<Vec<u32>> {
        let mut pids = Vec::new();
        files::pids_recursive(&self.dir(&self.primary, handle), &mut pids)?;
        Ok(pids)
    }

    fn kill_all(&self, handle: &str) -> HostResult<()> {
        // Frozen processes cannot fork while we signal them; SIGKILL lands once thawed.
        let freezer = self.freezer.as_ref().map(|m| self.dir(m, handle));
        if let Some(dir) = freezer.as_ref().filter(|d| d.exists()) {
            let _ = files::write(dir.join("freezer.state"), "FROZEN");
            // v1's freezer tells nobody when FREEZING turns FROZEN: a bounded poll.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline {
                match files::read_optional(dir.join("freezer.state"))? {
                    Some(state) if state.trim() != "FREEZING" => break,
                    None => break,
                    _ => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        for pid in self.pids(handle)? {
            kill_pid(pid);
        }
        if let Some(dir) = freezer.as_ref().filter(|d| d.exists()) {
            let _ = files::write(dir.join("freezer.state"), "THAWED");
        }
        Ok(())
    }

    fn remove_dirs(&self, handle: &str) -> HostResult<bool> {
        let mut all = true;
        for h in &self.hierarchies {
            all &= files::remove_tree(&self.dir(&h.mount, handle))?;
        }
        Ok(all)
    }

    fn exists(&self, handle: &str) -> bool {
        self.hierarchies
            .iter()
            .any(|h| self.dir(&h.mount, handle).is_dir())
    }

    fn handles(&self) -> HostResult<Vec<String>> {
        let mut handles = BTreeSet::new();
        for h in &self.hierarchies {
            handles.extend(files::subdirs(&h.mount.join(&self.parent))?);
        }
        Ok(handles.into_iter().collect())
    }

    fn remove_parent(&self) -> HostResult<()> {
        self.parent_ready.store(false, Ordering::Release);
        for h in &self.hierarchies {
            let dir = h.mount.join(&self.parent);
            if !files::subdirs(&dir)?.is_empty() || !files::remove_tree(&dir)? {
                return Err(HostError::Unexpected(format!(
                    "{} still has containers",
                    dir.display()
                )));
            }
        }
        Ok(())
    }

    fn metrics(&self, handle: &str) -> HostResult<Metrics> {
        let mut metrics = Metrics::default();
        if let Some(mount) = &self.memory {
            let dir = self.dir(mount, handle);
            metrics.memory_stat = stats::memory_stat(&files::read(dir.join("memory.stat"))?);
            metrics.memory_stat.total_usage_toward_limit =
                stats::usage_toward_limit_v1(&metrics.memory_stat);
        }
        if let Some(mount) = &self.cpuacct {
            let dir = self.dir(mount, handle);
            metrics.cpu_stat =
                stats::cpuacct_usage_all_v1(&files::read(dir.join("cpuacct.usage_all"))?);
        }
        if let Some(mount) = &self.pids {
            let dir = self.dir(mount, handle);
            metrics.pid_stat.current =
                parse_u64_or_max(&files::read(dir.join("pids.current"))?).unwrap_or(0);
        }
        Ok(metrics)
    }

    fn settings(&self, handle: &str) -> HostResult<Settings> {
        let mut settings = Settings::default();
        if let Some(mount) = &self.pids {
            let max = files::read(self.dir(mount, handle).join("pids.max"))?;
            settings.pid_max = parse_u64_or_max(&max).unwrap_or(0);
        }
        if let Some(mount) = &self.cpu {
            let shares = files::read(self.dir(mount, handle).join("cpu.shares"))?;
            settings.shares = shares.trim().parse().unwrap_or(0);
        }
        Ok(settings)
    }

    fn oom_source(&self, handle: &str) -> Source {
        match &self.memory {
            Some(mount) => Source::V1 {
                dir: self.dir(mount, handle),
            },
            None => Source::None,
        }
    }
}

fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH: it is already gone.
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Gives `dir` its parent's cpus and mems when it has none.
fn copy_cpuset(from: &Path, dir: &Path) -> HostResult<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let current = files::read(dir.join(file))?;
        if current.trim().is_empty() {
            let value = files::read(from.join(file))?;
            files::write(dir.join(file), value.trim())?;
        }
    }
    Ok(())
}

/// The v1 cgroup mounts in /proc/self/mountinfo, one per hierarchy (the first mount point
/// seen for each).
pub fn parse_mountinfo(mountinfo: &str, known: &BTreeSet<&str>) -> Vec<Hierarchy> {
    let mut hierarchies: Vec<Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let mut after = after.split_whitespace();
        if after.next() != Some("cgroup") {
            continue;
        }
        let _source = after.next();
        let Some(super_options) = after.next() else {
            continue;
        };
        let Some(mount) = before.split_whitespace().nth(4) else {
            continue;
        };
        let mut controllers = Vec::new();
        let mut key = Vec::new();
        for option in super_options.split(',') {
            if known.contains(option) {
                controllers.push(option.to_string());
                key.push(option);
            } else if option.starts_with("name=") {
                key.push(option);
            }
        }
        if key.is_empty() {
            continue;
        }
        let key = key.join(",");
        if hierarchies.iter().any(|h| h.key == key) {
            continue;
        }
        hierarchies.push(Hierarchy {
            mount: PathBuf::from(mount),
            controllers,
            key,
        });
    }
    hierarchies
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 30 0:23 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
26 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:10 - cgroup cgroup rw,cpu,cpuacct
27 25 0:25 / /sys/fs/cgroup/memory rw,relatime shared:11 - cgroup cgroup rw,memory
28 25 0:26 / /sys/fs/cgroup/systemd rw,relatime shared:12 - cgroup cgroup rw,xattr,name=systemd
29 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:13 - cgroup2 cgroup2 rw
30 40 0:25 / /mnt/again rw,relatime shared:11 - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_gives_one_entry_per_hierarchy() {
        let known: BTreeSet<&str> = ["cpu", "cpuacct", "memory", "pids"].into_iter().collect();
        let found = parse_mountinfo(MOUNTINFO, &known);
        assert_eq!(
            found,
            vec![
                Hierarchy {
                    mount: "/sys/fs/cgroup/cpu,cpuacct".into(),
                    controllers: vec!["cpu".into(), "cpuacct".into()],
                    key: "cpu,cpuacct".into(),
                },
                Hierarchy {
                    mount: "/sys/fs/cgroup/memory".into(),
                    controllers: vec!["memory".into()],
                    key: "memory".into(),
                },
                Hierarchy {
                    mount: "/sys/fs/cgroup/systemd".into(),
                    controllers: vec![],
                    key: "name=systemd".into(),
                },
            ]
        );
        let v1 = V1::with_hierarchies("trellis", found).expect("has hierarchies");
        assert_eq!(v1.primary, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(v1.cpu, v1.cpuacct);
        assert!(v1.pids.is_none());
    }

    #[test]
    fn no_hierarchy_is_an_error() {
        assert!(V1::with_hierarchies("trellis", Vec::new()).is_err());
    }
}

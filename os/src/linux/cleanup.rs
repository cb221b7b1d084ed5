//! `trellis cleanup` (as `gdn cleanup`): removes everything a server left on the host, for an
//! operator retiring the host or starting over. A server leaves its containers running when it
//! stops, by design; this is the way to get rid of them and of the server's own objects when
//! no server will run again with these settings.
//!
//! Given the server's settings (depot, state and run directories, tag), in this order:
//!
//! 1. kills every container's init (by its pid file, checked against the process's start
//!    time) and whatever else runs in its cgroup, and removes the container cgroups;
//! 2. unbinds the network namespaces, deletes the containers' host-side links (named in the
//!    network state files), every link plugged into one of the server's bridges and the
//!    bridges (`trbr<tag>-*`) with their lock files, and the nftables tables (`ip
//!    trellis<tag>`, `netdev trellis<tag>-egress-*`);
//! 3. unmounts each container's overlay, id-mapped layers and scratch filesystem, detaches its
//!    loop device and removes its directory;
//! 4. unmounts whatever is still mounted under the depot, state or run directory, detaches
//!    every loop device backed by a file under the depot or state directory, and removes the
//!    parent cgroup (in every v1 hierarchy, or on v2);
//! 5. removes the depot's contents and what the server keeps in its state and run directories
//!    (records, images, scratch images, network state, namespace files), leaving the
//!    directories themselves.
//!
//! It refuses to run while a server holds these directories ([`ServerLock`]), and holds them
//! itself while it works. Every step is attempted even when an earlier one failed; the
//! failures are reported together at the end, and running it again finishes the job.

use super::cgroup::{CgroupOptions, Cgroups};
use super::disk::{self, DiskQuotas};
use super::network::{firewall, naming, netlink, netns, state};
use super::server_lock::{LockError, ServerLock};
use super::{parallel, rootfs, runtime, LinuxConfig};
use crate::layout::Layout;
use nix::mount::{umount2, MntFlags};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How many containers are killed and removed at once (each kill waits for the init to die).
const WORKERS: usize = 16;

#[derive(Debug, Error)]
pub enum CleanupError {
    #[error(transparent)]
    ServerRunning(#[from] LockError),
    #[error("refusing to clean up with {flag} {}: it must be a directory of the server's own", path.display())]
    UnsafeDirectory { flag: &'static str, path: PathBuf },
    #[error("invalid tag '{0}': at most 2 letters or digits")]
    InvalidTag(String),
    #[error("cleanup incomplete (run it again once the cause is fixed):\n  {}", .0.join("\n  "))]
    Incomplete(Vec<String>),
}

/// What a cleanup removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Containers found (by directory, cgroup, network state or namespace).
    pub containers: usize,
    /// Container inits that were still running.
    pub inits_killed: usize,
    /// Mounts taken off by the final sweep (each container's own go with it).
    pub stray_mounts: usize,
    /// Loop devices detached by the final sweep.
    pub stray_loop_devices: usize,
    /// Host links deleted: container links, links left on the bridges, the bridges.
    pub links: usize,
    /// nftables tables deleted.
    pub nft_tables: usize,
}

/// Removes everything the server with these settings left on the host (see the module docs).
pub fn cleanup(config: &LinuxConfig) -> Result<Report, CleanupError> {
    let layout = &config.layout;
    let tag = &config.network.tag;
    if !naming::is_valid_tag(tag) {
        return Err(CleanupError::InvalidTag(tag.clone()));
    }
    for (flag, path) in [
        ("--depot", &layout.depot),
        ("--state-dir", &layout.state),
        ("--run-dir", &layout.run),
    ] {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
        if absolute.parent().is_none() {
            return Err(CleanupError::UnsafeDirectory {
                flag,
                path: path.clone(),
            });
        }
    }
    let lock = ServerLock::acquire_existing(layout)?;
    let mut problems = Problems::default();
    let mut report = Report::default();

    // 1. Processes and container cgroups.
    let cgroups = problems.check(
        "cgroups",
        Cgroups::with_options(CgroupOptions::new(layout.cgroup_parent())),
    );
    let handles = container_handles(layout, cgroups.as_ref(), &mut problems);
    report.containers = handles.len();
    if let Some(cgroups) = &cgroups {
        let runtime = problems.check("container runtime", runtime::Runtime::new(config));
        let killed = parallel::map(&handles, WORKERS, |handle| {
            let was_running = runtime.as_ref().is_some_and(|r| r.init_running(handle));
            let killed = match &runtime {
                Some(runtime) => runtime.kill_container(handle, cgroups),
                None => Ok(()),
            };
            (
                was_running,
                killed.and_then(|()| cgroups.remove(handle)),
                handle.clone(),
            )
        });
        for (was_running, result, handle) in killed {
            report.inits_killed += usize::from(was_running);
            problems.check(&format!("container {handle}"), result);
        }
    }

    // The cgroups of peas with limits of their own (their processes died with their
    // containers' PID namespaces).
    if let Some(pea_cgroups) = problems.check("pea cgroups", super::peas::cgroups(layout)) {
        problems.check("pea cgroups", super::peas::remove_all_cgroups(&pea_cgroups));
    }

    // 2. Networking: a network plugin's `down` for every container first (it may need the
    // namespace), as a destroy runs it.
    let plugin_states = super::network::plugin::states_dir(&layout.network_state_dir());
    if let Some(settings) = &config.network.plugin {
        if let Some(plugin) = problems.check(
            "network plugin",
            super::network::plugin::NetworkPlugin::new(
                settings.clone(),
                config.network.external_ip,
                plugin_states.clone(),
            ),
        ) {
            for handle in &handles {
                if problems
                    .check(
                        &format!("network plugin down for {handle}"),
                        plugin.down(handle),
                    )
                    .is_some()
                {
                    problems.check(
                        &format!("network plugin state of {handle}"),
                        plugin.forget(handle),
                    );
                }
            }
        }
    }
    for name in problems
        .check("network namespaces", state::list_names(&layout.netns_dir()))
        .unwrap_or_default()
    {
        problems.check(
            &format!("network namespace {name}"),
            netns::remove(&layout.netns_dir().join(&name)),
        );
    }
    let ids = network_ids(layout, &mut problems);
    if let Some(links) = problems.check("links", remove_links(tag, &ids)) {
        report.links = links;
    }
    let tables = firewall::server_tables(tag).len();
    firewall::delete_server_tables(tag);
    let left = firewall::server_tables(tag);
    report.nft_tables = tables.saturating_sub(left.len());
    if !left.is_empty() {
        problems.note(format!("nftables tables not deleted: {}", left.join(", ")));
    }
    remove_bridge_locks(layout, tag, &mut problems);

    // 3. Each container's files.
    let disk = DiskQuotas::new(layout);
    let dirs = parallel::map(&depot_dirs(layout, &mut problems), WORKERS, |handle| {
        // Its peas' roots first: one may still be mounted under the container's directory.
        let removed = super::peas::keys(layout, handle)
            .iter()
            .try_for_each(|pea| rootfs::remove_container_files(layout, &disk, pea))
            .and_then(|()| rootfs::remove_container_files(layout, &disk, handle));
        (handle.clone(), removed)
    });
    for (handle, removed) in dirs {
        problems.check(&format!("files of container {handle}"), removed);
    }

    // 4. What is left of the server's on the host.
    let roots = existing_roots(layout);
    report.stray_mounts = unmount_under(&roots, &mut problems);
    if let Some(detached) = problems.check("loop devices", disk::detach_loops_under(&roots)) {
        report.stray_loop_devices = detached;
    }
    if let Some(cgroups) = &cgroups {
        problems.check("parent cgroup", cgroups.remove_parent());
    }

    // 5. Files.
    for entry in depot_entries(layout, &mut problems) {
        remove_path(&entry, &mut problems);
    }
    for dir in [
        layout.records_dir(),
        layout.images_dir(),
        layout.scratch_trash_dir(),
        layout.network_state_dir(),
        plugin_states,
        layout.netns_dir(),
    ] {
        remove_path(&dir, &mut problems);
    }
    // `<run>/network` held only the state directories.
    if let Some(network) = layout.network_state_dir().parent() {
        remove_empty_dir(network, &mut problems);
    }

    if let Err(e) = lock.release_and_remove() {
        problems.note(format!("removing the lock files: {e}"));
    }
    problems.into_result(report)
}

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    /// The value, or `None` with the error noted.
    fn check<T, E: std::fmt::Display>(&mut self, what: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.note(format!("{what}: {e}"))).ok()
    }

    fn note(&mut self, problem: String) {
        self.0.push(problem);
    }

    fn into_result(self, report: Report) -> Result<Report, CleanupError> {
        if self.0.is_empty() {
            Ok(report)
        } else {
            Err(CleanupError::Incomplete(self.0))
        }
    }
}

/// Every handle the server left something of.
fn container_handles(
    layout: &Layout,
    cgroups: Option<&Cgroups>,
    problems: &mut Problems,
) -> Vec<String> {
    let mut handles = BTreeSet::new();
    handles.extend(depot_dirs(layout, problems));
    if let Some(cgroups) = cgroups {
        handles.extend(
            problems
                .check("container cgroups", cgroups.handles())
                .unwrap_or_default(),
        );
    }
    handles.extend(
        problems
            .check(
                "network states",
                state::list_names(&layout.network_state_dir()),
            )
            .unwrap_or_default(),
    );
    handles.extend(
        problems
            .check("network namespaces", state::list_names(&layout.netns_dir()))
            .unwrap_or_default(),
    );
    let plugin_states = super::network::plugin::states_dir(&layout.network_state_dir());
    handles.extend(
        problems
            .check("network plugin states", state::list_names(&plugin_states))
            .unwrap_or_default(),
    );
    handles.into_iter().collect()
}

/// The network ids of the server's containers, live and retired (their links are named after
/// them).
fn network_ids(layout: &Layout, problems: &mut Problems) -> Vec<String> {
    let dir = layout.network_state_dir();
    if !dir.is_dir() {
        return Vec::new();
    }
    let Some(store) = problems.check("network states", state::StateStore::new(dir)) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for handle in problems
        .check("network states", store.handles())
        .unwrap_or_default()
    {
        // An unreadable state names nothing; its links are found on the bridges.
        if let Ok(Some(state)) = store.load(&handle) {
            ids.push(state.id);
        }
    }
    for state in problems
        .check("retired network states", store.retired())
        .unwrap_or_default()
    {
        ids.push(state.id);
    }
    ids
}

/// Deletes the containers' host links, whatever else is plugged into the server's bridges,
/// then the bridges; returns how many links went.
fn remove_links(tag: &str, ids: &[String]) -> crate::host::HostResult<usize> {
    let bridge_prefix = naming::bridge_prefix(tag);
    netlink::with_netlink(None, |nl| {
        let links = nl.links()?;
        let bridges: Vec<&netlink::Link> = links
            .iter()
            .filter(|l| l.name.starts_with(&bridge_prefix))
            .collect();
        let mut doomed: BTreeSet<String> = BTreeSet::new();
        for id in ids {
            let names = naming::LinkNames::for_id(tag, id);
            doomed.insert(names.host_veth);
            doomed.insert(names.ifb);
        }
        doomed.extend(
            links
                .iter()
                .filter(|l| bridges.iter().any(|b| l.controller == Some(b.index)))
                .map(|l| l.name.clone()),
        );
        let mut removed = 0;
        for name in doomed.iter().chain(bridges.iter().map(|b| &b.name)) {
            if links.iter().any(|l| &l.name == name) {
                nl.delete_link(name)?;
                removed += 1;
            }
        }
        Ok(removed)
    })
}

/// The server's bridges' lock files (in the host-wide lock directory).
fn remove_bridge_locks(layout: &Layout, tag: &str, problems: &mut Problems) {
    let dir = layout.network_locks_dir();
    let prefix = naming::bridge_prefix(tag);
    for name in problems
        .check("bridge locks", state::list_names(&dir))
        .unwrap_or_default()
    {
        if name.starts_with(&prefix) {
            problems.check(
                &format!("bridge lock {name}"),
                state::remove_file_if_exists(&dir.join(&name)),
            );
        }
    }
}

/// The depot's container directories.
fn depot_dirs(layout: &Layout, problems: &mut Problems) -> Vec<String> {
    depot_entries(layout, problems)
        .into_iter()
        .filter(|path| path.is_dir() && !path.is_symlink())
        .filter_map(|path| path.file_name()?.to_str().map(str::to_string))
        .collect()
}

fn depot_entries(layout: &Layout, problems: &mut Problems) -> Vec<PathBuf> {
    match std::fs::read_dir(&layout.depot) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.note(format!("reading {}: {e}", layout.depot.display()));
            Vec::new()
        }
    }
}

/// The depot, state and run directories that exist, as the kernel names paths (absolute,
/// symlinks resolved): what mount points and loop devices' backing files are compared with.
fn existing_roots(layout: &Layout) -> Vec<PathBuf> {
    [&layout.depot, &layout.state, &layout.run]
        .into_iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .collect()
}

/// Unmounts everything mounted under `roots`, deepest first; returns how many.
fn unmount_under(roots: &[PathBuf], problems: &mut Problems) -> usize {
    let Some(mountinfo) = problems.check(
        "reading mountinfo",
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return 0;
    };
    let mut points: Vec<PathBuf> = mount_points(&mountinfo)
        .into_iter()
        .filter(|point| {
            roots
                .iter()
                .any(|root| point.starts_with(root) && point != root)
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut unmounted = 0;
    for point in points {
        match umount2(&point, MntFlags::MNT_DETACH) {
            Ok(()) => unmounted += 1,
            // Gone with a mount above it, or stacked and already taken off.
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => problems.note(format!("unmounting {}: {e}", point.display())),
        }
    }
    unmounted
}

/// The mount points in a mountinfo text (field 5, with the kernel's octal escapes undone).
pub fn mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|escaped| PathBuf::from(unescape_mount_path(escaped)))
        .collect()
}

/// Undoes mountinfo's escapes (`\040` for a space, `\011` tab, `\012` newline, `\134` `\`).
fn unescape_mount_path(escaped: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn remove_path(path: &Path, problems: &mut Problems) {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return problems.note(format!("{}: {e}", path.display())),
    };
    let removed = if meta.is_dir() {
        // A background deletion of a discarded scratch image may race the walk: try again.
        std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_dir_all(path))
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.note(format!("removing {}: {e}", path.display())),
    }
}

fn remove_empty_dir(path: &Path, problems: &mut Problems) {
    match std::fs::remove_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.note(format!("removing {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_unescaped() {
        let mountinfo = "\
36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw
37 35 0:5 / /proc rw - proc proc rw
38 35 0:6 / /back\\134slash\\ rw - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points(mountinfo),
            vec![
                PathBuf::from("/mnt/with space"),
                PathBuf::from("/proc"),
                PathBuf::from("/back\\slash\\"),
            ]
        );
    }

    #[test]
    fn the_root_directory_is_refused() {
        let config = LinuxConfig {
            cgroup: Default::default(),
            layout: Layout::new("/", "/tmp/trellis-cleanup-test-state", "/tmp/x"),
            default_rootfs: String::new(),
            helper_binary: None,
            network: Default::default(),
            security: super::super::security::SecuritySettings {
                id_mapping: super::super::security::IdMapping::from_flags(
                    super::super::security::IdMapFlags {
                        uid_start: 1,
                        uid_length: 0,
                        gid_start: 1,
                        gid_length: 0,
                    },
                )
                .unwrap(),
                no_new_privileges: false,
            },
            registry: Default::default(),
            image_plugins: Default::default(),
        };
        assert!(matches!(
            cleanup(&config),
            Err(CleanupError::UnsafeDirectory {
                flag: "--depot",
                ..
            })
        ));
        let mut bad_tag = config.clone();
        bad_tag.layout = Layout::new("/tmp/d", "/tmp/s", "/tmp/r");
        bad_tag.network.tag = "abc".into();
        assert!(matches!(
            cleanup(&bad_tag),
            Err(CleanupError::InvalidTag(_))
        ));
    }
}

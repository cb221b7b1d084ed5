//! Peas: processes run with an image of their own (`ProcessSpec.Image`), as gdn runs them.
//!
//! A pea shares every namespace of its container (user, network, IPC, PID, UTS, cgroup) but
//! the mount namespace: its root is a copy-on-write overlay over its own image, made like a
//! container's (id-mapped for unprivileged containers), with the container's /etc/hosts and
//! /etc/resolv.conf, /proc, /sys and /dev as the container's processes get them, and the
//! container's confinement (seccomp, capabilities, masked paths, no_new_privs).
//!
//! Each pea has a keeper of its own (see `runtime::start_pea`): the container's init cannot
//! make mount namespaces (its seccomp filter and capabilities forbid it), so the zygote's
//! helper joins the container's namespaces as host root, builds the pea's view and forks the
//! keeper into the container's PID namespace. The keeper serves the pea's one process as init
//! serves the others (stdio, exit status, re-attach after a server restart) and ends once that
//! process is released. Killing the container's init ends the keeper with its PID namespace.
//!
//! Everything of a pea lives under its container: its directory `<depot>/<handle>/peas/<id
//! hash>/` (overlay upper and work dirs, the keeper's socket and pid file) and, when the spec
//! overrides the container's limits, a cgroup of its own in a parent of its own
//! (`<server's parent>-peas/<handle hash>-<id hash>`, beside the container's, so that the
//! container's limits do not apply to it). Without `OverrideContainerLimits` the pea is in the
//! container's cgroup. The host mounts the overlay only while the keeper starts: afterwards the
//! keeper's mount namespace holds the only mount of it. A pea goes when its process is
//! released, with its container, and at start-up if its keeper is gone or idle.

use super::cgroup::{CgroupOptions, Cgroups};
use super::LinuxHost;
use crate::host::{HostError, HostResult, ProcessIo, SpawnRequest};
use crate::layout::Layout;
use sha2::{Digest, Sha256};
use trellis_core::api::{DiskLimits, Limits, Metrics, ProcessSpec};

/// A short stable name for `text` (process ids and handles may be long).
fn short_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// What names a pea's files (as a `Layout` handle: `<depot>/<key>/...`) and its keeper.
pub fn key(handle: &str, process_id: &str) -> String {
    format!("{handle}/peas/{}", short_hash(process_id))
}

/// The keys of every pea directory of a container.
pub fn keys(layout: &Layout, handle: &str) -> Vec<String> {
    let dir = layout.container_dir(handle).join("peas");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(|n| format!("{handle}/peas/{n}")))
        .collect()
}

/// The parent of the cgroups of peas that override their container's limits.
pub fn cgroup_parent(layout: &Layout) -> String {
    format!("{}-peas", layout.cgroup_parent())
}

/// The pea cgroups of `handle` start with this.
fn cgroup_prefix(handle: &str) -> String {
    format!("{}-", short_hash(handle))
}

fn cgroup_name(handle: &str, key: &str) -> String {
    let id_hash = key.rsplit('/').next().unwrap_or_default();
    format!("{}{id_hash}", cgroup_prefix(handle))
}

/// The limits of a pea's own cgroup: only those the spec overrides (CPU and memory, as gdn).
pub fn own_limits(spec: &ProcessSpec) -> Option<Limits> {
    spec.limits.as_ref().map(|l| Limits {
        cpu_limits: l.cpu_limits,
        memory_limits: l.memory_limits,
        ..Limits::default()
    })
}

pub fn cgroups(layout: &Layout) -> HostResult<Cgroups> {
    Cgroups::with_options(CgroupOptions::new(cgroup_parent(layout)))
}

/// Removes every pea cgroup (`trellis cleanup`), then their parent.
pub fn remove_all_cgroups(cgroups: &Cgroups) -> HostResult<()> {
    for name in cgroups.handles()? {
        cgroups.remove(&name)?;
    }
    cgroups.remove_parent()
}

impl LinuxHost {
    /// Runs a process with an image of its own (see the module's comment). A failed start
    /// leaves nothing of the pea behind.
    pub(super) fn spawn_pea(&self, request: SpawnRequest<'_>) -> HostResult<ProcessIo> {
        let handle = request.handle;
        let key = key(handle, request.process_id);
        self.sweep_peas(handle, false);
        // Leftovers of an earlier pea with this id (the core admits the id only if it is free).
        self.remove_pea(handle, &key)?;
        let started = self.start_pea(&key, &request);
        if started.is_err() {
            let _ = self.remove_pea(handle, &key);
        }
        started
    }

    fn start_pea(&self, key: &str, request: &SpawnRequest<'_>) -> HostResult<ProcessIo> {
        let handle = request.handle;
        let privileged = self.runtime.privileged(handle)?;
        let rootfs =
            self.rootfs
                .prepare(key, &request.spec.image, privileged, &DiskLimits::default())?;
        let own_limits = own_limits(request.spec);
        let cgroup = cgroup_name(handle, key);
        if let Some(limits) = &own_limits {
            self.pea_cgroups.create(&cgroup, limits, privileged)?;
        }
        let started = self.runtime.start_pea(
            handle,
            key,
            &request.spec.bind_mounts,
            &self.cgroups,
            if own_limits.is_some() {
                Some((&self.pea_cgroups, cgroup.as_str()))
            } else {
                self.cgroups
                    .exists(handle)
                    .then_some((&self.cgroups, handle))
            },
        );
        // The keeper's mount namespace holds the pea's root now (or nothing does): the host
        // keeps no mount of it.
        let unmounted = nix::mount::umount2(
            &self.layout.rootfs_dir(key),
            nix::mount::MntFlags::MNT_DETACH,
        );
        started?;
        unmounted.map_err(|e| HostError::io("unmounting the pea's rootfs", e.into()))?;
        let mut spec = request.spec.clone();
        // gdn starts a pea in its root, whatever its user's home.
        if spec.dir.is_empty() {
            spec.dir = "/".into();
        }
        // The pea's image's env, then the container's and the spec's.
        let env: Vec<String> = rootfs
            .image_env
            .iter()
            .chain(request.env)
            .cloned()
            .collect();
        self.runtime.spawn(SpawnRequest {
            handle: key,
            process_id: request.process_id,
            spec: &spec,
            env: &env,
        })
    }

    /// After a pea's process is released its keeper ends: remove the rest of the pea (if
    /// `process_id` names one). Also before another process takes the id.
    pub(super) fn released(&self, handle: &str, process_id: &str) -> HostResult<()> {
        let key = key(handle, process_id);
        if self.layout.container_dir(&key).exists() {
            self.remove_pea(handle, &key)?;
        }
        Ok(())
    }

    /// Ends the pea's keeper (and so its process) and removes its files and cgroup.
    fn remove_pea(&self, handle: &str, key: &str) -> HostResult<()> {
        let _removing = self.peas_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.runtime.end_keeper(key)?;
        self.rootfs.remove(key)?;
        self.pea_cgroups.remove(&cgroup_name(handle, key))
    }

    /// Removes every pea of a container (it is being destroyed), cgroups whose directory is
    /// already gone included.
    pub(super) fn remove_peas(&self, handle: &str) -> HostResult<()> {
        for key in keys(&self.layout, handle) {
            self.remove_pea(handle, &key)?;
        }
        let prefix = cgroup_prefix(handle);
        for name in self.pea_cgroups.handles()? {
            if name.starts_with(&prefix) {
                self.pea_cgroups.remove(&name)?;
            }
        }
        Ok(())
    }

    /// Removes the peas whose keeper is gone (a crash, a destroy cut short), and at start-up
    /// also those whose keeper never got its process (the server died while starting it).
    pub(super) fn sweep_peas(&self, handle: &str, at_startup: bool) {
        for key in keys(&self.layout, handle) {
            let dead = !self.runtime.init_running(&key)
                || (at_startup && self.runtime.processes(&key).is_empty());
            if dead {
                // A failure leaves it for the next sweep or the container's destroy.
                let _ = self.remove_pea(handle, &key);
            }
        }
    }

    /// Metrics of a pea by its process id: its own cgroup's when it has one, else its
    /// container's (the cgroup it shares), as guardian answers for a pea's id.
    pub(super) fn pea_metrics(&self, handle: &str, process_id: &str) -> HostResult<Metrics> {
        let key = key(handle, process_id);
        if !self.layout.container_dir(&key).exists() {
            return Err(HostError::Invalid(format!(
                "process {process_id} of {handle} is not a pea"
            )));
        }
        let cgroup = cgroup_name(handle, &key);
        if self.pea_cgroups.exists(&cgroup) {
            self.pea_cgroups.metrics(&cgroup)
        } else {
            self.cgroups.metrics(handle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pea_lives_under_its_container_by_a_hash_of_its_id() {
        let k = key("box", "my-process");
        assert!(k.starts_with("box/peas/"));
        assert_eq!(k.len(), "box/peas/".len() + 16);
        assert_eq!(k, key("box", "my-process"));
        assert_ne!(k, key("box", "other"));
        let layout = Layout::new("/d", "/s", "/r");
        assert_eq!(
            layout.container_dir(&k),
            std::path::Path::new("/d/box/peas").join(&k["box/peas/".len()..])
        );
    }

    #[test]
    fn pea_cgroups_are_named_by_container_then_pea() {
        let k = key("box", "p");
        let name = cgroup_name("box", &k);
        assert!(name.starts_with(&cgroup_prefix("box")));
        assert!(!name.starts_with(&cgroup_prefix("other")));
        assert!(name.ends_with(&k["box/peas/".len()..]));
        assert!(!name.contains('/'));
    }

    #[test]
    fn only_an_override_gives_a_pea_limits_of_its_own() {
        let mut spec = ProcessSpec::default();
        assert_eq!(own_limits(&spec), None);
        spec.limits = Some(Default::default());
        assert_eq!(own_limits(&spec), Some(Limits::default()));
        spec.limits.as_mut().unwrap().memory_limits.limit_in_bytes = 5;
        assert_eq!(own_limits(&spec).unwrap().memory_limits.limit_in_bytes, 5);
    }
}

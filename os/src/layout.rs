//! Where the Linux host keeps things on disk. Every path a component uses comes from here, so
//! that reconciliation can find everything a container left behind by its handle.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    /// Per-container directories: `<depot>/<handle>/` (Garden's `ContainerPath`).
    pub depot: PathBuf,
    /// Server state outside the depot: records, image cache.
    pub state: PathBuf,
    /// Runtime files that need not survive a reboot (sockets, bind-mounted namespaces).
    pub run: PathBuf,
    /// Durable container records: `<state>/records` unless the server was told otherwise.
    records: PathBuf,
}

impl Layout {
    pub fn new(
        depot: impl Into<PathBuf>,
        state: impl Into<PathBuf>,
        run: impl Into<PathBuf>,
    ) -> Layout {
        let state = state.into();
        Layout {
            depot: depot.into(),
            records: state.join("records"),
            state,
            run: run.into(),
        }
    }

    /// Keeps the container records in `dir` instead (gdn's `--properties-path`).
    pub fn with_records_dir(mut self, dir: impl Into<PathBuf>) -> Layout {
        self.records = dir.into();
        self
    }

    /// `<depot>/<handle>`: the container's directory on the host.
    pub fn container_dir(&self, handle: &str) -> PathBuf {
        self.depot.join(handle)
    }

    /// The container's root filesystem mount point.
    pub fn rootfs_dir(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("rootfs")
    }

    /// Which image plugin made the container's rootfs, when one did (`image_plugin`).
    pub fn image_plugin_record(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("image-plugin.json")
    }

    /// The container's own copy-on-write layer (overlay upper and work dirs live under it).
    pub fn scratch_dir(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("scratch")
    }

    /// The overlay's upper and work directories (inside the scratch dir, which a disk quota
    /// may make a size-limited filesystem of its own).
    pub fn overlay_upper_dir(&self, handle: &str) -> PathBuf {
        self.scratch_dir(handle).join("upper")
    }

    pub fn overlay_work_dir(&self, handle: &str) -> PathBuf {
        self.scratch_dir(handle).join("work")
    }

    /// Where an unprivileged container's image layers are attached, id-mapped, while its
    /// overlay is mounted (the overlay keeps private clones; these are detached right after).
    pub fn idmapped_lowers_dir(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("lowers")
    }

    /// The control socket of the container's init: the server asks it to start processes.
    pub fn init_socket(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("init.sock")
    }

    /// Bind-mounted over the container's /etc/hosts and /etc/resolv.conf.
    pub fn hosts_file(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("hosts")
    }

    pub fn resolv_conf_file(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("resolv.conf")
    }

    /// The container's network namespace, bind-mounted so it outlives any process in it.
    pub fn netns_file(&self, handle: &str) -> PathBuf {
        self.netns_dir().join(handle)
    }

    /// Per-container network state files (`<run>/network/state/<handle>`): what a container's
    /// network holds, so that teardown and a restarted server find it by handle.
    pub fn network_state_dir(&self) -> PathBuf {
        self.run.join("network").join("state")
    }

    /// Lock files serialising the creation and deletion of each subnet's bridge. Bridge names
    /// are host-wide, so their locks are too: every server (and test) on the host shares them.
    pub fn network_locks_dir(&self) -> PathBuf {
        PathBuf::from("/run/trellis-network-locks")
    }

    /// Where the network namespaces of all containers are bound.
    pub fn netns_dir(&self) -> PathBuf {
        self.run.join("netns")
    }

    /// The pid of the container's init, as seen from the host.
    pub fn init_pid_file(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("init.pid")
    }

    /// Durable container records, one file per handle (`trellis_core::record::file_name`).
    pub fn records_dir(&self) -> PathBuf {
        self.records.clone()
    }

    /// Unpacked images, shared read-only by every container made from them.
    pub fn images_dir(&self) -> PathBuf {
        self.state.join("images")
    }

    /// One unpacked tar rootfs, by a key derived from its path, size and mtime.
    pub fn tar_image_dir(&self, key: &str) -> PathBuf {
        self.images_dir().join("tar").join(key)
    }

    /// Image layers from registries and OCI layouts, unpacked one directory per layer digest
    /// (whiteouts in overlay form), shared by every image that uses them.
    pub fn layer_dir(&self, digest_hex: &str) -> PathBuf {
        self.images_dir().join("layers").join(digest_hex)
    }

    /// Resolved image manifests (layer list and env), by a key derived from the reference.
    pub fn manifest_file(&self, key: &str) -> PathBuf {
        self.images_dir()
            .join("manifests")
            .join(format!("{key}.json"))
    }

    /// Where images are unpacked before they are renamed into place.
    pub fn images_tmp_dir(&self) -> PathBuf {
        self.images_dir().join("tmp")
    }

    pub fn depot(&self) -> &Path {
        &self.depot
    }

    /// The sparse filesystem image that holds a disk-limited container's scratch dir.
    pub fn scratch_image(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("scratch.img")
    }

    /// Released scratch images waiting to be deleted (outside the depot, whose every
    /// directory is a container).
    pub fn scratch_trash_dir(&self) -> PathBuf {
        self.state.join("scratch-trash")
    }

    /// What the disk component recorded about the scratch dir (image size, baselines).
    pub fn scratch_record(&self, handle: &str) -> PathBuf {
        self.container_dir(handle).join("scratch.state")
    }

    /// The name of our parent cgroup (`/sys/fs/cgroup/<ctrl>/<name>/<handle>` on v1,
    /// `/sys/fs/cgroup/<name>/<handle>` on v2). It is derived from the depot so that servers
    /// with different depots (and their tests) never adopt or remove each other's containers.
    pub fn cgroup_parent(&self) -> String {
        // The same depot however it was spelled (relative, trailing slash, `.`), so that a
        // restarted server finds its containers' cgroups.
        let depot: PathBuf = std::path::absolute(&self.depot)
            .unwrap_or_else(|_| self.depot.clone())
            .components()
            .collect();
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in depot.as_os_str().as_encoded_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("trellis-{:08x}", hash as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_parent_names_the_depot_however_it_is_spelled() {
        let at = |depot: &str| Layout::new(depot, "/s", "/r").cgroup_parent();
        assert_eq!(at("/var/lib/trellis/depot"), at("/var/lib/trellis/depot/"));
        assert_eq!(at("/var/lib/trellis/depot"), at("/var/lib/trellis/./depot"));
        assert_ne!(at("/var/lib/trellis/depot"), at("/var/lib/other/depot"));
        assert!(at("/d").starts_with("trellis-"));
    }
}

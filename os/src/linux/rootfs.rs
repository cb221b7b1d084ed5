//! Root filesystems (the volumizer): images unpacked once into a shared read-only cache, and a
//! copy-on-write overlay per container (lower = the image, upper and work in the container's
//! scratch directory). The source is never written; destroy removes the upper.
//!
//! An unprivileged container sees its image through its user namespace's id mapping: each
//! image layer is attached id-mapped (`MOUNT_ATTR_IDMAP`) under the container's directory, the
//! overlay is mounted over those, and the id-mapped attachments are detached again at once (the
//! overlay holds private clones of its layers). So container root sees the image's root-owned
//! files as its own, and what it writes lands in the upper dir owned by the mapped ids, while the
//! cached image is neither copied nor changed. An overlay itself cannot be id-mapped; layers
//! under one can.
//!
//! Image URIs: empty (the server's default rootfs), a directory (`/path` or `raw:///path`),
//! a tar file (`/path/rootfs.tar`, unpacked once), `docker://[host[:port]]/repo[#tag]` and
//! `oci:///path[#tag]` (see `image`).
//!
//! Given an image plugin (`--image-plugin`, `--privileged-image-plugin`), every image but an
//! explicit `raw://` one (which guardian, too, uses as it is) comes from the plugin instead
//! (see `image_plugin`): its rootfs is bind-mounted where the overlay would be, with the mounts
//! it answered over it, and is neither id-mapped (the plugin made it for the container's ids)
//! nor given a scratch filesystem (the plugin enforces the disk limit).

use super::disk::DiskQuotas;
use super::image::{self, ResolvedImage};
use super::image_plugin::{self, ImagePluginSettings, PluginAnswer, PluginRootfs};
use super::mount_api;
use super::registry;
use super::security::userns;
use super::LinuxConfig;
use crate::host::{HostCapacity, HostError, HostResult, Rootfs};
use crate::layout::Layout;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use trellis_core::api::{DiskLimits, DiskStat, ImageRef};

const OVERLAYFS_MAGIC: i64 = 0x794c7630;

pub struct RootfsManager {
    layout: Layout,
    default_rootfs: String,
    /// How `docker://` images are pulled.
    registry: registry::RegistrySettings,
    /// One lock per image being unpacked, so concurrent creates unpack it once.
    unpacking: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Makes the scratch dir (a size-limited filesystem when the spec limits disk).
    disk: DiskQuotas,
    /// A user namespace with unprivileged containers' mapping: the id mapping of their layers.
    idmap: OwnedFd,
    /// External image plugins; none means images are unpacked here.
    plugins: ImagePluginSettings,
}

/// Where a container's rootfs comes from.
enum ImageSource<'a> {
    /// Unpacked here, under an overlay.
    BuiltIn,
    /// Made by an external image plugin.
    Plugin(&'a ImagePluginSettings),
}

impl RootfsManager {
    pub fn new(config: &LinuxConfig) -> HostResult<RootfsManager> {
        let idmap = userns::new_namespaces(&config.security.id_mapping, false)
            .map_err(|e| HostError::io("making the user namespace for id-mapped images", e))?
            .user;
        let manager = RootfsManager {
            layout: config.layout.clone(),
            default_rootfs: config.default_rootfs.clone(),
            registry: config.registry.clone(),
            unpacking: Arc::default(),
            disk: DiskQuotas::new(&config.layout),
            idmap,
            plugins: config.image_plugins.clone(),
        };
        manager.check_idmapped_mounts()?;
        Ok(manager)
    }

    /// Unprivileged containers need id-mapped mounts of the depot's filesystem (where images
    /// are unpacked) and of the default rootfs: refuse to start without them rather than fail
    /// every create.
    fn check_idmapped_mounts(&self) -> HostResult<()> {
        let depot = self.layout.depot();
        std::fs::create_dir_all(depot)
            .map_err(|e| HostError::io(format!("creating {}", depot.display()), e))?;
        let mut probes = vec![depot.to_path_buf()];
        let default = Path::new(
            self.default_rootfs
                .strip_prefix("raw://")
                .unwrap_or(&self.default_rootfs),
        );
        if default.is_absolute() && default.is_dir() {
            probes.push(default.to_path_buf());
        }
        for path in probes {
            self.idmapped_tree(&path).map_err(|e| {
                HostError::Unexpected(format!(
                    "id-mapped mounts do not work for {} ({e}); unprivileged containers need \
                     them (Linux 5.12 or later, on a filesystem that supports them: ext4, xfs, \
                     btrfs, tmpfs, ...)",
                    path.display()
                ))
            })?;
        }
        Ok(())
    }

    /// A detached mount of `path` showing its ids through the unprivileged mapping.
    fn idmapped_tree(&self, path: &Path) -> io::Result<OwnedFd> {
        let tree = mount_api::clone_tree(path, false)?;
        mount_api::set_attributes(
            tree.as_fd(),
            mount_api::MOUNT_ATTR_IDMAP,
            Some(self.idmap.as_fd()),
            false,
        )?;
        Ok(tree)
    }

    /// Attaches every layer id-mapped under the container's directory; returns where.
    fn attach_idmapped_lowers(&self, handle: &str, lowers: &[PathBuf]) -> HostResult<Vec<PathBuf>> {
        let dir = self.layout.idmapped_lowers_dir(handle);
        detach_idmapped_lowers(&self.layout, handle)?;
        let mut attached = Vec::with_capacity(lowers.len());
        for (i, lower) in lowers.iter().enumerate() {
            let at = dir.join(i.to_string());
            std::fs::create_dir_all(&at)
                .map_err(|e| HostError::io(format!("creating {}", at.display()), e))?;
            let tree = self.idmapped_tree(lower).map_err(|e| {
                HostError::io(format!("id-mapping image layer {}", lower.display()), e)
            })?;
            mount_api::attach_at_path(tree.as_fd(), &at)
                .map_err(|e| HostError::io(format!("attaching {}", at.display()), e))?;
            attached.push(at);
        }
        Ok(attached)
    }

    /// Makes the container's root filesystem from its image (the one entry point for every
    /// image source).
    pub fn prepare(
        &self,
        handle: &str,
        image: &ImageRef,
        privileged: bool,
        disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        match self.source(image) {
            ImageSource::BuiltIn => self.prepare_unpacked(handle, image, privileged, disk),
            ImageSource::Plugin(plugins) => {
                self.prepare_with_plugin(plugins, handle, image, privileged, disk)
            }
        }
    }

    fn source(&self, image: &ImageRef) -> ImageSource<'_> {
        if self.plugins.any() && !image.uri.starts_with("raw://") {
            ImageSource::Plugin(&self.plugins)
        } else {
            ImageSource::BuiltIn
        }
    }

    fn prepare_unpacked(
        &self,
        handle: &str,
        image: &ImageRef,
        privileged: bool,
        disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        let uri = if image.uri.is_empty() {
            self.default_rootfs.as_str()
        } else {
            image.uri.as_str()
        };
        if uri.is_empty() {
            return Err(HostError::Invalid(
                "no image given and the server has no default rootfs".into(),
            ));
        }
        let resolved = self.resolve(uri, image)?;
        let rootfs = self.layout.rootfs_dir(handle);
        if is_overlay(&rootfs) {
            return Ok(Rootfs {
                image_env: resolved.env,
            });
        }
        let image_usage = self.disk.image_usage(&resolved.lowers)?;
        self.disk.prepare_scratch(handle, disk, image_usage)?;
        let upper = self.layout.overlay_upper_dir(handle);
        let work = self.layout.overlay_work_dir(handle);
        for dir in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(dir)
                .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        }
        let lower_dirs = if privileged {
            resolved.lowers.clone()
        } else {
            self.attach_idmapped_lowers(handle, &resolved.lowers)?
        };
        // The merged root takes the upper dir's owner and mode: make them the image root's, as
        // the container sees it.
        copy_owner_and_mode(&lower_dirs[0], &upper)?;
        let lowers: Vec<String> = lower_dirs.iter().map(|p| escape_overlay_path(p)).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            escape_overlay_path(&upper),
            escape_overlay_path(&work)
        );
        let mounted = mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| HostError::io(format!("mounting the overlay of {handle}"), e.into()));
        if !privileged {
            detach_idmapped_lowers(&self.layout, handle)?;
        }
        mounted?;
        Ok(Rootfs {
            image_env: resolved.env,
        })
    }

    /// The rootfs from the plugin, recorded before the plugin runs (so that whatever happens
    /// next, its `delete` is called) and again once mounted (so that a retry finds it done).
    fn prepare_with_plugin(
        &self,
        plugins: &ImagePluginSettings,
        handle: &str,
        image: &ImageRef,
        privileged: bool,
        disk: &DiskLimits,
    ) -> HostResult<Rootfs> {
        let record_path = self.layout.image_plugin_record(handle);
        match PluginRootfs::read(&record_path)? {
            Some(PluginRootfs {
                answer: Some(answer),
                ..
            }) => {
                return Ok(Rootfs {
                    image_env: answer.env(),
                })
            }
            // Left half made by a crash: undo it and start again.
            Some(_) => self.remove(handle)?,
            None => {}
        }
        let plugin = plugins.for_container(privileged)?;
        let uri = image_plugin::plugin_image_uri(image, &self.default_rootfs);
        if uri.is_empty() {
            return Err(HostError::Invalid(
                "no image given and the server has no default rootfs".into(),
            ));
        }
        let dir = self.layout.container_dir(handle);
        std::fs::create_dir_all(&dir)
            .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        let mut record = PluginRootfs {
            plugin: plugin.clone(),
            answer: None,
        };
        record.write(&record_path)?;
        let made = plugin
            .create(handle, &uri, image, disk)
            .map_err(HostError::from)
            .and_then(|answer| {
                mount_plugin_rootfs(&self.layout.rootfs_dir(handle), &answer)?;
                record.answer = Some(answer);
                record.write(&record_path)
            });
        if let Err(e) = made {
            // The plugin's delete, the mounts and the directory: nothing stays of a failure.
            return Err(match self.remove(handle) {
                Ok(()) => e,
                Err(cleanup) => HostError::Unexpected(format!("{e} (and cleaning up: {cleanup})")),
            });
        }
        Ok(Rootfs {
            image_env: record.answer.map(|a| a.env()).unwrap_or_default(),
        })
    }

    fn resolve(&self, uri: &str, image: &ImageRef) -> HostResult<ResolvedImage> {
        if let Some(rest) = uri.strip_prefix("oci://") {
            let (path, tag) = match rest.split_once('#') {
                Some((p, t)) => (p, Some(t)),
                None => (rest, None),
            };
            return image::resolve_oci_layout(&self.layout, Path::new(path), tag, &self.unpacking);
        }
        if uri.starts_with("docker://") {
            return registry::resolve(&self.layout, uri, image, &self.unpacking, &self.registry);
        }
        let path = uri.strip_prefix("raw://").unwrap_or(uri);
        let path = Path::new(path);
        if !path.is_absolute() {
            return Err(HostError::Invalid(format!(
                "unsupported rootfs {uri:?}: expected an absolute path, docker:// or oci://"
            )));
        }
        let meta = std::fs::metadata(path)
            .map_err(|e| HostError::Invalid(format!("rootfs {uri}: {e}")))?;
        if meta.is_dir() {
            return Ok(ResolvedImage {
                lowers: vec![path.to_path_buf()],
                env: Vec::new(),
            });
        }
        let dir = image::unpack_tar_image(&self.layout, path, &meta, &self.unpacking)?;
        Ok(ResolvedImage {
            lowers: vec![dir],
            env: Vec::new(),
        })
    }

    /// Unmounts the overlay and removes the container's directory (upper dir included).
    pub fn remove(&self, handle: &str) -> HostResult<()> {
        remove_container_files(&self.layout, &self.disk, handle)
    }

    pub fn exists(&self, handle: &str) -> bool {
        self.layout.container_dir(handle).exists()
    }

    /// Every container directory in the depot.
    pub fn handles(&self) -> HostResult<Vec<String>> {
        match std::fs::read_dir(self.layout.depot()) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(HostError::io("reading the depot", e)),
        }
    }

    /// Bytes and inodes of the writable layer (exclusive) and with the image (total); the
    /// plugin's `stats` for a rootfs a plugin made.
    pub fn disk_usage(&self, handle: &str) -> HostResult<DiskStat> {
        match PluginRootfs::read(&self.layout.image_plugin_record(handle))? {
            Some(record) => Ok(record.plugin.stats(handle)?),
            None => self.disk.usage(handle),
        }
    }

    /// The size of the filesystem holding the depot, and what containers may grow into: the
    /// plugin's `capacity` when there is a plugin (the whole disk if it cannot say, as
    /// guardian).
    pub fn capacity(&self) -> HostResult<HostCapacity> {
        let mut capacity = self.disk.capacity()?;
        if let Some(plugin) = self.plugins.for_capacity() {
            capacity.schedulable_disk_in_bytes =
                plugin.capacity().unwrap_or(capacity.disk_in_bytes);
        }
        Ok(capacity)
    }
}

/// Unmounts the container's overlay (and its id-mapped layers and scratch filesystem) and
/// removes its directory. What [`RootfsManager::remove`] does, without a manager: `trellis
/// cleanup` removes what a server left without needing what creating containers needs.
pub fn remove_container_files(layout: &Layout, disk: &DiskQuotas, handle: &str) -> HostResult<()> {
    let rootfs = layout.rootfs_dir(handle);
    for _ in 0..16 {
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(HostError::io(
                    format!("unmounting {}", rootfs.display()),
                    e.into(),
                ))
            }
        }
    }
    if let Some(record) = PluginRootfs::read(&layout.image_plugin_record(handle))? {
        record.plugin.delete(handle)?;
    }
    detach_idmapped_lowers(layout, handle)?;
    // The scratch filesystem (if the container had a disk limit) goes before its mount
    // point does.
    disk.release_scratch(handle)?;
    let dir = layout.container_dir(handle);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::io(format!("removing {}", dir.display()), e)),
    }
}

/// Bind-mounts the plugin's rootfs at `rootfs` and mounts what it answered over it.
fn mount_plugin_rootfs(rootfs: &Path, answer: &PluginAnswer) -> HostResult<()> {
    let root = Path::new(answer.root_path());
    if !root.is_absolute() {
        return Err(HostError::Unexpected(format!(
            "the image plugin answered no absolute root.path ({:?})",
            answer.root_path()
        )));
    }
    std::fs::create_dir_all(rootfs)
        .map_err(|e| HostError::io(format!("creating {}", rootfs.display()), e))?;
    mount(
        Some(root),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| HostError::io(format!("bind-mounting {}", root.display()), e.into()))?;
    for m in answer.mounts() {
        let target = rootfs.join(m.destination.trim_start_matches('/'));
        std::fs::create_dir_all(&target)
            .map_err(|e| HostError::io(format!("creating {}", target.display()), e))?;
        let (flags, data) = mount_options(m.options.as_deref().unwrap_or_default());
        let kind = (!m.kind.is_empty() && !flags.contains(MsFlags::MS_BIND)).then_some(&*m.kind);
        mount(
            Some(m.source.as_str()),
            &target,
            kind,
            flags,
            (!data.is_empty()).then_some(data.as_str()),
        )
        .map_err(|e| {
            HostError::io(
                format!(
                    "mounting the image plugin's {} {} on {}",
                    m.kind, m.source, m.destination
                ),
                e.into(),
            )
        })?;
    }
    Ok(())
}

/// OCI mount options: the flags mount(2) takes, and the rest as the filesystem's data.
fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

/// Detaches and removes the id-mapped layer attachments (left by a crash mid-prepare, too).
fn detach_idmapped_lowers(layout: &Layout, handle: &str) -> HostResult<()> {
    let dir = layout.idmapped_lowers_dir(handle);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io(format!("reading {}", dir.display()), e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        mount_api::detach_all(&path)
            .map_err(|e| HostError::io(format!("detaching {}", path.display()), e))?;
    }
    std::fs::remove_dir_all(&dir)
        .or_else(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| HostError::io(format!("removing {}", dir.display()), e))
}

fn copy_owner_and_mode(from: &Path, to: &Path) -> HostResult<()> {
    let meta = std::fs::metadata(from)
        .map_err(|e| HostError::io(format!("stat {}", from.display()), e))?;
    std::os::unix::fs::chown(to, Some(meta.uid()), Some(meta.gid()))
        .map_err(|e| HostError::io(format!("chown {}", to.display()), e))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(|e| HostError::io(format!("chmod {}", to.display()), e))
}

fn is_overlay(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == OVERLAYFS_MAGIC)
        .unwrap_or(false)
}

/// Overlay options separate with `,` and `:`; both are escaped with a backslash.
fn escape_overlay_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

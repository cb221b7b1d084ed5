//! Root filesystems (the volumizer): images unpacked once into a shared read-only cache, and a
//! copy-on-write overlay per container (lower = the image, upper and work in the container's
//! scratch directory). The source is never written; destroy removes the upper.
//!
//! Image URIs: empty (the server's default rootfs), a directory (`/path` or `raw:///path`),
//! a tar file (`/path/rootfs.tar`, unpacked once), `docker://[host[:port]]/repo[#tag]` and
//! `oci:///path[#tag]` (see `image`).

use super::disk::DiskQuotas;
use super::image::{self, ResolvedImage};
use super::LinuxConfig;
use crate::host::{HostCapacity, HostError, HostResult, Rootfs};
use crate::layout::Layout;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use trellis_core::api::{DiskLimits, DiskStat, ImageRef};

const OVERLAYFS_MAGIC: i64 = 0x794c7630;

pub struct RootfsManager {
    layout: Layout,
    default_rootfs: String,
    /// One lock per image being unpacked, so concurrent creates unpack it once.
    unpacking: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
    /// Makes the scratch dir (a size-limited filesystem when the spec limits disk).
    disk: DiskQuotas,
}

impl RootfsManager {
    pub fn new(config: &LinuxConfig) -> HostResult<RootfsManager> {
        Ok(RootfsManager {
            layout: config.layout.clone(),
            default_rootfs: config.default_rootfs.clone(),
            unpacking: Arc::default(),
            disk: DiskQuotas::new(&config.layout),
        })
    }

    pub fn prepare(
        &self,
        handle: &str,
        image: &ImageRef,
        _privileged: bool,
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
        let lowers: Vec<String> = resolved
            .lowers
            .iter()
            .map(|p| escape_overlay_path(p))
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            escape_overlay_path(&upper),
            escape_overlay_path(&work)
        );
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| HostError::io(format!("mounting the overlay of {handle}"), e.into()))?;
        Ok(Rootfs {
            image_env: resolved.env,
        })
    }

    fn resolve(&self, uri: &str, image: &ImageRef) -> HostResult<ResolvedImage> {
        if uri.starts_with("docker://") || uri.starts_with("oci://") {
            return image::resolve(&self.layout, uri, image, &self.unpacking);
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
        let rootfs = self.layout.rootfs_dir(handle);
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
        // The scratch filesystem (if the container had a disk limit) goes before its mount
        // point does.
        self.disk.release_scratch(handle)?;
        let dir = self.layout.container_dir(handle);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io(format!("removing {}", dir.display()), e)),
        }
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

    /// Bytes and inodes of the writable layer (exclusive) and with the image (total).
    pub fn disk_usage(&self, handle: &str) -> HostResult<DiskStat> {
        self.disk.usage(handle)
    }

    /// The size of the filesystem holding the depot, and what containers may grow into.
    pub fn capacity(&self) -> HostResult<HostCapacity> {
        self.disk.capacity()
    }
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

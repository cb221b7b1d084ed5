//! Disk limits and usage of a container's writable layer (its scratch dir, which holds the
//! overlay's upper and work dirs).
//!
//! Without a limit the scratch dir is a plain directory of the depot and its usage is counted
//! by walking it. With `byte_hard` or `inode_hard` it is a filesystem of its own: a sparse
//! ext4 image in the container's directory, attached to a loop device and mounted there,
//! sized so that exactly the allowed bytes and inodes are free. Why not quotas on a shared
//! filesystem: XFS quotas are unavailable on this kernel, and ext4 project quotas are waived
//! for writers with CAP_SYS_RESOURCE, which overlayfs writes as (it writes to the upper dir
//! with the mounter's credentials), so they would not hold on hosts where the server has it;
//! a full filesystem holds for everyone, privileged root included. It costs a mkfs (about
//! 10 ms; the inode tables are left uninitialised and the image stays sparse) and a loop
//! device per limited container, and usage becomes one statfs.
//!
//! Scope: `exclusive` limits what the container writes; `total` also counts the image's bytes
//! (and inodes), so the filesystem gets the limit minus the image, and a limit smaller than
//! the image fails the create with `disk limit is smaller than volume size`, as grootfs does.

mod filesystem;
mod loopdev;
mod usage;

pub use filesystem::detach_loops_under;

use crate::host::{HostCapacity, HostError, HostResult};
use crate::layout::Layout;
use filesystem::{
    attach_and_mount, detach_loops_of, fill_excess, is_mount_point, make_image, statvfs,
    unmount_all,
};
use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use trellis_core::api::{DiskLimits, DiskScope, DiskStat};
use usage::walk_usage;

/// The bytes and inodes an image's unpacked layers occupy (hard links counted once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// grootfs's smallest quota.
const MIN_QUOTA_BYTES: u64 = 256 * 1024;
const BLOCK: u64 = 4096;
/// ext4's inode size (mke2fs default).
const INODE_BYTES: u64 = 256;
/// Bytes per inode when only a byte limit is given (mke2fs's default ratio).
const BYTES_PER_INODE: u64 = 16384;

pub struct DiskQuotas {
    layout: Layout,
    images: Mutex<HashMap<PathBuf, ImageUsage>>,
}

/// What the scratch filesystem must offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    bytes: u64,
    /// `None`: mke2fs's ratio for the size.
    inodes: Option<u64>,
}

/// Persisted beside the scratch dir, so that usage survives a server restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ScratchRecord {
    limited: bool,
    image: ImageUsage,
    /// Used bytes and inodes of the fresh filesystem (its own files, the reserve).
    base_bytes: u64,
    base_inodes: u64,
}

impl DiskQuotas {
    pub fn new(layout: &Layout) -> DiskQuotas {
        // Images a crash left in the trash.
        let trash = layout.scratch_trash_dir();
        std::thread::spawn(move || empty_trash(&trash));
        DiskQuotas {
            layout: layout.clone(),
            images: Mutex::new(HashMap::new()),
        }
    }

    /// What `lowers` (an image's unpacked layers) occupy; measured once per path, since
    /// unpacked images never change.
    pub fn image_usage(&self, lowers: &[PathBuf]) -> HostResult<ImageUsage> {
        let mut total = ImageUsage::default();
        for lower in lowers {
            let cached = self.lock_images().get(lower).copied();
            let usage = match cached {
                Some(usage) => usage,
                None => {
                    let usage = walk_usage(lower)?;
                    self.lock_images().insert(lower.clone(), usage);
                    usage
                }
            };
            total.bytes += usage.bytes;
            total.inodes += usage.inodes;
        }
        Ok(total)
    }

    /// Makes the container's scratch dir: a plain directory, or a filesystem holding exactly
    /// what the limits allow. Call it before making the overlay's upper and work dirs in it.
    /// Idempotent; a failure leaves nothing behind.
    pub fn prepare_scratch(
        &self,
        handle: &str,
        limits: &DiskLimits,
        image: ImageUsage,
    ) -> HostResult<()> {
        let scratch = self.layout.scratch_dir(handle);
        let Some(plan) = plan(limits, image, || self.free_bytes())? else {
            mkdir_all(&scratch)?;
            return write_record(
                &self.layout.scratch_record(handle),
                &ScratchRecord {
                    limited: false,
                    image,
                    ..ScratchRecord::default()
                },
            );
        };
        if is_mount_point(&scratch)? {
            if read_record(&self.layout.scratch_record(handle))?.is_some_and(|r| r.limited) {
                return Ok(());
            }
            // Mounted, but the record was never written: start again.
            unmount_all(&scratch)?;
        }
        let result = self.make_filesystem(handle, plan, image);
        if result.is_err() {
            let _ = self.release_scratch(handle);
        }
        result
    }

    fn make_filesystem(&self, handle: &str, plan: Plan, image_usage: ImageUsage) -> HostResult<()> {
        let scratch = self.layout.scratch_dir(handle);
        let image = self.layout.scratch_image(handle);
        let record_path = self.layout.scratch_record(handle);
        mkdir_all(&scratch)?;
        if image.exists() && read_record(&record_path)?.is_some_and(|r| r.limited) {
            // Made before a reboot: mount it again, data and all.
            return attach_and_mount(&image, &scratch);
        }
        let inodes = plan.inodes.unwrap_or(plan.bytes / BYTES_PER_INODE);
        // ext4 keeps ~2% (at most 16 MiB) back for delayed allocation, plus bitmaps and
        // descriptors: start generously, trim to the plan with a reserve file afterwards.
        let mut size = plan.bytes
            + inodes.saturating_mul(INODE_BYTES)
            + (plan.bytes / 32).min(32 << 20)
            + (4 << 20);
        for _ in 0..3 {
            size = size.div_ceil(BLOCK) * BLOCK;
            make_image(&image, size, plan.inodes.map(|n| n + FIRST_INODE))?;
            attach_and_mount(&image, &scratch)?;
            let fs = statvfs(&scratch)?;
            let available = fs.available_bytes;
            if available >= plan.bytes {
                fill_excess(&scratch, available - plan.bytes, plan)?;
                let fs = statvfs(&scratch)?;
                return write_record(
                    &record_path,
                    &ScratchRecord {
                        limited: true,
                        image: image_usage,
                        base_bytes: fs.used_bytes,
                        base_inodes: fs.used_inodes,
                    },
                );
            }
            // The estimate fell short: unmount and make a bigger one.
            unmount_all(&scratch)?;
            size += (plan.bytes - available) + (plan.bytes - available) / 8 + (1 << 20);
        }
        Err(HostError::Unexpected(format!(
            "could not size a {} byte scratch filesystem for {handle}",
            plan.bytes
        )))
    }

    /// Unmounts and detaches the scratch filesystem and deletes its image. Call it after the
    /// overlay is unmounted. Idempotent; the directories stay for the rootfs to remove.
    pub fn release_scratch(&self, handle: &str) -> HostResult<()> {
        let scratch = self.layout.scratch_dir(handle);
        unmount_all(&scratch)?;
        let image = self.layout.scratch_image(handle);
        if image.exists() {
            detach_loops_of(&image)?;
            self.discard(&image)?;
        }
        remove_file(&self.layout.scratch_record(handle))
    }

    /// Deletes an image off the destroy path: freeing its blocks takes tens of milliseconds
    /// on a filesystem mounted with `discard`. It is renamed into the trash first (emptied
    /// at start-up too, so a crash leaks nothing); across filesystems it is deleted here.
    fn discard(&self, image: &Path) -> HostResult<()> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let trash = self.layout.scratch_trash_dir();
        mkdir_all(&trash)?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = trash.join(format!("{}-{n}.img", std::process::id()));
        match std::fs::rename(image, &target) {
            Ok(()) => {
                std::thread::spawn(move || {
                    let _ = std::fs::remove_file(target);
                });
                Ok(())
            }
            Err(_) => remove_file(image),
        }
    }

    /// The container's disk usage: exclusive = what it wrote, total = that plus its image.
    pub fn usage(&self, handle: &str) -> HostResult<DiskStat> {
        let Some(record) = read_record(&self.layout.scratch_record(handle))? else {
            return Ok(DiskStat::default());
        };
        let scratch = self.layout.scratch_dir(handle);
        let exclusive = if record.limited && is_mount_point(&scratch)? {
            let fs = statvfs(&scratch)?;
            ImageUsage {
                bytes: fs.used_bytes.saturating_sub(record.base_bytes),
                inodes: fs.used_inodes.saturating_sub(record.base_inodes),
            }
        } else {
            walk_usage(&scratch)?
        };
        Ok(DiskStat {
            total_bytes_used: record.image.bytes + exclusive.bytes,
            total_inodes_used: record.image.inodes + exclusive.inodes,
            exclusive_bytes_used: exclusive.bytes,
            exclusive_inodes_used: exclusive.inodes,
        })
    }

    /// The depot filesystem's size, and what containers may grow into: that size less the
    /// blocks only root may use.
    pub fn capacity(&self) -> HostResult<HostCapacity> {
        let depot = self.layout.depot();
        mkdir_all(depot)?;
        let fs = nix::sys::statvfs::statvfs(depot)
            .map_err(|e| HostError::io(format!("statfs {}", depot.display()), e.into()))?;
        let unit = fs.fragment_size() as u64;
        let blocks = fs.blocks() as u64;
        let root_only = (fs.blocks_free() as u64).saturating_sub(fs.blocks_available() as u64);
        Ok(HostCapacity {
            memory_in_bytes: 0,
            disk_in_bytes: blocks * unit,
            schedulable_disk_in_bytes: blocks.saturating_sub(root_only) * unit,
        })
    }

    fn free_bytes(&self) -> HostResult<u64> {
        let depot = self.layout.depot();
        mkdir_all(depot)?;
        let fs = nix::sys::statvfs::statvfs(depot)
            .map_err(|e| HostError::io(format!("statfs {}", depot.display()), e.into()))?;
        Ok(fs.blocks_available() as u64 * fs.fragment_size() as u64)
    }

    fn lock_images(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, ImageUsage>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// ext4 reserves the first 11 inodes (root and lost+found among them).
const FIRST_INODE: u64 = 11;

/// What the scratch filesystem must hold, or `None` for a plain directory.
fn plan(
    limits: &DiskLimits,
    image: ImageUsage,
    free_bytes: impl FnOnce() -> HostResult<u64>,
) -> HostResult<Option<Plan>> {
    if limits.byte_hard == 0 && limits.inode_hard == 0 {
        return Ok(None);
    }
    let total = limits.scope == DiskScope::Total;
    let smaller = || HostError::Invalid("disk limit is smaller than volume size".into());
    let bytes = if limits.byte_hard == 0 {
        // Only inodes are limited: bytes up to what the depot has (the image is sparse).
        free_bytes()?.max(MIN_QUOTA_BYTES)
    } else if total {
        limits
            .byte_hard
            .checked_sub(image.bytes)
            .ok_or_else(smaller)?
            .max(MIN_QUOTA_BYTES)
    } else {
        limits.byte_hard.max(MIN_QUOTA_BYTES)
    };
    // ext4 with 4 KiB blocks ends at 16 TiB.
    let bytes = bytes.min(16 << 40);
    let inodes = match limits.inode_hard {
        0 => None,
        hard if total => Some(hard.checked_sub(image.inodes).ok_or_else(smaller)?.max(16)),
        hard => Some(hard.max(16)),
    };
    Ok(Some(Plan { bytes, inodes }))
}

fn empty_trash(trash: &Path) {
    if let Ok(entries) = std::fs::read_dir(trash) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn mkdir_all(dir: &Path) -> HostResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| HostError::io(format!("create {}", dir.display()), e))
}

fn remove_file(path: &Path) -> HostResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::io(format!("remove {}", path.display()), e)),
    }
}

fn write_record(path: &Path, record: &ScratchRecord) -> HostResult<()> {
    let text = format!(
        "limited {}\nimage_bytes {}\nimage_inodes {}\nbase_bytes {}\nbase_inodes {}\n",
        u8::from(record.limited),
        record.image.bytes,
        record.image.inodes,
        record.base_bytes,
        record.base_inodes
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| HostError::io(format!("write {}", path.display()), e))
}

fn read_record(path: &Path) -> HostResult<Option<ScratchRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostError::io(format!("read {}", path.display()), e)),
    };
    let mut record = ScratchRecord::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value: u64 = value.trim().parse().unwrap_or(0);
        match key {
            "limited" => record.limited = value != 0,
            "image_bytes" => record.image.bytes = value,
            "image_inodes" => record.image.inodes = value,
            "base_bytes" => record.base_bytes = value,
            "base_inodes" => record.base_inodes = value,
            _ => {}
        }
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(byte_hard: u64, inode_hard: u64, scope: DiskScope) -> DiskLimits {
        DiskLimits {
            byte_hard,
            inode_hard,
            scope,
            ..DiskLimits::default()
        }
    }

    const IMAGE: ImageUsage = ImageUsage {
        bytes: 4 << 20,
        inodes: 400,
    };

    fn no_free() -> HostResult<u64> {
        panic!("free space is only needed for inode-only limits")
    }

    #[test]
    fn no_limit_means_a_plain_directory() {
        assert_eq!(plan(&DiskLimits::default(), IMAGE, no_free).unwrap(), None);
        // Soft limits are not enforced (as in guardian).
        let soft = DiskLimits {
            byte_soft: 1,
            inode_soft: 1,
            ..DiskLimits::default()
        };
        assert_eq!(plan(&soft, IMAGE, no_free).unwrap(), None);
    }

    #[test]
    fn total_scope_subtracts_the_image() {
        let p = plan(&limits(20 << 20, 0, DiskScope::Total), IMAGE, no_free)
            .unwrap()
            .unwrap();
        assert_eq!(p.bytes, 16 << 20);
        assert_eq!(p.inodes, None);
        let p = plan(&limits(20 << 20, 1000, DiskScope::Total), IMAGE, no_free)
            .unwrap()
            .unwrap();
        assert_eq!(p.inodes, Some(600));
        let err = plan(&limits(1 << 20, 0, DiskScope::Total), IMAGE, no_free).unwrap_err();
        assert_eq!(err.to_string(), "disk limit is smaller than volume size");
        assert!(matches!(err, HostError::Invalid(_)));
    }

    #[test]
    fn exclusive_scope_ignores_the_image() {
        let p = plan(&limits(10 << 20, 0, DiskScope::Exclusive), IMAGE, no_free)
            .unwrap()
            .unwrap();
        assert_eq!(p.bytes, 10 << 20);
        let tiny = plan(&limits(1, 0, DiskScope::Exclusive), IMAGE, no_free)
            .unwrap()
            .unwrap();
        assert_eq!(tiny.bytes, MIN_QUOTA_BYTES);
    }

    #[test]
    fn inode_only_limits_take_the_free_space() {
        let p = plan(&limits(0, 500, DiskScope::Exclusive), IMAGE, || Ok(1 << 30))
            .unwrap()
            .unwrap();
        assert_eq!(
            p,
            Plan {
                bytes: 1 << 30,
                inodes: Some(500)
            }
        );
    }

    #[test]
    fn records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scratch.state");
        assert_eq!(read_record(&path).unwrap(), None);
        let record = ScratchRecord {
            limited: true,
            image: IMAGE,
            base_bytes: 8192,
            base_inodes: 12,
        };
        write_record(&path, &record).unwrap();
        assert_eq!(read_record(&path).unwrap(), Some(record));
    }
}

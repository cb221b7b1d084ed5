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

use crate::host::{HostCapacity, HostError, HostResult};
use crate::layout::Layout;
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use trellis_core::api::{DiskLimits, DiskScope, DiskStat};

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
/// Excess inodes beyond this are left free rather than used up one file each.
const MAX_INODES_TO_FILL: u64 = 100_000;
/// The filesystem's own files, hidden from the container (it only sees the overlay).
const RESERVE_FILE: &str = ".trellis-reserved";
const RESERVE_DIR: &str = ".trellis-reserved-inodes";

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

fn make_image(image: &Path, size: u64, inodes: Option<u64>) -> HostResult<()> {
    remove_file(image)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .map_err(|e| HostError::io(format!("create {}", image.display()), e))?;
    file.set_len(size)
        .map_err(|e| HostError::io(format!("size {}", image.display()), e))?;
    drop(file);
    let mut mkfs = Command::new(find_mkfs());
    // No journal (the layer is scratch), no reserved blocks, no online-resize inode, and
    // inode tables left for the kernel (mounted with noinit_itable, so they stay sparse).
    mkfs.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-O",
        "^has_journal,^resize_inode",
        "-E",
        "lazy_itable_init=1,nodiscard",
    ]);
    match inodes {
        Some(n) => mkfs.arg("-N").arg(n.to_string()),
        None => mkfs.arg("-i").arg(BYTES_PER_INODE.to_string()),
    };
    let out = mkfs
        .arg(image)
        .output()
        .map_err(|e| HostError::io("run mkfs.ext4 (is e2fsprogs installed?)", e))?;
    if !out.status.success() {
        return Err(HostError::Command {
            context: format!("make the scratch filesystem {}", image.display()),
            program: "mkfs.ext4".into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn find_mkfs() -> PathBuf {
    ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mkfs.ext4"))
}

fn attach_and_mount(image: &Path, at: &Path) -> HostResult<()> {
    let device = loopdev::attach(image)?;
    let mounted = mount(
        Some(device.path.as_path()),
        at,
        Some("ext4"),
        MsFlags::MS_NOATIME,
        Some("noinit_itable"),
    );
    // Dropping the device closes it; with autoclear the kernel detaches it once unmounted
    // (right away, if the mount failed).
    drop(device);
    mounted.map_err(|e| {
        HostError::io(
            format!("mount {} at {}", image.display(), at.display()),
            e.into(),
        )
    })
}

/// Gives up the slack: a preallocated file takes the bytes beyond the plan, and empty files
/// the inodes beyond it (ext4 rounds inode counts up to whole inode-table blocks).
fn fill_excess(root: &Path, excess_bytes: u64, plan: Plan) -> HostResult<()> {
    let excess_bytes = excess_bytes / BLOCK * BLOCK;
    if excess_bytes > 0 {
        let path = root.join(RESERVE_FILE);
        let file = File::create(&path)
            .map_err(|e| HostError::io(format!("create {}", path.display()), e))?;
        nix::fcntl::fallocate(
            &file,
            nix::fcntl::FallocateFlags::empty(),
            0,
            excess_bytes as i64,
        )
        .map_err(|e| HostError::io(format!("reserve space in {}", root.display()), e.into()))?;
    }
    if let Some(wanted) = plan.inodes {
        // Counted after the reserve file took its inode; the reserve dir takes one more.
        let free_inodes = statvfs(root)?.free_inodes;
        let excess = free_inodes.saturating_sub(wanted).saturating_sub(1);
        if excess > 0 && excess <= MAX_INODES_TO_FILL {
            let dir = root.join(RESERVE_DIR);
            mkdir_all(&dir)?;
            for n in 0..excess {
                let path = dir.join(n.to_string());
                File::create(&path)
                    .map_err(|e| HostError::io(format!("create {}", path.display()), e))?;
            }
        }
    }
    Ok(())
}

struct FsStat {
    available_bytes: u64,
    used_bytes: u64,
    free_inodes: u64,
    used_inodes: u64,
}

fn statvfs(path: &Path) -> HostResult<FsStat> {
    let fs = nix::sys::statvfs::statvfs(path)
        .map_err(|e| HostError::io(format!("statfs {}", path.display()), e.into()))?;
    let unit = fs.fragment_size() as u64;
    Ok(FsStat {
        available_bytes: fs.blocks_available() as u64 * unit,
        used_bytes: (fs.blocks() as u64).saturating_sub(fs.blocks_free() as u64) * unit,
        free_inodes: fs.files_available() as u64,
        used_inodes: (fs.files() as u64).saturating_sub(fs.files_free() as u64),
    })
}

/// Whether `dir` is a mount point (another device than its parent's).
fn is_mount_point(dir: &Path) -> HostResult<bool> {
    let own = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(HostError::io(format!("stat {}", dir.display()), e)),
    };
    let parent = std::fs::symlink_metadata(dir.join(".."))
        .map_err(|e| HostError::io(format!("stat {}/..", dir.display()), e))?;
    Ok(own.dev() != parent.dev())
}

fn unmount_all(dir: &Path) -> HostResult<()> {
    // A retried prepare may have stacked mounts; take them all off.
    for _ in 0..8 {
        if !is_mount_point(dir)? {
            return Ok(());
        }
        match umount2(dir, MntFlags::empty()) {
            Ok(()) => {}
            // Still in use (a container's mount namespace holds it): detach it lazily; the
            // loop device goes when its last user does.
            Err(Errno::EBUSY) => umount2(dir, MntFlags::MNT_DETACH)
                .map_err(|e| HostError::io(format!("unmount {}", dir.display()), e.into()))?,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(e) => {
                return Err(HostError::io(
                    format!("unmount {}", dir.display()),
                    e.into(),
                ))
            }
        }
    }
    Ok(())
}

/// Detaches loop devices still backed by `image` (autoclear normally did it already).
fn detach_loops_of(image: &Path) -> HostResult<()> {
    detach_loops_where(|backing| backing == image).map(drop)
}

/// Detaches every loop device backed by a file under one of `dirs` (given as the kernel names
/// them: absolute, symlinks resolved), deleted files included; returns how many. For `trellis
/// cleanup`, which must find the scratch images of containers it knows nothing else about.
pub fn detach_loops_under(dirs: &[PathBuf]) -> HostResult<usize> {
    detach_loops_where(|backing| dirs.iter().any(|dir| backing.starts_with(dir)))
}

fn detach_loops_where(wanted: impl Fn(&Path) -> bool) -> HostResult<usize> {
    let entries = match std::fs::read_dir("/sys/block") {
        Ok(entries) => entries,
        Err(_) => return Ok(0),
    };
    let mut detached = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim_end();
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        if wanted(Path::new(backing)) {
            loopdev::detach(&Path::new("/dev").join(&name))?;
            detached += 1;
        }
    }
    Ok(detached)
}

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once, without
/// leaving its filesystem. Walks with directory fds (openat/fstatat), so no path is resolved
/// twice (BulkMetrics walks every unlimited container's scratch dir), depth first with one
/// open directory per level and no recursion (a container decides how deep its tree is).
fn walk_usage(dir: &Path) -> HostResult<ImageUsage> {
    use nix::dir::Dir;
    use nix::fcntl::{AtFlags, OFlag};
    use nix::sys::stat::{fstatat, Mode, SFlag};
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, BorrowedFd};

    struct Level {
        dir: Dir,
        subdirs: Vec<CString>,
    }
    struct Walk {
        dev: u64,
        seen: HashSet<u64>,
        usage: ImageUsage,
    }
    // SAFETY (both uses): the Dir owns the fd and outlives the borrow.
    fn fd_of(dir: &Dir) -> BorrowedFd<'_> {
        unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) }
    }
    /// Counts `dir`'s entries and returns its subdirectories' names.
    fn scan(dir: &mut Dir, walk: &mut Walk) -> Vec<CString> {
        let at = dir.as_raw_fd();
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            // Entries can vanish while a container runs: skip what cannot be read.
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            // SAFETY: `at` belongs to the Dir being iterated.
            let at = unsafe { BorrowedFd::borrow_raw(at) };
            let Ok(st) = fstatat(at, name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if st.st_dev != walk.dev {
                continue;
            }
            let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
            if st.st_nlink > 1 && !is_dir && !walk.seen.insert(st.st_ino) {
                continue;
            }
            walk.usage.bytes += st.st_blocks as u64 * 512;
            walk.usage.inodes += 1;
            if is_dir {
                subdirs.push(name.to_owned());
            }
        }
        subdirs
    }

    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut root = match Dir::open(dir, flags, Mode::empty()) {
        Ok(root) => root,
        Err(Errno::ENOENT) => return Ok(ImageUsage::default()),
        Err(e) => return Err(HostError::io(format!("open {}", dir.display()), e.into())),
    };
    let dev = fstatat(fd_of(&root), ".", AtFlags::empty())
        .map_err(|e| HostError::io(format!("stat {}", dir.display()), e.into()))?
        .st_dev;
    let mut walk = Walk {
        dev,
        seen: HashSet::new(),
        usage: ImageUsage::default(),
    };
    let subdirs = scan(&mut root, &mut walk);
    let mut levels = vec![Level { dir: root, subdirs }];
    while let Some(level) = levels.last_mut() {
        let Some(name) = level.subdirs.pop() else {
            levels.pop();
            continue;
        };
        if let Ok(mut child) = Dir::openat(fd_of(&level.dir), name.as_c_str(), flags, Mode::empty())
        {
            let subdirs = scan(&mut child, &mut walk);
            levels.push(Level {
                dir: child,
                subdirs,
            });
        }
    }
    Ok(walk.usage)
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

/// Loop devices through the kernel's ioctls (no losetup process per container).
mod loopdev {
    use crate::host::{HostError, HostResult};
    use nix::errno::Errno;
    use nix::libc;
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
    const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
    const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
    /// Detach once the last user (the mount) is gone. Not LO_FLAGS_DIRECT_IO: direct reads
    /// must first write back the image's pages that mkfs left dirty, which made the mount
    /// take ~30 ms instead of ~0.4 ms; buffered, the container's writes are cached twice (in
    /// its filesystem and in the image file), both reclaimable.
    const LO_FLAGS_AUTOCLEAR: u32 = 4;

    /// `struct loop_info64` from <linux/loop.h>.
    #[repr(C)]
    struct LoopInfo64 {
        device: u64,
        inode: u64,
        rdevice: u64,
        offset: u64,
        sizelimit: u64,
        number: u32,
        encrypt_type: u32,
        encrypt_key_size: u32,
        flags: u32,
        file_name: [u8; 64],
        crypt_name: [u8; 64],
        encrypt_key: [u8; 32],
        init: [u64; 2],
    }

    /// `struct loop_config` from <linux/loop.h>.
    #[repr(C)]
    struct LoopConfig {
        fd: u32,
        block_size: u32,
        info: LoopInfo64,
        reserved: [u64; 8],
    }

    /// An attached loop device, open; dropping it closes it.
    pub struct Device {
        pub path: PathBuf,
        _file: File,
    }

    /// Attaches `image` to a free loop device with autoclear set.
    pub fn attach(image: &Path) -> HostResult<Device> {
        let backing = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(image)
            .map_err(|e| HostError::io(format!("open {}", image.display()), e))?;
        let control = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| HostError::io("open /dev/loop-control", e))?;
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        let name = image.as_os_str().as_bytes();
        let len = name.len().min(63);
        config.info.file_name[..len].copy_from_slice(&name[..len]);
        // Another process may take the free device between asking and configuring.
        for _ in 0..32 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if number < 0 {
                return Err(HostError::io(
                    "find a free loop device",
                    std::io::Error::last_os_error(),
                ));
            }
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let device = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| HostError::io(format!("open {}", path.display()), e))?;
            // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is, and the
            // backing fd stays open for the call.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
            if rc == 0 {
                return Ok(Device {
                    path,
                    _file: device,
                });
            }
            match Errno::last() {
                Errno::EBUSY => continue,
                e => {
                    return Err(HostError::io(
                        format!("attach {} to {}", image.display(), path.display()),
                        e.into(),
                    ))
                }
            }
        }
        Err(HostError::sys(
            format!("no free loop device for {}", image.display()),
            Errno::EBUSY,
        ))
    }

    /// Detaches the device (lazily, if it is still in use).
    pub fn detach(path: &Path) -> HostResult<()> {
        let device = match OpenOptions::new().read(true).open(path) {
            Ok(device) => device,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(HostError::io(format!("open {}", path.display()), e)),
        };
        // SAFETY: LOOP_CLR_FD takes no argument.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD) };
        if rc == 0 {
            return Ok(());
        }
        match Errno::last() {
            // Not attached (any more).
            Errno::ENXIO => Ok(()),
            e => Err(HostError::io(
                format!("detach {}", path.display()),
                e.into(),
            )),
        }
    }
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

    #[test]
    fn walking_counts_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 8192]).unwrap();
        std::fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/c"), b"x").unwrap();
        let usage = walk_usage(dir.path()).unwrap();
        assert_eq!(usage.inodes, 3, "a (= b), sub, sub/c");
        assert!(usage.bytes > 8192, "{usage:?}");
        assert_eq!(
            walk_usage(&dir.path().join("missing")).unwrap(),
            ImageUsage::default()
        );
    }

    #[test]
    fn walking_a_deep_tree_needs_no_recursion() {
        let dir = tempfile::tempdir().unwrap();
        let mut path = dir.path().to_path_buf();
        for _ in 0..400 {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("leaf"), b"x").unwrap();
        assert_eq!(walk_usage(dir.path()).unwrap().inodes, 401);
    }
}

//! A limited scratch dir's filesystem: a sparse ext4 image made with mkfs, attached to a
//! loop device and mounted, its slack given up; and taking it down again.

use super::loopdev;
use super::{mkdir_all, remove_file, Plan, BLOCK, BYTES_PER_INODE};
use crate::host::{HostError, HostResult};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Excess inodes beyond this are left free rather than used up one file each.
const MAX_INODES_TO_FILL: u64 = 100_000;
/// The filesystem's own files, hidden from the container (it only sees the overlay).
const RESERVE_FILE: &str = ".trellis-reserved";
const RESERVE_DIR: &str = ".trellis-reserved-inodes";

pub(super) fn make_image(image: &Path, size: u64, inodes: Option<u64>) -> HostResult<()> {
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

pub(super) fn attach_and_mount(image: &Path, at: &Path) -> HostResult<()> {
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
pub(super) fn fill_excess(root: &Path, excess_bytes: u64, plan: Plan) -> HostResult<()> {
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

pub(super) struct FsStat {
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

pub(super) fn statvfs(path: &Path) -> HostResult<FsStat> {
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
pub(super) fn is_mount_point(dir: &Path) -> HostResult<bool> {
    let own = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(HostError::io(format!("stat {}", dir.display()), e)),
    };
    let parent = std::fs::symlink_metadata(dir.join(".."))
        .map_err(|e| HostError::io(format!("stat {}/..", dir.display()), e))?;
    Ok(own.dev() != parent.dev())
}

pub(super) fn unmount_all(dir: &Path) -> HostResult<()> {
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
pub(super) fn detach_loops_of(image: &Path) -> HostResult<()> {
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

//! Counting what a directory tree occupies (an unlimited scratch dir, an image's layers).

use super::ImageUsage;
use crate::host::{HostError, HostResult};
use nix::errno::Errno;
use std::collections::HashSet;
use std::path::Path;

/// Bytes (allocated blocks) and inodes under `dir`, hard links counted once, without
/// leaving its filesystem. Walks with directory fds (openat/fstatat), so no path is resolved
/// twice (BulkMetrics walks every unlimited container's scratch dir), depth first with one
/// open directory per level and no recursion (a container decides how deep its tree is).
pub(super) fn walk_usage(dir: &Path) -> HostResult<ImageUsage> {
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
    fn fd_of(dir: &Dir) -> BorrowedFd<'_> {
        // SAFETY: the Dir owns the fd and outlives the borrow (tied to `dir`'s lifetime).
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

#[cfg(test)]
mod tests {
    use super::*;

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

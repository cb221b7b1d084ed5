//! Network namespaces kept alive by a bind mount of their nsfs file, like `ip netns`.
//!
//! The namespace is made on a short-lived thread of our own that unshares its network
//! namespace (a per-thread property), bind-mounts it and exits; no process is forked and no
//! other thread changes namespace.

use crate::host::{HostError, HostResult};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::Path;

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Whether `path` is a bind mount of a namespace.
pub fn is_namespace(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|fs| fs.filesystem_type().0 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// Creates a new network namespace bound at `path`; does nothing if one is already there.
pub fn create(path: &Path) -> HostResult<()> {
    if is_namespace(path) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| HostError::io(format!("create {}", path.display()), e))?;
    let target = path.to_path_buf();
    std::thread::spawn(move || -> HostResult<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| HostError::Failed(format!("unshare network namespace: {e}")))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| HostError::Failed(format!("bind {} at {}: {e}", own, target.display())))
    })
    .join()
    .map_err(|_| HostError::Failed("network namespace thread panicked".into()))?
}

/// Unmounts and removes the namespace file; the namespace goes away with its last user.
pub fn remove(path: &Path) -> HostResult<()> {
    // A file can carry stacked mounts after a crash between two creates; take them all off.
    while is_namespace(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| HostError::Failed(format!("unmount {}: {e}", path.display())))?;
    }
    super::state::remove_file_if_exists(path)
}

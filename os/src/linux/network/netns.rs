//! Network namespaces kept alive by a bind mount of their nsfs file, like `ip netns`.
//!
//! A privileged container's namespace is made on a short-lived thread of our own that unshares
//! its network namespace (a per-thread property), bind-mounts it and exits; no process is
//! forked and no other thread changes namespace. An unprivileged container's is made together
//! with its user namespace, which then owns it (see `userns`).

use crate::host::{HostError, HostResult};
use crate::linux::security::userns::{self, IdMapping};
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

/// Creates a new network namespace bound at `path`, owned by a new user namespace with
/// `owner`'s mapping when given (an unprivileged container's), else by the host's. Does nothing
/// if a namespace of that kind is already there; replaces one of the other kind.
pub fn create(path: &Path, owner: Option<&IdMapping>) -> HostResult<()> {
    if is_namespace(path) {
        let existing = std::fs::File::open(path)
            .map_err(|e| HostError::io(format!("open {}", path.display()), e))?;
        let unprivileged = userns::network_namespace_is_unprivileged(&existing)
            .map_err(|e| HostError::io(format!("the owner of {}", path.display()), e))?;
        if unprivileged == owner.is_some() {
            return Ok(());
        }
        remove(path)?;
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
    if let Some(mapping) = owner {
        let namespaces = userns::new_namespaces(mapping, true)
            .map_err(|e| HostError::io("making user and network namespaces", e))?;
        let net = namespaces.net.expect("asked for a network namespace");
        let source = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&net));
        return mount(
            Some(source.as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| HostError::sys(format!("bind {source} at {}", path.display()), e));
    }
    let target = path.to_path_buf();
    std::thread::spawn(move || -> HostResult<()> {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| HostError::sys("unshare network namespace", e))?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        mount(
            Some(own.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| HostError::sys(format!("bind {own} at {}", target.display()), e))
    })
    .join()
    .map_err(|_| HostError::Unexpected("network namespace thread panicked".into()))?
}

/// Writes sysctls of the network namespace at `netns` (names as under /proc/sys), from one
/// short-lived thread that joins it (/proc/sys/net shows the opening thread's namespace).
pub fn write_sysctls(netns: &Path, sysctls: &[(String, String)]) -> HostResult<()> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let ns = std::fs::File::open(netns)
        .map_err(|e| HostError::io(format!("open {}", netns.display()), e))?;
    let sysctls = sysctls.to_vec();
    std::thread::spawn(move || -> HostResult<()> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| HostError::sys("join the network namespace", e))?;
        for (name, value) in sysctls {
            let path = format!("/proc/sys/{name}");
            std::fs::write(&path, &value)
                .map_err(|e| HostError::io(format!("write {path} in the container"), e))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| HostError::Unexpected("sysctl thread panicked".into()))?
}

/// The bytes `interface` in the namespace at `netns` received and sent (`/proc/net/dev` as a
/// thread that joined the namespace sees it); `None` if it has no such interface.
pub fn interface_counters(
    netns: &Path,
    interface: &str,
) -> HostResult<Option<trellis_core::api::NetworkStat>> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| HostError::io(format!("open {}", netns.display()), e))?;
    let interface = interface.to_string();
    std::thread::spawn(
        move || -> HostResult<Option<trellis_core::api::NetworkStat>> {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| HostError::sys("join the network namespace", e))?;
            let text = std::fs::read_to_string("/proc/thread-self/net/dev")
                .map_err(|e| HostError::io("read /proc/thread-self/net/dev", e))?;
            Ok(parse_net_dev(&text, &interface))
        },
    )
    .join()
    .map_err(|_| HostError::Unexpected("network counters thread panicked".into()))?
}

/// `interface`'s received and sent bytes from /proc/net/dev's text (received bytes are the
/// first counter, sent bytes the ninth).
fn parse_net_dev(text: &str, interface: &str) -> Option<trellis_core::api::NetworkStat> {
    text.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != interface {
            return None;
        }
        let counters: Vec<u64> = counters
            .split_whitespace()
            .map(|c| c.parse().ok())
            .collect::<Option<_>>()?;
        Some(trellis_core::api::NetworkStat {
            rx_bytes: *counters.first()?,
            tx_bytes: *counters.get(8)?,
        })
    })
}

/// Unmounts and removes the namespace file; the namespace goes away with its last user.
pub fn remove(path: &Path) -> HostResult<()> {
    // A file can carry stacked mounts after a crash between two creates; take them all off.
    while is_namespace(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| HostError::sys(format!("unmount {}", path.display()), e))?;
    }
    super::state::remove_file_if_exists(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_counters_of_the_named_interface() {
        let text = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    2048      10    0    0    0     0          0         0     4096      20    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(text, "eth0"),
            Some(trellis_core::api::NetworkStat {
                rx_bytes: 2048,
                tx_bytes: 4096
            })
        );
        assert_eq!(parse_net_dev(text, "eth1"), None);
    }
}

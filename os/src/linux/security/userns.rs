//! User namespaces for unprivileged containers: gdn's id mapping, and namespaces made with it.
//!
//! Container root is host uid/gid 2³²−2 ("maximus"); container ids from `--uid-map-start` on map
//! to the same host ids (`0 4294967294 1` then `1 1 4294967293` by default). Every unprivileged
//! container gets a user namespace of its own with this mapping, which owns its network
//! namespace (so container root may bind low ports and open raw sockets there) and every other
//! namespace init makes. The image is shown through the same mapping with id-mapped mounts.
//!
//! A user namespace can only be made by a single-threaded process, and its mapping can only be
//! written from outside it. So a short-lived child is cloned into the new namespaces, sharing
//! our memory (`CLONE_VM`, nothing copied), blocked with every signal masked; we write its maps,
//! open its namespace files, and kill it. The namespaces live on through those descriptors (and
//! through a bind mount of the network namespace, made by the caller).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// The host id container root maps to: the largest valid id, as gdn picks it.
pub const MAXIMUS: u32 = u32::MAX - 1;

/// One line of a `uid_map`/`gid_map`: `size` ids from `container` on are host ids from `host`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// The uid and gid mappings of every unprivileged container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// gdn's `--uid-map-start`, `--uid-map-length`, `--gid-map-start`, `--gid-map-length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMapFlags {
    pub uid_start: u32,
    /// 0: everything from `uid_start` up to maximus.
    pub uid_length: u32,
    pub gid_start: u32,
    pub gid_length: u32,
}

impl Default for IdMapFlags {
    fn default() -> Self {
        IdMapFlags {
            uid_start: 1,
            uid_length: 0,
            gid_start: 1,
            gid_length: 0,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdMapError {
    #[error("--{0}-map-start must be at least 1 (container id 0 is root, mapped to {MAXIMUS})")]
    StartZero(&'static str),
    #[error("--{kind}-map-start {start} with --{kind}-map-length {length} reaches past {MAXIMUS}, the id container root maps to")]
    TooLong {
        kind: &'static str,
        start: u32,
        length: u32,
    },
}

impl IdMapping {
    /// The mapping gdn builds from its flags: container 0 is maximus; container ids from 1 on are
    /// `length` host ids from `start` on.
    pub fn from_flags(flags: IdMapFlags) -> Result<IdMapping, IdMapError> {
        let ranges = |kind: &'static str, start: u32, length: u32| {
            if start == 0 {
                return Err(IdMapError::StartZero(kind));
            }
            let length = if length == 0 { MAXIMUS - start } else { length };
            if u64::from(start) + u64::from(length) > u64::from(MAXIMUS) {
                return Err(IdMapError::TooLong {
                    kind,
                    start,
                    length,
                });
            }
            Ok(vec![
                IdRange {
                    container: 0,
                    host: MAXIMUS,
                    size: 1,
                },
                IdRange {
                    container: 1,
                    host: start,
                    size: length,
                },
            ])
        };
        Ok(IdMapping {
            uids: ranges("uid", flags.uid_start, flags.uid_length)?,
            gids: ranges("gid", flags.gid_start, flags.gid_length)?,
        })
    }

    /// The host uid of container root.
    pub fn root_uid(&self) -> u32 {
        host_id(&self.uids, 0).unwrap_or(MAXIMUS)
    }

    pub fn root_gid(&self) -> u32 {
        host_id(&self.gids, 0).unwrap_or(MAXIMUS)
    }

    /// The host uid of container uid `id`, if it is mapped.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        host_id(&self.uids, id)
    }

    pub fn host_gid(&self, id: u32) -> Option<u32> {
        host_id(&self.gids, id)
    }
}

impl Default for IdMapping {
    fn default() -> Self {
        IdMapping::from_flags(IdMapFlags::default()).expect("the default flags are valid")
    }
}

fn host_id(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges.iter().find_map(|r| {
        let offset = id.checked_sub(r.container)?;
        (offset < r.size).then(|| r.host + offset)
    })
}

/// The text of a `/proc/<pid>/uid_map` (or `gid_map`) for these ranges.
pub fn map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
        .collect()
}

/// A new user namespace with `mapping`, and optionally a network namespace it owns.
pub struct Namespaces {
    pub user: OwnedFd,
    pub net: Option<OwnedFd>,
}

/// Makes a user namespace with `mapping` (and a network namespace owned by it, with
/// `with_network`). Works from a multi-threaded process.
pub fn new_namespaces(mapping: &IdMapping, with_network: bool) -> io::Result<Namespaces> {
    const STACK_SIZE: usize = 64 * 1024;
    // The child runs on this stack in our memory; it is dropped only after the child is reaped.
    let mut stack = vec![0u8; STACK_SIZE];
    /// What the child is given: the signals to block and who its parent must be.
    #[repr(C)]
    struct Hold {
        mask: libc::sigset_t,
        parent: libc::pid_t,
    }
    // Dies with its parent, blocks every blockable signal (so no handler of ours ever runs on
    // the child's stack), then sleeps until killed. Only raw syscalls: errno lives in the
    // parent thread's TLS.
    extern "C" fn hold(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at a `Hold` the parent keeps alive until the child is reaped.
        unsafe {
            let hold = &*(arg as *const Hold);
            // A holder outliving a killed server would keep a copy of every descriptor the
            // server had (its directory locks included) and pause forever.
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL,
                0,
                0,
                0,
            );
            if libc::syscall(libc::SYS_getppid) != libc::c_long::from(hold.parent) {
                // The parent died before the line above took effect.
                libc::syscall(libc::SYS_exit, 0);
            }
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &hold.mask as *const libc::sigset_t,
                std::ptr::null_mut::<libc::sigset_t>(),
                8usize,
            );
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    let mut arg = Hold {
        // SAFETY: an all-zero sigset_t is a valid (empty) set; sigfillset fills it below.
        mask: unsafe { std::mem::zeroed() },
        parent: std::process::id() as libc::pid_t,
    };
    // SAFETY: sigfillset initialises the set we own.
    unsafe { libc::sigfillset(&mut arg.mask) };
    let mut flags = libc::CLONE_VM | libc::CLONE_NEWUSER | libc::SIGCHLD;
    if with_network {
        flags |= libc::CLONE_NEWNET;
    }
    // The stack grows down from its (16-byte aligned) top.
    let top = ((stack.as_mut_ptr() as usize + STACK_SIZE) & !15) as *mut libc::c_void;
    // SAFETY: the child only runs `hold` on its own stack, touching nothing else of ours.
    let pid = unsafe { libc::clone(hold, top, flags, &mut arg as *mut _ as *mut libc::c_void) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let child = HeldChild(pid);
    let result = (|| {
        write_proc(pid, "uid_map", &map_text(&mapping.uids))?;
        write_proc(pid, "gid_map", &map_text(&mapping.gids))?;
        let user = File::open(format!("/proc/{pid}/ns/user"))?.into();
        let net = if with_network {
            Some(File::open(format!("/proc/{pid}/ns/net"))?.into())
        } else {
            None
        };
        Ok(Namespaces { user, net })
    })();
    drop(child);
    drop(stack);
    result
}

fn write_proc(pid: i32, file: &str, text: &str) -> io::Result<()> {
    // One write: the kernel takes a map only in a single write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/{file}"))?
        .write_all(text.as_bytes())
        .map_err(|e| io::Error::new(e.kind(), format!("writing /proc/{pid}/{file}: {e}")))
}

/// Kills and reaps the holder child when dropped.
struct HeldChild(i32);

impl Drop for HeldChild {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut status = 0;
            while libc::waitpid(self.0, &mut status, libc::__WALL) < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        }
    }
}

/// The user namespace that owns the namespace `ns` (any namespace file descriptor).
pub fn owner_of(ns: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), libc::NS_GET_USERNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `userns` is the user namespace this process runs in (the host's, for the server).
pub fn is_own_user_namespace(userns: BorrowedFd<'_>) -> io::Result<bool> {
    let own = std::fs::metadata("/proc/self/ns/user")?;
    let other = File::from(userns.try_clone_to_owned()?).metadata()?;
    Ok(own.ino() == other.ino() && own.dev() == other.dev())
}

/// Whether the network namespace file at `netns` is owned by a user namespace of its own
/// (an unprivileged container's) rather than the host's.
pub fn network_namespace_is_unprivileged(netns: &File) -> io::Result<bool> {
    let owner = owner_of(netns.as_fd())?;
    Ok(!is_own_user_namespace(owner.as_fd())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mapping_is_gdns_maximus_mapping() {
        let m = IdMapping::default();
        assert_eq!(map_text(&m.uids), "0 4294967294 1\n1 1 4294967293\n");
        assert_eq!(map_text(&m.gids), "0 4294967294 1\n1 1 4294967293\n");
        assert_eq!(m.root_uid(), 4294967294);
        assert_eq!(m.host_uid(1000), Some(1000));
        assert_eq!(m.host_uid(4294967293), Some(4294967293));
        assert_eq!(m.host_uid(4294967294), None);
    }

    #[test]
    fn flags_shift_the_non_root_range() {
        let m = IdMapping::from_flags(IdMapFlags {
            uid_start: 100000,
            uid_length: 65536,
            gid_start: 200000,
            gid_length: 1000,
        })
        .unwrap();
        assert_eq!(map_text(&m.uids), "0 4294967294 1\n1 100000 65536\n");
        assert_eq!(map_text(&m.gids), "0 4294967294 1\n1 200000 1000\n");
        assert_eq!(m.host_uid(1), Some(100000));
        assert_eq!(m.host_uid(65536), Some(165535));
        assert_eq!(m.host_uid(65537), None);
        assert_eq!(m.host_gid(1000), Some(200999));
    }

    #[test]
    fn bad_flags_are_refused() {
        let zero = IdMapFlags {
            uid_start: 0,
            ..Default::default()
        };
        assert_eq!(
            IdMapping::from_flags(zero),
            Err(IdMapError::StartZero("uid"))
        );
        let long = IdMapFlags {
            gid_start: 10,
            gid_length: MAXIMUS,
            ..Default::default()
        };
        assert!(matches!(
            IdMapping::from_flags(long),
            Err(IdMapError::TooLong { kind: "gid", .. })
        ));
    }
}

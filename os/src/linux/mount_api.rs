//! The kernel's file-descriptor mount API (`open_tree`, `mount_setattr`, `move_mount`,
//! `fsopen`/`fsconfig`/`fsmount`) and `openat2`, as thin wrappers.
//!
//! Mounts are made detached, given their attributes (read-only, an id mapping), and only then
//! attached, to a target held by a descriptor that was resolved without following symlinks out
//! of the container's root. So no path can be swapped between checking and mounting
//! (CVE-2021-30465), and nothing is ever visible half-configured. Used by the rootfs manager
//! (id-mapped image layers) and by container init (every mount of the container's view).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use libc::{
    MOUNT_ATTR_IDMAP, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn fd_result(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn unit_result(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached copy of the mount tree at `path` (recursively with `recursive`).
pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: plain syscall with a valid C string.
    fd_result(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })
}

/// A detached copy of the mount tree `fd` refers to (a detached tree or an `O_PATH` target).
pub fn clone_tree_of(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags =
        libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: plain syscall on a descriptor we hold, with an empty path.
    fd_result(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on a tree; `userns` gives `MOUNT_ATTR_IDMAP` its
/// mapping.
pub fn set_attributes(
    tree: BorrowedFd<'_>,
    set: u64,
    userns: Option<BorrowedFd<'_>>,
    recursive: bool,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map(|u| u.as_raw_fd() as u64).unwrap_or(0),
    };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, attr sized as declared.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
}

/// Attaches a detached tree on top of the file or directory `target` (an `O_PATH` descriptor).
pub fn attach_at(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: two descriptors we hold, empty paths.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

/// Attaches a detached tree at `path` (resolved by the kernel; for host-side paths we own).
pub fn attach_at_path(tree: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: a descriptor we hold and a valid C string.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
}

/// A new, detached filesystem instance: `fsopen(fstype)`, its source named `fstype` (what
/// /proc/mounts shows first, as `mount -t tmpfs tmpfs ...` would), the given `key[=value]`
/// options, then `fsmount` with mount attributes `attrs`.
pub fn new_filesystem(
    fstype: &str,
    options: &[(&str, Option<&str>)],
    attrs: u64,
) -> io::Result<OwnedFd> {
    let name = CString::new(fstype).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain syscall with a valid C string.
    let context =
        fd_result(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), libc::FSOPEN_CLOEXEC) })?;
    for (key, value) in std::iter::once(&("source", Some(fstype))).chain(options) {
        let key = CString::new(*key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let value = value
            .map(CString::new)
            .transpose()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let (command, value_ptr) = match &value {
            Some(v) => (libc::FSCONFIG_SET_STRING, v.as_ptr()),
            None => (libc::FSCONFIG_SET_FLAG, std::ptr::null()),
        };
        // SAFETY: valid context descriptor and C strings that outlive the call.
        unit_result(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                key.as_ptr(),
                value_ptr,
                0,
            )
        })?;
    }
    // SAFETY: as above, no key or value.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: a configured context; the result is a new detached mount.
    fd_result(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
}

/// How `open_in` may resolve a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// Symlinks are followed, but never out of the root (`RESOLVE_IN_ROOT`): for user-chosen
    /// mount targets inside the container.
    InRoot,
    /// No symlink anywhere on the path (`RESOLVE_NO_SYMLINKS`): for the mount points the
    /// runtime itself owns (/proc, /dev, masked paths), which must be exactly what they say.
    NoSymlinks,
}

/// Opens `path` relative to `root` with `openat2`, never escaping `root`, never crossing into
/// /proc magic links.
pub fn open_in(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: i32,
    resolve: Resolve,
) -> io::Result<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    let c = cstring(relative)?;
    let mut how: libc::open_how = unsafe {
        // SAFETY: open_how is plain data; zero is a valid value for every field.
        std::mem::zeroed()
    };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_MAGICLINKS
        | match resolve {
            Resolve::InRoot => libc::RESOLVE_IN_ROOT,
            Resolve::NoSymlinks => libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
        };
    // SAFETY: valid descriptor, C string and open_how of the declared size.
    fd_result(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// Detaches whatever is mounted at `path`, every stacked mount, if anything is.
pub fn detach_all(path: &Path) -> io::Result<()> {
    loop {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

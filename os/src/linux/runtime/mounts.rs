//! The container's mount namespace, built by its init before it serves anything.
//!
//! Order: make every mount private; clone (`open_tree`) every host-side source (bind mounts of
//! host origin, the hosts and resolv.conf files) while the host is still visible; pivot into the
//! rootfs and drop the old root; then make every mount point *inside* the new root, so that
//! symlinks in the image resolve within the container and can never point a mount at the host.
//! Cloned trees are attached with `move_mount`. A user namespace slots in later by creating it
//! before the pivot, idmapping the cloned trees (`mount_setattr` with `MOUNT_ATTR_IDMAP`) and
//! binding host device nodes instead of `mknod`.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use trellis_core::api::{BindMount, BindMountMode, BindMountOrigin};

/// What init needs to build the container's world; sent by the server on the helper's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub container_dir: PathBuf,
    pub rootfs: PathBuf,
    /// The network namespace to join; `None` makes a fresh one with only loopback.
    pub netns: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf_file: Option<PathBuf>,
    pub hostname: String,
    pub bind_mounts: Vec<BindMount>,
    pub pid_file: PathBuf,
}

const OPEN_TREE_CLONE: u32 = 1;
const AT_RECURSIVE: u32 = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstr(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| format!("bad path {}", path.display()))
}

/// A detached copy of the mount tree at `path` (recursive), attachable later with `attach`.
fn clone_tree(path: &Path) -> Result<OwnedFd, String> {
    let c = cstr(path)?;
    // SAFETY: plain syscall with a valid C string; the result is a new fd we own.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as u32 | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cloning mount {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn make_read_only(tree: &OwnedFd) -> Result<(), String> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: valid fd, empty path with AT_EMPTY_PATH, attr sized as the kernel expects.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as u32 | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(format!(
            "making a bind mount read-only: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn attach(tree: &OwnedFd, target: &Path) -> Result<(), String> {
    let c = cstr(target)?;
    let empty = c"";
    // SAFETY: valid fd and C strings.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(format!(
            "mounting at {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn mkdir_all(path: &Path, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))
}

/// Makes `target` exist as a directory or a file to mount over.
fn mount_point(target: &Path, is_dir: bool) -> Result<(), String> {
    if is_dir {
        return mkdir_all(target, 0o755);
    }
    if let Some(parent) = target.parent() {
        mkdir_all(parent, 0o755)?;
    }
    match fs::symlink_metadata(target) {
        Ok(_) => Ok(()),
        Err(_) => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(target)
            .map(drop)
            .map_err(|e| format!("creating {}: {e}", target.display())),
    }
}

fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mkdir_all(Path::new(target), 0o755)?;
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(|e| format!("mounting {fstype} at {target}: {e}"))
}

/// A source prepared on the host side, attached after the pivot.
struct PreparedBind {
    tree: OwnedFd,
    target: PathBuf,
    is_dir: bool,
    read_only: bool,
}

/// Builds the container's filesystem view. Runs in init (PID 1 of the new PID namespace), in
/// its own mount namespace; on return the process's root is the container's rootfs.
pub fn build(spec: &InitSpec) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;

    // Host-side sources, cloned before the host disappears from view.
    let mut prepared = Vec::new();
    for bind in spec
        .bind_mounts
        .iter()
        .filter(|b| b.origin == BindMountOrigin::Host)
    {
        let src = Path::new(&bind.src_path);
        let meta =
            fs::metadata(src).map_err(|e| format!("bind mount source {}: {e}", bind.src_path))?;
        prepared.push(PreparedBind {
            tree: clone_tree(src)?,
            target: PathBuf::from(&bind.dst_path),
            is_dir: meta.is_dir(),
            read_only: bind.mode == BindMountMode::ReadOnly,
        });
    }
    for (file, target) in [
        (&spec.hosts_file, "/etc/hosts"),
        (&spec.resolv_conf_file, "/etc/resolv.conf"),
    ] {
        if let Some(file) = file.as_ref().filter(|f| f.exists()) {
            prepared.push(PreparedBind {
                tree: clone_tree(file)?,
                target: PathBuf::from(target),
                is_dir: false,
                read_only: false,
            });
        }
    }

    // Into the rootfs. `pivot_root(".", ".")` stacks the old root on the new one; detaching
    // "." then drops it, with every host mount under it.
    chdir(&spec.rootfs).map_err(|e| format!("entering {}: {e}", spec.rootfs.display()))?;
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;

    let nosuid_noexec_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nosuid_noexec_nodev, None)?;
    mount_fs(
        "tmpfs",
        "/dev",
        "tmpfs",
        MsFlags::MS_NOEXEC | MsFlags::MS_STRICTATIME,
        Some("mode=755"),
    )?;
    make_devices()?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    mount_fs(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        nosuid_noexec_nodev,
        Some("mode=1777"),
    )?;
    mount_fs("mqueue", "/dev/mqueue", "mqueue", nosuid_noexec_nodev, None)?;
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(|e| format!("linking {link}: {e}"))?;
    }
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        nosuid_noexec_nodev | MsFlags::MS_RDONLY,
        None,
    )?;
    if fs::symlink_metadata("/tmp").is_err() {
        mkdir_all(Path::new("/tmp"), 0o755)?;
        fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod /tmp: {e}"))?;
    }

    // Bind mounts whose source is inside the container are cloned now, inside the new root.
    for bind in spec
        .bind_mounts
        .iter()
        .filter(|b| b.origin == BindMountOrigin::Container)
    {
        let src = Path::new(&bind.src_path);
        let meta = fs::metadata(src).map_err(|e| {
            format!(
                "bind mount source {} (in the container): {e}",
                bind.src_path
            )
        })?;
        prepared.push(PreparedBind {
            tree: clone_tree(src)?,
            target: PathBuf::from(&bind.dst_path),
            is_dir: meta.is_dir(),
            read_only: bind.mode == BindMountMode::ReadOnly,
        });
    }
    for bind in &prepared {
        let target = Path::new("/").join(&bind.target);
        mount_point(&target, bind.is_dir)?;
        if bind.read_only {
            make_read_only(&bind.tree)?;
        }
        attach(&bind.tree, &target)?;
    }

    sethostname(&spec.hostname).map_err(|e| format!("setting the hostname: {e}"))?;
    Ok(())
}

/// The minimal device set, as runc makes it.
fn make_devices() -> Result<(), String> {
    let old = nix::sys::stat::umask(Mode::empty());
    let result = (|| {
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let path = format!("/dev/{name}");
            mknod(
                path.as_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(major, minor),
            )
            .map_err(|e| format!("mknod {path}: {e}"))?;
        }
        Ok(())
    })();
    nix::sys::stat::umask(old);
    result
}

/// Brings the loopback interface up in a network namespace of our own.
pub fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let sock = OwnedFd::from_raw_fd(sock);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!(
                "reading lo flags: {}",
                std::io::Error::last_os_error()
            ));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!(
                "bringing lo up: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

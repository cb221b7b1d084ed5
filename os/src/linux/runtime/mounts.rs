//! The container's mount namespace, built by its init before it serves anything.
//!
//! Every mount is made detached (`fsopen`/`fsmount`, or `open_tree` for binds), given its
//! attributes, and attached to a target held by a descriptor that was resolved inside the new
//! root (see `mount_api`). The order:
//!
//! 1. The helper, still host root, clones what comes from the host (`HostSources`): user bind
//!    mounts, /etc/hosts and /etc/resolv.conf, and for unprivileged containers the host's device
//!    nodes (a user namespace cannot `mknod` usable ones). Masked files get the /dev/null made
//!    here, in a fresh /dev no container process has touched, checked to be the null device.
//!    So no mount source is ever something the container's files could redirect
//!    (CVE-2025-31133 swapped /dev/null for a symlink).
//! 2. Init makes every mount private and creates the proc and sysfs instances while the host's
//!    are still in view (the kernel lets a user namespace mount them only then).
//! 3. It pivots into the rootfs and drops the old root, with every host mount under it.
//! 4. It attaches everything inside the new root. Mount points the runtime owns (/proc, /dev,
//!    masked paths) may not contain a symlink at all; user-chosen targets may, but they resolve
//!    inside the root (CVE-2021-30465).
//!
//! Unprivileged containers also get gdn's masked paths (a /dev/null or an empty read-only tmpfs
//! over files and directories of /proc and /sys that reveal or change the host), runc's
//! read-only paths (/proc/sys, /proc/sysrq-trigger, ...), and their cgroups read-only at
//! /sys/fs/cgroup. Privileged containers get none of these, and /proc read-write.

use super::protocol::Failure;
use crate::linux::cgroup::CgroupView;
use crate::linux::mount_api::{
    self, Resolve, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY,
};
use crate::linux::security::devices::{self, DeviceNode};
use crate::linux::security::Confinement;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use trellis_core::api::{BindMount, BindMountMode, BindMountOrigin};

/// What init needs to build the container's world; sent by the server on the helper's stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitSpec {
    pub container_dir: PathBuf,
    pub rootfs: PathBuf,
    /// The network namespace to join (it also names an unprivileged container's user
    /// namespace, its owner); `None` makes fresh ones with only loopback.
    pub netns: Option<PathBuf>,
    pub hosts_file: Option<PathBuf>,
    pub resolv_conf_file: Option<PathBuf>,
    pub hostname: String,
    pub bind_mounts: Vec<BindMount>,
    pub confinement: Confinement,
    /// What an unprivileged container sees at /sys/fs/cgroup.
    pub cgroup_view: CgroupView,
    /// `--no-new-privileges`, for unprivileged containers.
    pub no_new_privileges: bool,
    /// The seccomp filter init installs (unprivileged containers), compiled by the server.
    pub seccomp: Option<crate::linux::security::seccomp::Profile>,
    /// A pea's keeper: the pid of the container's init, whose UTS, IPC, PID and cgroup
    /// namespaces it joins (user and network ones come from `netns`) instead of making its own;
    /// only the mount namespace, built over `rootfs` (the pea's image), is its own.
    pub join: Option<i32>,
    /// The cgroup `tasks` files the helper writes itself into before it makes anything (see
    /// `Cgroups::self_placement_files`); empty when the server places it.
    pub cgroup_tasks: Vec<PathBuf>,
}

/// gdn's masked paths (unprivileged containers), plus runc's /proc/acpi, /proc/asound and
/// /sys/devices/virtual/powercap. Missing ones are skipped.
const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's read-only paths (unprivileged containers). Missing ones are skipped.
const READ_ONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A detached tree and where it goes.
struct PreparedBind {
    tree: OwnedFd,
    target: PathBuf,
    is_dir: bool,
    read_only: bool,
}

/// Mount sources from the host, cloned by the helper while it is still host root.
pub struct HostSources {
    binds: Vec<PreparedBind>,
    /// Unprivileged: the host's device nodes, bound over empty files in /dev.
    devices: Vec<(DeviceNode, OwnedFd)>,
    /// Privileged: whether the host has /dev/fuse to give the container.
    fuse: bool,
}

fn context(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

impl HostSources {
    pub fn open(spec: &InitSpec) -> Result<HostSources, Failure> {
        let mut binds = Vec::new();
        for bind in spec
            .bind_mounts
            .iter()
            .filter(|b| b.origin == BindMountOrigin::Host)
        {
            let src = Path::new(&bind.src_path);
            let meta = fs::metadata(src).map_err(|e| {
                Failure::invalid(format!(
                    "bind mount source {} does not exist on the host: {e}",
                    bind.src_path
                ))
            })?;
            binds.push(PreparedBind {
                tree: mount_api::clone_tree(src, true)
                    .map_err(context(format_args!("cloning mount {}", src.display())))?,
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
                binds.push(PreparedBind {
                    tree: mount_api::clone_tree(file, false)
                        .map_err(context(format_args!("cloning {}", file.display())))?,
                    target: PathBuf::from(target),
                    is_dir: false,
                    read_only: false,
                });
            }
        }
        let devices = if spec.confinement.is_privileged() {
            Vec::new()
        } else {
            let mut devices = Vec::new();
            for node in devices::nodes(false, false) {
                let path = PathBuf::from(format!("/dev/{}", node.name));
                check_device(&path, node)?;
                let tree = mount_api::clone_tree(&path, false)
                    .map_err(context(format_args!("cloning {}", path.display())))?;
                devices.push((node, tree));
            }
            devices
        };
        Ok(HostSources {
            binds,
            devices,
            fuse: spec.confinement.is_privileged() && devices::host_has_fuse(),
        })
    }
}

/// The host's node must be the device it is named for.
fn check_device(path: &Path, node: DeviceNode) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::symlink_metadata(path).map_err(context(format_args!("{}", path.display())))?;
    let rdev = meta.rdev();
    if !meta.file_type().is_char_device()
        || nix::sys::stat::major(rdev) != u64::from(node.major)
        || nix::sys::stat::minor(rdev) != u64::from(node.minor)
    {
        return Err(format!(
            "the host's {} is not character device {}:{}",
            path.display(),
            node.major,
            node.minor
        ));
    }
    Ok(())
}

/// The node opened as `fd` (O_PATH) must be the device it is named for.
fn check_device_fd(fd: &OwnedFd, node: DeviceNode) -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = fs::File::from(fd.try_clone().map_err(context("dup"))?)
        .metadata()
        .map_err(context(format_args!("stat /dev/{}", node.name)))?;
    let rdev = meta.rdev();
    if !meta.file_type().is_char_device()
        || nix::sys::stat::major(rdev) != u64::from(node.major)
        || nix::sys::stat::minor(rdev) != u64::from(node.minor)
    {
        return Err(format!(
            "/dev/{} is not the {} device",
            node.name, node.name
        ));
    }
    Ok(())
}

/// Builds the container's filesystem view. Runs in init (PID 1 of the new PID namespace), in
/// its own mount namespace; on return the process's root is the container's rootfs.
pub fn build(spec: &InitSpec, sources: HostSources) -> Result<(), Failure> {
    let unprivileged = !spec.confinement.is_privileged();
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private: {e}"))?;

    // While the host's /proc and /sys are still in view.
    let nosuid_nodev_noexec = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
    let proc = mount_api::new_filesystem("proc", &[], nosuid_nodev_noexec)
        .map_err(context("mounting proc"))?;
    let sys = mount_api::new_filesystem("sysfs", &[], nosuid_nodev_noexec | MOUNT_ATTR_RDONLY)
        .map_err(context("mounting sysfs"))?;

    // The working directory is the rootfs (the helper entered it as host root, so container
    // root needs no way through the host's directories above it). It came from the host's
    // mount namespace, so in a user namespace's copy it is locked in place, and pivot_root
    // refuses a locked new root: bind it onto itself and step onto the new mount.
    let rootfs =
        mount_api::clone_tree(Path::new("."), true).map_err(context("cloning the rootfs mount"))?;
    mount_api::attach_at_path(rootfs.as_fd(), Path::new("."))
        .map_err(context("binding the rootfs onto itself"))?;
    nix::unistd::fchdir(&rootfs).map_err(|e| format!("entering the rootfs: {e}"))?;
    // `pivot_root(".", ".")` stacks the old root on the new one; detaching "." then drops it,
    // with every host mount under it.
    pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    let root = open_root()?;
    let view = View { root: root.as_fd() };

    view.attach_system(proc.as_fd(), "/proc", true)?;
    view.attach_system(sys.as_fd(), "/sys", true)?;
    let dev = mount_api::new_filesystem(
        "tmpfs",
        &[("mode", Some("755"))],
        MOUNT_ATTR_NOEXEC | libc::MOUNT_ATTR_STRICTATIME,
    )
    .map_err(context("mounting /dev"))?;
    view.attach_system(dev.as_fd(), "/dev", true)?;
    if unprivileged {
        for (node, tree) in &sources.devices {
            let target = format!("/dev/{}", node.name);
            view.create_file(&target)?;
            view.attach_system(tree.as_fd(), &target, false)?;
        }
    } else {
        make_device_nodes(&devices::nodes(true, sources.fuse))?;
    }
    let devpts = mount_api::new_filesystem(
        "devpts",
        &[
            ("newinstance", None),
            ("ptmxmode", Some("0666")),
            ("mode", Some("0620")),
            ("gid", Some("5")),
        ],
        MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
    )
    .map_err(context("mounting /dev/pts"))?;
    view.attach_system(devpts.as_fd(), "/dev/pts", true)?;
    let shm = mount_api::new_filesystem("tmpfs", &[("mode", Some("1777"))], nosuid_nodev_noexec)
        .map_err(context("mounting /dev/shm"))?;
    view.attach_system(shm.as_fd(), "/dev/shm", true)?;
    let mqueue = mount_api::new_filesystem("mqueue", &[], nosuid_nodev_noexec)
        .map_err(context("mounting /dev/mqueue"))?;
    view.attach_system(mqueue.as_fd(), "/dev/mqueue", true)?;
    for (target, link) in [
        ("pts/ptmx", "/dev/ptmx"),
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ] {
        std::os::unix::fs::symlink(target, link).map_err(|e| format!("linking {link}: {e}"))?;
    }

    if unprivileged {
        view.mount_cgroups(&spec.cgroup_view)?;
        let null = view.system_target("/dev/null", false)?;
        check_device_fd(&null, devices::NULL)?;
        view.mask_paths(null.as_fd())?;
        view.make_read_only(READ_ONLY_PATHS)?;
    }
    if fs::symlink_metadata("/tmp").is_err() {
        fs::DirBuilder::new()
            .mode(0o755)
            .create("/tmp")
            .map_err(|e| format!("creating /tmp: {e}"))?;
        fs::set_permissions("/tmp", fs::Permissions::from_mode(0o1777))
            .map_err(|e| format!("chmod /tmp: {e}"))?;
    }

    // Bind mounts whose source is inside the container are cloned now, inside the new root.
    let mut binds = Vec::new();
    for bind in spec
        .bind_mounts
        .iter()
        .filter(|b| b.origin == BindMountOrigin::Container)
    {
        let src = mount_api::open_in(
            view.root,
            Path::new(&bind.src_path),
            libc::O_PATH,
            Resolve::InRoot,
        )
        .map_err(|e| {
            Failure::invalid(format!(
                "bind mount source {} (in the container): {e}",
                bind.src_path
            ))
        })?;
        let is_dir = is_dir(&src, &bind.src_path)?;
        binds.push(PreparedBind {
            tree: mount_api::clone_tree_of(src.as_fd(), true)
                .map_err(context(format_args!("cloning mount {}", bind.src_path)))?,
            target: PathBuf::from(&bind.dst_path),
            is_dir,
            read_only: bind.mode == BindMountMode::ReadOnly,
        });
    }
    for bind in binds.iter().chain(sources.binds.iter()) {
        view.attach_bind(bind)?;
    }

    if spec.join.is_none() {
        sethostname(&spec.hostname).map_err(|e| format!("setting the hostname: {e}"))?;
    }
    Ok(())
}

/// Whether the `O_PATH` descriptor `fd` (of `what`) is a directory.
fn is_dir(fd: &OwnedFd, what: &str) -> Result<bool, String> {
    fs::File::from(fd.try_clone().map_err(context("dup"))?)
        .metadata()
        .map(|m| m.is_dir())
        .map_err(context(format_args!("stat {what}")))
}

fn open_root() -> Result<OwnedFd, String> {
    nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening /: {e}"))
}

/// The new root, and how things are attached inside it.
struct View<'a> {
    root: BorrowedFd<'a>,
}

impl View<'_> {
    /// Opens a mount point the runtime owns: no symlink anywhere on the way. Directories are
    /// created when missing (`dir`).
    fn system_target(&self, path: &str, dir: bool) -> Result<OwnedFd, String> {
        let kind = if dir { Kind::Dir } else { Kind::Existing };
        ensure_in_root(self.root, Path::new(path), kind, Resolve::NoSymlinks, 0).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EEXIST) {
                format!("{path} in the image is (or passes through) a symlink; it must be a real directory")
            } else {
                format!("opening {path}: {e}")
            }
        })
    }

    fn attach_system(&self, tree: BorrowedFd<'_>, path: &str, dir: bool) -> Result<(), String> {
        let target = self.system_target(path, dir)?;
        mount_api::attach_at(tree, target.as_fd())
            .map_err(context(format_args!("mounting at {path}")))
    }

    fn create_file(&self, path: &str) -> Result<(), String> {
        ensure_in_root(
            self.root,
            Path::new(path),
            Kind::File,
            Resolve::NoSymlinks,
            0,
        )
        .map(drop)
        .map_err(|e| format!("creating {path}: {e}"))
    }

    fn mount_cgroups(&self, view: &CgroupView) -> Result<(), String> {
        let read_only =
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
        match view {
            CgroupView::None => Ok(()),
            CgroupView::V2 => {
                let cgroup = mount_api::new_filesystem("cgroup2", &[], read_only)
                    .map_err(context("mounting cgroup2"))?;
                self.attach_system(cgroup.as_fd(), "/sys/fs/cgroup", false)
            }
            CgroupView::V1(hierarchies) => {
                let tmpfs = mount_api::new_filesystem(
                    "tmpfs",
                    &[("mode", Some("755"))],
                    MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                )
                .map_err(context("mounting /sys/fs/cgroup"))?;
                self.attach_system(tmpfs.as_fd(), "/sys/fs/cgroup", false)?;
                for h in hierarchies {
                    if h.dir.contains('/') || h.dir.starts_with('.') {
                        return Err(format!("bad cgroup hierarchy name {:?}", h.dir));
                    }
                    let options: Vec<(&str, Option<&str>)> = h
                        .options
                        .iter()
                        .map(|o| match o.split_once('=') {
                            Some((k, v)) => (k, Some(v)),
                            None => (o.as_str(), None),
                        })
                        .collect();
                    let cgroup = mount_api::new_filesystem("cgroup", &options, read_only)
                        .map_err(context(format_args!("mounting cgroup {}", h.dir)))?;
                    let path = format!("/sys/fs/cgroup/{}", h.dir);
                    self.attach_system(cgroup.as_fd(), &path, true)?;
                    // `cpu` -> `cpu,cpuacct`, as on the host.
                    if h.options.len() > 1 {
                        for name in h.options.iter().filter(|o| !o.contains('=')) {
                            let link = format!("/sys/fs/cgroup/{name}");
                            if fs::symlink_metadata(&link).is_err() {
                                std::os::unix::fs::symlink(&h.dir, &link)
                                    .map_err(|e| format!("linking {link}: {e}"))?;
                            }
                        }
                    }
                }
                mount_api::set_attributes(tmpfs.as_fd(), MOUNT_ATTR_RDONLY, None, false)
                    .map_err(context("making /sys/fs/cgroup read-only"))
            }
        }
    }

    /// A path of the kernel's (in /proc or /sys) the runtime masks or protects; `None` when
    /// this kernel does not have it.
    fn kernel_path(&self, path: &str) -> Result<Option<OwnedFd>, String> {
        match mount_api::open_in(
            self.root,
            Path::new(path),
            libc::O_PATH,
            Resolve::NoSymlinks,
        ) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(format!("opening {path}: {e}")),
        }
    }

    /// Files get /dev/null over them, directories an empty read-only tmpfs.
    fn mask_paths(&self, null: BorrowedFd<'_>) -> Result<(), String> {
        for path in MASKED_PATHS {
            let Some(target) = self.kernel_path(path)? else {
                continue;
            };
            let tree = if is_dir(&target, path)? {
                mount_api::new_filesystem(
                    "tmpfs",
                    &[("size", Some("0")), ("nr_inodes", Some("1"))],
                    MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
                )
            } else {
                mount_api::clone_tree_of(null, false)
            }
            .map_err(context(format_args!("masking {path}")))?;
            mount_api::attach_at(tree.as_fd(), target.as_fd())
                .map_err(context(format_args!("masking {path}")))?;
        }
        Ok(())
    }

    fn make_read_only(&self, paths: &[&str]) -> Result<(), String> {
        for path in paths {
            let Some(target) = self.kernel_path(path)? else {
                continue;
            };
            let tree = mount_api::clone_tree_of(target.as_fd(), true)
                .map_err(context(format_args!("binding {path}")))?;
            mount_api::set_attributes(tree.as_fd(), MOUNT_ATTR_RDONLY, None, true)
                .map_err(context(format_args!("making {path} read-only")))?;
            mount_api::attach_at(tree.as_fd(), target.as_fd())
                .map_err(context(format_args!("making {path} read-only")))?;
        }
        Ok(())
    }

    /// A user bind mount: its target is created if missing and resolved inside the root.
    fn attach_bind(&self, bind: &PreparedBind) -> Result<(), String> {
        let target = Path::new("/").join(&bind.target);
        let kind = if bind.is_dir { Kind::Dir } else { Kind::File };
        let target_fd = ensure_in_root(self.root, &target, kind, Resolve::InRoot, 0).map_err(
            context(format_args!("making mount point {}", target.display())),
        )?;
        if bind.read_only {
            mount_api::set_attributes(bind.tree.as_fd(), MOUNT_ATTR_RDONLY, None, true)
                .map_err(context("making a bind mount read-only"))?;
        }
        mount_api::attach_at(bind.tree.as_fd(), target_fd.as_fd())
            .map_err(context(format_args!("mounting at {}", target.display())))
    }
}

/// What `ensure_in_root` makes when the path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    /// Nothing: it must exist.
    Existing,
}

/// Opens `path` inside `root` (`O_PATH`), creating it and its missing parents first (mode
/// 0755 directories, an empty 0644 file). With `Resolve::InRoot` a dangling symlink on the way
/// is followed, inside the root, to where it points, which is then made; with
/// `Resolve::NoSymlinks` any symlink fails (ELOOP, or EEXIST for a dangling one).
fn ensure_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    kind: Kind,
    resolve: Resolve,
    depth: u32,
) -> std::io::Result<OwnedFd> {
    if depth > 40 {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    match mount_api::open_in(root, path, libc::O_PATH, resolve) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && kind != Kind::Existing => {}
        other => return other,
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    };
    let parent_fd = ensure_in_root(root, parent, Kind::Dir, resolve, depth + 1)?;
    let name_c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: *at calls on a descriptor we hold with a valid C string.
    let made = unsafe {
        match kind {
            Kind::Dir => libc::mkdirat(parent_fd.as_raw_fd(), name_c.as_ptr(), 0o755),
            _ => {
                let fd = libc::openat(
                    parent_fd.as_raw_fd(),
                    name_c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd.min(0)
            }
        }
    };
    if made < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) || resolve == Resolve::NoSymlinks {
            return Err(e);
        }
        // A dangling symlink: make what it points at, inside the root.
        let link = nix::fcntl::readlinkat(parent_fd.as_fd(), name).map_err(std::io::Error::from)?;
        let link = Path::new(&link);
        let target = if link.is_absolute() {
            link.to_path_buf()
        } else {
            parent.join(link)
        };
        ensure_in_root(root, &target, kind, resolve, depth + 1)?;
    }
    mount_api::open_in(root, path, libc::O_PATH, resolve)
}

/// A privileged container's device nodes, made with `mknod` (no user namespace).
fn make_device_nodes(nodes: &[DeviceNode]) -> Result<(), String> {
    let old = nix::sys::stat::umask(Mode::empty());
    let result = (|| {
        for node in nodes {
            let path = format!("/dev/{}", node.name);
            mknod(
                path.as_str(),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(u64::from(node.major), u64::from(node.minor)),
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

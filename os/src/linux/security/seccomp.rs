//! The syscall filter of every process of an unprivileged container, init included: gdn's
//! default profile (guardian's `buildSeccomp`), an allowlist for x86_64, x86 and x32.
//!
//! - Everything not allowed fails with EPERM ("Operation not permitted"), as with runc.
//! - `clone` only without namespace flags (no nested user namespaces, S24-S27), `personality`
//!   only for the usual personas, `clone3` fails with ENOSYS so libc falls back to `clone`.
//! - Syscalls newer than the newest allowed one (`openat2`) fail with ENOSYS rather than EPERM,
//!   as runc's stub makes them, so libc's fallbacks (`faccessat2` -> `faccessat`) still work.
//! - One deliberate difference: `syslog` is not allowed, so the host's kernel log stays closed
//!   even where `kernel.dmesg_restrict` is 0.
//!
//! Compiled with libseccomp (the library runc, and so gdn, compiles this very profile with),
//! as a binary tree: the kernel emulates the filter for every syscall number when it is
//! installed, and a linear 1,400-instruction filter (what seccompiler generates) made that
//! cost 0.7 ms per container. The server compiles once at start; each container's init
//! installs the program with the `seccomp` syscall itself, without setting `no_new_privs`
//! (gdn does not set it). A second, hand-written filter of eight instructions gives the
//! ENOSYS answers for syscalls newer than the profile, which libseccomp cannot express.

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use std::io::{self, Read, Seek};
use std::os::fd::FromRawFd;

/// Every syscall gdn allows whatever its arguments, by name (names of one architecture only,
/// such as `chown32`, apply where they exist). `syslog` is left out (see the module docs).
#[rustfmt::skip]
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "alarm", "bind", "brk", "capget", "capset", "chdir", "chmod",
    "chown", "chown32", "clock_getres", "clock_gettime", "clock_nanosleep", "close", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create", "epoll_create1",
    "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_wait", "epoll_wait_old", "eventfd",
    "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat", "fadvise64",
    "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown",
    "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock",
    "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "memfd_create", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2",
    "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedsend", "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv",
    "msgsnd", "msync", "munlock", "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect",
    "open", "openat", "openat2", "pause", "pipe", "pipe2", "poll", "ppoll", "prctl", "pread64",
    "preadv", "preadv2", "prlimit64", "pselect6", "pwrite64", "pwritev", "pwritev2", "read",
    "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom", "recvmmsg", "recvmsg",
    "remap_file_pages", "removexattr", "rename", "renameat", "renameat2", "restart_syscall",
    "rmdir", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid",
    "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32",
    "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32",
    "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid",
    "setsockopt", "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat",
    "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigreturn",
    "socket", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs", "statfs64",
    "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs", "sysinfo", "tee",
    "tgkill", "time", "timer_create", "timer_delete", "timerfd_create", "timerfd_gettime",
    "timerfd_settime", "timer_getoverrun", "timer_gettime", "timer_settime", "times", "tkill",
    "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime",
    "utimensat", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    "arch_prctl", "modify_ldt", "chroot", "ptrace",
];

/// The namespace flags `clone` may not carry (CLONE_NEWNS, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET), as in gdn's profile.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7C02_0000;

/// `personality` values gdn allows: PER_LINUX, PER_LINUX32 and the query.
const PERSONALITIES: [u64; 3] = [0, 8, 0xffff_ffff];

/// The newest x86_64 syscall gdn's profile names (`openat2`); anything newer answers ENOSYS.
const NEWEST_KNOWN_X86_64: u32 = 437;
const CLONE3_X86_64: u32 = 435;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp profile: {0}")]
    Build(#[from] libseccomp::error::SeccompError),
    #[error("exporting the seccomp profile: {0}")]
    Export(#[source] io::Error),
    #[error("installing the seccomp filter: {0}")]
    Install(#[source] io::Error),
}

/// One classic BPF instruction, as the kernel takes it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

/// The compiled filters, in the order they are installed, each instruction packed into a
/// `u64` (code, jt, jf, k) so the program travels in the init's spec.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Profile {
    filters: Vec<Vec<u64>>,
}

fn pack(program: &[SockFilter]) -> Vec<u64> {
    program
        .iter()
        .map(|i| {
            u64::from(i.code) | u64::from(i.jt) << 16 | u64::from(i.jf) << 24 | u64::from(i.k) << 32
        })
        .collect()
}

fn unpack(packed: &[u64]) -> Vec<SockFilter> {
    packed
        .iter()
        .map(|p| SockFilter {
            code: *p as u16,
            jt: (*p >> 16) as u8,
            jf: (*p >> 24) as u8,
            k: (*p >> 32) as u32,
        })
        .collect()
}

impl Profile {
    /// gdn's default profile for unprivileged containers.
    pub fn unprivileged() -> Result<Profile, SeccompError> {
        let mut ctx = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM))?;
        for arch in [ScmpArch::X86, ScmpArch::X32] {
            ctx.add_arch(arch)?;
        }
        // A binary tree over syscall numbers rather than a list.
        ctx.set_ctl_optimize(2)?;
        for name in ALLOWED {
            // Names no architecture of ours knows are skipped, as runc skips them.
            if let Ok(syscall) = ScmpSyscall::from_name(name) {
                ctx.add_rule(ScmpAction::Allow, syscall)?;
            }
        }
        let personality = ScmpSyscall::from_name("personality")?;
        for persona in PERSONALITIES {
            ctx.add_rule_conditional(
                ScmpAction::Allow,
                personality,
                &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, persona)],
            )?;
        }
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from_name("clone")?,
            &[ScmpArgCompare::new(
                0,
                ScmpCompareOp::MaskedEqual(CLONE_NAMESPACE_FLAGS),
                0,
            )],
        )?;
        ctx.add_rule(
            ScmpAction::Errno(libc::ENOSYS),
            ScmpSyscall::from_name("clone3")?,
        )?;
        Ok(Profile {
            filters: vec![pack(&export(&ctx)?), pack(&enosys_filter())],
        })
    }

    /// Installs the filters on the calling thread (and so on everything it later forks). The
    /// caller must have CAP_SYS_ADMIN in its user namespace or `no_new_privs` set.
    pub fn install(&self) -> Result<(), SeccompError> {
        for filter in &self.filters {
            install(&unpack(filter)).map_err(SeccompError::Install)?;
        }
        Ok(())
    }
}

/// The filter's BPF program, through a memfd (libseccomp 2.5 exports only to a descriptor).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<SockFilter>, SeccompError> {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"trellis-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(SeccompError::Export(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    ctx.export_bpf(&file)?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(SeccompError::Export)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| SockFilter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// ENOSYS for `clone3` and for every x86_64 syscall newer than the profile (filters installed
/// later take precedence among equal actions, so this answer wins over the allowlist's EPERM).
fn enosys_filter() -> Vec<SockFilter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    /// x32 syscalls are x86_64 numbers with this bit set; they are left to the allowlist.
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code, k| SockFilter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code, k, jt, jf| SockFilter { code, jt, jf, k };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        // offsetof(struct seccomp_data, arch) = 4, nr = 0
        stmt(LD_W_ABS, 4),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW), // other arches: the allowlist decides
        stmt(LD_W_ABS, 0),
        jump(JEQ_K, CLONE3_X86_64, 3, 0),
        jump(JGT_K, X32_SYSCALL_BIT - 1, 1, 0),
        jump(JGT_K, NEWEST_KNOWN_X86_64, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, enosys),
    ]
}

fn install(filter: &[SockFilter]) -> io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const SockFilter,
    }
    let program = SockFprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_ptr(),
    };
    // SAFETY: the kernel copies the program; it only reads `program` during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &program as *const SockFprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_compiles_to_a_short_tree() {
        let profile = Profile::unprivileged().unwrap();
        assert_eq!(profile.filters.len(), 2);
        // Three architectures' allowlists as binary trees: far below the kernel's 4,096.
        assert!(
            profile.filters[0].len() < 2048,
            "{}",
            profile.filters[0].len()
        );
    }

    #[test]
    fn packing_keeps_every_instruction() {
        let program = enosys_filter();
        assert_eq!(unpack(&pack(&program)), program);
        let profile = Profile::unprivileged().unwrap();
        let json = serde_json::to_string(&profile).unwrap();
        assert_eq!(serde_json::from_str::<Profile>(&json).unwrap(), profile);
    }

    #[test]
    fn what_must_stay_closed_is_not_allowed() {
        for closed in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "keyctl",
            "add_key",
            "bpf",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "finit_module",
            "open_tree",
            "move_mount",
            "fsopen",
            "syslog",
            "clone3",
            "userfaultfd",
            "clone",
            "personality",
        ] {
            assert!(!ALLOWED.contains(&closed), "{closed} is allowed outright");
        }
    }

    #[test]
    fn the_enosys_numbers_are_x86_64s() {
        assert_eq!(NEWEST_KNOWN_X86_64 as libc::c_long, libc::SYS_openat2);
        assert_eq!(CLONE3_X86_64 as libc::c_long, libc::SYS_clone3);
    }
}

//! The capabilities each kind of container process gets, exactly gdn's (GATS checks the masks
//! in /proc/<pid>/status), and how they are set.
//!
//! Three plain syscalls (`PR_CAPBSET_DROP`, `PR_CAP_AMBIENT_CLEAR_ALL`, `capset`) on bit masks,
//! written here rather than through a crate: the masks are what gdn and GATS speak, and the
//! calls run in a forked child where nothing should allocate more than it must.

use std::io;

/// Capability numbers, as the kernel numbers them.
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const KILL: u32 = 5;
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const SETPCAP: u32 = 8;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_RAW: u32 = 13;
    pub const SYS_CHROOT: u32 = 18;
    pub const SYS_ADMIN: u32 = 21;
    pub const MKNOD: u32 = 27;
    pub const AUDIT_WRITE: u32 = 29;
    pub const SETFCAP: u32 = 31;
    /// The last capability gdn grants privileged root (gdn lists CHOWN..AUDIT_READ by name, so
    /// newer ones such as PERFMON and BPF are never granted).
    pub const AUDIT_READ: u32 = 37;
}

const fn mask(caps: &[u32]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < caps.len() {
        m |= 1 << caps[i];
        i += 1;
    }
    m
}

/// Every process of an unprivileged container, init included: `00000000a80425fb`.
pub const UNPRIVILEGED: u64 = mask(&[
    cap::CHOWN,
    cap::DAC_OVERRIDE,
    cap::FOWNER,
    cap::FSETID,
    cap::KILL,
    cap::SETGID,
    cap::SETUID,
    cap::SETPCAP,
    cap::NET_BIND_SERVICE,
    cap::NET_RAW,
    cap::SYS_CHROOT,
    cap::MKNOD,
    cap::AUDIT_WRITE,
    cap::SETFCAP,
]);

/// A non-root process of a privileged container (bounding and inheritable):
/// `00000000a82425fb`, the unprivileged set plus SYS_ADMIN.
pub const PRIVILEGED_NON_ROOT: u64 = UNPRIVILEGED | 1 << cap::SYS_ADMIN;

/// Root in a privileged container: caps 0 to 37 (`0000003fffffffff`), less any the host's own
/// bounding set lacks.
pub const PRIVILEGED_ROOT: u64 = (1 << (cap::AUDIT_READ + 1)) - 1;

/// The capability sets a process is given before it changes user and execs. Permitted and
/// effective equal `bounding` until the user change; a change away from root clears them (the
/// kernel's rule), which is what leaves a non-root process with no effective capabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapSets {
    pub bounding: u64,
    pub inheritable: u64,
}

impl CapSets {
    const fn same(m: u64) -> CapSets {
        CapSets {
            bounding: m,
            inheritable: m,
        }
    }
}

/// What a container process gets, by the container's kind and whether it runs as root.
pub fn for_process(privileged: bool, root: bool) -> CapSets {
    match (privileged, root) {
        (false, _) => CapSets::same(UNPRIVILEGED),
        (true, false) => CapSets::same(PRIVILEGED_NON_ROOT),
        (true, true) => CapSets::same(PRIVILEGED_ROOT),
    }
}

/// What an unprivileged container's init keeps once its mounts are made.
pub const fn for_unprivileged_init() -> CapSets {
    CapSets::same(UNPRIVILEGED)
}

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<[Data; 2]> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget fills two Data structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn joined(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | u64::from(hi) << 32
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_cap() -> io::Result<u32> {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad cap_last_cap"))
}

/// Narrows this process's capabilities to `sets` (never widens them: what the process lacks,
/// as the host's own bounding set may, stays absent). Needs CAP_SETPCAP until it returns.
pub fn apply(sets: CapSets, last_cap: u32) -> io::Result<()> {
    let mut bounding = 0u64;
    for c in 0..=last_cap.min(63) {
        if sets.bounding & (1 << c) != 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_READ, c as libc::c_ulong, 0, 0, 0) } == 1 {
                bounding |= 1 << c;
            }
        } else {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c as libc::c_ulong, 0, 0, 0) } < 0 {
                let e = io::Error::last_os_error();
                // A capability the kernel does not have is already out of the set.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let current = capget()?;
    let permitted = joined(current[0].permitted, current[1].permitted) & bounding;
    let inheritable = sets.inheritable & bounding;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [
        Data {
            effective: permitted as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (permitted >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset reads two Data structs for version 3.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masks_are_gdns() {
        assert_eq!(format!("{UNPRIVILEGED:016x}"), "00000000a80425fb");
        assert_eq!(format!("{PRIVILEGED_NON_ROOT:016x}"), "00000000a82425fb");
        assert_eq!(format!("{PRIVILEGED_ROOT:016x}"), "0000003fffffffff");
    }

    #[test]
    fn each_kind_of_process_gets_its_set() {
        assert_eq!(for_process(false, true).bounding, UNPRIVILEGED);
        assert_eq!(for_process(false, false).inheritable, UNPRIVILEGED);
        assert_eq!(for_process(true, false).bounding, PRIVILEGED_NON_ROOT);
        assert_eq!(for_process(true, true).bounding, PRIVILEGED_ROOT);
    }
}

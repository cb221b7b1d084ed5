//! Loop devices through the kernel's ioctls (no losetup process per container).

use crate::host::{HostError, HostResult};
use nix::errno::Errno;
use nix::libc;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
/// Detach once the last user (the mount) is gone. Not LO_FLAGS_DIRECT_IO: direct reads
/// must first write back the image's pages that mkfs left dirty, which made the mount
/// take ~30 ms instead of ~0.4 ms; buffered, the container's writes are cached twice (in
/// its filesystem and in the image file), both reclaimable.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` from <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// An attached loop device, open; dropping it closes it.
pub(super) struct Device {
    pub path: PathBuf,
    _file: File,
}

/// Attaches `image` to a free loop device with autoclear set.
pub(super) fn attach(image: &Path) -> HostResult<Device> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(image)
        .map_err(|e| HostError::io(format!("open {}", image.display()), e))?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(|e| HostError::io("open /dev/loop-control", e))?;
    let mut config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            device: 0,
            inode: 0,
            rdevice: 0,
            offset: 0,
            sizelimit: 0,
            number: 0,
            encrypt_type: 0,
            encrypt_key_size: 0,
            flags: LO_FLAGS_AUTOCLEAR,
            file_name: [0; 64],
            crypt_name: [0; 64],
            encrypt_key: [0; 32],
            init: [0; 2],
        },
        reserved: [0; 8],
    };
    let name = image.as_os_str().as_bytes();
    let len = name.len().min(63);
    config.info.file_name[..len].copy_from_slice(&name[..len]);
    // Another process may take the free device between asking and configuring.
    for _ in 0..32 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(HostError::io(
                "find a free loop device",
                std::io::Error::last_os_error(),
            ));
        }
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| HostError::io(format!("open {}", path.display()), e))?;
        // SAFETY: LOOP_CONFIGURE reads a `struct loop_config`, which `config` is, and the
        // backing fd stays open for the call.
        let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE, &config) };
        if rc == 0 {
            return Ok(Device {
                path,
                _file: device,
            });
        }
        match Errno::last() {
            Errno::EBUSY => continue,
            e => {
                return Err(HostError::io(
                    format!("attach {} to {}", image.display(), path.display()),
                    e.into(),
                ))
            }
        }
    }
    Err(HostError::sys(
        format!("no free loop device for {}", image.display()),
        Errno::EBUSY,
    ))
}

/// Detaches the device (lazily, if it is still in use).
pub(super) fn detach(path: &Path) -> HostResult<()> {
    let device = match OpenOptions::new().read(true).open(path) {
        Ok(device) => device,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io(format!("open {}", path.display()), e)),
    };
    // SAFETY: LOOP_CLR_FD takes no argument.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CLR_FD) };
    if rc == 0 {
        return Ok(());
    }
    match Errno::last() {
        // Not attached (any more).
        Errno::ENXIO => Ok(()),
        e => Err(HostError::io(
            format!("detach {}", path.display()),
            e.into(),
        )),
    }
}

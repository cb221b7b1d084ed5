//! cgroup v2's device control: an eBPF program of type `CGROUP_DEVICE` attached to the
//! container's cgroup, allowing exactly the device allowlist (v2 has no devices files).
//!
//! The program is a straight list of checks, one per rule, over the kernel's
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` (type in the low 16
//! bits of `access_type`, access in the high 16): return 1 (allow) on the first rule that
//! matches, 0 (deny) after the last. A rule checks only what it restricts (a wildcard number,
//! kind `a` or full access need no check). Hand-assembled because it is a dozen instructions and no crate for it is both
//! maintained and free of a C toolchain.

use crate::linux::security::devices::{Access, AllowRule, DeviceKind};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// One eBPF instruction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    /// dst register in the low nibble, src in the high.
    regs: u8,
    off: i16,
    imm: i32,
}

const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes (classes | ops | sources), from linux/bpf.h.
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x04 | 0x70; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_X: u8 = 0x07 | 0xb0 | 0x08; // BPF_ALU64 | BPF_MOV | BPF_X
const JMP_JNE_K: u8 = 0x05 | 0x50; // BPF_JMP | BPF_JNE | BPF_K
const JMP_JSET_K: u8 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const ALU64_MOV_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

/// The program for `rules`: r2 = device type, r3 = access, r4 = major, r5 = minor, then one
/// block per rule.
pub fn program(rules: &[AllowRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each check jumps past the rest of its block when it fails.
        let mut checks = Vec::new();
        match rule.kind {
            DeviceKind::All => {}
            DeviceKind::Char => checks.push((JMP_JNE_K, 2, BPF_DEVCG_DEV_CHAR)),
            DeviceKind::Block => checks.push((JMP_JNE_K, 2, BPF_DEVCG_DEV_BLOCK)),
        }
        if let Some(major) = rule.major {
            checks.push((JMP_JNE_K, 4, major as i32));
        }
        if let Some(minor) = rule.minor {
            checks.push((JMP_JNE_K, 5, minor as i32));
        }
        if rule.access != Access::ALL {
            // Any access bit the rule does not grant fails it.
            let denied = i32::from(!rule.access.bits() & Access::ALL.bits());
            checks.push((JMP_JSET_K, 3, denied));
        }
        let block_len = checks.len() + 2; // checks, mov r0 1, exit
        for (done, (code, register, imm)) in checks.into_iter().enumerate() {
            p.push(insn(code, register, 0, (block_len - done - 1) as i16, imm));
        }
        p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program for `rules` into the kernel.
pub fn load(rules: &[AllowRule]) -> io::Result<OwnedFd> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    name[..14].copy_from_slice(b"trellis_device");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        ..Default::default()
    };
    // SAFETY: the attr points at buffers that outlive the call; the size matches the struct.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log);
        let text = text.trim_end_matches('\0').trim();
        return Err(if text.is_empty() {
            e
        } else {
            io::Error::new(e.kind(), format!("{e}: {text}"))
        });
    }
    // SAFETY: a fresh descriptor from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the device program to the cgroup directory `cgroup` (replacing one attached
/// before: a create retried after a crash attaches again).
pub fn attach(program: BorrowedFd<'_>, cgroup: BorrowedFd<'_>) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: the attr is plain data of the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
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
    fn each_rule_is_a_block_that_skips_itself_on_a_mismatch() {
        let p = program(&[
            AllowRule::char(1, Some(3)),
            AllowRule::char(136, None),
            AllowRule::parse("a *:* rm").expect("parses"),
        ]);
        // 6 loads, block of 5, block of 4, block of 3, the final deny (2).
        assert_eq!(p.len(), 6 + 5 + 4 + 3 + 2);
        // First block: type check skips the remaining 4 instructions of the block.
        assert_eq!(p[6], insn(JMP_JNE_K, 2, 0, 4, 2));
        assert_eq!(p[7], insn(JMP_JNE_K, 4, 0, 3, 1));
        assert_eq!(p[8], insn(JMP_JNE_K, 5, 0, 2, 3));
        assert_eq!(p[9], insn(ALU64_MOV_K, 0, 0, 0, 1));
        // Second block: no minor check.
        assert_eq!(p[11], insn(JMP_JNE_K, 2, 0, 3, 2));
        assert_eq!(p[12], insn(JMP_JNE_K, 4, 0, 2, 136));
        // Third block: any device, but write (4) fails it.
        assert_eq!(p[15], insn(JMP_JSET_K, 3, 0, 2, 4));
        assert_eq!(p[16], insn(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(p[18], insn(ALU64_MOV_K, 0, 0, 0, 0));
    }
}

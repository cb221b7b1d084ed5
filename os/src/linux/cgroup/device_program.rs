//! cgroup v2's device control: an eBPF program of type `CGROUP_DEVICE` attached to the
//! container's cgroup, allowing exactly the device allowlist (v2 has no devices files).
//!
//! The program is a straight list of checks, one per rule, over the kernel's
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }` (type in the low 16
//! bits of `access_type`, access in the high 16): return 1 (allow) on the first rule that
//! matches, 0 (deny) after the last. Every rule allows read, write and mknod, so access is not
//! checked. Hand-assembled because it is a dozen instructions and no crate for it is both
//! maintained and free of a C toolchain.

use crate::linux::security::devices::AllowRule;
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
const JMP_JNE_K: u8 = 0x05 | 0x50; // BPF_JMP | BPF_JNE | BPF_K
const ALU64_MOV_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_EXIT: u8 = 0x05 | 0x90; // BPF_JMP | BPF_EXIT

/// The program for `rules`: r2 = device type, r4 = major, r5 = minor, then one block per rule.
pub fn program(rules: &[AllowRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // Each block: jumps past itself when a check fails.
        let checks = 2 + usize::from(rule.minor.is_some());
        let block_len = checks + 2; // checks, mov r0 1, exit
        let skip = |done: usize| (block_len - done - 1) as i16;
        p.push(insn(JMP_JNE_K, 2, 0, skip(0), BPF_DEVCG_DEV_CHAR));
        p.push(insn(JMP_JNE_K, 4, 0, skip(1), rule.major as i32));
        if let Some(minor) = rule.minor {
            p.push(insn(JMP_JNE_K, 5, 0, skip(2), minor as i32));
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
            AllowRule {
                major: 1,
                minor: Some(3),
            },
            AllowRule {
                major: 136,
                minor: None,
            },
        ]);
        // 4 loads, block of 5, block of 4, the final deny (2).
        assert_eq!(p.len(), 4 + 5 + 4 + 2);
        // First block: type check skips the remaining 4 instructions of the block.
        assert_eq!(p[4], insn(JMP_JNE_K, 2, 0, 4, 2));
        assert_eq!(p[5], insn(JMP_JNE_K, 4, 0, 3, 1));
        assert_eq!(p[6], insn(JMP_JNE_K, 5, 0, 2, 3));
        assert_eq!(p[7], insn(ALU64_MOV_K, 0, 0, 0, 1));
        // Second block: no minor check.
        assert_eq!(p[9], insn(JMP_JNE_K, 2, 0, 3, 2));
        assert_eq!(p[10], insn(JMP_JNE_K, 4, 0, 2, 136));
        assert_eq!(p[13], insn(ALU64_MOV_K, 0, 0, 0, 0));
    }
}

//! Container handles: which ones are acceptable, and the hostname a handle gives.
//!
//! The host names a container's things after its handle, as given: its depot directory
//! `<depot>/<handle>`, its record `<records>/<handle>.json` (written first as
//! `.<handle>.json.tmp`), its cgroup directory `<parent>/<handle>` in every cgroup hierarchy,
//! its network namespace file and its network state file. A handle that is not a safe name in
//! every one of those places would make a create fail half-way, or leave behind something that
//! can never be removed, so the rule is checked once, when a create is admitted, and covers
//! them all. A handle:
//!
//! - is not empty (nor only whitespace) and is at most [`MAX_HANDLE_BYTES`] bytes long: the
//!   longest name the host makes from a handle, the record's temporary file, must fit in a
//!   file name ([`FILE_NAME_MAX`] bytes);
//! - contains no `/`, no NUL or other control character, and is not `.` or `..`;
//! - does not start with `.`: the host's stores keep their own files (temporary files, retired
//!   state) under hidden names and skip hidden names when they list containers, so a hidden
//!   handle would be lost at the next restart;
//! - is not the name of a cgroup control file, which the container's cgroup directory would
//!   collide with among its parent's files: `tasks`, `notify_on_release`, `release_agent`,
//!   anything starting `cgroup.`, and `<controller>.<anything>` for every cgroup v1 and v2
//!   controller ([`CGROUP_CONTROLLERS`], e.g. `memory.limit_in_bytes`, `pids.max`). Every
//!   control file the kernel makes has one of these forms. Other names with dots (`my.app`,
//!   `web.v2`, `memoryhog.1`) are fine.

use crate::record;
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use thiserror::Error;

/// A container's handle, admitted under the rule above. The core keys its containers by
/// `Handle`; it reads as a `&str` everywhere else.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(String);

impl Handle {
    /// Admits a handle a client asked for.
    pub fn new(handle: String) -> Result<Handle, InvalidName> {
        validate(&handle)?;
        Ok(Handle(handle))
    }

    /// A handle the host already has things under (a record, a leftover found at
    /// reconciliation): it was admitted when that container was created, and whatever it is,
    /// the core must be able to name it to tear it down.
    pub(crate) fn existing(handle: String) -> Handle {
        Handle(handle)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Handle {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Handle {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Handle {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Handle> for String {
    fn from(handle: Handle) -> String {
        handle.0
    }
}

/// The longest file name Linux filesystems allow (`NAME_MAX`).
pub const FILE_NAME_MAX: usize = 255;

/// The longest handle: the record's temporary file, `.<handle>.json.tmp`, is the longest name
/// the host makes from a handle, and it must fit in [`FILE_NAME_MAX`].
pub const MAX_HANDLE_BYTES: usize = FILE_NAME_MAX - record::TEMP_FILE_AFFIX_BYTES;

/// Process ids name nothing on the host; they only need to be one path component, as in a
/// URL.
pub const MAX_PROCESS_ID_BYTES: usize = FILE_NAME_MAX;

/// Linux allows 64 bytes of hostname; guardian keeps the last 49 characters of a long handle.
pub const HOSTNAME_CHARS: usize = 49;

/// Control files without a dot that the kernel puts in cgroup v1 directories.
const CGROUP_DOTLESS_FILES: [&str; 3] = ["tasks", "notify_on_release", "release_agent"];

/// The prefixes of cgroup control files: `cgroup.` (the core's own files, v1 and v2) and one per
/// controller, v1 and v2 (`irq.pressure` has no controller but follows the same form).
pub const CGROUP_CONTROLLERS: [&str; 19] = [
    "cgroup",
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "io",
    "pids",
    "hugetlb",
    "perf_event",
    "rdma",
    "misc",
    "dmem",
    "irq",
    "debug",
];

/// Why a handle (or a process id) cannot be used. Each message states the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidName {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} bytes long, not {len}")]
    TooLong { len: usize, max: usize },
    #[error("must not contain '/'")]
    Slash,
    #[error("must not contain NUL or other control characters")]
    ControlCharacter,
    #[error("must not be '.' or '..'")]
    DotPath,
    #[error("must not start with '.'")]
    Hidden,
    #[error(
        "must not be the name of a cgroup control file (tasks, notify_on_release, \
         release_agent, cgroup.*, or <controller>.* such as memory.* or pids.*)"
    )]
    CgroupFileName,
}

/// Checks a container handle against the rule in the module documentation.
pub fn validate(handle: &str) -> Result<(), InvalidName> {
    validate_component(handle, MAX_HANDLE_BYTES)?;
    if is_hidden(handle) {
        return Err(InvalidName::Hidden);
    }
    if is_cgroup_file_name(handle) {
        return Err(InvalidName::CgroupFileName);
    }
    Ok(())
}

/// Checks a process id: one path component of at most [`MAX_PROCESS_ID_BYTES`].
pub fn validate_process_id(id: &str) -> Result<(), InvalidName> {
    validate_component(id, MAX_PROCESS_ID_BYTES)
}

fn validate_component(name: &str, max: usize) -> Result<(), InvalidName> {
    if name.trim().is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.len() > max {
        return Err(InvalidName::TooLong {
            len: name.len(),
            max,
        });
    }
    if name.contains('/') {
        return Err(InvalidName::Slash);
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(InvalidName::ControlCharacter);
    }
    if name == "." || name == ".." {
        return Err(InvalidName::DotPath);
    }
    Ok(())
}

/// Whether a name in one of the host's stores is one of the store's own files rather than a
/// container's: hidden names are never handles, so a loader that skips them skips no container.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// Whether a cgroup directory of this name could collide with a control file of its parent.
fn is_cgroup_file_name(name: &str) -> bool {
    if CGROUP_DOTLESS_FILES.contains(&name) {
        return true;
    }
    match name.split_once('.') {
        Some((prefix, _)) => CGROUP_CONTROLLERS.contains(&prefix),
        None => false,
    }
}

/// The container's hostname: the handle, or its last 49 characters when longer.
pub fn hostname(handle: &str) -> String {
    let chars: Vec<char> = handle.chars().collect();
    chars[chars.len().saturating_sub(HOSTNAME_CHARS)..]
        .iter()
        .collect()
}

/// A handle as error messages and logs show it: whole, unless it is long (a refused handle may
/// be as long as a request body).
pub fn shown(handle: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    if handle.chars().count() <= SHOWN_CHARS {
        return handle.to_string();
    }
    let head: String = handle.chars().take(SHOWN_CHARS).collect();
    format!("{head}... ({} bytes)", handle.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_handle_leaves_room_for_the_record_temp_file() {
        assert_eq!(MAX_HANDLE_BYTES, 245);
        let longest = "x".repeat(MAX_HANDLE_BYTES);
        assert_eq!(validate(&longest), Ok(()));
        assert_eq!(record::temp_file_name(&longest).len(), FILE_NAME_MAX);
        assert_eq!(
            validate(&"x".repeat(MAX_HANDLE_BYTES + 1)),
            Err(InvalidName::TooLong { len: 246, max: 245 })
        );
        assert!(validate(&"x".repeat(255)).is_err());
        // Bytes count, not characters: 82 three-byte characters are 246 bytes.
        assert!(validate(&"€".repeat(81)).is_ok());
        assert!(validate(&"€".repeat(82)).is_err());
    }

    #[test]
    fn path_components_only() {
        assert_eq!(validate(""), Err(InvalidName::Empty));
        assert_eq!(validate("  \t"), Err(InvalidName::Empty));
        assert_eq!(validate("a/b"), Err(InvalidName::Slash));
        assert_eq!(validate("/"), Err(InvalidName::Slash));
        assert_eq!(validate("a\0b"), Err(InvalidName::ControlCharacter));
        assert_eq!(validate("a\nb"), Err(InvalidName::ControlCharacter));
        assert_eq!(validate("."), Err(InvalidName::DotPath));
        assert_eq!(validate(".."), Err(InvalidName::DotPath));
    }

    #[test]
    fn hidden_names_are_refused() {
        for handle in [".hidden", ".x.json", "..."] {
            assert_eq!(validate(handle), Err(InvalidName::Hidden), "{handle}");
        }
    }

    #[test]
    fn cgroup_control_file_names_are_refused() {
        for handle in [
            "tasks",
            "notify_on_release",
            "release_agent",
            "cgroup.procs",
            "cgroup.clone_children",
            "cgroup.",
            "memory.limit_in_bytes",
            "memory.oom_control",
            "pids.max",
            "cpu.shares",
            "cpuacct.usage_all",
            "cpuset.cpus",
            "devices.allow",
            "freezer.state",
            "net_cls.classid",
            "net_prio.ifpriomap",
            "blkio.weight",
            "io.max",
            "hugetlb.2MB.limit_in_bytes",
            "perf_event.anything",
            "rdma.max",
            "misc.max",
            "dmem.max",
            "irq.pressure",
            "debug.stat",
            "memory.my-own-name",
        ] {
            assert_eq!(
                validate(handle),
                Err(InvalidName::CgroupFileName),
                "{handle}"
            );
        }
    }

    #[test]
    fn other_names_with_dots_and_controller_words_are_fine() {
        for handle in [
            "my-handle_1.2",
            "my.app",
            "web.v2",
            "memory",
            "pids",
            "tasks2",
            "tasks.txt",
            "memoryhog.1",
            "xcpu.shares",
            "Memory.limit_in_bytes",
            "release_agent_x",
            "a.cgroup.procs",
            "ünïcode-handle",
            "with space",
        ] {
            assert_eq!(validate(handle), Ok(()), "{handle}");
        }
    }

    #[test]
    fn process_ids_only_need_to_be_one_path_component() {
        assert_eq!(validate_process_id("tasks"), Ok(()));
        assert_eq!(validate_process_id(".p"), Ok(()));
        assert_eq!(validate_process_id(&"p".repeat(255)), Ok(()));
        assert_eq!(
            validate_process_id(&"p".repeat(256)),
            Err(InvalidName::TooLong { len: 256, max: 255 })
        );
        assert_eq!(validate_process_id("a/b"), Err(InvalidName::Slash));
    }

    #[test]
    fn a_handle_is_admitted_only_under_the_rule_and_reads_as_a_str() {
        assert_eq!(
            Handle::new("pids.max".into()),
            Err(InvalidName::CgroupFileName)
        );
        assert_eq!(Handle::new("a/b".into()), Err(InvalidName::Slash));
        let handle = Handle::new("web.v2".into()).unwrap();
        assert_eq!(&*handle, "web.v2");
        assert_eq!(handle.to_string(), "web.v2");
        let by_handle: std::collections::BTreeMap<Handle, u32> = [(handle, 1)].into();
        assert_eq!(by_handle.get("web.v2"), Some(&1), "looked up by &str");
    }

    #[test]
    fn hostname_keeps_the_last_49_characters() {
        assert_eq!(hostname("short"), "short");
        let long = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR"; // 54 chars
        assert_eq!(hostname(long), &long[5..]);
        assert_eq!(hostname(long).len(), 49);
    }

    #[test]
    fn long_handles_are_shown_shortened() {
        assert_eq!(shown("web"), "web");
        let long = "y".repeat(1000);
        assert_eq!(shown(&long), format!("{}... (1000 bytes)", "y".repeat(64)));
    }
}

//! Reading and writing cgroup control files, with errors that name the file.

use crate::host::{HostError, HostResult};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

pub(super) fn read(path: impl AsRef<Path>) -> HostResult<String> {
    let path = path.as_ref();
    read_small(path).map_err(|e| HostError::io(format!("read {}", path.display()), e))
}

/// Like [`read`], but a missing file is `None` (a controller that is not enabled).
pub(super) fn read_optional(path: impl AsRef<Path>) -> HostResult<Option<String>> {
    let path = path.as_ref();
    match read_small(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(HostError::io(format!("read {}", path.display()), e)),
    }
}

/// Reads a control file with one open and (usually) two reads: no fstat for a size hint and
/// no small probing reads, which add up over hundreds of containers per BulkMetrics.
fn read_small(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// Writes `value` in a single write(2): cgroup files take one value per write.
pub(super) fn write(path: impl AsRef<Path>, value: &str) -> HostResult<()> {
    let path = path.as_ref();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| HostError::io(format!("write {value:?} to {}", path.display()), e))
}

/// A single unsigned number; `max` (v2) reads as `None`.
pub(super) fn parse_u64_or_max(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        None
    } else {
        text.parse().ok()
    }
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, memory.oom_control): calls `each`
/// for every well-formed line.
pub(super) fn for_each_pair(text: &str, mut each: impl FnMut(&str, u64)) {
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        if let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if let Ok(value) = value.parse::<u64>() {
                each(key, value);
            }
        }
    }
}

/// The value of `key` in a `key value` file.
pub(super) fn pair(text: &str, key: &str) -> Option<u64> {
    let mut found = None;
    for_each_pair(text, |k, v| {
        if k == key {
            found = Some(v);
        }
    });
    found
}

/// Every pid listed in a `cgroup.procs` file.
pub(super) fn parse_pids(text: &str, into: &mut Vec<u32>) {
    into.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
}

/// Collects the pids of `dir` and of every cgroup below it (none when `dir` is not a cgroup).
pub(super) fn pids_recursive(dir: &Path, into: &mut Vec<u32>) -> HostResult<()> {
    match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => parse_pids(&text, into),
        Err(e)
            if e.kind() == ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ENOTDIR) =>
        {
            return Ok(())
        }
        Err(e) => {
            return Err(HostError::io(
                format!("read {}", dir.join("cgroup.procs").display()),
                e,
            ))
        }
    }
    for child in subdirs(dir)? {
        pids_recursive(&dir.join(child), into)?;
    }
    Ok(())
}

/// The names of the directories in `dir` (child cgroups); empty when `dir` is missing.
pub(super) fn subdirs(dir: &Path) -> HostResult<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io(format!("list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io(format!("list {}", dir.display()), e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Removes the cgroup `dir` and its descendants, deepest first. `Ok(false)` when a cgroup is
/// still busy (it has processes, or the kernel has not released them yet). A path that is not
/// a directory is no cgroup (a control file of the parent) and is left alone.
pub(super) fn remove_tree(dir: &Path) -> HostResult<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(HostError::io(format!("stat {}", dir.display()), e)),
    }
    for child in subdirs(dir)? {
        if !remove_tree(&dir.join(child))? {
            return Ok(false);
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => Ok(false),
        Err(e) => Err(HostError::io(format!("remove {}", dir.display()), e)),
    }
}

/// Makes the directory; an existing one is fine.
pub(super) fn mkdir(dir: &Path) -> HostResult<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(HostError::io(format!("create {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_skip_malformed_lines() {
        let text = "cache 10\nrss 20\nbroken\nweird x\n total_rss 30 \n";
        let mut seen = Vec::new();
        for_each_pair(text, |k, v| seen.push((k.to_string(), v)));
        assert_eq!(
            seen,
            vec![
                ("cache".into(), 10),
                ("rss".into(), 20),
                ("total_rss".into(), 30)
            ]
        );
        assert_eq!(pair(text, "rss"), Some(20));
        assert_eq!(pair(text, "swap"), None);
    }

    #[test]
    fn max_reads_as_no_limit() {
        assert_eq!(parse_u64_or_max("max\n"), None);
        assert_eq!(parse_u64_or_max("128\n"), Some(128));
        assert_eq!(parse_u64_or_max("junk"), None);
    }
}

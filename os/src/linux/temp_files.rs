//! Temporary files a server killed mid-write leaves behind, removed when the next one starts.
//!
//! Every durable file is written to a temporary name and renamed into place, and every image
//! is unpacked into a temporary directory and renamed into the cache. A crash between the
//! two leaves the temporary: a `.<handle>.json.tmp` record, a `.<id>.tmp` network state (`.<handle>.tmp` with a network plugin), or a
//! half-unpacked image under `images/tmp` (named after the dead server's pid, so never reused
//! and never removed by anyone else). No reader looks at them (records and states starting
//! with `.` are skipped), so they only take space; a start removes them. Only a server holding
//! the directories' lock may call this (`server_lock`): another server's temporaries are live.

use crate::host::{HostError, HostResult};
use crate::layout::Layout;
use std::io::ErrorKind;
use std::path::Path;

/// Removes the temporaries of `layout`'s server (see the module docs); returns how many.
pub fn remove_leftovers(layout: &Layout) -> HostResult<usize> {
    let mut removed = remove_files(&layout.records_dir(), |name| {
        name.starts_with('.') && name.ends_with(".json.tmp")
    })?;
    for dir in [
        layout.network_state_dir(),
        crate::linux::network::plugin::states_dir(&layout.network_state_dir()),
    ] {
        removed += remove_files(&dir, |name| name.starts_with('.') && name.ends_with(".tmp"))?;
    }
    let unpacking = layout.images_tmp_dir();
    match std::fs::read_dir(&unpacking) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match gone {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(HostError::io(format!("removing {}", path.display()), e)),
                }
            }
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(HostError::io(format!("reading {}", unpacking.display()), e)),
    }
    Ok(removed)
}

/// Removes the plain files of `dir` whose names `doomed` picks.
fn remove_files(dir: &Path, doomed: impl Fn(&str) -> bool) -> HostResult<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(HostError::io(format!("reading {}", dir.display()), e)),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        let picked = entry.file_name().to_str().is_some_and(&doomed);
        if !(is_file && picked) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(HostError::io(format!("removing {}", path.display()), e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_temporaries_go() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(
            dir.path().join("depot"),
            dir.path().join("state"),
            dir.path().join("run"),
        );
        let records = layout.records_dir();
        let states = layout.network_state_dir();
        let unpacking = layout.images_tmp_dir();
        for d in [&records, &states, &unpacking, &states.join(".retired")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let kept = [
            records.join("a.json"),
            // A record of a handle starting with a dot is not a temporary.
            records.join(".dotted.json"),
            states.join("a"),
            states.join(".retired").join("x.tmp"),
            layout.images_dir().join("tar-cache-entry"),
        ];
        let doomed = [
            records.join(".a.json.tmp"),
            states.join(".0a1b.tmp"),
            unpacking.join("layer-1234").join("etc"),
            unpacking.join("stray-file"),
        ];
        for path in kept.iter().chain(&doomed) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        assert_eq!(remove_leftovers(&layout).unwrap(), 4);
        for path in &kept {
            assert!(path.exists(), "{} was removed", path.display());
        }
        for path in &doomed {
            assert!(!path.exists(), "{} is still there", path.display());
        }
        assert!(unpacking.is_dir(), "the directory itself stays");
        // Nothing left the second time; missing directories are no error.
        assert_eq!(remove_leftovers(&layout).unwrap(), 0);
        let empty = tempfile::tempdir().unwrap();
        let fresh = Layout::new(empty.path(), empty.path(), empty.path());
        assert_eq!(remove_leftovers(&fresh).unwrap(), 0);
    }
}

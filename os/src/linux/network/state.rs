//! A small file per container recording what its network holds, written before anything is
//! created, so that teardown and a restarted server find every resource by handle.

use crate::host::{HostError, HostResult};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use trellis_core::api::{BandwidthLimits, PortMapping};
use trellis_core::network::NetworkAssignment;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub handle: String,
    /// The short id naming the container's interfaces and firewall chain.
    pub id: String,
    pub assignment: NetworkAssignment,
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: BandwidthLimits,
}

/// The directory of state files, one per handle (the file name is the handle). The store's own
/// files (temporary files, retired states) have hidden names, which no handle has.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// The states in `dir`. Temporary files a crash left there (a save cut short before its
    /// rename) are removed: nothing is saving at start.
    pub fn new(dir: PathBuf) -> HostResult<StateStore> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
        let store = StateStore { dir };
        for name in hidden_names(&store.dir)? {
            if is_temp_file_name(&name) {
                remove_file_if_exists(&store.dir.join(name))?;
            }
        }
        Ok(store)
    }

    fn path(&self, handle: &str) -> PathBuf {
        self.dir.join(handle)
    }

    pub fn load(&self, handle: &str) -> HostResult<Option<NetworkState>> {
        let path = self.path(handle);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                HostError::io(
                    format!("corrupt network state {}", path.display()),
                    e.into(),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io(format!("read {}", path.display()), e)),
        }
    }

    /// Atomically replaces the handle's state (write to a temporary file, fsync, rename).
    pub fn save(&self, state: &NetworkState) -> HostResult<()> {
        let path = self.path(&state.handle);
        let tmp = self.dir.join(temp_file_name(&state.id));
        let bytes = serde_json::to_vec(state).expect("network state serialises");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| HostError::io(format!("write {}", path.display()), e))
    }

    pub fn delete(&self, handle: &str) -> HostResult<()> {
        remove_file_if_exists(&self.path(handle))
    }

    pub fn handles(&self) -> HostResult<Vec<String>> {
        list_names(&self.dir)
    }

    /// Where the states of torn-down containers wait (by id) until the rest of their removal
    /// is done; hidden, so not listed among the handles.
    fn retired_dir(&self) -> PathBuf {
        self.dir.join(".retired")
    }

    /// Moves the handle's state to the retired ones: the handle is free, and what is left to
    /// remove can still be found after a crash.
    pub fn retire(&self, state: &NetworkState) -> HostResult<()> {
        let dir = self.retired_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| HostError::io(format!("create {}", dir.display()), e))?;
        let from = self.path(&state.handle);
        let to = dir.join(&state.id);
        std::fs::rename(&from, &to)
            .map_err(|e| HostError::io(format!("move {} to {}", from.display(), to.display()), e))
    }

    /// Every retired state (unreadable ones are skipped: their names are all we would have).
    pub fn retired(&self) -> HostResult<Vec<NetworkState>> {
        let dir = self.retired_dir();
        let mut states = Vec::new();
        for id in list_names(&dir)? {
            let path = dir.join(&id);
            match std::fs::read(&path) {
                Ok(bytes) => states.extend(serde_json::from_slice(&bytes).ok()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::io(format!("read {}", path.display()), e)),
            }
        }
        Ok(states)
    }

    /// The retired state `id` is fully removed.
    pub fn forget_retired(&self, id: &str) -> HostResult<()> {
        remove_file_if_exists(&self.retired_dir().join(id))
    }
}

pub fn remove_file_if_exists(path: &Path) -> HostResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(HostError::io(format!("remove {}", path.display()), e)),
    }
}

/// A state's temporary file, named by its network id (ids are 10 base-32 digits).
fn temp_file_name(id: &str) -> String {
    format!(".{id}.tmp")
}

fn is_temp_file_name(name: &str) -> bool {
    name.strip_prefix('.')
        .and_then(|n| n.strip_suffix(".tmp"))
        .is_some_and(crate::linux::network::naming::is_valid_id)
}

/// The names in `dir` (missing means empty), without hidden ones: those are the store's own
/// files, and no handle is hidden (`trellis_core::handle::is_hidden`).
pub fn list_names(dir: &Path) -> HostResult<Vec<String>> {
    Ok(names(dir)?
        .into_iter()
        .filter(|n| !trellis_core::handle::is_hidden(n))
        .collect())
}

fn hidden_names(dir: &Path) -> HostResult<Vec<String>> {
    Ok(names(dir)?
        .into_iter()
        .filter(|n| trellis_core::handle::is_hidden(n))
        .collect())
}

fn names(dir: &Path) -> HostResult<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HostError::io(format!("list {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io(format!("list {}", dir.display()), e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(handle: &str, id: &str) -> NetworkState {
        NetworkState {
            handle: handle.into(),
            id: id.into(),
            assignment: NetworkAssignment {
                subnet: "10.254.0.0/30".parse().unwrap(),
                container_ip: "10.254.0.1".parse().unwrap(),
            },
            port_mappings: vec![],
            bandwidth: BandwidthLimits::default(),
        }
    }

    #[test]
    fn a_save_cut_short_leaves_a_temporary_file_that_the_next_start_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().to_path_buf()).unwrap();
        store.save(&state("web", "0123456789")).unwrap();
        store.retire(&state("web", "0123456789")).unwrap();
        store.save(&state("db", "abcdefghij")).unwrap();
        std::fs::write(dir.path().join(".klmnopqrst.tmp"), b"{").unwrap();

        let store = StateStore::new(dir.path().to_path_buf()).unwrap();
        let mut all = names(dir.path()).unwrap();
        all.sort();
        assert_eq!(all, [".retired", "db"], "the retired states stay");
        assert_eq!(store.handles().unwrap(), ["db"]);
        assert_eq!(store.retired().unwrap().len(), 1);
    }
}

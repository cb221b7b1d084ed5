//! Durable container records: one file per handle (named and encoded as `trellis_core::record`
//! says), replaced atomically (write a temporary file, fsync it, rename it over the old one,
//! fsync the directory), so a crash leaves either the old record or the new one, never a torn
//! one.

use crate::host::{HostError, HostResult};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use trellis_core::record::{self, ContainerRecord};

/// How many records `load_all` reads at once.
const LOAD_WORKERS: usize = 8;

pub struct Depot {
    dir: PathBuf,
}

impl Depot {
    /// The records in `dir`. Temporary files a crash left there (a write cut short before its
    /// rename) are removed: nothing is writing at start, and the record they were replacing,
    /// if any, is still in place.
    pub fn new(dir: PathBuf) -> HostResult<Depot> {
        fs::create_dir_all(&dir)
            .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        let depot = Depot { dir };
        depot.remove_temp_files()?;
        Ok(depot)
    }

    fn path(&self, handle: &str) -> PathBuf {
        self.dir.join(record::file_name(handle))
    }

    fn remove_temp_files(&self) -> HostResult<()> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| HostError::io(format!("reading {}", self.dir.display()), e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.to_str().is_some_and(record::is_temp_file_name) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(HostError::io(
                            format!("removing {}", entry.path().display()),
                            e,
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    pub fn persist(&self, record: &ContainerRecord) -> HostResult<()> {
        let path = self.path(&record.handle);
        let tmp = self.dir.join(record::temp_file_name(&record.handle));
        let body = record::encode(record);
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        let written = write();
        if written.is_err() {
            // A failed write must not leave its temporary file behind until the next start.
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(|e| HostError::io(format!("writing {}", path.display()), e))
    }

    pub fn delete(&self, handle: &str) -> HostResult<()> {
        let path = self.path(handle);
        match fs::remove_file(&path) {
            Ok(()) => fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| HostError::io(format!("syncing {}", self.dir.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every readable record. A record that cannot be read is skipped and reported: its
    /// container is then found as a leftover and cleaned up. Hidden names are the depot's own
    /// (temporary files); no handle is hidden, so no container's record is skipped for its name.
    /// Records are read a few at once (a start may have thousands, and reading one is mostly
    /// syscalls and parsing).
    pub fn load_all(&self) -> HostResult<Vec<ContainerRecord>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| HostError::io(format!("reading {}", self.dir.display()), e))?;
        let paths: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| record::is_record_file_name(&entry.file_name().to_string_lossy()))
            .map(|entry| entry.path())
            .collect();
        let loaded = super::parallel::map(&paths, LOAD_WORKERS, |path| {
            fs::read(path).ok().and_then(|b| record::decode(&b).ok())
        });
        let mut records = Vec::with_capacity(paths.len());
        for (path, record) in paths.iter().zip(loaded) {
            match record {
                Some(record) => records.push(record),
                None => tracing::warn!("ignoring unreadable record {}", path.display()),
            }
        }
        records.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::handle::MAX_HANDLE_BYTES;

    fn record(handle: &str) -> ContainerRecord {
        ContainerRecord {
            handle: handle.into(),
            spec: Default::default(),
            properties: [("a".to_string(), "1".to_string())].into(),
            grace_time: 5,
            state: trellis_core::record::RecordState::Active,
            network: trellis_core::network::NetworkAssignment {
                subnet: "10.254.0.0/30".parse().unwrap(),
                container_ip: "10.254.0.1".parse().unwrap(),
            },
            mapped_ports: vec![],
            netout_rules: vec![],
            image_env: vec![],
            created_at: trellis_core::Time(7),
            events: vec![],
            version: 3,
        }
    }

    #[test]
    fn records_round_trip_and_delete_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let depot = Depot::new(dir.path().join("records")).unwrap();
        let record = record("h");
        depot.persist(&record).unwrap();
        assert_eq!(depot.load_all().unwrap(), vec![record]);
        depot.delete("h").unwrap();
        depot.delete("h").unwrap();
        assert!(depot.load_all().unwrap().is_empty());
    }

    /// Every handle the core accepts is stored and loaded back, the longest included, and
    /// handles that look like the depot's own file names are not confused with them.
    #[test]
    fn every_handle_the_core_accepts_is_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        let depot = Depot::new(dir.path().join("records")).unwrap();
        let handles = [
            "h".repeat(MAX_HANDLE_BYTES),
            "x.json".into(),
            "x.json.tmp".into(),
            "my.app".into(),
            "with space".into(),
        ];
        for handle in &handles {
            trellis_core::handle::validate(handle).expect("a valid handle");
            depot.persist(&record(handle)).unwrap();
        }
        let loaded: Vec<String> = depot
            .load_all()
            .unwrap()
            .into_iter()
            .map(|r| r.handle)
            .collect();
        let mut expected = handles.to_vec();
        expected.sort();
        assert_eq!(loaded, expected);
        // Restarting (a new Depot over the same directory) keeps them all.
        let depot = Depot::new(dir.path().join("records")).unwrap();
        assert_eq!(depot.load_all().unwrap().len(), handles.len());
    }

    #[test]
    fn temporary_files_left_by_a_crash_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let records = dir.path().join("records");
        let depot = Depot::new(records.clone()).unwrap();
        depot.persist(&record("kept")).unwrap();
        // A crash between writing the temporary file and renaming it, for a new container and
        // for one whose record was being replaced.
        std::fs::write(records.join(".new.json.tmp"), b"{\"half\":").unwrap();
        std::fs::write(records.join(".kept.json.tmp"), b"{}").unwrap();
        let long = "h".repeat(MAX_HANDLE_BYTES);
        std::fs::write(records.join(record::temp_file_name(&long)), b"").unwrap();
        // Not ours to remove: a record whose handle merely ends like a temporary file.
        depot.persist(&record("x.json.tmp")).unwrap();

        let depot = Depot::new(records.clone()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&records)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["kept.json", "x.json.tmp.json"]);
        let loaded: Vec<String> = depot
            .load_all()
            .unwrap()
            .into_iter()
            .map(|r| r.handle)
            .collect();
        assert_eq!(loaded, ["kept", "x.json.tmp"]);
    }
}

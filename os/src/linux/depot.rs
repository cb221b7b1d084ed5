//! Durable container records: one JSON file per handle, replaced atomically (write a temporary
//! file, fsync it, rename it over the old one, fsync the directory), so a crash leaves either
//! the old record or the new one, never a torn one.

use crate::host::{HostError, HostResult};
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use trellis_core::record::ContainerRecord;

/// How many records `load_all` reads at once.
const LOAD_WORKERS: usize = 8;

pub struct Depot {
    dir: PathBuf,
}

impl Depot {
    pub fn new(dir: PathBuf) -> HostResult<Depot> {
        fs::create_dir_all(&dir)
            .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
        Ok(Depot { dir })
    }

    fn path(&self, handle: &str) -> PathBuf {
        self.dir.join(format!("{handle}.json"))
    }

    pub fn persist(&self, record: &ContainerRecord) -> HostResult<()> {
        let path = self.path(&record.handle);
        let tmp = self.dir.join(format!(".{}.json.tmp", record.handle));
        let body = serde_json::to_vec(record)
            .map_err(|e| HostError::Failed(format!("encoding record: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&body)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| HostError::io(format!("writing {}", path.display()), e))
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
    /// container is then found as a leftover and cleaned up. Records are read a few at once
    /// (a start may have thousands, and reading one is mostly syscalls and parsing).
    pub fn load_all(&self) -> HostResult<Vec<ContainerRecord>> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| HostError::io(format!("reading {}", self.dir.display()), e))?;
        let paths: Vec<PathBuf> = entries
            .flatten()
            .filter(|entry| {
                let name = entry.file_name().to_string_lossy().to_string();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .map(|entry| entry.path())
            .collect();
        let loaded = super::parallel::map(&paths, LOAD_WORKERS, |path| {
            fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ContainerRecord>(&b).ok())
        });
        let mut records = Vec::with_capacity(paths.len());
        for (path, record) in paths.iter().zip(loaded) {
            match record {
                Some(record) => records.push(record),
                None => eprintln!("trellis: ignoring unreadable record {}", path.display()),
            }
        }
        records.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_delete_is_idempotent() {
        let dir = std::env::temp_dir().join(format!("trellis-depot-{}", std::process::id()));
        let depot = Depot::new(dir.clone()).unwrap();
        let record = ContainerRecord {
            handle: "h".into(),
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
        };
        depot.persist(&record).unwrap();
        assert_eq!(depot.load_all().unwrap(), vec![record]);
        depot.delete("h").unwrap();
        depot.delete("h").unwrap();
        assert!(depot.load_all().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}

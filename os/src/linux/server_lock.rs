//! A server's claim on its directories: an exclusive `flock` on `server.lock` in its state
//! directory and in its run directory, held for as long as the server process lives. The
//! kernel drops the lock when the process ends, however it ends (SIGKILL included), so a
//! stale file never blocks anyone; and, unlike a pid file, a lock cannot be mistaken for a
//! live server when its pid has been reused.
//!
//! A second server on either directory refuses to start (two servers on the same records
//! would undo each other's work), and `trellis cleanup` refuses while the lock is held, and
//! holds it itself while it works, so that no server starts under it. The holder's pid is
//! written in the file, for the message.
//!
//! The descriptor is close-on-exec, so the programs a server runs do not inherit the lock.

use crate::layout::Layout;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The lock file's name in each directory.
pub const LOCK_FILE: &str = "server.lock";

#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "{} is held by another trellis process ({holder}): a server runs with these \
         directories (stop it first)",
        path.display()
    )]
    Held { path: PathBuf, holder: String },
    #[error("locking {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held locks; dropping this releases them.
pub struct ServerLock {
    held: Vec<(PathBuf, Flock<File>)>,
}

impl std::fmt::Debug for ServerLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.paths()).finish()
    }
}

impl ServerLock {
    /// Takes the lock in the state and run directories (creating them if need be), or says
    /// who holds it.
    pub fn acquire(layout: &Layout) -> Result<ServerLock, LockError> {
        ServerLock::acquire_in(&[&layout.state, &layout.run], true)
    }

    /// As [`ServerLock::acquire`], for a tool that must not create what is not there: a
    /// missing directory has nothing to guard, and is skipped.
    pub fn acquire_existing(layout: &Layout) -> Result<ServerLock, LockError> {
        ServerLock::acquire_in(&[&layout.state, &layout.run], false)
    }

    fn acquire_in(dirs: &[&Path], create: bool) -> Result<ServerLock, LockError> {
        let mut held: Vec<(PathBuf, Flock<File>)> = Vec::new();
        for dir in dirs {
            let io = |source| LockError::Io {
                path: dir.to_path_buf(),
                source,
            };
            if create {
                std::fs::create_dir_all(dir).map_err(io)?;
            } else if !dir.is_dir() {
                continue;
            }
            let path = dir.join(LOCK_FILE);
            // Two directories given as one (the same path twice) are locked once.
            if held.iter().any(|(p, _)| same_file(p, &path)) {
                continue;
            }
            held.push((path.clone(), lock(&path)?));
        }
        Ok(ServerLock { held })
    }

    /// The lock files held, to be left alone by whoever clears the directories.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.held.iter().map(|(path, _)| path.as_path())
    }

    /// Releases the locks and removes their files (for `trellis cleanup`, once everything
    /// else is gone).
    pub fn release_and_remove(self) -> std::io::Result<()> {
        for (path, lock) in self.held {
            // Unlinked while still held, so that no server can take it in between and then
            // lose its file.
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            drop(lock);
        }
        Ok(())
    }
}

fn lock(path: &Path) -> Result<Flock<File>, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let started = std::time::Instant::now();
    let mut file = file;
    let mut file = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => break locked,
            Err((mut unlocked, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = unlocked.rewind();
                let _ = unlocked.read_to_string(&mut holder);
                let pid = holder.trim().parse::<i32>().ok();
                // A server killed a moment ago is gone, but a child it was making (which
                // shares its descriptors until it runs again and dies with it) may still hold
                // the lock for a few milliseconds: wait for that, never for a live server.
                if pid.is_some_and(|pid| !is_alive(pid)) && started.elapsed() < DYING_HOLDER_WAIT {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    file = unlocked;
                    continue;
                }
                let holder = match pid {
                    None => "pid unknown".to_string(),
                    Some(pid) => format!("pid {pid}"),
                };
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        }
    };
    let record_pid = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())
    };
    record_pid(&mut file).map_err(io)?;
    Ok(file)
}

/// How long a lock whose recorded holder is dead may take to be let go.
const DYING_HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `pid` runs (a zombie does not: it holds no descriptor).
fn is_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|state| !state.starts_with(['Z', 'X']))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path) -> Layout {
        Layout::new(dir.join("depot"), dir.join("state"), dir.join("run"))
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerLock::acquire(&layout(dir.path())).unwrap();
        assert_eq!(first.paths().count(), 2);
        let refused = ServerLock::acquire(&layout(dir.path())).unwrap_err();
        let message = refused.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("server.lock"), "{message}");
        // A lock on the run dir alone is enough to refuse.
        let other_state = Layout::new(
            dir.path().join("depot"),
            dir.path().join("elsewhere"),
            dir.path().join("run"),
        );
        assert!(matches!(
            ServerLock::acquire(&other_state),
            Err(LockError::Held { .. })
        ));
        drop(first);
        let again = ServerLock::acquire(&layout(dir.path())).unwrap();
        again.release_and_remove().unwrap();
        assert!(!dir.path().join("state").join(LOCK_FILE).exists());
        assert!(!dir.path().join("run").join(LOCK_FILE).exists());
    }

    #[test]
    fn a_lock_whose_recorded_holder_is_dead_is_awaited_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerLock::acquire(&layout(dir.path())).unwrap();
        // As if the server that took it had died, leaving a dying child holding the lock: the
        // recorded pid is one that no longer runs.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        for path in first.paths() {
            std::fs::write(path, format!("{dead}\n")).unwrap();
        }
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(first);
        });
        let second = ServerLock::acquire(&layout(dir.path()));
        release.join().unwrap();
        assert!(second.is_ok(), "{second:?}");
    }

    #[test]
    fn missing_directories_are_not_made_by_a_tool() {
        let dir = tempfile::tempdir().unwrap();
        let lock = ServerLock::acquire_existing(&layout(dir.path())).unwrap();
        assert_eq!(lock.paths().count(), 0);
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn one_directory_given_twice_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Layout::new(dir.path().join("d"), dir.path(), dir.path());
        let lock = ServerLock::acquire(&shared).unwrap();
        assert_eq!(lock.paths().count(), 1);
    }
}

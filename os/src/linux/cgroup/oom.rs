//! OOM kills, heard from the kernel without polling: on v1 an eventfd registered on
//! `memory.oom_control` through `cgroup.event_control`; on v2 `memory.events`, whose open file
//! polls with EPOLLPRI whenever it changes (its `oom_kill` count tells a kill from other
//! events). One epoll thread serves every container.

use crate::host::{HostError, HostResult, ObservationSink};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use trellis_core::effect::Observation;

/// What to open to hear about a container's OOM kills.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// The container's v1 memory cgroup directory.
    V1 { dir: PathBuf },
    /// The container's v2 `memory.events`.
    V2 { events: PathBuf },
    /// No memory controller: nothing to hear.
    None,
}

enum Watch {
    V1 {
        handle: String,
        dir: PathBuf,
        eventfd: EventFd,
    },
    V2 {
        handle: String,
        file: File,
        kills: u64,
    },
}

impl Watch {
    fn handle(&self) -> &str {
        match self {
            Watch::V1 { handle, .. } | Watch::V2 { handle, .. } => handle,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Watch::V1 { eventfd, .. } => eventfd.as_fd(),
            Watch::V2 { file, .. } => file.as_fd(),
        }
    }
}

/// Token of the eventfd that stops the thread.
const STOP: u64 = 0;

#[derive(Default)]
struct Watches {
    next_token: u64,
    by_token: HashMap<u64, Watch>,
    by_handle: HashMap<String, u64>,
}

pub(super) struct OomWatcher {
    epoll: Epoll,
    stop: EventFd,
    watches: Mutex<Watches>,
}

impl OomWatcher {
    pub(super) fn new() -> HostResult<OomWatcher> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(errno("epoll_create"))?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(errno("eventfd"))?;
        epoll
            .add(&stop, EpollEvent::new(EpollFlags::EPOLLIN, STOP))
            .map_err(errno("epoll_ctl"))?;
        Ok(OomWatcher {
            epoll,
            stop,
            watches: Mutex::new(Watches {
                next_token: STOP + 1,
                ..Watches::default()
            }),
        })
    }

    /// Starts listening for `handle`'s OOM kills. Idempotent; failures only cost the events.
    /// Opening happens outside the lock, so that a start registers many containers at once.
    pub(super) fn watch(&self, handle: &str, source: Source) {
        if self.lock().by_handle.contains_key(handle) {
            return;
        }
        let Ok(Some(watch)) = open(handle, source) else {
            return;
        };
        let mut watches = self.lock();
        // Another thread watched it meanwhile: this registration goes with its eventfd.
        if watches.by_handle.contains_key(handle) {
            return;
        }
        let token = watches.next_token;
        let flags = match watch {
            Watch::V1 { .. } => EpollFlags::EPOLLIN,
            Watch::V2 { .. } => EpollFlags::EPOLLPRI,
        };
        if self
            .epoll
            .add(watch.fd(), EpollEvent::new(flags, token))
            .is_err()
        {
            return;
        }
        watches.next_token += 1;
        watches.by_handle.insert(handle.to_string(), token);
        watches.by_token.insert(token, watch);
    }

    pub(super) fn unwatch(&self, handle: &str) {
        let mut watches = self.lock();
        if let Some(token) = watches.by_handle.remove(handle) {
            if let Some(watch) = watches.by_token.remove(&token) {
                let _ = self.epoll.delete(watch.fd());
            }
        }
    }

    /// Runs the listening thread until the watcher is stopped.
    pub(super) fn start(this: &Arc<OomWatcher>, sink: ObservationSink) {
        let watcher = Arc::clone(this);
        let spawned = std::thread::Builder::new()
            .name("oom-watcher".into())
            .spawn(move || watcher.run(sink));
        // Without a thread the server still works; it only misses OOM events.
        drop(spawned);
    }

    pub(super) fn stop(&self) {
        let _ = self.stop.write(1);
    }

    fn run(&self, sink: ObservationSink) {
        let mut events = vec![EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            for event in &events[..n] {
                if event.data() == STOP {
                    return;
                }
                if let Some(handle) = self.check(event.data()) {
                    sink(Observation::OutOfMemory { handle });
                }
            }
        }
    }

    /// Handles a wake-up: the handle when it was an OOM kill. Drops watches whose cgroup is
    /// gone (removal wakes v1 listeners; a removed v2 file polls as an error forever).
    fn check(&self, token: u64) -> Option<String> {
        let mut watches = self.lock();
        let watch = watches.by_token.get_mut(&token)?;
        let (oom, gone) = match watch {
            Watch::V1 { dir, eventfd, .. } => {
                let _ = eventfd.read();
                let gone = !dir.join("memory.oom_control").exists();
                (!gone, gone)
            }
            Watch::V2 { file, kills, .. } => match read_kills(file) {
                Some(now) => {
                    let oom = now > *kills;
                    *kills = now;
                    (oom, false)
                }
                None => (false, true),
            },
        };
        let handle = watch.handle().to_string();
        if gone {
            if let Some(watch) = watches.by_token.remove(&token) {
                let _ = self.epoll.delete(watch.fd());
            }
            watches.by_handle.remove(&handle);
        }
        oom.then_some(handle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open(handle: &str, source: Source) -> HostResult<Option<Watch>> {
    match source {
        Source::None => Ok(None),
        Source::V1 { dir } => {
            let oom_control = File::open(dir.join("memory.oom_control"))
                .map_err(|e| HostError::io("open memory.oom_control", e))?;
            let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(errno("eventfd"))?;
            super::files::write(
                dir.join("cgroup.event_control"),
                &format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd()),
            )?;
            // The registration holds the cgroup, not the control file: one fd per container
            // (the eventfd) stays open, not two.
            drop(oom_control);
            Ok(Some(Watch::V1 {
                handle: handle.to_string(),
                dir,
                eventfd,
            }))
        }
        Source::V2 { events } => {
            let file = File::open(&events).map_err(|e| HostError::io("open memory.events", e))?;
            // Reading also arms the poll: it fires on the next change after this read.
            let kills = read_kills(&file).unwrap_or(0);
            Ok(Some(Watch::V2 {
                handle: handle.to_string(),
                file,
                kills,
            }))
        }
    }
}

/// `oom_kill` from an open `memory.events`; `None` once the cgroup is gone.
fn read_kills(file: &File) -> Option<u64> {
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    Some(super::files::pair(text, "oom_kill").unwrap_or(0))
}

fn errno(what: &'static str) -> impl Fn(nix::errno::Errno) -> HostError {
    move |e| HostError::io(what, std::io::Error::from(e))
}

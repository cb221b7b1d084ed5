//! Pipes for fake processes: in-memory pipes a signal can interrupt, and the threads that
//! bridge them to the OS pipes the server reads.

use crate::lock;
use crate::process::{FakeProcess, Interrupt};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Bytes a simulated pipe holds before its writer blocks (a Linux pipe holds 64 KiB).
pub(crate) const PIPE_CAPACITY: usize = 64 * 1024;

pub(crate) fn os_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

pub(crate) fn write_status(pipe: &OwnedFd, status: i32) {
    let _ = nix::unistd::write(pipe, &trellis_os::encode_exit_status(status));
}

/// Copies from `from` to `to` on a thread of its own until `from` ends or `to` fails.
pub(crate) fn bridge(
    name: &str,
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .map(drop)
}

/// An in-memory pipe with a pipe's blocking: readers wait for data or for every writer to be
/// gone (EOF); writers wait for room, and fail once every reader is gone.
#[derive(Clone, Default)]
pub(crate) struct Pipe(Arc<PipeShared>);

#[derive(Default)]
pub(crate) struct PipeShared {
    state: Mutex<PipeState>,
    changed: Condvar,
}

#[derive(Default)]
pub(crate) struct PipeState {
    buffer: VecDeque<u8>,
    writers: usize,
    readers: usize,
}

/// How long a blocked program waits before checking for a signal again.
pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(10);

impl Pipe {
    pub(crate) fn new() -> Pipe {
        Pipe::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PipeState> {
        lock(&self.0.state)
    }

    pub(crate) fn writer(&self) -> PipeWriter {
        self.lock().writers += 1;
        PipeWriter(self.clone())
    }

    pub(crate) fn reader(&self, _owner: &Arc<FakeProcess>) -> PipeReader {
        self.lock().readers += 1;
        PipeReader(self.clone())
    }
}

pub(crate) struct PipeWriter(Pipe);
pub(crate) struct PipeReader(Pipe);

impl PipeWriter {
    /// Writes what fits; `process` (when it is the writer) may be interrupted by a signal.
    pub(crate) fn write_some(
        &mut self,
        data: &[u8],
        process: Option<&FakeProcess>,
    ) -> Result<usize, Interrupt> {
        let pipe = &self.0;
        let mut state = pipe.lock();
        loop {
            if let Some(signal) = process.and_then(FakeProcess::pending_signal) {
                return Err(Interrupt::Signal(signal));
            }
            if state.readers == 0 {
                return Err(Interrupt::BrokenPipe);
            }
            let room = PIPE_CAPACITY.saturating_sub(state.buffer.len());
            if room > 0 {
                let n = room.min(data.len());
                state.buffer.extend(&data[..n]);
                pipe.0.changed.notify_all();
                return Ok(n);
            }
            state = wait(pipe, state, process.is_some());
        }
    }

    pub(crate) fn write_interruptible(
        &mut self,
        data: &[u8],
        process: &FakeProcess,
    ) -> Result<usize, Interrupt> {
        self.write_some(data, Some(process))
    }
}

pub(crate) fn wait<'a>(
    pipe: &'a Pipe,
    state: MutexGuard<'a, PipeState>,
    poll: bool,
) -> MutexGuard<'a, PipeState> {
    if poll {
        pipe.0
            .changed
            .wait_timeout(state, SIGNAL_POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0
    } else {
        pipe.0
            .changed
            .wait(state)
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        self.write_some(data, None)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the process's stdin is closed"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        self.0.lock().writers -= 1;
        self.0 .0.changed.notify_all();
    }
}

impl PipeReader {
    pub(crate) fn read_some(
        &mut self,
        buf: &mut [u8],
        process: Option<&FakeProcess>,
    ) -> Result<usize, Interrupt> {
        let pipe = &self.0;
        let mut state = pipe.lock();
        loop {
            if let Some(signal) = process.and_then(FakeProcess::pending_signal) {
                return Err(Interrupt::Signal(signal));
            }
            if !state.buffer.is_empty() {
                let n = buf.len().min(state.buffer.len());
                for (slot, byte) in buf.iter_mut().zip(state.buffer.drain(..n)) {
                    *slot = byte;
                }
                pipe.0.changed.notify_all();
                return Ok(n);
            }
            if state.writers == 0 || buf.is_empty() {
                return Ok(0);
            }
            state = wait(pipe, state, process.is_some());
        }
    }

    pub(crate) fn read_interruptible(
        &mut self,
        buf: &mut [u8],
        process: &FakeProcess,
    ) -> Result<usize, Interrupt> {
        self.read_some(buf, Some(process))
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_some(buf, None)
            .map_err(|_| io::Error::other("interrupted"))
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.0.lock().readers -= 1;
        self.0 .0.changed.notify_all();
    }
}

//! One output stream (stdout or stderr) of a process: the process's pipe, and any number of
//! attached readers.
//!
//! The pipe itself is the buffer. Output is read from it without being taken (`tee` into a
//! scratch pipe), handed to the attached readers, and taken off the pipe (spliced to
//! /dev/null) only once every attached reader has written it to its client. So whatever no
//! client has yet is still in the pipe, whose other read end the container's init keeps: a
//! server killed at any moment loses none of it, and the next server, attaching again, sends
//! it (a piece written to a client just before the kill may be sent again, never dropped).
//! A process whose output nobody reads fills the pipe and then waits in its write
//! (backpressure), as with any pipe.
//!
//! - Every attached reader gets every byte from where it joined (the oldest byte still in the
//!   pipe); the slowest reader sets the pace. At most [`PEEK_LIMIT`] bytes are held in memory.
//! - While nobody is attached, output stays in the pipe, unread.
//! - One exception, so a client that never wants a stream cannot stall the process: a process
//!   connection is open, it has had [`ATTACH_WINDOW`] to attach this stream, and nobody did
//!   (the Go client opens no stderr attach when its stderr sink is nil). Then output is taken
//!   off the pipe as it comes; the latest [`PEEK_LIMIT`] bytes are kept for a late attach and
//!   older ones discarded (gdn discards it all).

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

/// Output held in memory (read from the pipe, not yet taken off it) at most, per stream; with a
/// chunk more it fits a 1 MiB scratch pipe (the most a pipe may hold without
/// CAP_SYS_RESOURCE).
pub const PEEK_LIMIT: usize = (1 << 20) - CHUNK;

/// How long a process connection has to attach a stream before that stream's output may be
/// discarded (the Go client attaches within milliseconds of the handshake).
pub const ATTACH_WINDOW: Duration = Duration::from_secs(5);

/// After the process has exited, how long the pipe may stay open without new data (a
/// background child holding it) before the stream is ended anyway.
pub const LINGER_AFTER_EXIT: Duration = Duration::from_secs(1);

const CHUNK: usize = 64 * 1024;

pub struct OutputStream {
    state: Mutex<State>,
    /// Bumped whenever readers may have something new (data, the end).
    data: watch::Sender<u64>,
    /// Bumped whenever a reader moves on or leaves (for "drained" waiters).
    progress: watch::Sender<u64>,
    /// Wakes the pump: a reader moved on or arrived, the discard rule may have changed.
    pump_wake: Notify,
}

#[derive(Default)]
struct State {
    /// Output read from the pipe that a reader may still need, from `start` to `end`.
    chunks: VecDeque<Bytes>,
    /// Stream offset of the first byte held in `chunks`.
    start: u64,
    /// Stream offset of the first byte still in the pipe (`start` unless discarding).
    taken: u64,
    /// Stream offset one past the last byte read.
    end: u64,
    /// Reader id -> stream offset of the next byte it needs.
    readers: BTreeMap<u64, u64>,
    next_reader: u64,
    /// No more data will come.
    finished: bool,
    /// Open process connections for this process, and when the latest one began.
    connections: usize,
    latest_connection: Option<Instant>,
    /// When new output last showed up (read, or seen waiting in the pipe).
    last_data: Option<Instant>,
    discarded: u64,
}

impl State {
    /// Bytes held in memory.
    fn held(&self) -> u64 {
        self.end - self.start
    }

    /// Bytes read but still in the pipe (the head of what `tee` copies).
    fn read_in_pipe(&self) -> u64 {
        self.end - self.taken
    }

    /// Whether output nobody attached may be taken and thrown away (see the module docs).
    fn discarding(&self, now: Instant) -> bool {
        self.readers.is_empty()
            && self.connections > 0
            && self
                .latest_connection
                .is_some_and(|t| now.duration_since(t) >= ATTACH_WINDOW)
    }

    /// How far output may be taken off the pipe: what every attached reader has, or, when
    /// discarding, everything read.
    fn take_to(&self, now: Instant) -> u64 {
        if self.discarding(now) {
            return self.end;
        }
        match self.readers.values().min() {
            Some(&low) => low.max(self.taken),
            None => self.taken,
        }
    }

    /// Forgets the first `n` bytes held.
    fn drop_front(&mut self, mut n: u64) {
        self.start += n;
        while n > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() as u64 <= n {
                n -= front.len() as u64;
                self.chunks.pop_front();
            } else {
                *front = front.slice(n as usize..);
                n = 0;
            }
        }
    }
}

impl OutputStream {
    pub fn new() -> Arc<OutputStream> {
        Arc::new(OutputStream {
            state: Mutex::default(),
            data: watch::channel(0).0,
            progress: watch::channel(0).0,
            pump_wake: Notify::new(),
        })
    }

    /// A stream that never has output (stderr under a TTY).
    pub fn finished() -> Arc<OutputStream> {
        let stream = OutputStream::new();
        stream.finish();
        stream
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_readers(&self) {
        self.data.send_modify(|v| *v += 1);
    }

    /// No more data: readers get what is held, then the end.
    pub fn finish(&self) {
        self.lock().finished = true;
        self.wake_readers();
        self.pump_wake.notify_one();
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// When new output last showed up, if ever.
    pub fn last_data(&self) -> Option<Instant> {
        self.lock().last_data
    }

    /// A process connection opened (it may attach this stream within the attach window).
    pub fn connection_opened(&self, now: Instant) {
        let mut state = self.lock();
        state.connections += 1;
        state.latest_connection = Some(now);
        drop(state);
        self.pump_wake.notify_one();
    }

    pub fn connection_closed(&self) {
        let mut state = self.lock();
        state.connections = state.connections.saturating_sub(1);
        drop(state);
        self.pump_wake.notify_one();
    }

    /// Attaches a reader starting at the oldest byte still in the pipe.
    pub fn subscribe(self: &Arc<Self>) -> Reader {
        let mut state = self.lock();
        let id = state.next_reader;
        state.next_reader += 1;
        let start = state.start;
        state.readers.insert(id, start);
        drop(state);
        self.pump_wake.notify_one();
        Reader {
            stream: self.clone(),
            id,
            data: self.data.subscribe(),
        }
    }

    /// True when no attached reader waits for more: none is attached, or the stream has
    /// ended and each has everything. (A reader attaching later still gets the output.)
    pub fn drained(&self) -> bool {
        let state = self.lock();
        state.readers.is_empty()
            || state.finished && state.readers.values().all(|&pos| pos >= state.end)
    }

    /// Waits until [`drained`](Self::drained).
    pub async fn wait_drained(&self) {
        let mut progress = self.progress.subscribe();
        let mut data = self.data.subscribe();
        loop {
            progress.borrow_and_update();
            data.borrow_and_update();
            if self.drained() {
                return;
            }
            tokio::select! {
                r = progress.changed() => if r.is_err() { return },
                r = data.changed() => if r.is_err() { return },
            }
        }
    }

    /// Bytes thrown away because nobody wanted them (see the module docs).
    pub fn discarded(&self) -> u64 {
        self.lock().discarded
    }

    /// Reads `pipe` (non-blocking) into the stream until it ends, taking off it only what
    /// every reader has; returns once the stream is finished. Runs as a task of its own.
    pub async fn pump(self: Arc<Self>, pipe: OwnedFd) {
        if let Err(e) = self.pump_pipe(pipe).await {
            tracing::warn!(error = %e, "reading a process's output failed; the stream ends");
        }
        self.finish();
    }

    async fn pump_pipe(&self, pipe: OwnedFd) -> io::Result<()> {
        let pipe = async_fd(pipe, tokio::io::Interest::READABLE)?;
        // Made when first needed: a process that writes nothing costs no scratch pipe.
        let mut scratch: Option<Scratch> = None;
        loop {
            self.take(&pipe)?;
            if self.lock().finished {
                return Ok(());
            }
            // Read more only while someone may want it and there is room for it.
            let (wanted, room) = {
                let state = self.lock();
                let discarding = state.discarding(Instant::now());
                (
                    !state.readers.is_empty() || discarding,
                    state.held() < PEEK_LIMIT as u64 || discarding,
                )
            };
            if !(wanted && room) {
                self.wait_for_change().await;
                continue;
            }
            let mut ready = tokio::select! {
                ready = pipe.readable() => ready?,
                () = self.wait_for_change() => continue,
            };
            let in_pipe = self.lock().read_in_pipe() as usize;
            let scratch = match &mut scratch {
                Some(s) => s,
                None => scratch.insert(Scratch::new()?),
            };
            match scratch.peek(pipe.get_ref().as_raw_fd(), in_pipe)? {
                Peek::New(bytes) => {
                    let mut state = self.lock();
                    state.end += bytes.len() as u64;
                    state.chunks.push_back(bytes);
                    state.last_data = Some(Instant::now());
                    // Discarding keeps only the latest bytes.
                    let over = state.held().saturating_sub(PEEK_LIMIT as u64);
                    if over > 0 && state.readers.is_empty() {
                        state.drop_front(over);
                        state.discarded += over;
                    }
                    drop(state);
                    self.wake_readers();
                }
                Peek::Nothing { hung_up } => {
                    if hung_up {
                        // Every writer is gone and everything in the pipe was read.
                        self.lock().finished = true;
                        self.wake_readers();
                    } else {
                        ready.clear_ready();
                    }
                }
            }
        }
    }

    /// Takes off the pipe what may be taken, and forgets what no reader needs any more.
    fn take(&self, pipe: &AsyncFd<OwnedFd>) -> io::Result<()> {
        let (from, to) = {
            let state = self.lock();
            (state.taken, state.take_to(Instant::now()))
        };
        if to > from {
            splice_all(
                pipe.get_ref().as_raw_fd(),
                dev_null()?,
                (to - from) as usize,
            )?;
        }
        let mut state = self.lock();
        state.taken = state.taken.max(to);
        // Held bytes every reader has passed are no longer needed (kept while discarding,
        // for a late attach).
        if let Some(&low) = state.readers.values().min() {
            let done = low.min(state.taken).saturating_sub(state.start);
            state.drop_front(done);
        }
        drop(state);
        if to > from {
            self.progress.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Until a reader moves on or arrives, or the discard rule may have changed.
    async fn wait_for_change(&self) {
        // The attach window can close without any event: look again when it might have.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.pump_wake.notified()).await;
    }

    /// After the process exited (at `exited`): ends the stream if no new output arrived for
    /// [`LINGER_AFTER_EXIT`], counted from the later of the exit and the last output, and the
    /// pipe holds nothing new (it is open only because a background child holds it). Returns
    /// whether the stream is finished.
    pub fn finish_if_lingering(
        &self,
        pipe_has_new_data: bool,
        exited: Instant,
        now: Instant,
    ) -> bool {
        let state = self.lock();
        if state.finished {
            return true;
        }
        let since = state.last_data.map_or(exited, |t| t.max(exited));
        let idle = !pipe_has_new_data && now.duration_since(since) >= LINGER_AFTER_EXIT;
        drop(state);
        if idle {
            self.finish();
        }
        idle
    }

    /// Bytes in `pipe` beyond what the stream has read (FIONREAD counts everything in it).
    pub fn unread_in(&self, pipe_bytes: u64) -> u64 {
        pipe_bytes.saturating_sub(self.lock().read_in_pipe())
    }

    /// Whether a reader is attached.
    pub fn has_readers(&self) -> bool {
        !self.lock().readers.is_empty()
    }
}

/// One attached reader. Dropping it detaches.
pub struct Reader {
    stream: Arc<OutputStream>,
    id: u64,
    data: watch::Receiver<u64>,
}

impl Reader {
    /// The next piece of output (without moving past it: call [`Reader::delivered`] once it
    /// reached the client), or `None` once the stream has ended and all of it was delivered.
    pub async fn next(&mut self) -> Option<Bytes> {
        loop {
            self.data.borrow_and_update();
            if let Some(next) = self.try_next() {
                return next;
            }
            if self.data.changed().await.is_err() {
                return None;
            }
        }
    }

    /// `Some(Some(bytes))`: data; `Some(None)`: the end; `None`: nothing yet.
    fn try_next(&self) -> Option<Option<Bytes>> {
        let state = self.stream.lock();
        let pos = *state.readers.get(&self.id)?;
        if pos < state.end {
            let mut offset = state.start;
            for chunk in &state.chunks {
                let chunk_end = offset + chunk.len() as u64;
                if pos < chunk_end {
                    return Some(Some(chunk.slice((pos - offset) as usize..)));
                }
                offset = chunk_end;
            }
        }
        state.finished.then_some(None)
    }

    /// The last piece (of `len` bytes) reached the client: move past it.
    pub fn delivered(&self, len: usize) {
        let mut state = self.stream.lock();
        if let Some(pos) = state.readers.get_mut(&self.id) {
            *pos += len as u64;
        }
        drop(state);
        self.stream.pump_wake.notify_one();
        self.stream.progress.send_modify(|v| *v += 1);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stream.lock().readers.remove(&self.id);
        self.stream.pump_wake.notify_one();
        self.stream.progress.send_modify(|v| *v += 1);
    }
}

/// A private pipe that output is copied into (`tee`) to be read without being taken from the
/// process's pipe.
struct Scratch {
    read: OwnedFd,
    write: OwnedFd,
}

/// /dev/null, where output taken off a pipe goes (one descriptor for the whole server).
fn dev_null() -> io::Result<RawFd> {
    static NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if let Some(fd) = NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let fd: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .into();
    Ok(NULL.get_or_init(|| fd).as_raw_fd())
}

enum Peek {
    New(Bytes),
    Nothing { hung_up: bool },
}

impl Scratch {
    fn new() -> io::Result<Scratch> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        // Room for everything held plus a chunk (tee copies no more than fits).
        let size = (PEEK_LIMIT + CHUNK) as i32;
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size))
            .map_err(io::Error::from)?;
        Ok(Scratch { read, write })
    }

    /// Reads what `pipe` holds beyond its first `held` bytes (already read), up to a chunk,
    /// leaving the pipe as it was.
    fn peek(&self, pipe: RawFd, held: usize) -> io::Result<Peek> {
        let copied = loop {
            // SAFETY: tee between two pipe descriptors we hold.
            let n = unsafe {
                libc::tee(
                    pipe,
                    self.write.as_raw_fd(),
                    held + CHUNK,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => break 0,
                _ => return Err(e),
            }
        };
        if copied <= held {
            self.drain(copied)?;
            // No writer left and nothing new: the output has ended.
            return Ok(Peek::Nothing {
                hung_up: hung_up(pipe),
            });
        }
        // The copy begins with what was read before: skip it, keep the rest.
        self.drain(held)?;
        let mut buf = vec![0u8; copied - held];
        let mut filled = 0;
        while filled < buf.len() {
            match nix::unistd::read(&self.read, &mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        Ok(Peek::New(Bytes::from(buf)))
    }

    /// Throws away the first `n` bytes of the scratch pipe.
    fn drain(&self, n: usize) -> io::Result<()> {
        splice_all(self.read.as_raw_fd(), dev_null()?, n)
    }
}

/// Whether every writer of the pipe is gone (and so no more data will come).
fn hung_up(pipe: RawFd) -> bool {
    let mut fd = libc::pollfd {
        fd: pipe,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one descriptor we hold, no wait.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & libc::POLLHUP != 0
}

/// Moves exactly `n` bytes (known to be there) from a pipe to `to`.
fn splice_all(from: RawFd, to: RawFd, mut n: usize) -> io::Result<()> {
    while n > 0 {
        // SAFETY: splice between descriptors we hold; no offsets.
        let moved = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                n,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if moved > 0 {
            n -= moved as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match (moved, e.raw_os_error()) {
            (0, _) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "pipe ended")),
            (_, Some(libc::EINTR)) => continue,
            _ => return Err(e),
        }
    }
    Ok(())
}

/// Bytes waiting in a pipe.
pub fn pipe_bytes(pipe: impl AsFd) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int we own.
    if unsafe { libc::ioctl(pipe.as_fd().as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return 0;
    }
    n.max(0) as u64
}

/// Registers a (non-blocking) descriptor with the runtime's reactor.
pub fn async_fd(fd: OwnedFd, interest: tokio::io::Interest) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(fd.as_raw_fd())?;
    // SAFETY: an OwnedFd's descriptor stays open and unchanged until it is dropped with the
    // AsyncFd that owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl flag calls on a descriptor we hold.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

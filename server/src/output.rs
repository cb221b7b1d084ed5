//! One output stream (stdout or stderr) of a process: a bounded buffer between the process's
//! pipe and any number of attached readers.
//!
//! - Output is kept while nobody is attached, up to [`BUFFER_BYTES`]; then the pump stops
//!   reading the pipe, so the process blocks on its next write (backpressure, like a pipe with
//!   a slow reader). Output is never dropped while a reader might still come for it.
//! - Every attached reader gets every byte from where it joined (the oldest byte still kept);
//!   a byte is let go once every attached reader has it. The slowest reader sets the pace.
//! - One exception, so a client that never wants a stream cannot stall the process: a process
//!   connection is open, it has had [`ATTACH_WINDOW`] to attach this stream, and nobody did (the
//!   Go client opens no stderr attach when its stderr sink is nil). Then output that does not fit
//!   is discarded, as gdn does for every stream.

use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Output kept per stream before the process is held back.
pub const BUFFER_BYTES: usize = 1 << 20;

/// How long a process connection has to attach a stream before that stream's output may be
/// discarded (the Go client attaches within milliseconds of the handshake).
pub const ATTACH_WINDOW: Duration = Duration::from_secs(5);

/// After the process has exited, how long the pipe may stay open without data (a background
/// child holding it) before the stream is ended anyway.
pub const LINGER_AFTER_EXIT: Duration = Duration::from_secs(1);

const READ_CHUNK: usize = 64 * 1024;

pub struct OutputBuffer {
    state: Mutex<State>,
    /// Wakes the pump when room appears or the rules change.
    room: Condvar,
    /// Bumped whenever readers may have something new (data, the end).
    data: watch::Sender<u64>,
    /// Bumped whenever a reader moves on or leaves (for "drained" waiters).
    progress: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    /// Stream offset of the first byte in `chunks`.
    start: u64,
    /// Stream offset one past the last byte in `chunks`.
    end: u64,
    /// Reader id -> stream offset of the next byte it reads.
    readers: BTreeMap<u64, u64>,
    next_reader: u64,
    /// No more data will come.
    finished: bool,
    /// Open process connections for this process, and when the latest one began.
    connections: usize,
    latest_connection: Option<Instant>,
    /// The pump is waiting in `read` (not held back by a full buffer), since this instant.
    reading_since: Option<Instant>,
    discarded: u64,
}

impl State {
    fn buffered(&self) -> u64 {
        self.end - self.start
    }

    /// Whether output that does not fit must wait (true) or may be discarded (false).
    fn wanted(&self, now: Instant) -> bool {
        !self.readers.is_empty()
            || self.connections == 0
            || self
                .latest_connection
                .is_some_and(|t| now.duration_since(t) < ATTACH_WINDOW)
    }

    /// Lets go of chunks every reader has read.
    fn trim(&mut self) {
        let Some(&low) = self.readers.values().min() else {
            return;
        };
        while let Some(front) = self.chunks.front() {
            let front_end = self.start + front.len() as u64;
            if front_end > low {
                break;
            }
            self.start = front_end;
            self.chunks.pop_front();
        }
    }
}

impl Default for OutputBuffer {
    fn default() -> Self {
        OutputBuffer {
            state: Mutex::default(),
            room: Condvar::new(),
            data: watch::channel(0).0,
            progress: watch::channel(0).0,
        }
    }
}

impl OutputBuffer {
    pub fn new() -> Arc<OutputBuffer> {
        Arc::new(OutputBuffer::default())
    }

    /// A stream that never has output (stderr under a TTY).
    pub fn finished() -> Arc<OutputBuffer> {
        let buffer = OutputBuffer::new();
        buffer.finish();
        buffer
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_readers(&self) {
        self.data.send_modify(|v| *v += 1);
    }

    /// Reads `pipe` until EOF into the buffer, holding back while it is full. Runs on its own
    /// thread; returns when the pipe ends.
    pub fn pump(&self, mut pipe: Box<dyn Read + Send>) {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            self.lock().reading_since = Some(Instant::now());
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            self.lock().reading_since = None;
            self.push(Bytes::copy_from_slice(&buf[..n]));
        }
        self.finish();
    }

    fn push(&self, chunk: Bytes) {
        let mut state = self.lock();
        loop {
            if state.finished {
                // Ended early (see `finish_if_lingering`): the rest goes nowhere.
                state.discarded += chunk.len() as u64;
                return;
            }
            let fits = state.buffered() + chunk.len() as u64 <= BUFFER_BYTES as u64
                || state.chunks.is_empty();
            if fits {
                state.end += chunk.len() as u64;
                state.chunks.push_back(chunk);
                drop(state);
                self.wake_readers();
                return;
            }
            if !state.wanted(Instant::now()) && state.readers.is_empty() {
                state.discarded += chunk.len() as u64;
                return;
            }
            // Re-check now and then: the attach window may close while we wait.
            state = self
                .room
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// No more data: readers get what is buffered, then the end.
    pub fn finish(&self) {
        let mut state = self.lock();
        state.finished = true;
        state.reading_since = None;
        drop(state);
        self.room.notify_all();
        self.wake_readers();
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// After the process exited (at `exited`): ends the stream if the pipe has been idle (open
    /// only because a background child holds it) for longer than [`LINGER_AFTER_EXIT`], counted
    /// from the later of the exit and the last data. Returns whether the stream is finished.
    ///
    /// Counting from the exit matters: a process that sleeps, writes and exits leaves the pump
    /// waiting in a read that began before the sleep; its last output is still in the pipe.
    pub fn finish_if_lingering(&self, exited: Instant, now: Instant) -> bool {
        let state = self.lock();
        if state.finished {
            return true;
        }
        let idle = state
            .reading_since
            .is_some_and(|since| now.duration_since(since.max(exited)) >= LINGER_AFTER_EXIT);
        drop(state);
        if idle {
            self.finish();
        }
        idle
    }

    /// A process connection opened (it may attach this stream within the attach window).
    pub fn connection_opened(&self, now: Instant) {
        let mut state = self.lock();
        state.connections += 1;
        state.latest_connection = Some(now);
        drop(state);
        self.room.notify_all();
    }

    pub fn connection_closed(&self) {
        let mut state = self.lock();
        state.connections = state.connections.saturating_sub(1);
        drop(state);
        self.room.notify_all();
    }

    /// Attaches a reader starting at the oldest byte still kept.
    pub fn subscribe(self: &Arc<Self>) -> Reader {
        let mut state = self.lock();
        let id = state.next_reader;
        state.next_reader += 1;
        let start = state.start;
        state.readers.insert(id, start);
        drop(state);
        self.room.notify_all();
        Reader {
            buffer: self.clone(),
            id,
            data: self.data.subscribe(),
        }
    }

    /// True when the stream has ended and every attached reader has read everything.
    pub fn drained(&self) -> bool {
        let state = self.lock();
        state.finished && state.readers.values().all(|&pos| pos >= state.end)
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

    pub fn buffered(&self) -> u64 {
        self.lock().buffered()
    }
}

/// One attached reader. Dropping it detaches.
pub struct Reader {
    buffer: Arc<OutputBuffer>,
    id: u64,
    data: watch::Receiver<u64>,
}

impl Reader {
    /// The next piece of output, or `None` once the stream has ended and all of it was read.
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
        let buffer = &self.buffer;
        let mut state = buffer.lock();
        let pos = *state.readers.get(&self.id)?;
        if pos < state.end {
            let mut offset = state.start;
            let mut found = None;
            for chunk in &state.chunks {
                let chunk_end = offset + chunk.len() as u64;
                if pos < chunk_end {
                    found = Some(chunk.slice((pos - offset) as usize..));
                    break;
                }
                offset = chunk_end;
            }
            let piece = found.expect("a reader's position lies inside the buffer");
            state.readers.insert(self.id, pos + piece.len() as u64);
            state.trim();
            drop(state);
            buffer.room.notify_all();
            buffer.progress.send_modify(|v| *v += 1);
            return Some(Some(piece));
        }
        if state.finished {
            return Some(None);
        }
        None
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.buffer.lock();
        state.readers.remove(&self.id);
        state.trim();
        drop(state);
        self.buffer.room.notify_all();
        self.buffer.progress.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_before_attach_is_kept_and_fans_out() {
        let buffer = OutputBuffer::new();
        buffer.push(Bytes::from_static(b"early "));
        let mut a = buffer.subscribe();
        let mut b = buffer.subscribe();
        buffer.push(Bytes::from_static(b"late"));
        buffer.finish();
        for reader in [&mut a, &mut b] {
            let mut got = Vec::new();
            while let Some(chunk) = reader.next().await {
                got.extend_from_slice(&chunk);
            }
            assert_eq!(got, b"early late");
        }
        assert!(buffer.drained());
    }

    #[tokio::test]
    async fn a_full_buffer_holds_the_pump_back_instead_of_dropping() {
        let buffer = OutputBuffer::new();
        let total = 4 * BUFFER_BYTES;
        let pump = {
            let buffer = buffer.clone();
            std::thread::spawn(move || {
                let data = vec![7u8; total];
                buffer.pump(Box::new(std::io::Cursor::new(data)));
            })
        };
        // Nobody attached and no connection: the pump must wait, not discard.
        let deadline = Instant::now() + Duration::from_secs(10);
        while buffer.buffered() < BUFFER_BYTES as u64 - READ_CHUNK as u64 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!buffer.is_finished());
        let mut reader = buffer.subscribe();
        let mut got = 0;
        while let Some(chunk) = reader.next().await {
            got += chunk.len();
        }
        pump.join().unwrap();
        assert_eq!(got, total);
        assert_eq!(buffer.discarded(), 0);
    }

    #[test]
    fn output_written_just_before_exit_is_kept_after_a_long_silence() {
        let buffer = OutputBuffer::new();
        // The pump has waited in read since `t0`: the process slept for two seconds, then wrote
        // its output and exited. The waiter looks before the pump has woken up with that output.
        let t0 = Instant::now();
        buffer.lock().reading_since = Some(t0);
        let exited = t0 + 2 * LINGER_AFTER_EXIT;
        assert!(!buffer.finish_if_lingering(exited, exited));
        buffer.push(Bytes::from_static(b"last words\n"));
        buffer.finish();
        let mut reader = buffer.subscribe();
        let piece = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(reader.next());
        assert_eq!(piece.as_deref(), Some(&b"last words\n"[..]));
        assert_eq!(buffer.discarded(), 0);

        // A pipe left idle for the linger time after the exit (a background child holds it
        // open) is ended.
        let held = OutputBuffer::new();
        held.lock().reading_since = Some(t0);
        assert!(!held.finish_if_lingering(exited, exited + LINGER_AFTER_EXIT / 2));
        assert!(held.finish_if_lingering(exited, exited + LINGER_AFTER_EXIT));
        assert!(held.is_finished());
    }

    #[test]
    fn unwanted_output_is_discarded_once_the_attach_window_passed() {
        let buffer = OutputBuffer::new();
        buffer.connection_opened(Instant::now() - ATTACH_WINDOW - Duration::from_secs(1));
        for _ in 0..(2 * BUFFER_BYTES / READ_CHUNK) {
            buffer.push(Bytes::from(vec![1u8; READ_CHUNK]));
        }
        assert!(buffer.discarded() > 0);
    }
}

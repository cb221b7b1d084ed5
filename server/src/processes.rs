//! The server's table of processes: their streams and exit status by (handle, process id), and
//! the stream ids that stdout/stderr attaches name.
//!
//! A process comes as descriptors from the host (`ProcessIo`): its stdin's write end, its
//! output pipes and an exit pipe. Each is served by a task on the server's runtime (no thread
//! per process): two output pumps and an exit waiter. The host's keeper holds the process's
//! side of all of it, so a server that dies loses nothing, and a new server `adopt`s every
//! process its containers still have (see `server.rs`). Processes stay findable after their
//! client goes away, and for [`RETAIN_AFTER_EXIT`] after they exit, so that Attach works by
//! id; then the host is told to let the process go.

use crate::output::{async_fd, pipe_bytes, OutputStream, Reader};
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use tracing::{debug, warn};
use trellis_core::api::{Signal, WindowSize};
use trellis_os::{decode_exit_status, Host, HostResult, ProcessIo};
use trellis_proto::StreamKind;

/// How long an exited process (its exit status and any unread output) stays attachable.
pub const RETAIN_AFTER_EXIT: Duration = Duration::from_secs(60);

/// A request to a process's keeper, off the runtime's threads (it is a blocking exchange
/// with the container's init). A task that panicked counts as done.
async fn keeper_call(
    host: &Arc<dyn Host>,
    handle: &str,
    id: &str,
    call: impl FnOnce(&dyn Host, &str, &str) -> HostResult<()> + Send + 'static,
) -> HostResult<()> {
    let (host, handle, id) = (host.clone(), handle.to_string(), id.to_string());
    tokio::task::spawn_blocking(move || call(host.as_ref(), &handle, &id))
        .await
        .unwrap_or(Ok(()))
}

pub struct ProcessEntry {
    pub handle: String,
    pub id: String,
    host: Arc<dyn Host>,
    stdin: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
    stdout: Arc<OutputStream>,
    stderr: Arc<OutputStream>,
    /// The exit status, set once the process has exited and its output has ended.
    exit: watch::Sender<Option<i32>>,
    connections: Mutex<usize>,
}

impl ProcessEntry {
    pub fn stream(&self, kind: StreamKind) -> &Arc<OutputStream> {
        match kind {
            StreamKind::Stdout => &self.stdout,
            StreamKind::Stderr => &self.stderr,
        }
    }

    pub fn subscribe(&self, kind: StreamKind) -> Reader {
        self.stream(kind).subscribe()
    }

    /// Writes stdin data; false when stdin is already closed (or the process stopped reading).
    pub async fn write_stdin(&self, data: Vec<u8>) -> bool {
        let stdin = self.stdin.lock().await;
        let Some(pipe) = stdin.as_ref() else {
            return false;
        };
        let mut at = 0;
        while at < data.len() {
            let written = pipe
                .async_io(Interest::WRITABLE, |fd| {
                    nix::unistd::write(fd, &data[at..]).map_err(std::io::Error::from)
                })
                .await;
            match written {
                Ok(n) => at += n,
                Err(_) => return false,
            }
        }
        true
    }

    /// Stdin EOF: the server's and the keeper's write ends close, after data already written.
    pub async fn close_stdin(&self) {
        let had = self.stdin.lock().await.take().is_some();
        if had {
            let closed = keeper_call(&self.host, &self.handle, &self.id, |host, handle, id| {
                host.close_process_stdin(handle, id)
            });
            if let Err(e) = closed.await {
                warn!(error = %e, "closing the process's stdin in its keeper failed");
            }
        }
    }

    pub async fn signal(&self, signal: Signal) -> HostResult<()> {
        keeper_call(
            &self.host,
            &self.handle,
            &self.id,
            move |host, handle, id| host.signal_process(handle, id, signal),
        )
        .await
    }

    pub async fn resize(&self, size: WindowSize) -> HostResult<()> {
        keeper_call(
            &self.host,
            &self.handle,
            &self.id,
            move |host, handle, id| host.resize_process(handle, id, size),
        )
        .await
    }

    pub fn exit_status(&self) -> watch::Receiver<Option<i32>> {
        self.exit.subscribe()
    }

    /// Waits for the exit status, then for every attached reader to have all the output.
    pub async fn wait_exit_and_drained(&self) -> i32 {
        let mut exit = self.exit.subscribe();
        let status = match exit.wait_for(Option::is_some).await {
            Ok(status) => status.unwrap_or_default(),
            Err(_) => 0,
        };
        self.stdout.wait_drained().await;
        self.stderr.wait_drained().await;
        status
    }

    /// A process connection (Run or Attach) begins.
    pub fn connection_opened(&self) {
        *self.connections.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        let now = Instant::now();
        self.stdout.connection_opened(now);
        self.stderr.connection_opened(now);
    }

    /// A process connection ends; returns how many remain.
    pub fn connection_closed(&self) -> usize {
        let mut count = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        *count = count.saturating_sub(1);
        self.stdout.connection_closed();
        self.stderr.connection_closed();
        *count
    }
}

#[derive(Default)]
struct Table {
    processes: HashMap<(String, String), Arc<ProcessEntry>>,
    streams: HashMap<String, Arc<ProcessEntry>>,
}

pub struct ProcessTable {
    table: Mutex<Table>,
    next_stream: AtomicU64,
    runtime: tokio::runtime::Handle,
    host: Arc<dyn Host>,
}

impl ProcessTable {
    pub fn new(runtime: tokio::runtime::Handle, host: Arc<dyn Host>) -> Arc<ProcessTable> {
        Arc::new(ProcessTable {
            table: Mutex::default(),
            next_stream: AtomicU64::new(1),
            runtime,
            host,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over a process's descriptors (a new process, or one adopted after a restart):
    /// pumps its output, and waits for its exit. `on_exit` runs as soon as it has exited.
    pub fn register(
        self: &Arc<Self>,
        handle: &str,
        process_id: &str,
        io: ProcessIo,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Arc<ProcessEntry>> {
        // AsyncFd needs the runtime's reactor; this may run on a blocking thread.
        let _runtime = self.runtime.enter();
        let ProcessIo {
            stdin,
            stdout,
            stderr,
            exit,
        } = io;
        let stdin = stdin
            .map(|fd| async_fd(fd, Interest::WRITABLE))
            .transpose()?;
        let exit_pipe = async_fd(exit, Interest::READABLE)?;
        let stdout_stream = OutputStream::new();
        let stderr_stream = if stderr.is_some() {
            OutputStream::new()
        } else {
            OutputStream::finished()
        };
        let entry = Arc::new(ProcessEntry {
            handle: handle.to_string(),
            id: process_id.to_string(),
            host: self.host.clone(),
            stdin: tokio::sync::Mutex::new(stdin),
            stdout: stdout_stream.clone(),
            stderr: stderr_stream.clone(),
            exit: watch::channel(None).0,
            connections: Mutex::new(0),
        });
        // The pumps own the output pipes; the exit waiter looks into them (FIONREAD) through
        // duplicates, to tell a lingering stream from one with output still coming.
        let stdout_probe = stdout.try_clone()?;
        let stderr_probe = stderr.as_ref().map(|e| e.try_clone()).transpose()?;
        self.runtime.spawn(stdout_stream.pump(stdout));
        if let Some(pipe) = stderr {
            self.runtime.spawn(stderr_stream.pump(pipe));
        }
        let table = self.clone();
        let waiter = entry.clone();
        self.runtime.spawn(async move {
            let status = read_exit_status(&exit_pipe).await;
            drop(exit_pipe);
            let exited = Instant::now();
            on_exit();
            // A process connection answers the status once its attached streams are drained
            // (`wait_exit_and_drained`). A background child may hold an output pipe open long
            // after the exit: once such a stream has been idle for the linger time it ends.
            waiter.exit.send_replace(Some(status));
            let retire_at = exited + RETAIN_AFTER_EXIT;
            loop {
                let now = Instant::now();
                let out_new = waiter.stdout.unread_in(pipe_bytes(&stdout_probe)) > 0;
                let err_new = stderr_probe
                    .as_ref()
                    .is_some_and(|p| waiter.stderr.unread_in(pipe_bytes(p)) > 0);
                let out_done = waiter.stdout.finish_if_lingering(out_new, exited, now);
                let err_done = waiter.stderr.finish_if_lingering(err_new, exited, now);
                if (out_done && err_done) || now >= retire_at {
                    break;
                }
                // Quick while a client waits for the end; rarely while nobody is attached.
                let attached = waiter.stdout.has_readers() || waiter.stderr.has_readers();
                let pause = if attached { 20 } else { 250 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            drop((stdout_probe, stderr_probe));
            tokio::time::sleep_until(retire_at.into()).await;
            table.retire(&waiter).await;
        });

        let mut table = self.lock();
        table
            .processes
            .insert((handle.to_string(), process_id.to_string()), entry.clone());
        Ok(entry)
    }

    pub fn get(&self, handle: &str, process_id: &str) -> Option<Arc<ProcessEntry>> {
        self.lock()
            .processes
            .get(&(handle.to_string(), process_id.to_string()))
            .cloned()
    }

    /// A new stream id for a process connection's stdout/stderr attaches.
    pub fn new_stream(&self, entry: &Arc<ProcessEntry>) -> String {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed).to_string();
        self.lock().streams.insert(id.clone(), entry.clone());
        id
    }

    pub fn stream(&self, stream_id: &str) -> Option<Arc<ProcessEntry>> {
        self.lock().streams.get(stream_id).cloned()
    }

    /// The retention after exit is over: the process is forgotten here and by its keeper.
    async fn retire(&self, entry: &Arc<ProcessEntry>) {
        let removed = {
            let mut table = self.lock();
            let key = (entry.handle.clone(), entry.id.clone());
            table.streams.retain(|_, e| !Arc::ptr_eq(e, entry));
            if table
                .processes
                .get(&key)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                table.processes.remove(&key);
                true
            } else {
                false
            }
        };
        if removed {
            let released = keeper_call(&self.host, &entry.handle, &entry.id, |host, handle, id| {
                host.release_process(handle, id)
            });
            if let Err(e) = released.await {
                debug!(error = %e, "releasing an exited process (its container may be gone)");
            }
        }
    }

    /// A container is gone: its processes are no longer attachable.
    pub fn forget_container(&self, handle: &str) {
        let mut table = self.lock();
        table.processes.retain(|(h, _), _| h != handle);
        table.streams.retain(|_, e| e.handle != handle);
    }

    /// Processes known (running or recently exited), for diagnostics.
    pub fn len(&self) -> usize {
        self.lock().processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The exit status from an exit pipe: four bytes, or the end without them when the keeper
/// is gone (the container was destroyed with the process in it).
async fn read_exit_status(pipe: &AsyncFd<OwnedFd>) -> i32 {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        let read = pipe
            .async_io(Interest::READABLE, |fd| {
                nix::unistd::read(fd, &mut buf[got..]).map_err(std::io::Error::from)
            })
            .await;
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    decode_exit_status(&buf[..got])
}

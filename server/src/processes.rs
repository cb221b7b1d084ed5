//! The server's table of processes: stdio and exit status by (handle, process id), and the
//! stream ids that stdout/stderr attaches name. Processes stay findable after their client goes
//! away, and for [`RETAIN_AFTER_EXIT`] after they exit, so that Attach works by id.

use crate::output::{OutputBuffer, Reader};
use crate::routes::StreamKind;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use trellis_core::api::{Signal, WindowSize};
use trellis_os::{HostResult, Process, Spawned};

/// How long an exited process (its exit status and any unread output) stays attachable.
pub const RETAIN_AFTER_EXIT: Duration = Duration::from_secs(60);

/// Stdin messages queued for the process before the connection stops reading more.
const STDIN_QUEUE: usize = 16;

pub struct ProcessEntry {
    pub handle: String,
    pub id: String,
    process: Arc<dyn Process>,
    stdin: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    stdout: Arc<OutputBuffer>,
    stderr: Arc<OutputBuffer>,
    /// The exit status, set once the process has exited and its output has ended.
    exit: watch::Sender<Option<i32>>,
    connections: Mutex<usize>,
}

impl ProcessEntry {
    pub fn buffer(&self, kind: StreamKind) -> &Arc<OutputBuffer> {
        match kind {
            StreamKind::Stdout => &self.stdout,
            StreamKind::Stderr => &self.stderr,
        }
    }

    pub fn subscribe(&self, kind: StreamKind) -> Reader {
        self.buffer(kind).subscribe()
    }

    /// Queues stdin data; false when stdin is already closed (or the process stopped reading).
    pub async fn write_stdin(&self, data: Vec<u8>) -> bool {
        let sender = self.stdin.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match sender {
            Some(sender) => sender.send(data).await.is_ok(),
            None => false,
        }
    }

    /// Stdin EOF: the process reads the end once the queued data is written.
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub fn signal(&self, signal: Signal) -> HostResult<()> {
        self.process.signal(signal)
    }

    pub fn resize(&self, size: WindowSize) -> HostResult<()> {
        self.process.resize(size)
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
}

impl ProcessTable {
    pub fn new(runtime: tokio::runtime::Handle) -> Arc<ProcessTable> {
        Arc::new(ProcessTable {
            table: Mutex::default(),
            next_stream: AtomicU64::new(1),
            runtime,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over a freshly spawned process: pumps its output, feeds its stdin, waits for it.
    /// `on_exit` runs (on a plain thread) as soon as the process has exited.
    pub fn register(
        self: &Arc<Self>,
        handle: &str,
        process_id: &str,
        spawned: Spawned,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Arc<ProcessEntry>> {
        let Spawned { process, stdio } = spawned;
        let stdout = OutputBuffer::new();
        let stderr = if stdio.stderr.is_some() {
            OutputBuffer::new()
        } else {
            OutputBuffer::finished()
        };
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(STDIN_QUEUE);
        let entry = Arc::new(ProcessEntry {
            handle: handle.to_string(),
            id: process_id.to_string(),
            process: process.clone(),
            stdin: Mutex::new(Some(stdin_tx)),
            stdout: stdout.clone(),
            stderr: stderr.clone(),
            exit: watch::channel(None).0,
            connections: Mutex::new(0),
        });

        let name = |what: &str| format!("proc-{what}");
        let mut stdin = stdio.stdin;
        std::thread::Builder::new()
            .name(name("stdin"))
            .spawn(move || {
                while let Some(data) = stdin_rx.blocking_recv() {
                    if stdin.write_all(&data).and_then(|()| stdin.flush()).is_err() {
                        break;
                    }
                }
                // Dropping the writer is the process's EOF.
            })?;
        let out = stdout.clone();
        let stdout_pipe = stdio.stdout;
        std::thread::Builder::new()
            .name(name("stdout"))
            .spawn(move || out.pump(stdout_pipe))?;
        if let Some(pipe) = stdio.stderr {
            let err = stderr.clone();
            std::thread::Builder::new()
                .name(name("stderr"))
                .spawn(move || err.pump(pipe))?;
        }
        let waiter_entry = entry.clone();
        let table = self.clone();
        std::thread::Builder::new()
            .name(name("wait"))
            .spawn(move || {
                let status = process.wait();
                let exited = Instant::now();
                on_exit();
                // Deliver the status only once the output has ended, so that nothing written
                // before the exit is lost to a client that stops at the status.
                loop {
                    let now = Instant::now();
                    let out_done = waiter_entry.stdout.finish_if_lingering(exited, now);
                    let err_done = waiter_entry.stderr.finish_if_lingering(exited, now);
                    if out_done && err_done {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                waiter_entry.exit.send_replace(Some(status));
                let runtime = table.runtime.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(RETAIN_AFTER_EXIT).await;
                    table.remove(&waiter_entry);
                });
            })?;

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

    fn remove(&self, entry: &Arc<ProcessEntry>) {
        let mut table = self.lock();
        let key = (entry.handle.clone(), entry.id.clone());
        if table
            .processes
            .get(&key)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            table.processes.remove(&key);
        }
        table.streams.retain(|_, e| !Arc::ptr_eq(e, entry));
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

//! A process started with `Container::run` or reached with `Container::attach`: its process
//! connection (stdin, signals, resizes out; the exit status in) and its stdout/stderr attaches.

use crate::error::Error;
use crate::transport::{Hijacked, Target};
use bytes::Bytes;
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use trellis_core::api::{Signal, TtySpec};
use trellis_proto::messages::ProcessPayload;
use trellis_proto::stream::{encode, PayloadDecoder};
use trellis_proto::{Route, StreamKind};

/// The client's ends of a process's standard streams; `None` means "not wanted" (no stdin is
/// ever sent; no attach is opened for that output).
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
}

/// Stdin is sent in pieces of at most this many bytes (as the Go client does).
const STDIN_CHUNK: usize = 32 * 1024;

pub struct Process {
    id: String,
    stream_id: String,
    control: mpsc::Sender<Vec<u8>>,
    outcome: Option<oneshot::Receiver<Result<i32, String>>>,
    finished: Option<Result<i32, String>>,
    copies: Vec<JoinHandle<std::io::Result<()>>>,
    tasks: Vec<JoinHandle<()>>,
    attach_error: Option<String>,
}

impl Process {
    pub(crate) async fn start(
        target: Target,
        handle: String,
        hijacked: Hijacked,
        io: ProcessIo,
    ) -> Result<Process, Error> {
        let Hijacked {
            mut stream,
            buffered,
        } = hijacked;
        let mut decoder = PayloadDecoder::new();
        decoder.push(&buffered);
        let mut chunk = vec![0u8; 64 * 1024];
        let handshake = loop {
            match decoder.next_message() {
                Ok(Some(message)) => break message,
                Ok(None) => {}
                Err(e) => return Err(Error::Process(format!("decode failed: {e}"))),
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::Process(
                    "decode failed: EOF before the handshake".into(),
                ));
            }
            decoder.push(&chunk[..n]);
        };
        let id = handshake.process_id;
        let stream_id = handshake.stream_id;
        let (mut reader, mut writer) = tokio::io::split(stream);

        let (control, mut outgoing) = mpsc::channel::<Vec<u8>>(16);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            while let Some(bytes) = outgoing.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // Keep the write half open (dropping it would not close the socket anyway while
            // the read half lives); the connection closes when the reader ends.
            std::future::pending::<()>().await;
        }));

        let (outcome_tx, outcome) = oneshot::channel();
        tasks.push(tokio::spawn(async move {
            let result = loop {
                match decoder.next_message() {
                    Ok(Some(message)) => {
                        if let Some(error) = message.error {
                            break Err(format!("process error: {error}"));
                        }
                        if let Some(status) = message.exit_status {
                            break Ok(status);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => break Err(format!("decode failed: {e}")),
                }
                match reader.read(&mut chunk).await {
                    Ok(0) => break Err("decode failed: EOF".to_string()),
                    Ok(n) => decoder.push(&chunk[..n]),
                    Err(e) => break Err(format!("decode failed: {e}")),
                }
            };
            let _ = outcome_tx.send(result);
        }));

        if let Some(mut stdin) = io.stdin {
            let control = control.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; STDIN_CHUNK];
                loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) => {
                            let eof = ProcessPayload {
                                process_id: id.clone(),
                                source: Some(0),
                                ..Default::default()
                            };
                            let _ = control.send(encode(&eof)).await;
                            return;
                        }
                        Ok(n) => {
                            let data = ProcessPayload {
                                process_id: id.clone(),
                                source: Some(0),
                                data: Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                                ..Default::default()
                            };
                            if control.send(encode(&data)).await.is_err() {
                                return;
                            }
                        }
                        // A failing reader sends no EOF (as the Go client does).
                        Err(_) => return,
                    }
                }
            }));
        }

        let mut process = Process {
            id,
            stream_id,
            control,
            outcome: Some(outcome),
            finished: None,
            copies: Vec::new(),
            tasks,
            attach_error: None,
        };
        for (sink, kind) in [
            (io.stdout, StreamKind::Stdout),
            (io.stderr, StreamKind::Stderr),
        ] {
            let Some(sink) = sink else { continue };
            let route = Route::StreamAttach {
                handle: handle.clone(),
                process_id: process.id.clone(),
                stream_id: process.stream_id.clone(),
                kind,
            };
            match target.hijack(route.method(), &route.target(), None).await {
                Ok(attached) => process.copies.push(tokio::spawn(copy_out(attached, sink))),
                Err(e) => {
                    let name = kind.name();
                    process.attach_error = Some(format!("failed to hijack stream {name}: {e}"));
                    break;
                }
            }
        }
        Ok(process)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Waits for the exit status and for stdout and stderr to be fully delivered.
    pub async fn wait(&mut self) -> Result<i32, Error> {
        if let Some(e) = &self.attach_error {
            return Err(Error::Process(e.clone()));
        }
        if self.finished.is_none() {
            let outcome = match self.outcome.take() {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err("the process connection ended".into())),
                None => Err("the process connection ended".into()),
            };
            for copy in self.copies.drain(..) {
                match copy.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.finished = Some(Err(format!("copying output: {e}")));
                    }
                    Err(e) => self.finished = Some(Err(format!("copying output: {e}"))),
                }
            }
            if self.finished.is_none() {
                self.finished = Some(outcome);
            }
        }
        match self.finished.as_ref().expect("set above") {
            Ok(status) => Ok(*status),
            Err(e) => Err(Error::Process(e.clone())),
        }
    }

    async fn send(&self, payload: ProcessPayload) -> Result<(), Error> {
        self.control
            .send(encode(&payload))
            .await
            .map_err(|_| Error::Process("the process connection is closed".into()))
    }

    pub async fn signal(&self, signal: Signal) -> Result<(), Error> {
        self.send(ProcessPayload {
            process_id: self.id.clone(),
            signal: Some(signal.to_wire()),
            ..Default::default()
        })
        .await
    }

    pub async fn set_tty(&self, tty: TtySpec) -> Result<(), Error> {
        self.send(ProcessPayload {
            process_id: self.id.clone(),
            tty: Some(tty),
            ..Default::default()
        })
        .await
    }
}

impl Drop for Process {
    /// Closes every connection of this process; the process itself keeps running.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for copy in &self.copies {
            copy.abort();
        }
    }
}

async fn copy_out(
    attached: Hijacked,
    mut sink: Box<dyn AsyncWrite + Send + Unpin>,
) -> std::io::Result<()> {
    let Hijacked {
        mut stream,
        buffered,
    } = attached;
    sink.write_all(&buffered).await?;
    tokio::io::copy(&mut stream, &mut sink).await?;
    sink.flush().await
}

/// A response body as an `AsyncRead` (StreamOut's tar stream).
pub(crate) struct BodyReader {
    body: Incoming,
    current: Bytes,
}

impl BodyReader {
    pub(crate) fn new(body: Incoming) -> BodyReader {
        BodyReader {
            body,
            current: Bytes::new(),
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use hyper::body::Body;
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                let piece = self.current.split_to(n);
                buf.put_slice(&piece);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.current = data;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        e.to_string(),
                    )))
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

//! The four routes that take the connection over after their response head (Run, Attach,
//! Stdout, Stderr), served on the raw socket: see `garden-protocol.md` §6.

use crate::api::{State, BODY_TIMEOUT};
use crate::driver::LeaseGuard;
use crate::head::{decode_chunked, BodyFraming, RequestHead};
use crate::processes::ProcessEntry;
use crate::reply::{hijack_error, hijack_head, json_bytes, ApiError};
use crate::BoxIo;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn, Instrument};
use trellis_core::api::Signal;
use trellis_core::{Command, Error, Reply};
use trellis_proto::body::{self as wire, BadRequest, MAX_JSON_BODY};
use trellis_proto::messages::ProcessPayload;
use trellis_proto::stream::PayloadDecoder;
use trellis_proto::{Route, StreamKind};

/// Serves one hijacked request. `buffered` holds whatever was read past the request head.
pub async fn serve(
    state: Arc<State>,
    io: BoxIo,
    head: RequestHead,
    route: Route,
    buffered: Vec<u8>,
) {
    let id = state.request_id();
    let span = tracing::info_span!(
        "request",
        id,
        route = route.name(),
        handle = route.handle().unwrap_or("")
    );
    async move {
        match route {
            Route::Run { handle } => run(&state, io, head, handle, buffered).await,
            Route::Attach { handle, process_id } => {
                attach(&state, io, handle, process_id, buffered).await
            }
            Route::StreamAttach {
                stream_id, kind, ..
            } => stream_attach(&state, io, &stream_id, kind).await,
            other => warn!(route = other.name(), "not a hijack route"),
        }
    }
    .instrument(span)
    .await
}

/// How much of a client's messages on a process connection is read at a time. The buffer
/// lives as long as the connection, which mostly idles: with a thousand attached processes a
/// 64 KiB one was most of the server's memory, and stdin's rate does not need it.
const CLIENT_READ_BYTES: usize = 8 * 1024;

async fn fail(mut io: BoxIo, error: ApiError) {
    warn!(status = error.status(), kind = error.kind_name(), error = %error, "request failed");
    let _ = io.write_all(&hijack_error(&error)).await;
    let _ = io.shutdown().await;
}

/// Reads a bounded request body (Content-Length or chunked) from `buffered` and the socket;
/// what follows it stays in `buffered`.
async fn read_body(
    io: &mut (impl AsyncRead + Unpin),
    buffered: &mut Vec<u8>,
    framing: BodyFraming,
) -> Result<Vec<u8>, ApiError> {
    let read = async {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match framing {
                BodyFraming::None => return Ok(Vec::new()),
                BodyFraming::Length(n) => {
                    if n > MAX_JSON_BODY as u64 {
                        return Err(BadRequest::TooLarge {
                            limit: MAX_JSON_BODY,
                        }
                        .into());
                    }
                    if buffered.len() as u64 >= n {
                        return Ok(buffered.drain(..n as usize).collect());
                    }
                }
                BodyFraming::Chunked => {
                    if let Some((body, used)) = decode_chunked(buffered, MAX_JSON_BODY)? {
                        buffered.drain(..used);
                        return Ok(body);
                    }
                }
            }
            let n = io
                .read(&mut chunk)
                .await
                .map_err(|e| BadRequest::Other(format!("reading request body: {e}")))?;
            if n == 0 {
                return Err(BadRequest::Other("request body ended early".into()).into());
            }
            buffered.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| ApiError::Timeout)?
}

async fn run(
    state: &State,
    mut io: BoxIo,
    head: RequestHead,
    handle: String,
    mut buffered: Vec<u8>,
) {
    let spec = match read_body(&mut io, &mut buffered, head.body).await {
        Ok(body) => match wire::process_spec(&body) {
            Ok(spec) => spec,
            Err(e) => return fail(io, e.into()).await,
        },
        Err(e) => return fail(io, e).await,
    };
    // Never the arguments or environment: they may carry secrets.
    info!(path = %spec.path, tty = spec.tty.is_some(), "run");
    let command = Command::Run {
        handle: handle.clone(),
        spec: Box::new(spec),
    };
    let (process_id, lease) = match state.core.call(command).await {
        Ok(Reply::ProcessStarted { process_id, lease }) => (process_id, lease),
        Ok(other) => {
            let e = ApiError::Internal(format!("unexpected reply from the core: {other:?}"));
            return fail(io, e).await;
        }
        Err(e) => return fail(io, e.into()).await,
    };
    let lease = state.core.lease_guard(lease);
    let Some(entry) = state.processes.get(&handle, &process_id) else {
        let e = ApiError::Internal(format!(
            "process {process_id} started but is not in the table"
        ));
        return fail(io, e).await;
    };
    tracing::Span::current().record("handle", handle.as_str());
    process_connection(state, io, 201, entry, lease, buffered).await;
}

async fn attach(state: &State, io: BoxIo, handle: String, process_id: String, buffered: Vec<u8>) {
    let lease = match state
        .core
        .call(Command::Acquire {
            handle: handle.clone(),
        })
        .await
    {
        Ok(Reply::Leased(lease)) => state.core.lease_guard(lease),
        Ok(other) => {
            let e = ApiError::Internal(format!("unexpected reply from the core: {other:?}"));
            return fail(io, e).await;
        }
        Err(e) => return fail(io, e.into()).await,
    };
    let Some(entry) = state.processes.get(&handle, &process_id) else {
        drop(lease);
        return fail(io, Error::ProcessNotFound { process_id }.into()).await;
    };
    process_connection(state, io, 200, entry, lease, buffered).await;
}

/// The process connection after its head: the handshake, then stdin/signal/resize messages in
/// and the final exit status out.
async fn process_connection(
    state: &State,
    io: BoxIo,
    status: u16,
    entry: Arc<ProcessEntry>,
    lease: LeaseGuard,
    buffered: Vec<u8>,
) {
    let stream_id = state.processes.new_stream(&entry);
    let (mut reader, mut writer) = tokio::io::split(io);
    let mut first = hijack_head(status, true);
    first.extend_from_slice(&json_bytes(&ProcessPayload {
        process_id: entry.id.clone(),
        stream_id: stream_id.clone(),
        ..Default::default()
    }));
    if writer.write_all(&first).await.is_err() {
        debug!("client went away before the handshake");
        return;
    }
    debug!(process_id = %entry.id, stream_id, "process connection open");
    entry.connection_opened();

    let mut decoder = PayloadDecoder::new();
    decoder.push(&buffered);
    let exit = entry.wait_exit_and_drained();
    tokio::pin!(exit);
    let mut chunk = vec![0u8; CLIENT_READ_BYTES];
    let client_gone = 'serve: loop {
        loop {
            match decoder.next_message() {
                Ok(Some(message)) => handle_message(&entry, message).await,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "bad message on the process connection; treating it as a disconnect");
                    break 'serve true;
                }
            }
        }
        tokio::select! {
            status = &mut exit => {
                let done = json_bytes(&ProcessPayload {
                    process_id: entry.id.clone(),
                    exit_status: Some(status),
                    ..Default::default()
                });
                let _ = writer.write_all(&done).await;
                info!(process_id = %entry.id, exit_status = status, "process exited");
                break 'serve false;
            }
            read = reader.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break 'serve true,
                Ok(n) => decoder.push(&chunk[..n]),
            },
        }
    };
    let remaining = entry.connection_closed();
    if client_gone {
        info!(process_id = %entry.id, "client disconnected; the process keeps running");
        if remaining == 0 {
            entry.close_stdin().await;
        }
    }
    drop(lease);
    let mut io = reader.unsplit(writer);
    let _ = io.shutdown().await;
}

async fn handle_message(entry: &ProcessEntry, message: ProcessPayload) {
    if let Some(tty) = message.tty {
        if let Some(size) = tty.window_size {
            if let Err(e) = entry.resize(size).await {
                warn!(error = %e, "resizing the terminal failed");
            }
        }
    } else if message.source.is_some() {
        match message.data {
            Some(data) => {
                if !entry.write_stdin(data.into_bytes()).await {
                    debug!("stdin data after stdin was closed; dropped");
                }
            }
            None => entry.close_stdin().await,
        }
    } else if let Some(signal) = message.signal {
        match Signal::from_wire(signal) {
            Some(signal) => {
                info!(process_id = %entry.id, ?signal, "signal");
                if let Err(e) = entry.signal(signal).await {
                    warn!(error = %e, "signalling the process failed");
                }
            }
            None => warn!(signal, "unknown signal ignored"),
        }
    } else {
        debug!("process message with nothing to do ignored");
    }
}

async fn stream_attach(state: &State, io: BoxIo, stream_id: &str, kind: StreamKind) {
    let (mut reader, mut writer) = tokio::io::split(io);
    if writer.write_all(&hijack_head(200, false)).await.is_err() {
        return;
    }
    // An unknown or expired stream id: headers, then the end (as the reference server does).
    if let Some(entry) = state.processes.stream(stream_id) {
        debug!(process_id = %entry.id, stream = kind.name(), "attached");
        let mut output = entry.subscribe(kind);
        let mut probe = [0u8; 512];
        let mut sent = 0u64;
        let end = loop {
            tokio::select! {
                piece = output.next() => match piece {
                    Some(bytes) => {
                        if writer.write_all(&bytes).await.is_err() {
                            break "write failed";
                        }
                        // Only now may the output be taken off the pipe (see `output`).
                        output.delivered(bytes.len());
                        sent += bytes.len() as u64;
                    }
                    None => break "end of output",
                },
                // The client never sends on this connection; EOF or an error means it left.
                read = reader.read(&mut probe) => match read {
                    Ok(0) | Err(_) => break "client left",
                    Ok(_) => {}
                },
            }
        };
        debug!(process_id = %entry.id, stream = kind.name(), sent, end, "detached");
    }
    let mut io = reader.unsplit(writer);
    let _ = io.shutdown().await;
}

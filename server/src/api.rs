//! The plain (non-hijacked) routes, served through hyper: decode the request, send the core a
//! command, encode its reply. StreamIn and StreamOut move tar streams between the connection
//! and the host without buffering them whole.

use crate::driver::CoreHandle;
use crate::processes::ProcessTable;
use crate::reply::{empty_ok, error_response, ok, ApiError, Body};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};
use trellis_core::api::{CpuLimits, Limits};
use trellis_core::{Command, Error, Reply};
use trellis_os::{FilePath, Host, HostError};
use trellis_proto::body::{self as wire, BadRequest, MAX_JSON_BODY};
use trellis_proto::error::error_body;
use trellis_proto::messages::{
    ContainerInfoEntry, ContainerMetricsEntry, HandleBody, HandlesBody, PropertyValue,
};
use trellis_proto::{LimitKind, Route};

/// How long a client may take to send a request head, unless `--read-header-timeout` says.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a JSON body, or between two pieces of a tar stream.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a request handler needs.
pub struct State {
    pub core: CoreHandle,
    pub host: Arc<dyn Host>,
    pub processes: Arc<ProcessTable>,
    /// How long a client may take to send a request head (`None`: no limit).
    pub header_timeout: Option<std::time::Duration>,
    next_request: AtomicU64,
}

impl State {
    pub fn new(core: CoreHandle, host: Arc<dyn Host>, processes: Arc<ProcessTable>) -> State {
        State {
            core,
            host,
            processes,
            header_timeout: Some(HEADER_TIMEOUT),
            next_request: AtomicU64::new(1),
        }
    }

    /// A fresh id for a request's log lines.
    pub fn request_id(&self) -> u64 {
        self.next_request.fetch_add(1, Ordering::Relaxed)
    }
}

/// hyper's entry point for one request.
pub async fn serve(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let id = state.request_id();
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let vcap = req
        .headers()
        .get("x-vcap-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let route = match Route::parse(&method, &target) {
        Ok(route) => route,
        Err(e) => {
            let span = tracing::info_span!("request", id, route = "", handle = "");
            let _enter = span.enter();
            let error = ApiError::from(e);
            info!(%method, path = target.split('?').next().unwrap_or(""), status = error.status(), error = %error, "request refused");
            return Ok(error_response(&error));
        }
    };
    let span = tracing::info_span!(
        "request",
        id,
        route = route.name(),
        handle = route.handle().unwrap_or("")
    );
    async move {
        let name = route.name();
        let response = match handle(&state, route, req).await {
            Ok(response) => response,
            Err(error) => {
                warn!(status = error.status(), kind = error.kind_name(), error = %error, "request failed");
                error_response(&error)
            }
        };
        info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            vcap_request_id = %vcap,
            "{name}"
        );
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Reads a JSON body of at most [`MAX_JSON_BODY`] bytes.
async fn json_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = Limited::new(req.into_body(), MAX_JSON_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BadRequest::TooLarge {
                    limit: MAX_JSON_BODY,
                }
                .into())
            } else {
                Err(BadRequest::Other(format!("reading request body: {e}")).into())
            }
        }
    }
}

fn unexpected(reply: Reply) -> ApiError {
    ApiError::Internal(format!("unexpected reply from the core: {reply:?}"))
}

/// The CPU limits reported by CurrentCPULimits, as gdn reports them: the shares in
/// `limit_in_shares` (on cgroup v2 the `cpu.weight` they convert to) and `weight` 0.
pub fn reported_cpu_limits(limits: &Limits, cgroup_v2: bool) -> CpuLimits {
    limits.cpu_limits.reported(cgroup_v2)
}

async fn handle(
    state: &State,
    route: Route,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let core = &state.core;
    match route {
        Route::Ping => {
            if core.is_closed() {
                return Err(ApiError::ServiceUnavailable(
                    "the server is shutting down".into(),
                ));
            }
            Ok(empty_ok())
        }
        Route::Capacity => match core.call(Command::Capacity).await? {
            Reply::Capacity(c) => Ok(ok(&c)),
            other => Err(unexpected(other)),
        },
        Route::List { filter } => match core.call(Command::List { filter }).await? {
            Reply::Handles(handles) => Ok(ok(&HandlesBody { handles })),
            other => Err(unexpected(other)),
        },
        Route::Create => {
            let spec = wire::container_spec(&json_body(req).await?)?;
            match core.call(Command::Create(Box::new(spec))).await? {
                Reply::Created { handle } => {
                    tracing::Span::current().record("handle", handle.as_str());
                    info!(handle, "created");
                    Ok(ok(&HandleBody { handle }))
                }
                other => Err(unexpected(other)),
            }
        }
        Route::Info { handle } => match core.call(Command::Info { handle }).await? {
            Reply::Info(info) => Ok(ok(&*info)),
            other => Err(unexpected(other)),
        },
        Route::BulkInfo { handles } => match core.call(Command::BulkInfo { handles }).await? {
            Reply::BulkInfo(entries) => {
                let body: BTreeMap<String, ContainerInfoEntry> = entries
                    .into_iter()
                    .map(|(handle, result)| {
                        let entry = match result {
                            Ok(info) => ContainerInfoEntry { info, err: None },
                            Err(e) => ContainerInfoEntry {
                                info: Default::default(),
                                err: Some(error_body(&e)),
                            },
                        };
                        (handle, entry)
                    })
                    .collect();
                Ok(ok(&body))
            }
            other => Err(unexpected(other)),
        },
        Route::BulkMetrics { handles } => {
            match core.call(Command::BulkMetrics { handles }).await? {
                Reply::BulkMetrics(entries) => {
                    let body: BTreeMap<String, ContainerMetricsEntry> = entries
                        .into_iter()
                        .map(|(handle, result)| {
                            let entry = match result {
                                Ok(metrics) => ContainerMetricsEntry { metrics, err: None },
                                Err(e) => ContainerMetricsEntry {
                                    metrics: Default::default(),
                                    err: Some(error_body(&e)),
                                },
                            };
                            (handle, entry)
                        })
                        .collect();
                    Ok(ok(&body))
                }
                other => Err(unexpected(other)),
            }
        }
        Route::Destroy { handle } => done(core.call(Command::Destroy { handle }).await?),
        Route::Stop { handle } => {
            let stop = wire::stop_request(&json_body(req).await?)?;
            done(
                core.call(Command::Stop {
                    handle,
                    kill: stop.kill,
                })
                .await?,
            )
        }
        Route::StreamIn {
            handle,
            destination,
            user,
        } => stream_in(state, handle, destination, user, req).await,
        Route::StreamOut {
            handle,
            source,
            user,
        } => stream_out(state, handle, source, user).await,
        Route::CurrentLimits { handle, kind } => {
            match core.call(Command::CurrentLimits { handle }).await? {
                Reply::Limits(limits) => Ok(match kind {
                    LimitKind::Bandwidth => ok(&limits.bandwidth_limits),
                    LimitKind::Cpu => ok(&reported_cpu_limits(&limits, state.host.cgroup_v2())),
                    LimitKind::Disk => ok(&limits.disk_limits),
                    LimitKind::Memory => ok(&limits.memory_limits),
                }),
                other => Err(unexpected(other)),
            }
        }
        Route::NetIn { handle } => {
            let body = wire::net_in(&json_body(req).await?)?;
            let command = Command::NetIn {
                handle,
                host_port: body.host_port,
                container_port: body.container_port,
            };
            match core.call(command).await? {
                Reply::NetIn(response) => Ok(ok(&response)),
                other => Err(unexpected(other)),
            }
        }
        Route::NetOut { handle } => {
            let rule = wire::net_out_rule(&json_body(req).await?)?;
            let rules = vec![rule];
            done(core.call(Command::NetOut { handle, rules }).await?)
        }
        Route::BulkNetOut { handle } => {
            let rules = wire::net_out_rules(&json_body(req).await?)?;
            done(core.call(Command::NetOut { handle, rules }).await?)
        }
        Route::SetGraceTime { handle } => {
            let grace_time = wire::grace_time(&json_body(req).await?)?;
            done(
                core.call(Command::SetGraceTime { handle, grace_time })
                    .await?,
            )
        }
        Route::Properties { handle } => match core.call(Command::Properties { handle }).await? {
            Reply::Properties(properties) => Ok(ok(&properties)),
            other => Err(unexpected(other)),
        },
        Route::Property { handle, key } => {
            match core.call(Command::Property { handle, key }).await? {
                Reply::Property(value) => Ok(ok(&PropertyValue { value })),
                other => Err(unexpected(other)),
            }
        }
        Route::SetProperty { handle, key } => {
            let value = wire::property_value(&json_body(req).await?)?.value;
            done(
                core.call(Command::SetProperty { handle, key, value })
                    .await?,
            )
        }
        Route::RemoveProperty { handle, key } => {
            done(core.call(Command::RemoveProperty { handle, key }).await?)
        }
        Route::Metrics { handle } => match core.call(Command::Metrics { handle }).await? {
            Reply::Metrics(metrics) => Ok(ok(&*metrics)),
            other => Err(unexpected(other)),
        },
        Route::Run { .. } | Route::Attach { .. } | Route::StreamAttach { .. } => {
            Err(BadRequest::Other(
                "process routes must be the first request on a new connection".into(),
            )
            .into())
        }
    }
}

fn done(reply: Reply) -> Result<Response<Body>, ApiError> {
    match reply {
        Reply::Done => Ok(empty_ok()),
        other => Err(unexpected(other)),
    }
}

/// Takes a lease on `handle` (pausing its grace timer) for a long request.
async fn acquire(state: &State, handle: &str) -> Result<crate::driver::LeaseGuard, ApiError> {
    match state
        .core
        .call(Command::Acquire {
            handle: handle.to_string(),
        })
        .await?
    {
        Reply::Leased(lease) => Ok(state.core.lease_guard(lease)),
        other => Err(unexpected(other)),
    }
}

fn host_error(e: HostError) -> ApiError {
    ApiError::Core(Error::Host(e.into()))
}

async fn stream_in(
    state: &State,
    handle: String,
    destination: String,
    user: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let lease = acquire(state, &handle).await?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let host = state.host.clone();
    let extract = tokio::task::spawn_blocking(move || {
        let mut reader = ChannelReader {
            rx,
            current: Bytes::new(),
        };
        let to = FilePath {
            handle: &handle,
            path: &destination,
            user: &user,
        };
        host.stream_in(to, &mut reader)
    });
    // Feed the body to the extracting thread piece by piece; it never sits in memory whole.
    let feed = async move {
        let mut body = req.into_body();
        loop {
            let frame = match tokio::time::timeout(BODY_TIMEOUT, body.frame()).await {
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "timed out waiting for the tar stream",
                )),
                Ok(None) => return,
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Ok(data),
                    Err(_) => continue,
                },
                Ok(Some(Err(e))) => Err(std::io::Error::other(format!(
                    "reading the tar stream: {e}"
                ))),
            };
            let failed = frame.is_err();
            if tx.send(frame).await.is_err() || failed {
                return;
            }
        }
    };
    let feeding = tokio::spawn(feed);
    let result = extract
        .await
        .map_err(|e| ApiError::Internal(format!("stream-in worker failed: {e}")))?;
    feeding.abort();
    drop(lease);
    // The wording gdn uses (GATS matches on it).
    result.map_err(|e| {
        ApiError::Core(Error::Host(trellis_core::EffectError::new(
            e.effect_kind(),
            format!("error streaming in: {e}"),
        )))
    })?;
    Ok(empty_ok())
}

/// The tar stream of a request body, read by the host on a blocking thread.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(bytes)) => self.current = bytes,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Pieces of a tar stream written by the host, sent to the response body.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, HostError>>,
    pending: BytesMut,
}

const STREAM_CHUNK: usize = 64 * 1024;

impl ChannelWriter {
    fn send_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = self.pending.split().freeze();
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(data);
        if self.pending.len() >= STREAM_CHUNK {
            self.send_pending()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_pending()
    }
}

/// A tar response body fed by the host's thread; holds the request's lease (the container's
/// grace timer stays paused) until hyper drops it.
struct ChannelBody {
    first: Option<Bytes>,
    rx: mpsc::Receiver<Result<Bytes, HostError>>,
    _lease: crate::driver::LeaseGuard,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            // An error after bytes went out: end the response without its proper end, so the
            // client's read fails instead of seeing a short archive.
            Poll::Ready(Some(Err(e))) => {
                warn!(error = %e, "stream-out failed mid-stream");
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

async fn stream_out(
    state: &State,
    handle: String,
    source: String,
    user: String,
) -> Result<Response<Body>, ApiError> {
    let lease = acquire(state, &handle).await?;
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, HostError>>(8);
    let host = state.host.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            tx: tx.clone(),
            pending: BytesMut::new(),
        };
        let from = FilePath {
            handle: &handle,
            path: &source,
            user: &user,
        };
        let result = host.stream_out(from, &mut writer).and_then(|()| {
            writer
                .flush()
                .map_err(|e| HostError::io("sending the tar stream", e))
        });
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let first = match rx.recv().await {
        // Finished without a byte.
        None => Bytes::new(),
        Some(Err(e)) => return Err(host_error(e)),
        Some(Ok(chunk)) => chunk,
    };
    let body = ChannelBody {
        first: Some(first),
        rx,
        _lease: lease,
    };
    let mut response = Response::new(BodyExt::boxed(body));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-tar"),
    );
    Ok(response)
}

//! `trellis server`: listeners, per-connection dispatch, startup recovery and shutdown.

use crate::api::{self, State};
use crate::config::{Backend, ServerArgs};
use crate::driver::Driver;
use crate::head::{parse_head, HeadError};
use crate::processes::ProcessTable;
use crate::reply::{closing_error, ApiError};
use crate::{BoxIo, Rewind};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tracing::{debug, error, info, warn};
use trellis_os::Host;
use trellis_proto::Route;

/// How long shutdown waits for in-flight plain requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("starting the {backend} backend: {source}")]
    Host {
        backend: &'static str,
        #[source]
        source: trellis_os::HostError,
    },
    #[error("invalid id mapping flags: {0}")]
    IdMapping(#[from] trellis_os::linux::security::userns::IdMapError),
    #[error("invalid --network-pool: {0}")]
    NetworkPool(#[from] trellis_core::network::PoolForbidden),
    #[error(transparent)]
    Locked(#[from] trellis_os::linux::server_lock::LockError),
    #[error("listening on {what}: {source}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn make_host(args: &ServerArgs) -> Result<Arc<dyn Host>, StartError> {
    match args.backend {
        Backend::Fake => {
            warn!("backend: FAKE (in-memory simulated OS; no real containers or processes)");
            Ok(Arc::new(trellis_fake::FakeHost::new()))
        }
        Backend::Linux => {
            info!("backend: linux");
            trellis_os::LinuxHost::new(args.linux_config()?)
                .map(|h| Arc::new(h) as Arc<dyn Host>)
                .map_err(|source| StartError::Host {
                    backend: "linux",
                    source,
                })
        }
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Fake => "fake",
        Backend::Linux => "linux",
    }
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(mut args: ServerArgs) -> Result<(), StartError> {
    // Held until the process ends: no second server, and no `trellis cleanup`, on these
    // directories meanwhile.
    let _directories = match args.backend {
        Backend::Linux => {
            let layout = args.layout();
            let lock = trellis_os::linux::server_lock::ServerLock::acquire(&layout)?;
            // Ours alone now: what a crash left half-written can go.
            match trellis_os::linux::temp_files::remove_leftovers(&layout) {
                Ok(0) => {}
                Ok(removed) => info!(removed, "removed temporary files a crash left"),
                Err(e) => warn!(error = %e, "removing temporary files a crash left"),
            }
            Some(lock)
        }
        Backend::Fake => None,
    };
    // Before the host: a network plugin's net-in is given it.
    if args.external_ip.is_none() && args.backend == Backend::Linux {
        // As gdn: without --external-ip, the address of the interface holding the default route.
        match trellis_os::linux::network::detect_external_ip() {
            Ok(Some(ip)) => {
                info!(%ip, "external ip detected");
                args.external_ip = Some(ip);
            }
            Ok(None) => warn!("no default route: ExternalIP stays empty (see --external-ip)"),
            Err(e) => warn!(error = %e, "detecting the external ip failed (see --external-ip)"),
        }
    }
    let host = make_host(&args)?;
    if args.destroy_containers_on_startup {
        crate::startup::destroy_all_containers(&*host).map_err(|source| StartError::Host {
            backend: backend_name(args.backend),
            source,
        })?;
    }
    let mut core_config = args.core_config();
    if args.backend == Backend::Linux {
        core_config.host_networks =
            trellis_os::linux::network::host_networks().map_err(|source| StartError::Host {
                backend: "linux",
                source,
            })?;
        info!(networks = ?core_config.host_networks, "host networks (no container subnet may overlap them)");
    }
    core_config.validate()?;
    let processes = ProcessTable::new(tokio::runtime::Handle::current(), host.clone());
    let (driver, core) =
        Driver::start(core_config, host.clone(), processes.clone()).map_err(|source| {
            StartError::Host {
                backend: backend_name(args.backend),
                source,
            }
        })?;
    tokio::spawn(driver.run());
    tokio::spawn(crate::alloc_stats::release_free_pages_after_churn());
    let mut state = State::new(core, host, processes);
    // As gdn: 0 is no limit.
    state.header_timeout = Some(args.read_header_timeout).filter(|t| !t.is_zero());
    let state = Arc::new(state);

    let graceful = Arc::new(GracefulShutdown::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut acceptors = Vec::new();
    if let Some(addr) = args.tcp_addr() {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen {
                what: addr.to_string(),
                source,
            })?;
        info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "listening (tcp)");
        acceptors.push(tokio::spawn(accept_tcp(
            listener,
            state.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(path) = &args.bind_socket {
        // A socket file left by an earlier run would make bind fail.
        match std::fs::remove_file(path) {
            Ok(()) => debug!(path = %path.display(), "removed stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StartError::Listen {
                    what: path.display().to_string(),
                    source,
                })
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| StartError::Listen {
            what: path.display().to_string(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(
            |source| StartError::Listen {
                what: path.display().to_string(),
                source,
            },
        )?;
        info!(path = %path.display(), "listening (unix socket)");
        acceptors.push(tokio::spawn(accept_unix(
            listener,
            state.clone(),
            graceful.clone(),
            stop_rx.clone(),
        )));
    }
    if let Some(addr) = args.debug_addr() {
        tokio::spawn(crate::debug::run(addr));
    }
    info!("trellis server started");

    wait_for_signal().await;
    info!("shutting down: no new connections; finishing in-flight requests");
    let _ = stop_tx.send(true);
    for acceptor in acceptors {
        let _ = acceptor.await;
    }
    if let Some(path) = &args.bind_socket {
        let _ = std::fs::remove_file(path);
    }
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => match tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await {
            Ok(()) => info!("all requests finished; containers keep running"),
            Err(_) => warn!("gave up waiting for in-flight requests"),
        },
        Err(_) => warn!("connection tracking still shared; not waiting for requests"),
    }
    let host = state.host.clone();
    let _ = tokio::task::spawn_blocking(move || host.settle()).await;
    info!("background cleanup finished; exiting");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot watch SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}

async fn accept_tcp(
    listener: TcpListener,
    state: Arc<State>,
    graceful: Arc<GracefulShutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(state.clone(), Box::new(stream), graceful.watcher()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    state: Arc<State>,
    graceful: Arc<GracefulShutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(state.clone(), Box::new(stream), graceful.watcher()));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

enum HeadRead {
    Head(crate::head::RequestHead, usize),
    /// The client closed before sending anything.
    Closed,
}

async fn read_head(io: &mut BoxIo, buf: &mut Vec<u8>) -> Result<HeadRead, ApiError> {
    let mut chunk = [0u8; 8192];
    loop {
        if !buf.is_empty() {
            if let Some((head, len)) = parse_head(buf)? {
                return Ok(HeadRead::Head(head, len));
            }
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| ApiError::Head(HeadError::Malformed(e.to_string())))?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(HeadRead::Closed);
            }
            return Err(HeadError::Malformed("connection closed mid-head".into()).into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves one connection: its first request decides whether it is hijacked or given to hyper.
async fn connection(
    state: Arc<State>,
    mut io: BoxIo,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let mut buf = Vec::with_capacity(8192);
    let head = match state.header_timeout {
        Some(limit) => tokio::time::timeout(limit, read_head(&mut io, &mut buf)).await,
        None => Ok(read_head(&mut io, &mut buf).await),
    };
    let (head, len) = match head {
        Ok(Ok(HeadRead::Head(head, len))) => (head, len),
        Ok(Ok(HeadRead::Closed)) => return,
        Ok(Err(error)) => {
            debug!(error = %error, "unreadable request head");
            let _ = io.write_all(&closing_error(&error)).await;
            let _ = io.shutdown().await;
            return;
        }
        Err(_) => {
            debug!("timed out waiting for a request head");
            if !buf.is_empty() {
                let _ = io.write_all(&closing_error(&ApiError::Timeout)).await;
            }
            let _ = io.shutdown().await;
            return;
        }
    };
    if let Ok(route) = Route::parse(&head.method, &head.target) {
        if route.is_hijack() {
            let rest = buf.split_off(len);
            crate::hijack::serve(state, io, head, route, rest).await;
            return;
        }
    }
    let io = Rewind::new(bytes::Bytes::from(buf), io);
    let header_timeout = state.header_timeout;
    let service = hyper::service::service_fn(move |req| api::serve(state.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        debug!(error = %e, "connection ended with an error");
    }
}

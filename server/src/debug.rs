//! The debug endpoint: `GET /debug/vars`, an expvar-style JSON object with the process's
//! command line and memory figures (GATS checks `memstats.Alloc` is non-zero).

use crate::alloc_stats::heap_stats;
use crate::reply::{full, json_response, Body};
use hyper::{Request, Response};
use serde_json::json;
use std::net::SocketAddr;
use tracing::{info, warn};

/// Resident and virtual size from /proc/self/statm, in bytes.
fn process_memory() -> (u64, u64) {
    let page = 4096u64;
    let text = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0));
    let size = fields.next().unwrap_or(0) * page;
    let resident = fields.next().unwrap_or(0) * page;
    (resident, size)
}

pub fn vars() -> serde_json::Value {
    let heap = heap_stats();
    let (resident, virtual_size) = process_memory();
    // Without the counting allocator, the resident size is the best figure there is.
    let alloc = if heap.live_bytes > 0 {
        heap.live_bytes
    } else {
        resident
    };
    json!({
        "cmdline": std::env::args().collect::<Vec<_>>(),
        "memstats": {
            "Alloc": alloc,
            "TotalAlloc": heap.total_bytes.max(alloc),
            "Sys": virtual_size,
            "Mallocs": heap.mallocs,
            "Frees": heap.frees,
            "HeapAlloc": alloc,
            "HeapSys": resident,
            "HeapInuse": alloc,
            "HeapObjects": heap.mallocs.saturating_sub(heap.frees),
            "NumGC": 0,
        },
    })
}

async fn serve(
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/debug/vars" {
        Ok(json_response(200, &vars()))
    } else {
        let mut response = Response::new(full(bytes::Bytes::from_static(b"404 page not found\n")));
        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
        Ok(response)
    }
}

/// Serves the debug endpoint until the process ends.
pub async fn run(addr: SocketAddr) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            warn!(%addr, error = %e, "cannot serve the debug endpoint");
            return;
        }
    };
    info!(%addr, "debug endpoint listening");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, hyper::service::service_fn(serve))
                .await;
        });
    }
}

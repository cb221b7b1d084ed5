//! BulkMetrics benchmark through the Garden API (as root, Linux backend): creates N busybox
//! containers with memory, CPU and pid limits, then times one BulkMetrics call for all of
//! them, and Metrics for one. Prints figures; asserts only that every entry came back.
//!
//! `cargo build --release -p trellis --bin trellis &&
//!  cargo bench -p trellis-tests --bench bulk_metrics [-- N]` (default 250).

#[path = "../tests/limits_support/mod.rs"]
mod limits_support;

use std::time::{Duration, Instant};
use trellis_core::api::{ContainerSpec, CpuLimits, Limits, MemoryLimits, PidLimits};

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} p50={:.1?} p90={:.1?} max={:.1?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(1.0)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let containers: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(250);
    let server = limits_support::linux_server();
    let client = server.client();
    let limits = Limits {
        memory_limits: MemoryLimits {
            limit_in_bytes: 128 << 20,
        },
        cpu_limits: CpuLimits {
            weight: 512,
            limit_in_shares: 0,
        },
        pid_limits: PidLimits { max: 100 },
        ..Limits::default()
    };
    let handles: Vec<String> = (0..containers).map(|i| format!("bulk-{i}")).collect();
    let started = Instant::now();
    for chunk in handles.chunks(8) {
        let mut creates = tokio::task::JoinSet::new();
        for handle in chunk {
            let (client, spec) = (
                client.clone(),
                ContainerSpec {
                    handle: handle.clone(),
                    limits: limits.clone(),
                    ..Default::default()
                },
            );
            creates.spawn(async move { client.create(spec).await.map(|_| ()) });
        }
        while let Some(created) = creates.join_next().await {
            created.expect("join").expect("create");
        }
    }
    println!(
        "created {containers} containers in {:.1?}",
        started.elapsed()
    );

    let names: Vec<&str> = handles.iter().map(String::as_str).collect();
    let mut bulk = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let entries = client.bulk_metrics(&names).await.expect("bulk metrics");
        bulk.push(started.elapsed());
        assert_eq!(entries.len(), containers);
        assert!(entries.values().all(|e| e.err.is_none()));
    }
    report(
        &format!("BulkMetrics of {containers} containers"),
        &mut bulk,
    );
    let one = client.container(handles[0].clone());
    let mut single = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        one.metrics().await.expect("metrics");
        single.push(started.elapsed());
    }
    report("Metrics of one container", &mut single);
    // The harness destroys every container when the server is dropped.
}

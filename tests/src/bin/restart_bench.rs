//! `trellis-restart-bench`: how soon a restarted server serves again when it has many
//! containers. It prints figures; it asserts nothing.
//!
//! ```text
//! trellis-restart-bench [--containers 1000] [--processes 1] [--output 0] [--rounds 3]
//!                       [--stop kill|term] [--parallel 8] [--network-pool CIDR]
//! ```
//!
//! As root, with the busybox test rootfs (`$TRELLIS_TEST_ROOTFS`, or built on demand) and the
//! `trellis` binary built (`cargo build --release -p trellis`; or `$TRELLIS_BIN`). It
//! starts a Linux server of its own (the test harness's: its own depot, tag and cgroup parent),
//! creates the containers (each running `--processes` idle processes, which its init keeps and
//! a restarted server takes over; each process first writes `--output` bytes to stdout and as
//! many to stderr, which nobody reads), and then each round stops the server (SIGKILL by default: a crash;
//! `--stop term` for a clean stop), starts it again with the same flags and times:
//!
//! - ping: from starting the process until it answers Ping (it serves nothing before it has
//!   restored every container);
//! - list: until List returns every container;
//! - the server's own phases, from its log: start to `restoring containers` (host set up,
//!   records loaded, the host observed), and from there to `trellis server started`;
//! - the server's resident memory once List has answered (VmRSS) and its peak (VmHWM), and the
//!   same before the first restart, for comparison.
//!
//! Subnets come from `--network-pool`, by default the smallest block of 10.216.0.0/16 with room
//! for a /30 per container (no test, benchmark or default server uses 10.216/16). Only
//! loopback and the benchmark's own containers are contacted. Everything is destroyed at the
//! end.

use std::time::{Duration, Instant};
use trellis_client::{Client, ProcessIo};
use trellis_core::api::{ContainerSpec, ProcessSpec};
use trellis_tests::TestServer;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

struct Options {
    containers: usize,
    processes: usize,
    output: usize,
    rounds: usize,
    stop: Stop,
    parallel: usize,
    network_pool: Option<String>,
}

/// /30 subnets fit in 10.216.0.0/16.
const MAX_CONTAINERS: usize = 1 << 14;

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        containers: 1000,
        processes: 1,
        output: 0,
        rounds: 3,
        stop: Stop::Kill,
        parallel: 8,
        network_pool: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--containers" => options.containers = number(value()?)?,
            "--processes" => options.processes = number(value()?)?,
            "--output" => options.output = number(value()?)?,
            "--rounds" => options.rounds = number(value()?)?,
            "--parallel" => options.parallel = number(value()?)?,
            "--stop" => {
                options.stop = match value()?.as_str() {
                    "kill" => Stop::Kill,
                    "term" => Stop::Term,
                    other => return Err(format!("--stop: {other:?} is neither kill nor term")),
                }
            }
            "--network-pool" => options.network_pool = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: trellis-restart-bench [--containers N] [--processes N] \
                     [--output BYTES] [--rounds N] [--stop kill|term] [--parallel N] [--network-pool CIDR]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.containers == 0 || options.rounds == 0 || options.parallel == 0 {
        return Err("--containers, --rounds and --parallel must be at least 1".into());
    }
    if options.network_pool.is_none() && options.containers > MAX_CONTAINERS {
        return Err(format!(
            "more than {MAX_CONTAINERS} containers need a --network-pool of their own"
        ));
    }
    Ok(options)
}

/// The smallest block of 10.216.0.0/16 holding a /30 per container.
fn default_pool(containers: usize) -> String {
    let addresses = (containers * 4).next_power_of_two();
    let prefix = 32 - addresses.trailing_zeros();
    format!("10.216.0.0/{}", prefix.min(30))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// (VmRSS, VmHWM) of a process, from /proc.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok()
    };
    Some((field("VmRSS:")? * 1024, field("VmHWM:")? * 1024))
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

fn memory_text(pid: Option<u32>) -> String {
    match pid.and_then(memory) {
        Some((rss, peak)) => format!("RSS {} (peak {})", mib(rss), mib(peak)),
        None => "RSS unknown".into(),
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Seconds since midnight of a log line's timestamp (`2025-01-02T03:04:05.678901Z ...`).
fn log_time(line: &str) -> Option<f64> {
    let clock = line.get(11..)?.split(['Z', ' ']).next()?;
    let mut parts = clock.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// (start to `restoring containers`, `restoring containers` to started) of the last start in
/// the server's log.
fn phases(log: &str) -> Option<(Duration, Duration)> {
    let last_start = log.rfind("backend: linux")?;
    let start_line_begins = log[..last_start].rfind('\n').map_or(0, |i| i + 1);
    let lines: Vec<&str> = log[start_line_begins..].lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| log_time(l))
    };
    let (start, restoring, started) = (
        at("backend: linux")?,
        at("restoring containers")?,
        at("trellis server started")?,
    );
    let span = |from: f64, to: f64| Duration::from_secs_f64((to - from).max(0.0));
    Some((span(start, restoring), span(restoring, started)))
}

async fn create_all(client: &Client, options: &Options) -> Result<Duration, String> {
    let start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..options.parallel {
        let client = client.clone();
        let next = next.clone();
        let total = options.containers;
        let processes = options.processes;
        let output = options.output;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let container = client
                    .create(ContainerSpec {
                        handle: format!("restart-bench-{i}"),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("creating container {i}: {e}"))?;
                for _ in 0..processes {
                    // Its init keeps it (and its output) whether or not anyone attaches.
                    let process = container
                        .run(
                            ProcessSpec {
                                path: "sh".into(),
                                args: vec![
                                    "-c".into(),
                                    format!(
                                        "head -c {output} /dev/zero; head -c {output} /dev/zero >&2; \
                                         exec sleep 1000000"
                                    ),
                                ],
                                ..Default::default()
                            },
                            ProcessIo::default(),
                        )
                        .await
                        .map_err(|e| format!("running a process in container {i}: {e}"))?;
                    drop(process);
                }
                if (i + 1).is_multiple_of(100) {
                    eprintln!("  {} created", i + 1);
                }
            }
        }));
    }
    for worker in workers {
        worker.await.map_err(|e| e.to_string())??;
    }
    Ok(start.elapsed())
}

async fn destroy_all(client: &Client, parallel: usize) {
    let Ok(containers) = client.containers(&Default::default()).await else {
        return;
    };
    let handles: Vec<String> = containers.iter().map(|c| c.handle().to_string()).collect();
    let chunk = handles.len().div_ceil(parallel).max(1);
    let mut workers = Vec::new();
    for part in handles.chunks(chunk) {
        let client = client.clone();
        let part = part.to_vec();
        workers.push(tokio::spawn(async move {
            for handle in part {
                let _ = client.destroy(&handle).await;
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
}

async fn bench(options: Options) -> Result<(), String> {
    let pool = options
        .network_pool
        .clone()
        .unwrap_or_else(|| default_pool(options.containers));
    let mut server = TestServer::start(trellis_tests::ServerOptions {
        network_pool: Some(pool.clone()),
        // Debug logging of a thousand creates only slows the setup down.
        log_filter: Some("info".into()),
        ..TestServer::linux_options()
    });
    let client = server.client();
    println!(
        "trellis-restart-bench: {} containers, pool {pool}, restart after {}",
        options.containers,
        match options.stop {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
        }
    );
    let result = async {
        let created = create_all(&client, &options).await?;
        println!(
            "created {} containers with {} process(es) each in {:.1} s ({} in parallel); \
             server {}",
            options.containers,
            options.processes,
            created.as_secs_f64(),
            options.parallel,
            memory_text(server.pid())
        );
        let mut pings = Vec::new();
        let mut lists = Vec::new();
        for round in 1..=options.rounds {
            match options.stop {
                Stop::Kill => server.kill(),
                Stop::Term => drop(server.terminate()),
            }
            let start = Instant::now();
            server.restart();
            let ping = start.elapsed();
            let listed = client
                .containers(&Default::default())
                .await
                .map_err(|e| format!("list after the restart: {e}"))?;
            let list = start.elapsed();
            if listed.len() != options.containers {
                return Err(format!(
                    "round {round}: List returned {} containers, not {}",
                    listed.len(),
                    options.containers
                ));
            }
            let phases = match phases(&server.logs()) {
                Some((restoring, started)) => format!(
                    "  (server: {} to restoring, {} more to started)",
                    ms(restoring),
                    ms(started)
                ),
                None => String::new(),
            };
            println!(
                "round {round}: ping after {}, list of {} after {}{phases}; server {}",
                ms(ping),
                listed.len(),
                ms(list),
                memory_text(server.pid())
            );
            pings.push(ping);
            lists.push(list);
        }
        println!(
            "median of {} rounds: ready (ping) {}, list {}",
            options.rounds,
            ms(median(&mut pings)),
            ms(median(&mut lists))
        );
        Ok(())
    }
    .await;
    let start = Instant::now();
    destroy_all(&client, options.parallel).await;
    // Links and bridges go about a second after each destroy, in the background; the harness
    // stops the server with a deadline, so wait for them rather than leave them behind.
    let retired = server.dir().join("run/network/state/.retired");
    let settled = trellis_tests::eventually(Duration::from_secs(300), || async {
        std::fs::read_dir(&retired).map_or(true, |mut d| d.next().is_none())
    })
    .await;
    if !settled {
        eprintln!("network removals still pending in {}", retired.display());
    }
    eprintln!(
        "destroyed everything in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    drop(server);
    result
}

fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("trellis-restart-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-restart-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-restart-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

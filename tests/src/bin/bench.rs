//! `trellis-bench`: an HTTP benchmark against a running Trellis (or any Garden) server, through
//! the Rust client. It prints figures; it asserts nothing.
//!
//! ```text
//! trellis-bench [--target 127.0.0.1:7777 | --target /path/to.sock] [--cycles 100]
//!               [--runs 200] [--stdout-mib 1024] [--parallel 50] [--rootfs URI]
//! trellis-bench [--target ...] --idle 250x4 [--server-pid PID] [--rootfs URI]
//! trellis-bench [--target ...] --bulk-info 500 --server-pid PID [--rootfs URI]
//! ```
//!
//! - create+destroy latency (p50/p95): one container at a time, each with its own network;
//! - run of `true` (p50/p95): request to exit status, in one container;
//! - stdout throughput of one process (`dd` of zeros to stdout), MB/s as received;
//! - `--parallel` creates at once: total wall time and the p50 of each create.
//!
//! `--idle CxP` instead starts C containers with P idle processes each (stdout and stderr
//! attached, as Diego's executor attaches them) and prints the server's threads and resident
//! memory (of `--server-pid`, read from /proc) before and with them; then destroys them.
//!
//! `--bulk-info N` fills one container's properties up to the record bound (64 KiB values until
//! the server refuses one more), then sends N BulkInfo calls for it at once and prints the
//! server's resident memory before, at its peak during the burst (sampled every 5 ms), and
//! after it (at once, and after a second of rest); then destroys the container.
//!
//! Only the given server is contacted; run it on loopback or a unix socket.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use trellis_client::{Client, ProcessIo, Target};
use trellis_core::api::{ContainerSpec, ImageRef, ProcessSpec};

struct Options {
    target: String,
    cycles: usize,
    runs: usize,
    stdout_mib: u64,
    parallel: usize,
    rootfs: String,
    /// (containers, processes per container) for the idle-load figures.
    idle: Option<(usize, usize)>,
    server_pid: Option<u32>,
    /// Concurrent BulkInfo calls for the memory figures.
    bulk_info: Option<usize>,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        target: "127.0.0.1:7777".into(),
        cycles: 100,
        runs: 200,
        stdout_mib: 1024,
        parallel: 50,
        rootfs: String::new(),
        idle: None,
        server_pid: None,
        bulk_info: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--target" => options.target = value()?,
            "--cycles" => options.cycles = number(value()?)? as usize,
            "--runs" => options.runs = number(value()?)? as usize,
            "--stdout-mib" => options.stdout_mib = number(value()?)?,
            "--parallel" => options.parallel = number(value()?)? as usize,
            "--rootfs" => options.rootfs = value()?,
            "--idle" => {
                let v = value()?;
                let (c, p) = v
                    .split_once('x')
                    .ok_or(format!("--idle wants CONTAINERSxPROCESSES, got {v:?}"))?;
                options.idle = Some((number(c.into())? as usize, number(p.into())? as usize));
            }
            "--server-pid" => options.server_pid = Some(number(value()?)? as u32),
            "--bulk-info" => options.bulk_info = Some(number(value()?)? as usize),
            "-h" | "--help" => {
                println!(
                    "usage: trellis-bench [--target ADDR|SOCKET] [--cycles N] [--runs N] \
                     [--stdout-mib N] [--parallel N] [--rootfs URI] \
                     [--idle CxP [--server-pid PID]] [--bulk-info N --server-pid PID]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if options.cycles == 0 || options.runs == 0 || options.parallel == 0 {
        return Err("--cycles, --runs and --parallel must be at least 1".into());
    }
    Ok(options)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index.min(samples.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Counts what is written and throws it away.
struct CountingSink(Arc<AtomicU64>);

impl AsyncWrite for CountingSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

type BenchResult<T> = Result<T, trellis_client::Error>;

fn spec(options: &Options, handle: String) -> ContainerSpec {
    ContainerSpec {
        handle,
        image: ImageRef {
            uri: options.rootfs.clone(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Latencies of each cycle: (create+destroy, create alone).
async fn create_destroy(
    client: &Client,
    options: &Options,
) -> BenchResult<(Vec<Duration>, Vec<Duration>)> {
    let mut cycles = Vec::with_capacity(options.cycles);
    let mut creates = Vec::with_capacity(options.cycles);
    for i in 0..options.cycles {
        let handle = format!("bench-cycle-{}-{i}", std::process::id());
        let start = Instant::now();
        client.create(spec(options, handle.clone())).await?;
        creates.push(start.elapsed());
        client.destroy(&handle).await?;
        cycles.push(start.elapsed());
    }
    Ok((cycles, creates))
}

async fn run_true(client: &Client, options: &Options) -> BenchResult<Vec<Duration>> {
    let handle = format!("bench-run-{}", std::process::id());
    let container = client.create(spec(options, handle.clone())).await?;
    let result = async {
        let mut samples = Vec::with_capacity(options.runs);
        for _ in 0..options.runs {
            let start = Instant::now();
            let mut process = container
                .run(
                    ProcessSpec {
                        path: "true".into(),
                        ..Default::default()
                    },
                    ProcessIo::default(),
                )
                .await?;
            let status = process.wait().await?;
            samples.push(start.elapsed());
            if status != 0 {
                return Err(trellis_client::Error::Process(format!(
                    "true exited {status}"
                )));
            }
        }
        Ok(samples)
    }
    .await;
    client.destroy(&handle).await?;
    result
}

/// (bytes received, seconds).
async fn stdout_throughput(client: &Client, options: &Options) -> BenchResult<(u64, f64)> {
    let handle = format!("bench-stdout-{}", std::process::id());
    let container = client.create(spec(options, handle.clone())).await?;
    let result = async {
        let received = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut process = container
            .run(
                ProcessSpec {
                    path: "dd".into(),
                    args: vec![
                        "if=/dev/zero".into(),
                        "bs=1M".into(),
                        format!("count={}", options.stdout_mib),
                    ],
                    ..Default::default()
                },
                ProcessIo {
                    stdout: Some(Box::new(CountingSink(received.clone()))),
                    stderr: Some(Box::new(tokio::io::sink())),
                    ..Default::default()
                },
            )
            .await?;
        process.wait().await?;
        Ok((
            received.load(Ordering::Relaxed),
            start.elapsed().as_secs_f64(),
        ))
    }
    .await;
    client.destroy(&handle).await?;
    result
}

/// (wall time of all, each create's latency).
async fn parallel_creates(
    client: &Client,
    options: &Options,
) -> BenchResult<(Duration, Vec<Duration>)> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..options.parallel {
        let client = client.clone();
        let spec = spec(options, format!("bench-par-{}-{i}", std::process::id()));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let created = client.create(spec).await.map(|_| started.elapsed());
            created
        }));
    }
    let mut samples = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(d)) => samples.push(d),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => {
                first_error = first_error.or(Some(trellis_client::Error::Process(e.to_string())))
            }
        }
    }
    let total = start.elapsed();
    for i in 0..options.parallel {
        let _ = client
            .destroy(&format!("bench-par-{}-{i}", std::process::id()))
            .await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((total, samples)),
    }
}

/// A process's threads and resident memory (MiB), from /proc.
fn threads_and_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("Threads:")?, field("VmRSS:")? / 1024))
}

fn print_server_figures(options: &Options, when: &str) {
    if let Some((threads, rss)) = options.server_pid.and_then(threads_and_rss) {
        println!("server {when}: {threads} threads, {rss} MiB resident");
    }
}

/// Many containers with idle, attached processes; the server's cost of carrying them.
async fn idle_load(
    client: &Client,
    options: &Options,
    (containers, per): (usize, usize),
) -> BenchResult<()> {
    print_server_figures(options, "before");
    let prefix = format!("bench-idle-{}", std::process::id());
    let start = Instant::now();
    let mut processes = Vec::with_capacity(containers * per);
    let mut result = Ok(());
    'create: for i in 0..containers {
        let container = match client.create(spec(options, format!("{prefix}-{i}"))).await {
            Ok(c) => c,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        for _ in 0..per {
            let io = ProcessIo {
                stdout: Some(Box::new(tokio::io::sink())),
                stderr: Some(Box::new(tokio::io::sink())),
                ..Default::default()
            };
            let spec = ProcessSpec {
                path: "sleep".into(),
                args: vec!["100000".into()],
                ..Default::default()
            };
            match container.run(spec, io).await {
                Ok(p) => processes.push(p),
                Err(e) => {
                    result = Err(e);
                    break 'create;
                }
            }
        }
    }
    if result.is_ok() {
        println!(
            "{containers} containers x {per} idle processes started in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        // Let per-process work settle (attach windows, first reads) before measuring.
        tokio::time::sleep(Duration::from_secs(6)).await;
        print_server_figures(options, "with them");
    }
    drop(processes);
    for i in 0..containers {
        let _ = client.destroy(&format!("{prefix}-{i}")).await;
    }
    result
}

/// The server's resident memory in MiB, or 0 when it cannot be read.
fn server_rss(options: &Options) -> u64 {
    options
        .server_pid
        .and_then(threads_and_rss)
        .map_or(0, |(_, rss)| rss)
}

/// One container at the property bounds, and `calls` BulkInfo calls for it at once: the
/// server's resident memory before, at the peak of the burst, and after it.
async fn bulk_info_burst(client: &Client, options: &Options, calls: usize) -> BenchResult<()> {
    if options.server_pid.is_none() {
        eprintln!("--bulk-info needs --server-pid to read the server's memory");
        return Ok(());
    }
    let handle = format!("bench-bulk-{}", std::process::id());
    let container = client.create(spec(options, handle.clone())).await?;
    let value = "v".repeat(trellis_core::limits::MAX_PROPERTY_VALUE_BYTES);
    let mut stored = 0;
    let filled = loop {
        match container
            .set_property(&format!("big{stored:03}"), &value)
            .await
        {
            Ok(()) => stored += 1,
            Err(trellis_client::Error::Server { message, .. }) if message.contains("limit") => {
                break Ok(());
            }
            Err(e) => break Err(e),
        }
    };
    let result = match filled {
        Ok(()) => burst(client, options, &handle, calls, stored).await,
        Err(e) => Err(e),
    };
    let _ = client.destroy(&handle).await;
    result
}

async fn burst(
    client: &Client,
    options: &Options,
    handle: &str,
    calls: usize,
    stored: usize,
) -> BenchResult<()> {
    let one = client.bulk_info(&[handle]).await?;
    let reply_bytes = serde_json::to_vec(&one).map_or(0, |b| b.len());
    println!(
        "one container with {stored} properties of 64 KiB (the most its record takes); \
         one BulkInfo reply is {:.2} MiB",
        reply_bytes as f64 / (1 << 20) as f64
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server_rss(options);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (done, peak, pid) = (done.clone(), peak.clone(), options.server_pid);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some((_, rss)) = pid.and_then(threads_and_rss) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let start = Instant::now();
    let calls_made = (0..calls).map(|_| {
        let client = client.clone();
        let handle = handle.to_string();
        tokio::spawn(async move { client.bulk_info(&[handle.as_str()]).await.map(|_| ()) })
    });
    let mut failures = 0;
    for call in calls_made.collect::<Vec<_>>() {
        if !matches!(call.await, Ok(Ok(()))) {
            failures += 1;
        }
    }
    let took = start.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let right_after = server_rss(options);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rested = server_rss(options);
    println!(
        "{calls} concurrent BulkInfo calls in {:.2} s ({failures} failed); server resident memory: \
         before {before} MiB, peak during {} MiB, right after {right_after} MiB, after 1 s {rested} MiB",
        took.as_secs_f64(),
        peak.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Raises this process's open-file limit to its hard limit (each attached process holds
/// three connections).
fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn bench(options: Options) -> BenchResult<()> {
    let target: Target = options.target.parse()?;
    let client = Client::new(target);
    client.ping().await?;
    println!("trellis-bench against {}", options.target);
    if let Some(idle) = options.idle {
        raise_nofile_limit();
        return idle_load(&client, &options, idle).await;
    }
    if let Some(calls) = options.bulk_info {
        raise_nofile_limit();
        return bulk_info_burst(&client, &options, calls).await;
    }

    let (mut samples, mut creates) = create_destroy(&client, &options).await?;
    println!(
        "create+destroy ({} cycles, networking included): p50 {}  p95 {}; create alone: p50 {}",
        options.cycles,
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.95)),
        ms(percentile(&mut creates, 0.5))
    );

    let mut samples = run_true(&client, &options).await?;
    println!(
        "run `true` ({} runs, request to exit status): p50 {}  p95 {}",
        options.runs,
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.95))
    );

    let (bytes, seconds) = stdout_throughput(&client, &options).await?;
    println!(
        "stdout of one process ({} MiB): {:.0} MB/s",
        bytes >> 20,
        bytes as f64 / 1e6 / seconds
    );

    let (total, mut samples) = parallel_creates(&client, &options).await?;
    println!(
        "{} parallel creates: total {:.2} s  p50 {}  p95 {}",
        options.parallel,
        total.as_secs_f64(),
        ms(percentile(&mut samples, 0.5)),
        ms(percentile(&mut samples, 0.95))
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("trellis-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

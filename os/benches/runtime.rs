//! Container runtime figures straight through the `Host` trait (no HTTP): create+destroy
//! latency (rootfs, cgroup, init; no network) of unprivileged containers and of privileged ones
//! (what confinement costs), an init's start on a quiet host, run of `true`, stdout throughput
//! of one process, and 50 parallel creates.
//! As root: `cargo bench -p trellis-os --bench runtime`.
//! `TRELLIS_BENCH_CGROUP2=<a cgroup2 mount>` gives the containers v2 cgroups there whatever the
//! host's mode (on a hybrid host, /sys/fs/cgroup/unified: no controllers, so default limits).
//! (The end-to-end `bench` against a running server reports the same figures over HTTP.)

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use trellis_core::api::{Limits, ProcessSpec};
use trellis_core::effect::InitConfig;
use trellis_os::linux::cgroup::{CgroupOptions, Cgroups, Mode};
use trellis_os::{Host, Layout, LinuxConfig, LinuxHost, SpawnRequest};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn create(host: &LinuxHost, handle: &str) {
    create_as(host, handle, false)
}

fn create_as(host: &LinuxHost, handle: &str, privileged: bool) {
    prepare(host, handle, privileged);
    start_init(host, handle, privileged);
}

/// A create's rootfs and cgroup.
fn prepare(host: &LinuxHost, handle: &str, privileged: bool) {
    host.prepare_rootfs(handle, &Default::default(), privileged, &Default::default())
        .unwrap();
    host.create_cgroup(handle, &Limits::default(), privileged)
        .unwrap();
}

fn start_init(host: &LinuxHost, handle: &str, privileged: bool) {
    let config = InitConfig {
        hostname: handle.into(),
        privileged,
        bind_mounts: vec![],
        container_ip: None,
    };
    host.start_init(handle, &config).unwrap();
}

fn destroy(host: &LinuxHost, handle: &str) {
    host.kill_container(handle).unwrap();
    host.remove_cgroup(handle).unwrap();
    host.remove_rootfs(handle).unwrap();
}

fn run(host: &LinuxHost, handle: &str, spec: &ProcessSpec) -> (i32, u64) {
    let io = host
        .spawn_process(SpawnRequest {
            handle,
            process_id: "p",
            spec,
            env: &[],
        })
        .unwrap();
    let mut stdout = std::fs::File::from(io.stdout);
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match stdout.read(&mut buf).unwrap() {
            0 => break,
            n => total += n as u64,
        }
    }
    (trellis_os::ProcessIo::wait(io.exit), total)
}

fn main() {
    let base = std::env::temp_dir().join(format!("trellis-bench-{}", std::process::id()));
    let rootfs = base.join("rootfs");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-rootfs");
    assert!(std::process::Command::new(root)
        .arg(&rootfs)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    let mut host = LinuxHost::new(LinuxConfig {
        cgroup: Default::default(),
        layout: Layout::new(base.join("depot"), base.join("state"), base.join("run")),
        default_rootfs: rootfs.to_string_lossy().into_owned(),
        helper_binary: Some(PathBuf::from(env!("CARGO_BIN_EXE_trellis-os-helper"))),
        network: Default::default(),
        security: Default::default(),
        registry: Default::default(),
        image_plugins: Default::default(),
    })
    .unwrap();
    if let Some(root) = std::env::var_os("TRELLIS_BENCH_CGROUP2") {
        let mut options = CgroupOptions::new(host.layout.cgroup_parent());
        options.mode = Some(Mode::V2);
        options.v2_root = PathBuf::from(root);
        println!("v2 cgroups at {}", options.v2_root.display());
        host.cgroups = Cgroups::with_options(options).unwrap();
    }

    for (kind, privileged) in [("unprivileged", false), ("privileged", true)] {
        let mut lifecycle = Vec::new();
        for i in 0..100 {
            let handle = format!("bench-{kind}-{i}");
            let start = Instant::now();
            create_as(&host, &handle, privileged);
            destroy(&host, &handle);
            lifecycle.push(start.elapsed());
        }
        println!(
            "create+destroy {kind} (rootfs, cgroup, init): p50 {:?} p95 {:?}",
            percentile(&mut lifecycle, 0.5),
            percentile(&mut lifecycle, 0.95)
        );
    }

    // A start on a quiet host: a kernel lock that moving a process into a cgroup takes waits
    // for an RCU grace period, unless another move took it moments before (as back-to-back
    // creates do).
    let mut starts = Vec::new();
    for i in 0..50 {
        let handle = format!("bench-quiet-{i}");
        prepare(&host, &handle, false);
        std::thread::sleep(Duration::from_millis(100));
        let start = Instant::now();
        start_init(&host, &handle, false);
        starts.push(start.elapsed());
        destroy(&host, &handle);
    }
    println!(
        "start init on a quiet host (100 ms apart): p50 {:?} p95 {:?}",
        percentile(&mut starts, 0.5),
        percentile(&mut starts, 0.95)
    );

    create(&host, "runner");
    let truth = ProcessSpec {
        path: "true".into(),
        ..Default::default()
    };
    let mut runs = Vec::new();
    for _ in 0..300 {
        let start = Instant::now();
        assert_eq!(run(&host, "runner", &truth).0, 0);
        runs.push(start.elapsed());
    }
    println!(
        "run true: p50 {:?} p95 {:?}",
        percentile(&mut runs, 0.5),
        percentile(&mut runs, 0.95)
    );

    let bytes = 1u64 << 30;
    let cat = ProcessSpec {
        path: "dd".into(),
        args: vec![
            "if=/dev/zero".into(),
            "bs=1M".into(),
            format!("count={}", bytes >> 20),
            "status=none".into(),
        ],
        ..Default::default()
    };
    let start = Instant::now();
    let (code, total) = run(&host, "runner", &cat);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!((code, total), (0, bytes));
    println!(
        "stdout throughput: {:.0} MB/s ({} MiB in {:.2} s)",
        total as f64 / secs / 1e6,
        total >> 20,
        secs
    );
    destroy(&host, "runner");

    let start = Instant::now();
    std::thread::scope(|s| {
        for i in 0..50 {
            let host = &host;
            s.spawn(move || create(host, &format!("par-{i}")));
        }
    });
    let created = start.elapsed();
    for i in 0..50 {
        destroy(&host, &format!("par-{i}"));
    }
    println!(
        "50 parallel creates: {:.2} s ({:?} each on average)",
        created.as_secs_f64(),
        created / 50
    );
    let _ = host.cgroups.remove_parent();
    let _ = std::fs::remove_dir_all(&base);
}

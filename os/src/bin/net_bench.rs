//! Networking benchmark (root): what networking adds to a container's create+destroy, and what
//! a NetOut rule costs as the number of containers grows.
//!
//! ```text
//! trellis-net-bench [--rootfs DIR] [--cycles N] [--containers N] [--rules N]
//! ```
//!
//! 1. Create+destroy through the Linux host in the core's effect order, N cycles without and N
//!    with networking (busybox rootfs from scripts/build-rootfs unless --rootfs is given):
//!    p50/p90 of each (and of the create alone) and their ratio.
//! 2. Network setup+teardown alone.
//! 3. NetOut insertion: rules added one call per rule to the newest container when 10, 250 and
//!    --containers (default 1000) containers exist (10 rules each), one bulk call of 10 rules,
//!    and single calls into the oldest container: time per rule.
//!
//! Traffic: none. Everything it creates is on its own tag (`bn`) and removed at the end.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use trellis_core::api::{
    BandwidthLimits, ImageRef, IpRange, Limits, NetOutRule, PortRange, Protocol,
};
use trellis_core::effect::{InitConfig, NetworkConfig};
use trellis_core::network::NetworkAssignment;
use trellis_os::linux::network::NetworkSettings;
use trellis_os::{Layout, LinuxConfig, LinuxHost};

struct Options {
    rootfs: Option<PathBuf>,
    cycles: usize,
    containers: usize,
    rules: usize,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        rootfs: None,
        cycles: 50,
        containers: 1000,
        rules: 10,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--rootfs" => options.rootfs = Some(value()?.into()),
            "--cycles" => {
                options.cycles = value()?.parse().map_err(|e| format!("--cycles: {e}"))?
            }
            "--containers" => {
                options.containers = value()?.parse().map_err(|e| format!("--containers: {e}"))?
            }
            "--rules" => options.rules = value()?.parse().map_err(|e| format!("--rules: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.containers < 10 || options.containers > 1024 {
        return Err("--containers must be between 10 and 1024".into());
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // Container inits are started by re-executing this binary.
    if let Some(code) = trellis_os::helper::run_if_helper(&args) {
        return code;
    }
    let options = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("trellis-net-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-net-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build_rootfs() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join("trellis-net-bench-rootfs");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-rootfs");
    let status = std::process::Command::new(script)
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("run scripts/build-rootfs: {e}"))?;
    if !status.success() {
        return Err("scripts/build-rootfs failed".into());
    }
    Ok(dir)
}

/// The i-th /30 from 10.215.0.0 (the benchmark's own range, outside the default pool; up to
/// 10.215.16.0/20 for 1024 containers).
fn assignment(i: usize) -> NetworkAssignment {
    let base = u32::from(std::net::Ipv4Addr::new(10, 215, 0, 0)) + 4 * i as u32;
    NetworkAssignment {
        subnet: ipnetwork::Ipv4Network::new(base.into(), 30).expect("a /30"),
        container_ip: (base + 1).into(),
    }
}

fn network_config(i: usize) -> NetworkConfig {
    NetworkConfig {
        assignment: assignment(i),
        port_mappings: vec![],
        netout_rules: vec![],
        bandwidth: BandwidthLimits::default(),
        privileged: false,
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run(options: &Options) -> Result<(), String> {
    let rootfs = match &options.rootfs {
        Some(dir) => dir.clone(),
        None => build_rootfs()?,
    };
    let base = std::env::temp_dir().join(format!("trellis-net-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let layout = Layout::new(base.join("depot"), base.join("state"), base.join("run"));
    let host = LinuxHost::new(LinuxConfig {
        cgroup: Default::default(),
        layout,
        default_rootfs: rootfs.to_string_lossy().into_owned(),
        helper_binary: None,
        network: NetworkSettings {
            tag: "bn".into(),
            ..Default::default()
        },
        security: Default::default(),
        registry: Default::default(),
        image_plugins: Default::default(),
    })
    .map_err(|e| format!("start the Linux host: {e}"))?;
    let result = bench(&host, options);
    for handle in host.network.handles().unwrap_or_default() {
        let _ = host.network.teardown(&handle, None);
    }
    // The deferred part of every removal, before the table goes.
    host.network.settle();
    trellis_os::linux::network::firewall::delete_server_tables("bn");
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn create(host: &LinuxHost, handle: &str, network: Option<&NetworkConfig>) -> Result<(), String> {
    let e =
        |what: &'static str| move |err: trellis_os::HostError| format!("{what} {handle}: {err}");
    host.prepare_rootfs(handle, &ImageRef::default(), false, &Default::default())
        .map_err(e("prepare rootfs"))?;
    host.create_cgroup(handle, &Limits::default(), false)
        .map_err(e("create cgroup"))?;
    if let Some(config) = network {
        host.setup_network(handle, config)
            .map_err(e("setup network"))?;
    }
    host.start_init(
        handle,
        &InitConfig {
            hostname: trellis_core::handle::hostname(handle),
            privileged: false,
            bind_mounts: vec![],
            container_ip: network.map(|c| c.assignment.container_ip),
        },
    )
    .map_err(e("start init"))
}

fn destroy(host: &LinuxHost, handle: &str, network: Option<&NetworkConfig>) -> Result<(), String> {
    let e =
        |what: &'static str| move |err: trellis_os::HostError| format!("{what} {handle}: {err}");
    host.kill_container(handle).map_err(e("kill"))?;
    if let Some(config) = network {
        host.teardown_network(handle, Some(&config.assignment))
            .map_err(e("teardown network"))?;
    }
    host.remove_cgroup(handle).map_err(e("remove cgroup"))?;
    host.remove_rootfs(handle).map_err(e("remove rootfs"))
}

fn bench(host: &LinuxHost, options: &Options) -> Result<(), String> {
    println!(
        "== create+destroy through the Linux host ({} cycles each)",
        options.cycles
    );
    let mut results = Vec::new();
    for with_network in [false, true] {
        let (mut samples, mut creates) = (Vec::new(), Vec::new());
        for i in 0..options.cycles {
            let handle = format!("bench-{i}");
            let config = network_config(0);
            let network = with_network.then_some(&config);
            let start = Instant::now();
            create(host, &handle, network)?;
            creates.push(start.elapsed());
            destroy(host, &handle, network)?;
            samples.push(start.elapsed());
        }
        let p50 = percentile(&mut samples, 0.5);
        let p90 = percentile(&mut samples, 0.9);
        println!(
            "  {:<16} p50 {:>7.2} ms   p90 {:>7.2} ms   create alone p50 {:>7.2} ms",
            if with_network {
                "with network"
            } else {
                "without network"
            },
            ms(p50),
            ms(p90),
            ms(percentile(&mut creates, 0.5))
        );
        results.push(p50);
    }
    println!(
        "  ratio with/without network (p50): {:.2}x",
        results[1].as_secs_f64() / results[0].as_secs_f64()
    );

    println!(
        "== network setup+teardown alone ({} cycles)",
        options.cycles
    );
    let (mut setups, mut teardowns) = (Vec::new(), Vec::new());
    for i in 0..options.cycles {
        let handle = format!("net-{i}");
        let config = network_config(1);
        let start = Instant::now();
        host.network
            .setup(&handle, &config)
            .map_err(|e| format!("setup: {e}"))?;
        setups.push(start.elapsed());
        let start = Instant::now();
        host.network
            .teardown(&handle, None)
            .map_err(|e| format!("teardown: {e}"))?;
        teardowns.push(start.elapsed());
    }
    println!(
        "  setup p50 {:.2} ms, teardown p50 {:.2} ms",
        ms(percentile(&mut setups, 0.5)),
        ms(percentile(&mut teardowns, 0.5))
    );

    println!(
        "== NetOut insertion: {} rules per container, one call per rule",
        options.rules
    );
    let rule = |i: usize| NetOutRule {
        protocol: Protocol::Tcp,
        networks: vec![IpRange {
            start: Some(std::net::Ipv4Addr::new(10, 216, (i / 250) as u8, (i % 250) as u8).into()),
            end: None,
        }],
        ports: vec![PortRange {
            start: 1000 + i as u16,
            end: 2000 + i as u16,
        }],
        icmps: None,
        log: false,
    };
    let mut checkpoints = vec![10, 250.min(options.containers), options.containers];
    checkpoints.dedup();
    let mut per_rule = Vec::new();
    let mut bulk = Vec::new();
    let mut existing = 0;
    for &count in &checkpoints {
        while existing < count {
            let handle = format!("many-{existing}");
            host.network
                .setup(&handle, &network_config(2 + existing))
                .map_err(|e| format!("setup {handle}: {e}"))?;
            existing += 1;
        }
        let handle = format!("many-{}", existing - 1);
        let assignment = assignment(2 + existing - 1);
        let mut samples = Vec::new();
        for i in 0..options.rules {
            let start = Instant::now();
            host.network
                .add_netout_rules(&handle, &assignment, &[rule(i)])
                .map_err(|e| format!("net-out: {e}"))?;
            samples.push(start.elapsed());
        }
        // The same into the oldest container: the kernel finds a table by name walking the
        // list of all tables from the oldest, so the newest is its worst case.
        let mut oldest = Vec::new();
        for i in 0..options.rules {
            let start = Instant::now();
            host.network
                .add_netout_rules("many-0", &self::assignment(2), &[rule(200 + count + i)])
                .map_err(|e| format!("net-out: {e}"))?;
            oldest.push(start.elapsed());
        }
        let rules: Vec<NetOutRule> = (0..options.rules).map(|i| rule(100 + i)).collect();
        let start = Instant::now();
        host.network
            .add_netout_rules(&handle, &assignment, &rules)
            .map_err(|e| format!("bulk net-out: {e}"))?;
        let bulk_per_rule = start.elapsed() / options.rules as u32;
        let p50 = percentile(&mut samples, 0.5);
        println!(
            "  {count:>4} containers: {:.3} ms per rule (single calls, p50), {:.3} ms per rule in one bulk call; \
             {:.3} ms per rule into the oldest container",
            ms(p50),
            ms(bulk_per_rule),
            ms(percentile(&mut oldest, 0.5))
        );
        per_rule.push(p50);
        bulk.push(bulk_per_rule);
    }
    for (i, &count) in checkpoints.iter().enumerate().skip(1) {
        println!(
            "  per-rule cost at {count} vs 10 containers: {:.2}x (single), {:.2}x (bulk)",
            per_rule[i].as_secs_f64() / per_rule[0].as_secs_f64(),
            bulk[i].as_secs_f64() / bulk[0].as_secs_f64()
        );
    }
    Ok(())
}

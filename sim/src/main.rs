//! `trellis-sim --seed S --steps N` / `--seeds A..B`: run the simulation and report.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;
use trellis_core::InjectedBugs;
use trellis_sim::{Sim, SimOptions};

const USAGE: &str = "usage: trellis-sim [--seed S | --seeds A..B] [--steps N] [--inject-bug leak-ip|double-alloc|skip-expiry|forget-processes|late-adopt-exits] [--verbose]";

struct Args {
    seeds: std::ops::Range<u64>,
    steps: u64,
    bugs: InjectedBugs,
    /// Not a core bug: the driver delivering adopted exits late (see `SimOptions`).
    late_adopt_exits: bool,
    verbose: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 0..1,
        steps: 10_000,
        bugs: InjectedBugs::default(),
        late_adopt_exits: false,
        verbose: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seed" => {
                let seed: u64 = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                args.seeds = seed..seed + 1;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or("--seeds takes A..B")?;
                let a: u64 = a.parse().map_err(|e| format!("--seeds: {e}"))?;
                let b: u64 = b.parse().map_err(|e| format!("--seeds: {e}"))?;
                args.seeds = a..b;
            }
            "--steps" => args.steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--inject-bug" => match value()?.as_str() {
                "leak-ip" => args.bugs.leak_ip = true,
                "double-alloc" => args.bugs.double_alloc = true,
                "skip-expiry" => args.bugs.skip_expiry = true,
                "forget-processes" => args.bugs.forget_processes = true,
                "late-adopt-exits" => args.late_adopt_exits = true,
                other => return Err(format!("unknown bug {other}")),
            },
            "--verbose" => args.verbose = true,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.seeds.is_empty() {
        return Err("empty seed range".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut total_steps = 0;
    let mut failed = 0;
    let single = args.seeds.end - args.seeds.start == 1;
    // One hash over every seed's trace, so a range also ends with a single comparable line.
    let mut combined: u64 = 0xcbf2_9ce4_8422_2325;
    let mut single_trace = 0;
    for seed in args.seeds.clone() {
        let report = Sim::new(SimOptions {
            seed,
            steps: args.steps,
            bugs: args.bugs,
            late_adopt_exits: args.late_adopt_exits,
            verbose: args.verbose,
        })
        .run();
        total_steps += report.steps;
        if let Some(f) = &report.failure {
            failed += 1;
            println!("seed {seed} FAILED at step {}: {}", f.step, f.message);
            let mut replay = format!(
                "cargo run --release -p trellis-sim -- --seed {seed} --steps {}",
                args.steps
            );
            for (on, name) in [
                (args.bugs.leak_ip, "leak-ip"),
                (args.bugs.double_alloc, "double-alloc"),
                (args.bugs.skip_expiry, "skip-expiry"),
                (args.bugs.forget_processes, "forget-processes"),
                (args.late_adopt_exits, "late-adopt-exits"),
            ] {
                if on {
                    replay += &format!(" --inject-bug {name}");
                }
            }
            println!("  replay: {replay} --verbose");
        } else if single {
            let s = &report.stats;
            println!(
                "seed {seed}: ok, {} steps, {} commands, {} effects ({} faulted), {} creates, {} destroys, {} expiries, {} crashes, {} refused for the handle rule or a bound",
                report.steps, s.commands, s.effects, s.faults, s.creates, s.destroys, s.expiries, s.crashes, s.refusals
            );
        }
        single_trace = report.trace;
        for byte in report.trace.to_le_bytes() {
            combined = (combined ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let count = args.seeds.end - args.seeds.start;
    if !single {
        println!("{} of {count} seeds passed", count - failed);
    }
    println!("{:.0} steps/s", total_steps as f64 / seconds.max(1e-9));
    let trace = if single { single_trace } else { combined };
    println!("trace {trace:016x}");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

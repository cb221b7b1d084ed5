//! `trellis-crash`: the SIGKILL harness's long mode. Runs a mixed workload against a fresh
//! Linux-backend server, kills it with SIGKILL at seeded moments, restarts it and checks every
//! promise after each restart, then that nothing is left on the host (see
//! `trellis_tests::crash`). As root, with the `trellis` binary built beside this one.
//!
//! ```text
//! trellis-crash [--seed N] [--kills N] [--workers N] [--max-containers N] [--max-round-ms N]
//! ```

use std::process::ExitCode;
use std::time::Duration;
use trellis_tests::crash::{self, CrashOptions};

fn usage() -> ExitCode {
    eprintln!(
        "usage: trellis-crash [--seed N] [--kills N] [--workers N] [--max-containers N] \
         [--max-round-ms N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut options = CrashOptions {
        kills: 100,
        ..Default::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next().and_then(|v| v.parse::<u64>().ok()) else {
            return usage();
        };
        match flag.as_str() {
            "--seed" => options.seed = value,
            "--kills" => options.kills = value as usize,
            "--workers" => options.workers = value as usize,
            "--max-containers" => options.max_containers = value as usize,
            "--max-round-ms" => options.max_round = Duration::from_millis(value),
            _ => return usage(),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let report = runtime.block_on(crash::run(options));
    println!("{}", report.summary());
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

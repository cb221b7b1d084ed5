//! `trellis cleanup`: given the flags a server was started with, removes everything that
//! server left on the host (see `trellis_os::linux::cleanup`).

use crate::config::{Backend, ServerArgs};
use std::process::ExitCode;

/// Runs the cleanup and prints what it did; fails if a server still runs with these
/// directories or if anything could not be removed.
pub fn run(args: &ServerArgs) -> ExitCode {
    if args.backend == Backend::Fake {
        println!("the fake backend keeps nothing on the host: nothing to clean up");
        return ExitCode::SUCCESS;
    }
    let config = match args.linux_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("trellis cleanup: invalid id mapping flags: {e}");
            return ExitCode::from(2);
        }
    };
    match trellis_os::linux::cleanup::cleanup(&config) {
        Ok(report) => {
            println!(
                "cleaned up: {} containers ({} inits were running), {} links, {} nftables \
                 tables, {} stray mounts, {} stray loop devices",
                report.containers,
                report.inits_killed,
                report.links,
                report.nft_tables,
                report.stray_mounts,
                report.stray_loop_devices
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("trellis cleanup: {e}");
            ExitCode::FAILURE
        }
    }
}

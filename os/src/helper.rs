//! Hidden helper subcommands of the `trellis` binary.
//!
//! Namespace work must not fork from the multi-threaded server, so the server re-executes its
//! own binary (from a sealed in-memory copy) with a hidden subcommand to do it in a small
//! single-threaded process. The binary's `main` calls [`run_if_helper`] first.
//!
//! - `__trellis-zygote`: forks the helper that starts each container's init (see
//!   `linux::runtime::zygote` and `linux::runtime::init`). Processes and file streams are then
//!   started by that init, not by further helpers.

use std::process::ExitCode;

/// Runs the helper named by the command line, if it names one, and returns its exit code.
pub fn run_if_helper(args: &[String]) -> Option<ExitCode> {
    match args.get(1).map(String::as_str) {
        Some(crate::linux::runtime::zygote::SUBCOMMAND) => {
            // Every container's init descends from the zygote: it takes back the open-file
            // limit the server started with (see `linux::open_files`).
            // SAFETY: the zygote has just started; it has no other thread.
            if let Err(e) = unsafe { crate::linux::open_files::restore_inherited_soft_limit() } {
                // A process of its own, without the server's subscriber: its stderr is the log.
                eprintln!("trellis zygote: restoring the open-file limit: {e}");
            }
            Some(crate::linux::runtime::zygote::zygote_main(args))
        }
        _ => None,
    }
}

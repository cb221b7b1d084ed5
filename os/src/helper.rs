//! Hidden helper subcommands of the `trellis` binary.
//!
//! Namespace work must not fork from the multi-threaded server, so the server re-executes its
//! own binary with a hidden subcommand (for example the container's init) to do it in a small
//! single-threaded process. The binary's `main` calls [`run_if_helper`] first.

use std::process::ExitCode;

/// Runs the helper named by the command line, if it names one, and returns its exit code.
pub fn run_if_helper(args: &[String]) -> Option<ExitCode> {
    let _ = args;
    None
}

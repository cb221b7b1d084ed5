//! The hidden helper subcommands on their own, for the os crate's integration tests (which
//! cannot re-execute the `trellis` binary of another package). The server runs the same code
//! from its own binary.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    trellis_os::helper::run_if_helper(&args).unwrap_or_else(|| {
        eprintln!("usage: trellis-os-helper is only started by trellis itself");
        std::process::ExitCode::from(2)
    })
}

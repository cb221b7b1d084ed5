//! The `trellis` binary: `trellis server` runs the Garden API server; the other subcommands are
//! the client CLI (see `trellis --help`).

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trellis_server::config::{LogFormat, LogLevel, ServerArgs};
use trellis_server::config_file::{self, IniFile};

#[global_allocator]
static ALLOCATOR: trellis_server::alloc_stats::CountingAlloc =
    trellis_server::alloc_stats::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "trellis",
    version,
    about = "A Garden API container server and its client"
)]
struct Cli {
    #[command(flatten)]
    global: trellis_client::cli::GlobalArgs,
    /// gdn's config file (go-flags INI): its `[server]` section holds `trellis server`'s flags
    /// by their long names (`[cleanup]` those of `trellis cleanup`); command-line flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Run the Garden API server.
    Server(Box<ServerArgs>),
    /// Remove everything a server left on this host (its containers, mounts, cgroups, links,
    /// firewall tables and files), given the flags it was started with; refused while it runs.
    Cleanup(Box<ServerArgs>),
    #[command(flatten)]
    Client(trellis_client::cli::Command),
}

fn init_logging(args: &ServerArgs) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let default = match args.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Error | LogLevel::Fatal => "error",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},hyper=info")));
    match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Lager => tracing_subscriber::registry()
            .with(filter)
            .with(trellis_server::lager::LagerLayer::new(
                args.log_time_format,
                std::io::stderr(),
            ))
            .init(),
    }
}

/// Raises the server's open-file limit to the hard limit (its containers' processes keep the
/// one it started with; see `trellis_os::linux::open_files`).
fn raise_open_files_limit() {
    // SAFETY: called before the async runtime, or anything else, starts a thread.
    match unsafe { trellis_os::linux::open_files::raise_soft_limit() } {
        Ok(limits) => tracing::info!(
            soft = limits.soft,
            hard = limits.hard,
            started_with = limits.started_with,
            "open files limit (RLIMIT_NOFILE) raised to the hard limit; container processes \
             keep the one the server started with"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
}

/// gdn reads `--config` with Go's flag package, which also takes `-config FILE` and
/// `-config=FILE` before the subcommand: those become `--config`.
fn go_style_config_flag(args: Vec<String>) -> Vec<String> {
    let mut before_subcommand = true;
    args.into_iter()
        .map(|arg| {
            if arg == "server" || arg == "cleanup" {
                before_subcommand = false;
            }
            match arg.strip_prefix("-config") {
                Some(rest) if before_subcommand && (rest.is_empty() || rest.starts_with('=')) => {
                    format!("--config{rest}")
                }
                _ => arg,
            }
        })
        .collect()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = trellis_os::helper::run_if_helper(&args) {
        return code;
    }
    let matches = Cli::command().get_matches_from(go_style_config_flag(args));
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut warnings = Vec::new();
    if let Some((name @ ("server" | "cleanup"), sub)) = matches.subcommand() {
        let name: &'static str = if name == "server" {
            "server"
        } else {
            "cleanup"
        };
        let resolved = cli
            .config
            .as_deref()
            .map(IniFile::read)
            .transpose()
            .and_then(|file| config_file::resolve(name, file.as_ref(), sub));
        let args = match resolved {
            Ok((args, w)) => {
                warnings = w;
                Box::new(args)
            }
            Err(e) => {
                eprintln!("trellis {name}: {e}");
                return ExitCode::from(2);
            }
        };
        cli.command = match cli.command {
            Top::Server(_) => Top::Server(args),
            _ => Top::Cleanup(args),
        };
    }
    if let Top::Server(args) = &cli.command {
        trellis_server::alloc_stats::return_freed_memory_to_the_system();
        init_logging(args);
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        raise_open_files_limit();
    } else {
        for warning in &warnings {
            eprintln!("trellis: {warning}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trellis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match cli.command {
        Top::Server(args) => match runtime.block_on(trellis_server::server::run(*args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "trellis server failed");
                eprintln!("trellis server: {e}");
                ExitCode::FAILURE
            }
        },
        Top::Client(command) => runtime.block_on(trellis_client::cli::run(cli.global, command)),
        // Synchronous: not on the async runtime.
        Top::Cleanup(args) => trellis_server::cleanup::run(&args),
    };
    // Streams still being served (processes keep running) must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    code
}

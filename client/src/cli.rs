//! The `trellis` command-line client (in the spirit of cloudfoundry's `gaol`): one subcommand
//! per Garden operation. Human output by default, `--json` for scripts.

use crate::{Client, Container, Error, ProcessIo, StreamInSpec, StreamOutSpec, Target};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;
use trellis_core::api::{
    ContainerSpec, IpRange, NetOutRule, PortRange, ProcessSpec, Protocol, Signal, TtySpec,
    WindowSize,
};
use trellis_proto::duration::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The server: host:port or a unix socket path.
    #[arg(
        long,
        global = true,
        env = "TRELLIS_TARGET",
        default_value = "127.0.0.1:7777"
    )]
    pub target: String,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Check that the server answers.
    Ping,
    /// Show the server's capacity.
    Capacity,
    /// Create a container and print its handle.
    Create(CreateArgs),
    /// List container handles (optionally only those with the given properties).
    List {
        /// key=value (repeatable)
        #[arg(long = "property", short = 'p')]
        properties: Vec<String>,
    },
    /// Show a container's info.
    Info { handle: String },
    /// Destroy containers.
    Destroy {
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Stop every process in a container.
    Stop {
        handle: String,
        /// SIGKILL at once instead of SIGTERM first.
        #[arg(long)]
        kill: bool,
    },
    /// Run a process and stream its output; exits with its exit status.
    Run(RunArgs),
    /// Attach to a running process by id.
    Attach { handle: String, process_id: String },
    /// An interactive shell in a container (on a TTY).
    Shell {
        handle: String,
        #[arg(long, default_value = "/bin/sh")]
        shell: String,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Stream a tar archive from stdin into a container directory.
    StreamIn {
        handle: String,
        #[arg(long)]
        destination: String,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Stream a path out of a container as a tar archive to stdout.
    StreamOut {
        handle: String,
        #[arg(long)]
        source: String,
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Map a host port to a container port (0: pick one / the same number).
    NetIn {
        handle: String,
        #[arg(long, default_value_t = 0)]
        host_port: u32,
        #[arg(long, default_value_t = 0)]
        container_port: u32,
    },
    /// Allow outbound traffic from a container.
    NetOut(NetOutArgs),
    /// Get, set or remove properties.
    Property {
        #[command(subcommand)]
        action: PropertyAction,
    },
    /// Show a container's metrics.
    Metrics { handle: String },
    /// Show a container's current limits.
    Limits { handle: String },
    /// Set a container's grace time (`5m`, `30s`, seconds; 0 never expires).
    GraceTime {
        handle: String,
        #[arg(value_parser = parse_duration)]
        grace_time: Duration,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub handle: Option<String>,
    /// Image URI (a path, `docker:///repo#tag`, ...).
    #[arg(long)]
    pub rootfs: Option<String>,
    /// A subnet (`10.0.0.0/30`) or an address.
    #[arg(long)]
    pub network: Option<String>,
    /// KEY=VALUE (repeatable)
    #[arg(long)]
    pub env: Vec<String>,
    /// key=value (repeatable)
    #[arg(long = "property", short = 'p')]
    pub properties: Vec<String>,
    #[arg(long, value_parser = parse_duration)]
    pub grace_time: Option<Duration>,
    /// memory=BYTES, cpu=WEIGHT, disk=BYTES, pids=N, bandwidth=RATE (repeatable)
    #[arg(long = "limit")]
    pub limits: Vec<String>,
    #[arg(long)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    pub handle: String,
    /// Run on a pseudo-terminal.
    #[arg(long)]
    pub tty: bool,
    #[arg(long, default_value = "")]
    pub user: String,
    #[arg(long, default_value = "")]
    pub dir: String,
    /// KEY=VALUE (repeatable)
    #[arg(long)]
    pub env: Vec<String>,
    /// The process id to use.
    #[arg(long)]
    pub id: Option<String>,
    /// Do not send stdin (the process's stdin stays open).
    #[arg(long)]
    pub no_stdin: bool,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct NetOutArgs {
    pub handle: String,
    /// all, tcp, udp, icmp, icmpv6
    #[arg(long, default_value = "all")]
    pub protocol: String,
    /// START[-END] address ranges (repeatable)
    #[arg(long)]
    pub network: Vec<String>,
    /// START[-END] port ranges (repeatable)
    #[arg(long)]
    pub port: Vec<String>,
    #[arg(long)]
    pub log: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum PropertyAction {
    /// Print one property (or all, without a key).
    Get { handle: String, key: Option<String> },
    Set {
        handle: String,
        key: String,
        value: String,
    },
    #[command(alias = "remove")]
    Rm { handle: String, key: String },
}

fn pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| format!("{what} {item:?} is not key=value"))
        })
        .collect()
}

fn create_spec(args: &CreateArgs) -> Result<ContainerSpec, String> {
    let mut spec = ContainerSpec {
        handle: args.handle.clone().unwrap_or_default(),
        network: args.network.clone().unwrap_or_default(),
        env: args.env.clone(),
        properties: pairs(&args.properties, "property")?,
        privileged: args.privileged,
        grace_time: args
            .grace_time
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        ..Default::default()
    };
    spec.image.uri = args.rootfs.clone().unwrap_or_default();
    for (key, value) in pairs(&args.limits, "limit")? {
        let n: u64 = value
            .parse()
            .map_err(|_| format!("limit {key}={value}: not a number"))?;
        match key.as_str() {
            "memory" => spec.limits.memory_limits.limit_in_bytes = n,
            "cpu" => spec.limits.cpu_limits.weight = n,
            "disk" => spec.limits.disk_limits.byte_hard = n,
            "pids" => spec.limits.pid_limits.max = n,
            "bandwidth" => {
                spec.limits.bandwidth_limits.rate = n;
                spec.limits.bandwidth_limits.burst = n;
            }
            other => {
                return Err(format!(
                    "unknown limit {other} (memory, cpu, disk, pids, bandwidth)"
                ))
            }
        }
    }
    Ok(spec)
}

fn range<T: std::str::FromStr + Clone>(text: &str) -> Result<(T, T), String> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let a: T = a
        .parse()
        .map_err(|_| format!("bad range start in {text:?}"))?;
    let b: T = b
        .parse()
        .map_err(|_| format!("bad range end in {text:?}"))?;
    Ok((a, b))
}

fn net_out_rule(args: &NetOutArgs) -> Result<NetOutRule, String> {
    let protocol = match args.protocol.as_str() {
        "all" => Protocol::All,
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        "icmpv6" => Protocol::IcmpV6,
        other => return Err(format!("unknown protocol {other}")),
    };
    let networks = args
        .network
        .iter()
        .map(|n| {
            range::<std::net::IpAddr>(n).map(|(start, end)| IpRange {
                start: Some(start),
                end: Some(end),
            })
        })
        .collect::<Result<_, _>>()?;
    let ports = args
        .port
        .iter()
        .map(|p| range::<u16>(p).map(|(start, end)| PortRange { start, end }))
        .collect::<Result<_, _>>()?;
    Ok(NetOutRule {
        protocol,
        networks,
        ports,
        icmps: None,
        log: args.log,
    })
}

struct Output {
    json: bool,
}

impl Output {
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            let text = human(value);
            if !text.is_empty() {
                println!("{text}");
            }
        }
    }

    fn done(&self) {
        if self.json {
            println!("{{}}");
        }
    }
}

fn pretty<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// Runs one CLI command and returns the process's exit code.
pub async fn run(global: GlobalArgs, command: Command) -> ExitCode {
    match execute(&global, command).await {
        Ok(code) => code,
        Err(CliError::Usage(message)) => {
            eprintln!("trellis: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Garden(e)) => {
            if global.json {
                let body = serde_json::json!({ "error": e.to_string() });
                eprintln!("{body}");
            } else {
                eprintln!("trellis: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

enum CliError {
    Usage(String),
    Garden(Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        CliError::Garden(e)
    }
}

impl From<&str> for CliError {
    fn from(e: &str) -> CliError {
        CliError::Usage(e.to_string())
    }
}

impl From<String> for CliError {
    fn from(e: String) -> CliError {
        CliError::Usage(e)
    }
}

async fn execute(global: &GlobalArgs, command: Command) -> Result<ExitCode, CliError> {
    let target: Target = global.target.parse()?;
    let client = Client::new(target);
    let out = Output { json: global.json };
    match command {
        Command::Ping => {
            client.ping().await?;
            out.print(&serde_json::json!({"ok": true}), |_| "ok".into());
        }
        Command::Capacity => {
            let c = client.capacity().await?;
            out.print(&c, |c| {
                format!(
                    "memory: {} bytes\ndisk: {} bytes\nschedulable disk: {} bytes\nmax containers: {}",
                    c.memory_in_bytes, c.disk_in_bytes, c.schedulable_disk_in_bytes, c.max_containers
                )
            });
        }
        Command::Create(args) => {
            let spec = create_spec(&args)?;
            let container = client.create(spec).await?;
            out.print(&serde_json::json!({"handle": container.handle()}), |_| {
                container.handle().to_string()
            });
        }
        Command::List { properties } => {
            let filter = pairs(&properties, "property")?;
            let handles: Vec<String> = client
                .containers(&filter)
                .await?
                .iter()
                .map(|c| c.handle().to_string())
                .collect();
            out.print(&handles, |h| h.join("\n"));
        }
        Command::Info { handle } => {
            let info = client.container(handle).info().await?;
            out.print(&info, pretty);
        }
        Command::Destroy { handles } => {
            for handle in handles {
                client.destroy(&handle).await?;
            }
            out.done();
        }
        Command::Stop { handle, kill } => {
            client.container(handle).stop(kill).await?;
            out.done();
        }
        Command::Run(args) => return run_process(&client, args, global.json).await,
        Command::Attach { handle, process_id } => {
            let container = client.container(handle);
            let io = ProcessIo {
                stdin: Some(Box::new(tokio::io::stdin())),
                stdout: Some(Box::new(tokio::io::stdout())),
                stderr: Some(Box::new(tokio::io::stderr())),
            };
            let mut process = container.attach(&process_id, io).await?;
            let status = process.wait().await?;
            return Ok(exit_code(status));
        }
        Command::Shell {
            handle,
            shell,
            user,
        } => {
            let args = RunArgs {
                handle,
                tty: true,
                user,
                dir: String::new(),
                env: vec!["TERM=xterm".into()],
                id: None,
                no_stdin: false,
                command: vec![shell],
            };
            return run_process(&client, args, global.json).await;
        }
        Command::StreamIn {
            handle,
            destination,
            user,
        } => {
            client
                .container(handle)
                .stream_in(StreamInSpec {
                    path: destination,
                    user,
                    tar: Box::new(tokio::io::stdin()),
                })
                .await?;
            out.done();
        }
        Command::StreamOut {
            handle,
            source,
            user,
        } => {
            let mut tar = client
                .container(handle)
                .stream_out(StreamOutSpec { path: source, user })
                .await?;
            let mut stdout = tokio::io::stdout();
            tokio::io::copy(&mut tar, &mut stdout)
                .await
                .map_err(Error::Connection)?;
            use tokio::io::AsyncWriteExt;
            stdout.flush().await.map_err(Error::Connection)?;
        }
        Command::NetIn {
            handle,
            host_port,
            container_port,
        } => {
            let (host, container) = client
                .container(handle)
                .net_in(host_port, container_port)
                .await?;
            out.print(
                &serde_json::json!({"host_port": host, "container_port": container}),
                |_| format!("{host} -> {container}"),
            );
        }
        Command::NetOut(args) => {
            let rule = net_out_rule(&args)?;
            client.container(&args.handle).net_out(&rule).await?;
            out.done();
        }
        Command::Property { action } => match action {
            PropertyAction::Get {
                handle,
                key: Some(key),
            } => {
                let value = client.container(handle).property(&key).await?;
                out.print(&serde_json::json!({"value": value}), |_| value.clone());
            }
            PropertyAction::Get { handle, key: None } => {
                let all = client.container(handle).properties().await?;
                out.print(&all, |all| {
                    all.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                });
            }
            PropertyAction::Set { handle, key, value } => {
                client.container(handle).set_property(&key, &value).await?;
                out.done();
            }
            PropertyAction::Rm { handle, key } => {
                client.container(handle).remove_property(&key).await?;
                out.done();
            }
        },
        Command::Metrics { handle } => {
            let metrics = client.container(handle).metrics().await?;
            out.print(&metrics, pretty);
        }
        Command::Limits { handle } => {
            let c: Container = client.container(handle);
            let limits = serde_json::json!({
                "bandwidth": c.current_bandwidth_limits().await?,
                "cpu": c.current_cpu_limits().await?,
                "disk": c.current_disk_limits().await?,
                "memory": c.current_memory_limits().await?,
            });
            out.print(&limits, pretty);
        }
        Command::GraceTime { handle, grace_time } => {
            client.container(handle).set_grace_time(grace_time).await?;
            out.done();
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status & 0xff).unwrap_or(1))
}

/// Terminal size of stdin, if it is a terminal.
fn terminal_size() -> Option<WindowSize> {
    let (columns, rows) = crate::tty::size()?;
    Some(WindowSize { columns, rows })
}

async fn run_process(client: &Client, args: RunArgs, json: bool) -> Result<ExitCode, CliError> {
    let mut command = args.command.into_iter();
    let path = command.next().ok_or("no command given")?;
    let spec = ProcessSpec {
        id: args.id.unwrap_or_default(),
        path,
        args: command.collect(),
        env: args.env,
        dir: args.dir,
        user: args.user,
        tty: args.tty.then(|| TtySpec {
            window_size: terminal_size(),
        }),
        ..Default::default()
    };
    // A TTY session puts the local terminal in raw mode, so keys reach the process as typed.
    let _raw = if args.tty {
        crate::tty::RawMode::enter()
    } else {
        None
    };
    let io = ProcessIo {
        stdin: (!args.no_stdin).then(|| Box::new(tokio::io::stdin()) as _),
        stdout: Some(Box::new(tokio::io::stdout())),
        stderr: Some(Box::new(tokio::io::stderr())),
    };
    let mut process = client.container(args.handle).run(spec, io).await?;
    if !json && !args.tty {
        eprintln!("process id: {}", process.id());
    }
    let status = tokio::select! {
        status = process.wait() => status?,
        _ = tokio::signal::ctrl_c(), if !args.tty => {
            process.signal(Signal::Terminate).await?;
            process.wait().await?
        }
    };
    drop(_raw);
    if json {
        println!(
            "{}",
            serde_json::json!({"process_id": process.id(), "exit_status": status})
        );
    }
    Ok(exit_code(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_specs_from_flags() {
        let args = CreateArgs {
            handle: Some("h".into()),
            rootfs: Some("/rootfs".into()),
            network: None,
            env: vec!["A=1".into()],
            properties: vec!["app=web".into()],
            grace_time: Some(Duration::from_secs(30)),
            limits: vec!["memory=1024".into(), "pids=10".into()],
            privileged: false,
        };
        let spec = create_spec(&args).unwrap();
        assert_eq!(spec.grace_time, 30_000_000_000);
        assert_eq!(spec.limits.memory_limits.limit_in_bytes, 1024);
        assert_eq!(spec.limits.pid_limits.max, 10);
        assert_eq!(spec.properties["app"], "web");
        let bad = CreateArgs {
            limits: vec!["colour=3".into()],
            ..args
        };
        assert!(create_spec(&bad).is_err());
    }
}

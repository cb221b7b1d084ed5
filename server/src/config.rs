//! `trellis server` flags, compatible with `gdn server` where they make sense.

use clap::{Args, ValueEnum};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Real containers on this Linux host.
    Linux,
    /// The simulator's in-memory OS with simulated processes (for client authors and tests).
    Fake,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Error,
    Fatal,
}

/// A flag given twice takes its last value (repeatable flags collect every value), so that
/// wrapper scripts such as `scripts/serve` can set defaults their callers override.
#[derive(Debug, Clone, Args)]
#[command(args_override_self = true)]
pub struct ServerArgs {
    /// Address to serve the Garden API on (TCP). Without it and --bind-socket: 127.0.0.1.
    #[arg(long)]
    pub bind_ip: Option<IpAddr>,
    #[arg(long, default_value_t = 7777)]
    pub bind_port: u16,
    /// Unix socket to serve the Garden API on (a stale file is replaced; mode 0777).
    #[arg(long)]
    pub bind_socket: Option<PathBuf>,
    /// Where container directories live (Garden's ContainerPath).
    #[arg(long, default_value = "/var/lib/trellis/depot")]
    pub depot: PathBuf,
    /// Durable server state: container records, image cache.
    #[arg(long, default_value = "/var/lib/trellis")]
    pub state_dir: PathBuf,
    /// Runtime files that need not survive a reboot.
    #[arg(long, default_value = "/run/trellis")]
    pub run_dir: PathBuf,
    /// Pool container subnets are taken from.
    #[arg(long, default_value = "10.254.0.0/22")]
    pub network_pool: ipnetwork::Ipv4Network,
    /// Root filesystem for containers whose spec names none (a relative path is taken from
    /// the current directory).
    #[arg(long, default_value = "", value_parser = parse_default_rootfs)]
    pub default_rootfs: String,
    /// Grace time for containers created without one (`5m`, `30s`, `1h30m`, or seconds); 0
    /// means they never expire.
    #[arg(long, default_value = "0", value_parser = parse_go_duration)]
    pub default_grace_time: Duration,
    /// Most containers at once (0: only the network pool limits it).
    #[arg(long, default_value_t = 0)]
    pub max_containers: u64,
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
    #[arg(long, default_value_t = 61001)]
    pub port_pool_start: u32,
    #[arg(long, default_value_t = 4534)]
    pub port_pool_size: u32,
    /// The host address mapped ports are reached on (reported as ExternalIP); by default the
    /// address of the interface holding the default route, as gdn does.
    #[arg(long)]
    pub external_ip: Option<Ipv4Addr>,
    /// MTU of container interfaces (0: as the host's).
    #[arg(long, default_value_t = 0)]
    pub mtu: u32,
    /// Networks containers may never reach (repeatable).
    #[arg(long)]
    pub deny_network: Vec<ipnetwork::Ipv4Network>,
    /// Let containers reach the host's own addresses.
    #[arg(long)]
    pub allow_host_access: bool,
    /// DNS servers for containers' resolv.conf, instead of the host's (repeatable).
    #[arg(long)]
    pub dns_server: Vec<IpAddr>,
    /// DNS servers appended after the others in containers' resolv.conf (repeatable).
    #[arg(long)]
    pub additional_dns_server: Vec<IpAddr>,
    /// A line appended verbatim to containers' /etc/hosts (repeatable, kept in order).
    #[arg(long)]
    pub additional_host_entry: Vec<String>,
    /// Up to 2 letters or digits naming this server's bridges and firewall table, so that
    /// several servers on one host leave each other alone.
    #[arg(long, default_value = "")]
    pub tag: String,
    #[arg(long, value_enum, default_value_t = Backend::Linux)]
    pub backend: Backend,
    /// Serve `/debug/vars` (expvar-style memory figures) on this address; off when absent.
    #[arg(long)]
    pub debug_bind_ip: Option<IpAddr>,
    #[arg(long, default_value_t = 17013)]
    pub debug_bind_port: u16,
    /// The lowest host uid that container uid 1 maps to in unprivileged containers (container
    /// root is always host uid 4294967294).
    #[arg(long, default_value_t = 1)]
    pub uid_map_start: u32,
    /// How many container uids from 1 on are mapped (0: all up to 4294967293).
    #[arg(long, default_value_t = 0)]
    pub uid_map_length: u32,
    /// As --uid-map-start, for gids.
    #[arg(long, default_value_t = 1)]
    pub gid_map_start: u32,
    /// As --uid-map-length, for gids.
    #[arg(long, default_value_t = 0)]
    pub gid_map_length: u32,
    /// Processes of unprivileged containers run with no_new_privs (setuid binaries and file
    /// capabilities gain nothing; ICMP sockets are opened to them instead).
    #[arg(long)]
    pub no_new_privileges: bool,
    /// Refuse to create privileged containers.
    #[arg(long)]
    pub disable_privileged_containers: bool,
    /// Destroy every container found at start (recorded ones and whatever the host still has
    /// of others), before serving.
    #[arg(long)]
    pub destroy_containers_on_startup: bool,
    /// gdn's flags that have no effect in Trellis: accepted with gdn's value syntax, each
    /// given one warns once at start (see `crate::gdn_flags`).
    #[command(flatten)]
    pub gdn: GdnOnlyArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub image_plugins: ImagePluginArgs,
}

/// `gdn server` flags Trellis accepts, checks the value of, and does not act on: either not
/// implemented yet or meaningless here (`crate::gdn_flags` says which, and why). Paths of
/// gdn's file flags are not checked for existence: nothing is run from them.
#[derive(Debug, Clone, Default, Args)]
pub struct GdnOnlyArgs {
    // Server Configuration
    #[arg(long)]
    pub skip_setup: bool,
    #[arg(long, value_parser = parse_go_duration)]
    pub read_header_timeout: Option<Duration>,
    // Container Lifecycle
    #[arg(long)]
    pub properties_path: Option<PathBuf>,
    #[arg(long)]
    pub console_sockets_path: Option<PathBuf>,
    #[arg(long)]
    pub cleanup_process_dirs_on_wait: bool,
    /// `TYPE MAJOR:MINOR ACCESS`, e.g. `c 10:229 rwm` (repeatable).
    #[arg(long, value_parser = parse_device_cgroup_rule)]
    pub device_cgroup_rule: Vec<DeviceCgroupRule>,
    #[arg(long)]
    pub apparmor: Option<String>,
    // Binary Tools
    #[arg(long)]
    pub assets_dir: Option<PathBuf>,
    #[arg(long)]
    pub dadoo_bin: Option<PathBuf>,
    #[arg(long)]
    pub nstar_bin: Option<PathBuf>,
    #[arg(long)]
    pub tar_bin: Option<PathBuf>,
    #[arg(long)]
    pub iptables_bin: Option<PathBuf>,
    #[arg(long)]
    pub iptables_restore_bin: Option<PathBuf>,
    #[arg(long)]
    pub init_bin: Option<PathBuf>,
    // Runtime
    #[arg(long)]
    pub runtime_plugin: Option<String>,
    #[arg(long)]
    pub runtime_plugin_extra_arg: Vec<String>,
    // Image
    #[arg(long)]
    pub no_image_plugin: bool,
    // Container Networking
    #[arg(long)]
    pub port_pool_properties_path: Option<PathBuf>,
    #[arg(long)]
    pub network_plugin: Option<PathBuf>,
    #[arg(long)]
    pub network_plugin_extra_arg: Vec<String>,
    #[arg(long)]
    pub enable_container_network_metrics: bool,
    // Limits
    #[arg(long)]
    pub cpu_quota_per_share: Option<u64>,
    #[arg(long)]
    pub default_container_blockio_weight: Option<u16>,
    #[arg(long)]
    pub container_io_max_read_bps: Option<u64>,
    #[arg(long)]
    pub container_io_max_write_bps: Option<u64>,
    #[arg(long)]
    pub container_io_max_read_iops: Option<u64>,
    #[arg(long)]
    pub container_io_max_write_iops: Option<u64>,
    #[arg(long)]
    pub disable_swap_limit: bool,
    // Metrics
    #[arg(long, value_parser = parse_go_duration)]
    pub metrics_emission_interval: Option<Duration>,
    #[arg(long)]
    pub dropsonde_origin: Option<String>,
    #[arg(long)]
    pub dropsonde_destination: Option<String>,
    #[arg(long)]
    pub cpu_entitlement_per_share: Option<f64>,
    // Containerd
    #[arg(long)]
    pub containerd_socket: Option<PathBuf>,
    #[arg(long)]
    pub use_containerd_for_processes: bool,
    // CPU Throttling
    #[arg(long)]
    pub enable_cpu_throttling: bool,
    #[arg(long)]
    pub cpu_throttling_check_interval: Option<u32>,
    // Sysctl
    #[arg(long)]
    pub tcp_keepalive_time: Option<u32>,
    #[arg(long)]
    pub tcp_keepalive_interval: Option<u32>,
    #[arg(long)]
    pub tcp_keepalive_probes: Option<u32>,
    #[arg(long)]
    pub tcp_retries1: Option<u32>,
    #[arg(long)]
    pub tcp_retries2: Option<u32>,
}

/// A `--device-cgroup-rule` as gdn reads it: `TYPE MAJOR:MINOR ACCESS`, each number or `*`
/// (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCgroupRule {
    pub kind: String,
    pub major: Option<i64>,
    pub minor: Option<i64>,
    pub access: String,
}

/// gdn's syntax: exactly three fields separated by single spaces.
fn parse_device_cgroup_rule(value: &str) -> Result<DeviceCgroupRule, String> {
    let fields: Vec<&str> = value.split(' ').collect();
    let [kind, numbers, access] = fields[..] else {
        return Err(format!("invalid device specification: {value}"));
    };
    let Some((major, minor)) = numbers.split_once(':') else {
        return Err(format!("invalid device versions: {value}"));
    };
    let number = |n: &str, which: &str| match n {
        "*" => Ok(None),
        n => n
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("invalid device {which} version: {value}")),
    };
    Ok(DeviceCgroupRule {
        kind: kind.trim().to_string(),
        major: number(major, "major")?,
        minor: number(minor, "minor")?,
        access: access.trim().to_string(),
    })
}

/// Where `docker://` images come from (gdn's "Docker Image Fetching" flags).
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// The registry (HOST[:PORT]) of image URIs without a host (`docker:///repo#tag`).
    #[arg(long, default_value = trellis_os::linux::registry::DOCKER_HUB, value_parser = parse_registry)]
    pub docker_registry: String,
    /// A registry (HOST[:PORT] as written in image URIs, or a CIDR of registry addresses) that
    /// may be spoken to over plain HTTP or unverified TLS; every other one must offer verified
    /// HTTPS (repeatable).
    #[arg(long)]
    pub insecure_docker_registry: Vec<String>,
}

impl RegistryArgs {
    /// With the proxies named by this process's environment (HTTPS_PROXY, HTTP_PROXY, NO_PROXY).
    pub fn settings(&self) -> trellis_os::linux::registry::RegistrySettings {
        trellis_os::linux::registry::RegistrySettings {
            default_registry: self.docker_registry.clone(),
            insecure: self.insecure_docker_registry.clone(),
            proxy: trellis_os::linux::registry::ProxySettings::from_env(),
        }
    }
}

/// External image plugins (gdn's "Image Graph" flags): binaries such as grootfs that make
/// containers' root filesystems instead of Trellis.
#[derive(Debug, Clone, Args)]
pub struct ImagePluginArgs {
    /// The image plugin of unprivileged containers.
    #[arg(long, value_parser = parse_file_flag)]
    pub image_plugin: Option<PathBuf>,
    /// An argument given to the image plugin before its command (repeatable). One starting
    /// with `-` is given as `--image-plugin-extra-arg=-x` or quoted (`'"-x"'`), as to gdn.
    #[arg(long, value_parser = unquote_go_flag)]
    pub image_plugin_extra_arg: Vec<String>,
    /// The image plugin of privileged containers.
    #[arg(long, value_parser = parse_file_flag)]
    pub privileged_image_plugin: Option<PathBuf>,
    /// An argument given to the privileged image plugin before its command (repeatable).
    #[arg(long, value_parser = unquote_go_flag)]
    pub privileged_image_plugin_extra_arg: Vec<String>,
}

impl ImagePluginArgs {
    /// `--image-plugin` and `--privileged-image-plugin`, each with its extra arguments.
    pub fn settings(&self) -> trellis_os::linux::image_plugin::ImagePluginSettings {
        let plugin = |binary: &Option<PathBuf>, extra_args: &[String]| {
            binary
                .clone()
                .map(|binary| trellis_os::linux::image_plugin::ImagePlugin {
                    binary,
                    extra_args: extra_args.to_vec(),
                })
        };
        trellis_os::linux::image_plugin::ImagePluginSettings {
            unprivileged: plugin(&self.image_plugin, &self.image_plugin_extra_arg),
            privileged: plugin(
                &self.privileged_image_plugin,
                &self.privileged_image_plugin_extra_arg,
            ),
        }
    }
}

/// A file that exists (not a directory), made absolute: gdn's `FileFlag`.
fn parse_file_flag(value: &str) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(value).map_err(|e| format!("{value}: {e}"))?;
    if meta.is_dir() {
        return Err(format!("path '{value}' is a directory, not a file"));
    }
    std::path::absolute(value).map_err(|e| format!("cannot make {value:?} absolute: {e}"))
}

/// A flag value as gdn's flag parser takes it: a double-quoted one is unquoted (how a value
/// starting with `-` is written on gdn's command line).
fn unquote_go_flag(value: &str) -> Result<String, String> {
    if value.starts_with('"') {
        crate::config_file::go_unquote(value)
    } else {
        Ok(value.to_string())
    }
}

/// A registry is `host[:port]`, not a URL.
fn parse_registry(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('/') || value.contains('#') {
        return Err(format!("{value:?} is not HOST[:PORT]"));
    }
    Ok(value.to_string())
}

impl ServerArgs {
    /// The TCP address to listen on, if any.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match (self.bind_ip, &self.bind_socket) {
            (Some(ip), _) => Some(SocketAddr::new(ip, self.bind_port)),
            (None, Some(_)) => None,
            (None, None) => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                self.bind_port,
            )),
        }
    }

    pub fn debug_addr(&self) -> Option<SocketAddr> {
        self.debug_bind_ip
            .map(|ip| SocketAddr::new(ip, self.debug_bind_port))
    }

    pub fn core_config(&self) -> trellis_core::Config {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
            ^ u64::from(std::process::id()).rotate_left(32);
        trellis_core::Config {
            network_pool: self.network_pool,
            // Read from the host at start (`server::run`).
            host_networks: Vec::new(),
            max_containers: self.max_containers,
            default_grace_time: self.default_grace_time.as_nanos() as u64,
            port_pool_start: self.port_pool_start,
            port_pool_size: self.port_pool_size,
            external_ip: self.external_ip,
            depot: self.depot.to_string_lossy().into_owned(),
            seed,
            disable_privileged_containers: self.disable_privileged_containers,
            bugs: Default::default(),
        }
    }

    /// The user namespace mapping the flags describe, or why they are invalid.
    pub fn id_mapping(
        &self,
    ) -> Result<
        trellis_os::linux::security::IdMapping,
        trellis_os::linux::security::userns::IdMapError,
    > {
        trellis_os::linux::security::IdMapping::from_flags(
            trellis_os::linux::security::IdMapFlags {
                uid_start: self.uid_map_start,
                uid_length: self.uid_map_length,
                gid_start: self.gid_map_start,
                gid_length: self.gid_map_length,
            },
        )
    }

    pub fn linux_config(
        &self,
    ) -> Result<trellis_os::LinuxConfig, trellis_os::linux::security::userns::IdMapError> {
        let mut network = trellis_os::linux::network::NetworkSettings::default();
        if self.mtu != 0 {
            network.mtu = self.mtu;
        }
        network.dns.dns_servers = self.dns_server.clone();
        network.dns.additional_dns_servers = self.additional_dns_server.clone();
        network.dns.additional_host_entries = self.additional_host_entry.clone();
        network.firewall.deny_networks = self.deny_network.clone();
        network.firewall.allow_host_access = self.allow_host_access;
        network.tag = self.tag.clone();
        Ok(trellis_os::LinuxConfig {
            layout: trellis_os::Layout::new(&self.depot, &self.state_dir, &self.run_dir),
            default_rootfs: self.default_rootfs.clone(),
            helper_binary: None,
            network,
            security: trellis_os::linux::security::SecuritySettings {
                id_mapping: self.id_mapping()?,
                no_new_privileges: self.no_new_privileges,
            },
            registry: self.registry.settings(),
            image_plugins: self.image_plugins.settings(),
        })
    }
}

pub use trellis_client::cli::parse_duration as parse_go_duration;

/// A plain path made absolute (containers resolve their rootfs long after the server started,
/// not from its working directory); URLs (`docker://`, `oci://`, `raw://`) as given.
fn parse_default_rootfs(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains("://") || value.starts_with('/') {
        return Ok(value.to_string());
    }
    std::path::absolute(value)
        .map(|p| p.display().to_string())
        .map_err(|e| format!("cannot make {value:?} absolute: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        top: Top,
    }

    #[derive(clap::Subcommand)]
    enum Top {
        Server(ServerArgs),
    }

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        use clap::Parser;
        let Top::Server(args) = Cli::try_parse_from(["trellis", "server"].iter().chain(args))?.top;
        Ok(args)
    }

    #[test]
    fn later_flags_override_earlier_ones_and_repeatable_flags_collect() {
        let args = parse(&[
            "--bind-port",
            "7777",
            "--deny-network",
            "10.1.0.0/16",
            "--bind-port",
            "7778",
            "--deny-network",
            "10.2.0.0/16",
        ])
        .expect("parses");
        assert_eq!(args.bind_port, 7778);
        assert_eq!(args.deny_network.len(), 2);
        assert!(parse(&["--bind-port", "x"]).is_err());
    }

    #[test]
    fn a_relative_default_rootfs_is_made_absolute_and_urls_are_kept() {
        let cwd = std::env::current_dir().unwrap();
        let args = parse(&["--default-rootfs", "images/busybox"]).unwrap();
        assert_eq!(
            args.default_rootfs,
            cwd.join("images/busybox").display().to_string()
        );
        for kept in [
            "/srv/rootfs",
            "docker://127.0.0.1:5000/busybox#1",
            "oci:///l#t",
            "",
        ] {
            let args = parse(&["--default-rootfs", kept]).unwrap();
            assert_eq!(args.default_rootfs, kept);
        }
    }

    #[test]
    fn registry_flags() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.registry.docker_registry, "registry-1.docker.io");
        assert!(args.registry.insecure_docker_registry.is_empty());
        let args = parse(&[
            "--docker-registry",
            "127.0.0.1:5000",
            "--insecure-docker-registry",
            "127.0.0.1:5000",
            "--insecure-docker-registry",
            "10.0.0.0/8",
        ])
        .unwrap();
        let settings = args.registry.settings();
        assert_eq!(settings.default_registry, "127.0.0.1:5000");
        assert_eq!(settings.insecure, ["127.0.0.1:5000", "10.0.0.0/8"]);
        assert!(parse(&["--docker-registry", "https://registry.example/v2"]).is_err());
        assert!(parse(&["--docker-registry", ""]).is_err());
    }

    #[test]
    fn image_plugin_flags_take_extra_arguments_as_gdn() {
        assert!(!parse(&[]).unwrap().image_plugins.settings().any());
        let args = parse(&[
            "--image-plugin",
            "/bin/sh",
            "--image-plugin-extra-arg=--store",
            "--image-plugin-extra-arg",
            "/var/store",
            "--privileged-image-plugin",
            "/bin/sh",
            "--privileged-image-plugin-extra-arg",
            "\"--config\"",
        ])
        .unwrap();
        let settings = args.image_plugins.settings();
        let unprivileged = settings.unprivileged.expect("an unprivileged plugin");
        assert_eq!(unprivileged.binary, PathBuf::from("/bin/sh"));
        assert_eq!(unprivileged.extra_args, ["--store", "/var/store"]);
        // Quoted, as gdn's deployments write values starting with `-`.
        assert_eq!(settings.privileged.unwrap().extra_args, ["--config"]);
        // Unquoted and as a separate argument, it is a flag, as to gdn.
        assert!(parse(&["--image-plugin-extra-arg", "--store"]).is_err());
        // The plugin must be a file that exists, as gdn's FileFlag.
        assert!(parse(&["--image-plugin", "/nonexistent/grootfs"]).is_err());
        assert!(parse(&["--privileged-image-plugin", "/bin"]).is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_go_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_go_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        assert!(parse_go_duration("-1s").is_err());
        assert!(parse_go_duration("5x").is_err());
        assert!(parse_go_duration("m").is_err());
        assert!(parse_go_duration("").is_err());
    }
}

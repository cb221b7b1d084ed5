//! `trellis server` flags, compatible with `gdn server` where they make sense.

use clap::{Args, ValueEnum};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use trellis_os::linux::cgroup::{CgroupConfig, IoMax};
use trellis_os::linux::security::devices::AllowRule;

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

/// How log lines are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text for people.
    Text,
    /// JSON lines as gdn writes them (Cloud Foundry's lager).
    Lager,
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
    /// The directory of container records (each holds a container's properties, limits and
    /// port mappings; gdn keeps properties in one file here); default `<state-dir>/records`.
    #[arg(long)]
    pub properties_path: Option<PathBuf>,
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
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The time in `--log-format lager` lines: rfc3339 as gdn, or lager's unix-epoch.
    #[arg(long, value_enum, default_value_t = crate::lager::TimeFormat::Rfc3339)]
    pub log_time_format: crate::lager::TimeFormat,
    /// How long a client may take to send a request's head (`10s`, `1m`; 0: no limit).
    #[arg(long, default_value = "30s", value_parser = parse_go_duration)]
    pub read_header_timeout: Duration,
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
    pub cgroup: CgroupArgs,
    #[command(flatten)]
    pub networking: NetworkingArgs,
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
    // Container Lifecycle
    #[arg(long)]
    pub console_sockets_path: Option<PathBuf>,
    #[arg(long)]
    pub cleanup_process_dirs_on_wait: bool,
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
    // Metrics
    #[arg(long, value_parser = parse_go_duration)]
    pub metrics_emission_interval: Option<Duration>,
    #[arg(long)]
    pub dropsonde_origin: Option<String>,
    #[arg(long)]
    pub dropsonde_destination: Option<String>,
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
}

/// gdn's network plugin, network metrics and per-container TCP sysctl flags.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkingArgs {
    /// An external network plugin wires containers' networks (guardian's contract).
    #[arg(long)]
    pub network_plugin: Option<PathBuf>,
    /// An argument given to the network plugin before its own (repeatable; may start with
    /// `-`, as plugin flags do).
    #[arg(long, allow_hyphen_values = true)]
    pub network_plugin_extra_arg: Vec<String>,
    /// Metrics carry the bytes each container received and sent.
    #[arg(long)]
    pub enable_container_network_metrics: bool,
    /// net.ipv4.tcp_keepalive_time inside containers (unset or 0: the host's).
    #[arg(long)]
    pub tcp_keepalive_time: Option<u32>,
    /// net.ipv4.tcp_keepalive_intvl inside containers (unset or 0: the host's).
    #[arg(long)]
    pub tcp_keepalive_interval: Option<u32>,
    /// net.ipv4.tcp_keepalive_probes inside containers (unset or 0: the host's).
    #[arg(long)]
    pub tcp_keepalive_probes: Option<u32>,
    /// net.ipv4.tcp_retries1 inside containers (unset or 0: the host's).
    #[arg(long)]
    pub tcp_retries1: Option<u32>,
    /// net.ipv4.tcp_retries2 inside containers (unset or 0: the host's).
    #[arg(long)]
    pub tcp_retries2: Option<u32>,
}

/// What every container's cgroup gets besides its own limits (gdn's `Limits` flags, its
/// `--device-cgroup-rule` and `--cpu-entitlement-per-share`).
#[derive(Debug, Clone, Args)]
pub struct CgroupArgs {
    /// A device rule for privileged containers, `TYPE MAJOR:MINOR ACCESS` (e.g. `c 10:200 rwm`;
    /// a number may be `*`); it replaces the built-in rule for the same device (repeatable).
    #[arg(long, value_parser = AllowRule::parse)]
    pub device_cgroup_rule: Vec<AllowRule>,
    /// CPU quota per share, in µs per 100 ms period: a container may use at most its shares
    /// times this (at least 1 ms); 0: no quota.
    #[arg(long, default_value_t = 0)]
    pub cpu_quota_per_share: u64,
    /// The block IO weight of every container (10 to 1000; 0: the kernel's default).
    #[arg(long, default_value_t = 0, value_parser = parse_blockio_weight)]
    pub default_container_blockio_weight: u16,
    /// Read bytes/s each container may do on each of the host's disks (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub container_io_max_read_bps: u64,
    /// Write bytes/s each container may do on each of the host's disks (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub container_io_max_write_bps: u64,
    /// Read operations/s each container may do on each of the host's disks (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub container_io_max_read_iops: u64,
    /// Write operations/s each container may do on each of the host's disks (0: unlimited).
    #[arg(long, default_value_t = 0)]
    pub container_io_max_write_iops: u64,
    /// A container's memory limit leaves its swap unlimited.
    #[arg(long)]
    pub disable_swap_limit: bool,
    /// The CPU entitlement of one share in metrics, in % of a core (0: gdn's default,
    /// (cpus × 100) / (memory in MiB)).
    #[arg(long, default_value_t = 0.0, value_parser = parse_entitlement_per_share)]
    pub cpu_entitlement_per_share: f64,
}

impl CgroupArgs {
    pub fn config(&self) -> CgroupConfig {
        CgroupConfig {
            cpu_quota_per_share: self.cpu_quota_per_share,
            blockio_weight: self.default_container_blockio_weight,
            io_max: IoMax {
                read_bps: self.container_io_max_read_bps,
                write_bps: self.container_io_max_write_bps,
                read_iops: self.container_io_max_read_iops,
                write_iops: self.container_io_max_write_iops,
            },
            disable_swap_limit: self.disable_swap_limit,
            privileged_device_rules: self.device_cgroup_rule.clone(),
            // As gdn: 0 means its default.
            cpu_entitlement_per_share: (self.cpu_entitlement_per_share > 0.0)
                .then_some(self.cpu_entitlement_per_share),
        }
    }
}

/// The kernel takes blkio weights from 10 to 1000.
fn parse_blockio_weight(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(weight) if weight == 0 || (10..=1000).contains(&weight) => Ok(weight),
        _ => Err(format!(
            "{value:?} is not a block IO weight (10 to 1000, or 0)"
        )),
    }
}

fn parse_entitlement_per_share(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(percent) if percent.is_finite() && percent >= 0.0 => Ok(percent),
        _ => Err(format!("{value:?} is not a percentage of a core")),
    }
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
        crate::go_literal::unquote(value)
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

    /// Where the Linux backend keeps things.
    pub fn layout(&self) -> trellis_os::Layout {
        let layout = trellis_os::Layout::new(&self.depot, &self.state_dir, &self.run_dir);
        match &self.properties_path {
            Some(records) => layout.with_records_dir(records),
            None => layout,
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
            network_plugin: self.networking.network_plugin.is_some(),
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
        network.tcp_sysctls = trellis_os::linux::network::sysctl::TcpSysctls {
            keepalive_time: self.networking.tcp_keepalive_time,
            keepalive_interval: self.networking.tcp_keepalive_interval,
            keepalive_probes: self.networking.tcp_keepalive_probes,
            retries1: self.networking.tcp_retries1,
            retries2: self.networking.tcp_retries2,
        };
        network.container_metrics = self.networking.enable_container_network_metrics;
        network.plugin = self.networking.network_plugin.as_ref().map(|path| {
            trellis_os::linux::network::plugin::PluginSettings {
                path: path.clone(),
                extra_args: self.networking.network_plugin_extra_arg.clone(),
            }
        });
        network.external_ip = self.external_ip;
        Ok(trellis_os::LinuxConfig {
            layout: self.layout(),
            default_rootfs: self.default_rootfs.clone(),
            helper_binary: None,
            network,
            security: trellis_os::linux::security::SecuritySettings {
                id_mapping: self.id_mapping()?,
                no_new_privileges: self.no_new_privileges,
            },
            registry: self.registry.settings(),
            cgroup: self.cgroup.config(),
            image_plugins: self.image_plugins.settings(),
        })
    }
}

pub use trellis_proto::duration::parse_duration as parse_go_duration;

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
    fn cgroup_flags_become_the_cgroup_config() {
        let config = parse(&[]).unwrap().cgroup.config();
        assert_eq!(config.cpu_quota_per_share, 0);
        assert_eq!(config.cpu_entitlement_per_share, None);
        assert!(!config.disable_swap_limit && config.privileged_device_rules.is_empty());
        let config = parse(&[
            "--device-cgroup-rule",
            "c 10:200 rwm",
            "--device-cgroup-rule",
            "b *:* r",
            "--cpu-quota-per-share",
            "100",
            "--default-container-blockio-weight",
            "10",
            "--container-io-max-read-bps",
            "1",
            "--container-io-max-write-bps",
            "2",
            "--container-io-max-read-iops",
            "3",
            "--container-io-max-write-iops",
            "4",
            "--disable-swap-limit",
            "--cpu-entitlement-per-share",
            "0.5",
        ])
        .unwrap()
        .cgroup
        .config();
        assert_eq!(config.privileged_device_rules.len(), 2);
        assert_eq!(config.cpu_quota_per_share, 100);
        assert_eq!(config.blockio_weight, 10);
        assert_eq!(
            config.io_max,
            IoMax {
                read_bps: 1,
                write_bps: 2,
                read_iops: 3,
                write_iops: 4
            }
        );
        assert!(config.disable_swap_limit);
        assert_eq!(config.cpu_entitlement_per_share, Some(0.5));
        for bad in [
            &["--default-container-blockio-weight", "9"][..],
            &["--default-container-blockio-weight", "1001"],
            &["--cpu-entitlement-per-share", "-1"],
            &["--cpu-entitlement-per-share", "NaN"],
            &["--device-cgroup-rule", "c 1:3"],
            &["--device-cgroup-rule", "c 1:3 rwx"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
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
}

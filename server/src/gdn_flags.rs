//! Every `gdn server` flag (guardian's `guardiancmd/command.go` and `lager_flag.go`), with what
//! Trellis does with it. `trellis server` accepts each by gdn's name and value syntax, on the
//! command line and in the config file (`crate::config_file`); a flag Trellis does not act on
//! warns once at start. The README's flag table is [`markdown_table`] (a test keeps them equal).

use clap::parser::ValueSource;
use clap::ArgMatches;

/// What Trellis does with a gdn flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It takes effect as in gdn (the text says how, or what differs).
    Implemented(&'static str),
    /// Accepted, no effect yet: the behaviour is still to be built (the text says where).
    NotYet(&'static str),
    /// Accepted, no effect: it configures something Trellis does not have (the text says why).
    NoEffect(&'static str),
}

/// One `gdn server` flag.
#[derive(Debug, Clone, Copy)]
pub struct GdnFlag {
    /// The long name, without `--`.
    pub name: &'static str,
    /// gdn's option group (`[server.<group>]` sections of the config file hold its flags).
    pub group: &'static str,
    /// The value syntax (`None`: a switch). Repeatable flags end in `...`.
    pub value: Option<&'static str>,
    /// gdn's default, if any.
    pub gdn_default: &'static str,
    pub status: Status,
}

impl GdnFlag {
    pub fn repeatable(&self) -> bool {
        self.value.is_some_and(|v| v.ends_with("..."))
    }

    /// The warning logged at start when the flag is given, for flags Trellis does not act on.
    pub fn warning(&self) -> Option<String> {
        match self.status {
            Status::Implemented(_) => None,
            Status::NotYet(why) => Some(format!(
                "--{} has no effect here: not implemented yet ({why})",
                self.name
            )),
            Status::NoEffect(why) => Some(format!("--{} has no effect here: {why}", self.name)),
        }
    }
}

const SERVER: &str = "Server Configuration";
const LIFECYCLE: &str = "Container Lifecycle";
const BIN: &str = "Binary Tools";
const RUNTIME: &str = "Runtime";
const IMAGE: &str = "Image";
const DOCKER: &str = "Docker Image Fetching";
const NETWORK: &str = "Container Networking";
const LIMITS: &str = "Limits";
const METRICS: &str = "Metrics";
const CONTAINERD: &str = "Containerd";
const THROTTLING: &str = "CPU Throttling";
const SYSCTL: &str = "Sysctl";
/// `--log-level` belongs to no group in gdn: only `[server]` holds it.
const NO_GROUP: &str = "";

const ONE_BINARY: &str = "Trellis is one binary: its own init, process keeper, tar streaming \
                          and nftables firewall stand for gdn's helper binaries";
const OWN_RUNTIME: &str = "Trellis runs containers with its own built-in runtime, not an OCI \
                           runtime binary such as runc";
const NO_DROPSONDE: &str = "Trellis emits no dropsonde (Loggregator v1) metrics; its figures \
                            are on the debug server's /debug/vars";
const NO_CONTAINERD: &str = "Trellis does not use containerd";
const NETWORK_PLUGIN: &str = "guardian's contract; NetIn host ports still come from the port pool";
const IO_MAX: &str =
    "on each disk in /sys/block but loop, ram and dm-, as gdn; cgroup v2 io.max and \
                      also v1 blkio.throttle (gdn: v2 only)";
const SYSCTLS: &str = "in each container's network namespace; unset: the host's value";
const THROTTLE: &str = "CPU throttling";

const fn flag(
    name: &'static str,
    group: &'static str,
    value: Option<&'static str>,
    gdn_default: &'static str,
    status: Status,
) -> GdnFlag {
    GdnFlag {
        name,
        group,
        value,
        gdn_default,
        status,
    }
}

use Status::{Implemented as Yes, NoEffect, NotYet};

/// All of them, in gdn's order.
pub const GDN_FLAGS: &[GdnFlag] = &[
    flag(
        "log-level",
        NO_GROUP,
        Some("debug\\|info\\|error\\|fatal"),
        "info",
        Yes("gdn's lager JSON lines with `--log-format lager` (default: text)"),
    ),
    flag("bind-ip", SERVER, Some("IP"), "", Yes("without it and --bind-socket: 127.0.0.1")),
    flag("bind-port", SERVER, Some("PORT"), "", Yes("default 7777")),
    flag(
        "bind-socket",
        SERVER,
        Some("PATH"),
        "/tmp/garden.sock",
        Yes("no default: used only when given"),
    ),
    flag("debug-bind-ip", SERVER, Some("IP"), "", Yes("serves /debug/vars")),
    flag("debug-bind-port", SERVER, Some("PORT"), "17013", Yes("")),
    flag("tag", SERVER, Some("TAG"), "", Yes("names bridges and nftables tables")),
    flag(
        "skip-setup",
        SERVER,
        None,
        "",
        NoEffect("Trellis has no separate host setup step; it prepares its cgroups at start"),
    ),
    flag(
        "read-header-timeout",
        SERVER,
        Some("DURATION"),
        "",
        Yes("default 30s (gdn: no limit); 0 means no limit"),
    ),
    flag("depot", LIFECYCLE, Some("DIR"), "/var/run/gdn/depot", Yes("default /var/lib/trellis/depot")),
    flag(
        "properties-path",
        LIFECYCLE,
        Some("PATH"),
        "",
        Yes("the directory of container records (properties, limits, port mappings), default `<state-dir>/records`; kept without it too"),
    ),
    flag(
        "console-sockets-path",
        LIFECYCLE,
        Some("PATH"),
        "",
        NoEffect("Trellis's runtime makes TTYs itself, without runc console sockets"),
    ),
    flag(
        "cleanup-process-dirs-on-wait",
        LIFECYCLE,
        None,
        "",
        NoEffect("Trellis keeps no process directories; an exited process stays attachable for 60 s"),
    ),
    flag(
        "disable-privileged-containers",
        LIFECYCLE,
        None,
        "",
        Yes(""),
    ),
    flag(
        "device-cgroup-rule",
        LIFECYCLE,
        Some("'TYPE MAJOR:MINOR ACCESS'..."),
        "",
        Yes("privileged containers only, as gdn; a rule replaces the built-in one for the same device"),
    ),
    flag("uid-map-start", LIFECYCLE, Some("UID"), "1", Yes("")),
    flag("uid-map-length", LIFECYCLE, Some("N"), "", Yes("")),
    flag("gid-map-start", LIFECYCLE, Some("GID"), "1", Yes("")),
    flag("gid-map-length", LIFECYCLE, Some("N"), "", Yes("")),
    flag("default-rootfs", LIFECYCLE, Some("PATH\\|URI"), "", Yes("")),
    flag("default-grace-time", LIFECYCLE, Some("DURATION"), "", Yes("")),
    flag("destroy-containers-on-startup", LIFECYCLE, None, "", Yes("")),
    flag(
        "apparmor",
        LIFECYCLE,
        Some("PROFILE"),
        "",
        NoEffect("Trellis applies no AppArmor profile; seccomp, capabilities and masked paths confine unprivileged containers"),
    ),
    flag("no-new-privileges", LIFECYCLE, None, "", Yes("")),
    flag("assets-dir", BIN, Some("DIR"), "/var/gdn/assets", NoEffect(ONE_BINARY)),
    flag("dadoo-bin", BIN, Some("FILE"), "", NoEffect(ONE_BINARY)),
    flag("nstar-bin", BIN, Some("FILE"), "", NoEffect(ONE_BINARY)),
    flag("tar-bin", BIN, Some("FILE"), "", NoEffect(ONE_BINARY)),
    flag("iptables-bin", BIN, Some("FILE"), "/sbin/iptables", NoEffect(ONE_BINARY)),
    flag(
        "iptables-restore-bin",
        BIN,
        Some("FILE"),
        "/sbin/iptables-restore",
        NoEffect(ONE_BINARY),
    ),
    flag("init-bin", BIN, Some("FILE"), "", NoEffect(ONE_BINARY)),
    flag("runtime-plugin", RUNTIME, Some("FILE"), "runc", NoEffect(OWN_RUNTIME)),
    flag("runtime-plugin-extra-arg", RUNTIME, Some("ARG..."), "", NoEffect(OWN_RUNTIME)),
    flag(
        "no-image-plugin",
        IMAGE,
        None,
        "",
        NoEffect("Trellis has no embedded grootfs; it unpacks images itself"),
    ),
    flag(
        "image-plugin",
        IMAGE,
        Some("FILE"),
        "",
        Yes("grootfs's command line: create, delete, stats, capacity"),
    ),
    flag("image-plugin-extra-arg", IMAGE, Some("ARG..."), "", Yes("")),
    flag("privileged-image-plugin", IMAGE, Some("FILE"), "", Yes("")),
    flag("privileged-image-plugin-extra-arg", IMAGE, Some("ARG..."), "", Yes("")),
    flag(
        "docker-registry",
        DOCKER,
        Some("HOST"),
        "registry-1.docker.io",
        Yes("the registry of `docker:///repo` URIs; `library/` only on Docker Hub"),
    ),
    flag(
        "insecure-docker-registry",
        DOCKER,
        Some("HOST..."),
        "",
        Yes("HOST[:PORT] as in image URIs, or a CIDR; unverified HTTPS, then plain HTTP"),
    ),
    flag("network-pool", NETWORK, Some("CIDR"), "10.254.0.0/22", Yes("")),
    flag("allow-host-access", NETWORK, None, "", Yes("")),
    flag("deny-network", NETWORK, Some("CIDR..."), "", Yes("")),
    flag("dns-server", NETWORK, Some("IP..."), "", Yes("")),
    flag("additional-dns-server", NETWORK, Some("IP..."), "", Yes("")),
    flag("additional-host-entry", NETWORK, Some("LINE..."), "", Yes("")),
    flag("external-ip", NETWORK, Some("IP"), "", Yes("IPv4 only")),
    flag("port-pool-start", NETWORK, Some("PORT"), "61001", Yes("")),
    flag("port-pool-size", NETWORK, Some("N"), "4534", Yes("")),
    flag(
        "port-pool-properties-path",
        NETWORK,
        Some("PATH"),
        "",
        NoEffect("the port pool is rebuilt at start from the container records (see --properties-path), which hold each container's ports"),
    ),
    flag("mtu", NETWORK, Some("N"), "", Yes("")),
    flag("network-plugin", NETWORK, Some("FILE"), "", Yes(NETWORK_PLUGIN)),
    flag("network-plugin-extra-arg", NETWORK, Some("ARG..."), "", Yes("")),
    flag(
        "enable-container-network-metrics",
        NETWORK,
        None,
        "",
        Yes("bytes counted on the container's link; also without a plugin naming it"),
    ),
    flag(
        "cpu-quota-per-share",
        LIMITS,
        Some("MICROSECONDS"),
        "0",
        Yes("quota = shares × value per 100 ms period, at least 1 ms"),
    ),
    flag(
        "default-container-blockio-weight",
        LIMITS,
        Some("WEIGHT"),
        "0",
        Yes("10 to 1000; v1 blkio.weight (or BFQ's), v2 io.bfq.weight or io.weight as runc converts"),
    ),
    flag("container-io-max-read-bps", LIMITS, Some("N"), "0", Yes(IO_MAX)),
    flag("container-io-max-write-bps", LIMITS, Some("N"), "0", Yes(IO_MAX)),
    flag("container-io-max-read-iops", LIMITS, Some("N"), "0", Yes(IO_MAX)),
    flag("container-io-max-write-iops", LIMITS, Some("N"), "0", Yes(IO_MAX)),
    flag("max-containers", LIMITS, Some("N"), "0", Yes("")),
    flag(
        "disable-swap-limit",
        LIMITS,
        None,
        "",
        Yes(""),
    ),
    flag("metrics-emission-interval", METRICS, Some("DURATION"), "1m", NoEffect(NO_DROPSONDE)),
    flag("dropsonde-origin", METRICS, Some("NAME"), "garden-linux", NoEffect(NO_DROPSONDE)),
    flag(
        "dropsonde-destination",
        METRICS,
        Some("HOST:PORT"),
        "127.0.0.1:3457",
        NoEffect(NO_DROPSONDE),
    ),
    flag(
        "cpu-entitlement-per-share",
        METRICS,
        Some("PERCENT"),
        "",
        Yes("0: gdn's default, (cpus × 100) / (memory in MiB)"),
    ),
    flag("containerd-socket", CONTAINERD, Some("PATH"), "", NoEffect(NO_CONTAINERD)),
    flag("use-containerd-for-processes", CONTAINERD, None, "", NoEffect(NO_CONTAINERD)),
    flag("enable-cpu-throttling", THROTTLING, None, "", NotYet(THROTTLE)),
    flag("cpu-throttling-check-interval", THROTTLING, Some("SECONDS"), "15", NotYet(THROTTLE)),
    flag("tcp-keepalive-time", SYSCTL, Some("SECONDS"), "", Yes(SYSCTLS)),
    flag("tcp-keepalive-interval", SYSCTL, Some("SECONDS"), "", Yes(SYSCTLS)),
    flag("tcp-keepalive-probes", SYSCTL, Some("N"), "", Yes(SYSCTLS)),
    flag("tcp-retries1", SYSCTL, Some("N"), "", Yes(SYSCTLS)),
    flag("tcp-retries2", SYSCTL, Some("N"), "", Yes(SYSCTLS)),
];

pub fn find(name: &str) -> Option<&'static GdnFlag> {
    GDN_FLAGS.iter().find(|f| f.name == name)
}

/// gdn's option groups, each a `[server.<group>]` section of the config file.
pub fn groups() -> impl Iterator<Item = &'static str> {
    let mut seen: Vec<&'static str> = Vec::new();
    GDN_FLAGS.iter().filter_map(move |f| {
        if f.group.is_empty() || seen.contains(&f.group) {
            return None;
        }
        seen.push(f.group);
        Some(f.group)
    })
}

/// One line for each flag given (on the command line or in the config file) that Trellis does
/// not act on, however many times it was given.
pub fn warnings(matches: &ArgMatches, command: &clap::Command) -> Vec<String> {
    GDN_FLAGS
        .iter()
        .filter_map(|flag| {
            let warning = flag.warning()?;
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.name))?;
            (matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
                .then_some(warning)
        })
        .collect()
}

/// The README's table of every flag and what Trellis does with it.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| gdn flag | value | gdn default | in Trellis |\n|---|---|---|---|\n");
    for flag in GDN_FLAGS {
        let value = flag.value.map(|v| format!("`{v}`")).unwrap_or_default();
        let default = if flag.gdn_default.is_empty() {
            String::new()
        } else {
            format!("`{}`", flag.gdn_default)
        };
        let status = match flag.status {
            Status::Implemented("") => "implemented".to_string(),
            Status::Implemented(how) => format!("implemented; {how}"),
            Status::NotYet(why) => format!("warns: not implemented yet ({why})"),
            Status::NoEffect(why) => format!("warns: no effect ({why})"),
        };
        out.push_str(&format!(
            "| `--{}` | {value} | {default} | {status} |\n",
            flag.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ArgAction;

    #[test]
    fn every_gdn_server_flag_is_a_trellis_server_flag_of_the_same_kind() {
        // guardian's guardiancmd/command.go (74 server flags besides gdn's top-level --config)
        // and lager_flag.go (--log-level).
        assert_eq!(GDN_FLAGS.len(), 75);
        let command = crate::config_file::server_command("server");
        for flag in GDN_FLAGS {
            let arg = command
                .get_arguments()
                .find(|a| a.get_long() == Some(flag.name))
                .unwrap_or_else(|| panic!("--{} is not a trellis server flag", flag.name));
            let kind = match arg.get_action() {
                ArgAction::SetTrue => "switch",
                ArgAction::Append => "repeatable",
                _ => "value",
            };
            let expected = match flag.value {
                None => "switch",
                Some(_) if flag.repeatable() => "repeatable",
                Some(_) => "value",
            };
            assert_eq!(kind, expected, "--{}", flag.name);
            assert!(
                flag.group.is_empty() || groups().any(|g| g == flag.group),
                "--{}",
                flag.name
            );
        }
        assert_eq!(groups().count(), 12);
    }

    #[test]
    fn the_readme_table_lists_every_flag() {
        let readme = include_str!("../../README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md must hold this table:\n{table}"
        );
    }
}

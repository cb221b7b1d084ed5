//! gdn's config file (`trellis --config FILE server`, as `gdn --config FILE server`) and how it
//! combines with the command line.
//!
//! The file is go-flags' INI format, read as gdn (go-flags 1.4) reads it:
//! - `[server]` holds `trellis server`'s flags by their long names, `[cleanup]` those of
//!   `trellis cleanup`; `[server.<group>]` (gdn's option group, e.g. `[server.Container
//!   Networking]`) holds that group's flags; `[setup]` holds gdn setup's (`log-level`, `tag`,
//!   `enable-cpu-throttling`), checked and unused, as Trellis has no setup command. Keys before
//!   any section, or in `[Application Options]`, may only be `config` (ignored, as gdn does).
//!   Any other section is refused, as is an unknown key.
//! - `key = value`, both trimmed; a value starting with `"` is a Go string literal. Lines
//!   starting with `;` or `#` are comments (not text after a value). A repeated section
//!   continues the first.
//! - A switch is on with an empty value and otherwise takes Go's booleans (`true`, `false`,
//!   `1`, `0`, `t`, `f`, ...); a repeated key adds a value to a repeatable flag and replaces
//!   the value of any other.
//! - Command-line flags override the file; a repeatable flag given on the command line
//!   replaces the file's values rather than adding to them (go-flags resets it).
//!
//! Every value is checked as the command line checks it, and an error names the file and line.

use crate::config::ServerArgs;
use crate::gdn_flags;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Malformed {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: could not find option group `{section}'")]
    UnknownSection { path: PathBuf, section: String },
    #[error("{path}:{line}: unknown option: {key}")]
    UnknownOption {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("{path}:{line}: invalid value {value:?} for {key}: {message}")]
    InvalidValue {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        message: String,
    },
    #[error("{0}")]
    Flags(String),
}

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// A parsed config file: its entries in file order.
#[derive(Debug, Clone)]
pub struct IniFile {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// Every section header seen (an empty unknown section is refused too).
    pub sections: Vec<String>,
}

impl IniFile {
    pub fn read(path: &Path) -> Result<IniFile, ConfigFileError> {
        let text = std::fs::read(path).map_err(|source| ConfigFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(text).map_err(|e| ConfigFileError::Unreadable {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        IniFile::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<IniFile, ConfigFileError> {
        let malformed = |line: usize, message: String| ConfigFileError::Malformed {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut file = IniFile {
            path: path.to_path_buf(),
            entries: Vec::new(),
            sections: Vec::new(),
        };
        let mut section = String::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
                continue;
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| malformed(line, "malformed section header".into()))?
                    .trim();
                if name.is_empty() {
                    return Err(malformed(line, "empty section name".into()));
                }
                section = name.to_string();
                if !file.sections.contains(&section) {
                    file.sections.push(section.clone());
                }
                continue;
            }
            let (key, value) = trimmed
                .split_once('=')
                .ok_or_else(|| malformed(line, format!("malformed key=value ({trimmed})")))?;
            let mut value = value.trim().to_string();
            if value.starts_with('"') {
                value = crate::go_literal::unquote(&value).map_err(|e| malformed(line, e))?;
            }
            file.entries.push(Entry {
                section: section.clone(),
                key: key.trim().to_string(),
                value,
                line,
            });
        }
        Ok(file)
    }
}

/// `trellis server`'s (or cleanup's) flags as a clap command of its own, without a binary name.
pub fn server_command(name: &'static str) -> clap::Command {
    ServerArgs::augment_args(clap::Command::new(name).no_binary_name(true))
}

/// The setup command's flags in gdn (Trellis has none; their values are only checked).
const SETUP_FLAGS: &[&str] = &["log-level", "tag", "enable-cpu-throttling"];

/// What a section holds, for the subcommand being run.
enum SectionUse {
    /// Entries for the command being run, limited to one gdn group if `Some`.
    Applies(Option<&'static str>),
    /// Valid entries for another command: checked, not used.
    Checked(Option<&'static str>),
    /// Only `config` (gdn's top-level option).
    TopLevel,
    /// `[setup]`.
    Setup,
}

fn section_use(section: &str, subcommand: &str) -> Option<SectionUse> {
    if section.is_empty() || section.eq_ignore_ascii_case("Application Options") {
        return Some(SectionUse::TopLevel);
    }
    if section == "setup" {
        return Some(SectionUse::Setup);
    }
    for command in ["server", "cleanup"] {
        let group = if section == command {
            None
        } else if let Some(group) = section
            .strip_prefix(command)
            .and_then(|s| s.strip_prefix('.'))
        {
            Some(gdn_flags::groups().find(|g| g.eq_ignore_ascii_case(group))?)
        } else {
            continue;
        };
        return Some(if command == subcommand {
            SectionUse::Applies(group)
        } else {
            SectionUse::Checked(group)
        });
    }
    None
}

/// The server's flags from the config file (if any) and the command line, and the warnings
/// for flags given that Trellis does not act on. `cli` holds the command line's matches for
/// `subcommand` (`server` or `cleanup`), parsed by [`server_command`] or by the binary's CLI.
pub fn resolve(
    subcommand: &'static str,
    file: Option<&IniFile>,
    cli: &ArgMatches,
) -> Result<(ServerArgs, Vec<String>), ConfigFileError> {
    let command = server_command(subcommand);
    let mut merged: Vec<OsString> = Vec::new();
    if let Some(file) = file {
        merged = file_args(subcommand, file, cli, &command)?;
    }
    merged.extend(command_line_args(cli, &command));
    let matches = command
        .clone()
        .try_get_matches_from(merged)
        .map_err(|e| ConfigFileError::Flags(first_line(&e)))?;
    let args = ServerArgs::from_arg_matches(&matches)
        .map_err(|e| ConfigFileError::Flags(first_line(&e)))?;
    if args.gdn.enable_cpu_throttling && args.gdn.cpu_throttling_check_interval == Some(0) {
        return Err(ConfigFileError::Flags(
            "--cpu-throttling-check-interval must be above 0 with --enable-cpu-throttling".into(),
        ));
    }
    let warnings = gdn_flags::warnings(&matches, &command);
    Ok((args, warnings))
}

/// The first line of a clap error, without clap's `error: `.
fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// Go's `strconv.ParseBool`.
fn go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// The file's entries for `subcommand` as `--name=value` arguments (a switch as `--name` if
/// on), each checked on its own so that an error names its line; every other section is
/// checked as well. Repeatable flags given on the command line are left out.
fn file_args(
    subcommand: &'static str,
    file: &IniFile,
    cli: &ArgMatches,
    command: &clap::Command,
) -> Result<Vec<OsString>, ConfigFileError> {
    for section in &file.sections {
        if section_use(section, subcommand).is_none() {
            return Err(ConfigFileError::UnknownSection {
                path: file.path.clone(),
                section: section.clone(),
            });
        }
    }
    let mut args: Vec<OsString> = Vec::new();
    // A switch's last value in the file wins.
    let mut switches: Vec<(String, bool)> = Vec::new();
    for entry in &file.entries {
        let unknown = || ConfigFileError::UnknownOption {
            path: file.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
        };
        let invalid = |message: String| ConfigFileError::InvalidValue {
            path: file.path.clone(),
            line: entry.line,
            key: entry.key.clone(),
            value: entry.value.clone(),
            message,
        };
        let section = section_use(&entry.section, subcommand).ok_or_else(unknown)?;
        let (applies, group) = match section {
            SectionUse::TopLevel if entry.key == "config" => continue,
            SectionUse::TopLevel => return Err(unknown()),
            SectionUse::Setup if SETUP_FLAGS.contains(&entry.key.as_str()) => (false, None),
            SectionUse::Setup => return Err(unknown()),
            SectionUse::Applies(group) => (true, group),
            SectionUse::Checked(group) => (false, group),
        };
        if let Some(group) = group {
            if gdn_flags::find(&entry.key).is_none_or(|f| f.group != group) {
                return Err(unknown());
            }
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(entry.key.as_str()))
            .ok_or_else(unknown)?;
        let id = arg.get_id().as_str().to_string();
        let pieces: Vec<OsString> = match arg.get_action() {
            ArgAction::SetTrue => {
                let on = if entry.value.is_empty() {
                    true
                } else {
                    go_bool(&entry.value).ok_or_else(|| {
                        invalid("expected a boolean (true, false, 1, 0, t, f)".into())
                    })?
                };
                if applies {
                    switches.retain(|(k, _)| *k != entry.key);
                    switches.push((entry.key.clone(), on));
                }
                continue;
            }
            _ => vec![format!("--{}={}", entry.key, entry.value).into()],
        };
        command
            .clone()
            .try_get_matches_from(&pieces)
            .map_err(|e| invalid(clap_reason(&e)))?;
        if !applies {
            continue;
        }
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        if repeatable && cli.value_source(&id) == Some(ValueSource::CommandLine) {
            continue;
        }
        args.extend(pieces);
    }
    args.extend(
        switches
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(key, _)| OsString::from(format!("--{key}"))),
    );
    Ok(args)
}

/// Why clap refused a value (the part after the last `: ` of its first line, or all of it).
fn clap_reason(e: &clap::Error) -> String {
    let line = first_line(e);
    match line.rsplit_once("': ") {
        Some((_, reason)) => reason.to_string(),
        None => line,
    }
}

/// The flags given on the command line, rebuilt from its matches (a flag's last value for a
/// single-valued flag, every value of a repeatable one).
fn command_line_args(cli: &ArgMatches, command: &clap::Command) -> Vec<OsString> {
    let mut args = Vec::new();
    for arg in command.get_arguments() {
        let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
            continue;
        };
        if cli.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            args.push(OsString::from(format!("--{long}")));
            continue;
        }
        for raw in cli.get_raw(id).into_iter().flatten() {
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(raw);
            args.push(flag);
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn cli(args: &[&str]) -> ArgMatches {
        server_command("server")
            .try_get_matches_from(args)
            .expect("command line parses")
    }

    fn file(text: &str) -> IniFile {
        IniFile::parse(Path::new("/etc/gdn.ini"), text).expect("file parses")
    }

    fn resolve_with(
        text: &str,
        args: &[&str],
    ) -> Result<(ServerArgs, Vec<String>), ConfigFileError> {
        let parsed = IniFile::parse(Path::new("/etc/gdn.ini"), text)?;
        resolve("server", Some(&parsed), &cli(args))
    }

    fn error(text: &str) -> String {
        resolve_with(text, &[]).expect_err("refused").to_string()
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn command_line_only() {
        let (args, warnings) = resolve(
            "server",
            None,
            &cli(&[
                "--bind-port",
                "7000",
                "--deny-network",
                "10.1.0.0/16",
                "--allow-host-access",
            ]),
        )
        .unwrap();
        assert_eq!(args.bind_port, 7000);
        assert_eq!(args.deny_network, vec!["10.1.0.0/16".parse().unwrap()]);
        assert!(args.allow_host_access);
        assert!(!args.no_new_privileges);
        assert!(warnings.is_empty());
    }

    #[test]
    fn file_only() {
        let (args, warnings) = resolve_with(
            "; garden's settings\n\
             # another comment\n\
             [server]\n\
             bind-ip = 10.0.0.1\n\
             bind-port=7001\n\
             default-grace-time = 5m\n\
             allow-host-access =\n\
             no-new-privileges = false\n\
             destroy-containers-on-startup = true\n\
             dns-server = 8.8.8.8\n\
             additional-dns-server = 9.9.9.9\n\
             additional-host-entry = \"1.2.3.4\\tfoo # not a comment\"\n\
             log-level = error\n\
             depot = /srv/depot\n",
            &[],
        )
        .unwrap();
        assert_eq!(args.bind_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(args.bind_port, 7001);
        assert_eq!(args.default_grace_time, std::time::Duration::from_secs(300));
        assert!(args.allow_host_access);
        assert!(!args.no_new_privileges);
        assert!(args.destroy_containers_on_startup);
        assert_eq!(args.dns_server, ips(&["8.8.8.8"]));
        assert_eq!(args.additional_dns_server, ips(&["9.9.9.9"]));
        assert_eq!(
            args.additional_host_entry,
            vec!["1.2.3.4\tfoo # not a comment"]
        );
        assert_eq!(args.log_level, crate::config::LogLevel::Error);
        assert_eq!(args.depot, PathBuf::from("/srv/depot"));
        // What the file leaves alone keeps its default.
        assert_eq!(args.port_pool_start, 61001);
        assert!(warnings.is_empty());
        let network = &args.linux_config().unwrap().network;
        assert_eq!(network.dns.additional_dns_servers, ips(&["9.9.9.9"]));
        assert_eq!(network.dns.additional_host_entries.len(), 1);
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let text = "[server]\n\
                    bind-port = 7001\n\
                    max-containers = 3\n\
                    deny-network = 10.1.0.0/16\n\
                    deny-network = 10.2.0.0/16\n\
                    dns-server = 8.8.8.8\n";
        let (args, _) = resolve_with(
            text,
            &["--bind-port", "7002", "--deny-network", "10.3.0.0/16"],
        )
        .unwrap();
        assert_eq!(args.bind_port, 7002);
        assert_eq!(args.max_containers, 3);
        // A repeatable flag on the command line replaces the file's values (as go-flags does).
        assert_eq!(args.deny_network, vec!["10.3.0.0/16".parse().unwrap()]);
        assert_eq!(args.dns_server, ips(&["8.8.8.8"]));
        // A switch off in the file can be turned on by the command line.
        let (args, _) = resolve_with(
            "[server]\nallow-host-access = false\n",
            &["--allow-host-access"],
        )
        .unwrap();
        assert!(args.allow_host_access);
    }

    #[test]
    fn repeated_keys_add_to_repeatable_flags_and_replace_others() {
        let (args, _) = resolve_with(
            "[server]\n\
             dns-server = 1.1.1.1\n\
             bind-port = 7001\n\
             [server.Container Networking]\n\
             dns-server = 8.8.8.8\n\
             [server]\n\
             bind-port = 7003\n\
             dns-server = 9.9.9.9\n\
             allow-host-access = true\n\
             allow-host-access = false\n",
            &[],
        )
        .unwrap();
        assert_eq!(args.dns_server, ips(&["1.1.1.1", "8.8.8.8", "9.9.9.9"]));
        assert_eq!(args.bind_port, 7003);
        assert!(!args.allow_host_access);
    }

    #[test]
    fn sections_for_other_commands_are_checked_but_not_used() {
        let text = "config = /ignored\n\
                    [Application Options]\n\
                    config = /ignored\n\
                    [setup]\n\
                    tag = zz\n\
                    [cleanup]\n\
                    depot = /cleanup/depot\n\
                    [server]\n\
                    depot = /server/depot\n";
        let (args, _) = resolve_with(text, &[]).unwrap();
        assert_eq!(args.depot, PathBuf::from("/server/depot"));
        assert_eq!(args.tag, "");
        let parsed = file(text);
        let cleanup = server_command("cleanup")
            .try_get_matches_from(["--tag", "ab"])
            .unwrap();
        let (args, _) = resolve("cleanup", Some(&parsed), &cleanup).unwrap();
        assert_eq!(args.depot, PathBuf::from("/cleanup/depot"));
        assert_eq!(args.tag, "ab");
        // A value is checked even in a section the command does not use.
        assert!(error("[cleanup]\nbind-port = x\n").contains("/etc/gdn.ini:2:"));
    }

    #[test]
    fn invalid_files_are_refused_with_the_file_and_line() {
        assert_eq!(
            error("invalid-ini-file"),
            "/etc/gdn.ini:1: malformed key=value (invalid-ini-file)"
        );
        assert_eq!(
            error("[server]\nbind-port = 7000\nbogus = 1\n"),
            "/etc/gdn.ini:3: unknown option: bogus"
        );
        assert_eq!(
            error("bind-port = 7000\n"),
            "/etc/gdn.ini:1: unknown option: bind-port"
        );
        assert_eq!(
            error("[sever]\n"),
            "/etc/gdn.ini: could not find option group `sever'"
        );
        assert_eq!(
            error("[server.Limits]\ndepot = /x\n"),
            "/etc/gdn.ini:2: unknown option: depot"
        );
        assert_eq!(
            error("[server.No Such Group]\n"),
            "/etc/gdn.ini: could not find option group `server.No Such Group'"
        );
        assert_eq!(
            error("[setup]\ndepot = /x\n"),
            "/etc/gdn.ini:2: unknown option: depot"
        );
        assert_eq!(
            error("[server\n"),
            "/etc/gdn.ini:1: malformed section header"
        );
        assert_eq!(error("[ ]\n"), "/etc/gdn.ini:1: empty section name");
        assert_eq!(
            error("[server]\nbind-port = \"7000\n"),
            "/etc/gdn.ini:2: invalid syntax"
        );
        let e = error("[server]\nbind-port = 70000\n");
        assert!(
            e.starts_with("/etc/gdn.ini:2: invalid value \"70000\" for bind-port: "),
            "{e}"
        );
        let e = error("[server]\nlog-level = warn\n");
        assert!(
            e.starts_with("/etc/gdn.ini:2: invalid value \"warn\" for log-level"),
            "{e}"
        );
        let e = error("[server]\nallow-host-access = yes\n");
        assert!(e.contains("expected a boolean"), "{e}");
        let e = error("[server]\ndevice-cgroup-rule = c 1-3 rwm\n");
        assert!(e.contains("invalid device versions"), "{e}");
        let e = error("[server]\nnetwork-pool = 10.0.0.0/33\n");
        assert!(e.starts_with("/etc/gdn.ini:2: invalid value"), "{e}");

        let missing = IniFile::read(Path::new("/nonexistent/gdn.ini")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read config file /nonexistent/gdn.ini: "),
            "{missing}"
        );
    }

    #[test]
    fn each_flag_without_effect_warns_once() {
        let (args, warnings) = resolve_with(
            "[server]\n\
             image-plugin = /bin/sh\n\
             image-plugin-extra-arg = --config\n\
             image-plugin-extra-arg = /var/vcap/jobs/garden/config/grootfs.yml\n\
             dropsonde-origin = garden-linux\n\
             skip-setup = false\n\
             bind-port = 7000\n",
            &[
                "--image-plugin-extra-arg=--store",
                "--dadoo-bin",
                "/x/dadoo",
                "--dadoo-bin",
                "/y/dadoo",
                "--tcp-keepalive-time",
                "30",
            ],
        )
        .unwrap();
        // Image plugin flags act, so they warn of nothing.
        assert_eq!(args.image_plugins.image_plugin_extra_arg, vec!["--store"]);
        assert_eq!(args.gdn.dadoo_bin, Some(PathBuf::from("/y/dadoo")));
        assert_eq!(
            warnings,
            vec![
                "--dadoo-bin has no effect here: Trellis is one binary: its own init, process \
                 keeper, tar streaming and nftables firewall stand for gdn's helper binaries",
                "--dropsonde-origin has no effect here: Trellis emits no dropsonde \
                 (Loggregator v1) metrics; its figures are on the debug server's /debug/vars",
            ]
        );
        // Taken, without a warning.
        assert_eq!(args.networking.tcp_keepalive_time, Some(30));
    }

    #[test]
    fn cpu_throttling_needs_an_interval() {
        let e = resolve_with(
            "[server]\nenable-cpu-throttling = true\ncpu-throttling-check-interval = 0\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("must be above 0"), "{e}");
        assert!(resolve_with("[server]\ncpu-throttling-check-interval = 0\n", &[]).is_ok());
    }
}

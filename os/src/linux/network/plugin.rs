//! An external network plugin (gdn's `--network-plugin FILE`, `--network-plugin-extra-arg`),
//! spoken as guardian's `netplugin` speaks it:
//!
//! `FILE [extra args...] --action ACTION --handle HANDLE`, a JSON document on stdin, a JSON
//! document (or nothing) on stdout, exit status 0 for success.
//!
//! - `up`, once the container's init runs: `{"Pid":..,"Properties":{..},"netout_rules":[..],
//!   "netin":[..]}` (the properties are those named `network.*`, without the prefix, and
//!   `log_config`); answers `{"Properties":{..},"dns_servers":[..],"search_domains":[..]}`.
//!   The answer's properties become the container's (`garden.network.container-ip` is its
//!   address); with an address the container's /etc/hosts and resolv.conf are written.
//! - `down` on destroy, with `null`; also when nothing was brought up (a failed create).
//! - `net-in`: `{"HostIP":..,"HostPort":..,"ContainerIP":..,"ContainerPort":..}`; answers
//!   `{"host_port":..,"container_port":..}`.
//! - `net-out`: `{"container_ip":..,"netout_rule":{..}}`; `bulk-net-out`:
//!   `{"container_ip":..,"netout_rules":[..]}`.
//!
//! Trellis still makes the container's network namespace (the init joins it) and writes its
//! TCP sysctls; the plugin wires it through `/proc/<pid>/ns/net`. What Trellis must find again
//! (after a restart too) is in a small state file per container.

use super::state::remove_file_if_exists;
use crate::host::{HostError, HostResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;
use trellis_core::api::{NetIn, NetOutRule, PortMapping};
use trellis_core::network::NetworkAssignment;
use trellis_core::EffectErrorKind;

/// gdn's `--network-plugin` and `--network-plugin-extra-arg`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSettings {
    pub path: PathBuf,
    pub extra_args: Vec<String>,
}

/// The container properties `up` is given besides the `network.*` ones (guardian's list).
const ALLOWED_PROPERTIES: [&str; 1] = ["log_config"];
const NETWORK_PROPERTY_PREFIX: &str = "network.";
/// The answer property naming the container's interface (read for network metrics).
pub const INTERFACE_PROPERTY: &str = "garden.network.interface";

#[derive(Debug, Error)]
pub enum PluginError {
    #[error("network plugin {path} could not be run for '{action}': {source}")]
    Run {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("network plugin {path} failed running '{action}' ({status}); stderr: {stderr}")]
    Failed {
        path: String,
        action: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("network plugin {path} answered '{action}' with {stdout:?}, which is not the expected JSON: {source}")]
    Answer {
        path: String,
        action: &'static str,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("network plugin {path}: container {handle} has no address (its 'up' answered no garden.network.container-ip)")]
    NoAddress { path: String, handle: String },
    #[error("network plugin {path} mapped {answered:?} for NetIn {asked:?}: a host port must be the one asked for")]
    OtherPort {
        path: String,
        asked: PortMapping,
        answered: PortMapping,
    },
}

impl From<PluginError> for HostError {
    fn from(e: PluginError) -> HostError {
        HostError::Component {
            kind: EffectErrorKind::Host,
            source: Box::new(e),
        }
    }
}

#[derive(Serialize)]
struct UpInputs<'a> {
    #[serde(rename = "Pid")]
    pid: i32,
    #[serde(rename = "Properties")]
    properties: BTreeMap<&'a str, &'a str>,
    #[serde(rename = "netout_rules", skip_serializing_if = "<[_]>::is_empty")]
    netout: &'a [NetOutRule],
    #[serde(rename = "netin", skip_serializing_if = "<[_]>::is_empty")]
    netin: &'a [NetIn],
}

/// `up`'s answer.
#[derive(Debug, Default, Deserialize)]
pub struct UpOutputs {
    #[serde(rename = "Properties", default)]
    pub properties: Option<BTreeMap<String, String>>,
    /// `None` (absent): the usual nameservers; `Some`, even empty: exactly these.
    #[serde(default)]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default)]
    pub search_domains: Option<Vec<String>>,
}

#[derive(Serialize)]
struct NetInInputs {
    #[serde(rename = "HostIP")]
    host_ip: String,
    #[serde(rename = "HostPort")]
    host_port: u32,
    #[serde(rename = "ContainerIP")]
    container_ip: String,
    #[serde(rename = "ContainerPort")]
    container_port: u32,
}

#[derive(Debug, Default, Deserialize)]
struct NetInOutputs {
    #[serde(default)]
    host_port: u32,
    #[serde(default)]
    container_port: u32,
}

#[derive(Serialize)]
struct NetOutInputs<'a> {
    container_ip: &'a str,
    netout_rule: &'a NetOutRule,
}

#[derive(Serialize)]
struct BulkNetOutInputs<'a> {
    container_ip: &'a str,
    netout_rules: &'a [NetOutRule],
}

/// What Trellis keeps of a container wired by the plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginState {
    /// The core's bookkeeping assignment (reported back on restart; nothing on the host uses it).
    pub assignment: NetworkAssignment,
    /// From `up`'s answer.
    #[serde(default)]
    pub container_ip: Option<String>,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

pub struct NetworkPlugin {
    settings: PluginSettings,
    /// `HostIP` of `net-in`.
    external_ip: Option<Ipv4Addr>,
    states: PathBuf,
}

impl NetworkPlugin {
    pub fn new(
        settings: PluginSettings,
        external_ip: Option<Ipv4Addr>,
        states: PathBuf,
    ) -> HostResult<NetworkPlugin> {
        std::fs::create_dir_all(&states)
            .map_err(|e| HostError::io(format!("create {}", states.display()), e))?;
        Ok(NetworkPlugin {
            settings,
            external_ip,
            states,
        })
    }

    pub fn path(&self) -> String {
        self.settings.path.display().to_string()
    }

    /// Runs the plugin for `action`; its stdout.
    fn run(
        &self,
        action: &'static str,
        handle: &str,
        input: &impl Serialize,
    ) -> Result<Vec<u8>, PluginError> {
        let stdin = serde_json::to_vec(input).expect("plugin inputs serialise");
        let run_error = |source| PluginError::Run {
            path: self.path(),
            action,
            source,
        };
        let mut child = Command::new(&self.settings.path)
            .args(&self.settings.extra_args)
            .args(["--action", action, "--handle", handle])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run_error)?;
        // A plugin that exits without reading its input makes this write fail (EPIPE): its
        // exit status says more, so that is what is reported.
        let _ = child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(&stdin);
        let output = child.wait_with_output().map_err(run_error)?;
        if !output.status.success() {
            return Err(PluginError::Failed {
                path: self.path(),
                action,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        if !output.stderr.is_empty() {
            log_stderr(action, handle, &output.stderr);
        }
        Ok(output.stdout)
    }

    fn parse<T: for<'de> Deserialize<'de> + Default>(
        &self,
        action: &'static str,
        stdout: Vec<u8>,
    ) -> Result<T, PluginError> {
        if stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(&stdout).map_err(|source| PluginError::Answer {
            path: self.path(),
            action,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            source,
        })
    }

    fn state_file(&self, handle: &str) -> PathBuf {
        self.states.join(handle)
    }

    pub fn load(&self, handle: &str) -> HostResult<Option<PluginState>> {
        let path = self.state_file(handle);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                HostError::io(format!("network plugin state {}", path.display()), e.into())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io(format!("read {}", path.display()), e)),
        }
    }

    /// Atomically (a crash leaves the old state or the new, never half of one).
    pub fn save(&self, handle: &str, state: &PluginState) -> HostResult<()> {
        let path = self.state_file(handle);
        let temp = self.states.join(format!(".{handle}.tmp"));
        let bytes = serde_json::to_vec(state).expect("plugin state serialises");
        std::fs::write(&temp, bytes)
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|e| HostError::io(format!("write {}", path.display()), e))
    }

    pub fn forget(&self, handle: &str) -> HostResult<()> {
        remove_file_if_exists(&self.state_file(handle))
    }

    /// Handles with a state file.
    pub fn handles(&self) -> HostResult<Vec<String>> {
        super::state::list_names(&self.states)
    }

    /// `up` for the container whose init is `pid`; records the address and interface it gives.
    pub fn up(
        &self,
        handle: &str,
        pid: i32,
        properties: &BTreeMap<String, String>,
        netin: &[NetIn],
        netout: &[NetOutRule],
    ) -> HostResult<UpOutputs> {
        let mut state = self.load(handle)?.ok_or_else(|| {
            HostError::Unexpected(format!(
                "container {handle} has no network namespace set up"
            ))
        })?;
        let inputs = UpInputs {
            pid,
            properties: plugin_properties(properties),
            netout,
            netin,
        };
        let stdout = self.run("up", handle, &inputs)?;
        let answer: UpOutputs = self.parse("up", stdout)?;
        let answered = answer.properties.clone().unwrap_or_default();
        state.container_ip = answered
            .get(trellis_core::properties::CONTAINER_IP)
            .cloned();
        state.interface = answered.get(INTERFACE_PROPERTY).cloned();
        self.save(handle, &state)?;
        Ok(answer)
    }

    /// `down`; run whether or not `up` ran, as guardian does.
    pub fn down(&self, handle: &str) -> HostResult<()> {
        self.run("down", handle, &serde_json::Value::Null)?;
        Ok(())
    }

    fn container_ip(&self, handle: &str) -> HostResult<(PluginState, String)> {
        let state = self.load(handle)?.ok_or_else(|| {
            HostError::Unexpected(format!("container {handle} has no network set up"))
        })?;
        let ip = state
            .container_ip
            .clone()
            .ok_or_else(|| PluginError::NoAddress {
                path: self.path(),
                handle: handle.to_string(),
            })?;
        Ok((state, ip))
    }

    pub fn net_in(&self, handle: &str, mapping: &PortMapping) -> HostResult<()> {
        let (mut state, container_ip) = self.container_ip(handle)?;
        if state.port_mappings.contains(mapping) {
            return Ok(());
        }
        let inputs = NetInInputs {
            host_ip: self
                .external_ip
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            host_port: mapping.host_port,
            container_ip,
            container_port: mapping.container_port,
        };
        let stdout = self.run("net-in", handle, &inputs)?;
        let answer: NetInOutputs = self.parse("net-in", stdout)?;
        let answered = PortMapping {
            host_port: answer.host_port,
            container_port: answer.container_port,
        };
        // The core chose the host port (from the port pool when none was asked for) and has
        // already promised it.
        if answered != *mapping {
            return Err(PluginError::OtherPort {
                path: self.path(),
                asked: *mapping,
                answered,
            }
            .into());
        }
        state.port_mappings.push(*mapping);
        self.save(handle, &state)
    }

    /// One rule: `net-out`; several: `bulk-net-out`.
    pub fn net_out(&self, handle: &str, rules: &[NetOutRule]) -> HostResult<()> {
        let (_, container_ip) = self.container_ip(handle)?;
        match rules {
            [] => {}
            [rule] => {
                let inputs = NetOutInputs {
                    container_ip: &container_ip,
                    netout_rule: rule,
                };
                self.run("net-out", handle, &inputs)?;
            }
            rules => {
                let inputs = BulkNetOutInputs {
                    container_ip: &container_ip,
                    netout_rules: rules,
                };
                self.run("bulk-net-out", handle, &inputs)?;
            }
        }
        Ok(())
    }
}

/// The properties `up` gets: `network.*` ones without the prefix, and the allowed others.
fn plugin_properties(properties: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    properties
        .iter()
        .filter_map(|(key, value)| {
            if let Some(stripped) = key.strip_prefix(NETWORK_PROPERTY_PREFIX) {
                Some((stripped, value.as_str()))
            } else {
                ALLOWED_PROPERTIES
                    .contains(&key.as_str())
                    .then_some((key.as_str(), value.as_str()))
            }
        })
        .collect()
}

/// A plugin's stderr on success goes to the log, as guardian logs it.
fn log_stderr(action: &str, handle: &str, stderr: &[u8]) {
    tracing::info!(
        handle,
        "network plugin {action}: stderr: {}",
        String::from_utf8_lossy(stderr).trim()
    );
}

/// The state directory of plugin-wired containers, beside the built-in networker's.
pub fn states_dir(network_state_dir: &Path) -> PathBuf {
    network_state_dir.with_file_name("plugin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_gets_network_properties_without_their_prefix_and_log_config() {
        let properties: BTreeMap<String, String> = [
            ("network.app_id", "a1"),
            ("network.", "empty"),
            ("log_config", "{}"),
            ("owner", "me"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let inputs = UpInputs {
            pid: 42,
            properties: plugin_properties(&properties),
            netout: &[],
            netin: &[],
        };
        assert_eq!(
            serde_json::to_string(&inputs).unwrap(),
            r#"{"Pid":42,"Properties":{"":"empty","app_id":"a1","log_config":"{}"}}"#
        );
    }

    #[test]
    fn an_answer_without_dns_servers_is_not_an_empty_list() {
        let answer: UpOutputs = serde_json::from_str(r#"{"Properties":{"a":"b"}}"#).unwrap();
        assert_eq!(answer.dns_servers, None);
        let answer: UpOutputs =
            serde_json::from_str(r#"{"Properties":null,"dns_servers":[]}"#).unwrap();
        assert_eq!(answer.dns_servers, Some(vec![]));
    }
}

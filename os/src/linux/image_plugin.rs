//! External image plugins (`--image-plugin`, `--privileged-image-plugin`): a binary such as
//! grootfs makes each container's root filesystem, spoken to as guardian's `imageplugin`
//! speaks to it:
//!
//! - `PLUGIN [EXTRA ARGS] create [--disk-limit-size-bytes N [--exclude-image-from-quota]]
//!   [--username U] [--password P] IMAGE HANDLE`, where IMAGE is the container's image URI
//!   (the default rootfs when it names none) with its first `#` made a `:`. Its stdout is an
//!   OCI runtime spec: `root.path` is the root filesystem, `process.env` the image's env and
//!   `mounts` what to mount over it (grootfs answers an overlay on `/` when it does not mount
//!   the rootfs itself).
//! - `PLUGIN [EXTRA ARGS] delete HANDLE`, on destroy.
//! - `PLUGIN [EXTRA ARGS] stats HANDLE`: `{"disk_usage": {"total_bytes_used": N,
//!   "exclusive_bytes_used": N}}`, the container's disk metrics.
//! - `PLUGIN [EXTRA ARGS] capacity`: `{"capacity": N}`, the schedulable disk.
//!
//! Id mappings are not passed: the unprivileged plugin's store was initialised with them
//! (`grootfs init-store --uid-mapping ...`), so the rootfs it answers is already owned by the
//! container's mapped ids and is used as it is.
//!
//! Which plugin made a container's rootfs is recorded in the container's directory before the
//! plugin is run ([`PluginRootfs`]), so destroy after a restart or crash, start-up's cleanup and
//! `trellis cleanup` call the same plugin's `delete`, whatever the server's flags are then.

use crate::host::{HostError, HostResult};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;
use trellis_core::api::{DiskLimits, DiskScope, DiskStat, ImageRef};
use trellis_core::EffectErrorKind;

/// One plugin command line: the binary and the extra arguments that go before the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlugin {
    pub binary: PathBuf,
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// The plugins the server was given; none means Trellis unpacks images itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePluginSettings {
    /// `--image-plugin`: unprivileged containers' rootfses.
    pub unprivileged: Option<ImagePlugin>,
    /// `--privileged-image-plugin`: privileged containers' rootfses.
    pub privileged: Option<ImagePlugin>,
}

impl ImagePluginSettings {
    pub fn any(&self) -> bool {
        self.unprivileged.is_some() || self.privileged.is_some()
    }

    /// The plugin for a container, or guardian's error when only the other one was given.
    pub fn for_container(&self, privileged: bool) -> Result<&ImagePlugin, ImagePluginError> {
        let (plugin, flag) = if privileged {
            (&self.privileged, "privileged_image_plugin")
        } else {
            (&self.unprivileged, "image_plugin")
        };
        plugin.as_ref().ok_or(ImagePluginError::NotGiven { flag })
    }

    /// The plugin asked for capacity: the unprivileged one, as guardian (or the privileged one
    /// when it is the only one).
    pub fn for_capacity(&self) -> Option<&ImagePlugin> {
        self.unprivileged.as_ref().or(self.privileged.as_ref())
    }
}

#[derive(Debug, Error)]
pub enum ImagePluginError {
    #[error("no {flag} provided")]
    NotGiven { flag: &'static str },
    #[error("running image plugin {plugin} {action}: {source}")]
    Spawn {
        plugin: String,
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("image plugin {plugin} {action} failed ({status}): {output}")]
    Failed {
        plugin: String,
        action: &'static str,
        status: std::process::ExitStatus,
        /// Its stderr, or its stdout when it wrote nothing to stderr.
        output: String,
    },
    #[error("parsing image plugin {plugin} {action} output {stdout:?}: {problem}")]
    BadOutput {
        plugin: String,
        action: &'static str,
        stdout: String,
        problem: String,
    },
}

impl From<ImagePluginError> for HostError {
    fn from(e: ImagePluginError) -> HostError {
        HostError::Component {
            kind: EffectErrorKind::Host,
            source: Box::new(e),
        }
    }
}

/// What `create` answers (the parts of an OCI runtime spec guardian uses).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginAnswer {
    #[serde(default)]
    pub root: Option<AnswerRoot>,
    #[serde(default)]
    pub process: Option<AnswerProcess>,
    #[serde(default)]
    pub mounts: Option<Vec<AnswerMount>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerRoot {
    #[serde(default)]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerProcess {
    #[serde(default)]
    pub env: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerMount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

impl PluginAnswer {
    pub fn root_path(&self) -> &str {
        self.root.as_ref().map_or("", |r| r.path.as_str())
    }

    pub fn env(&self) -> Vec<String> {
        self.process
            .as_ref()
            .and_then(|p| p.env.clone())
            .unwrap_or_default()
    }

    pub fn mounts(&self) -> &[AnswerMount] {
        self.mounts.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Default, Deserialize)]
struct StatsAnswer {
    #[serde(default)]
    disk_usage: StatsUsage,
}

#[derive(Debug, Default, Deserialize)]
struct StatsUsage {
    #[serde(default)]
    total_bytes_used: u64,
    #[serde(default)]
    exclusive_bytes_used: u64,
}

#[derive(Debug, Default, Deserialize)]
struct CapacityAnswer {
    #[serde(default)]
    capacity: u64,
}

/// The image URI as the plugin is given it: the default rootfs for none, `repo#tag` as
/// `repo:tag`.
pub fn plugin_image_uri(image: &ImageRef, default_rootfs: &str) -> String {
    let uri = if image.uri.is_empty() {
        default_rootfs
    } else {
        image.uri.as_str()
    };
    uri.replacen('#', ":", 1)
}

impl ImagePlugin {
    fn name(&self) -> String {
        self.binary.display().to_string()
    }

    /// `create`'s arguments after the extra ones, as guardian's command creator builds them.
    pub fn create_args(
        handle: &str,
        uri: &str,
        image: &ImageRef,
        disk: &DiskLimits,
    ) -> Vec<String> {
        let mut args = vec!["create".to_string()];
        if disk.byte_hard > 0 {
            args.push("--disk-limit-size-bytes".into());
            args.push(disk.byte_hard.to_string());
            if disk.scope == DiskScope::Exclusive {
                args.push("--exclude-image-from-quota".into());
            }
        }
        if !image.username.is_empty() {
            args.extend(["--username".into(), image.username.clone()]);
        }
        if !image.password.is_empty() {
            args.extend(["--password".into(), image.password.clone()]);
        }
        args.extend([uri.to_string(), handle.to_string()]);
        args
    }

    pub fn create(
        &self,
        handle: &str,
        uri: &str,
        image: &ImageRef,
        disk: &DiskLimits,
    ) -> Result<PluginAnswer, ImagePluginError> {
        let stdout = self.run("create", &Self::create_args(handle, uri, image, disk))?;
        self.parse("create", &stdout)
    }

    pub fn delete(&self, handle: &str) -> Result<(), ImagePluginError> {
        self.run("delete", &["delete".into(), handle.into()])
            .map(drop)
    }

    pub fn stats(&self, handle: &str) -> Result<DiskStat, ImagePluginError> {
        let stdout = self.run("stats", &["stats".into(), handle.into()])?;
        let stats: StatsAnswer = self.parse("stats", &stdout)?;
        Ok(DiskStat {
            total_bytes_used: stats.disk_usage.total_bytes_used,
            exclusive_bytes_used: stats.disk_usage.exclusive_bytes_used,
            ..DiskStat::default()
        })
    }

    pub fn capacity(&self) -> Result<u64, ImagePluginError> {
        let stdout = self.run("capacity", &["capacity".into()])?;
        let answer: CapacityAnswer = self.parse("capacity", &stdout)?;
        Ok(answer.capacity)
    }

    /// Runs the plugin with its extra arguments then `args`; its stdout when it succeeds.
    fn run(&self, action: &'static str, args: &[String]) -> Result<String, ImagePluginError> {
        let output = Command::new(&self.binary)
            .args(&self.extra_args)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ImagePluginError::Spawn {
                plugin: self.name(),
                action,
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if stderr.trim().is_empty() {
            stdout.trim()
        } else {
            stderr.trim()
        };
        Err(ImagePluginError::Failed {
            plugin: self.name(),
            action,
            status: output.status,
            output: said.to_string(),
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        action: &'static str,
        stdout: &str,
    ) -> Result<T, ImagePluginError> {
        serde_json::from_str(stdout.trim()).map_err(|e| ImagePluginError::BadOutput {
            plugin: self.name(),
            action,
            stdout: stdout.to_string(),
            problem: e.to_string(),
        })
    }
}

/// A plugin-made rootfs, recorded in the container's directory: which plugin made it and, once
/// `create` answered, its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRootfs {
    pub plugin: ImagePlugin,
    #[serde(default)]
    pub answer: Option<PluginAnswer>,
}

impl PluginRootfs {
    /// The record at `path`, if a plugin made the container's rootfs.
    pub fn read(path: &Path) -> HostResult<Option<PluginRootfs>> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| HostError::io(format!("reading {}", path.display()), e.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(HostError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the record whole or not at all (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> HostResult<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(self).expect("a plugin record serialises");
        let written = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, path)
        })();
        written.map_err(|e| HostError::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_arguments_follow_guardians_command_creator() {
        let image = ImageRef {
            uri: String::new(),
            username: "someone".into(),
            password: "secret".into(),
        };
        let disk = DiskLimits {
            byte_hard: 1024,
            scope: DiskScope::Exclusive,
            ..DiskLimits::default()
        };
        assert_eq!(
            ImagePlugin::create_args("h", "docker:///busybox:1", &image, &disk),
            [
                "create",
                "--disk-limit-size-bytes",
                "1024",
                "--exclude-image-from-quota",
                "--username",
                "someone",
                "--password",
                "secret",
                "docker:///busybox:1",
                "h"
            ]
        );
        let total = DiskLimits {
            byte_hard: 5,
            ..DiskLimits::default()
        };
        assert_eq!(
            ImagePlugin::create_args("h", "/img.tar", &ImageRef::default(), &total),
            ["create", "--disk-limit-size-bytes", "5", "/img.tar", "h"]
        );
        // An exclusive scope without a limit says nothing.
        let scope_only = DiskLimits {
            scope: DiskScope::Exclusive,
            ..DiskLimits::default()
        };
        assert_eq!(
            ImagePlugin::create_args("h", "/img.tar", &ImageRef::default(), &scope_only),
            ["create", "/img.tar", "h"]
        );
    }

    #[test]
    fn the_image_uri_names_its_tag_with_a_colon_and_defaults_to_the_default_rootfs() {
        let image = |uri: &str| ImageRef {
            uri: uri.into(),
            ..ImageRef::default()
        };
        assert_eq!(
            plugin_image_uri(&image("docker:///busybox#1.36"), "/d"),
            "docker:///busybox:1.36"
        );
        assert_eq!(plugin_image_uri(&image(""), "/d.tar"), "/d.tar");
    }

    #[test]
    fn answers_parse_as_grootfs_writes_them() {
        let answer: PluginAnswer = serde_json::from_str(
            r#"{"ociVersion":"","root":{"path":"/store/images/h/rootfs"},
                "process":{"env":["A=1"],"user":{"uid":0,"gid":0},"cwd":""},
                "mounts":[{"destination":"/","type":"overlay","source":"overlay",
                           "options":["lowerdir=/l","upperdir=/u","workdir=/w"]}]}"#,
        )
        .unwrap();
        assert_eq!(answer.root_path(), "/store/images/h/rootfs");
        assert_eq!(answer.env(), ["A=1"]);
        assert_eq!(answer.mounts()[0].kind, "overlay");
        let bare: PluginAnswer = serde_json::from_str("{}").unwrap();
        assert_eq!(bare.root_path(), "");
        assert!(bare.env().is_empty() && bare.mounts().is_empty());
    }
}

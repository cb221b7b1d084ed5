//! The host boundary: `execute` for the core's effects, plus the byte-stream operations that
//! the core authorises but does not carry (process stdio, tar streams). Implemented by the
//! Linux host here and by the fake host (`trellis-fake`).
//!
//! Every method is blocking; the server calls them from worker threads. Every create-side
//! method must be idempotent and every remove-side method must succeed when there is nothing
//! left to remove: the core retries after failures and crashes.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use thiserror::Error;
use trellis_core::api::{ProcessSpec, Signal, WindowSize};
use trellis_core::effect::{EffectErrorKind, EffectKind, Observation, ObservedHost, Outcome};
use trellis_core::record::ContainerRecord;

#[derive(Debug, Error)]
pub enum HostError {
    /// The program to run does not exist (Garden's ExecutableNotFoundError).
    #[error("{0}")]
    ExecutableNotFound(String),
    /// The request cannot work as asked: unknown user, missing bind-mount source, bad image...
    #[error("{0}")]
    Invalid(String),
    /// The container has no such process.
    #[error("unknown process: {0}")]
    ProcessNotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call, or a request to the kernel over netlink, failed with `source`.
    #[error("{context}: {source}")]
    Sys {
        context: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// A program the host runs (nft, tc, mkfs, a plugin) failed; `output` is what it said.
    #[error("{context}: {program}: {output}")]
    Command {
        context: String,
        program: String,
        output: String,
    },
    /// The host is not in a state this code can work with (corrupt state, an object gone
    /// right after its creation, a helper that answered out of turn or went away), described.
    #[error("{0}")]
    Unexpected(String),
    /// Something the host relies on failed: an image registry, the `--image-plugin`, the
    /// `--network-plugin`. `source` is that component's own typed error (the component
    /// converts it, saying how the core should treat it), so this module names no adapter.
    #[error("{source}")]
    Component {
        kind: EffectErrorKind,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl HostError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> HostError {
        HostError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn sys(context: impl Into<String>, source: nix::errno::Errno) -> HostError {
        HostError::Sys {
            context: context.into(),
            source,
        }
    }

    /// The errno the failure carries, for callers that treat one specially (EEXIST, ENOENT,
    /// EBUSY...).
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            HostError::Sys { source, .. } => Some(*source),
            HostError::Io { source, .. } => source.raw_os_error().map(nix::errno::Errno::from_raw),
            _ => None,
        }
    }

    /// The same failure, with what was being done when it happened put in front.
    pub fn context(self, outer: impl std::fmt::Display) -> HostError {
        let prefixed = |inner: String| format!("{outer}: {inner}");
        match self {
            HostError::ExecutableNotFound(m) => HostError::ExecutableNotFound(prefixed(m)),
            HostError::Invalid(m) => HostError::Invalid(prefixed(m)),
            HostError::ProcessNotFound(m) => HostError::ProcessNotFound(prefixed(m)),
            HostError::Io { context, source } => HostError::Io {
                context: prefixed(context),
                source,
            },
            HostError::Sys { context, source } => HostError::Sys {
                context: prefixed(context),
                source,
            },
            HostError::Command {
                context,
                program,
                output,
            } => HostError::Command {
                context: prefixed(context),
                program,
                output,
            },
            HostError::Unexpected(m) => HostError::Unexpected(prefixed(m)),
            component @ HostError::Component { .. } => component,
        }
    }

    /// How the core should treat this failure.
    pub fn effect_kind(&self) -> EffectErrorKind {
        match self {
            HostError::ExecutableNotFound(_) => EffectErrorKind::ExecutableNotFound,
            HostError::Invalid(_) | HostError::ProcessNotFound(_) => {
                EffectErrorKind::InvalidRequest
            }
            HostError::Component { kind, .. } => *kind,
            HostError::Io { .. }
            | HostError::Sys { .. }
            | HostError::Command { .. }
            | HostError::Unexpected(_) => EffectErrorKind::Host,
        }
    }
}

impl From<HostError> for trellis_core::EffectError {
    fn from(e: HostError) -> Self {
        trellis_core::EffectError::new(e.effect_kind(), e.to_string())
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// Where a host reports what it observes on its own.
pub type ObservationSink = Box<dyn Fn(Observation) + Send + Sync>;

/// What a prepared root filesystem tells the core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rootfs {
    /// `KEY=VALUE` entries from the image's configuration.
    pub image_env: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCapacity {
    pub memory_in_bytes: u64,
    pub disk_in_bytes: u64,
    pub schedulable_disk_in_bytes: u64,
}

/// A process's stdio and exit, as descriptors the caller owns. The host's keeper of the
/// process (its container's init on Linux) holds its own copies, so the process notices
/// nothing when the caller goes away: its stdin stays open, its output waits in its pipes, its
/// exit status is kept. [`Host::attach_process`] hands out fresh copies (to a restarted
/// server), until [`Host::release_process`].
#[derive(Debug)]
pub struct ProcessIo {
    /// The write end of its stdin (with a TTY, the terminal); `None` once stdin was closed.
    pub stdin: Option<OwnedFd>,
    /// The read end of its output pipe (with a TTY, the terminal's output, stderr merged).
    pub stdout: OwnedFd,
    /// `None` with a TTY.
    pub stderr: Option<OwnedFd>,
    /// A pipe that yields the exit status (an `i32` in native byte order) once the process has
    /// exited, and ends without it if the process's keeper is gone (its container destroyed).
    pub exit: OwnedFd,
}

/// The exit status of a process whose keeper went away without giving one: its container was
/// destroyed, and the process killed with it (128 + SIGKILL).
pub const KILLED_WITH_CONTAINER: i32 = 128 + 9;

/// An exit status as the exit pipe carries it.
pub fn encode_exit_status(status: i32) -> [u8; 4] {
    status.to_ne_bytes()
}

/// What an exit pipe gave: its four bytes, or fewer (the keeper is gone).
pub fn decode_exit_status(bytes: &[u8]) -> i32 {
    match <[u8; 4]>::try_from(bytes) {
        Ok(b) => i32::from_ne_bytes(b),
        Err(_) => KILLED_WITH_CONTAINER,
    }
}

impl ProcessIo {
    /// Blocks until the process has exited; its exit status (for tools and tests; the server
    /// waits on the exit pipe without blocking).
    pub fn wait(exit: OwnedFd) -> i32 {
        use std::io::Read;
        let mut bytes = Vec::with_capacity(4);
        let _ = std::fs::File::from(exit).take(4).read_to_end(&mut bytes);
        decode_exit_status(&bytes)
    }
}

/// A process the host keeps, and its exit status once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub id: String,
    pub exit_status: Option<i32>,
}

/// A request to start a process in a container.
#[derive(Debug, Clone, Copy)]
pub struct SpawnRequest<'a> {
    pub handle: &'a str,
    pub process_id: &'a str,
    pub spec: &'a ProcessSpec,
    /// Image env then container env; the spec's own env goes after it.
    pub env: &'a [String],
}

/// Where a tar stream goes in or comes from, and as whom.
#[derive(Debug, Clone, Copy)]
pub struct FilePath<'a> {
    pub handle: &'a str,
    /// Inside the container; relative paths are relative to the user's home.
    pub path: &'a str,
    /// Empty means root.
    pub user: &'a str,
}

pub trait Host: Send + Sync + 'static {
    /// Carries out one of the core's effects and answers its outcome. Effects are enumerated
    /// once, by `EffectKind`; each host matches on it. `SpawnProcess` only records the process
    /// here: its stdio must go to whoever serves the streams, so the server calls
    /// [`Host::spawn_process`] instead.
    fn execute(&self, effect: &EffectKind) -> Outcome;

    // --- running containers ---
    fn spawn_process(&self, request: SpawnRequest<'_>) -> HostResult<ProcessIo>;
    /// Fresh descriptors of a process the host still keeps (running, or exited and not yet
    /// released); `ProcessNotFound` otherwise.
    fn attach_process(&self, handle: &str, process_id: &str) -> HostResult<ProcessIo>;
    /// Every process the host keeps for the container.
    fn processes(&self, handle: &str) -> HostResult<Vec<ProcessState>>;
    /// Signals a process that still runs (nothing happens to one that has exited).
    fn signal_process(&self, handle: &str, process_id: &str, signal: Signal) -> HostResult<()>;
    /// Sets the terminal size of a process with a TTY (others ignore it).
    fn resize_process(&self, handle: &str, process_id: &str, size: WindowSize) -> HostResult<()>;
    /// The keeper closes its copy of the process's stdin: once the caller's copies are closed
    /// too, the process reads EOF.
    fn close_process_stdin(&self, handle: &str, process_id: &str) -> HostResult<()>;
    /// The keeper forgets an exited process (its status and output were delivered).
    fn release_process(&self, handle: &str, process_id: &str) -> HostResult<()>;
    /// Whether containers are limited through the unified cgroup hierarchy (v2), where gdn
    /// reports CPU limits as the `cpu.weight` they convert to (`CpuLimits::reported`).
    fn cgroup_v2(&self) -> bool {
        false
    }
    /// Starts reporting unsolicited events (OOM kills) to `sink`, from a thread of the host's
    /// own. Called once at server start.
    fn watch_events(&self, _sink: ObservationSink) {}
    /// Finishes cleanup the host runs in the background (link and bridge removals after a
    /// teardown), so that nothing is left half-done when the server exits.
    fn settle(&self) {}

    // --- files ---
    /// Unpacks a tar stream at `to.path`, as `to.user`, confined to the container.
    fn stream_in(&self, to: FilePath<'_>, tar: &mut dyn Read) -> HostResult<()>;
    /// Writes a tar of `from.path`, read as `from.user`, confined to the container.
    fn stream_out(&self, from: FilePath<'_>, tar: &mut dyn Write) -> HostResult<()>;

    // --- restart ---
    fn load_records(&self) -> HostResult<Vec<ContainerRecord>>;
    /// Everything that exists on the host, by handle.
    fn observe(&self) -> HostResult<ObservedHost>;
}

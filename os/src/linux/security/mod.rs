//! What keeps a container's processes from reaching the host: the profile of an unprivileged
//! container (user namespace, capabilities, seccomp, devices) and of a privileged one, gdn's
//! in both cases. Each concern is one file; the runtime, cgroups, rootfs and networker apply
//! them.
//!
//! - `userns`: the id mapping and user namespaces made with it;
//! - `capabilities`: the capability sets each kind of process gets;
//! - `seccomp`: the syscall filter of unprivileged containers;
//! - `devices`: the device nodes a container sees and may open.

pub mod capabilities;
pub mod devices;
pub mod seccomp;
pub mod userns;

use serde::{Deserialize, Serialize};
pub use userns::{IdMapFlags, IdMapping};

/// The operator's security settings (gdn's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecuritySettings {
    /// `--uid-map-*`, `--gid-map-*`: the user namespace of unprivileged containers.
    pub id_mapping: IdMapping,
    /// `--no-new-privileges`: every container process runs with `no_new_privs`, so setuid
    /// binaries and file capabilities gain nothing.
    pub no_new_privileges: bool,
}

/// How a container's processes are confined; decided once per container from its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Confinement {
    /// A user namespace with this mapping, gdn's reduced capabilities, seccomp, masked paths.
    Unprivileged { id_mapping: IdMapping },
    /// No user namespace; root keeps the capabilities gdn gives privileged containers.
    Privileged,
}

impl Confinement {
    pub fn new(privileged: bool, settings: &SecuritySettings) -> Confinement {
        if privileged {
            Confinement::Privileged
        } else {
            Confinement::Unprivileged {
                id_mapping: settings.id_mapping.clone(),
            }
        }
    }

    pub fn is_privileged(&self) -> bool {
        matches!(self, Confinement::Privileged)
    }

    pub fn id_mapping(&self) -> Option<&IdMapping> {
        match self {
            Confinement::Unprivileged { id_mapping } => Some(id_mapping),
            Confinement::Privileged => None,
        }
    }
}

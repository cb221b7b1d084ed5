//! Trellis host adapter: carries out the core's effects.
//!
//! [`Host`] is the boundary: [`Host::execute`] carries out one of the core's effects, the other
//! methods serve process streams and files. The Linux implementation lives here; `trellis-fake`
//! provides an in-memory one.

#![warn(unreachable_pub)]

pub mod helper;
pub mod host;
pub mod layout;
pub mod linux;
pub mod users;

pub use host::{
    decode_exit_status, encode_exit_status, FilePath, Host, HostCapacity, HostError, HostResult,
    ObservationSink, ProcessIo, ProcessState, Rootfs, SpawnRequest, KILLED_WITH_CONTAINER,
};
pub use layout::Layout;
pub use linux::{LinuxConfig, LinuxHost};

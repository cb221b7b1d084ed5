//! The Garden API's data types with the exact JSON shape the Go client sends and expects
//! (see `../shared/garden-protocol.md`). The core takes them as command inputs; the server,
//! the client and the fuzz targets (de)serialize them. This is their only definition.

pub mod go;
pub mod info;
pub mod net;
pub mod process;
pub mod spec;

pub use info::*;
pub use net::*;
pub use process::*;
pub use spec::*;

#[cfg(test)]
mod tests;

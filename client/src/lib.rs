//! A Rust client for the Garden API, mirroring garden's Go `Client` and `Container` interfaces
//! (async, typed errors), and the `trellis` command-line client built on it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trellis_client::Error> {
//! use trellis_client::{Client, ProcessIo};
//! use trellis_core::api::{ContainerSpec, ProcessSpec};
//! let client = Client::new("127.0.0.1:7777".parse()?);
//! let container = client.create(ContainerSpec::default()).await?;
//! let mut process = container
//!     .run(ProcessSpec { path: "echo".into(), args: vec!["hi".into()], ..Default::default() },
//!          ProcessIo::default())
//!     .await?;
//! assert_eq!(process.wait().await?, 0);
//! # Ok(()) }
//! ```

#![warn(unreachable_pub)]

pub mod cli;
mod client;
mod error;
mod process;
mod transport;
mod tty;

pub use client::{Client, Container, StreamInSpec, StreamOutSpec};
pub use error::Error;
pub use process::{Process, ProcessIo};
pub use transport::Target;

//! An in-memory OS for the Trellis core.
//!
//! [`FakeOs`] carries out effects deterministically and notices effects a real host could not
//! carry out; the simulator applies effects to it directly. [`FakeHost`] is the [`trellis_os::Host`]
//! the server runs on with `--backend fake`: it keeps its containers in a [`FakeOs`] and runs
//! simulated processes on threads.

pub mod host;
pub mod os;

pub use host::FakeHost;
pub use os::{FakeContainer, FakeOs, Fault};

//! Deterministic simulation of the Trellis core.
//!
//! [`Sim`] drives the real core with a seeded workload against [`FakeOs`], injects faults and
//! crashes, and checks invariants after every step (see `check`). The same seed and step count
//! give the same `trace` hash on any machine.

pub mod check;
pub mod fake_os;
pub mod host;
mod rng;
pub mod sim;

pub use fake_os::{FakeOs, Fault};
pub use host::FakeHost;
pub use sim::{Failure, Sim, SimOptions, SimReport, Stats};

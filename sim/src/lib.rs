//! Deterministic simulation of the Trellis core.
//!
//! [`Sim`] drives the real core with a seeded workload against [`FakeOs`], injects faults and
//! crashes, and checks invariants after every step (see `check`). The same seed and step count
//! give the same `trace` hash on any machine.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod check;
mod rng;
pub mod sim;

pub use sim::{Failure, Sim, SimOptions, SimReport, Stats};
pub use trellis_fake::{FakeOs, Fault};

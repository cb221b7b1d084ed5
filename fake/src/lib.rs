//! An in-memory OS for the Trellis core.
//!
//! [`FakeOs`] carries out effects deterministically and notices effects a real host could not
//! carry out; the simulator applies effects to it directly. [`FakeHost`] is the [`trellis_os::Host`]
//! the server runs on with `--backend fake`: it keeps its containers in a [`FakeOs`] and runs
//! simulated processes on threads.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod files;
pub mod host;
pub mod os;
mod pipe;
mod process;
mod programs;

pub use host::FakeHost;
pub use os::{FakeContainer, FakeOs, Fault};
pub use process::FakeProcess;
pub use programs::PROGRAMS;

/// Locks a mutex, taking over one a panicking thread left (the fake's state stays usable).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

//! Rust client library for the Garden HTTP protocol.

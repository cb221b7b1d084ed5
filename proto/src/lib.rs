//! The Garden wire protocol, in one place for the server and the client: each route as a
//! method and request target both ways ([`route`]), the bodies that exist only on the wire
//! ([`messages`]) and how request bodies are decoded ([`body`]), error types and HTTP statuses
//! ([`error`]), the message stream of a hijacked process connection ([`stream`]), and Go's
//! duration syntax ([`duration`]). The domain values those bodies carry are
//! `trellis_core::api`'s: the core takes them as command inputs and stores them in records.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod body;
pub mod duration;
pub mod error;
pub mod messages;
pub mod route;
pub mod stream;

pub use route::{LimitKind, Route, RouteError, StreamKind};

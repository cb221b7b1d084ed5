//! Trellis's Garden API server: the HTTP protocol in front of the core.
//!
//! Plain routes go through hyper; the four process routes (Run, Attach, Stdout, Stderr) take the
//! connection over after their response head, which hyper cannot do, so every connection's
//! first request head is read here ([`head`]), routed ([`routes`]), and either served raw
//! ([`hijack`]) or handed to hyper with the bytes already read put back in front.

#![warn(unreachable_pub)]

pub mod alloc_stats;
pub mod api;
pub mod cleanup;
pub mod config;
pub mod config_file;
pub mod debug;
pub mod driver;
/// Fuzz entry points: built for cargo-fuzz (`--cfg fuzzing`) and for the seed replay test,
/// never into the shipped server.
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
pub mod gdn_flags;
mod go_literal;
pub mod head;
pub mod hijack;
pub mod lager;
pub mod output;
pub mod processes;
pub mod reply;
pub mod server;
pub mod startup;

use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A client connection, TCP or unix socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// A connection with bytes already read put back in front of it.
pub struct Rewind {
    prefix: bytes::Bytes,
    inner: BoxIo,
}

impl Rewind {
    pub fn new(prefix: bytes::Bytes, inner: BoxIo) -> Rewind {
        Rewind { prefix, inner }
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let piece = self.prefix.split_to(n);
            buf.put_slice(&piece);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

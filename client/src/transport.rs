//! Connections to a Garden server (TCP or unix socket), plain requests over hyper, and the
//! hand-made HTTP/1.1 exchange of the hijacked process routes.

use crate::error::Error;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use trellis_proto::messages::ErrorBody;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = Error;
    /// `host:port`, or a path (anything with a `/`) for a unix socket.
    fn from_str(s: &str) -> Result<Target, Error> {
        if s.contains('/') {
            Ok(Target::Unix(PathBuf::from(s)))
        } else if s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            Ok(Target::Tcp(s.to_string()))
        } else {
            Err(Error::InvalidTarget(s.to_string()))
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(addr) => f.write_str(addr),
            Target::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}
pub(crate) type BoxStream = Box<dyn Stream>;

pub(crate) type RequestBody = UnsyncBoxBody<Bytes, std::io::Error>;

pub(crate) fn json_body(bytes: Vec<u8>) -> RequestBody {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty_body() -> RequestBody {
    json_body(Vec::new())
}

/// A request body read from an `AsyncRead` piece by piece (StreamIn's tar stream).
pub(crate) struct ReaderBody {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    buf: Vec<u8>,
    done: bool,
}

impl ReaderBody {
    pub(crate) fn new(reader: Box<dyn AsyncRead + Send + Unpin>) -> ReaderBody {
        ReaderBody {
            reader,
            buf: vec![0u8; 64 * 1024],
            done: false,
        }
    }
}

impl hyper::body::Body for ReaderBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let mut read_buf = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.reader).poll_read(cx, &mut read_buf) {
            Poll::Ready(Ok(())) => {
                let filled = read_buf.filled();
                if filled.is_empty() {
                    this.done = true;
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(filled)))))
                }
            }
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Target {
    pub async fn connect(&self) -> Result<BoxStream, Error> {
        Ok(match self {
            Target::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }

    /// One plain request on a fresh connection (as the Go client does), answered by hyper.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: RequestBody,
    ) -> Result<Response<Incoming>, Error> {
        let stream = self.connect().await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "api");
        if let Some(content_type) = content_type {
            builder = builder.header(hyper::header::CONTENT_TYPE, content_type);
        }
        let request = builder.body(body).map_err(|e| Error::Http(e.to_string()))?;
        Ok(sender.send_request(request).await?)
    }
}

/// Reads a whole response body.
pub(crate) async fn read_body(response: Response<Incoming>) -> Result<(u16, Bytes), Error> {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The typed error of a non-2xx response body.
pub(crate) fn error_from(status: u16, body: &[u8]) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => Error::from_body(status, e),
        Err(e) => Error::BadResponse {
            status,
            detail: format!(
                "{e}; body: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        },
    }
}

/// A hijacked exchange: the raw socket after a 2xx response head, with any bytes read past it.
pub struct Hijacked {
    pub stream: BoxStream,
    pub buffered: Vec<u8>,
}

const MAX_RESPONSE_HEAD: usize = 1 << 20;

impl Target {
    /// Sends one request on a fresh connection and takes the connection over once a 2xx head
    /// arrives; a non-2xx answer is read whole and returned as its typed error.
    pub async fn hijack(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Hijacked, Error> {
        let mut stream = self.connect().await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: api\r\nUser-Agent: trellis-client\r\n");
        if let Some(body) = &body {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        if let Some(body) = body {
            bytes.extend_from_slice(&body);
        }
        stream.write_all(&bytes).await?;

        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let (status, head_len, framing) = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::Http(
                    "connection closed before the response head".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = response.code.unwrap_or(0);
                    let framing = Framing::of(response.headers);
                    break (status, len, framing);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => continue,
                Ok(httparse::Status::Partial) => {
                    return Err(Error::Http("response head too large".into()))
                }
                Err(e) => return Err(Error::Http(format!("malformed response head: {e}"))),
            }
        };
        let buffered = buf.split_off(head_len);
        if (200..300).contains(&status) {
            return Ok(Hijacked { stream, buffered });
        }
        let body = framing.read(&mut stream, buffered).await?;
        Err(error_from(status, &body))
    }
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

impl Framing {
    fn of(headers: &[httparse::Header<'_>]) -> Framing {
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                if let Some(n) = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                {
                    return Framing::Length(n);
                }
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                return Framing::Chunked;
            }
        }
        Framing::Close
    }

    /// Reads an error response's body (bounded).
    async fn read(&self, stream: &mut BoxStream, mut buf: Vec<u8>) -> Result<Vec<u8>, Error> {
        const LIMIT: usize = 1 << 20;
        let mut chunk = [0u8; 8192];
        loop {
            match self {
                Framing::Length(n) if buf.len() >= *n => {
                    buf.truncate(*n);
                    return Ok(buf);
                }
                Framing::Chunked => {
                    if let Some(body) = dechunk(&buf) {
                        return Ok(body);
                    }
                }
                _ => {}
            }
            if buf.len() > LIMIT {
                return Err(Error::Http("error response too large".into()));
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return match self {
                    Framing::Close => Ok(buf),
                    _ => Err(Error::Http("connection closed mid-response".into())),
                };
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A complete chunked body, if all of it is in `buf`.
fn dechunk(buf: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let line_end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&buf[at..at + line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at += line_end + 2;
        if size == 0 {
            return Some(out);
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        out.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            "127.0.0.1:7777".parse::<Target>().unwrap(),
            Target::Tcp("127.0.0.1:7777".into())
        );
        assert_eq!(
            "/tmp/garden.sock".parse::<Target>().unwrap(),
            Target::Unix("/tmp/garden.sock".into())
        );
        assert_eq!(
            "./g.sock".parse::<Target>().unwrap(),
            Target::Unix("./g.sock".into())
        );
        assert!("nonsense".parse::<Target>().is_err());
    }

    #[test]
    fn chunked_error_bodies() {
        assert_eq!(dechunk(b"3\r\nabc\r\n0\r\n\r\n"), Some(b"abc".to_vec()));
        assert_eq!(dechunk(b"3\r\nab"), None);
    }
}

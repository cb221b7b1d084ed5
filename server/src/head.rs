//! The first request head on a connection, parsed by hand (httparse) so that the process routes
//! can take the raw socket over after their response head, and bounded request bodies for them.

use thiserror::Error;

/// Request heads larger than this are refused (Go's default limit).
pub const MAX_HEAD_BYTES: usize = 1 << 20;
const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent: path and query.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body framing the headers announce.
    pub body: BodyFraming,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(String),
    #[error("request head is larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("conflicting or invalid Content-Length / Transfer-Encoding")]
    BadFraming,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Parses a request head at the start of `buf`. `Ok(None)`: more bytes are needed. On success,
/// also returns the head's length (the body or raw stream starts there).
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req
        .parse(buf)
        .map_err(|e| HeadError::Malformed(e.to_string()))?;
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            return if buf.len() >= MAX_HEAD_BYTES {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
    };
    if len > MAX_HEAD_BYTES {
        return Err(HeadError::TooLarge);
    }
    let method = req
        .method
        .ok_or_else(|| HeadError::Malformed("no method".into()))?
        .to_string();
    let target = req
        .path
        .ok_or_else(|| HeadError::Malformed("no request target".into()))?
        .to_string();
    let version = req
        .version
        .ok_or_else(|| HeadError::Malformed("no version".into()))?;
    let headers: Vec<(String, Vec<u8>)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let mut head = RequestHead {
        method,
        target,
        version,
        headers,
        body: BodyFraming::None,
    };
    head.body = framing(&head)?;
    Ok(Some((head, len)))
}

fn framing(head: &RequestHead) -> Result<BodyFraming, HeadError> {
    let mut chunked = false;
    let mut length: Option<u64> = None;
    for (name, value) in &head.headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(value).map_err(|_| HeadError::BadFraming)?;
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(HeadError::BadFraming);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(value).map_err(|_| HeadError::BadFraming)?;
            let n: u64 = value.trim().parse().map_err(|_| HeadError::BadFraming)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::BadFraming);
            }
            length = Some(n);
        }
    }
    match (chunked, length) {
        (true, Some(_)) => Err(HeadError::BadFraming),
        (true, None) => Ok(BodyFraming::Chunked),
        (false, Some(n)) => Ok(BodyFraming::Length(n)),
        (false, None) => Ok(BodyFraming::None),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("malformed chunked request body")]
    BadChunk,
}

/// Decodes a complete chunked body at the start of `buf`. `Ok(None)`: more bytes are needed.
/// On success returns the body and the number of bytes of `buf` it used (trailers included).
pub fn decode_chunked(buf: &[u8], limit: usize) -> Result<Option<(Vec<u8>, usize)>, BodyError> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return if buf.len() - at > 1024 {
                Err(BodyError::BadChunk)
            } else {
                Ok(None)
            };
        };
        let line = std::str::from_utf8(&buf[at..at + line_end]).map_err(|_| BodyError::BadChunk)?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| BodyError::BadChunk)?;
        at += line_end + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len().saturating_add(size) > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size;
        if &buf[at..at + 2] != b"\r\n" {
            return Err(BodyError::BadChunk);
        }
        at += 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_go_client_run_head() {
        let raw = b"POST /containers/my-handle/processes HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 68\r\nContent-Type: application/json\r\n\r\n{\"path\"";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/containers/my-handle/processes");
        assert_eq!(head.body, BodyFraming::Length(68));
        assert_eq!(&raw[len..], b"{\"path\"");
        assert_eq!(parse_head(&raw[..20]), Ok(None));
    }

    #[test]
    fn rejects_bad_framing() {
        let raw = b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
        assert_eq!(parse_head(raw), Err(HeadError::BadFraming));
        let raw = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(parse_head(raw), Err(HeadError::BadFraming));
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nrest";
        let (body, used) = decode_chunked(raw, 100).unwrap().unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&raw[used..], b"rest");
        assert_eq!(decode_chunked(&raw[..8], 100), Ok(None));
        assert_eq!(
            decode_chunked(raw, 3),
            Err(BodyError::TooLarge { limit: 3 })
        );
        assert_eq!(decode_chunked(b"zz\r\n", 100), Err(BodyError::BadChunk));
    }
}

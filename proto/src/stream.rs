//! The message stream of a hijacked process connection: one decoder for both ends (the server
//! and this client), so messages split across reads are handled the same way everywhere.

use crate::messages::ProcessPayload;

/// The largest single message accepted (32 KiB of stdin escaped as JSON stays far below it).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("malformed process message: {0}")]
    Malformed(String),
    #[error("process message is larger than {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge,
}

/// Splits the bytes of a process connection into messages, whatever the read boundaries.
#[derive(Debug, Default)]
pub struct PayloadDecoder {
    buffer: Vec<u8>,
}

impl PayloadDecoder {
    pub fn new() -> PayloadDecoder {
        PayloadDecoder::default()
    }

    /// Adds bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<ProcessPayload>, PayloadError> {
        let start = self
            .buffer
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buffer.len());
        self.buffer.drain(..start);
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let mut stream =
            serde_json::Deserializer::from_slice(&self.buffer).into_iter::<ProcessPayload>();
        match stream.next() {
            Some(Ok(payload)) => {
                let used = stream.byte_offset();
                self.buffer.drain(..used);
                Ok(Some(payload))
            }
            Some(Err(e)) if e.is_eof() => {
                if self.buffer.len() > MAX_PAYLOAD_BYTES {
                    Err(PayloadError::TooLarge)
                } else {
                    Ok(None)
                }
            }
            Some(Err(e)) => Err(PayloadError::Malformed(e.to_string())),
            None => Ok(None),
        }
    }

    /// Bytes received but not yet part of a complete message.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }
}

/// One message as it goes on the wire: compact JSON and a newline.
pub fn encode(payload: &ProcessPayload) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(payload).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_messages_split_anywhere() {
        let stream = b"{\"process_id\":\"p\",\"source\":0,\"data\":\"hello\\n\"}\n{\"process_id\":\"p\",\"source\":0}\n{\"process_id\":\"p\",\"signal\":1}\n";
        for split in 0..stream.len() {
            let mut d = PayloadDecoder::new();
            let mut got = Vec::new();
            d.push(&stream[..split]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            d.push(&stream[split..]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].data.as_deref(), Some("hello\n"));
            assert_eq!(got[1].source, Some(0));
            assert_eq!(got[1].data, None);
            assert_eq!(got[2].signal, Some(1));
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        let mut d = PayloadDecoder::new();
        d.push(b"{\"signal\":\"x\"}");
        assert!(matches!(d.next_message(), Err(PayloadError::Malformed(_))));
        let mut d = PayloadDecoder::new();
        d.push(b"]");
        assert!(d.next_message().is_err());
    }
}

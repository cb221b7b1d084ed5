//! Collecting what a process stream delivers, as it arrives: a snapshot while it runs, all of
//! it once it ended.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;
use trellis_client::ProcessIo;

pub struct Collected {
    seen: Arc<Mutex<Vec<u8>>>,
    done: JoinHandle<()>,
}

impl Collected {
    /// Bytes delivered so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was delivered once the stream ended or `limit` passed, and whether it ended.
    pub async fn finish(self, limit: Duration) -> (Vec<u8>, bool) {
        let ended = tokio::time::timeout(limit, self.done).await.is_ok();
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|e| e.into_inner()));
        (seen, ended)
    }

    /// Everything, once the stream has ended (the client drops its end after delivering);
    /// panics if it does not end within 30 s.
    pub async fn all(self) -> Vec<u8> {
        let (seen, ended) = self.finish(Duration::from_secs(30)).await;
        assert!(ended, "the stream did not end");
        seen
    }
}

/// A `ProcessIo` whose stdout is collected until the stream ends or breaks.
pub fn stdout_collector() -> (ProcessIo, Collected) {
    let (writer, mut reader) = tokio::io::duplex(1 << 16);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let done = tokio::spawn(async move {
        let mut chunk = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    });
    (
        ProcessIo {
            stdout: Some(Box::new(writer)),
            ..Default::default()
        },
        Collected { seen, done },
    )
}

//! An in-memory [`Sink`] for unit tests of the export engine: objects in a map behind a mutex,
//! the same conditional-create semantics as the real destinations, and fault injection (the
//! Nth write fails with a chosen error).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{READ_LIMIT_BYTES, Sink, SinkError, SinkErrorKind, SmallObject};

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryObject {
    pub body: Vec<u8>,
    pub content_type: String,
}

/// The sink's state: objects by key, writes counted, faults waiting for their write.
#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, MemoryObject>,
    /// Write attempts so far (`upload_large`, `put_bytes`, `create_new`), failed ones included.
    writes: usize,
    /// Write attempts per key, failed ones included.
    writes_by_key: HashMap<String, usize>,
    /// The write attempt (1-based) that fails, and how.
    faults: BTreeMap<usize, SinkError>,
    /// Every write from this one (1-based) on fails, and how.
    fail_from: Option<(usize, SinkError)>,
    /// Keys written successfully, in order.
    written: Vec<String>,
    /// Prefixes `abort_incomplete` was called with.
    aborted: Vec<String>,
}

impl State {
    /// Stores `object` at `key` and records the write.
    fn store(&mut self, key: &str, object: MemoryObject) {
        self.objects.insert(key.to_string(), object);
        self.written.push(key.to_string());
    }
}

/// An in-memory destination (`memory://NAME`).
#[derive(Debug, Default)]
pub struct MemorySink {
    name: String,
    state: Mutex<State>,
}

impl MemorySink {
    /// An empty sink called `name` in its location.
    pub fn new(name: &str) -> Self {
        MemorySink {
            name: name.to_string(),
            state: Mutex::default(),
        }
    }

    /// Makes write attempt number `n` (1-based, counting every write so far) fail with `error`.
    pub fn fail_write(&self, n: usize, error: SinkError) {
        self.state.lock().faults.insert(n, error);
    }

    /// Makes every write attempt from number `n` (1-based) on fail with `error`.
    pub fn fail_writes_from(&self, n: usize, error: SinkError) {
        self.state.lock().fail_from = Some((n, error));
    }

    /// Stores `body` at `key` directly (no write is counted, no fault applies).
    pub fn insert(&self, key: &str, body: &[u8]) {
        self.state.lock().objects.insert(
            key.to_string(),
            MemoryObject {
                body: body.to_vec(),
                content_type: "application/octet-stream".to_string(),
            },
        );
    }

    /// The object at `key`.
    pub fn object(&self, key: &str) -> Option<MemoryObject> {
        self.state.lock().objects.get(key).cloned()
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.state.lock().objects.keys().cloned().collect()
    }

    /// Write attempts so far, failed ones included.
    pub fn writes(&self) -> usize {
        self.state.lock().writes
    }

    /// Write attempts of `key` so far, failed ones included.
    pub fn writes_of(&self, key: &str) -> usize {
        self.state
            .lock()
            .writes_by_key
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Keys written successfully, in order (a key written twice appears twice).
    pub fn written(&self) -> Vec<String> {
        self.state.lock().written.clone()
    }

    /// Prefixes `abort_incomplete` was called with, in order.
    pub fn aborted(&self) -> Vec<String> {
        self.state.lock().aborted.clone()
    }

    /// Counts a write attempt of `key` and applies its fault, if any; without one `store` runs
    /// under the same lock (so conditional creates are atomic).
    fn write<T>(&self, key: &str, store: impl FnOnce(&mut State) -> T) -> Result<T, SinkError> {
        let mut state = self.state.lock();
        state.writes += 1;
        let attempt = state.writes;
        *state.writes_by_key.entry(key.to_string()).or_default() += 1;
        if let Some(error) = state.faults.remove(&attempt) {
            return Err(error);
        }
        if let Some((from, error)) = &state.fail_from
            && attempt >= *from
        {
            return Err(error.clone());
        }
        Ok(store(&mut state))
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn location(&self) -> String {
        format!("memory://{}", self.name)
    }

    async fn upload_large(
        &self,
        key: &str,
        path: &Path,
        _size: u64,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let body = tokio::fs::read(path).await.map_err(|error| {
            SinkError::new(
                SinkErrorKind::Rejected,
                format!("reading spooled part {}: {error}", path.display()),
            )
        })?;
        self.put_bytes(key, body, content_type).await
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<(), SinkError> {
        let object = MemoryObject {
            body,
            content_type: content_type.to_string(),
        };
        self.write(key, |state| state.store(key, object))
    }

    async fn create_new(
        &self,
        key: &str,
        body: Vec<u8>,
        content_type: &str,
    ) -> Result<bool, SinkError> {
        let object = MemoryObject {
            body,
            content_type: content_type.to_string(),
        };
        self.write(key, |state| {
            if state.objects.contains_key(key) {
                return false;
            }
            state.store(key, object);
            true
        })
    }

    async fn exists(&self, key: &str) -> Result<bool, SinkError> {
        Ok(self.state.lock().objects.contains_key(key))
    }

    async fn read_small(&self, key: &str) -> Result<SmallObject, SinkError> {
        Ok(match self.state.lock().objects.get(key) {
            None => SmallObject::Missing,
            Some(object) if object.body.len() > READ_LIMIT_BYTES => SmallObject::TooLarge,
            Some(object) => SmallObject::Body(object.body.clone()),
        })
    }

    async fn abort_incomplete(&self, prefix: &str) -> Result<usize, SinkError> {
        // Every write here is complete at once: nothing is ever left to abort.
        self.state.lock().aborted.push(prefix.to_string());
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn create_new_creates_once_and_faults_hit_their_write() {
        let sink = MemorySink::new("t");
        sink.fail_write(2, SinkError::transient("flaky"));
        assert!(sink.create_new("a", b"1".to_vec(), "x").await.unwrap());
        let error = sink.create_new("a", b"2".to_vec(), "x").await.unwrap_err();
        assert!(error.is_transient());
        assert!(!sink.create_new("a", b"3".to_vec(), "x").await.unwrap());
        assert_eq!(sink.object("a").unwrap().body, b"1");
        assert_eq!(sink.writes_of("a"), 3);
        assert_eq!(sink.read_small("b").await.unwrap(), SmallObject::Missing);
        sink.insert("big", &vec![0; READ_LIMIT_BYTES + 1]);
        assert_eq!(sink.read_small("big").await.unwrap(), SmallObject::TooLarge);
        assert!(sink.exists("big").await.unwrap());
    }
}

//! Signed checkpoints of each tenant's chain, and the append-only log that keeps them.
//!
//! A checkpoint is a signed JSON object:
//!
//! ```json
//! {"tenant_id": "tnt_a", "sequence": 7, "event_count": 1042, "chain_head": "9f…",
//!  "timestamp": "2026-12-03T12:00:00.000000Z", "previous_checkpoint_hash": "51…",
//!  "signature": {"alg": "EdDSA", "kid": "…", "value": "…"}}
//! ```
//!
//! `sequence` numbers a tenant's checkpoints from 1; `event_count` is the chain position of
//! `chain_head` (the tenant's `chain_seq` at that point); `previous_checkpoint_hash` is the
//! SHA-256 of the canonical JSON of the tenant's previous checkpoint, signature included
//! (`null` for the first). Checkpoints are only written for committed events, which are
//! durable in the WAL, so a checkpoint never covers an event a crash can lose.
//!
//! The log (`integrity/checkpoints.jsonl` in the data directory) holds one checkpoint per
//! line, canonical JSON, appended and `fdatasync`ed; a torn last line (a crash mid-append) is
//! cut at open. Memory: an offset per checkpoint, the lines stay on disk.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::canonical;
use super::chain::ChainLink;
use super::keys::Keyring;
use crate::timestamp;

/// File name of the checkpoint log inside the integrity directory.
pub const LOG_FILE: &str = "checkpoints.jsonl";

/// Why the checkpoint log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checkpoint log {path}, line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Where one checkpoint sits in the log.
#[derive(Debug, Clone, Copy)]
struct Entry {
    timestamp_us: i64,
    event_count: u64,
    offset: u64,
    len: u32,
}

/// The last checkpoint of a tenant: what the next one links to.
#[derive(Debug, Clone)]
struct Last {
    sequence: u64,
    event_count: u64,
    hash: String,
}

/// A page of one tenant's checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointPage {
    pub checkpoints: Vec<Value>,
    /// The `sequence` to continue after, when there are more.
    pub next_after: Option<u64>,
}

struct LogState {
    file: File,
    end: u64,
    by_tenant: HashMap<String, Vec<Entry>>,
    last: HashMap<String, Last>,
}

/// The checkpoint log of one data directory, and the key that signs new checkpoints.
pub struct CheckpointLog {
    path: PathBuf,
    keyring: Keyring,
    state: Mutex<LogState>,
}

impl CheckpointLog {
    /// Opens (or creates) the log in `dir`, cutting a torn last line.
    pub fn open(dir: &Path, keyring: Keyring) -> Result<CheckpointLog, CheckpointError> {
        let path = dir.join(LOG_FILE);
        let io = |source| CheckpointError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut state = LogState {
            file,
            end: 0,
            by_tenant: HashMap::new(),
            last: HashMap::new(),
        };
        load(&path, &mut state)?;
        Ok(CheckpointLog {
            path,
            keyring,
            state: Mutex::new(state),
        })
    }

    /// The key ring that signs checkpoints.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Writes a checkpoint for every tenant whose head moved past its last checkpoint;
    /// returns how many were written. One `fdatasync` for all of them.
    pub fn checkpoint<'a>(
        &self,
        heads: impl IntoIterator<Item = (&'a String, &'a ChainLink)>,
    ) -> Result<usize, CheckpointError> {
        let mut state = self.state.lock();
        let now = timestamp::now_micros();
        let mut lines = Vec::new();
        for (tenant, head) in heads {
            let previous = state.last.get(tenant.as_str());
            if head.seq == 0 || previous.is_some_and(|last| last.event_count >= head.seq) {
                continue;
            }
            lines.push(self.sign(tenant, head, previous, now));
        }
        self.append(&mut state, &lines)?;
        for (tenant, checkpoint) in &lines {
            remember(&mut state.last, tenant, checkpoint);
        }
        Ok(lines.len())
    }

    /// The first checkpoint of `tenant` covering its first `event_count` events, writing one
    /// at `head` now when none does (an export's snapshot: `head.seq == event_count`).
    pub fn covering(
        &self,
        tenant: &str,
        head: &ChainLink,
    ) -> Result<Option<Value>, CheckpointError> {
        if head.seq == 0 {
            return Ok(None);
        }
        let needs_new = {
            let state = self.state.lock();
            state
                .last
                .get(tenant)
                .is_none_or(|last| last.event_count < head.seq)
        };
        if needs_new {
            let tenant = tenant.to_owned();
            self.checkpoint([(&tenant, head)])?;
        }
        let state = self.state.lock();
        let Some(entries) = state.by_tenant.get(tenant) else {
            return Ok(None);
        };
        let index = entries.partition_point(|entry| entry.event_count < head.seq);
        match entries.get(index) {
            Some(entry) => Ok(Some(self.read(&state, entry)?)),
            None => Ok(None),
        }
    }

    /// `tenant`'s checkpoints with `from_us <= timestamp < to_us` and `sequence > after`,
    /// oldest first, at most `limit`.
    pub fn page(
        &self,
        tenant: &str,
        from_us: i64,
        to_us: i64,
        after: u64,
        limit: usize,
    ) -> Result<CheckpointPage, CheckpointError> {
        let state = self.state.lock();
        let entries = state
            .by_tenant
            .get(tenant)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // Sequences are 1-based positions in `entries`; timestamps ascend with them.
        let start =
            (after as usize).max(entries.partition_point(|entry| entry.timestamp_us < from_us));
        let selected: Vec<&Entry> = entries
            .iter()
            .skip(start)
            .take_while(|entry| entry.timestamp_us < to_us)
            .take(limit + 1)
            .collect();
        let more = selected.len() > limit;
        let mut checkpoints = Vec::with_capacity(selected.len().min(limit));
        for entry in selected.into_iter().take(limit) {
            checkpoints.push(self.read(&state, entry)?);
        }
        let next_after = more.then(|| {
            checkpoints
                .last()
                .and_then(|last| last.get("sequence"))
                .and_then(Value::as_u64)
                .unwrap_or(after)
        });
        Ok(CheckpointPage {
            checkpoints,
            next_after,
        })
    }

    /// Every checkpoint of every tenant, in log order (for `verify --data-dir`).
    pub fn all(&self) -> Result<Vec<Value>, CheckpointError> {
        let state = self.state.lock();
        let mut entries: Vec<&Entry> = state.by_tenant.values().flatten().collect();
        entries.sort_by_key(|entry| entry.offset);
        entries
            .into_iter()
            .map(|entry| self.read(&state, entry))
            .collect()
    }

    fn sign(
        &self,
        tenant: &str,
        head: &ChainLink,
        previous: Option<&Last>,
        now_us: i64,
    ) -> (String, Value) {
        let mut checkpoint = json!({
            "tenant_id": tenant,
            "sequence": previous.map_or(1, |last| last.sequence + 1),
            "event_count": head.seq,
            "chain_head": head.hash_hex(),
            "timestamp": timestamp::format_micros(now_us),
            "previous_checkpoint_hash": previous.map(|last| last.hash.clone()),
        });
        if let Some(object) = checkpoint.as_object_mut() {
            self.keyring.sign_object(object);
        }
        (tenant.to_owned(), checkpoint)
    }

    fn append(
        &self,
        state: &mut LogState,
        lines: &[(String, Value)],
    ) -> Result<(), CheckpointError> {
        if lines.is_empty() {
            return Ok(());
        }
        let io = |source| CheckpointError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buffer = Vec::new();
        let mut entries = Vec::with_capacity(lines.len());
        for (tenant, checkpoint) in lines {
            let offset = state.end + buffer.len() as u64;
            let line = canonical::to_vec(checkpoint);
            entries.push((tenant.clone(), entry_of(checkpoint, offset, line.len())));
            buffer.extend_from_slice(&line);
            buffer.push(b'\n');
        }
        state.file.write_all(&buffer).map_err(io)?;
        state.file.sync_data().map_err(io)?;
        state.end += buffer.len() as u64;
        for (tenant, entry) in entries {
            state.by_tenant.entry(tenant).or_default().push(entry);
        }
        Ok(())
    }

    fn read(&self, state: &LogState, entry: &Entry) -> Result<Value, CheckpointError> {
        let mut line = vec![0u8; entry.len as usize];
        state
            .file
            .read_exact_at(&mut line, entry.offset)
            .map_err(|source| CheckpointError::Io {
                path: self.path.clone(),
                source,
            })?;
        serde_json::from_slice(&line).map_err(|error| CheckpointError::Corrupt {
            path: self.path.clone(),
            line: 0,
            message: error.to_string(),
        })
    }
}

/// Every checkpoint in the log of `dir`, in log order, read-only (for verifiers: a torn last
/// line is skipped, not cut).
pub fn read_log(dir: &Path) -> Result<Vec<Value>, CheckpointError> {
    let path = dir.join(LOG_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(CheckpointError::Io { path, source }),
    };
    let mut checkpoints = Vec::new();
    let mut lines = bytes
        .split_inclusive(|&byte| byte == b'\n')
        .enumerate()
        .peekable();
    while let Some((number, line)) = lines.next() {
        let last = lines.peek().is_none();
        match serde_json::from_slice::<Value>(line) {
            Ok(checkpoint) if line.ends_with(b"\n") && checkpoint.is_object() => {
                checkpoints.push(checkpoint)
            }
            _ if last => break,
            _ => {
                return Err(CheckpointError::Corrupt {
                    path,
                    line: number + 1,
                    message: "not a checkpoint".to_owned(),
                });
            }
        }
    }
    Ok(checkpoints)
}

/// The SHA-256 (hex) a following checkpoint links to.
pub fn checkpoint_hash(checkpoint: &Value) -> String {
    hex::encode(Sha256::digest(canonical::to_vec(checkpoint)))
}

fn remember(last: &mut HashMap<String, Last>, tenant: &str, checkpoint: &Value) {
    let number = |name: &str| checkpoint.get(name).and_then(Value::as_u64).unwrap_or(0);
    last.insert(
        tenant.to_owned(),
        Last {
            sequence: number("sequence"),
            event_count: number("event_count"),
            hash: checkpoint_hash(checkpoint),
        },
    );
}

fn entry_of(checkpoint: &Value, offset: u64, len: usize) -> Entry {
    let timestamp_us = checkpoint
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|text| timestamp::parse_rfc3339_micros(text).ok())
        .unwrap_or(0);
    Entry {
        timestamp_us,
        event_count: checkpoint
            .get("event_count")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        offset,
        len: len as u32,
    }
}

/// Reads the log into `state`, cutting a torn last line.
fn load(path: &Path, state: &mut LogState) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::new(state.file.try_clone().map_err(io)?);
    reader.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut offset = 0u64;
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        let parsed = serde_json::from_slice::<Map<String, Value>>(&line).ok();
        let (Some(checkpoint), true) = (parsed, complete) else {
            // Only the last line can be torn; anything else is damage.
            let rest = reader.fill_buf().map_err(io)?.len();
            if rest > 0 {
                return Err(CheckpointError::Corrupt {
                    path: path.to_owned(),
                    line: number,
                    message: "not a checkpoint".to_owned(),
                });
            }
            tracing::warn!(path = %path.display(), bytes = read, "cutting a torn last checkpoint line");
            state.file.set_len(offset).map_err(io)?;
            state.file.sync_data().map_err(io)?;
            break;
        };
        let checkpoint = Value::Object(checkpoint);
        let tenant = checkpoint
            .get("tenant_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let entry = entry_of(&checkpoint, offset, read - 1);
        state
            .by_tenant
            .entry(tenant.clone())
            .or_default()
            .push(entry);
        remember(&mut state.last, &tenant, &checkpoint);
        offset += read as u64;
    }
    state.end = offset;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(seq: u64) -> ChainLink {
        ChainLink {
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn checkpoints_are_signed_linked_paged_and_survive_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::load(&dir.path().join("keys"), true).unwrap();
        let log = CheckpointLog::open(dir.path(), ring.clone()).unwrap();
        let (a, b) = ("tnt_a".to_owned(), "tnt_b".to_owned());
        assert_eq!(log.checkpoint([(&a, &link(3)), (&b, &link(1))]).unwrap(), 2);
        assert_eq!(log.checkpoint([(&a, &link(3))]).unwrap(), 0, "nothing new");
        assert_eq!(log.checkpoint([(&a, &link(5))]).unwrap(), 1);

        let page = log.page("tnt_a", 0, i64::MAX, 0, 1).unwrap();
        assert_eq!(page.checkpoints.len(), 1);
        assert_eq!(page.next_after, Some(1));
        let first = page.checkpoints[0].clone();
        assert_eq!(first["event_count"], 3);
        assert_eq!(first["previous_checkpoint_hash"], Value::Null);
        let rest = log.page("tnt_a", 0, i64::MAX, 1, 10).unwrap();
        assert_eq!(rest.next_after, None);
        let second = &rest.checkpoints[0];
        assert_eq!(second["sequence"], 2);
        assert_eq!(second["chain_head"], link(5).hash_hex());
        assert_eq!(second["previous_checkpoint_hash"], checkpoint_hash(&first));
        let keys = ring.public_keys();
        assert!(keys.verify_object(second.as_object().unwrap()).is_ok());

        // An export at chain position 4 is covered by the checkpoint at 5; one at 6 gets its own.
        assert_eq!(
            log.covering("tnt_a", &link(4)).unwrap().unwrap()["event_count"],
            5
        );
        assert_eq!(
            log.covering("tnt_a", &link(6)).unwrap().unwrap()["event_count"],
            6
        );
        drop(log);

        // A torn last line is cut; the chain of checkpoints continues from the line before.
        let path = dir.path().join(LOG_FILE);
        let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"tenant_id\":\"tnt_a\",\"seq").unwrap();
        let log = CheckpointLog::open(dir.path(), ring).unwrap();
        assert_eq!(log.all().unwrap().len(), 4);
        assert_eq!(log.checkpoint([(&a, &link(7))]).unwrap(), 1);
        let last = log.page("tnt_a", 0, i64::MAX, 3, 10).unwrap().checkpoints;
        assert_eq!(last[0]["sequence"], 4);
    }
}

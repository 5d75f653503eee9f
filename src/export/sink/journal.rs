//! The upload journal of one export: the S3 multipart uploads it started, so that cleanup
//! aborts exactly those and never another export's or another client's upload at the same
//! prefix (S3 lists uploads without their metadata, so a tag on the upload cannot be read back).
//!
//! One line per upload, `<upload id> <key>`, appended and synced before the first part is sent.
//! A crash between S3 creating an upload and the line being synced leaves that one upload to
//! the bucket's lifecycle rule (`AbortIncompleteMultipartUpload`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// File name prefix of journals (distinct from spool files, which are removed separately).
const JOURNAL_PREFIX: &str = ".scaivault-uploads-";

/// The journal file of `export_id` in `dir`.
pub fn journal_path(dir: &Path, export_id: &str) -> PathBuf {
    dir.join(format!("{JOURNAL_PREFIX}{export_id}"))
}

/// Appends `(upload_id, key)` to the journal at `path`, durably.
pub fn record(path: &Path, upload_id: &str, key: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{upload_id} {key}")?;
    file.sync_data()
}

/// The `(upload_id, key)` entries of the journal at `path` (none when it does not exist).
pub fn entries(path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(id, key)| (id.to_string(), key.to_string()))
        .collect())
}

/// Removes the journal at `path` (nothing left to abort).
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn entries_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = journal_path(dir.path(), "exp_1");
        assert!(entries(&path).unwrap().is_empty());
        record(&path, "upload-a", "p/part-0001.jsonl").unwrap();
        record(&path, "upload-b", "p/part 0002.jsonl").unwrap();
        assert_eq!(
            entries(&path).unwrap(),
            vec![
                ("upload-a".to_string(), "p/part-0001.jsonl".to_string()),
                ("upload-b".to_string(), "p/part 0002.jsonl".to_string()),
            ]
        );
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert!(entries(&path).unwrap().is_empty());
    }
}

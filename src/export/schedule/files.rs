//! The schedules' durable files: `DATA_DIR/exports/schedules/sch_*.json`, one per schedule
//! (spec and state), replaced atomically on every change ([`crate::durable_file::replace`]).
//! At start only `sch_*.json` files are read; one that cannot be read, or is not named after the
//! schedule it holds, is renamed `*.corrupt` and logged, and the service starts without it.

use std::path::{Path, PathBuf};

use super::{ScheduleRecord, is_schedule_id};

/// Why a schedule file cannot be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("schedule file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schedule file {path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// The directory of schedule files.
#[derive(Debug, Clone)]
pub struct ScheduleFiles {
    dir: PathBuf,
}

impl ScheduleFiles {
    /// The schedule files in `dir` (created when missing).
    pub fn open(dir: &Path) -> Result<ScheduleFiles, FilesError> {
        std::fs::create_dir_all(dir).map_err(|source| FilesError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(ScheduleFiles {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, schedule_id: &str) -> PathBuf {
        self.dir.join(format!("{schedule_id}.json"))
    }

    /// Writes `record` durably (atomic replace).
    pub fn save(&self, record: &ScheduleRecord) -> Result<(), FilesError> {
        let path = self.path(&record.spec.schedule_id);
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| FilesError::Encode {
            path: path.clone(),
            source,
        })?;
        crate::durable_file::replace(&path, &bytes)
            .map_err(|source| FilesError::Io { path, source })
    }

    /// Removes the file of `schedule_id` (gone already is fine).
    pub fn remove(&self, schedule_id: &str) -> Result<(), FilesError> {
        let path = self.path(schedule_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FilesError::Io { path, source }),
        }
    }

    /// The schedule `schedule_id` on disk (`None` when missing or unreadable).
    pub fn load(&self, schedule_id: &str) -> Option<ScheduleRecord> {
        if !is_schedule_id(schedule_id) {
            return None;
        }
        std::fs::read(self.path(schedule_id))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ScheduleRecord>(&bytes).ok())
            .filter(|record| record.spec.schedule_id == schedule_id)
    }

    /// Every schedule on disk; unreadable files are set aside as `*.corrupt`.
    pub fn load_all(&self) -> Vec<ScheduleRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            if !is_schedule_id(id) {
                continue;
            }
            let path = entry.path();
            let record = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ScheduleRecord>(&bytes).ok())
                .filter(|record| record.spec.schedule_id == id);
            match record {
                Some(record) => records.push(record),
                None => set_aside(&path),
            }
        }
        records.sort_by(|a, b| a.spec.schedule_id.cmp(&b.spec.schedule_id));
        records
    }
}

fn set_aside(path: &Path) {
    let mut corrupt = path.as_os_str().to_os_string();
    corrupt.push(".corrupt");
    let renamed = std::fs::rename(path, &corrupt);
    tracing::error!(
        path = %path.display(),
        renamed = renamed.is_ok(),
        "a schedule file cannot be read; the service starts without that schedule"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::super::{ScheduleRecord, new_schedule_id, spec_from_body};
    use super::*;

    #[test]
    fn schedules_survive_a_reopen_and_bad_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let files = ScheduleFiles::open(dir.path()).unwrap();
        let body = serde_json::json!({"schedule": "* * * * *", "format": "jsonl",
            "destination": {"type": "file", "bucket": "out"}});
        let spec = spec_from_body(&body, "tnt_acme", new_schedule_id(), "sa:ci", 1, 0).unwrap();
        let mut record = ScheduleRecord::new(spec, 0).unwrap();
        files.save(&record).unwrap();
        record.state.runs_completed = 4;
        files.save(&record).unwrap();
        let bad = dir.path().join(format!("{}.json", new_schedule_id()));
        std::fs::write(&bad, b"{not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let reopened = ScheduleFiles::open(dir.path()).unwrap();
        assert_eq!(reopened.load_all(), [record.clone()]);
        assert!(!bad.try_exists().unwrap());
        let mut corrupt = bad.into_os_string();
        corrupt.push(".corrupt");
        assert!(Path::new(&corrupt).try_exists().unwrap());
        reopened.remove(&record.spec.schedule_id).unwrap();
        reopened.remove(&record.spec.schedule_id).unwrap();
        assert!(reopened.load_all().is_empty());
    }
}

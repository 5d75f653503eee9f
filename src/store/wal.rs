//! The write-ahead log: append-only segment files of checksummed records.
//!
//! ```text
//! wal/00000000000000000000.wal   segment named after the first sequence number it holds
//! record  = payload_len: u32 LE | crc32c(payload): u32 LE | payload
//! payload = version: u8 (1) | first_seq: u64 LE | count: u32 LE | count × (len: u32 LE | event JSON)
//! ```
//!
//! One record is one ingest request, so a request is atomic on disk: a torn record (a crash
//! mid-write) loses only a request that was never acknowledged. Several records share one
//! `fdatasync` (group commit). On open, the tail of the newest segment is checked record by
//! record and cut at the first torn or corrupt record.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Largest payload a record may declare; anything larger is corruption.
const MAX_PAYLOAD_BYTES: u32 = 256 * 1024 * 1024;
const RECORD_HEADER_BYTES: usize = 8;
const PAYLOAD_VERSION: u8 = 1;
const PAYLOAD_FIXED_BYTES: usize = 1 + 8 + 4;
const SEGMENT_SUFFIX: &str = ".wal";

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = WalError> = std::result::Result<T, E>;

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes one record holding events with consecutive sequence numbers from `first_seq`.
pub fn encode_record<'a>(
    first_seq: u64,
    events: impl ExactSizeIterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let count = events.len();
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + PAYLOAD_FIXED_BYTES + count * 400);
    record.extend_from_slice(&[0; RECORD_HEADER_BYTES]);
    record.push(PAYLOAD_VERSION);
    record.extend_from_slice(&first_seq.to_le_bytes());
    record.extend_from_slice(&(count as u32).to_le_bytes());
    for event in events {
        record.extend_from_slice(&(event.len() as u32).to_le_bytes());
        record.extend_from_slice(event);
    }
    let payload_len = (record.len() - RECORD_HEADER_BYTES) as u32;
    let checksum = crc32c::crc32c(&record[RECORD_HEADER_BYTES..]);
    record[0..4].copy_from_slice(&payload_len.to_le_bytes());
    record[4..8].copy_from_slice(&checksum.to_le_bytes());
    record
}

/// A decoded record payload.
#[derive(Debug, PartialEq)]
pub struct RecordEvents<'a> {
    pub first_seq: u64,
    pub events: Vec<&'a [u8]>,
}

impl RecordEvents<'_> {
    /// The sequence number after the last event of this record.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.events.len() as u64
    }
}

/// Decodes a payload whose checksum already matched; `None` if its structure is inconsistent.
pub fn decode_payload(payload: &[u8]) -> Option<RecordEvents<'_>> {
    let (&version, rest) = payload.split_first()?;
    if version != PAYLOAD_VERSION {
        return None;
    }
    let first_seq = u64::from_le_bytes(rest.get(0..8)?.try_into().ok()?);
    let count = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
    let mut rest = &rest[12..];
    let mut events = Vec::with_capacity(count.min(100_000) as usize);
    for _ in 0..count {
        let len = u32::from_le_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
        events.push(rest.get(4..4 + len)?);
        rest = &rest[4 + len..];
    }
    rest.is_empty()
        .then_some(RecordEvents { first_seq, events })
}

/// How a segment scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The file ended exactly after a valid record.
    Clean,
    /// The file ended inside a record (a crash mid-write).
    Torn,
    /// A record failed its checksum or structure check.
    Corrupt,
}

/// Result of reading a segment record by record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// Bytes of valid records from the start of the file.
    pub valid_len: u64,
    /// Sequence number after the last valid record, if there was one.
    pub end_seq: Option<u64>,
    pub end: ScanEnd,
}

/// Reads every valid record of a segment in order, calling `visit` for each.
pub fn scan_segment(path: &Path, mut visit: impl FnMut(&RecordEvents<'_>)) -> Result<SegmentScan> {
    let file = File::open(path).map_err(io_error("open WAL segment", path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut scan = SegmentScan {
        valid_len: 0,
        end_seq: None,
        end: ScanEnd::Clean,
    };
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; RECORD_HEADER_BYTES];
        match read_full(&mut reader, &mut header).map_err(io_error("read WAL segment", path))? {
            0 => return Ok(scan),
            n if n < RECORD_HEADER_BYTES => {
                return Ok(SegmentScan {
                    end: ScanEnd::Torn,
                    ..scan
                });
            }
            _ => {}
        }
        let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if payload_len == 0 || payload_len > MAX_PAYLOAD_BYTES {
            return Ok(SegmentScan {
                end: ScanEnd::Corrupt,
                ..scan
            });
        }
        payload.resize(payload_len as usize, 0);
        let read =
            read_full(&mut reader, &mut payload).map_err(io_error("read WAL segment", path))?;
        if read < payload.len() {
            return Ok(SegmentScan {
                end: ScanEnd::Torn,
                ..scan
            });
        }
        if crc32c::crc32c(&payload) != checksum {
            return Ok(SegmentScan {
                end: ScanEnd::Corrupt,
                ..scan
            });
        }
        let Some(record) = decode_payload(&payload) else {
            return Ok(SegmentScan {
                end: ScanEnd::Corrupt,
                ..scan
            });
        };
        if scan
            .end_seq
            .is_some_and(|expected| expected != record.first_seq)
        {
            return Ok(SegmentScan {
                end: ScanEnd::Corrupt,
                ..scan
            });
        }
        visit(&record);
        scan.valid_len += (RECORD_HEADER_BYTES + payload.len()) as u64;
        scan.end_seq = Some(record.end_seq());
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
}

/// What opening the WAL found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut off the newest segment's tail (torn or corrupt records).
    pub tail_bytes_cut: u64,
}

/// The write side of the log. Owned by exactly one thread (the writer's WAL stage).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    /// Length of the active segment up to its last durable record.
    active_len: u64,
    segment_max_bytes: u64,
    next_seq: u64,
    /// Set when a failed write could not be cut off again; the next append retries the cut.
    needs_truncate: bool,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn or corrupt tail off the newest segment.
    ///
    /// `min_next_seq` is the index's committed position: sequence numbers never go below it,
    /// even when the log is empty.
    pub fn open(
        dir: &Path,
        segment_max_bytes: u64,
        min_next_seq: u64,
    ) -> Result<(Self, OpenReport)> {
        fs::create_dir_all(dir).map_err(io_error("create WAL directory", dir))?;
        let mut segments = list_segments(dir)?;
        let mut report = OpenReport::default();
        let mut next_seq = min_next_seq;
        if let Some(newest) = segments.last() {
            let scan = scan_segment(&newest.path, |_| {})?;
            let file_len = fs::metadata(&newest.path)
                .map_err(io_error("stat WAL segment", &newest.path))?
                .len();
            if scan.valid_len < file_len {
                report.tail_bytes_cut = file_len - scan.valid_len;
                tracing::warn!(
                    segment = %newest.path.display(),
                    cut_bytes = report.tail_bytes_cut,
                    end = ?scan.end,
                    "cutting torn or corrupt tail off the write-ahead log"
                );
                truncate_file(&newest.path, scan.valid_len)?;
            }
            next_seq = next_seq.max(scan.end_seq.unwrap_or(newest.first_seq));
        }
        let (active, active_len) = match segments.last() {
            Some(newest) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&newest.path)
                    .map_err(io_error("open WAL segment", &newest.path))?;
                let len = file
                    .metadata()
                    .map_err(io_error("stat WAL segment", &newest.path))?
                    .len();
                (file, len)
            }
            None => {
                let segment = create_segment(dir, next_seq)?;
                let file = OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .map_err(io_error("open WAL segment", &segment.path))?;
                segments.push(segment);
                (file, 0)
            }
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            active,
            active_len,
            segment_max_bytes,
            next_seq,
            needs_truncate: false,
        };
        Ok((wal, report))
    }

    /// The sequence number the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends encoded records (see [`encode_record`]) holding `event_count` events, then makes
    /// them durable with one `fdatasync`. On error nothing of this call remains in the log.
    pub fn append(&mut self, records: &[u8], event_count: u64) -> Result<()> {
        if self.needs_truncate {
            self.cut_active_to_durable_len()?;
        }
        if self.active_len >= self.segment_max_bytes {
            self.roll()?;
        }
        let path = &self.segments[self.segments.len() - 1].path;
        let written = self
            .active
            .write_all_at(records, self.active_len)
            // fdatasync: the records and the file length reach the disk before the ack, which is
            // what makes an acknowledged event survive kill -9 and power loss.
            .and_then(|()| self.active.sync_data());
        match written {
            Ok(()) => {
                self.active_len += records.len() as u64;
                self.next_seq += event_count;
                Ok(())
            }
            Err(source) => {
                let error = WalError::Io {
                    action: "append to WAL segment",
                    path: path.clone(),
                    source,
                };
                if self.cut_active_to_durable_len().is_err() {
                    self.needs_truncate = true;
                }
                Err(error)
            }
        }
    }

    /// Starts a new segment when everything in the active one is committed and it holds at
    /// least `min_bytes`, so that [`Wal::remove_segments_below`] can delete it.
    pub fn retire_committed_active(&mut self, committed_seq: u64, min_bytes: u64) -> Result<()> {
        if committed_seq >= self.next_seq && self.active_len > 0 && self.active_len >= min_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Deletes segments whose every event is below `committed_seq` (already in the index).
    pub fn remove_segments_below(&mut self, committed_seq: u64) -> Result<usize> {
        let mut removable = 0;
        while removable + 1 < self.segments.len()
            && self.segments[removable + 1].first_seq <= committed_seq
        {
            removable += 1;
        }
        for segment in self.segments.drain(..removable) {
            fs::remove_file(&segment.path)
                .map_err(io_error("remove WAL segment", &segment.path))?;
        }
        if removable > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removable)
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|segment| fs::metadata(&segment.path).ok())
            .map(|meta| meta.len())
            .sum()
    }

    /// Replays every event with a sequence number `>= from_seq`, in order.
    ///
    /// A corrupt record in an older segment (damage after the fact, not a torn write) is
    /// logged and the rest of that segment skipped; returns how many such segments there were.
    pub fn replay_from(&self, from_seq: u64, mut visit: impl FnMut(u64, &[u8])) -> Result<usize> {
        let start = self
            .segments
            .iter()
            .rposition(|segment| segment.first_seq <= from_seq)
            .unwrap_or(0);
        let mut damaged = 0;
        for segment in &self.segments[start..] {
            let scan = scan_segment(&segment.path, |record| {
                for (offset, event) in record.events.iter().enumerate() {
                    let seq = record.first_seq + offset as u64;
                    if seq >= from_seq {
                        visit(seq, event);
                    }
                }
            })?;
            if scan.end != ScanEnd::Clean {
                damaged += 1;
                tracing::error!(segment = %segment.path.display(), end = ?scan.end,
                    valid_bytes = scan.valid_len, "write-ahead log segment is damaged; skipping its rest");
            }
        }
        Ok(damaged)
    }

    fn roll(&mut self) -> Result<()> {
        let segment = create_segment(&self.dir, self.next_seq)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .map_err(io_error("open WAL segment", &segment.path))?;
        self.segments.push(segment);
        self.active = file;
        self.active_len = 0;
        Ok(())
    }

    fn cut_active_to_durable_len(&mut self) -> Result<()> {
        let path = &self.segments[self.segments.len() - 1].path;
        self.active
            .set_len(self.active_len)
            .and_then(|()| self.active.sync_data())
            .map_err(io_error("truncate WAL segment", path))?;
        self.needs_truncate = false;
        Ok(())
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list WAL directory", dir))? {
        let entry = entry.map_err(io_error("list WAL directory", dir))?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|name| name.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push(Segment {
            first_seq,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.first_seq);
    Ok(segments)
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment> {
    let path = segment_path(dir, first_seq);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .and_then(|file| file.sync_all())
        .map_err(io_error("create WAL segment", &path))?;
    // The directory entry must be durable too, or a crash could lose the whole segment.
    sync_dir(dir)?;
    Ok(Segment { first_seq, path })
}

fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error("open WAL segment", path))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(io_error("truncate WAL segment", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error("sync WAL directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(first_seq: u64, events: &[&str]) -> Vec<u8> {
        encode_record(first_seq, events.iter().map(|e| e.as_bytes()))
    }

    fn replayed(wal: &Wal, from: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        wal.replay_from(from, |seq, bytes| {
            out.push((seq, String::from_utf8(bytes.to_vec()).unwrap()))
        })
        .unwrap();
        out
    }

    fn newest_segment(dir: &Path) -> PathBuf {
        list_segments(dir).unwrap().last().unwrap().path.clone()
    }

    #[test]
    fn framing_round_trips_and_detects_every_flipped_bit() {
        let encoded = record(41, &["{\"a\":1}", "", "{\"b\":2}"]);
        let payload = &encoded[RECORD_HEADER_BYTES..];
        let decoded = decode_payload(payload).unwrap();
        assert_eq!(decoded.first_seq, 41);
        assert_eq!(decoded.events, vec![&b"{\"a\":1}"[..], b"", b"{\"b\":2}"]);
        assert_eq!(decoded.end_seq(), 44);
        let checksum = u32::from_le_bytes(encoded[4..8].try_into().unwrap());
        for bit in 0..payload.len() * 8 {
            let mut damaged = payload.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(crc32c::crc32c(&damaged), checksum, "bit {bit}");
        }
    }

    #[test]
    fn inconsistent_payloads_do_not_decode() {
        let encoded = record(0, &["abc"]);
        let payload = &encoded[RECORD_HEADER_BYTES..];
        assert!(decode_payload(&payload[..payload.len() - 1]).is_none());
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode_payload(&longer).is_none());
        let mut wrong_version = payload.to_vec();
        wrong_version[0] = 9;
        assert!(decode_payload(&wrong_version).is_none());
    }

    #[test]
    fn appends_survive_reopen_and_replay_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["e0", "e1"]), 2).unwrap();
        wal.append(&[record(2, &["e2"]), record(3, &["e3"])].concat(), 2)
            .unwrap();
        drop(wal);
        let (wal, report) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(report.tail_bytes_cut, 0);
        assert_eq!(wal.next_seq(), 4);
        let all: Vec<u64> = replayed(&wal, 0).into_iter().map(|(seq, _)| seq).collect();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(replayed(&wal, 3), vec![(3, "e3".to_string())]);
    }

    #[test]
    fn torn_tail_is_cut_at_every_possible_length() {
        let first = record(0, &["first"]);
        let second = record(1, &["second", "third"]);
        for cut in 1..second.len() {
            let dir = tempfile::tempdir().unwrap();
            let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
            wal.append(&first, 1).unwrap();
            wal.append(&second, 2).unwrap();
            drop(wal);
            let path = newest_segment(dir.path());
            truncate_file(&path, (first.len() + second.len() - cut) as u64).unwrap();
            let (mut wal, report) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
            assert_eq!(report.tail_bytes_cut, (second.len() - cut) as u64);
            assert_eq!(wal.next_seq(), 1);
            assert_eq!(replayed(&wal, 0), vec![(0, "first".to_string())]);
            wal.append(&record(1, &["again"]), 1).unwrap();
            assert_eq!(replayed(&wal, 0).len(), 2);
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["kept"]), 1).unwrap();
        drop(wal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let kept_len = bytes.len();
        bytes.extend_from_slice(&[0x5a; 100]);
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, &bytes).unwrap();
        let (wal, report) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(report.tail_bytes_cut, (bytes.len() - kept_len) as u64);
        assert_eq!(replayed(&wal, 0), vec![(0, "kept".to_string())]);
    }

    #[test]
    fn a_corrupt_record_cuts_the_tail_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        let first = record(0, &["one"]);
        wal.append(&first, 1).unwrap();
        wal.append(&record(1, &["two"]), 1).unwrap();
        drop(wal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (wal, report) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        assert!(report.tail_bytes_cut > 0);
        assert_eq!(fs::metadata(&path).unwrap().len(), first.len() as u64);
        assert_eq!(wal.next_seq(), 1);
    }

    #[test]
    fn segments_roll_and_committed_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 32, 0).unwrap();
        for seq in 0..5 {
            wal.append(&record(seq, &["an event long enough to fill a segment"]), 1)
                .unwrap();
        }
        assert_eq!(list_segments(dir.path()).unwrap().len(), 5);
        assert_eq!(wal.remove_segments_below(3).unwrap(), 3);
        let remaining: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.first_seq)
            .collect();
        assert_eq!(remaining, vec![3, 4]);
        assert_eq!(replayed(&wal, 3).len(), 2);
        // The active segment is never removed, even when everything is committed.
        wal.remove_segments_below(100).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn an_empty_log_starts_at_the_committed_position() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), 1 << 20, 1234).unwrap();
        assert_eq!(wal.next_seq(), 1234);
        assert!(newest_segment(dir.path()).ends_with("00000000000000001234.wal"));
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["durable"]), 1).unwrap();
        // A read-only handle makes the next write fail like a full disk would.
        let path = newest_segment(dir.path());
        wal.active = File::open(&path).unwrap();
        assert!(wal.append(&record(1, &["lost"]), 1).is_err());
        assert_eq!(wal.next_seq(), 1);
        wal.active = OpenOptions::new().write(true).open(&path).unwrap();
        wal.append(&record(1, &["after"]), 1).unwrap();
        let events: Vec<String> = replayed(&wal, 0).into_iter().map(|(_, e)| e).collect();
        assert_eq!(events, vec!["durable", "after"]);
    }

    #[test]
    fn a_fully_committed_active_segment_is_retired_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["a", "b"]), 2).unwrap();
        wal.retire_committed_active(1, 0).unwrap();
        assert_eq!(
            list_segments(dir.path()).unwrap().len(),
            1,
            "not everything is committed"
        );
        wal.retire_committed_active(2, 1 << 20).unwrap();
        assert_eq!(
            list_segments(dir.path()).unwrap().len(),
            1,
            "below the size threshold"
        );
        wal.retire_committed_active(2, 0).unwrap();
        wal.remove_segments_below(2).unwrap();
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(
            segments.iter().map(|s| s.first_seq).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(wal.disk_bytes(), 0);
        wal.append(&record(2, &["c"]), 1).unwrap();
        assert_eq!(replayed(&wal, 0), vec![(2, "c".to_string())]);
    }
}

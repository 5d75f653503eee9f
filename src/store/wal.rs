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
//! `fdatasync` (group commit).
//!
//! What counts as damage: every record before the newest segment's last write was synced
//! whole before it was acknowledged, so only that last write can be torn by a crash.
//! * **Torn** (normal after kill -9 or power loss): the newest segment ends inside a record,
//!   or only zero bytes follow its last valid record. The tail is cut (warning); it held no
//!   acknowledged event.
//! * **Damaged** (disk or filesystem fault, tampering): a record that fails its checksum,
//!   structure or sequence check while bytes other than zeros follow, in any segment, or
//!   an older segment not ending exactly after a valid record. The damaged bytes are copied
//!   into the quarantine directory before anything is cut or deleted, logged at error level
//!   with segment and offset, and skipped; when a valid record follows a damaged one, replay
//!   resumes there, so the damage costs only that record. A newest segment with a damaged
//!   record in its middle is closed, so nothing is appended behind the damage.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
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

/// How the bytes after the last valid record of a segment look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    /// The file ends exactly after a valid record.
    Clean,
    /// The file ends inside a record, or only zero bytes follow: a write cut short by a crash.
    Torn,
    /// A record failed its checksum or structure check and no valid record follows it.
    Corrupt,
}

/// A stretch of a segment that failed its checks: `len` bytes from `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
}

/// Result of reading a segment record by record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Offset just after the last valid record.
    pub valid_len: u64,
    /// Sequence number after the last valid record, if there was one.
    pub end_seq: Option<u64>,
    /// What follows `valid_len`.
    pub end: ScanEnd,
    /// Damaged records skipped because a valid record follows each of them.
    pub holes: Vec<Damage>,
}

/// What the next record of a stream turned out to be.
enum NextRecord {
    /// The input ended exactly here.
    End,
    /// The input ended inside the record.
    Torn,
    /// The header declares an impossible length.
    BadLength,
    /// A complete record of this many bytes (header included) is in the payload buffer.
    Complete(u64),
}

/// Reads the next record's payload into `payload`.
fn next_record(reader: &mut impl Read, payload: &mut Vec<u8>) -> io::Result<NextRecord> {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    match read_full(reader, &mut header)? {
        0 => return Ok(NextRecord::End),
        n if n < RECORD_HEADER_BYTES => return Ok(NextRecord::Torn),
        _ => {}
    }
    let payload_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let checksum = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if payload_len == 0 || payload_len > MAX_PAYLOAD_BYTES {
        return Ok(NextRecord::BadLength);
    }
    payload.resize(payload_len as usize, 0);
    if read_full(reader, payload)? < payload.len() {
        return Ok(NextRecord::Torn);
    }
    if crc32c::crc32c(payload) != checksum {
        // Checked by the caller through `check_record`, which also decodes.
        payload.clear();
    }
    Ok(NextRecord::Complete(
        (RECORD_HEADER_BYTES + payload_len as usize) as u64,
    ))
}

/// Decodes a payload that passed its checksum (an empty one did not) and checks that it
/// continues the sequence: exactly at `expected`, or anywhere after it behind a hole.
fn check_record(
    payload: &[u8],
    expected: Option<u64>,
    after_hole: bool,
) -> Option<RecordEvents<'_>> {
    let record = decode_payload(payload)?;
    let continues = match expected {
        None => true,
        Some(expected) if after_hole => record.first_seq >= expected,
        Some(expected) => record.first_seq == expected,
    };
    continues.then_some(record)
}

/// Whether a valid record continuing after `expected` starts at `offset` of `file`.
fn valid_record_at(file: &File, offset: u64, expected: Option<u64>) -> io::Result<bool> {
    let mut reader = BufReader::new(PositionedReader { file, offset });
    let mut payload = Vec::new();
    Ok(match next_record(&mut reader, &mut payload)? {
        NextRecord::Complete(_) => check_record(&payload, expected, true).is_some(),
        _ => false,
    })
}

/// Whether every byte of `file` from `offset` on is zero.
fn zeros_from(file: &File, offset: u64) -> io::Result<bool> {
    let mut reader = PositionedReader { file, offset };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buffer)? {
            0 => return Ok(true),
            n if buffer[..n].iter().any(|&byte| byte != 0) => return Ok(false),
            _ => {}
        }
    }
}

/// `Read` over a file from an offset, without moving any shared cursor.
struct PositionedReader<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.file.read_at(buf, self.offset)?;
        self.offset += read as u64;
        Ok(read)
    }
}

/// Reads every valid record of a segment in order, calling `visit` for each.
///
/// A damaged record (checksum, structure or sequence check failed) followed by a valid record
/// is skipped and reported as a hole; a damaged record with nothing valid after it ends the
/// scan (`Corrupt`), unless only zero bytes follow (`Torn`, like a record cut short).
pub fn scan_segment(path: &Path, mut visit: impl FnMut(&RecordEvents<'_>)) -> Result<SegmentScan> {
    let read_error = |source| WalError::Io {
        action: "read WAL segment",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error("open WAL segment", path))?;
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut scan = SegmentScan {
        valid_len: 0,
        end_seq: None,
        end: ScanEnd::Clean,
        holes: Vec::new(),
    };
    let mut offset = 0u64;
    let mut after_hole = false;
    let mut payload = Vec::new();
    loop {
        let next = next_record(&mut reader, &mut payload).map_err(read_error)?;
        let damaged_len = match next {
            NextRecord::End => return Ok(scan),
            NextRecord::Torn => {
                return Ok(SegmentScan {
                    end: ScanEnd::Torn,
                    ..scan
                });
            }
            NextRecord::BadLength => None,
            NextRecord::Complete(len) => match check_record(&payload, scan.end_seq, after_hole) {
                Some(record) => {
                    visit(&record);
                    offset += len;
                    scan.valid_len = offset;
                    scan.end_seq = Some(record.end_seq());
                    after_hole = false;
                    continue;
                }
                None => Some(len),
            },
        };
        let resumes_at = damaged_len.map(|len| offset + len);
        let resumes = match resumes_at {
            Some(next) => valid_record_at(&file, next, scan.end_seq).map_err(read_error)?,
            None => false,
        };
        match resumes_at {
            Some(next) if resumes => {
                scan.holes.push(Damage {
                    offset,
                    len: next - offset,
                });
                offset = next;
                after_hole = true;
                reader.seek(SeekFrom::Start(next)).map_err(read_error)?;
            }
            _ => {
                let torn = zeros_from(&file, offset).map_err(read_error)?;
                let end = if torn {
                    ScanEnd::Torn
                } else {
                    ScanEnd::Corrupt
                };
                return Ok(SegmentScan { end, ..scan });
            }
        }
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

/// Damaged bytes copied into the quarantine directory before the log dropped them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The copy.
    pub path: PathBuf,
    pub bytes: u64,
}

/// What opening the WAL found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Bytes cut off the newest segment's tail (torn, or corrupt and quarantined first).
    pub tail_bytes_cut: u64,
    /// Damaged stretches of the newest segment moved aside.
    pub quarantined: Vec<Quarantined>,
}

/// The write side of the log. Owned by exactly one thread (the writer's WAL stage).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    /// Where damaged bytes are copied before the log drops them.
    quarantine_dir: PathBuf,
    segments: Vec<Segment>,
    active: File,
    /// Length of the active segment up to its last durable record.
    active_len: u64,
    segment_max_bytes: u64,
    next_seq: u64,
    /// Set when a failed write could not be cut off again; the next append retries the cut.
    needs_truncate: bool,
    /// The segment `open` already checked and quarantined from (replay does not repeat it).
    checked_at_open: Option<u64>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, repairing the newest segment (see the module docs):
    /// a torn tail is cut; damaged records are first copied into `quarantine_dir`.
    ///
    /// `min_next_seq` is the index's committed position: sequence numbers never go below it,
    /// even when the log is empty.
    pub fn open(
        dir: &Path,
        quarantine_dir: &Path,
        segment_max_bytes: u64,
        min_next_seq: u64,
    ) -> Result<(Self, OpenReport)> {
        fs::create_dir_all(dir).map_err(io_error("create WAL directory", dir))?;
        let mut segments = list_segments(dir)?;
        let mut report = OpenReport::default();
        let mut next_seq = min_next_seq;
        let mut has_holes = false;
        if let Some(newest) = segments.last() {
            let scan = scan_segment(&newest.path, |_| {})?;
            has_holes = !scan.holes.is_empty();
            for hole in &scan.holes {
                report.quarantined.push(quarantine_damage(
                    quarantine_dir,
                    &newest.path,
                    *hole,
                    "damaged record skipped",
                )?);
            }
            let file_len = fs::metadata(&newest.path)
                .map_err(io_error("stat WAL segment", &newest.path))?
                .len();
            if scan.valid_len < file_len {
                report.tail_bytes_cut = file_len - scan.valid_len;
                if scan.end == ScanEnd::Corrupt {
                    let damage = Damage {
                        offset: scan.valid_len,
                        len: report.tail_bytes_cut,
                    };
                    report.quarantined.push(quarantine_damage(
                        quarantine_dir,
                        &newest.path,
                        damage,
                        "damaged tail cut",
                    )?);
                } else {
                    tracing::warn!(
                        segment = %newest.path.display(),
                        offset = scan.valid_len,
                        cut_bytes = report.tail_bytes_cut,
                        "cutting a torn tail (a write interrupted by a crash) off the write-ahead log"
                    );
                }
                truncate_file(&newest.path, scan.valid_len)?;
            }
            next_seq = next_seq.max(scan.end_seq.unwrap_or(newest.first_seq));
        }
        let checked_at_open = segments.last().map(|segment| segment.first_seq);
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
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            quarantine_dir: quarantine_dir.to_path_buf(),
            segments,
            active,
            active_len,
            segment_max_bytes,
            next_seq,
            needs_truncate: false,
            checked_at_open,
        };
        if has_holes {
            // Never append behind a hole: the damaged segment is deleted once committed.
            wal.roll()?;
        }
        Ok((wal, report))
    }

    /// Where damaged bytes are copied.
    pub fn quarantine_dir(&self) -> &Path {
        &self.quarantine_dir
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
    /// Damage in an older segment (it was synced whole, so any failed check is damage after
    /// the fact) is copied into the quarantine directory and skipped: a damaged record
    /// followed by valid ones costs only that record. Returns the copies.
    pub fn replay_from(
        &self,
        from_seq: u64,
        mut visit: impl FnMut(u64, &[u8]),
    ) -> Result<Vec<Quarantined>> {
        let start = self
            .segments
            .iter()
            .rposition(|segment| segment.first_seq <= from_seq)
            .unwrap_or(0);
        let mut quarantined = Vec::new();
        for segment in &self.segments[start..] {
            let scan = scan_segment(&segment.path, |record| {
                for (offset, event) in record.events.iter().enumerate() {
                    let seq = record.first_seq + offset as u64;
                    if seq >= from_seq {
                        visit(seq, event);
                    }
                }
            })?;
            if self.checked_at_open == Some(segment.first_seq) {
                continue;
            }
            for hole in &scan.holes {
                quarantined.push(quarantine_damage(
                    &self.quarantine_dir,
                    &segment.path,
                    *hole,
                    "damaged record skipped",
                )?);
            }
            if scan.end != ScanEnd::Clean {
                let file_len = fs::metadata(&segment.path)
                    .map_err(io_error("stat WAL segment", &segment.path))?
                    .len();
                let damage = Damage {
                    offset: scan.valid_len,
                    len: file_len - scan.valid_len,
                };
                quarantined.push(quarantine_damage(
                    &self.quarantine_dir,
                    &segment.path,
                    damage,
                    "damaged rest of an older segment skipped",
                )?);
            }
        }
        Ok(quarantined)
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

/// Copies `damage` of `segment` into `quarantine_dir` (durably, before the log may drop it)
/// and logs it at error level. The copy is named after the segment and the offset, so a
/// repeated start overwrites rather than multiplies it.
pub fn quarantine_damage(
    quarantine_dir: &Path,
    segment: &Path,
    damage: Damage,
    what: &'static str,
) -> Result<Quarantined> {
    let name = segment
        .file_name()
        .map_or_else(|| "segment".into(), |name| name.to_string_lossy());
    let copy_name = format!("{name}.{:020}.damaged", damage.offset);
    let mut bytes = Vec::new();
    File::open(segment)
        .and_then(|file| {
            PositionedReader {
                file: &file,
                offset: damage.offset,
            }
            .take(damage.len)
            .read_to_end(&mut bytes)
        })
        .map_err(io_error("read WAL segment", segment))?;
    let copy = quarantine_bytes(quarantine_dir, &copy_name, &bytes)?;
    tracing::error!(
        segment = %segment.display(),
        offset = damage.offset,
        bytes = damage.len,
        quarantined_to = %copy.path.display(),
        "write-ahead log {what}: its bytes failed their checksum or structure check and were moved to quarantine; the events in them are not served"
    );
    Ok(copy)
}

/// Writes `bytes` to `quarantine_dir/name` durably (temporary file, rename, directory sync).
pub fn quarantine_bytes(quarantine_dir: &Path, name: &str, bytes: &[u8]) -> Result<Quarantined> {
    fs::create_dir_all(quarantine_dir)
        .map_err(io_error("create quarantine directory", quarantine_dir))?;
    let path = quarantine_dir.join(name);
    let temporary = quarantine_dir.join(format!(".{name}.tmp"));
    fs::write(&temporary, bytes)
        .and_then(|()| File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, &path))
        .map_err(io_error("write quarantine file", &path))?;
    sync_dir(quarantine_dir)?;
    Ok(Quarantined {
        path,
        bytes: bytes.len() as u64,
    })
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

    fn open_wal(
        dir: &Path,
        segment_max_bytes: u64,
        min_next_seq: u64,
    ) -> Result<(Wal, OpenReport)> {
        Wal::open(
            dir,
            &dir.join("quarantine"),
            segment_max_bytes,
            min_next_seq,
        )
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
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["e0", "e1"]), 2).unwrap();
        wal.append(&[record(2, &["e2"]), record(3, &["e3"])].concat(), 2)
            .unwrap();
        drop(wal);
        let (wal, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
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
            let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
            wal.append(&first, 1).unwrap();
            wal.append(&second, 2).unwrap();
            drop(wal);
            let path = newest_segment(dir.path());
            truncate_file(&path, (first.len() + second.len() - cut) as u64).unwrap();
            let (mut wal, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
            assert_eq!(report.tail_bytes_cut, (second.len() - cut) as u64);
            assert!(report.quarantined.is_empty(), "a torn tail is not damage");
            assert_eq!(wal.next_seq(), 1);
            assert_eq!(replayed(&wal, 0), vec![(0, "first".to_string())]);
            wal.append(&record(1, &["again"]), 1).unwrap();
            assert_eq!(replayed(&wal, 0).len(), 2);
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["kept"]), 1).unwrap();
        drop(wal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let kept_len = bytes.len();
        bytes.extend_from_slice(&[0x5a; 100]);
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, &bytes).unwrap();
        let (wal, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(report.tail_bytes_cut, (bytes.len() - kept_len) as u64);
        assert_eq!(replayed(&wal, 0), vec![(0, "kept".to_string())]);
    }

    #[test]
    fn a_corrupt_record_cuts_the_tail_from_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        let first = record(0, &["one"]);
        wal.append(&first, 1).unwrap();
        wal.append(&record(1, &["two"]), 1).unwrap();
        drop(wal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (wal, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        assert!(report.tail_bytes_cut > 0);
        assert_eq!(report.quarantined.len(), 1);
        assert_eq!(
            fs::read(&report.quarantined[0].path).unwrap(),
            bytes[first.len()..]
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), first.len() as u64);
        assert_eq!(wal.next_seq(), 1);
    }

    #[test]
    fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        wal.append(&record(0, &["kept"]), 1).unwrap();
        drop(wal);
        append_to(&newest_segment(dir.path()), &[0; 5000]);
        let (_, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(report.tail_bytes_cut, 5000);
        assert!(report.quarantined.is_empty());
    }

    fn append_to(path: &Path, bytes: &[u8]) {
        let mut all = fs::read(path).unwrap();
        all.extend_from_slice(bytes);
        fs::write(path, all).unwrap();
    }

    #[test]
    fn a_damaged_record_in_the_middle_is_quarantined_and_the_rest_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        let first = record(0, &["one"]);
        let second = record(1, &["two", "2b"]);
        wal.append(&first, 1).unwrap();
        wal.append(&second, 2).unwrap();
        wal.append(&record(3, &["three"]), 1).unwrap();
        drop(wal);
        let path = newest_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[first.len() + RECORD_HEADER_BYTES + 3] ^= 0xff;
        fs::write(&path, &bytes).unwrap();

        let (mut wal, report) = open_wal(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(report.tail_bytes_cut, 0);
        assert_eq!(report.quarantined.len(), 1);
        let copy = &report.quarantined[0];
        assert!(copy.path.starts_with(dir.path().join("quarantine")));
        assert_eq!(
            fs::read(&copy.path).unwrap(),
            bytes[first.len()..first.len() + second.len()]
        );
        assert_eq!(wal.next_seq(), 4);
        let expected = vec![(0, "one".to_string()), (3, "three".to_string())];
        assert_eq!(replayed(&wal, 0), expected);
        // Appends go to a new segment, never behind the damage; replay does not re-quarantine.
        wal.append(&record(4, &["four"]), 1).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);
        let quarantined = wal.replay_from(0, |_, _| {}).unwrap();
        assert!(quarantined.is_empty());
        assert_eq!(replayed(&wal, 0).len(), 3);
    }

    #[test]
    fn damage_in_an_older_segment_is_quarantined_at_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 32, 0).unwrap();
        for seq in 0..3 {
            wal.append(&record(seq, &["an event long enough to fill a segment"]), 1)
                .unwrap();
        }
        drop(wal);
        let oldest = list_segments(dir.path()).unwrap()[0].path.clone();
        let mut bytes = fs::read(&oldest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&oldest, &bytes).unwrap();

        let (wal, report) = open_wal(dir.path(), 32, 0).unwrap();
        assert!(report.quarantined.is_empty());
        let mut seen = Vec::new();
        let quarantined = wal.replay_from(0, |seq, _| seen.push(seq)).unwrap();
        assert_eq!(seen, vec![1, 2]);
        assert_eq!(quarantined.len(), 1);
        assert_eq!(fs::read(&quarantined[0].path).unwrap(), bytes);
    }

    #[test]
    fn segments_roll_and_committed_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 32, 0).unwrap();
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
        let (wal, _) = open_wal(dir.path(), 1 << 20, 1234).unwrap();
        assert_eq!(wal.next_seq(), 1234);
        assert!(newest_segment(dir.path()).ends_with("00000000000000001234.wal"));
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
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
        let (mut wal, _) = open_wal(dir.path(), 1 << 20, 0).unwrap();
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

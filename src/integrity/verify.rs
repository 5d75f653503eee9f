//! Verifying an export at its destination (`scaivault-audit verify LOCATION`,
//! docs/integrity.md), without trusting the service: only the public keys.
//!
//! Checks, each failure reported in plain words as a [`Problem`]:
//! - the manifest's Ed25519 signature and key;
//! - every listed file: present, size, SHA-256 (over the stored bytes), record count;
//! - objects under the prefix that the manifest does not list (renamed or substituted parts);
//! - records in ascending timestamp order, within and across files;
//! - JSONL: every record's `chain_hash` = SHA-256(previous `chain_hash` ‖ canonical record
//!   bytes) wherever its predecessor (`chain_seq - 1`, or the genesis before 1) is in the
//!   export; when the export holds the tenant's whole chain up to the snapshot (no filters and
//!   `record_count == chain.chain_seq`), the `chain_seq`s are exactly 1..=N and the last hash
//!   is the manifest's chain head;
//! - the embedded checkpoint's signature, tenant, and `chain_head` (when its `event_count` is
//!   the manifest's chain position);
//! - the previous manifest (`previous_manifest`): present at the destination, same SHA-256.
//!
//! Part files are downloaded one at a time into a temporary file (hashing as they arrive),
//! then read from there; memory holds one `chain_seq → chain_hash` entry (40 bytes) per record.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::canonical;
use super::chain::{ChainLink, HASH_BYTES, parse_hash};
use super::keys::PublicKeys;
use crate::export::manifest::family_prefix;
use crate::export::sink::{Sink, SinkError};

/// Largest manifest read (a manifest of 100 000 parts is about 40 MB).
const MANIFEST_LIMIT_BYTES: usize = 64 * 1024 * 1024;
/// Problems reported per file before the rest are only counted.
const PROBLEMS_PER_FILE: usize = 20;
/// Name of the claim object an export leaves next to its files.
const CLAIM_NAME: &str = ".scaivault-export";

/// One thing that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file (its name under the prefix) the problem is in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The record's 1-based position in its file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<u64>,
    /// The whole sentence, naming file and record.
    pub message: String,
}

/// What was checked, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checked {
    pub manifest: String,
    /// Key id of the manifest's valid signature.
    pub signed_by: Option<String>,
    pub export_id: Option<String>,
    pub files: u64,
    pub records: u64,
    pub bytes: u64,
    /// `complete`, `partial` (links between records present in the export) or `not checked`.
    pub chain: String,
    pub checkpoint: String,
    pub previous_manifest: String,
}

/// The outcome of verifying one export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ok: bool,
    pub problems: Vec<Problem>,
    pub checked: Checked,
}

/// Why verification could not run to the end (not a finding about the export).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Destination(#[from] SinkError),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// How the export's destination keys map to keys of the sink being read: identity when the
/// export is where it was written; otherwise (a copy) the manifest's directory and family are
/// replaced by where the manifest was found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMap {
    own: (String, String),
    family: (String, String),
}

impl KeyMap {
    /// The mapping for a manifest written at `manifest_key` and found at `found_key`.
    pub fn new(manifest_key: &str, found_key: &str) -> KeyMap {
        if manifest_key == found_key {
            return KeyMap::default();
        }
        let own_from = directory(manifest_key).to_owned();
        let own_to = directory(found_key).to_owned();
        let family = (
            family_prefix(&own_from).to_owned(),
            family_prefix(&own_to).to_owned(),
        );
        KeyMap {
            own: (own_from, own_to),
            family,
        }
    }

    /// A local copy: the export directory `dir_name` sits in the sink's root, its siblings are
    /// the family's other exports.
    pub fn relocated_directory(manifest_key: &str, dir_name: &str) -> KeyMap {
        let own_from = directory(manifest_key).to_owned();
        KeyMap {
            family: (family_prefix(&own_from).to_owned(), String::new()),
            own: (own_from, format!("{dir_name}/")),
        }
    }

    /// The sink key of destination key `key`, if the copy holds it.
    pub fn map(&self, key: &str) -> Option<String> {
        if let Some(rest) = key.strip_prefix(&self.own.0) {
            return Some(format!("{}{rest}", self.own.1));
        }
        key.strip_prefix(&self.family.0)
            .map(|rest| format!("{}{rest}", self.family.1))
    }
}

/// `key` up to and including its last `/` (empty without one).
fn directory(key: &str) -> &str {
    match key.rfind('/') {
        Some(index) => &key[..=index],
        None => "",
    }
}

/// The members of a manifest the checks need.
struct Manifest {
    object: Map<String, Value>,
    tenant: String,
    prefix: String,
    jsonl: bool,
    gzip: bool,
    files: Vec<FileSpec>,
    record_count: u64,
    head: Option<ChainLink>,
    filtered: bool,
}

struct FileSpec {
    key: String,
    size_bytes: u64,
    records: u64,
    sha256: String,
}

/// Collects problems, capping those of one file.
#[derive(Default)]
struct Findings {
    problems: Vec<Problem>,
    per_file: HashMap<String, usize>,
    suppressed: HashMap<String, usize>,
}

impl Findings {
    fn general(&mut self, message: impl Into<String>) {
        self.problems.push(Problem {
            file: None,
            record: None,
            message: message.into(),
        });
    }

    fn file(&mut self, file: &str, message: impl std::fmt::Display) {
        self.push(file, None, format!("{file}: {message}"));
    }

    fn record(&mut self, file: &str, record: u64, message: impl std::fmt::Display) {
        self.push(
            file,
            Some(record),
            format!("record {record} of {file}: {message}"),
        );
    }

    fn push(&mut self, file: &str, record: Option<u64>, message: String) {
        let count = self.per_file.entry(file.to_owned()).or_default();
        *count += 1;
        if *count > PROBLEMS_PER_FILE {
            *self.suppressed.entry(file.to_owned()).or_default() += 1;
            return;
        }
        self.problems.push(Problem {
            file: Some(file.to_owned()),
            record,
            message,
        });
    }

    fn finish(mut self) -> Vec<Problem> {
        let mut suppressed: Vec<_> = self.suppressed.into_iter().collect();
        suppressed.sort();
        for (file, count) in suppressed {
            self.problems.push(Problem {
                file: Some(file.clone()),
                record: None,
                message: format!("{file}: {count} more problems not shown"),
            });
        }
        self.problems
    }
}

/// The chain links seen so far, and records whose predecessor has not been seen yet.
#[derive(Default)]
struct ChainState {
    hashes: HashMap<u64, [u8; HASH_BYTES]>,
    /// Records whose predecessor was not read yet.
    waiting: Vec<Waiting>,
    last_timestamp: Option<String>,
}

struct Waiting {
    seq: u64,
    hash: [u8; HASH_BYTES],
    canonical: Vec<u8>,
    file: String,
    record: u64,
}

/// Verifies the export whose manifest is at `manifest_key` in `sink`, reading the other
/// objects through `keys_map`, trusting the signatures of `keys`.
pub async fn verify_export(
    sink: &dyn Sink,
    manifest_key: &str,
    key_map: &KeyMap,
    keys: &PublicKeys,
) -> Result<Report, VerifyError> {
    let mut findings = Findings::default();
    let mut checked = Checked {
        manifest: manifest_key.to_owned(),
        chain: "not checked".into(),
        checkpoint: "none".into(),
        previous_manifest: "none".into(),
        ..Checked::default()
    };
    let Some(bytes) = read_whole(sink, manifest_key, MANIFEST_LIMIT_BYTES).await? else {
        findings.general(format!("{manifest_key}: the manifest is missing"));
        return Ok(report(findings, checked));
    };
    let manifest = match parse_manifest(&bytes) {
        Ok(manifest) => manifest,
        Err(message) => {
            findings.general(format!("manifest.json: {message}"));
            return Ok(report(findings, checked));
        }
    };
    checked.export_id = manifest
        .object
        .get("export_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match keys.verify_object(&manifest.object) {
        Ok(kid) => checked.signed_by = Some(kid),
        Err(error) => findings.general(format!("manifest.json: {error}")),
    }
    let listed_total: u64 = manifest.files.iter().map(|file| file.records).sum();
    if listed_total != manifest.record_count {
        findings.general(format!(
            "manifest.json: record_count is {} but its files hold {listed_total} records",
            manifest.record_count
        ));
    }
    check_unlisted(sink, &manifest, key_map, &mut findings).await?;
    let mut chain = ChainState::default();
    for file in &manifest.files {
        check_file(sink, &manifest, file, key_map, &mut chain, &mut findings).await?;
        checked.files += 1;
        checked.records += file.records;
        checked.bytes += file.size_bytes;
    }
    checked.chain = finish_chain(&manifest, chain, &mut findings);
    checked.checkpoint = check_checkpoint(&manifest, keys, &mut findings);
    checked.previous_manifest = check_previous(sink, &manifest, key_map, &mut findings).await?;
    Ok(report(findings, checked))
}

fn report(findings: Findings, checked: Checked) -> Report {
    let problems = findings.finish();
    Report {
        ok: problems.is_empty(),
        problems,
        checked,
    }
}

/// Reads a whole object of at most `limit` bytes (`None` when missing).
async fn read_whole(
    sink: &dyn Sink,
    key: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, VerifyError> {
    let Some(mut chunks) = sink.read_stream(key).await? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        bytes.extend_from_slice(&chunk?);
        if bytes.len() > limit {
            break;
        }
    }
    Ok(Some(bytes))
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let object: Map<String, Value> =
        serde_json::from_slice(bytes).map_err(|error| format!("not a JSON object ({error})"))?;
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("`{name}` is missing"))
    };
    let tenant = text("tenant_id")?;
    let jsonl = text("format")? == "jsonl";
    let gzip = object.get("compression").and_then(Value::as_str) == Some("gzip");
    let prefix = object
        .get("destination")
        .and_then(|destination| destination.get("prefix"))
        .and_then(Value::as_str)
        .ok_or("`destination.prefix` is missing (a manifest older than version 2?)")?
        .to_owned();
    let files = object
        .get("files")
        .and_then(Value::as_array)
        .ok_or("`files` is missing")?
        .iter()
        .map(parse_file)
        .collect::<Result<Vec<_>, _>>()?;
    let record_count = object
        .get("record_count")
        .and_then(Value::as_u64)
        .ok_or("`record_count` is missing")?;
    let head = object.get("chain").and_then(|chain| {
        Some(ChainLink {
            seq: chain.get("chain_seq")?.as_u64()?,
            hash: parse_hash(chain.get("chain_hash")?.as_str()?)?,
        })
    });
    let filtered = object
        .get("filters")
        .and_then(Value::as_object)
        .is_some_and(|filters| !filters.is_empty());
    Ok(Manifest {
        object,
        tenant,
        prefix,
        jsonl,
        gzip,
        files,
        record_count,
        head,
        filtered,
    })
}

fn parse_file(entry: &Value) -> Result<FileSpec, String> {
    let field = |name: &str| entry.get(name).ok_or(format!("a file has no `{name}`"));
    Ok(FileSpec {
        key: field("key")?.as_str().unwrap_or_default().to_owned(),
        size_bytes: field("size_bytes")?.as_u64().unwrap_or_default(),
        records: field("records")?.as_u64().unwrap_or_default(),
        sha256: field("sha256")?.as_str().unwrap_or_default().to_owned(),
    })
}

/// The name of destination key `key` in messages: without the export's prefix.
fn display_name<'a>(manifest: &Manifest, key: &'a str) -> &'a str {
    key.strip_prefix(manifest.prefix.as_str())
        .filter(|rest| !rest.is_empty())
        .unwrap_or(key)
}

/// Objects directly under the prefix that the manifest does not list.
async fn check_unlisted(
    sink: &dyn Sink,
    manifest: &Manifest,
    key_map: &KeyMap,
    findings: &mut Findings,
) -> Result<(), VerifyError> {
    let Some(prefix) = key_map.map(&manifest.prefix) else {
        return Ok(());
    };
    let mut expected: Vec<String> = manifest
        .files
        .iter()
        .filter_map(|file| key_map.map(&file.key))
        .collect();
    expected.push(format!("{prefix}manifest.json"));
    expected.push(format!("{prefix}{CLAIM_NAME}"));
    for object in sink.list(&prefix).await? {
        let Some(rest) = object.key.strip_prefix(&prefix) else {
            continue;
        };
        if rest.contains('/') || rest.starts_with(".scaivault-export-") {
            continue;
        }
        if !expected.contains(&object.key) {
            findings.file(
                rest,
                "is not listed in the manifest (a renamed, substituted or added file)",
            );
        }
    }
    Ok(())
}

/// Downloads one part (hashing the stored bytes) and checks its records.
async fn check_file(
    sink: &dyn Sink,
    manifest: &Manifest,
    file: &FileSpec,
    key_map: &KeyMap,
    chain: &mut ChainState,
    findings: &mut Findings,
) -> Result<(), VerifyError> {
    let name = display_name(manifest, &file.key).to_owned();
    let Some(key) = key_map.map(&file.key) else {
        findings.file(&name, "is outside the copied directory; not checked");
        return Ok(());
    };
    let Some(mut chunks) = sink.read_stream(&key).await? else {
        findings.file(
            &name,
            "is missing (listed in the manifest, not at the destination: deleted or renamed)",
        );
        return Ok(());
    };
    let mut spool = tempfile::tempfile()?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        spool.write_all(&chunk)?;
    }
    if size != file.size_bytes {
        findings.file(
            &name,
            format!(
                "is {size} bytes, the manifest says {} (file truncated, extended or replaced)",
                file.size_bytes
            ),
        );
    }
    if hex::encode(hasher.finalize()) != file.sha256 {
        findings.file(&name, "SHA-256 differs from the manifest (file altered)");
    }
    use std::io::Seek;
    spool.seek(std::io::SeekFrom::Start(0))?;
    let reader: Box<dyn Read> = if manifest.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(spool))
    } else {
        Box::new(spool)
    };
    let records = if manifest.jsonl {
        check_jsonl(manifest, &name, reader, chain, findings)
    } else {
        check_csv(&name, reader, chain, findings)
    };
    if records != file.records {
        findings.file(
            &name,
            format!(
                "holds {records} records, the manifest says {} (records removed or added)",
                file.records
            ),
        );
    }
    Ok(())
}

/// Checks the records of a JSONL part; returns how many it holds.
fn check_jsonl(
    manifest: &Manifest,
    name: &str,
    reader: Box<dyn Read>,
    chain: &mut ChainState,
    findings: &mut Findings,
) -> u64 {
    let mut count = 0;
    for line in BufReader::new(reader).split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(error) => {
                findings.file(name, format!("cannot be read to the end ({error})"));
                break;
            }
        };
        if line.is_empty() {
            continue;
        }
        count += 1;
        let record: Map<String, Value> = match serde_json::from_slice(&line) {
            Ok(record) => record,
            Err(_) => {
                findings.record(name, count, "is not a JSON object (record altered)");
                continue;
            }
        };
        let timestamp = record.get("timestamp").and_then(Value::as_str);
        check_order(chain, name, count, timestamp, findings);
        let link = record.get("chain_seq").and_then(Value::as_u64).zip(
            record
                .get("chain_hash")
                .and_then(Value::as_str)
                .and_then(parse_hash),
        );
        let Some((seq, hash)) = link else {
            findings.record(name, count, "has no valid chain_seq and chain_hash");
            continue;
        };
        let canonical = canonical::record_bytes(&manifest.tenant, &record);
        add_link(chain, name, count, seq, hash, canonical, findings);
    }
    count
}

/// Records one link: checks it against its predecessor now, or once that one is read.
fn add_link(
    chain: &mut ChainState,
    name: &str,
    record: u64,
    seq: u64,
    hash: [u8; HASH_BYTES],
    canonical: Vec<u8>,
    findings: &mut Findings,
) {
    if chain.hashes.insert(seq, hash).is_some() {
        findings.record(
            name,
            record,
            format!("chain_seq {seq} appears twice (record duplicated)"),
        );
        return;
    }
    let waiting = Waiting {
        seq,
        hash,
        canonical,
        file: name.to_owned(),
        record,
    };
    if !check_link(chain, &waiting, findings) {
        chain.waiting.push(waiting);
    }
}

/// Checks `link` against its predecessor; `false` when the predecessor has not been seen.
fn check_link(chain: &ChainState, link: &Waiting, findings: &mut Findings) -> bool {
    let previous = match link.seq {
        0 => {
            findings.record(
                &link.file,
                link.record,
                "has chain_seq 0 (chains start at 1)",
            );
            return true;
        }
        1 => ChainLink::GENESIS,
        seq => match chain.hashes.get(&(seq - 1)) {
            Some(hash) => ChainLink {
                seq: seq - 1,
                hash: *hash,
            },
            None => return false,
        },
    };
    if previous.next(&link.canonical).hash != link.hash {
        findings.record(
            &link.file,
            link.record,
            "chain_hash does not follow from the previous record (record altered, inserted, \
             removed or reordered)",
        );
    }
    true
}

/// Timestamps never go backwards, within a file and from one file to the next.
fn check_order(
    chain: &mut ChainState,
    name: &str,
    record: u64,
    timestamp: Option<&str>,
    findings: &mut Findings,
) {
    let Some(timestamp) = timestamp else {
        findings.record(name, record, "has no timestamp");
        return;
    };
    if let Some(last) = &chain.last_timestamp
        && timestamp < last.as_str()
    {
        findings.record(
            name,
            record,
            format!(
                "is out of timestamp order ({timestamp} after {last}: records reordered or \
                 inserted)"
            ),
        );
    }
    chain.last_timestamp = Some(timestamp.to_owned());
}

/// Checks the records of a CSV part (header, order, chain columns); returns how many it holds.
fn check_csv(
    name: &str,
    reader: Box<dyn Read>,
    chain: &mut ChainState,
    findings: &mut Findings,
) -> u64 {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(reader);
    let mut records = csv.byte_records();
    match records.next() {
        Some(Ok(header)) if header.get(12) == Some(&b"chain_seq"[..]) => {}
        _ => findings.file(name, "does not start with the export's CSV header"),
    }
    let mut count = 0;
    for record in records {
        count += 1;
        let record = match record {
            Ok(record) => record,
            Err(error) => {
                findings.record(name, count, format!("is not valid CSV ({error})"));
                continue;
            }
        };
        let timestamp = record
            .get(1)
            .and_then(|cell| std::str::from_utf8(cell).ok());
        check_order(chain, name, count, timestamp, findings);
        let seq = record
            .get(12)
            .and_then(|cell| std::str::from_utf8(cell).ok())
            .and_then(|cell| cell.parse::<u64>().ok());
        let hash = record
            .get(13)
            .and_then(|cell| std::str::from_utf8(cell).ok())
            .and_then(parse_hash);
        match seq.zip(hash) {
            Some((seq, hash)) => {
                if chain.hashes.insert(seq, hash).is_some() {
                    findings.record(
                        name,
                        count,
                        format!("chain_seq {seq} appears twice (record duplicated)"),
                    );
                }
            }
            None => findings.record(name, count, "has no valid chain_seq and chain_hash"),
        }
    }
    count
}

/// Resolves records that waited for their predecessor and checks the chain's extent; returns
/// what was checked.
fn finish_chain(manifest: &Manifest, chain: ChainState, findings: &mut Findings) -> String {
    let ChainState {
        hashes, waiting, ..
    } = chain;
    let chain_state = ChainState {
        hashes,
        ..ChainState::default()
    };
    let mut unresolved: Vec<&Waiting> = Vec::new();
    for link in &waiting {
        if !check_link(&chain_state, link, findings) {
            unresolved.push(link);
        }
    }
    let Some(head) = manifest.head else {
        findings.general("manifest.json: `chain` (the chain head at the snapshot) is missing");
        return "not checked".into();
    };
    let complete = !manifest.filtered && manifest.record_count == head.seq;
    if !complete {
        return if manifest.jsonl {
            "partial: links between records present in the export".into()
        } else {
            "not checked (CSV: chain columns present, hashes need JSONL)".into()
        };
    }
    for link in unresolved {
        findings.record(
            &link.file,
            link.record,
            format!(
                "the record before it (chain_seq {}) is missing (record removed)",
                link.seq - 1
            ),
        );
    }
    let hashes = &chain_state.hashes;
    let missing: Vec<u64> = (1..=head.seq)
        .filter(|seq| !hashes.contains_key(seq))
        .take(10)
        .collect();
    if !missing.is_empty() {
        findings.general(format!(
            "the chain is not contiguous from 1 to {}: chain_seq {} missing (records removed)",
            head.seq,
            join(&missing)
        ));
    }
    if let Some(beyond) = hashes.keys().filter(|seq| **seq > head.seq).min() {
        findings.general(format!(
            "chain_seq {beyond} lies beyond the manifest's chain head {} (record inserted)",
            head.seq
        ));
    }
    if head.seq > 0 && hashes.get(&head.seq) != Some(&head.hash) {
        findings.general(format!(
            "the record with chain_seq {} does not end at the manifest's chain head",
            head.seq
        ));
    }
    if manifest.jsonl {
        format!(
            "complete: 1..={} ending at the manifest's chain head",
            head.seq
        )
    } else {
        format!("complete extent 1..={} (CSV: hashes need JSONL)", head.seq)
    }
}

fn join(numbers: &[u64]) -> String {
    numbers
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the embedded checkpoint; returns what was checked.
fn check_checkpoint(manifest: &Manifest, keys: &PublicKeys, findings: &mut Findings) -> String {
    let Some(Value::Object(checkpoint)) = manifest.object.get("checkpoint") else {
        return "none".into();
    };
    if let Err(error) = keys.verify_object(checkpoint) {
        findings.general(format!("the manifest's checkpoint: {error}"));
    }
    if checkpoint.get("tenant_id").and_then(Value::as_str) != Some(manifest.tenant.as_str()) {
        findings.general("the manifest's checkpoint is another tenant's");
    }
    let event_count = checkpoint.get("event_count").and_then(Value::as_u64);
    let chain_head = checkpoint
        .get("chain_head")
        .and_then(Value::as_str)
        .and_then(parse_hash);
    let Some(head) = manifest.head else {
        return "not checked".into();
    };
    match (event_count, chain_head) {
        (Some(count), Some(hash)) if count == head.seq => {
            if hash != head.hash {
                findings.general(
                    "the manifest's checkpoint has another chain head at the same position \
                     (chain rewritten)",
                );
            }
            format!("signed checkpoint at {count} equals the chain head")
        }
        (Some(count), Some(_)) if count > head.seq => {
            format!("signed checkpoint at {count} covers the snapshot")
        }
        _ => {
            findings.general("the manifest's checkpoint does not cover its chain head");
            "not covering".into()
        }
    }
}

/// Checks the link to the previous manifest of the family; returns what was checked.
async fn check_previous(
    sink: &dyn Sink,
    manifest: &Manifest,
    key_map: &KeyMap,
    findings: &mut Findings,
) -> Result<String, VerifyError> {
    let Some(Value::Object(previous)) = manifest.object.get("previous_manifest") else {
        return Ok("none (first manifest of its family)".into());
    };
    let key = previous.get("key").and_then(Value::as_str).unwrap_or("");
    let sha256 = previous.get("sha256").and_then(Value::as_str).unwrap_or("");
    let Some(mapped) = key_map.map(key) else {
        findings.general(format!(
            "previous manifest {key} is outside what can be reached from here; not checked"
        ));
        return Ok("not reachable".into());
    };
    let Some(bytes) = read_whole(sink, &mapped, MANIFEST_LIMIT_BYTES).await? else {
        findings.general(format!(
            "previous manifest {key} is missing at the destination (deleted or moved)"
        ));
        return Ok("missing".into());
    };
    if hex::encode(Sha256::digest(&bytes)) != sha256 {
        findings.general(format!(
            "previous manifest {key}: SHA-256 differs from this manifest's previous_manifest \
             link (altered or replaced)"
        ));
        return Ok("differs".into());
    }
    Ok(format!("{key} matches"))
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;

//! Rebuilding an index written by an older version (schema, settings or stored-source format).
//!
//! Every document keeps its event in `source` and its sequence number in the `seq` column,
//! so the index can always be rebuilt from itself. The rebuild writes a new index beside the
//! old one and swaps it in with directory renames, so that a crash at any point leaves either
//! the old index or the new one, never a mix:
//!
//! ```text
//! index/          the live index (old until the swap)
//! index.rebuild/  a rebuild in progress; discarded at the next start if the process dies
//! index.new/      a finished rebuild (renamed from index.rebuild/ after its final commit)
//! index.old/      the replaced index, deleted once index.new/ is index/
//! ```
//!
//! [`recover`] runs first at every open and finishes or discards whatever a crash left. The
//! rebuilt index keeps the old commit payload's WAL position (`next_seq`), so the WAL replay
//! that follows starts exactly where the old index stopped. It keeps the hash-chain links the
//! old index stores, and chains the events of an index written before the chain.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tantivy::schema::Value;
use tantivy::{Index, IndexSettings, IndexWriter, TantivyDocument};

use super::StoreError;
use super::chain::{self, ChainColumns};
use super::schema::{self, SCHEMA_VERSION, fast};
use super::source::SourceColumns;
use super::writer::CommitPayload;
use crate::event::AuditEvent;
use crate::integrity::chain::ChainHeads;

const REBUILD: &str = "index.rebuild";
const NEW: &str = "index.new";
const OLD: &str = "index.old";
/// Progress is logged at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Finishes a swap that a crash interrupted and discards an unfinished rebuild.
pub fn recover(data_dir: &Path) -> Result<(), StoreError> {
    let index = data_dir.join("index");
    let (rebuild, new, old) = (
        data_dir.join(REBUILD),
        data_dir.join(NEW),
        data_dir.join(OLD),
    );
    if exists(&rebuild)? {
        tracing::warn!(dir = %rebuild.display(), "discarding an unfinished index rebuild; it starts again");
        remove_dir(&rebuild)?;
    }
    if exists(&new)? {
        tracing::info!("finishing an interrupted index swap");
        if exists(&index)? {
            rename(&index, &old)?;
        }
        rename(&new, &index)?;
        sync_dir(data_dir)?;
    }
    if exists(&old)? {
        remove_dir(&old)?;
    }
    Ok(())
}

/// Whether the index in `index_dir` was written by an older version and must be rebuilt.
pub fn needs_rebuild(index: &Index, payload: &CommitPayload) -> Result<bool, StoreError> {
    let (schema, _) = schema::build_schema();
    if payload.schema_version > SCHEMA_VERSION {
        return Err(StoreError::NewerVersion {
            found: payload.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(payload.schema_version < SCHEMA_VERSION || index.schema() != schema)
}

/// Rebuilds the index of `data_dir` with the current schema and `settings`, then swaps it in.
pub fn rebuild(
    data_dir: &Path,
    old: &Index,
    payload: &CommitPayload,
    settings: IndexSettings,
    memory_bytes: usize,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let target = data_dir.join(REBUILD);
    if exists(&target)? {
        remove_dir(&target)?;
    }
    super::create_dir(&target)?;
    let (schema, fields) = schema::build_schema();
    let index = Index::builder()
        .schema(schema)
        .settings(settings)
        .create_in_dir(&target)?;
    // One indexing thread: documents stay in the old index's (arrival) order.
    let mut writer: IndexWriter = index.writer_with_num_threads(1, memory_bytes)?;
    let searcher = old.reader()?.searcher();
    let total = searcher.num_docs();
    tracing::info!(
        events = total,
        from_version = payload.schema_version,
        to_version = SCHEMA_VERSION,
        "rebuilding the index for the current storage format"
    );
    let old_schema = old.schema();
    let source_field = old_schema.get_field("source")?;
    // Links an older index keeps are kept, not recomputed: a chain that retention cut starts
    // from the hash of a deleted event, which only the kept links (and the anchors) know.
    // Version 3 stored them in the document store, later versions in columns.
    let stored_link_fields = old_schema
        .get_field("chain_seq")
        .ok()
        .zip(old_schema.get_field("chain_hash").ok());
    let link_columns = old_schema.get_field(fast::CHAIN_HASH[0]).is_ok();
    let segments = searcher.segment_readers();
    let mut readers = Vec::with_capacity(segments.len());
    for segment in segments {
        let store = segment
            .get_store_reader(2)
            .map_err(tantivy::TantivyError::from)?;
        let links = link_columns
            .then(|| ChainColumns::open(segment))
            .transpose()?;
        readers.push((SourceColumns::open(segment)?, store, links));
    }
    // Ingest order, so that the hash chains computed on the way (for an index written before
    // the chain, which stores no links) are the ones the index stage would have computed.
    let mut chains = ChainHeads::default();
    let mut copied = 0u64;
    let mut logged = Instant::now();
    for at in chain::documents_in_sequence_order(&searcher)? {
        let (columns, store, links) = &readers[at.segment as usize];
        let document: TantivyDocument = store.get(at.doc)?;
        let stored = document
            .get_first(source_field)
            .and_then(|value| value.as_bytes())
            .unwrap_or_default();
        let source = columns.restore(at.doc, stored)?;
        let event: AuditEvent =
            serde_json::from_slice(&source).map_err(|e| corrupt(at.doc, &e.to_string()))?;
        let kept_link = match links {
            Some(links) => links.link(at.doc),
            None => stored_link_fields.and_then(|(chain_seq, chain_hash)| {
                chain::link_in(&document, chain_seq, chain_hash)
            }),
        };
        let link = kept_link.unwrap_or_else(|| chains.append(&event));
        writer.add_document(fields.document(&event, at.seq, &source, link))?;
        copied += 1;
        if logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(copied, total, "rebuilding the index");
        }
    }
    let payload = CommitPayload {
        schema_version: SCHEMA_VERSION,
        ..*payload
    };
    let mut commit = writer.prepare_commit()?;
    commit.set_payload(&payload.to_json());
    commit.commit()?;
    writer.wait_merging_threads()?;
    swap(data_dir)?;
    tracing::info!(
        copied,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "index rebuilt and swapped in"
    );
    Ok(())
}

/// Marks the rebuild finished, then replaces the live index with it (see [`recover`]).
fn swap(data_dir: &Path) -> Result<(), StoreError> {
    let (rebuild, new) = (data_dir.join(REBUILD), data_dir.join(NEW));
    sync_dir(&rebuild)?;
    rename(&rebuild, &new)?;
    sync_dir(data_dir)?;
    recover(data_dir)
}

fn corrupt(doc: u32, reason: &str) -> StoreError {
    StoreError::Index(tantivy::TantivyError::InternalError(format!(
        "rebuild: document {doc} cannot be copied: {reason}"
    )))
}

fn exists(path: &Path) -> Result<bool, StoreError> {
    path.try_exists()
        .map_err(|source| io_error("check", path, source))
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(|source| io_error("rename", from, source))
}

fn remove_dir(path: &Path) -> Result<(), StoreError> {
    fs::remove_dir_all(path).map_err(|source| io_error("remove", path, source))
}

/// Makes renames and files inside `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| io_error("sync", dir, source))
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        action,
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use tantivy::schema::{
        BytesOptions, Field, INDEXED, IndexRecordOption, IpAddrOptions, NumericOptions, STORED,
        Schema, TextFieldIndexing, TextOptions,
    };
    use tantivy::store::{Compressor, ZstdCompressor};
    use tantivy::tokenizer::RAW_TOKENIZER_NAME;
    use tantivy::{DocAddress, Term};

    use super::*;
    use crate::event::{Action, IdentityType};
    use crate::integrity::chain::ChainLink;
    use crate::store::lookup::RequestIdQuery;
    use crate::store::schema::{id_key, to_ipv6};
    use crate::store::tests::committed_payload;
    use crate::store::{PreparedEvent, Store, StoreConfig, StoreMetrics, search};

    /// The version-1 schema (`build_schema` before compact sources), field by field.
    fn schema_v1() -> Schema {
        let mut builder = Schema::builder();
        let fast_only = || NumericOptions::default().set_fast();
        let indexed_fast = || NumericOptions::default().set_indexed().set_fast();
        let raw_indexing = || {
            TextFieldIndexing::default()
                .set_tokenizer(RAW_TOKENIZER_NAME)
                .set_index_option(IndexRecordOption::Basic)
                .set_fieldnorms(false)
        };
        let exact = || TextOptions::default().set_indexing_options(raw_indexing());
        let exact_fast = || exact().set_fast(RAW_TOKENIZER_NAME);
        let fast_text = || TextOptions::default().set_fast(RAW_TOKENIZER_NAME);
        let free_text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("default")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions)
                .set_fieldnorms(false),
        );
        builder.add_text_field("id", fast_text());
        builder.add_text_field("tenant", exact());
        builder.add_i64_field("ts", fast_only());
        builder.add_u64_field("seq", fast_only());
        builder.add_u64_field("action", indexed_fast());
        builder.add_u64_field("identity_type", INDEXED);
        builder.add_text_field("identity_id", exact_fast());
        builder.add_text_field("secret_path", exact_fast());
        builder.add_ip_addr_field("source_ip", IpAddrOptions::default().set_fast());
        builder.add_text_field("request_id", fast_text());
        builder.add_bool_field("success", indexed_fast());
        builder.add_text_field("text", free_text);
        builder.add_bytes_field("source", BytesOptions::from(STORED));
        builder.add_bytes_field("chain_hash", BytesOptions::from(STORED));
        builder.build()
    }

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            id: format!("log_{i:04}"),
            tenant_id: if i.is_multiple_of(2) {
                "tnt_a"
            } else {
                "tnt_b"
            }
            .into(),
            timestamp_us: 1_700_000_000_000_000 + i as i64 * 1_000_003,
            action: Action::Read,
            secret_path: Some(format!("teams/app-{}/db", i % 7)),
            identity_type: IdentityType::User,
            identity_id: format!("user:u{}", i % 5),
            source_ip: (!i.is_multiple_of(3))
                .then(|| format!("10.0.{}.{}", i % 250, i % 200).parse().unwrap()),
            user_agent: Some("curl/8.0".into()),
            success: !i.is_multiple_of(11),
            duration_ms: Some(i % 90),
            request_id: (!i.is_multiple_of(4)).then(|| format!("req_{:x}", i * 7919)),
            extra_data: serde_json::json!({"lease": format!("lease_{i}")})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// A version-1 index of `count` events in `data_dir/index`, as the old code wrote it.
    fn write_v1_index(data_dir: &Path, count: u64) {
        let schema = schema_v1();
        let field = |name: &str| -> Field { schema.get_field(name).unwrap() };
        let index_dir = data_dir.join("index");
        fs::create_dir_all(&index_dir).unwrap();
        let settings = IndexSettings {
            docstore_compression: Compressor::Zstd(ZstdCompressor {
                compression_level: Some(6),
            }),
            docstore_blocksize: 256 * 1024,
            ..IndexSettings::default()
        };
        let index = Index::builder()
            .schema(schema.clone())
            .settings(settings)
            .create_in_dir(&index_dir)
            .unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
        for seq in 0..count {
            let event = event(seq);
            let mut doc = TantivyDocument::default();
            doc.add_text(field("id"), id_key(&event.tenant_id, &event.id));
            doc.add_text(field("tenant"), &event.tenant_id);
            doc.add_i64(field("ts"), event.timestamp_us);
            doc.add_u64(field("seq"), seq);
            doc.add_u64(field("action"), event.action.ordinal());
            doc.add_u64(field("identity_type"), event.identity_type.ordinal());
            doc.add_text(field("identity_id"), &event.identity_id);
            doc.add_text(field("text"), &event.identity_id);
            if let Some(path) = &event.secret_path {
                doc.add_text(field("secret_path"), path);
                doc.add_text(field("text"), path);
            }
            if let Some(ip) = event.source_ip {
                doc.add_ip_addr(field("source_ip"), to_ipv6(ip));
            }
            if let Some(request_id) = &event.request_id {
                doc.add_text(field("request_id"), request_id);
            }
            doc.add_bool(field("success"), event.success);
            doc.add_bytes(field("source"), &serde_json::to_vec(&event).unwrap());
            writer.add_document(doc).unwrap();
            if seq == count / 2 {
                writer.commit().unwrap(); // two segments
            }
        }
        let mut commit = writer.prepare_commit().unwrap();
        commit.set_payload(&format!(r#"{{"next_seq":{count},"schema_version":1}}"#));
        commit.commit().unwrap();
        writer.wait_merging_threads().unwrap();
    }

    async fn open_ready(data_dir: &Path) -> Store {
        let store = Store::open(
            &StoreConfig::with_data_dir(data_dir),
            StoreMetrics::unregistered(),
        )
        .unwrap();
        store.wait_ready(Duration::from_secs(30)).await.unwrap();
        store
    }

    /// Every event of the store, restored from its stored source, by sequence number.
    fn all_events(store: &Store) -> Vec<(u64, AuditEvent)> {
        let searcher = store.searcher();
        let mut events = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            let seqs = segment.fast_fields().u64(schema::fast::SEQ).unwrap();
            for doc in 0..segment.max_doc() {
                let address = DocAddress::new(ord as u32, doc);
                let seq = seqs.first(doc).unwrap();
                let event = search::load_event(&searcher, store.fields(), address, seq).unwrap();
                events.push((seq, event));
            }
        }
        events.sort_by_key(|(seq, _)| *seq);
        events
    }

    /// A rebuild copies the links an older index keeps, in columns (version 4 on) or in the
    /// document store (version 3): here a chain that retention cut, whose first kept event
    /// follows the hash of a deleted one (recomputing from the genesis would give other hashes,
    /// and every checkpoint and anchor would stop matching).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_rebuild_keeps_the_chain_links_the_index_stores() {
        for links_stored in [false, true] {
            rebuild_keeps_links(links_stored).await;
        }
    }

    /// Writes an index whose payload says version 3, with today's schema or (when
    /// `links_stored`) version 3's, opens it (a rebuild) and checks every link and head.
    async fn rebuild_keeps_links(links_stored: bool) {
        let dir = tempfile::tempdir().unwrap();
        let index_dir = dir.path().join("index");
        fs::create_dir_all(&index_dir).unwrap();
        let (current, fields) = schema::build_schema();
        let schema = if links_stored {
            schema_v3()
        } else {
            current.clone()
        };
        let index = Index::builder()
            .schema(schema.clone())
            .create_in_dir(&index_dir)
            .unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 50_000_000).unwrap();
        let cut = ChainLink {
            seq: 40,
            hash: [7; crate::integrity::chain::HASH_BYTES],
        };
        let tenants = ["tnt_a", "tnt_b"];
        let mut chains = ChainHeads::from_heads(
            tenants
                .iter()
                .map(|tenant| (tenant.to_string(), cut))
                .collect(),
        );
        let mut written = Vec::new();
        for seq in 0..20 {
            let event = event(seq);
            let link = chains.append(&event);
            let source = serde_json::to_vec(&event).unwrap();
            let document = fields.document(&event, seq, &source, link);
            let document = if links_stored {
                as_version_3(&current, &schema, &document, link)
            } else {
                document
            };
            writer.add_document(document).unwrap();
            written.push((seq, link));
        }
        let mut commit = writer.prepare_commit().unwrap();
        commit.set_payload(r#"{"next_seq":20,"schema_version":3}"#);
        commit.commit().unwrap();
        drop(index);

        let store = open_ready(dir.path()).await;
        let searcher = store.searcher();
        let mut kept = Vec::new();
        for at in chain::documents_in_sequence_order(&searcher).unwrap() {
            let segment = searcher.segment_reader(at.segment);
            kept.push((at.seq, chain::link_of(segment, at.doc).unwrap().unwrap()));
        }
        assert_eq!(kept, written, "links stored: {links_stored}");
        assert_eq!(committed_payload(dir.path()).schema_version, SCHEMA_VERSION);
        // The chain goes on from the kept heads.
        let heads: HashMap<String, ChainLink> = tenants
            .iter()
            .map(|tenant| (tenant.to_string(), chains.head(tenant)))
            .collect();
        assert_eq!(store.committed_heads(), heads);
        store.shutdown().await;
    }

    /// The version-3 schema: today's, with the chain link in the document store.
    fn schema_v3() -> Schema {
        let (current, _) = schema::build_schema();
        let mut builder = Schema::builder();
        for (_, entry) in current.fields() {
            if !entry.name().starts_with("chain_") {
                builder.add_field(entry.clone());
            }
        }
        builder.add_bytes_field("chain_hash", BytesOptions::from(STORED));
        builder.add_u64_field("chain_seq", STORED);
        builder.build()
    }

    /// `document` (of today's schema `current`) as version 3 wrote it, `link` stored.
    fn as_version_3(
        current: &Schema,
        v3: &Schema,
        document: &TantivyDocument,
        link: ChainLink,
    ) -> TantivyDocument {
        let mut old = TantivyDocument::default();
        for (field, value) in document.field_values() {
            let name = current.get_field_name(field);
            if !name.starts_with("chain_") {
                old.add_field_value(v3.get_field(name).unwrap(), value);
            }
        }
        old.add_bytes(v3.get_field("chain_hash").unwrap(), link.hash.as_slice());
        old.add_u64(v3.get_field("chain_seq").unwrap(), link.seq);
        old
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_version_1_index_is_rebuilt_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        write_v1_index(dir.path(), 500);
        // Leftovers of a rebuild that died are discarded.
        fs::create_dir_all(dir.path().join(REBUILD).join("junk")).unwrap();
        let store = open_ready(dir.path()).await;
        let expected: Vec<(u64, AuditEvent)> = (0..500).map(|seq| (seq, event(seq))).collect();
        assert_eq!(all_events(&store), expected);
        assert_eq!(store.committed_seq(), 500);
        for leftover in [REBUILD, NEW, OLD] {
            assert!(
                !dir.path().join(leftover).try_exists().unwrap(),
                "{leftover}"
            );
        }
        // Queryable through the new fields.
        let searcher = store.searcher();
        let wanted = event(13).request_id.unwrap();
        let hits = searcher
            .search(
                &RequestIdQuery::new(store.fields(), &wanted),
                &tantivy::collector::Count,
            )
            .unwrap();
        assert_eq!(hits, 1);
        let tenant_a = tantivy::query::TermQuery::new(
            Term::from_field_text(store.fields().tenant, "tnt_a"),
            IndexRecordOption::Basic,
        );
        assert_eq!(
            searcher
                .search(&tenant_a, &tantivy::collector::Count)
                .unwrap(),
            250
        );
        // Producer ids of rebuilt events still deduplicate (per tenant); new ones get seq 500.
        let outcome = store
            .ingest(vec![
                PreparedEvent::new(event(7), true),
                PreparedEvent::new(event(500), true),
            ])
            .await
            .unwrap();
        assert_eq!(outcome.duplicates, 1);
        store.flush().await.unwrap();
        assert_eq!(store.committed_seq(), 501);
        store.shutdown().await;
        drop(store);
        // Reopening the current format rebuilds nothing.
        let index = Index::open_in_dir(dir.path().join("index")).unwrap();
        let payload = CommitPayload::parse(index.load_metas().unwrap().payload.as_deref()).unwrap();
        assert_eq!(payload.schema_version, SCHEMA_VERSION);
        assert!(!needs_rebuild(&index, &payload).unwrap());
        drop(index);
        // The rebuild chained every event in ingest order, and the chain went on from there.
        let report =
            crate::store::verify::verify_data_dir(dir.path(), &Default::default()).unwrap();
        assert!(report.ok(), "{:?}", report.problems);
        assert_eq!((report.events, report.tenants), (501, 2));
    }

    #[test]
    fn an_interrupted_swap_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        // Crashed between the two renames: the old index is aside, the new one is finished.
        fs::create_dir_all(data.join(OLD)).unwrap();
        fs::create_dir_all(data.join(NEW)).unwrap();
        fs::write(data.join(NEW).join("meta.json"), "new").unwrap();
        recover(data).unwrap();
        assert_eq!(
            fs::read_to_string(data.join("index/meta.json")).unwrap(),
            "new"
        );
        assert!(!data.join(OLD).try_exists().unwrap() && !data.join(NEW).try_exists().unwrap());
        // Crashed before the first rename: same outcome.
        fs::create_dir_all(data.join(NEW)).unwrap();
        fs::write(data.join(NEW).join("meta.json"), "newer").unwrap();
        recover(data).unwrap();
        assert_eq!(
            fs::read_to_string(data.join("index/meta.json")).unwrap(),
            "newer"
        );
        assert!(!data.join(OLD).try_exists().unwrap() && !data.join(NEW).try_exists().unwrap());
    }

    #[test]
    fn a_newer_format_is_refused() {
        let (schema, _) = schema::build_schema();
        let index = Index::create_in_ram(schema);
        let payload = CommitPayload {
            next_seq: 0,
            schema_version: SCHEMA_VERSION + 1,
            log_position: None,
        };
        assert!(matches!(
            needs_rebuild(&index, &payload),
            Err(StoreError::NewerVersion { .. })
        ));
    }
}

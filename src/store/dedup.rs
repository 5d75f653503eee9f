//! Producer-id deduplication: an id already stored is never stored twice, across restarts too.
//!
//! Ids are unique per tenant only: the key is `(tenant_id, id)` (see [`id_key`]), so one
//! tenant storing an id can never make another tenant's event with that id a "duplicate"
//! (acknowledged, never stored) nor learn through the `duplicates` count that it exists.
//!
//! Checking every incoming id against the index would cost a term lookup per segment per event,
//! so a Bloom filter over every stored key answers "certainly new" for almost all of them. Only
//! a "maybe" (a real duplicate, or a ~1% false positive) pays for the exact check: the keys
//! written to the WAL but not yet visible in the index (`pending`), then the index itself.
//!
//! Indexes written before per-tenant keys hold bare ids in the `id` fast field ("legacy"
//! terms, recognisable because an id never contains `/`). For those, a bare-id hit is checked
//! against the document's tenant (its `tenant` postings), so old data deduplicates per tenant
//! too; that slower check only runs for an id that a legacy document really carries.

use std::collections::{HashMap, VecDeque};

use tantivy::columnar::StrColumn;
use tantivy::schema::IndexRecordOption;
use tantivy::{DocSet, IndexReader, SegmentReader, TERMINATED, Term};

use super::bloom::BloomFilter;
use super::scan::ScanDirectory;
use super::schema::{Fields, fast, id_key};

/// The smallest filter built: the WAL stage inserts into it as events arrive.
const MIN_CAPACITY: usize = 1 << 20;

/// The WAL stage's view of which `(tenant_id, id)` pairs are stored.
pub struct Deduplicator {
    /// Holds every stored key, plus the bare id of every legacy document.
    filter: BloomFilter,
    /// Keys in the WAL that the index reader may not show yet, with their sequence numbers.
    pending: HashMap<String, u64>,
    pending_order: VecDeque<(u64, String)>,
    reader: IndexReader,
    /// Where rebuilding the filter reads every segment's ids through.
    scan: ScanDirectory,
    fields: Fields,
    /// Whether the index holds documents whose `id` fast field is a bare id.
    legacy: bool,
}

impl Deduplicator {
    /// Builds the filter from every key in the index, read through `scan`.
    pub fn load(reader: IndexReader, fields: Fields, scan: ScanDirectory) -> tantivy::Result<Self> {
        reader.reload()?;
        let mut dedup = Deduplicator {
            filter: BloomFilter::with_capacity(MIN_CAPACITY),
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            reader,
            scan,
            fields,
            legacy: false,
        };
        dedup.rebuild_filter()?;
        Ok(dedup)
    }

    /// Whether `tenant_id` already stored `id` (in the index or pending in the WAL).
    pub fn is_stored(&self, tenant_id: &str, id: &str) -> tantivy::Result<bool> {
        let key = id_key(tenant_id, id);
        let maybe = self.filter.may_contain(&key) || (self.legacy && self.filter.may_contain(id));
        if !maybe {
            return Ok(false);
        }
        if self.pending.contains_key(&key) {
            return Ok(true);
        }
        self.in_index(tenant_id, id, &key)
    }

    /// Remembers `(tenant_id, id)` just written with sequence number `seq`.
    pub fn record(&mut self, tenant_id: &str, id: &str, seq: u64) {
        let key = id_key(tenant_id, id);
        self.filter.insert(&key);
        self.pending.insert(key.clone(), seq);
        self.pending_order.push_back((seq, key));
    }

    /// Forgets ids recorded from `first_seq` on (their WAL write failed).
    pub fn forget_from(&mut self, first_seq: u64) {
        while self
            .pending_order
            .back()
            .is_some_and(|(seq, _)| *seq >= first_seq)
        {
            if let Some((_, id)) = self.pending_order.pop_back() {
                self.pending.remove(&id);
            }
        }
        // The filter keeps those bits: a false positive costs one exact lookup, nothing more.
    }

    /// Called after the index committed everything below `committed_seq`. The reader is the
    /// store's query reader, which the index stage reloads before it publishes
    /// `committed_seq`: it already shows every committed key.
    pub fn on_commit(&mut self, committed_seq: u64) -> tantivy::Result<()> {
        while self
            .pending_order
            .front()
            .is_some_and(|(seq, _)| *seq < committed_seq)
        {
            if let Some((_, id)) = self.pending_order.pop_front() {
                self.pending.remove(&id);
            }
        }
        if self.filter.is_overfull() {
            self.rebuild_filter()?;
        }
        Ok(())
    }

    fn in_index(&self, tenant_id: &str, id: &str, key: &str) -> tantivy::Result<bool> {
        let searcher = self.reader.searcher();
        for segment in searcher.segment_readers() {
            let Some(ids) = segment.fast_fields().str(fast::ID)? else {
                continue;
            };
            if ids.dictionary().term_ord(key)?.is_some() {
                return Ok(true);
            }
            if !self.legacy {
                continue;
            }
            if let Some(ord) = ids.dictionary().term_ord(id)?
                && self.legacy_doc_of_tenant(segment, &ids, ord, tenant_id)?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether a document of `segment` whose bare id has term ordinal `ord` is `tenant_id`'s.
    fn legacy_doc_of_tenant(
        &self,
        segment: &SegmentReader,
        ids: &StrColumn,
        ord: u64,
        tenant_id: &str,
    ) -> tantivy::Result<bool> {
        let mut docs = Vec::new();
        ids.ords()
            .get_docids_for_value_range(ord..=ord, 0..segment.max_doc(), &mut docs);
        let tenant = Term::from_field_text(self.fields.tenant, tenant_id);
        let Some(mut postings) = segment
            .inverted_index(self.fields.tenant)?
            .read_postings(&tenant, IndexRecordOption::Basic)?
        else {
            return Ok(false);
        };
        for doc in docs {
            // `docs` ascend; `seek` may only move forward.
            if postings.doc() > doc {
                continue;
            }
            match postings.seek(doc) {
                found if found == doc => return Ok(true),
                TERMINATED => return Ok(false),
                _ => {}
            }
        }
        Ok(false)
    }

    fn rebuild_filter(&mut self) -> tantivy::Result<()> {
        let searcher = self.reader.searcher();
        let stored = searcher.num_docs() as usize + self.pending.len();
        let mut filter = BloomFilter::with_capacity((stored * 2).max(MIN_CAPACITY));
        let mut legacy = false;
        for segment in searcher.segment_readers() {
            let Some(ids) = self.scan.columns(segment)?.str(fast::ID)? else {
                continue;
            };
            let mut terms = ids.dictionary().stream()?;
            while terms.advance() {
                let term = String::from_utf8_lossy(terms.key());
                legacy |= !term.contains('/');
                filter.insert(&term);
            }
        }
        for key in self.pending.keys() {
            filter.insert(key);
        }
        self.filter = filter;
        self.legacy = legacy;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index with one legacy document (bare id) and one keyed document.
    fn mixed_index() -> (IndexReader, Fields) {
        let (schema, fields) = super::super::schema::build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        let mut writer: tantivy::IndexWriter = index.writer(15_000_000).unwrap();
        for (tenant, id_value) in [("tnt_a", "legacy_1"), ("tnt_b", "tnt_b/keyed_1")] {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_text(fields.id, id_value);
            doc.add_text(fields.tenant, tenant);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        (index.reader().unwrap(), fields)
    }

    #[test]
    fn stored_ids_are_per_tenant_in_keyed_legacy_and_pending_data() {
        let (reader, fields) = mixed_index();
        let mut dedup = Deduplicator::load(reader, fields, ScanDirectory::in_place()).unwrap();
        assert!(dedup.is_stored("tnt_a", "legacy_1").unwrap());
        assert!(!dedup.is_stored("tnt_b", "legacy_1").unwrap());
        assert!(dedup.is_stored("tnt_b", "keyed_1").unwrap());
        assert!(!dedup.is_stored("tnt_a", "keyed_1").unwrap());
        dedup.record("tnt_a", "new_1", 7);
        assert!(dedup.is_stored("tnt_a", "new_1").unwrap());
        assert!(!dedup.is_stored("tnt_b", "new_1").unwrap());
        dedup.forget_from(7);
        assert!(!dedup.is_stored("tnt_a", "new_1").unwrap());
    }
}

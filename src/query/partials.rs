//! Per-segment, per-(tenant, UTC day) partial aggregates, computed once per segment.
//!
//! A sealed segment never changes (until deletes rewrite its alive bitset, which gives it a
//! new delete opstamp and so a new cache key), so the counts of each tenant's events of each
//! UTC day in it are computed once, when the segment is first seen, and kept: a summary over
//! 30 days adds ~30 small partials per segment instead of walking ~2 million documents.
//!
//! [`PartialCache`] is a Tantivy [`Warmer`] registered on the store's query reader: every
//! reload builds the partials of the segments it has not seen (new commits, merged segments)
//! and the reader's garbage collection drops the partials of segments no live searcher uses.
//! A segment a searcher holds but the cache lacks (a failed warm) is built on first use.
//!
//! Identity and path strings are interned process-wide ([`Interner`]), so partials of
//! different segments add up in dense arrays without any string work; a summary resolves to
//! strings only the entries its top lists report.
//!
//! Memory: per (segment, tenant, day) one [`DayPartial`] (~330 bytes) plus 8 bytes per
//! distinct identity and per distinct path of that day; per segment 4 bytes per term of the
//! identity and path columns, and one byte per document (four beyond 254 tenants) for the
//! tenant map ([`super::tenant`]); the interners keep every identity and path string seen
//! since start once (they never shrink: strings are few compared to events).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tantivy::columnar::StrColumn;
use tantivy::fastfield::AliveBitSet;
use tantivy::index::SegmentId;
use tantivy::postings::SegmentPostings;
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{
    DocId, DocSet, Opstamp, Searcher, SearcherGeneration, SegmentReader, TERMINATED, Warmer,
};

use super::tenant::TenantOfDoc;
use crate::store::scan::{FastColumns, ScanDirectory};

use super::summary::{
    ACTION_SLOTS, Aggregate, Breakdowns, DocValues, SummaryColumns, Tally, Window, min_option,
};

/// A segment as the cache knows it: its id and the opstamp of its deletes.
type SegmentKey = (SegmentId, Option<Opstamp>);

/// The partials of every segment the query reader serves, and the string interners.
pub struct PartialCache {
    tenant: Field,
    scan: ScanDirectory,
    identities: Arc<Interner>,
    paths: Arc<Interner>,
    segments: Mutex<HashMap<SegmentKey, Arc<SegmentPartials>>>,
}

impl PartialCache {
    /// An empty cache for an index whose tenant term is in `tenant`; partials are built from
    /// columns read through `scan` (see [`crate::store::scan`]).
    pub fn new(tenant: Field, scan: ScanDirectory) -> PartialCache {
        PartialCache {
            tenant,
            scan,
            identities: Arc::default(),
            paths: Arc::default(),
            segments: Mutex::new(HashMap::new()),
        }
    }

    pub fn tenant_field(&self) -> Field {
        self.tenant
    }

    /// The partials of `segment`, built now if the cache lacks them.
    pub fn segment(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SegmentPartials>> {
        let key = (segment.segment_id(), segment.delete_opstamp());
        if let Some(partials) = self.segments.lock().get(&key) {
            return Ok(partials.clone());
        }
        // Built outside the lock: two racing builders compute the same thing, one is kept.
        let built = Arc::new(SegmentPartials::build(
            segment,
            &self.scan.columns(segment)?,
            self.tenant,
            &self.identities,
            &self.paths,
        )?);
        Ok(self.segments.lock().entry(key).or_insert(built).clone())
    }

    /// The partials of `segment` if the cache holds them (built by the warmer), without
    /// building them.
    pub fn cached(&self, segment: &SegmentReader) -> Option<Arc<SegmentPartials>> {
        let key = (segment.segment_id(), segment.delete_opstamp());
        self.segments.lock().get(&key).cloned()
    }

    /// The partials of every segment of `searcher`, in segment order.
    pub fn segments_of(&self, searcher: &Searcher) -> tantivy::Result<Vec<Arc<SegmentPartials>>> {
        searcher
            .segment_readers()
            .iter()
            .map(|segment| self.segment(segment))
            .collect()
    }

    /// An empty tally sized for every id interned so far, of the keys `breakdowns` counts.
    pub(crate) fn tally(&self, breakdowns: Breakdowns) -> Tally {
        let size = |wanted: bool, names: &Interner| if wanted { names.len() } else { 0 };
        Tally::with_capacity(
            size(breakdowns.identities, &self.identities),
            size(breakdowns.paths, &self.paths),
        )
    }

    /// The finished aggregate of `tally`.
    pub(crate) fn resolve(&self, tally: Tally) -> Aggregate {
        tally.into_aggregate(&self.identities, &self.paths)
    }

    /// Heap bytes held: the partials of every cached segment plus the interned strings.
    pub fn heap_bytes(&self) -> usize {
        let segments: usize = self
            .segments
            .lock()
            .values()
            .map(|partials| partials.heap_bytes())
            .sum();
        segments + self.identities.heap_bytes() + self.paths.heap_bytes()
    }

    /// Number of segments cached.
    pub fn cached_segments(&self) -> usize {
        self.segments.lock().len()
    }
}

impl Warmer for PartialCache {
    fn warm(&self, searcher: &Searcher) -> tantivy::Result<()> {
        for segment in searcher.segment_readers() {
            // A failure only costs speed (the summary builds it again on first use, and
            // reports the error then); the reload must go on.
            if let Err(error) = self.segment(segment) {
                tracing::warn!(%error, segment = %segment.segment_id().short_uuid_string(), "summary partials of a segment could not be built");
            }
        }
        Ok(())
    }

    fn garbage_collect(&self, live_generations: &[&SearcherGeneration]) {
        let live: HashSet<SegmentKey> = live_generations
            .iter()
            .flat_map(|generation| generation.segments().iter())
            .map(|(id, opstamp)| (*id, *opstamp))
            .collect();
        self.segments.lock().retain(|key, _| live.contains(key));
    }
}

/// The partials of one segment.
#[derive(Debug)]
pub struct SegmentPartials {
    /// Per tenant, its days in day order.
    tenants: HashMap<String, Vec<DayPartial>>,
    /// Interned id of each term ordinal of the segment's identity column.
    identity_ids: Vec<u32>,
    /// Interned id of each term ordinal of the segment's path column.
    path_ids: Vec<u32>,
    /// Per tenant term: its number in [`Self::tenant_of_doc`] and its documents (deleted ones
    /// included, as in its postings).
    tenant_numbers: HashMap<String, (u32, u32)>,
    /// The tenant number of every document (see [`super::tenant`]).
    tenant_of_doc: TenantOfDoc,
}

/// How a partial lies against a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Every event of the partial is inside.
    Whole,
    /// Some may be: recount the day.
    Part,
    /// None is.
    None,
}

/// The counts of one tenant's events of one UTC day in one segment.
#[derive(Debug, Clone)]
pub struct DayPartial {
    /// Days since the epoch ([`super::summary::UNDATED`] for events without a timestamp).
    pub day: i64,
    /// The first and last doc id of these events (others may lie between).
    pub first_doc: DocId,
    pub last_doc: DocId,
    pub total: u32,
    pub successful: u32,
    pub actions: [u32; ACTION_SLOTS],
    /// Oldest and newest timestamps of these events.
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
    pub last_read_us: Option<i64>,
    /// (interned id, count), each id once.
    pub identities: Box<[(u32, u32)]>,
    pub paths: Box<[(u32, u32)]>,
}

impl DayPartial {
    /// Whether the partial is wholly, partly or not inside `window`, from its actual oldest
    /// and newest timestamps (a day the window cuts is still whole if its events are inside).
    pub fn overlap(&self, window: Window) -> Overlap {
        match (self.first_us, self.last_us) {
            (Some(first), Some(last)) => {
                if window.contains(Some(first)) && window.contains(Some(last)) {
                    Overlap::Whole
                } else if window.from_us.is_some_and(|from| last < from)
                    || window.to_us.is_some_and(|to| first >= to)
                    || window
                        .from_us
                        .zip(window.to_us)
                        .is_some_and(|(f, t)| f >= t)
                {
                    Overlap::None
                } else {
                    Overlap::Part
                }
            }
            _ if window.is_unbounded() => Overlap::Whole,
            _ => Overlap::None,
        }
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<DayPartial>()
            + std::mem::size_of::<(u32, u32)>() * (self.identities.len() + self.paths.len())
    }
}

impl SegmentPartials {
    /// Walks every live document of `segment`, tenant by tenant (the `tenant` term postings).
    fn build(
        segment: &SegmentReader,
        fast_fields: &FastColumns,
        tenant_field: Field,
        identities: &Interner,
        paths: &Interner,
    ) -> tantivy::Result<SegmentPartials> {
        let columns = SummaryColumns::of_columns(fast_fields, Breakdowns::ALL)?;
        let inverted = segment.inverted_index(tenant_field)?;
        let tenant_terms = inverted.terms().num_terms();
        let mut partials = SegmentPartials {
            tenants: HashMap::new(),
            identity_ids: identities.intern_dictionary(columns.identities())?,
            path_ids: paths.intern_dictionary(columns.paths())?,
            tenant_numbers: HashMap::with_capacity(tenant_terms),
            tenant_of_doc: TenantOfDoc::new(0, 0),
        };
        let mut tenant_of_doc = TenantOfDoc::new(segment.max_doc(), tenant_terms);
        let mut terms = inverted.terms().stream()?;
        let mut number = 0u32;
        while terms.advance() {
            let tenant = String::from_utf8_lossy(terms.key()).into_owned();
            let mut postings =
                inverted.read_postings_from_terminfo(terms.value(), IndexRecordOption::Basic)?;
            let days =
                partials.tenant_partials(&mut postings, segment.alive_bitset(), &columns, |doc| {
                    tenant_of_doc.set(doc, number)
                });
            partials
                .tenant_numbers
                .insert(tenant.clone(), (number, terms.value().doc_freq));
            number += 1;
            if !days.is_empty() {
                partials.tenants.insert(tenant, days);
            }
        }
        partials.tenant_of_doc = tenant_of_doc;
        Ok(partials)
    }

    /// One tenant's partials, day by day, from its postings; `each_doc` sees every document
    /// of them, deleted ones included.
    fn tenant_partials(
        &self,
        postings: &mut SegmentPostings,
        alive: Option<&AliveBitSet>,
        columns: &SummaryColumns,
        mut each_doc: impl FnMut(DocId),
    ) -> Vec<DayPartial> {
        let mut builders: Vec<DayBuilder> = Vec::new();
        // Events arrive almost in time order: the day of the previous doc is nearly always
        // the day of the next one.
        let mut current = 0usize;
        let mut doc = postings.doc();
        while doc != TERMINATED {
            each_doc(doc);
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                let values = columns.read(doc);
                let day = values.day();
                if builders
                    .get(current)
                    .is_none_or(|builder| builder.day != day)
                {
                    current = match builders.iter().position(|builder| builder.day == day) {
                        Some(index) => index,
                        None => {
                            builders.push(DayBuilder::new(day, doc));
                            builders.len() - 1
                        }
                    };
                }
                if let Some(builder) = builders.get_mut(current) {
                    builder.add(doc, &values);
                }
            }
            doc = postings.advance();
        }
        let mut days: Vec<DayPartial> = builders
            .into_iter()
            .map(|builder| builder.finish(&self.identity_ids, &self.path_ids))
            .collect();
        days.sort_unstable_by_key(|day| day.day);
        days
    }

    /// `tenant`'s partials in day order, if the segment holds any of its live events.
    pub fn tenant_days(&self, tenant: &str) -> Option<&[DayPartial]> {
        self.tenants.get(tenant).map(Vec::as_slice)
    }

    /// The doc-id range holding every event of `tenant` inside `window`, if any may be here.
    pub fn doc_bounds(&self, tenant: &str, window: Window) -> Option<(DocId, DocId)> {
        self.tenant_days(tenant)?
            .iter()
            .filter(|day| day.overlap(window) != Overlap::None)
            .fold(None, |bounds, day| {
                Some(match bounds {
                    None => (day.first_doc, day.last_doc),
                    Some((first, last)) => (first.min(day.first_doc), last.max(day.last_doc)),
                })
            })
    }

    /// `tenant`'s number in [`Self::tenant_of_doc`] and its document count (deleted ones
    /// included), if the segment has the tenant's term.
    pub fn tenant_number(&self, tenant: &str) -> Option<(u32, u32)> {
        self.tenant_numbers.get(tenant).copied()
    }

    /// The tenant number of every document of the segment.
    pub fn tenant_of_doc(&self) -> &TenantOfDoc {
        &self.tenant_of_doc
    }

    /// The interned id of identity term ordinal `ord`.
    pub fn identity_id(&self, ord: u64) -> Option<u32> {
        self.identity_ids.get(usize::try_from(ord).ok()?).copied()
    }

    /// The interned id of path term ordinal `ord`.
    pub fn path_id(&self, ord: u64) -> Option<u32> {
        self.path_ids.get(usize::try_from(ord).ok()?).copied()
    }

    fn heap_bytes(&self) -> usize {
        let days: usize = self
            .tenants
            .iter()
            .map(|(tenant, days)| {
                tenant.len() + days.iter().map(DayPartial::heap_bytes).sum::<usize>()
            })
            .sum();
        let tenants: usize = self
            .tenant_numbers
            .keys()
            .map(|tenant| tenant.len() + 8)
            .sum();
        days + 4 * (self.identity_ids.len() + self.path_ids.len())
            + tenants
            + self.tenant_of_doc.heap_bytes()
    }
}

/// The counts of one day while its segment is walked; terms counted by segment ordinal.
struct DayBuilder {
    day: i64,
    partial: DayPartial,
    identities: OrdCounts,
    paths: OrdCounts,
}

type OrdCounts = HashMap<u32, u32, BuildHasherDefault<OrdHasher>>;

impl DayBuilder {
    fn new(day: i64, first_doc: DocId) -> DayBuilder {
        DayBuilder {
            day,
            partial: DayPartial {
                day,
                first_doc,
                last_doc: first_doc,
                total: 0,
                successful: 0,
                actions: [0; ACTION_SLOTS],
                first_us: None,
                last_us: None,
                last_read_us: None,
                identities: Box::new([]),
                paths: Box::new([]),
            },
            identities: OrdCounts::default(),
            paths: OrdCounts::default(),
        }
    }

    fn add(&mut self, doc: DocId, values: &DocValues) {
        let partial = &mut self.partial;
        partial.last_doc = doc;
        partial.total += 1;
        partial.successful += u32::from(values.success);
        if let Some(slot) = values
            .action
            .and_then(|ordinal| partial.actions.get_mut(ordinal as usize))
        {
            *slot += 1;
        }
        if let Some(timestamp) = values.timestamp {
            partial.first_us = min_option(partial.first_us, Some(timestamp));
            partial.last_us = partial.last_us.max(Some(timestamp));
            if values.is_read() {
                partial.last_read_us = partial.last_read_us.max(Some(timestamp));
            }
        }
        if let Some(ord) = values.identity {
            *self.identities.entry(ord as u32).or_default() += 1;
        }
        if let Some(ord) = values.path {
            *self.paths.entry(ord as u32).or_default() += 1;
        }
    }

    fn finish(self, identity_ids: &[u32], path_ids: &[u32]) -> DayPartial {
        let to_ids = |counts: OrdCounts, ids: &[u32]| -> Box<[(u32, u32)]> {
            counts
                .into_iter()
                .filter_map(|(ord, count)| Some((*ids.get(ord as usize)?, count)))
                .collect()
        };
        DayPartial {
            identities: to_ids(self.identities, identity_ids),
            paths: to_ids(self.paths, path_ids),
            ..self.partial
        }
    }
}

/// A multiplicative hash for term ordinals (SipHash is needlessly slow for small integers).
#[derive(Default)]
struct OrdHasher(u64);

impl Hasher for OrdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.0 = u64::from(value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Process-wide ids for strings (identity ids, secret paths), so that partials of different
/// segments add up without string lookups.
#[derive(Debug, Default)]
pub struct Interner {
    inner: RwLock<InternerInner>,
}

#[derive(Debug, Default)]
struct InternerInner {
    ids: HashMap<Arc<str>, u32>,
    strings: Vec<Arc<str>>,
    bytes: usize,
}

impl Interner {
    /// Number of strings interned.
    pub fn len(&self) -> usize {
        self.inner.read().strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id of every term of `column`'s dictionary, in term-ordinal order.
    fn intern_dictionary(&self, column: Option<&StrColumn>) -> std::io::Result<Vec<u32>> {
        let Some(column) = column else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::with_capacity(column.num_terms());
        let mut terms = column.dictionary().stream()?;
        let mut inner = self.inner.write();
        while terms.advance() {
            ids.push(inner.intern(&String::from_utf8_lossy(terms.key())));
        }
        Ok(ids)
    }

    /// Runs `read` over the interned strings, indexed by id.
    pub(crate) fn with_strings<R>(&self, read: impl FnOnce(&[Arc<str>]) -> R) -> R {
        read(&self.inner.read().strings)
    }

    /// The id of `text`, interned now if it is new.
    #[cfg(test)]
    pub(crate) fn intern(&self, text: &str) -> u32 {
        self.inner.write().intern(text)
    }

    fn heap_bytes(&self) -> usize {
        let inner = self.inner.read();
        // The string bytes plus, per string, its Arc header, the map entry and the list slot.
        inner.bytes + inner.strings.len() * (16 + 24 + 16)
    }
}

impl InternerInner {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(id) = self.ids.get(text) {
            return *id;
        }
        let id = u32::try_from(self.strings.len()).unwrap_or(u32::MAX);
        let text: Arc<str> = Arc::from(text);
        self.bytes += text.len();
        self.strings.push(text.clone());
        self.ids.insert(text, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use crate::integrity::chain::ChainLink;
    use std::sync::Weak;

    use tantivy::indexer::NoMergePolicy;
    use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};

    use super::*;
    use crate::event::{Action, AuditEvent, IdentityType};
    use crate::query::summary::{
        Breakdowns, DAY_US, KeyCounts, aggregate_matching, summarize_tenant,
    };
    use crate::query::{LogFilters, build_query};
    use crate::store::Fields;
    use crate::store::schema::build_schema;

    const TENANTS: [&str; 3] = ["tnt_a", "tnt_b", "tnt_c"];
    /// 2026-01-01T00:00:00Z.
    const START_US: i64 = 1_767_225_600_000_000;

    struct Fixture {
        index: Index,
        fields: Fields,
        writer: IndexWriter,
        reader: IndexReader,
        cache: Arc<PartialCache>,
        events: Vec<AuditEvent>,
        deleted_identity: Option<String>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let (schema, fields) = build_schema();
            let index = Index::create_in_ram(schema);
            let cache = Arc::new(PartialCache::new(fields.tenant, ScanDirectory::in_place()));
            let warmer = Arc::downgrade(&cache);
            let reader: IndexReader = index
                .reader_builder()
                .reload_policy(ReloadPolicy::Manual)
                .warmers(vec![warmer as Weak<dyn Warmer>])
                .try_into()
                .unwrap();
            let writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
            writer.set_merge_policy(Box::new(NoMergePolicy));
            Fixture {
                index,
                fields,
                writer,
                reader,
                cache,
                events: Vec::new(),
                deleted_identity: None,
            }
        }

        /// Events in near time order over ~9 days, committed in batches (one segment each),
        /// with late events (up to two days old), shared timestamps and events at midnight.
        fn load(&mut self, rng: &mut fastrand::Rng, count: usize) {
            let mut clock = START_US + 3_600_000_000;
            let mut in_batch = 0;
            let mut batch = rng.usize(20..120);
            for seq in 0..count {
                clock += rng.i64(0..40 * 60_000_000);
                let timestamp = match rng.u8(0..20) {
                    0 | 1 => clock - rng.i64(0..2 * DAY_US),
                    2 => self.events.last().map_or(clock, |e| e.timestamp_us),
                    3 => clock.div_euclid(DAY_US) * DAY_US,
                    _ => clock,
                };
                let event = random_event(rng, seq, timestamp);
                let doc = self
                    .fields
                    .document(&event, seq as u64, b"{}", ChainLink::GENESIS);
                self.writer.add_document(doc).unwrap();
                self.events.push(event);
                in_batch += 1;
                if in_batch == batch {
                    self.commit();
                    in_batch = 0;
                    batch = rng.usize(20..120);
                }
            }
            self.commit();
        }

        fn commit(&mut self) {
            self.writer.commit().unwrap();
            self.reader.reload().unwrap();
        }

        fn delete_identity(&mut self, identity: &str) {
            self.writer
                .delete_term(Term::from_field_text(self.fields.identity_id, identity));
            self.deleted_identity = Some(identity.to_string());
            self.commit();
        }

        fn merge_all(&mut self) {
            let ids = self.index.searchable_segment_ids().unwrap();
            self.writer.merge(&ids).wait().unwrap();
            self.commit();
        }

        /// The brute-force answer: every live event of `tenant` in `window` passing `keep`.
        fn model(
            &self,
            tenant: &str,
            window: Window,
            keep: impl Fn(&AuditEvent) -> bool,
        ) -> Aggregate {
            let mut aggregate = Aggregate::default();
            let (mut by_identity, mut by_path) = (HashMap::new(), HashMap::new());
            let live = self.events.iter().filter(|event| {
                event.tenant_id == tenant
                    && window.contains(Some(event.timestamp_us))
                    && self.deleted_identity.as_deref() != Some(event.identity_id.as_str())
                    && keep(event)
            });
            for event in live {
                aggregate.total += 1;
                aggregate.successful += u64::from(event.success);
                *aggregate.by_action.entry(event.action).or_default() += 1;
                *by_identity.entry(event.identity_id.clone()).or_default() += 1;
                if let Some(path) = &event.secret_path {
                    *by_path.entry(path.clone()).or_default() += 1;
                }
                let ts = Some(event.timestamp_us);
                aggregate.first_us = min_option(aggregate.first_us, ts);
                aggregate.last_us = aggregate.last_us.max(ts);
                if event.action == Action::Read {
                    aggregate.last_read_us = aggregate.last_read_us.max(ts);
                }
            }
            aggregate.by_identity = KeyCounts::from_map(&by_identity);
            aggregate.by_path = KeyCounts::from_map(&by_path);
            aggregate
        }

        /// The query of `tenant` and `filters`, its tenant from the cache's maps.
        fn query(&self, tenant: &str, filters: &LogFilters) -> Box<dyn tantivy::query::Query> {
            build_query(
                &self.index,
                &self.fields,
                tenant,
                filters,
                Some(&self.cache),
            )
            .unwrap()
        }

        /// Compares both ways of summarizing with the model over random windows.
        fn check(&self, rng: &mut fastrand::Rng, windows: usize) {
            let searcher = self.reader.searcher();
            // Segments replaced by deletes or merges are dropped by the reader's collection
            // thread (every second); run it now.
            self.cache.garbage_collect(&[searcher.generation()]);
            assert_eq!(
                self.cache.cached_segments(),
                searcher.segment_readers().len(),
                "the warmer built every segment, the collection dropped the rest"
            );
            for _ in 0..windows {
                let window = random_window(rng);
                let tenant = TENANTS[rng.usize(0..TENANTS.len())];
                let expected = self.model(tenant, window, |_| true);
                let summary = summarize_tenant(&self.cache, &searcher, tenant, window).unwrap();
                assert_eq!(summary, expected, "{tenant} {window:?}");
                let filters = LogFilters::default();
                let query = self.query(tenant, &filters);
                let walked = aggregate_matching(
                    &self.cache,
                    &searcher,
                    tenant,
                    query.as_ref(),
                    window,
                    Breakdowns::ALL,
                )
                .unwrap();
                assert_eq!(walked, expected, "walk {tenant} {window:?}");
                self.check_trails(rng, &searcher, tenant, window);
            }
        }

        fn check_trails(
            &self,
            rng: &mut fastrand::Rng,
            searcher: &Searcher,
            tenant: &str,
            window: Window,
        ) {
            let identity = format!("user:u{}", rng.u8(0..6));
            let path = format!("a/p{}", rng.u8(0..8));
            let trails = [
                (
                    LogFilters {
                        identity_id: Some(identity.clone()),
                        ..LogFilters::default()
                    },
                    self.model(tenant, window, |event| event.identity_id == identity),
                ),
                (
                    LogFilters {
                        secret_path: Some(path.clone()),
                        ..LogFilters::default()
                    },
                    self.model(tenant, window, |event| {
                        event.secret_path.as_deref() == Some(path.as_str())
                    }),
                ),
            ];
            for (filters, expected) in trails {
                let query = self.query(tenant, &filters);
                let walk = |breakdowns| {
                    aggregate_matching(
                        &self.cache,
                        searcher,
                        tenant,
                        query.as_ref(),
                        window,
                        breakdowns,
                    )
                    .unwrap()
                };
                assert_eq!(
                    walk(Breakdowns::ALL),
                    expected,
                    "trail {filters:?} {tenant} {window:?}"
                );
                // A trail's own breakdown: the same aggregate without the other key's counts.
                let mut without_identities = expected.clone();
                without_identities.by_identity = KeyCounts::default();
                assert_eq!(walk(Breakdowns::PATHS), without_identities, "{filters:?}");
                let mut without_paths = expected.clone();
                without_paths.by_path = KeyCounts::default();
                assert_eq!(walk(Breakdowns::IDENTITIES), without_paths, "{filters:?}");
            }
        }
    }

    fn random_event(rng: &mut fastrand::Rng, seq: usize, timestamp_us: i64) -> AuditEvent {
        let action = Action::ALL[rng.usize(0..Action::ALL.len())];
        AuditEvent {
            id: format!("e{seq}"),
            tenant_id: TENANTS[[0, 0, 0, 1, 1, 2][rng.usize(0..6)]].to_string(),
            timestamp_us,
            action,
            secret_path: (rng.u8(0..5) > 0).then(|| format!("a/p{}", rng.u8(0..8))),
            identity_type: IdentityType::User,
            identity_id: format!("user:u{}", rng.u8(0..6)),
            source_ip: None,
            user_agent: None,
            success: rng.u8(0..4) > 0,
            duration_ms: None,
            request_id: None,
            extra_data: Default::default(),
        }
    }

    /// Windows that cut days, cover whole days, are empty, or lie beyond the data.
    fn random_window(rng: &mut fastrand::Rng) -> Window {
        let mut instant = || match rng.u8(0..4) {
            0 => START_US + rng.i64(-1..12) * DAY_US,
            1 => START_US + rng.i64(-DAY_US..12 * DAY_US),
            _ => START_US + rng.i64(0..10 * DAY_US),
        };
        let (a, b) = (instant(), instant());
        let (from, to) = (a.min(b), a.max(b));
        match rng.u8(0..8) {
            0 => Window::default(),
            1 => Window {
                from_us: Some(from),
                to_us: None,
            },
            2 => Window {
                from_us: None,
                to_us: Some(to),
            },
            3 => Window {
                from_us: Some(from),
                to_us: Some(from),
            },
            4 => Window {
                from_us: Some(START_US + 20 * DAY_US),
                to_us: None,
            },
            _ => Window {
                from_us: Some(from),
                to_us: Some(to),
            },
        }
    }

    #[test]
    fn partial_summaries_equal_the_direct_computation() {
        for seed in [1, 2, 3] {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut fixture = Fixture::new();
            fixture.load(&mut rng, 1500);
            assert!(fixture.reader.searcher().segment_readers().len() > 5);
            fixture.check(&mut rng, 150);
            fixture.delete_identity("user:u3");
            fixture.check(&mut rng, 100);
            fixture.merge_all();
            let searcher = fixture.reader.searcher();
            assert_eq!(searcher.segment_readers().len(), 1);
            fixture.check(&mut rng, 150);
        }
    }

    #[test]
    fn a_window_cutting_a_day_recounts_only_that_day() {
        let partial = DayPartial {
            day: 10,
            first_doc: 0,
            last_doc: 5,
            total: 3,
            successful: 3,
            actions: [0; ACTION_SLOTS],
            first_us: Some(10 * DAY_US + 100),
            last_us: Some(10 * DAY_US + 200),
            last_read_us: None,
            identities: Box::new([]),
            paths: Box::new([]),
        };
        let window = |from: Option<i64>, to: Option<i64>| Window {
            from_us: from,
            to_us: to,
        };
        // Cut at midnight, but every event of the day is inside: whole.
        assert_eq!(
            partial.overlap(window(Some(10 * DAY_US + 50), None)),
            Overlap::Whole
        );
        assert_eq!(
            partial.overlap(window(Some(10 * DAY_US + 150), None)),
            Overlap::Part
        );
        assert_eq!(
            partial.overlap(window(None, Some(10 * DAY_US + 200))),
            Overlap::Part
        );
        assert_eq!(
            partial.overlap(window(None, Some(10 * DAY_US + 201))),
            Overlap::Whole
        );
        assert_eq!(
            partial.overlap(window(Some(10 * DAY_US + 201), None)),
            Overlap::None
        );
        assert_eq!(
            partial.overlap(window(Some(10 * DAY_US + 150), Some(10 * DAY_US + 150))),
            Overlap::None
        );
    }
}

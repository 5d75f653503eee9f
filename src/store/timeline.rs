//! Time bounds of every block of documents, per segment: what lets a search visit the index
//! newest first and stop early.
//!
//! Doc ids inside a segment follow arrival, and audit events arrive almost in time order, so a
//! run of [`BLOCK_DOCS`] consecutive documents covers a narrow time range. Each segment's
//! blocks get their minimum and maximum timestamp once (segments never change; a merge makes a
//! new segment with its own entry), and searches prune and order blocks by them. Late events
//! only widen their block's range: pruning stays exact, just less effective.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use tantivy::columnar::{Column, StrColumn};
use tantivy::index::SegmentId;
use tantivy::{DocId, Searcher, SearcherGeneration, SegmentReader, Warmer};

use super::bloom::BloomFilter;
use super::documents::SegmentDocuments;
use super::scan::{FastColumns, ScanDirectory};
use super::schema::fast;

/// Documents per block.
pub const BLOCK_DOCS: u32 = 1024;

/// The time bounds of one block: timestamps in microseconds, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpan {
    pub min_us: i64,
    pub max_us: i64,
}

/// The blocks of one segment, in doc id order; block `b` holds docs
/// `[b * BLOCK_DOCS, min((b + 1) * BLOCK_DOCS, max_doc))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTimeline {
    pub max_doc: DocId,
    pub blocks: Vec<BlockSpan>,
    /// Block numbers by newest `max_us` first (ties: higher block first): the order in which a
    /// newest-first search may find its best events.
    pub newest_first: Vec<u32>,
    /// Block numbers by oldest `min_us` first (ties: higher block first).
    pub oldest_first: Vec<u32>,
}

impl SegmentTimeline {
    /// Reads the timestamps of a segment (its `columns`, `max_doc` documents) once.
    pub fn build(columns: &FastColumns, max_doc: DocId) -> tantivy::Result<SegmentTimeline> {
        let timestamps = columns.i64(fast::TIMESTAMP)?;
        Ok(Self::from_column(&timestamps, max_doc))
    }

    fn from_column(timestamps: &Column<i64>, max_doc: DocId) -> SegmentTimeline {
        let mut blocks = Vec::with_capacity(max_doc.div_ceil(BLOCK_DOCS) as usize);
        let mut docs = Vec::with_capacity(BLOCK_DOCS as usize);
        let mut values = vec![None; BLOCK_DOCS as usize];
        let mut start = 0;
        while start < max_doc {
            let end = start.saturating_add(BLOCK_DOCS).min(max_doc);
            docs.clear();
            docs.extend(start..end);
            let values = &mut values[..docs.len()];
            timestamps.first_vals(&docs, values);
            let present = values.iter().flatten();
            let span = present.fold(None, |span: Option<BlockSpan>, &value| {
                Some(match span {
                    None => BlockSpan {
                        min_us: value,
                        max_us: value,
                    },
                    Some(span) => BlockSpan {
                        min_us: span.min_us.min(value),
                        max_us: span.max_us.max(value),
                    },
                })
            });
            // A block without timestamps (none is ever written so) can match nothing in time:
            // an empty range keeps it out of every search.
            blocks.push(span.unwrap_or(BlockSpan {
                min_us: i64::MAX,
                max_us: i64::MIN,
            }));
            start = end;
        }
        Self::from_blocks(max_doc, blocks)
    }

    /// The timeline of `blocks`, with its two walk orders.
    pub fn from_blocks(max_doc: DocId, blocks: Vec<BlockSpan>) -> SegmentTimeline {
        let numbers = || (0..blocks.len() as u32).rev().collect::<Vec<u32>>();
        // Stable sorts of the numbers in descending order: equal spans keep higher blocks first.
        let mut newest_first = numbers();
        newest_first.sort_by_key(|block| std::cmp::Reverse(blocks[*block as usize].max_us));
        let mut oldest_first = numbers();
        oldest_first.sort_by_key(|block| blocks[*block as usize].min_us);
        SegmentTimeline {
            max_doc,
            blocks,
            newest_first,
            oldest_first,
        }
    }

    /// The docs of block `block`.
    pub fn docs(&self, block: usize) -> std::ops::Range<DocId> {
        let start = (block as u32).saturating_mul(BLOCK_DOCS).min(self.max_doc);
        start..start.saturating_add(BLOCK_DOCS).min(self.max_doc)
    }
}

/// The fast-field columns every search of a segment may check, opened once per segment:
/// opening a column looks it up in the segment's fast-field directory (a block of a compressed
/// dictionary, tens of microseconds), and a search used to open 2–5 of them in every segment it
/// visited.
pub struct SearchColumns {
    pub timestamps: Column<i64>,
    pub seqs: Column<u64>,
    pub actions: Column<u64>,
    /// `secret_path` as term ordinals with their dictionary; `None` if no document has one.
    pub paths: Option<StrColumn>,
    /// The path ordinals of the prefixes searched lately, oldest first (see
    /// [`Self::path_prefix_ords`]).
    prefix_ords: Mutex<Vec<(Box<str>, Range<u64>)>>,
}

/// Path prefixes whose ordinal ranges a segment remembers: users and dashboards come back to a
/// few prefixes, and past this many the oldest is forgotten (a prefix is at most 512 bytes).
const REMEMBERED_PREFIXES: usize = 16;

impl SearchColumns {
    /// Opens the columns of `segment`.
    pub fn open(segment: &SegmentReader) -> tantivy::Result<SearchColumns> {
        let fast_fields = segment.fast_fields();
        Ok(SearchColumns {
            timestamps: fast_fields.i64(fast::TIMESTAMP)?,
            seqs: fast_fields.u64(fast::SEQ)?,
            actions: fast_fields.u64(fast::ACTION)?,
            paths: fast_fields.str(fast::SECRET_PATH)?,
            prefix_ords: Mutex::new(Vec::new()),
        })
    }

    /// The term ordinals `[start, end)` of the segment's paths that start with `prefix`; empty
    /// when no document has a path. Finding them decompresses and scans two blocks of the
    /// path dictionary (about a fifth of a prefix page's time), so they are remembered.
    pub fn path_prefix_ords(&self, prefix: &str) -> std::io::Result<Range<u64>> {
        let Some(paths) = &self.paths else {
            return Ok(0..0);
        };
        let remembered = self.prefix_ords.lock();
        if let Some((_, ords)) = remembered.iter().find(|(known, _)| &**known == prefix) {
            return Ok(ords.clone());
        }
        drop(remembered);
        let ords = super::search::prefix_ords(paths.dictionary(), prefix)?;
        let mut remembered = self.prefix_ords.lock();
        if remembered.len() >= REMEMBERED_PREFIXES {
            remembered.remove(0);
        }
        remembered.push((prefix.into(), ords.clone()));
        Ok(ords)
    }
}

/// The timelines of the segments searchers see. Registered as a Tantivy [`Warmer`] on the
/// query reader, so a new or merged segment's timeline is built when the reader reloads (after
/// a commit or a merge), not by the first search that meets it; a segment missing anyway (a
/// reader without the warmer) is built on first use. Cheap: 24 bytes per 1,024 documents (the
/// bounds and the two walk orders).
///
/// It keeps each segment's [`SearchColumns`] too, for as long as the segment is live, and a
/// Bloom filter of the segment's `request_id` values (10 bits per distinct value): an exact
/// `request_id` search skips every segment the filter rules out, instead of probing the
/// segment's compressed `request_id` dictionary (a zstd block decompressed per probe, which
/// made the lookup grow with the number of segments). And the segment's [`SegmentDocuments`], which
/// pages read stored events with.
///
/// Timelines and filters read every value of their columns: they read them through `scan`, so
/// that the pages they touch do not stay mapped (see [`super::scan`]).
#[derive(Default)]
pub struct Timelines {
    scan: ScanDirectory,
    cache: PerSegment<SegmentTimeline>,
    columns: PerSegment<SearchColumns>,
    request_ids: PerSegment<BloomFilter>,
    stores: PerSegment<SegmentDocuments>,
}

/// Decompressed document-store blocks a segment's [`SegmentDocuments`] keeps (Tantivy's default for
/// a searcher's readers): a page's events spread over the history must not decompress their
/// blocks again on every request.
const STORE_CACHE_BLOCKS: usize = 100;

/// Values built once per segment (segments never change) and kept while the segment is live.
struct PerSegment<T>(Mutex<HashMap<SegmentId, Arc<T>>>);

impl<T> Default for PerSegment<T> {
    fn default() -> Self {
        PerSegment(Mutex::new(HashMap::new()))
    }
}

impl<T> PerSegment<T> {
    /// The value of `segment`, built now if missing. Built outside the lock: two first users
    /// may both build it, never wait on each other.
    fn get_or_build(
        &self,
        segment: &SegmentReader,
        build: impl FnOnce(&SegmentReader) -> tantivy::Result<T>,
    ) -> tantivy::Result<Arc<T>> {
        let id = segment.segment_id();
        if let Some(value) = self.0.lock().get(&id) {
            return Ok(value.clone());
        }
        let value = Arc::new(build(segment)?);
        self.0.lock().insert(id, value.clone());
        Ok(value)
    }

    fn retain_live(&self, live: &HashSet<SegmentId>) {
        self.0.lock().retain(|id, _| live.contains(id));
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    #[cfg(test)]
    fn contains(&self, id: &SegmentId) -> bool {
        self.0.lock().contains_key(id)
    }
}

impl std::fmt::Debug for Timelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timelines")
            .field("segments", &self.cache.len())
            .finish_non_exhaustive()
    }
}

impl Timelines {
    /// Timelines whose builds read segments through `scan`.
    pub fn scanning(scan: ScanDirectory) -> Timelines {
        Timelines {
            scan,
            ..Timelines::default()
        }
    }

    /// The timeline of every segment of `searcher`, in segment ordinal order.
    pub fn of(&self, searcher: &Searcher) -> tantivy::Result<Vec<Arc<SegmentTimeline>>> {
        searcher
            .segment_readers()
            .iter()
            .map(|segment| {
                self.cache.get_or_build(segment, |segment| {
                    SegmentTimeline::build(&self.scan.columns(segment)?, segment.max_doc())
                })
            })
            .collect()
    }

    /// The search columns of `segment`, opened on first use.
    pub fn columns(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SearchColumns>> {
        self.columns.get_or_build(segment, SearchColumns::open)
    }

    /// Whether `segment` may hold an event with this `request_id` (`false`: certainly not).
    pub fn may_hold_request_id(
        &self,
        segment: &SegmentReader,
        request_id: &str,
    ) -> tantivy::Result<bool> {
        let filter = self.request_id_filter(segment)?;
        Ok(filter.may_contain(request_id))
    }

    /// The `request_id` filter of `segment`, built now if missing.
    fn request_id_filter(&self, segment: &SegmentReader) -> tantivy::Result<Arc<BloomFilter>> {
        self.request_ids.get_or_build(segment, |segment| {
            request_id_filter(&self.scan.columns(segment)?)
        })
    }

    /// The document-store reader pages read `segment`'s stored events with (raw bytes, see
    /// [`super::source::stored_bytes`]), opened on first use and kept while the segment lives.
    pub fn store(&self, segment: &SegmentReader) -> tantivy::Result<Arc<SegmentDocuments>> {
        self.stores.get_or_build(segment, |segment| {
            Ok(SegmentDocuments::open(segment, STORE_CACHE_BLOCKS)?)
        })
    }
}

/// A filter of every `request_id` value of a segment (its `columns`).
fn request_id_filter(columns: &FastColumns) -> tantivy::Result<BloomFilter> {
    let Some(column) = columns.str(fast::REQUEST_ID)? else {
        return Ok(BloomFilter::with_capacity(0));
    };
    let mut filter = BloomFilter::with_capacity(column.num_terms());
    let mut terms = column.dictionary().stream()?;
    while terms.advance() {
        filter.insert(&String::from_utf8_lossy(terms.key()));
    }
    Ok(filter)
}

impl Warmer for Timelines {
    fn warm(&self, searcher: &Searcher) -> tantivy::Result<()> {
        for segment in searcher.segment_readers() {
            self.columns(segment)?;
            self.request_id_filter(segment)?;
        }
        self.of(searcher).map(drop)
    }

    fn garbage_collect(&self, live_generations: &[&SearcherGeneration]) {
        let live: HashSet<SegmentId> = live_generations
            .iter()
            .flat_map(|generation| generation.segments().keys().copied())
            .collect();
        self.cache.retain_live(&live);
        self.columns.retain_live(&live);
        self.request_ids.retain_live(&live);
        self.stores.retain_live(&live);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_bounds_of_their_docs() {
        let values: Vec<i64> = (0..2500).map(|doc| 10 * doc - (doc % 7)).collect();
        let column = tantivy::columnar::Column::build_empty_column(0);
        assert!(SegmentTimeline::from_column(&column, 0).blocks.is_empty());
        let index = test_index(&values);
        let searcher = index.reader().unwrap().searcher();
        let segment = searcher.segment_reader(0);
        let timeline =
            SegmentTimeline::build(&FastColumns::mapped(segment), segment.max_doc()).unwrap();
        assert_eq!(timeline.blocks.len(), 3);
        for (block, span) in timeline.blocks.iter().enumerate() {
            let docs = timeline.docs(block);
            let slice = &values[docs.start as usize..docs.end as usize];
            assert_eq!(span.min_us, *slice.iter().min().unwrap());
            assert_eq!(span.max_us, *slice.iter().max().unwrap());
        }
        assert_eq!(timeline.docs(2), 2048..2500);
    }

    #[test]
    fn the_reader_builds_timelines_on_reload_and_drops_dead_segments() {
        let index = test_index(&[1, 2, 3]);
        let timelines = Arc::new(Timelines::default());
        let warmer: std::sync::Weak<dyn Warmer> = Arc::downgrade(&timelines) as _;
        let reader = index
            .reader_builder()
            .warmers(vec![warmer])
            .try_into()
            .unwrap();
        let reader: tantivy::IndexReader = reader;
        let searcher = reader.searcher();
        let id = searcher.segment_reader(0).segment_id();
        assert!(timelines.cache.contains(&id), "built before any search");
        assert!(timelines.request_ids.contains(&id));
        timelines.garbage_collect(&[]);
        assert_eq!(timelines.cache.len(), 0);
        assert_eq!(timelines.request_ids.len(), 0);
    }

    #[test]
    fn request_id_filters_hold_every_value_of_their_segment() {
        let (index, fields, mut writer) = empty_index();
        for segment in 0..2 {
            for i in 0..1000 {
                let mut doc = tantivy::TantivyDocument::default();
                doc.add_text(fields.request_id, format!("req_{segment}_{i}"));
                writer.add_document(doc).unwrap();
            }
            writer.commit().unwrap();
        }
        let searcher = index.reader().unwrap().searcher();
        let timelines = Timelines::default();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            // Which values this segment holds, from its own column.
            let column = segment
                .fast_fields()
                .str(fast::REQUEST_ID)
                .unwrap()
                .unwrap();
            let holds = |value: &str| column.dictionary().term_ord(value).unwrap().is_some();
            let (mine, others): (Vec<String>, Vec<String>) = (0..2)
                .flat_map(|s| (0..1000).map(move |i| format!("req_{s}_{i}")))
                .partition(|value| holds(value));
            assert_eq!(mine.len(), 1000, "segment {ord}");
            for value in &mine {
                assert!(timelines.may_hold_request_id(segment, value).unwrap());
            }
            let false_positives = others
                .iter()
                .filter(|value| timelines.may_hold_request_id(segment, value).unwrap())
                .count();
            assert!(false_positives < 50, "{false_positives}");
        }
    }

    #[test]
    fn remembered_prefix_ordinals_are_the_dictionarys_own() {
        let (index, fields, mut writer) = empty_index();
        let paths: Vec<String> = (0..3000)
            .map(|i| format!("env{}/team{}/secret{i}", i % 3, i % 40))
            .collect();
        for path in &paths {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_text(fields.secret_path, path);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        let columns = SearchColumns::open(searcher.segment_reader(0)).unwrap();
        let dictionary = columns.paths.as_ref().unwrap().dictionary();
        let count = |prefix: &str| paths.iter().filter(|p| p.starts_with(prefix)).count();
        let prefixes: Vec<String> = (0..40)
            .map(|t| format!("env{}/team{t}/", t % 3))
            .chain([
                "env1/".into(),
                "env9/".into(),
                "e".into(),
                "env2/team1".into(),
            ])
            .collect();
        // Twice round, more prefixes than are remembered: first and forgotten lookups both.
        for _ in 0..2 {
            for prefix in &prefixes {
                let ords = columns.path_prefix_ords(prefix).unwrap();
                assert_eq!(
                    ords,
                    super::super::search::prefix_ords(dictionary, prefix).unwrap()
                );
                // The end may be unbounded (u64::MAX) past the last term.
                let end = ords.end.min(dictionary.num_terms() as u64);
                assert_eq!(
                    end.saturating_sub(ords.start),
                    count(prefix) as u64,
                    "{prefix}"
                );
                assert_eq!(
                    columns.path_prefix_ords(prefix).unwrap(),
                    ords,
                    "remembered"
                );
            }
        }
        assert_eq!(columns.prefix_ords.lock().len(), REMEMBERED_PREFIXES);
    }

    /// An index in memory with the store's schema, and a one-thread writer.
    fn empty_index() -> (
        tantivy::Index,
        crate::store::schema::Fields,
        tantivy::IndexWriter,
    ) {
        let (schema, fields) = crate::store::schema::build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        let writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
        (index, fields, writer)
    }

    fn test_index(values: &[i64]) -> tantivy::Index {
        let (index, fields, mut writer) = empty_index();
        for value in values {
            let mut doc = tantivy::TantivyDocument::default();
            doc.add_i64(fields.timestamp, *value);
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        index
    }
}

//! Keyset search: the top events of a query ordered by (timestamp, sequence), found by
//! visiting the index newest first (or oldest first) and stopping as soon as nothing left can
//! make the page.
//!
//! A search is a [`SearchPlan`]: a Tantivy query over postings (tenant, identity, exact path,
//! outcome, request id, free text) that drives the walk, and a [`ColumnFilter`] checked per
//! document on fast columns (time window, cursor, snapshot, actions, path prefix, address
//! range). The walk goes block by block (see [`super::timeline`]): blocks are taken in order of
//! the best position they could hold, each segment's in windows that double in size, and the
//! search stops once it holds `limit + 1` events that rank above everything the remaining
//! blocks could contain (the extra one tells whether another page exists). Its cost follows the
//! page, not the tenant's history. A segment where the query matches few documents is collected
//! in one pass instead.
//!
//! Ranks pack (timestamp, sequence) into one `u128`, the sequence number breaking timestamp
//! ties, so late events and shared timestamps keep their exact order.

use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv6Addr;
use std::ops::{Bound, Range, RangeInclusive};
use std::sync::Arc;

use tantivy::columnar::Column;
use tantivy::fastfield::AliveBitSet;
use tantivy::query::{EnableScoring, Query, Scorer, Weight};
use tantivy::{
    DocAddress, DocId, Searcher, SegmentOrdinal, SegmentReader, TERMINATED, TantivyDocument,
};

use super::chain::ChainColumns;
use super::documents::SegmentDocuments;
use super::schema::{Fields, fast};
use super::source::{SourceColumns, stored_bytes};
use super::timeline::{BlockSpan, SearchColumns, SegmentTimeline, Timelines};
use crate::event::AuditEvent;
use crate::integrity::chain::ChainLink;

/// A position in the total order of events: timestamp, then ingest sequence.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SortKey {
    pub timestamp_us: i64,
    pub seq: u64,
}

/// Page direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    NewestFirst,
    OldestFirst,
}

impl SortKey {
    /// Larger rank = earlier in the page for `direction`.
    fn rank(self, direction: Direction) -> u128 {
        // Flipping the sign bit makes the i64 order agree with the unsigned order.
        let timestamp_bits = (self.timestamp_us as u64) ^ (1 << 63);
        let ascending = (u128::from(timestamp_bits) << 64) | u128::from(self.seq);
        match direction {
            Direction::NewestFirst => ascending,
            Direction::OldestFirst => !ascending,
        }
    }

    /// The inverse of [`SortKey::rank`].
    fn from_rank(rank: u128, direction: Direction) -> SortKey {
        let ascending = match direction {
            Direction::NewestFirst => rank,
            Direction::OldestFirst => !rank,
        };
        SortKey {
            timestamp_us: (((ascending >> 64) as u64) ^ (1 << 63)) as i64,
            seq: ascending as u64,
        }
    }
}

/// Errors of a search.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("failed to search the index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("stored event {seq} cannot be decoded: {source}")]
    Decode {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

/// One page of events.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<(SortKey, AuditEvent)>,
    /// Whether more events follow the last one of this page.
    pub has_more: bool,
}

/// What a search checks per document on fast columns, besides the driving query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnFilter {
    /// Inclusive lower bound of the timestamp, microseconds.
    pub from_us: Option<i64>,
    /// Exclusive upper bound of the timestamp, microseconds.
    pub to_us: Option<i64>,
    /// Only events ingested before this sequence number.
    pub before_seq: Option<u64>,
    /// Events older than `.0` (microseconds) only when ingested at or after sequence `.1`
    /// (a scheduled export run's late events; see `LogFilters::late`).
    pub late: Option<(i64, u64)>,
    /// Any of these action ordinals (bit `n` = ordinal `n`); `None` = all.
    pub actions: Option<u64>,
    /// Plain string prefix of `secret_path`.
    pub path_prefix: Option<String>,
    /// Inclusive range of source addresses (IPv4 mapped into IPv6).
    pub source_ip: Option<RangeInclusive<Ipv6Addr>>,
    /// The exact `request_id` the query requires: segments whose filter rules it out are not
    /// visited (the query itself still checks every document).
    pub request_id: Option<String>,
}

/// A search: the driving query and the per-document column checks.
pub struct SearchPlan {
    pub query: Box<dyn Query>,
    pub filter: ColumnFilter,
}

/// Runs `plan` and returns up to `limit` events strictly after `after` in `direction`.
pub fn top_by_time(
    searcher: &Searcher,
    timelines: &Timelines,
    fields: &Fields,
    plan: &SearchPlan,
    direction: Direction,
    after: Option<SortKey>,
    limit: usize,
) -> Result<Page, SearchError> {
    let (hits, has_more) = top_hits(searcher, timelines, plan, direction, after, limit)?;
    let addresses: Vec<DocAddress> = hits.iter().map(|(_, address)| *address).collect();
    let sources = load_sources(searcher, fields, &addresses)?;
    let mut events = Vec::with_capacity(hits.len());
    for ((key, _), source) in hits.into_iter().zip(sources) {
        events.push((key, decode_event(&source, key.seq)?));
    }
    Ok(Page { events, has_more })
}

/// One page of events in the API shape (SPEC §2), written straight from their stored sources.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiPage {
    /// The events' API JSON as a JSON array, in page order.
    pub json: Vec<u8>,
    /// How many events the page holds.
    pub count: usize,
    /// The position of the page's last event.
    pub last: Option<SortKey>,
    /// Whether more events follow the last one of this page.
    pub has_more: bool,
}

/// Runs `plan` like [`top_by_time`], but writes each event's API JSON from its stored source
/// (see [`crate::event::api_json`]) instead of decoding it: the bytes are the same. The work
/// runs inline until `budget` is spent, the rest where the budget hands it (see [`Budget`]).
#[allow(clippy::too_many_arguments)]
pub fn top_api_json(
    searcher: &Searcher,
    timelines: &Timelines,
    fields: &Fields,
    plan: &SearchPlan,
    direction: Direction,
    after: Option<SortKey>,
    limit: usize,
    budget: &mut Budget<'_>,
) -> Result<ApiPage, SearchError> {
    let weight = plan
        .query
        .weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut walk = Walk::start(
        searcher,
        timelines,
        weight.as_ref(),
        &plan.filter,
        direction,
        after,
        limit,
    )?;
    // One drive for the walk and the page: once handed off, the page is written there too.
    let (mut hits, mut has_more, mut walking) = (Vec::new(), false, true);
    let mut json = Vec::new();
    let mut written = 0;
    let mut readers = PageReaders::default();
    budget.drive::<SearchError>(|| {
        if walking {
            if let Some(work) = walk.step()? {
                return Ok(Some(work));
            }
            walking = false;
            (hits, has_more) = walk.finish(limit);
            json.reserve(2 + hits.len() * 512);
            json.push(b'[');
        }
        let Some((key, address)) = hits.get(written) else {
            return Ok(None);
        };
        if written > 0 {
            json.push(b',');
        }
        let readers = readers.of(searcher, timelines, address.segment_ord)?;
        write_api_event(searcher, readers, fields, *address, key.seq, &mut json)?;
        written += 1;
        Ok(Some(WORK_STORED_DOC))
    })?;
    json.push(b']');
    Ok(ApiPage {
        json,
        count: hits.len(),
        last: hits.last().map(|(key, _)| *key),
        has_more,
    })
}

/// What a handler on an async runtime's worker thread lets a search do inline: up to a budget
/// of work, then the rest through the hand-off (e.g. `tokio::task::block_in_place`). A small
/// page never pays the hand-off (a thread wake-up, about as much as the page itself), and a
/// long search still never stalls the worker's other tasks for long.
///
/// Work is counted in documents scanned; a segment's first visit and a stored document written
/// count as [`WORK_SEGMENT`] and [`WORK_STORED_DOC`].
pub struct Budget<'a> {
    left: u64,
    handoff: Option<&'a Handoff<'a>>,
}

/// Runs the work it is given somewhere it may block, before it returns.
pub type Handoff<'a> = dyn Fn(&mut dyn FnMut()) + 'a;

/// The work of opening a segment for a search (its scorers and columns), in scanned documents.
pub const WORK_SEGMENT: u64 = 256;
/// The work of loading and writing one stored document, in scanned documents.
pub const WORK_STORED_DOC: u64 = 48;

impl Budget<'_> {
    /// No budget: everything runs where the search was called.
    pub fn unbounded() -> Budget<'static> {
        Budget {
            left: u64::MAX,
            handoff: None,
        }
    }

    /// `work` units inline, then the rest through `handoff`, which must run the work it is
    /// given before it returns.
    pub fn inline<'a>(work: u64, handoff: &'a Handoff<'a>) -> Budget<'a> {
        Budget {
            left: work,
            handoff: Some(handoff),
        }
    }

    /// Runs `step` until it returns `None`, each `Some(work)` spending that much of the budget;
    /// once the budget is spent, the remaining steps run through the hand-off.
    fn drive<E>(&mut self, mut step: impl FnMut() -> Result<Option<u64>, E>) -> Result<(), E> {
        loop {
            if self.left == 0
                && let Some(handoff) = self.handoff.take()
            {
                let mut result = Ok(());
                handoff(&mut || {
                    result = (|| {
                        while step()?.is_some() {}
                        Ok(())
                    })();
                });
                return result;
            }
            match step()? {
                None => return Ok(()),
                Some(work) => self.left = self.left.saturating_sub(work.max(1)),
            }
        }
    }
}

/// The readers of the segment a page wrote its last event from: a page's events come from a
/// few segments in turn, so most events skip the per-segment lookups.
#[derive(Default)]
struct PageReaders {
    segment: Option<(SegmentOrdinal, SegmentReaders)>,
}

/// What a stored event is written from: its segment's documents and source columns.
struct SegmentReaders {
    documents: Arc<SegmentDocuments>,
    columns: Arc<SourceColumns>,
}

impl PageReaders {
    fn of(
        &mut self,
        searcher: &Searcher,
        timelines: &Timelines,
        ordinal: SegmentOrdinal,
    ) -> Result<&SegmentReaders, SearchError> {
        let readers = match self.segment.take() {
            Some((open, readers)) if open == ordinal => readers,
            _ => {
                let segment = searcher.segment_reader(ordinal);
                SegmentReaders {
                    documents: timelines.store(segment)?,
                    columns: SourceColumns::of_segment(segment)?,
                }
            }
        };
        Ok(&self.segment.insert((ordinal, readers)).1)
    }
}

/// Appends the API JSON of the stored event at `address` (`seq` names it in errors), read
/// with its segment's `readers`. The stored source is read in place from the document's raw
/// bytes; a document that form does not cover is read through Tantivy.
fn write_api_event(
    searcher: &Searcher,
    readers: &SegmentReaders,
    fields: &Fields,
    address: DocAddress,
    seq: u64,
    out: &mut Vec<u8>,
) -> Result<(), SearchError> {
    let raw = readers.documents.document(address.doc_id)?;
    let read_through_tantivy;
    let stored = match stored_bytes(&raw, fields.source) {
        Some(stored) => stored,
        None => {
            let document: TantivyDocument = searcher.doc(address)?;
            read_through_tantivy = fields.stored_source(&document).to_vec();
            &read_through_tantivy
        }
    };
    let columns = &readers.columns;
    if columns.write_api(address.doc_id, stored, out)? {
        return Ok(());
    }
    let event = decode_event(&columns.restore(address.doc_id, stored)?, seq)?;
    serde_json::to_writer(out, &event.api()).map_err(|source| SearchError::Decode { seq, source })
}

/// The positions and addresses of up to `limit` events strictly after `after`, and whether
/// more follow; nothing is loaded from the document store.
pub fn top_hits(
    searcher: &Searcher,
    timelines: &Timelines,
    plan: &SearchPlan,
    direction: Direction,
    after: Option<SortKey>,
    limit: usize,
) -> Result<(Vec<(SortKey, DocAddress)>, bool), SearchError> {
    let weight = plan
        .query
        .weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut walk = Walk::start(
        searcher,
        timelines,
        weight.as_ref(),
        &plan.filter,
        direction,
        after,
        limit,
    )?;
    while walk.step()?.is_some() {}
    Ok(walk.finish(limit))
}

/// Loads the stored event of a document.
pub fn load_event(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
    seq: u64,
) -> Result<AuditEvent, SearchError> {
    let source = load_source(searcher, fields, address)?;
    decode_event(&source, seq)
}

/// The stored storage-JSON of a document.
pub fn load_source(
    searcher: &Searcher,
    fields: &Fields,
    address: DocAddress,
) -> Result<Vec<u8>, SearchError> {
    let document: TantivyDocument = searcher.doc(address)?;
    let columns = SourceColumns::of_segment(searcher.segment_reader(address.segment_ord))?;
    Ok(columns.restore(address.doc_id, fields.stored_source(&document))?)
}

/// The storage JSON of several documents, in the order given.
pub fn load_sources(
    searcher: &Searcher,
    fields: &Fields,
    addresses: &[DocAddress],
) -> Result<Vec<Vec<u8>>, SearchError> {
    addresses
        .iter()
        .map(|address| load_source(searcher, fields, *address))
        .collect()
}

/// A document's storage JSON and its chain link.
pub type ChainedSource = (Vec<u8>, Option<ChainLink>);

/// The storage JSON of several documents with the chain link of each, in the order given:
/// what an export writes.
pub fn load_chained_sources(
    searcher: &Searcher,
    fields: &Fields,
    addresses: &[DocAddress],
) -> Result<Vec<ChainedSource>, SearchError> {
    let mut chains: HashMap<u32, ChainColumns> = HashMap::new();
    addresses
        .iter()
        .map(|address| {
            let source = load_source(searcher, fields, *address)?;
            let chain = match chains.entry(address.segment_ord) {
                Entry::Occupied(open) => open.into_mut(),
                Entry::Vacant(slot) => slot.insert(ChainColumns::open(
                    searcher.segment_reader(address.segment_ord),
                )?),
            };
            Ok((source, chain.link(address.doc_id)))
        })
        .collect()
}

/// Decodes a stored event (`seq` names it in the error).
pub fn decode_event(source: &[u8], seq: u64) -> Result<AuditEvent, SearchError> {
    serde_json::from_slice(source).map_err(|source| SearchError::Decode { seq, source })
}

/// A segment where the driving query matches at most this many documents is collected in one
/// pass: cheaper than walking it in windows.
#[cfg(not(test))]
const SPARSE_DOCS: u32 = 8192;
/// Unit tests build segments of a few thousand documents: with the service's threshold they
/// would collect nearly every segment in one pass and never walk one block by block. Their
/// selective queries (request ids, rare paths) still take the one-pass way.
#[cfg(test)]
const SPARSE_DOCS: u32 = 64;
/// Largest window, in blocks: windows double from one block up to this.
const MAX_WINDOW_BLOCKS: usize = 64;

/// The timestamps a search can still accept, inclusive: the filter's window narrowed by the
/// cursor (timestamps equal to the cursor's may still follow it, by sequence).
#[derive(Debug, Clone, Copy)]
struct TimeBounds {
    min_us: i64,
    max_us: i64,
}

impl TimeBounds {
    fn new(filter: &ColumnFilter, direction: Direction, after: Option<SortKey>) -> TimeBounds {
        let mut bounds = TimeBounds {
            min_us: filter.from_us.unwrap_or(i64::MIN),
            max_us: filter.to_us.map_or(i64::MAX, |to| to.saturating_sub(1)),
        };
        match (direction, after) {
            (Direction::NewestFirst, Some(after)) => {
                bounds.max_us = bounds.max_us.min(after.timestamp_us)
            }
            (Direction::OldestFirst, Some(after)) => {
                bounds.min_us = bounds.min_us.max(after.timestamp_us)
            }
            (_, None) => {}
        }
        bounds
    }

    fn overlaps(self, span: BlockSpan) -> bool {
        span.min_us <= self.max_us && span.max_us >= self.min_us && span.min_us <= span.max_us
    }
}

/// The best rank any document of a block with `span` could have.
fn best_rank(span: BlockSpan, direction: Direction) -> u128 {
    let key = match direction {
        Direction::NewestFirst => SortKey {
            timestamp_us: span.max_us,
            seq: u64::MAX,
        },
        Direction::OldestFirst => SortKey {
            timestamp_us: span.min_us,
            seq: 0,
        },
    };
    key.rank(direction)
}

/// A block waiting to be visited; the heap pops the one that could hold the best rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    best_rank: u128,
    segment: usize,
    block: usize,
}

/// The best `keep` ranks seen so far.
///
/// Offers are appended unsorted and the list is cut back to the best `keep` (a linear-time
/// selection) whenever it doubles: a window of documents in ascending doc order improves the
/// page at almost every document, which would make a heap sift on each of them.
struct TopRanks {
    keep: usize,
    hits: Vec<(u128, u32, DocId)>,
    /// Once `keep` hits are held: the worst of them; nothing ranked at or below it can enter.
    floor: Option<u128>,
    /// Offers since the last cut.
    dirty: bool,
}

impl TopRanks {
    fn new(keep: usize) -> TopRanks {
        TopRanks {
            keep,
            hits: Vec::with_capacity(2 * keep),
            floor: None,
            dirty: false,
        }
    }

    /// Whether the page is full and no rank up to `best` could enter it.
    fn cannot_improve_with(&mut self, best: u128) -> bool {
        self.cut();
        self.floor.is_some_and(|floor| best <= floor)
    }

    fn offer(&mut self, rank: u128, segment: u32, doc: DocId) {
        if self.floor.is_some_and(|floor| rank <= floor) {
            return;
        }
        self.hits.push((rank, segment, doc));
        self.dirty = true;
        if self.hits.len() >= 2 * self.keep.max(32) {
            self.cut();
        }
    }

    /// Keeps the best `keep` hits and updates the floor.
    fn cut(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if self.hits.len() > self.keep {
            self.hits
                .select_nth_unstable_by(self.keep - 1, |a, b| b.cmp(a));
            self.hits.truncate(self.keep);
        }
        if self.hits.len() == self.keep {
            self.floor = self.hits.iter().map(|hit| hit.0).min();
        }
    }

    /// Best first; leaves nothing behind.
    fn take_sorted(&mut self) -> Vec<(u128, u32, DocId)> {
        self.cut();
        let mut hits = std::mem::take(&mut self.hits);
        hits.sort_unstable_by(|a, b| b.cmp(a));
        hits
    }
}

/// The state of one search.
struct Walk<'a> {
    searcher: &'a Searcher,
    /// Where each segment's timeline and search columns are kept.
    timelines: &'a Timelines,
    weight: &'a dyn Weight,
    filter: &'a ColumnFilter,
    direction: Direction,
    /// Only documents ranked strictly below this (i.e. after the cursor) qualify.
    below_rank: Option<u128>,
    top: TopRanks,
    segments: Vec<SegmentWalk>,
    bounds: TimeBounds,
    /// Each segment's next block in walk order, best first: taking blocks from the segments'
    /// own orders (see [`SegmentTimeline::newest_first`]) visits them in the order of their
    /// best ranks across all segments, with a heap of one entry per segment instead of one per
    /// block (an exact `request_id` search spent half its time popping the blocks of segments
    /// it had finished).
    blocks: BinaryHeap<Candidate>,
}

/// How far a search has gone in one segment.
struct SegmentWalk {
    timeline: Arc<SegmentTimeline>,
    visited: Vec<bool>,
    /// Blocks the next window of this segment spans.
    window_blocks: usize,
    /// Everything the query matches here has been collected (sparse segments).
    done: bool,
    columns: Option<SegmentColumns>,
    /// Kept for the next window when it lies ahead of this one (oldest first).
    scorer: Option<Box<dyn Scorer>>,
    /// How far the walk has gone in the timeline's walk order of this search's direction.
    next_in_order: usize,
}

impl SegmentWalk {
    fn new(timeline: Arc<SegmentTimeline>) -> SegmentWalk {
        SegmentWalk {
            visited: vec![false; timeline.blocks.len()],
            timeline,
            window_blocks: 1,
            done: false,
            columns: None,
            scorer: None,
            next_in_order: 0,
        }
    }

    /// This segment's next block in walk order that is unvisited and within `bounds`, as
    /// segment `segment`'s candidate; `None` once the segment has nothing left to visit.
    fn next_candidate(
        &mut self,
        segment: usize,
        bounds: &TimeBounds,
        direction: Direction,
    ) -> Option<Candidate> {
        if self.done {
            return None;
        }
        let order = match direction {
            Direction::NewestFirst => &self.timeline.newest_first,
            Direction::OldestFirst => &self.timeline.oldest_first,
        };
        while let Some(&block) = order.get(self.next_in_order) {
            self.next_in_order += 1;
            let (block, span) = (block as usize, self.timeline.blocks[block as usize]);
            if !self.visited[block] && bounds.overlaps(span) {
                return Some(Candidate {
                    best_rank: best_rank(span, direction),
                    segment,
                    block,
                });
            }
        }
        None
    }

    /// The docs of a window of up to `window_blocks` unvisited blocks in walk order, starting
    /// at `block`; marks them visited and doubles the next window.
    fn take_window(
        &mut self,
        block: usize,
        bounds: &TimeBounds,
        direction: Direction,
    ) -> Range<DocId> {
        let (mut first, mut last) = (block, block);
        self.visited[block] = true;
        while last - first + 1 < self.window_blocks {
            let next = match direction {
                Direction::NewestFirst => first.checked_sub(1),
                Direction::OldestFirst => Some(last + 1).filter(|next| *next < self.visited.len()),
            };
            let Some(next) = next.filter(|next| {
                !self.visited[*next] && bounds.overlaps(self.timeline.blocks[*next])
            }) else {
                break;
            };
            self.visited[next] = true;
            first = first.min(next);
            last = last.max(next);
        }
        self.window_blocks = (self.window_blocks * 2).min(MAX_WINDOW_BLOCKS);
        self.timeline.docs(first).start..self.timeline.docs(last).end
    }
}

impl<'a> Walk<'a> {
    /// A search for up to `limit` events strictly after `after`, before it has visited anything.
    fn start(
        searcher: &'a Searcher,
        timelines: &'a Timelines,
        weight: &'a dyn Weight,
        filter: &'a ColumnFilter,
        direction: Direction,
        after: Option<SortKey>,
        limit: usize,
    ) -> Result<Walk<'a>, SearchError> {
        let bounds = TimeBounds::new(filter, direction, after);
        let mut segments = Vec::new();
        let mut blocks = Vec::new();
        for (segment, timeline) in timelines.of(searcher)?.iter().enumerate() {
            let mut walk = SegmentWalk::new(timeline.clone());
            let ruled_out = match &filter.request_id {
                Some(request_id) => {
                    let reader = searcher.segment_reader(segment as u32);
                    !timelines.may_hold_request_id(reader, request_id)?
                }
                None => false,
            };
            if !ruled_out {
                blocks.extend(walk.next_candidate(segment, &bounds, direction));
            }
            segments.push(walk);
        }
        Ok(Walk {
            searcher,
            timelines,
            weight,
            filter,
            direction,
            below_rank: after.map(|key| key.rank(direction)),
            top: TopRanks::new(limit + 1),
            segments,
            bounds,
            blocks: BinaryHeap::from(blocks),
        })
    }

    /// Visits the next block that could still improve the page: `Some(work done)`, or `None`
    /// once nothing left can.
    fn step(&mut self) -> Result<Option<u64>, SearchError> {
        let Some(next) = self.blocks.pop() else {
            return Ok(None);
        };
        if self.top.cannot_improve_with(next.best_rank) {
            self.blocks.clear();
            return Ok(None);
        }
        let work = self.visit(next)?;
        let walk = &mut self.segments[next.segment];
        self.blocks
            .extend(walk.next_candidate(next.segment, &self.bounds, self.direction));
        Ok(Some(work))
    }

    /// The page found: up to `limit` hits in page order, and whether more follow.
    fn finish(&mut self, limit: usize) -> (Vec<(SortKey, DocAddress)>, bool) {
        let direction = self.direction;
        let mut hits = self.top.take_sorted();
        let has_more = hits.len() > limit;
        hits.truncate(limit);
        let hits = hits
            .into_iter()
            .map(|(rank, segment, doc)| {
                (
                    SortKey::from_rank(rank, direction),
                    DocAddress::new(segment, doc),
                )
            })
            .collect();
        (hits, has_more)
    }

    /// Visits a window of documents starting at `candidate`'s block; returns the work done.
    fn visit(&mut self, candidate: Candidate) -> Result<u64, SearchError> {
        let segment_ord = candidate.segment as u32;
        let reader = self.searcher.segment_reader(segment_ord);
        let walk = &mut self.segments[candidate.segment];
        if walk.done || walk.visited[candidate.block] {
            return Ok(1);
        }
        let docs = walk.take_window(candidate.block, &self.bounds, self.direction);
        let first_visit = walk.columns.is_none();
        let mut work = 0;
        if first_visit {
            let columns = self.timelines.columns(reader)?;
            walk.columns = Some(SegmentColumns::open(reader, &columns, self.filter)?);
            work += WORK_SEGMENT;
        }
        let mut scorer = match walk.scorer.take() {
            Some(scorer) if scorer.doc() <= docs.start => scorer,
            _ => {
                work += WORK_SEGMENT;
                self.weight.scorer(reader, 1.0)?
            }
        };
        let Some(columns) = walk.columns.as_ref() else {
            return Ok(work);
        };
        let docs = if first_visit && scorer.size_hint() <= SPARSE_DOCS {
            walk.done = true;
            0..TERMINATED
        } else {
            docs
        };
        let mut doc = scorer.doc();
        if doc < docs.start {
            doc = scorer.seek(docs.start);
        }
        while doc < docs.end {
            if let Some(rank) = columns.rank(doc, self.direction)
                && self.below_rank.is_none_or(|below| rank < below)
            {
                self.top.offer(rank, segment_ord, doc);
            }
            doc = scorer.advance();
            work += 1;
        }
        walk.scorer = Some(scorer);
        Ok(work)
    }
}

/// The columns one segment's documents are checked on.
struct SegmentColumns {
    alive: Option<AliveBitSet>,
    timestamps: Column<i64>,
    seqs: Column<u64>,
    from_us: i64,
    /// Exclusive.
    to_us: i64,
    before_seq: u64,
    /// `(window start, since seq)`: older events only from that sequence on.
    late: (i64, u64),
    actions: Option<(Column<u64>, u64)>,
    /// Term ordinals of the matching paths: `[start, end)`.
    paths: Option<(Column<u64>, Range<u64>)>,
    source_ips: Option<(Column<Ipv6Addr>, RangeInclusive<Ipv6Addr>)>,
}

impl SegmentColumns {
    fn open(
        segment: &SegmentReader,
        columns: &SearchColumns,
        filter: &ColumnFilter,
    ) -> tantivy::Result<SegmentColumns> {
        let fast_fields = segment.fast_fields();
        let actions = filter.actions.map(|mask| (columns.actions.clone(), mask));
        let paths = match &filter.path_prefix {
            Some(prefix) => Some(match &columns.paths {
                Some(column) => (column.ords().clone(), columns.path_prefix_ords(prefix)?),
                // No document of the segment has a path: nothing matches a prefix.
                None => (Column::build_empty_column(segment.max_doc()), 0..0),
            }),
            None => None,
        };
        let source_ips = match &filter.source_ip {
            Some(range) => Some((fast_fields.ip_addr(fast::SOURCE_IP)?, range.clone())),
            None => None,
        };
        Ok(SegmentColumns {
            alive: segment.alive_bitset().cloned(),
            timestamps: columns.timestamps.clone(),
            seqs: columns.seqs.clone(),
            from_us: filter.from_us.unwrap_or(i64::MIN),
            to_us: filter.to_us.unwrap_or(i64::MAX),
            before_seq: filter.before_seq.unwrap_or(u64::MAX),
            late: filter.late.unwrap_or((i64::MIN, 0)),
            actions,
            paths,
            source_ips,
        })
    }

    /// The rank of `doc` if it passes every check.
    #[inline]
    fn rank(&self, doc: DocId, direction: Direction) -> Option<u128> {
        if self
            .alive
            .as_ref()
            .is_some_and(|alive| alive.is_deleted(doc))
        {
            return None;
        }
        let timestamp_us = self.timestamps.first(doc)?;
        if timestamp_us < self.from_us || timestamp_us >= self.to_us {
            return None;
        }
        let seq = self.seqs.first(doc)?;
        if seq >= self.before_seq || (timestamp_us < self.late.0 && seq < self.late.1) {
            return None;
        }
        if let Some((actions, mask)) = &self.actions {
            let action = actions.first(doc)?;
            if action >= 64 || mask & (1 << action) == 0 {
                return None;
            }
        }
        if let Some((ords, range)) = &self.paths
            && !ords.first(doc).is_some_and(|ord| range.contains(&ord))
        {
            return None;
        }
        if let Some((ips, range)) = &self.source_ips
            && !ips.first(doc).is_some_and(|ip| range.contains(&ip))
        {
            return None;
        }
        Some(SortKey { timestamp_us, seq }.rank(direction))
    }
}

/// The term ordinals `[start, end)` of the paths starting with `prefix` in a segment's
/// dictionary.
pub(super) fn prefix_ords(
    dictionary: &tantivy::columnar::Dictionary,
    prefix: &str,
) -> std::io::Result<Range<u64>> {
    let upper = match prefix_successor(prefix) {
        Some(next) => Bound::Excluded(next.into_bytes()),
        None => Bound::Unbounded,
    };
    let (lower, upper) =
        dictionary.term_bounds_to_ord(Bound::Included(prefix.as_bytes().to_vec()), upper)?;
    let start = match lower {
        Bound::Included(ord) => ord,
        Bound::Excluded(ord) => ord.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match upper {
        Bound::Included(ord) => ord.saturating_add(1),
        Bound::Excluded(ord) => ord,
        Bound::Unbounded => u64::MAX,
    };
    Ok(start..end.max(start))
}

/// The smallest string greater than every string starting with `prefix` (ASCII prefixes).
pub fn prefix_successor(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::query::{BooleanQuery, Occur, TermQuery};
    use tantivy::schema::IndexRecordOption;
    use tantivy::{Index, IndexWriter, Term};

    /// One indexed document, as the brute-force model sees it.
    #[derive(Debug, Clone)]
    struct Doc {
        tenant: &'static str,
        key: SortKey,
        action: u64,
        path: String,
        success: bool,
        /// Shared by runs of consecutive documents, like a request's events.
        request_id: String,
    }

    /// Near time order with late arrivals (up to ~2 blocks old), runs of shared timestamps and
    /// several segments, some of them merged: what pruning must get exactly right.
    fn random_docs(rng: &mut fastrand::Rng, count: u64) -> Vec<Doc> {
        let mut clock = 1_000_000_i64;
        (0..count)
            .map(|seq| {
                if !rng.bool() || rng.u8(..10) != 0 {
                    clock += rng.i64(0..40);
                }
                let late = rng.u8(..20) == 0;
                let timestamp_us = if late {
                    clock - rng.i64(0..60_000)
                } else {
                    clock
                };
                Doc {
                    tenant: if rng.u8(..3) == 0 { "b" } else { "a" },
                    key: SortKey { timestamp_us, seq },
                    action: rng.u64(0..4),
                    path: format!(
                        "{}/{}",
                        ["env/prod", "env/dev", "team"][rng.usize(..3)],
                        rng.u8(..5)
                    ),
                    success: rng.u8(..10) != 0,
                    request_id: format!("req_{}", seq / 3),
                }
            })
            .collect()
    }

    /// `merge`: merge segments as they come (in whatever order tantivy picks), else never.
    fn build_index(docs: &[Doc], rng: &mut fastrand::Rng, merge: bool) -> (Index, Fields) {
        let (schema, fields) = super::super::schema::build_schema();
        let index = Index::create_in_ram(schema);
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        if merge {
            let mut merges = tantivy::merge_policy::LogMergePolicy::default();
            merges.set_min_num_segments(3);
            writer.set_merge_policy(Box::new(merges));
        } else {
            writer.set_merge_policy(Box::new(tantivy::merge_policy::NoMergePolicy));
        }
        let mut next_commit = rng.usize(300..3000);
        for (position, doc) in docs.iter().enumerate() {
            let mut document = TantivyDocument::default();
            document.add_text(fields.tenant, doc.tenant);
            document.add_i64(fields.timestamp, doc.key.timestamp_us);
            document.add_u64(fields.seq, doc.key.seq);
            document.add_u64(fields.action, doc.action);
            document.add_text(fields.secret_path, &doc.path);
            document.add_bool(fields.success, doc.success);
            document.add_text(fields.request_id, &doc.request_id);
            document.add_u64(
                fields.request_id_bucket,
                super::super::schema::request_id_bucket(&doc.request_id),
            );
            writer.add_document(document).unwrap();
            if position == next_commit {
                writer.commit().unwrap();
                next_commit += rng.usize(300..3000);
            }
        }
        writer.commit().unwrap();
        writer.wait_merging_threads().unwrap();
        (index, fields)
    }

    #[test]
    fn pages_agree_with_brute_force_across_blocks_segments_and_late_events() {
        let seed = fastrand::u64(..);
        let mut rng = fastrand::Rng::with_seed(seed);
        let docs = random_docs(&mut rng, 12_000);
        for merge in [false, true] {
            let (index, fields) = build_index(&docs, &mut rng, merge);
            let searcher = index.reader().unwrap().searcher();
            let segments = searcher.segment_readers().len();
            assert!(merge || segments > 1, "seed {seed}: {segments} segment(s)");
            check_random_searches(&searcher, &fields, &docs, &mut rng, seed);
        }
    }

    fn check_random_searches(
        searcher: &Searcher,
        fields: &Fields,
        docs: &[Doc],
        rng: &mut fastrand::Rng,
        seed: u64,
    ) {
        let timelines = Timelines::default();
        let newest = docs.iter().map(|doc| doc.key.timestamp_us).max().unwrap();
        for round in 0..60 {
            let tenant = if rng.bool() { "a" } else { "b" };
            let direction = if rng.bool() {
                Direction::NewestFirst
            } else {
                Direction::OldestFirst
            };
            let filter = ColumnFilter {
                from_us: rng.bool().then(|| rng.i64(0..newest)),
                to_us: rng.bool().then(|| rng.i64(0..newest + 10)),
                actions: rng.bool().then(|| rng.u64(1..16)),
                path_prefix: rng
                    .bool()
                    .then(|| ["env/", "env/prod", "team/3", "zzz"][rng.usize(..4)].to_string()),
                // A request of the data, or one that no segment holds.
                request_id: (rng.u8(..4) == 0).then(|| match rng.u8(..4) {
                    0 => "req_absent".to_string(),
                    _ => docs[rng.usize(..docs.len())].request_id.clone(),
                }),
                ..ColumnFilter::default()
            };
            let failures_only = rng.u8(..4) == 0;
            let matches = |doc: &&Doc| {
                doc.tenant == tenant
                    && filter
                        .from_us
                        .is_none_or(|from| doc.key.timestamp_us >= from)
                    && filter.to_us.is_none_or(|to| doc.key.timestamp_us < to)
                    && filter
                        .actions
                        .is_none_or(|mask| mask & (1 << doc.action) != 0)
                    && filter
                        .path_prefix
                        .as_ref()
                        .is_none_or(|prefix| doc.path.starts_with(prefix.as_str()))
                    && (!failures_only || !doc.success)
                    && filter
                        .request_id
                        .as_ref()
                        .is_none_or(|wanted| &doc.request_id == wanted)
            };
            let mut expected: Vec<SortKey> =
                docs.iter().filter(matches).map(|doc| doc.key).collect();
            expected.sort_unstable();
            if direction == Direction::NewestFirst {
                expected.reverse();
            }
            let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(fields.tenant, tenant),
                    IndexRecordOption::Basic,
                )),
            )];
            if failures_only {
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_bool(fields.success, false),
                        IndexRecordOption::Basic,
                    )),
                ));
            }
            if let Some(request_id) = &filter.request_id {
                let query = super::super::lookup::RequestIdQuery::new(fields, request_id);
                clauses.push((Occur::Must, Box::new(query)));
            }
            let plan = SearchPlan {
                query: Box::new(BooleanQuery::new(clauses)),
                filter: filter.clone(),
            };
            let limit = [1, 7, 100, 1000][rng.usize(..4)];
            let mut walked = Vec::new();
            let mut after = None;
            loop {
                let (hits, has_more) =
                    top_hits(searcher, &timelines, &plan, direction, after, limit).unwrap();
                assert!(hits.len() <= limit);
                walked.extend(hits.iter().map(|(key, _)| *key));
                after = walked.last().copied();
                assert_eq!(
                    has_more,
                    walked.len() < expected.len(),
                    "seed {seed} round {round} {filter:?}"
                );
                if !has_more {
                    break;
                }
            }
            assert_eq!(
                walked, expected,
                "seed {seed} round {round} {direction:?} {filter:?}"
            );
        }
    }

    #[test]
    fn a_budget_runs_steps_inline_then_hands_the_rest_off_once() {
        let handoffs = std::cell::Cell::new(0);
        let inline_steps = std::cell::Cell::new(None);
        let steps = std::cell::Cell::new(0);
        let handoff = |work: &mut dyn FnMut()| {
            handoffs.set(handoffs.get() + 1);
            inline_steps.set(Some(steps.get()));
            work();
        };
        let mut budget = Budget::inline(10, &handoff);
        budget
            .drive(|| {
                steps.set(steps.get() + 1);
                Ok::<_, ()>((steps.get() <= 8).then_some(3))
            })
            .unwrap();
        // 3 + 3 + 3 + 3 spends the 10: the fifth step and after run in the hand-off.
        assert_eq!(
            (handoffs.get(), inline_steps.get(), steps.get()),
            (1, Some(4), 9)
        );

        let mut unbounded = Budget::unbounded();
        let mut count = 0;
        unbounded
            .drive(|| {
                count += 1;
                Ok::<_, ()>((count < 100).then_some(u64::MAX))
            })
            .unwrap();
        assert_eq!(count, 100);
        // An error ends the drive, inline or handed off.
        let mut budget = Budget::inline(1, &handoff);
        assert_eq!(budget.drive(|| Err::<Option<u64>, _>("boom")), Err("boom"));
        let mut budget = Budget::inline(1, &handoff);
        let mut first = true;
        let result = budget.drive(|| {
            if std::mem::take(&mut first) {
                Ok(Some(1))
            } else {
                Err("late")
            }
        });
        assert_eq!((result, handoffs.get()), (Err("late"), 2));
    }

    #[test]
    fn timeline_walk_orders_visit_blocks_best_rank_first() {
        let mut rng = fastrand::Rng::with_seed(fastrand::u64(..));
        let blocks: Vec<BlockSpan> = (0..500)
            .map(|block| {
                let base = i64::from(block) * 100 - rng.i64(0..3_000);
                let span = BlockSpan {
                    min_us: base,
                    max_us: base + rng.i64(0..500),
                };
                // A few equal spans, and blocks without timestamps.
                match rng.u8(0..20) {
                    0 => BlockSpan {
                        min_us: 7,
                        max_us: 9,
                    },
                    1 => BlockSpan {
                        min_us: i64::MAX,
                        max_us: i64::MIN,
                    },
                    _ => span,
                }
            })
            .collect();
        let timeline =
            SegmentTimeline::from_blocks(500 * super::super::timeline::BLOCK_DOCS, blocks);
        for (direction, order) in [
            (Direction::NewestFirst, &timeline.newest_first),
            (Direction::OldestFirst, &timeline.oldest_first),
        ] {
            let mut numbers = order.clone();
            numbers.sort_unstable();
            assert!(numbers.iter().copied().eq(0..500), "every block once");
            // What the heap of every block popped: best rank first, then the higher block.
            let mut expected: Vec<(u128, u32)> = (0..500)
                .map(|block| (best_rank(timeline.blocks[block as usize], direction), block))
                .collect();
            expected.sort_unstable_by(|a, b| b.cmp(a));
            let expected: Vec<u32> = expected.into_iter().map(|(_, block)| block).collect();
            assert_eq!(order, &expected, "{direction:?}");
        }
    }

    #[test]
    fn rank_orders_by_timestamp_then_seq_in_both_directions() {
        let keys = [
            SortKey {
                timestamp_us: -5,
                seq: 9,
            },
            SortKey {
                timestamp_us: 0,
                seq: 1,
            },
            SortKey {
                timestamp_us: 0,
                seq: 2,
            },
            SortKey {
                timestamp_us: i64::MAX,
                seq: 0,
            },
        ];
        for pair in keys.windows(2) {
            assert!(pair[0].rank(Direction::NewestFirst) < pair[1].rank(Direction::NewestFirst));
            assert!(pair[0].rank(Direction::OldestFirst) > pair[1].rank(Direction::OldestFirst));
        }
    }
}

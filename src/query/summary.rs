//! Aggregates over a tenant's events, computed from fast fields (no stored event is loaded).
//!
//! Two ways to the same [`Aggregate`]:
//! - [`summarize_tenant`] (the global summary, SPEC §3.4, whose only filter is the time
//!   window): every per-(tenant, UTC day) partial of [`PartialCache`] that lies wholly inside the
//!   window is added as it is; a partial the window cuts is recounted exactly from its
//!   segment, walking only that day's doc-id range of the tenant's postings.
//! - [`aggregate_matching`] (the 30-day summaries of the secret and identity trails, §3.2,
//!   §3.3): the trail's query drives, from the first doc id the window can hold in each
//!   segment (known from the partials), and the timestamp is checked per document.
//!
//! Both count into one dense [`Tally`] indexed by process-wide interned ids. The ids stay ids
//! in the [`Aggregate`] ([`KeyCounts`]): only the entries a top list reports are resolved to
//! strings. The time window is never part of the Tantivy query: a
//! fast-field range scans its column from doc 0 whenever its scorer is created or sought.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{EnableScoring, Query};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Searcher, SegmentReader, TERMINATED, Term};

use super::partials::{DayPartial, Interner, Overlap, PartialCache, SegmentPartials};
use crate::event::Action;
use crate::store::scan::FastColumns;
use crate::store::schema::fast;

/// Everything the summaries report, before top-N selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub total: u64,
    pub successful: u64,
    pub by_action: HashMap<Action, u64>,
    pub by_identity: KeyCounts,
    pub by_path: KeyCounts,
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
    /// Newest `read` event (a secret's `last_accessed_at`).
    pub last_read_us: Option<i64>,
}

impl Aggregate {
    pub fn failed(&self) -> u64 {
        self.total - self.successful
    }

    /// `{action: count}` in action order, only actions that occurred.
    pub fn actions_breakdown(&self) -> serde_json::Map<String, serde_json::Value> {
        Action::ALL
            .iter()
            .filter_map(|action| {
                self.by_action
                    .get(action)
                    .map(|count| (action.as_str().to_string(), (*count).into()))
            })
            .collect()
    }
}

pub(crate) fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One entry of a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ranked {
    pub key: String,
    pub count: u64,
}

/// Counts per key (identity id or secret path) of one aggregate, kept as dense counts by
/// interned id: a summary over a tenant's ~20,000 paths reports ten of them, so only the
/// entries a top list returns are turned into strings.
#[derive(Debug, Clone, Default)]
pub struct KeyCounts {
    /// Count per interned id; zero for keys not seen.
    counts: Vec<u64>,
    names: Arc<Interner>,
}

impl KeyCounts {
    pub(crate) fn new(counts: Vec<u64>, names: Arc<Interner>) -> KeyCounts {
        KeyCounts { counts, names }
    }

    /// Number of keys counted at least once.
    pub fn distinct(&self) -> usize {
        self.counts.iter().filter(|count| **count > 0).count()
    }

    /// The `n` largest counts, count descending, ties by key ascending (SPEC §3.4). Counts are
    /// ranked first; strings are looked up only for the keys whose count reaches the `n`th
    /// largest (all of them tied at the cut, so ties still break by key).
    pub fn top(&self, n: usize) -> Vec<Ranked> {
        if n == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(u64, u32)> = self
            .counts
            .iter()
            .zip(0u32..)
            .filter(|(count, _)| **count > 0)
            .map(|(count, id)| (*count, id))
            .collect();
        if candidates.len() > n {
            candidates.select_nth_unstable_by(n - 1, |a, b| b.0.cmp(&a.0));
            let cut = candidates.get(n - 1).map_or(0, |(count, _)| *count);
            candidates.retain(|(count, _)| *count >= cut);
        }
        let mut entries = self.names.with_strings(|strings| {
            candidates
                .iter()
                .filter_map(|(count, id)| {
                    Some(Ranked {
                        key: strings.get(*id as usize)?.to_string(),
                        count: *count,
                    })
                })
                .collect::<Vec<_>>()
        });
        entries.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        entries.truncate(n);
        entries
    }

    /// `{key: count}` of every key counted at least once.
    pub fn to_map(&self) -> HashMap<String, u64> {
        self.names.with_strings(|strings| {
            self.counts
                .iter()
                .zip(strings)
                .filter(|(count, _)| **count > 0)
                .map(|(count, key)| (key.to_string(), *count))
                .collect()
        })
    }

    /// Counts over keys of their own (the brute-force models of the tests).
    #[cfg(test)]
    pub(crate) fn from_map(map: &HashMap<String, u64>) -> KeyCounts {
        let names = Arc::new(Interner::default());
        let mut counts = Vec::new();
        for (key, count) in map {
            let id = names.intern(key) as usize;
            counts.resize(counts.len().max(id + 1), 0);
            counts[id] = *count;
        }
        KeyCounts::new(counts, names)
    }
}

/// Equal when the same keys have the same counts, whatever the ids.
impl PartialEq for KeyCounts {
    fn eq(&self, other: &KeyCounts) -> bool {
        self.to_map() == other.to_map()
    }
}

impl Eq for KeyCounts {}

/// A half-open time window `[from_us, to_us)`; a missing bound is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub from_us: Option<i64>,
    pub to_us: Option<i64>,
}

impl Window {
    /// Whether an event at `timestamp` is inside. An event without a timestamp is inside only
    /// an unbounded window (as with the fast-field range query this check replaces).
    pub fn contains(&self, timestamp: Option<i64>) -> bool {
        match timestamp {
            Some(timestamp) => {
                self.from_us.is_none_or(|from| timestamp >= from)
                    && self.to_us.is_none_or(|to| timestamp < to)
            }
            None => self.is_unbounded(),
        }
    }

    pub fn is_unbounded(&self) -> bool {
        self.from_us.is_none() && self.to_us.is_none()
    }
}

/// Summary of every event of `tenant` inside `window`: whole partials plus the cut edges.
pub fn summarize_tenant(
    cache: &PartialCache,
    searcher: &Searcher,
    tenant: &str,
    window: Window,
) -> tantivy::Result<Aggregate> {
    let segments = cache.segments_of(searcher)?;
    let mut tally = cache.tally(Breakdowns::ALL);
    for (segment, partials) in searcher.segment_readers().iter().zip(&segments) {
        let Some(days) = partials.tenant_days(tenant) else {
            continue;
        };
        let mut cut = Vec::new();
        for day in days {
            match day.overlap(window) {
                Overlap::Whole => tally.add_partial(day),
                Overlap::Part => cut.push(day),
                Overlap::None => {}
            }
        }
        if !cut.is_empty() {
            let term = Term::from_field_text(cache.tenant_field(), tenant);
            recount_cut_days(segment, partials, &term, &cut, window, &mut tally)?;
        }
    }
    Ok(cache.resolve(tally))
}

/// Recounts, exactly, the events of each cut day that fall inside `window`: only that day's
/// doc-id range of the tenant's postings is walked, and only docs of that day are counted
/// (a range can hold late events of other days, which their own partials count).
fn recount_cut_days(
    segment: &SegmentReader,
    partials: &SegmentPartials,
    tenant_term: &Term,
    cut: &[&DayPartial],
    window: Window,
    tally: &mut Tally,
) -> tantivy::Result<()> {
    let columns = SummaryColumns::open(segment)?;
    let inverted = segment.inverted_index(tenant_term.field())?;
    let alive = segment.alive_bitset();
    for day in cut {
        let Some(mut postings) = inverted.read_postings(tenant_term, IndexRecordOption::Basic)?
        else {
            return Ok(());
        };
        let mut doc = postings.doc();
        if doc < day.first_doc {
            doc = postings.seek(day.first_doc);
        }
        while doc != TERMINATED && doc <= day.last_doc {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                let values = columns.read(doc);
                if values.day() == day.day && window.contains(values.timestamp) {
                    tally.add_doc(&values, partials);
                }
            }
            doc = postings.advance();
        }
    }
    Ok(())
}

/// Which per-key counts an aggregate computes. A trail leaves out the key it is pinned to (an
/// identity trail reports the paths, a secret trail the identities): one column read and one
/// count less per document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breakdowns {
    pub identities: bool,
    pub paths: bool,
}

impl Breakdowns {
    pub const ALL: Breakdowns = Breakdowns {
        identities: true,
        paths: true,
    };
    /// A secret trail's: who touched the secret.
    pub const IDENTITIES: Breakdowns = Breakdowns {
        identities: true,
        paths: false,
    };
    /// An identity trail's: what the identity touched.
    pub const PATHS: Breakdowns = Breakdowns {
        identities: false,
        paths: true,
    };
}

/// Aggregates the events matching `query` (which must require the `tenant` term) inside
/// `window`, counting per key only what `breakdowns` asks for (the others stay empty). The
/// query drives; each segment is entered at the first doc id the tenant's partials allow for
/// the window and left after the last, the timestamp checked per doc.
pub fn aggregate_matching(
    cache: &PartialCache,
    searcher: &Searcher,
    tenant: &str,
    query: &dyn Query,
    window: Window,
    breakdowns: Breakdowns,
) -> tantivy::Result<Aggregate> {
    let segments = cache.segments_of(searcher)?;
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut tally = cache.tally(breakdowns);
    for (segment, partials) in searcher.segment_readers().iter().zip(&segments) {
        let Some((first, last)) = partials.doc_bounds(tenant, window) else {
            continue;
        };
        let columns = SummaryColumns::open_for(segment, breakdowns)?;
        let alive = segment.alive_bitset();
        let mut scorer = weight.scorer(segment, 1.0)?;
        let mut doc = scorer.doc();
        if doc < first {
            doc = scorer.seek(first);
        }
        while doc != TERMINATED && doc <= last {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                let values = columns.read(doc);
                if window.contains(values.timestamp) {
                    tally.add_doc(&values, partials);
                }
            }
            doc = scorer.advance();
        }
    }
    Ok(cache.resolve(tally))
}

/// Slots for action ordinals (more than there are actions).
pub(crate) const ACTION_SLOTS: usize = 32;

/// The fast columns a summary reads, of one segment.
pub(crate) struct SummaryColumns {
    timestamps: Column<i64>,
    actions: Column<u64>,
    successes: Column<bool>,
    identities: Option<StrColumn>,
    paths: Option<StrColumn>,
}

/// What a summary needs of one document; term ordinals are the segment's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DocValues {
    pub timestamp: Option<i64>,
    pub action: Option<u64>,
    pub success: bool,
    pub identity: Option<u64>,
    pub path: Option<u64>,
}

/// Length of a UTC day in microseconds.
pub(crate) const DAY_US: i64 = 86_400_000_000;
/// The "day" of events without a timestamp (there are none; kept exact anyway).
pub(crate) const UNDATED: i64 = i64::MIN;

impl DocValues {
    /// The UTC day number (days since the epoch), or [`UNDATED`].
    pub fn day(&self) -> i64 {
        self.timestamp
            .map_or(UNDATED, |timestamp| timestamp.div_euclid(DAY_US))
    }

    pub fn is_read(&self) -> bool {
        self.action == Some(Action::Read.ordinal())
    }
}

impl SummaryColumns {
    pub fn open(segment: &SegmentReader) -> tantivy::Result<SummaryColumns> {
        Self::open_for(segment, Breakdowns::ALL)
    }

    /// Opens the columns `breakdowns` counts: a key column it leaves out is not opened, and
    /// its values read as absent.
    pub fn open_for(
        segment: &SegmentReader,
        breakdowns: Breakdowns,
    ) -> tantivy::Result<SummaryColumns> {
        Self::of_columns(&FastColumns::mapped(segment), breakdowns)
    }

    /// The summary's columns among a segment's `fast_fields` (a scan's, see
    /// [`crate::store::scan`]), of the keys `breakdowns` counts.
    pub fn of_columns(
        fast_fields: &FastColumns,
        breakdowns: Breakdowns,
    ) -> tantivy::Result<SummaryColumns> {
        let key_column = |wanted: bool, name: &str| {
            if wanted {
                fast_fields.str(name)
            } else {
                Ok(None)
            }
        };
        Ok(SummaryColumns {
            timestamps: fast_fields.i64(fast::TIMESTAMP)?,
            actions: fast_fields.u64(fast::ACTION)?,
            successes: fast_fields.bool(fast::SUCCESS)?,
            identities: key_column(breakdowns.identities, fast::IDENTITY_ID)?,
            paths: key_column(breakdowns.paths, fast::SECRET_PATH)?,
        })
    }

    pub fn read(&self, doc: DocId) -> DocValues {
        DocValues {
            timestamp: self.timestamps.first(doc),
            action: self.actions.first(doc),
            success: self.successes.first(doc).unwrap_or(false),
            identity: self
                .identities
                .as_ref()
                .and_then(|column| column.ords().first(doc)),
            path: self
                .paths
                .as_ref()
                .and_then(|column| column.ords().first(doc)),
        }
    }

    pub fn identities(&self) -> Option<&StrColumn> {
        self.identities.as_ref()
    }

    pub fn paths(&self) -> Option<&StrColumn> {
        self.paths.as_ref()
    }
}

/// Running counts of one summary. Identities and paths are counted in dense arrays indexed by
/// the ids of [`Interner`], which grow on demand (a segment built meanwhile may add ids).
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    pub total: u64,
    pub successful: u64,
    pub actions: [u64; ACTION_SLOTS],
    pub first_us: Option<i64>,
    pub last_us: Option<i64>,
    pub last_read_us: Option<i64>,
    pub identities: Vec<u64>,
    pub paths: Vec<u64>,
}

impl Tally {
    pub fn with_capacity(identities: usize, paths: usize) -> Tally {
        Tally {
            identities: vec![0; identities],
            paths: vec![0; paths],
            ..Tally::default()
        }
    }

    /// Counts one document; its term ordinals are mapped through the segment's id tables.
    pub fn add_doc(&mut self, values: &DocValues, partials: &SegmentPartials) {
        self.total += 1;
        self.successful += u64::from(values.success);
        if let Some(slot) = values
            .action
            .and_then(|ordinal| self.actions.get_mut(ordinal as usize))
        {
            *slot += 1;
        }
        if let Some(timestamp) = values.timestamp {
            self.first_us = min_option(self.first_us, Some(timestamp));
            self.last_us = self.last_us.max(Some(timestamp));
            if values.is_read() {
                self.last_read_us = self.last_read_us.max(Some(timestamp));
            }
        }
        if let Some(id) = values.identity.and_then(|ord| partials.identity_id(ord)) {
            bump(&mut self.identities, id, 1);
        }
        if let Some(id) = values.path.and_then(|ord| partials.path_id(ord)) {
            bump(&mut self.paths, id, 1);
        }
    }

    /// Adds a whole day's partial.
    pub fn add_partial(&mut self, day: &DayPartial) {
        self.total += u64::from(day.total);
        self.successful += u64::from(day.successful);
        for (slot, count) in self.actions.iter_mut().zip(day.actions.iter()) {
            *slot += u64::from(*count);
        }
        self.first_us = min_option(self.first_us, day.first_us);
        self.last_us = self.last_us.max(day.last_us);
        self.last_read_us = self.last_read_us.max(day.last_read_us);
        for (id, count) in day.identities.iter() {
            bump(&mut self.identities, *id, u64::from(*count));
        }
        for (id, count) in day.paths.iter() {
            bump(&mut self.paths, *id, u64::from(*count));
        }
    }

    /// The finished [`Aggregate`]; its key counts stay by interned id ([`KeyCounts`]).
    pub fn into_aggregate(self, identities: &Arc<Interner>, paths: &Arc<Interner>) -> Aggregate {
        let by_action = self
            .actions
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .filter_map(|(ordinal, count)| Some((Action::from_ordinal(ordinal as u64)?, *count)))
            .collect();
        Aggregate {
            total: self.total,
            successful: self.successful,
            by_action,
            by_identity: KeyCounts::new(self.identities, identities.clone()),
            by_path: KeyCounts::new(self.paths, paths.clone()),
            first_us: self.first_us,
            last_us: self.last_us,
            last_read_us: self.last_read_us,
        }
    }
}

fn bump(counts: &mut Vec<u64>, id: u32, by: u64) {
    let index = id as usize;
    if index >= counts.len() {
        counts.resize(index + 1, 0);
    }
    if let Some(slot) = counts.get_mut(index) {
        *slot += by;
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> KeyCounts {
        let map: HashMap<String, u64> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        KeyCounts::from_map(&map)
    }

    fn ranked(counts: &KeyCounts, n: usize) -> Vec<(String, u64)> {
        counts
            .top(n)
            .into_iter()
            .map(|r| (r.key, r.count))
            .collect()
    }

    #[test]
    fn top_orders_by_count_then_key() {
        let counts = counts(&[("b", 5), ("a", 5), ("c", 9), ("d", 1), ("zero", 0)]);
        assert_eq!(
            ranked(&counts, 3),
            vec![("c".into(), 9), ("a".into(), 5), ("b".into(), 5)]
        );
        assert_eq!(ranked(&counts, 2), vec![("c".into(), 9), ("a".into(), 5)]);
        assert_eq!(ranked(&counts, 10).len(), 4, "a zero count is not a key");
        assert!(counts.top(0).is_empty());
        assert_eq!(counts.distinct(), 4);
    }

    /// The count-first selection against sorting every entry, on random counts with many ties.
    #[test]
    fn top_equals_a_full_sort() {
        let mut rng = fastrand::Rng::with_seed(12);
        for _ in 0..200 {
            let keys = rng.usize(0..60);
            let map: HashMap<String, u64> = (0..keys)
                .map(|_| (format!("k{}", rng.u32(0..1000)), rng.u64(0..6)))
                .collect();
            let counts = KeyCounts::from_map(&map);
            let n = rng.usize(0..15);
            let mut expected: Vec<(String, u64)> = map
                .iter()
                .filter(|(_, count)| **count > 0)
                .map(|(key, count)| (key.clone(), *count))
                .collect();
            expected.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            expected.truncate(n);
            assert_eq!(ranked(&counts, n), expected, "{map:?} top {n}");
            assert_eq!(counts.to_map().len(), counts.distinct());
        }
    }
}

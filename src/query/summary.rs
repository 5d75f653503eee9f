//! Aggregates over matching events, computed from fast fields (no stored event is loaded).
//!
//! One collector serves the global summary (SPEC §3.4) and the 30-day summaries of the secret
//! and identity trails (§3.2, §3.3): counts by outcome and action, counts per identity and per
//! path (dense per-segment arrays indexed by term ordinal, resolved to strings once per
//! segment), and the time bounds.

use std::collections::HashMap;

use serde::Serialize;
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{EnableScoring, Query};
use tantivy::{DocId, Score, Searcher, SegmentOrdinal, SegmentReader};

use crate::event::Action;
use crate::store::schema::fast;

/// Everything the summaries report, before top-N selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregate {
    pub total: u64,
    pub successful: u64,
    pub by_action: HashMap<Action, u64>,
    pub by_identity: HashMap<String, u64>,
    pub by_path: HashMap<String, u64>,
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

    fn merge(&mut self, other: Aggregate) {
        self.total += other.total;
        self.successful += other.successful;
        for (action, count) in other.by_action {
            *self.by_action.entry(action).or_default() += count;
        }
        for (identity, count) in other.by_identity {
            *self.by_identity.entry(identity).or_default() += count;
        }
        for (path, count) in other.by_path {
            *self.by_path.entry(path).or_default() += count;
        }
        self.first_us = min_option(self.first_us, other.first_us);
        self.last_us = self.last_us.max(other.last_us);
        self.last_read_us = self.last_read_us.max(other.last_read_us);
    }
}

fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
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

/// The `n` largest counts, count descending, ties by key ascending (SPEC §3.4).
pub fn top(counts: &HashMap<String, u64>, n: usize) -> Vec<Ranked> {
    let mut entries: Vec<Ranked> = counts
        .iter()
        .map(|(key, count)| Ranked {
            key: key.clone(),
            count: *count,
        })
        .collect();
    entries.sort_unstable_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    entries.truncate(n);
    entries
}

/// Aggregates every event matching `query`.
///
/// Segment by segment, each segment's counts merged (and dropped) before the next segment is
/// read: memory holds the merged maps and one segment's, not every segment's at once.
pub fn aggregate(searcher: &Searcher, query: &dyn Query) -> tantivy::Result<Aggregate> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut merged = Aggregate::default();
    for (ordinal, segment) in searcher.segment_readers().iter().enumerate() {
        let fruit = AggregateCollector.collect_segment(weight.as_ref(), ordinal as u32, segment)?;
        merged.merge(fruit);
    }
    Ok(merged)
}

struct AggregateCollector;

impl Collector for AggregateCollector {
    type Fruit = Aggregate;
    type Child = SegmentAggregate;

    fn for_segment(
        &self,
        _: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<SegmentAggregate> {
        let fast_fields = segment.fast_fields();
        let identities = fast_fields.str(fast::IDENTITY_ID)?;
        let paths = fast_fields.str(fast::SECRET_PATH)?;
        Ok(SegmentAggregate {
            timestamps: fast_fields.i64(fast::TIMESTAMP)?,
            actions: fast_fields.u64(fast::ACTION)?,
            successes: fast_fields.bool(fast::SUCCESS)?,
            identity_counts: vec![0; identities.as_ref().map_or(0, |column| column.num_terms())],
            path_counts: vec![0; paths.as_ref().map_or(0, |column| column.num_terms())],
            identities,
            paths,
            action_counts: [0; 32],
            partial: Aggregate::default(),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Aggregate>) -> tantivy::Result<Aggregate> {
        let mut merged = Aggregate::default();
        for fruit in fruits {
            merged.merge(fruit);
        }
        Ok(merged)
    }
}

struct SegmentAggregate {
    timestamps: Column<i64>,
    actions: Column<u64>,
    successes: Column<bool>,
    identities: Option<StrColumn>,
    paths: Option<StrColumn>,
    /// Per term ordinal; `u32` because a segment holds fewer than 2^32 documents.
    identity_counts: Vec<u32>,
    path_counts: Vec<u32>,
    action_counts: [u64; 32],
    partial: Aggregate,
}

impl SegmentCollector for SegmentAggregate {
    type Fruit = Aggregate;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let partial = &mut self.partial;
        partial.total += 1;
        if self.successes.first(doc).unwrap_or(false) {
            partial.successful += 1;
        }
        let action = self.actions.first(doc);
        if let Some(slot) = action.and_then(|ordinal| self.action_counts.get_mut(ordinal as usize))
        {
            *slot += 1;
        }
        if let Some(timestamp) = self.timestamps.first(doc) {
            partial.first_us = min_option(partial.first_us, Some(timestamp));
            partial.last_us = partial.last_us.max(Some(timestamp));
            if action == Some(Action::Read.ordinal()) {
                partial.last_read_us = partial.last_read_us.max(Some(timestamp));
            }
        }
        count_term(self.identities.as_ref(), &mut self.identity_counts, doc);
        count_term(self.paths.as_ref(), &mut self.path_counts, doc);
    }

    fn harvest(mut self) -> Aggregate {
        for (ordinal, count) in self.action_counts.iter().enumerate() {
            if let (Some(action), true) = (Action::from_ordinal(ordinal as u64), *count > 0) {
                self.partial.by_action.insert(action, *count);
            }
        }
        self.partial.by_identity = resolve_terms(self.identities.as_ref(), &self.identity_counts);
        self.partial.by_path = resolve_terms(self.paths.as_ref(), &self.path_counts);
        self.partial
    }
}

fn count_term(column: Option<&StrColumn>, counts: &mut [u32], doc: DocId) {
    let ordinal = column.and_then(|column| column.ords().first(doc));
    if let Some(slot) = ordinal.and_then(|ordinal| counts.get_mut(ordinal as usize)) {
        *slot += 1;
    }
}

fn resolve_terms(column: Option<&StrColumn>, counts: &[u32]) -> HashMap<String, u64> {
    let mut resolved = HashMap::new();
    let Some(column) = column else {
        return resolved;
    };
    let mut term = String::new();
    for (ordinal, count) in counts.iter().enumerate().filter(|(_, count)| **count > 0) {
        term.clear();
        if column
            .ord_to_str(ordinal as u64, &mut term)
            .unwrap_or(false)
        {
            resolved.insert(term.clone(), u64::from(*count));
        }
    }
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_orders_by_count_then_key() {
        let counts: HashMap<String, u64> = [("b", 5), ("a", 5), ("c", 9), ("d", 1)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let keys: Vec<_> = top(&counts, 3)
            .into_iter()
            .map(|r| (r.key, r.count))
            .collect();
        assert_eq!(
            keys,
            vec![("c".into(), 9), ("a".into(), 5), ("b".into(), 5)]
        );
        assert!(top(&counts, 0).is_empty());
    }

    #[test]
    fn merge_adds_counts_and_widens_bounds() {
        let mut left = Aggregate {
            total: 2,
            successful: 1,
            first_us: Some(10),
            last_us: Some(20),
            ..Default::default()
        };
        left.by_action.insert(Action::Read, 2);
        let mut right = Aggregate {
            total: 1,
            successful: 1,
            first_us: Some(5),
            last_us: Some(15),
            last_read_us: Some(15),
            ..Default::default()
        };
        right.by_action.insert(Action::Read, 1);
        left.merge(right);
        assert_eq!((left.total, left.failed()), (3, 1));
        assert_eq!(
            (left.first_us, left.last_us, left.last_read_us),
            (Some(5), Some(20), Some(15))
        );
        assert_eq!(left.by_action[&Action::Read], 3);
    }
}

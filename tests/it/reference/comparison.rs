//! Comparing server answers with the model, and the report of every disagreement.

use std::collections::HashSet;
use std::time::Duration;

use crate::harness::API_FIELDS;
use serde_json::Value;

use super::*;

// ---------------------------------------------------------------------------------------------
// Comparing responses with the model
// ---------------------------------------------------------------------------------------------

pub(super) fn shorten(text: &str) -> String {
    if text.len() <= MAX_SHOWN_CHARS {
        return text.to_owned();
    }
    let mut end = MAX_SHOWN_CHARS;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} chars)", &text[..end], text.len())
}

pub(super) fn log_id(log: &Value) -> Result<&str, String> {
    log["id"]
        .as_str()
        .ok_or_else(|| format!("log without a string id: {}", shorten(&log.to_string())))
}

pub(super) fn describe_log(log: &Value) -> String {
    format!("{} @ {}", log["id"], log["timestamp"])
}

/// Every returned event must be a known event of `tenant`.
pub(super) fn check_tenant_isolation(
    model: &Model,
    tenant: usize,
    got: &[Value],
) -> Result<(), String> {
    for log in got {
        let id = log_id(log)?;
        match model.tenant_of_id.get(id) {
            Some(&owner) if owner == tenant => {}
            Some(&owner) => {
                return Err(format!(
                    "event {id} of tenant {} returned to tenant {}",
                    model.tenant_ids[owner], model.tenant_ids[tenant]
                ));
            }
            None => return Err(format!("event {id} is unknown to the model")),
        }
    }
    Ok(())
}

pub(super) fn check_no_duplicates(got: &[Value]) -> Result<(), String> {
    let mut seen = HashSet::new();
    let duplicated: Vec<&str> = got
        .iter()
        .filter_map(|log| log["id"].as_str())
        .filter(|id| !seen.insert(*id))
        .take(5)
        .collect();
    if duplicated.is_empty() {
        Ok(())
    } else {
        Err(format!("ids returned twice (first 5): {duplicated:?}"))
    }
}

pub(super) fn check_same_set(got: &[Value], expected: &[&ModelEvent]) -> Result<(), String> {
    let got_ids: HashSet<&str> = got.iter().filter_map(|log| log["id"].as_str()).collect();
    let expected_ids: HashSet<&str> = expected.iter().map(|e| e.id.as_str()).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !got_ids.contains(e.id.as_str()))
        .map(|e| e.describe())
        .collect();
    let unexpected: Vec<String> = got
        .iter()
        .filter(|log| {
            log["id"]
                .as_str()
                .is_some_and(|id| !expected_ids.contains(id))
        })
        .map(describe_log)
        .collect();
    if missing.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} expected events missing (first 3: {:?}); {} unexpected events (first 3: {:?})",
        missing.len(),
        &missing[..missing.len().min(3)],
        unexpected.len(),
        &unexpected[..unexpected.len().min(3)]
    ))
}

/// The first difference between a returned event and the model's, field by field.
pub(super) fn diff_event(got: &Value, expected: &Value) -> Option<String> {
    let Some(object) = got.as_object() else {
        return Some(format!("not an object: {}", shorten(&got.to_string())));
    };
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    if keys != API_FIELDS {
        return Some(format!("fields {keys:?}, expected {API_FIELDS:?}"));
    }
    API_FIELDS
        .iter()
        .find(|field| got[**field] != expected[**field])
        .map(|field| {
            format!(
                "{field}: expected {}, got {}",
                expected[*field], got[*field]
            )
        })
}

/// `got` must be exactly `expected`: same events of the right tenant, same order, same fields.
pub(super) fn compare_events(
    model: &Model,
    tenant: usize,
    got: &[Value],
    expected: &[&ModelEvent],
) -> Result<(), String> {
    check_tenant_isolation(model, tenant, got)?;
    check_no_duplicates(got)?;
    check_same_set(got, expected)?;
    for (position, (log, event)) in got.iter().zip(expected).enumerate() {
        if log["id"].as_str() != Some(event.id.as_str()) {
            return Err(format!(
                "order differs at position {position}: expected {}, got {}",
                event.describe(),
                describe_log(log)
            ));
        }
        if let Some(diff) = diff_event(log, &event.api_json()) {
            return Err(format!("event {} at position {position}: {diff}", event.id));
        }
    }
    Ok(())
}

/// The first page must be the first `limit` expected events, with the right `has_more`.
pub(super) fn compare_first_page(
    model: &Model,
    tenant: usize,
    page: &Page,
    expected: &[&ModelEvent],
    limit: usize,
) -> Result<(), String> {
    let expected_page = &expected[..expected.len().min(limit)];
    compare_events(model, tenant, &page.logs, expected_page)?;
    let expected_has_more = expected.len() > limit;
    if page.has_more != expected_has_more {
        return Err(format!(
            "has_more: expected {expected_has_more} ({} matches, limit {limit}), got {}",
            expected.len(),
            page.has_more
        ));
    }
    Ok(())
}

/// Where two JSON values first differ (arrays element by element).
pub(super) fn diff_values(expected: &Value, got: &Value) -> String {
    if let (Some(want), Some(have)) = (expected.as_array(), got.as_array()) {
        let first = want.iter().zip(have).position(|(a, b)| a != b);
        return match first {
            Some(i) => format!(
                "first difference at [{i}] (lengths {} vs {}): expected {}, got {}",
                want.len(),
                have.len(),
                want[i],
                have[i]
            ),
            None => format!("lengths {} expected, {} got", want.len(), have.len()),
        };
    }
    format!(
        "expected {}, got {}",
        shorten(&expected.to_string()),
        shorten(&got.to_string())
    )
}

/// Field-by-field comparison of two JSON objects.
pub(super) fn compare_object(got: &Value, expected: &Value) -> Result<(), String> {
    let (Some(have), Some(want)) = (got.as_object(), expected.as_object()) else {
        return Err(format!("not an object: {}", shorten(&got.to_string())));
    };
    let mut problems = Vec::new();
    for (key, value) in want {
        match have.get(key) {
            None => problems.push(format!("`{key}` missing")),
            Some(actual) if actual != value => {
                problems.push(format!("`{key}`: {}", diff_values(value, actual)));
            }
            Some(_) => {}
        }
    }
    for key in have.keys().filter(|key| !want.contains_key(*key)) {
        problems.push(format!("unexpected field `{key}`"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub(super) struct Report {
    pub(super) workload_events: usize,
    pub(super) dropped_near_boundary: usize,
    pub(super) tie_events: usize,
    pub(super) batches: usize,
    pub(super) moved_batches: usize,
    pub(super) log_queries: usize,
    pub(super) empty_queries: usize,
    pub(super) filters_used: usize,
    pub(super) first_page_events: usize,
    pub(super) full_walks: usize,
    pub(super) walked_pages: usize,
    pub(super) walked_events: usize,
    pub(super) summaries: usize,
    pub(super) top_lists_tied_at_cut: usize,
    pub(super) secret_trails: usize,
    pub(super) identity_trails: usize,
    pub(super) concurrent_walks: usize,
    pub(super) concurrent_events: usize,
    pub(super) concurrent_walk_notes: Vec<String>,
    pub(super) final_walk_events: usize,
    pub(super) mismatches: Vec<String>,
    pub(super) mismatch_count: usize,
}

impl Report {
    pub(super) fn record_workload(&mut self, workload: &Workload) {
        self.batches = workload.batches.len();
        self.workload_events = workload.batches.iter().map(Vec::len).sum();
        self.dropped_near_boundary = workload.dropped_near_boundary;
        self.tie_events = workload.tie_events;
        self.moved_batches = workload.moved_batches;
    }

    pub(super) fn mismatch(&mut self, request: &str, detail: &str) {
        self.mismatch_count += 1;
        if self.mismatches.len() < MAX_REPORTED_MISMATCHES {
            self.mismatches.push(format!("{request}\n    {detail}"));
        }
    }

    pub(super) fn record(&mut self, request: &str, outcome: Result<(), String>) {
        if let Err(detail) = outcome {
            self.mismatch(request, &detail);
        }
    }

    pub(super) fn print(&self, seed: u64, elapsed: Duration) {
        println!("---- reference test summary (seed {seed}, {elapsed:.1?}) ----");
        println!(
            "ingested {} events in {} NDJSON batches ({} moved out of time order); {} in tie \
             groups; {} workload events dropped near the 30-day boundary",
            self.workload_events,
            self.batches,
            self.moved_batches,
            self.tie_events,
            self.dropped_near_boundary
        );
        println!(
            "log queries: {} ({} empty, {} filters), {} first-page events compared field by field",
            self.log_queries, self.empty_queries, self.filters_used, self.first_page_events
        );
        println!(
            "full cursor walks: {} ({} pages, {} events)",
            self.full_walks, self.walked_pages, self.walked_events
        );
        println!(
            "summaries: {} ({} top lists tied at the cut)",
            self.summaries, self.top_lists_tied_at_cut
        );
        println!(
            "trails: {} secret, {} identity",
            self.secret_trails, self.identity_trails
        );
        println!(
            "walks during ingest: {} ({} new events sent; {}), then {} events walked against the \
             updated model",
            self.concurrent_walks,
            self.concurrent_events,
            self.concurrent_walk_notes.join("; "),
            self.final_walk_events
        );
        println!("disagreements with the model: {}", self.mismatch_count);
    }

    pub(super) fn assert_no_mismatches(&self, seed: u64) {
        assert!(
            self.mismatch_count == 0,
            "{} disagreements with the model (seed {seed}); first {}:\n{}",
            self.mismatch_count,
            self.mismatches.len(),
            self.mismatches.join("\n")
        );
    }
}

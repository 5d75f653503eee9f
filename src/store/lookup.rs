//! The exact `request_id` lookup: bucket postings, confirmed on the `request_id` column.
//!
//! A `request_id` is near-unique, so an inverted-index term per value would cost ~21
//! bytes/event (the term dictionary of random strings), and a fast-field range scans the whole
//! column (~18 ms at 10M events). Instead every document also indexes a 12-bit hash of its
//! request id (`request_id_bucket`, see [`super::schema::request_id_bucket`]). A lookup
//! skips every segment whose `request_id` dictionary lacks the value (one dictionary probe),
//! and in the others walks the bucket's postings — about one document in 4,096 — keeping the
//! documents whose column value is the one asked for.
//!
//! A dictionary probe decompresses a zstd block, so a page search first asks the segment's
//! `request_id` Bloom filter ([`super::timeline::Timelines::may_hold_request_id`]) and does not
//! visit the segments it rules out: a request's events sit in one segment, or two.

use std::fmt;

use tantivy::columnar::Column;
use tantivy::query::{EmptyScorer, EnableScoring, Explanation, Query, Scorer, Weight};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED, TantivyError, Term};

use super::schema::{Fields, fast, request_id_bucket};

/// Documents whose `request_id` is exactly `value`.
#[derive(Clone)]
pub struct RequestIdQuery {
    bucket: Term,
    value: String,
}

impl RequestIdQuery {
    pub fn new(fields: &Fields, value: &str) -> Self {
        RequestIdQuery {
            bucket: Term::from_field_u64(fields.request_id_bucket, request_id_bucket(value)),
            value: value.to_string(),
        }
    }
}

impl fmt::Debug for RequestIdQuery {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RequestIdQuery({:?})", self.value)
    }
}

impl Query for RequestIdQuery {
    fn weight(&self, _scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        Ok(Box::new(self.clone()))
    }
}

impl Weight for RequestIdQuery {
    fn scorer(&self, reader: &SegmentReader, _boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        let Some(column) = reader.fast_fields().str(fast::REQUEST_ID)? else {
            return Ok(Box::new(EmptyScorer));
        };
        let Some(ord) = column.dictionary().term_ord(&self.value)? else {
            return Ok(Box::new(EmptyScorer));
        };
        let Some(postings) = reader
            .inverted_index(self.bucket.field())?
            .read_postings(&self.bucket, IndexRecordOption::Basic)?
        else {
            return Ok(Box::new(EmptyScorer));
        };
        Ok(Box::new(Confirmed::new(
            postings,
            column.ords().clone(),
            ord,
        )))
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        let mut scorer = self.scorer(reader, 1.0)?;
        if scorer.seek(doc) == doc {
            Ok(Explanation::new("RequestIdQuery", 1.0))
        } else {
            Err(TantivyError::InvalidArgument(format!(
                "document {doc} does not match"
            )))
        }
    }
}

/// The documents of `candidates` whose column ordinal is `ord`.
struct Confirmed<D> {
    candidates: D,
    ords: Column<u64>,
    ord: u64,
}

impl<D: DocSet> Confirmed<D> {
    /// Positioned on the first match, as a fresh `DocSet` must be.
    fn new(candidates: D, ords: Column<u64>, ord: u64) -> Self {
        let mut confirmed = Confirmed {
            candidates,
            ords,
            ord,
        };
        confirmed.settle();
        confirmed
    }

    /// Moves forward to the first matching candidate at or after the current one.
    fn settle(&mut self) -> DocId {
        let mut doc = self.candidates.doc();
        while doc != TERMINATED && self.ords.first(doc) != Some(self.ord) {
            doc = self.candidates.advance();
        }
        doc
    }
}

impl<D: DocSet + 'static> DocSet for Confirmed<D> {
    fn advance(&mut self) -> DocId {
        self.candidates.advance();
        self.settle()
    }

    fn seek(&mut self, target: DocId) -> DocId {
        self.candidates.seek(target);
        self.settle()
    }

    fn doc(&self) -> DocId {
        self.candidates.doc()
    }

    fn size_hint(&self) -> u32 {
        self.candidates.size_hint()
    }
}

impl<D: DocSet + 'static> Scorer for Confirmed<D> {
    fn score(&mut self) -> Score {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, AuditEvent, IdentityType};
    use crate::integrity::chain::ChainLink;
    use crate::store::schema::build_schema;

    #[test]
    fn finds_exactly_the_documents_of_a_request_id() {
        let (schema, fields) = build_schema();
        let index = tantivy::Index::create_in_ram(schema);
        let mut writer: tantivy::IndexWriter =
            index.writer_with_num_threads(1, 50_000_000).unwrap();
        let request_id = |i: u64| match i % 3 {
            0 => None,
            _ => Some(format!("req_{}", i / 2)),
        };
        for i in 0..20_000u64 {
            let event = AuditEvent {
                id: format!("e{i}"),
                tenant_id: "tnt_a".into(),
                timestamp_us: i as i64,
                action: Action::Read,
                secret_path: None,
                identity_type: IdentityType::User,
                identity_id: "user:a".into(),
                source_ip: None,
                user_agent: None,
                success: true,
                duration_ms: None,
                request_id: request_id(i),
                extra_data: Default::default(),
            };
            let source = serde_json::to_vec(&event).unwrap();
            writer
                .add_document(fields.document(&event, i, &source, ChainLink::GENESIS))
                .unwrap();
        }
        writer.commit().unwrap();
        let searcher = index.reader().unwrap().searcher();
        assert_eq!(
            searcher.segment_readers().len(),
            1,
            "doc ids are the loop's i"
        );
        for wanted in ["req_1", "req_4", "req_9999", "req_nope"] {
            let expected: Vec<u64> = (0..20_000u64)
                .filter(|&i| request_id(i).as_deref() == Some(wanted))
                .collect();
            let found = searcher
                .search(
                    &RequestIdQuery::new(&fields, wanted),
                    &tantivy::collector::DocSetCollector,
                )
                .unwrap();
            let mut found: Vec<u64> = found.iter().map(|a| u64::from(a.doc_id)).collect();
            found.sort_unstable();
            assert_eq!(found, expected, "{wanted}");
        }
    }
}

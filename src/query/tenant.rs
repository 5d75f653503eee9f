//! The tenant clause of every query, answered from a map of each segment's documents to their
//! tenant.
//!
//! Every query intersects its filters with the tenant's term postings. When a filter selects
//! few documents (an identity, a `request_id`), each of them seeks the tenant's postings, and a
//! postings seek reads the skip entry of every 128-document block it passes: for a tenant with
//! millions of events that was a quarter of an identity page's server time at 10M events. The
//! summary partials walk every tenant's postings once per segment anyway
//! ([`super::partials`]); they keep which tenant each document belongs to ([`TenantOfDoc`], one
//! byte per document for up to 254 tenants in a segment), and [`TenantQuery`] answers seeks
//! from it: "is document `d` the tenant's" is one array read, and the next document of the
//! tenant from `d` on a byte search. Walking forward document by document, when the tenant
//! drives a search (no other posting filter), still decodes its postings.
//!
//! A segment without partials yet (a failed warm), and a tenant holding few of a segment's
//! documents (whose postings skip quickly and whose documents would be sparse in the map), are
//! answered from the term postings as before.

use std::fmt;
use std::sync::Arc;

use tantivy::query::{EmptyScorer, EnableScoring, Explanation, Query, Scorer, TermQuery, Weight};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{DocId, DocSet, Score, SegmentReader, TERMINATED, Term};

use super::partials::{PartialCache, SegmentPartials};

/// Which tenant term (its number in the segment's term order) each document of a segment has.
#[derive(Debug)]
pub enum TenantOfDoc {
    /// Up to 254 tenants; [`u8::MAX`] marks a document without a tenant.
    Narrow(Vec<u8>),
    /// More; [`u32::MAX`] marks a document without a tenant.
    Wide(Vec<u32>),
}

impl TenantOfDoc {
    /// A map of `max_doc` documents, none with a tenant yet, for `tenants` tenant terms.
    pub fn new(max_doc: DocId, tenants: usize) -> TenantOfDoc {
        if tenants < usize::from(u8::MAX) {
            TenantOfDoc::Narrow(vec![u8::MAX; max_doc as usize])
        } else {
            TenantOfDoc::Wide(vec![u32::MAX; max_doc as usize])
        }
    }

    /// Records that `doc` has the tenant term numbered `tenant`.
    pub fn set(&mut self, doc: DocId, tenant: u32) {
        let doc = doc as usize;
        match self {
            TenantOfDoc::Narrow(tenants) => {
                if let (Some(slot), Ok(tenant)) = (tenants.get_mut(doc), u8::try_from(tenant)) {
                    *slot = tenant;
                }
            }
            TenantOfDoc::Wide(tenants) => {
                if let Some(slot) = tenants.get_mut(doc) {
                    *slot = tenant;
                }
            }
        }
    }

    /// Whether `doc` has the tenant term numbered `tenant`.
    fn has(&self, doc: DocId, tenant: u32) -> bool {
        let doc = doc as usize;
        match self {
            TenantOfDoc::Narrow(tenants) => {
                tenants.get(doc).is_some_and(|t| u32::from(*t) == tenant)
            }
            TenantOfDoc::Wide(tenants) => tenants.get(doc) == Some(&tenant),
        }
    }

    /// The first document at or after `from` with the tenant term numbered `tenant`.
    fn next(&self, from: DocId, tenant: u32) -> DocId {
        let from = from as usize;
        let found = match self {
            TenantOfDoc::Narrow(tenants) => u8::try_from(tenant).ok().and_then(|tenant| {
                memchr::memchr(tenant, tenants.get(from..)?).map(|at| from + at)
            }),
            TenantOfDoc::Wide(tenants) => tenants
                .get(from..)
                .and_then(|rest| rest.iter().position(|t| *t == tenant))
                .map(|at| from + at),
        };
        found.map_or(TERMINATED, |doc| doc as DocId)
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            TenantOfDoc::Narrow(tenants) => tenants.len(),
            TenantOfDoc::Wide(tenants) => 4 * tenants.len(),
        }
    }
}

/// A tenant answered from the map when it holds at least this share of a segment's
/// documents (1 in `DENSE_SHARE`); a rarer one from its postings, which skip few blocks.
const DENSE_SHARE: u32 = 16;

/// The documents of `tenant`.
#[derive(Clone)]
pub struct TenantQuery {
    term: Term,
    partials: Option<Arc<PartialCache>>,
}

impl TenantQuery {
    /// `tenant`'s documents (its term in `field`), from the maps `partials` keeps if given.
    pub fn new(field: Field, tenant: &str, partials: Option<Arc<PartialCache>>) -> TenantQuery {
        TenantQuery {
            term: Term::from_field_text(field, tenant),
            partials,
        }
    }
}

impl fmt::Debug for TenantQuery {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "TenantQuery({:?})", self.term)
    }
}

impl Query for TenantQuery {
    fn weight(&self, scoring: EnableScoring<'_>) -> tantivy::Result<Box<dyn Weight>> {
        let postings =
            TermQuery::new(self.term.clone(), IndexRecordOption::Basic).weight(scoring)?;
        Ok(Box::new(TenantWeight {
            tenant: self.term.value().as_str().unwrap_or_default().to_string(),
            partials: self.partials.clone(),
            postings,
        }))
    }

    fn query_terms<'a>(&'a self, visitor: &mut dyn FnMut(&'a Term, bool)) {
        visitor(&self.term, false);
    }
}

struct TenantWeight {
    tenant: String,
    partials: Option<Arc<PartialCache>>,
    postings: Box<dyn Weight>,
}

/// Where a segment's answer for the tenant comes from.
enum Source {
    /// Its map: the partials and the tenant's number there.
    Map(Arc<SegmentPartials>, u32),
    /// The segment holds no document of the tenant.
    Absent,
    /// The tenant's term postings.
    Postings,
}

impl TenantWeight {
    fn source(&self, reader: &SegmentReader) -> Source {
        let Some(partials) = self
            .partials
            .as_ref()
            .and_then(|cache| cache.cached(reader))
        else {
            return Source::Postings;
        };
        match partials.tenant_number(&self.tenant) {
            None => Source::Absent,
            Some((number, docs)) if docs >= reader.max_doc() / DENSE_SHARE => {
                Source::Map(partials, number)
            }
            Some(_) => Source::Postings,
        }
    }
}

impl Weight for TenantWeight {
    fn scorer(&self, reader: &SegmentReader, boost: Score) -> tantivy::Result<Box<dyn Scorer>> {
        match self.source(reader) {
            Source::Map(partials, number) => {
                let postings = self.postings.scorer(reader, boost)?;
                Ok(Box::new(TenantDocs::new(partials, number, postings)))
            }
            Source::Absent => Ok(Box::new(EmptyScorer)),
            Source::Postings => self.postings.scorer(reader, boost),
        }
    }

    fn explain(&self, reader: &SegmentReader, doc: DocId) -> tantivy::Result<Explanation> {
        self.postings.explain(reader, doc)
    }

    fn count(&self, reader: &SegmentReader) -> tantivy::Result<u32> {
        self.postings.count(reader)
    }
}

/// A tenant's documents of one segment: [`TenantOfDoc`] answers seeks, the tenant's postings
/// the walk forward from a document (decoding a block of postings beats searching the map
/// byte by byte when the tenant drives a search).
struct TenantDocs {
    partials: Arc<SegmentPartials>,
    tenant: u32,
    /// The postings, at or behind `doc` (behind after a seek).
    postings: Box<dyn Scorer>,
    doc: DocId,
}

impl TenantDocs {
    /// Positioned on the first document, as a fresh `DocSet` must be (the postings are too).
    fn new(partials: Arc<SegmentPartials>, tenant: u32, postings: Box<dyn Scorer>) -> TenantDocs {
        let doc = postings.doc();
        TenantDocs {
            partials,
            tenant,
            postings,
            doc,
        }
    }
}

impl DocSet for TenantDocs {
    fn advance(&mut self) -> DocId {
        if self.doc == TERMINATED {
            return TERMINATED;
        }
        if self.postings.doc() < self.doc {
            self.postings.seek(self.doc);
        }
        self.doc = self.postings.advance();
        self.doc
    }

    fn seek(&mut self, target: DocId) -> DocId {
        if target > self.doc {
            self.doc = self.partials.tenant_of_doc().next(target, self.tenant);
        }
        self.doc
    }

    /// One array read: the intersection of a rare filter with the tenant asks this of every
    /// candidate, and a full seek would search on to the tenant's next document for nothing.
    fn seek_danger(&mut self, target: DocId) -> tantivy::SeekDangerResult {
        if target != TERMINATED && self.partials.tenant_of_doc().has(target, self.tenant) {
            self.doc = target;
            tantivy::SeekDangerResult::Found
        } else {
            tantivy::SeekDangerResult::SeekLowerBound(target.saturating_add(1))
        }
    }

    fn doc(&self) -> DocId {
        self.doc
    }

    fn size_hint(&self) -> u32 {
        self.postings.size_hint()
    }
}

impl Scorer for TenantDocs {
    fn score(&mut self) -> Score {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use tantivy::query::{BooleanQuery, Occur};
    use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Warmer};

    use super::*;
    use crate::store::scan::ScanDirectory;
    use crate::store::schema::build_schema;

    /// Three tenants of very different sizes over two segments, with deletes: doc `i` of
    /// segment `s` belongs to tenant `tenant_of(i)` and has identity `i % 97`.
    fn fixture() -> (Index, IndexReader, Arc<PartialCache>, crate::store::Fields) {
        let (schema, fields) = build_schema();
        let index = Index::create_in_ram(schema);
        let cache = Arc::new(PartialCache::new(fields.tenant, ScanDirectory::in_place()));
        let warmer = Arc::downgrade(&cache) as Weak<dyn Warmer>;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .warmers(vec![warmer])
            .try_into()
            .unwrap();
        let mut writer: IndexWriter = index.writer_with_num_threads(1, 15_000_000).unwrap();
        writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
        for segment in 0..2 {
            for i in 0..5_000u64 {
                let mut doc = tantivy::TantivyDocument::default();
                doc.add_text(fields.tenant, tenant_of(i));
                doc.add_text(fields.identity_id, format!("user:{}", i % 97));
                doc.add_i64(fields.timestamp, (segment * 5_000 + i) as i64);
                doc.add_u64(fields.seq, segment * 5_000 + i);
                writer.add_document(doc).unwrap();
            }
            writer.commit().unwrap();
        }
        writer.delete_term(Term::from_field_text(fields.identity_id, "user:3"));
        writer.commit().unwrap();
        reader.reload().unwrap();
        (index, reader, cache, fields)
    }

    /// 80 % `tnt_big`, ~20 % `tnt_mid`, one in 1,000 `tnt_tiny`.
    fn tenant_of(i: u64) -> &'static str {
        match i {
            i if i % 1_000 == 7 => "tnt_tiny",
            i if i % 5 == 0 => "tnt_mid",
            _ => "tnt_big",
        }
    }

    fn docs(query: &dyn Query, searcher: &tantivy::Searcher, segment: u32) -> Vec<DocId> {
        let weight = query
            .weight(EnableScoring::disabled_from_searcher(searcher))
            .unwrap();
        let mut scorer = weight
            .scorer(searcher.segment_reader(segment), 1.0)
            .unwrap();
        let mut docs = Vec::new();
        while scorer.doc() != TERMINATED {
            docs.push(scorer.doc());
            scorer.advance();
        }
        docs
    }

    #[test]
    fn tenant_maps_answer_as_the_tenant_postings_do() {
        let (_index, reader, cache, fields) = fixture();
        let searcher = reader.searcher();
        assert_eq!(cache.cached_segments(), 2, "the warmer built both segments");
        for tenant in ["tnt_big", "tnt_mid", "tnt_tiny", "tnt_none"] {
            let postings = TermQuery::new(
                Term::from_field_text(fields.tenant, tenant),
                IndexRecordOption::Basic,
            );
            let mapped = TenantQuery::new(fields.tenant, tenant, Some(cache.clone()));
            let plain = TenantQuery::new(fields.tenant, tenant, None);
            let identity = Term::from_field_text(fields.identity_id, "user:5");
            let with_identity = |tenant_clause: Box<dyn Query>| {
                BooleanQuery::new(vec![
                    (Occur::Must, tenant_clause),
                    (
                        Occur::Must,
                        Box::new(TermQuery::new(identity.clone(), IndexRecordOption::Basic)),
                    ),
                ])
            };
            for segment in 0..2 {
                let expected = docs(&postings, &searcher, segment);
                assert_eq!(docs(&mapped, &searcher, segment), expected, "{tenant}");
                assert_eq!(docs(&plain, &searcher, segment), expected, "{tenant}");
                let expected = docs(
                    &with_identity(Box::new(postings.clone())),
                    &searcher,
                    segment,
                );
                let found = docs(&with_identity(Box::new(mapped.clone())), &searcher, segment);
                assert_eq!(found, expected, "{tenant} and an identity");
                let counted = mapped
                    .weight(EnableScoring::disabled_from_searcher(&searcher))
                    .unwrap()
                    .count(searcher.segment_reader(segment))
                    .unwrap();
                assert_eq!(
                    counted,
                    postings.count(&searcher).unwrap() as u32 / 2,
                    "{tenant}: alive documents"
                );
            }
        }
    }

    #[test]
    fn seeks_and_advances_in_any_order_land_where_the_postings_do() {
        let (_index, reader, cache, fields) = fixture();
        let searcher = reader.searcher();
        let mut rng = fastrand::Rng::with_seed(12);
        for tenant in ["tnt_big", "tnt_mid"] {
            let scorer = |partials| {
                TenantQuery::new(fields.tenant, tenant, partials)
                    .weight(EnableScoring::disabled_from_searcher(&searcher))
                    .unwrap()
                    .scorer(searcher.segment_reader(1), 1.0)
                    .unwrap()
            };
            let mut mapped = scorer(Some(cache.clone()));
            assert!(mapped.downcast_ref::<TenantDocs>().is_some());
            let mut postings = scorer(None);
            while postings.doc() != TERMINATED {
                let (found, expected) = if rng.bool() {
                    (mapped.advance(), postings.advance())
                } else {
                    let target = mapped.doc().saturating_add(rng.u32(0..40));
                    (mapped.seek(target), postings.seek(target))
                };
                assert_eq!(found, expected, "{tenant}");
                assert_eq!(mapped.doc(), postings.doc(), "{tenant}");
            }
        }
    }

    #[test]
    fn dense_tenants_come_from_the_map_and_rare_ones_from_postings() {
        let (_index, reader, cache, fields) = fixture();
        let searcher = reader.searcher();
        let segment = searcher.segment_reader(0);
        let scorer = |tenant: &str| {
            TenantQuery::new(fields.tenant, tenant, Some(cache.clone()))
                .weight(EnableScoring::disabled_from_searcher(&searcher))
                .unwrap()
                .scorer(segment, 1.0)
                .unwrap()
        };
        assert!(scorer("tnt_big").downcast_ref::<TenantDocs>().is_some());
        assert!(scorer("tnt_mid").downcast_ref::<TenantDocs>().is_some());
        assert!(scorer("tnt_tiny").downcast_ref::<TenantDocs>().is_none());
        assert!(scorer("tnt_none").downcast_ref::<EmptyScorer>().is_some());
    }

    #[test]
    fn tenant_maps_find_a_tenants_documents_narrow_and_wide() {
        for tenants in [3, 300] {
            let mut map = TenantOfDoc::new(10, tenants);
            for (doc, tenant) in [(1, 2), (4, 2), (5, 1), (9, 2)] {
                map.set(doc, tenant);
            }
            assert!(matches!(
                (tenants, &map),
                (3, TenantOfDoc::Narrow(_)) | (300, TenantOfDoc::Wide(_))
            ));
            assert_eq!(map.next(0, 2), 1);
            assert_eq!(map.next(2, 2), 4);
            assert_eq!(map.next(5, 2), 9);
            assert_eq!(map.next(10, 2), TERMINATED);
            assert_eq!(map.next(0, 0), TERMINATED);
            assert!(map.has(5, 1) && !map.has(5, 2) && !map.has(0, 2));
            assert!(!map.has(TERMINATED, 2));
        }
    }
}

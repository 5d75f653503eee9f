//! The Tantivy schema, built once into typed [`Fields`].
//!
//! Designed for the whole query API: exact-match fields are raw `STRING`s or ordinals, the
//! time and the ingest sequence are fast fields (keyset paging sorts on them), `secret_path`
//! and `identity_id` are fast too (summaries count them without loading events), `source_ip`
//! is an IP field (CIDR ranges), and `text` feeds the `q=` free-text search. The event itself
//! is kept once, as its storage JSON in `source`, without the values its columns already hold
//! (see [`super::source`]).
//!
//! Every document carries its link of the per-tenant hash chain: `chain_seq` (position in the
//! tenant's chain) and `chain_hash` (in four 64-bit words), as fast-field columns beside the
//! document store rather than in it (see [`super::chain`]).

use tantivy::schema::{
    BytesOptions, Field, IndexRecordOption, IpAddrOptions, NumericOptions, STORED, Schema,
    TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::RAW_TOKENIZER_NAME;

use crate::event::AuditEvent;
use crate::integrity::chain::ChainLink;

/// Bumped whenever the schema, the index settings or the stored-source format change; stored
/// in every commit payload. An index of an older version is rebuilt at open (see
/// [`super::migrate`]). The document-store block size is the exception: an opened index writes
/// its new segments with the current one and keeps the old segments as they are.
///
/// - 1: the first layout.
/// - 2: compact sources (`id`, `timestamp_us`, `source_ip`, `request_id` restored from the
///   columns), the `request_id_bucket` lookup field, no norms on `identity_type`.
/// - 3: the hash chain: `chain_seq` and a filled `chain_hash` on every document.
/// - 4: the chain link in columns (`chain_seq`, `chain_hash_0..3`) instead of the document
///   store, where its random bytes also cost the sources around them their compression.
pub const SCHEMA_VERSION: u32 = 4;

/// Bits of the `request_id` hash kept in `request_id_bucket`: 4,096 buckets, so an exact
/// lookup checks about one document in 4,096 of a segment that holds the id at all, while the
/// postings cost under 2 bytes per event (a unique term per event would cost ~21).
pub const REQUEST_ID_BUCKET_BITS: u32 = 12;

/// The `request_id_bucket` value of a request id: the low bits of its CRC-32C (stable across
/// versions and platforms, as an on-disk value must be).
pub fn request_id_bucket(request_id: &str) -> u64 {
    u64::from(crc32c::crc32c(request_id.as_bytes()) & ((1 << REQUEST_ID_BUCKET_BITS) - 1))
}

/// The value of the `id` fast field: `tenant_id/id`, the key producer ids are deduplicated
/// on (ids are unique per tenant only). Neither a tenant id nor an event id may contain `/`,
/// so the key is unambiguous, and a bare id (written before keys were per tenant) is told
/// apart by having no `/`.
pub fn id_key(tenant_id: &str, id: &str) -> String {
    format!("{tenant_id}/{id}")
}

/// Names of the fast fields read by collectors.
pub mod fast {
    pub const ID: &str = "id";
    pub const REQUEST_ID: &str = "request_id";
    pub const TIMESTAMP: &str = "ts";
    pub const SEQ: &str = "seq";
    pub const ACTION: &str = "action";
    pub const SUCCESS: &str = "success";
    pub const IDENTITY_ID: &str = "identity_id";
    pub const SECRET_PATH: &str = "secret_path";
    pub const SOURCE_IP: &str = "source_ip";
    pub const CHAIN_SEQ: &str = "chain_seq";
    /// The chain hash, big-endian, eight bytes per column.
    pub const CHAIN_HASH: [&str; 4] = [
        "chain_hash_0",
        "chain_hash_1",
        "chain_hash_2",
        "chain_hash_3",
    ];
}

/// Typed handles of every field; nothing else looks fields up by name.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    pub id: Field,
    pub tenant: Field,
    pub timestamp: Field,
    pub seq: Field,
    pub action: Field,
    pub identity_type: Field,
    pub identity_id: Field,
    pub secret_path: Field,
    pub source_ip: Field,
    pub request_id: Field,
    pub request_id_bucket: Field,
    pub success: Field,
    pub text: Field,
    pub source: Field,
    pub chain_hash: [Field; 4],
    pub chain_seq: Field,
}

/// Builds the schema and its field handles.
///
/// Disk per event is a product goal, so every choice here is about bytes: near-unique values
/// (`id`, `request_id`, timestamp, sequence, IP) are fast fields only — an inverted-index term
/// per event would cost more than the event's compressed source — and are queried through
/// fast-field ranges. No field keeps norms: results are ordered by time, never scored. An exact
/// `request_id` is found through `request_id_bucket` (a few postings per 4,096 events) and
/// confirmed on the `request_id` column, so it reads no column end to end.
pub fn build_schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let fast_only = || NumericOptions::default().set_fast();
    let indexed = || NumericOptions::default().set_indexed();
    let indexed_fast = || indexed().set_fast();
    let raw_indexing = || {
        TextFieldIndexing::default()
            .set_tokenizer(RAW_TOKENIZER_NAME)
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false)
    };
    let exact = || TextOptions::default().set_indexing_options(raw_indexing());
    let exact_fast = || exact().set_fast(RAW_TOKENIZER_NAME);
    let fast_text = || TextOptions::default().set_fast(RAW_TOKENIZER_NAME);
    // Free text keeps positions: a word the tokenizer splits (`lease_7f3a`, `api-credentials`,
    // `sa:billing`) becomes a phrase query, which needs them.
    let free_text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions)
            .set_fieldnorms(false),
    );
    let fields = Fields {
        id: builder.add_text_field(fast::ID, fast_text()),
        tenant: builder.add_text_field("tenant", exact()),
        timestamp: builder.add_i64_field(fast::TIMESTAMP, fast_only()),
        seq: builder.add_u64_field(fast::SEQ, fast_only()),
        action: builder.add_u64_field(fast::ACTION, indexed_fast()),
        identity_type: builder.add_u64_field("identity_type", indexed()),
        identity_id: builder.add_text_field(fast::IDENTITY_ID, exact_fast()),
        secret_path: builder.add_text_field(fast::SECRET_PATH, exact_fast()),
        source_ip: builder.add_ip_addr_field(fast::SOURCE_IP, IpAddrOptions::default().set_fast()),
        request_id: builder.add_text_field(fast::REQUEST_ID, fast_text()),
        request_id_bucket: builder.add_u64_field("request_id_bucket", indexed()),
        success: builder.add_bool_field(fast::SUCCESS, indexed_fast()),
        text: builder.add_text_field("text", free_text),
        source: builder.add_bytes_field("source", BytesOptions::from(STORED)),
        chain_hash: fast::CHAIN_HASH.map(|name| builder.add_u64_field(name, fast_only())),
        chain_seq: builder.add_u64_field(fast::CHAIN_SEQ, fast_only()),
    };
    (builder.build(), fields)
}

/// An index in memory holding one empty document (one segment).
#[cfg(test)]
pub fn one_empty_document_index() -> tantivy::Index {
    let (schema, _) = build_schema();
    let index = tantivy::Index::create_in_ram(schema);
    let mut writer: tantivy::IndexWriter = index.writer(15_000_000).unwrap();
    writer
        .add_document(tantivy::TantivyDocument::default())
        .unwrap();
    writer.commit().unwrap();
    index
}

impl Fields {
    /// The compact stored source a stored document keeps, as Tantivy reads it (empty when it
    /// has none); pages read it in place instead ([`super::source::stored_bytes`]).
    pub fn stored_source<'a>(&self, document: &'a tantivy::TantivyDocument) -> &'a [u8] {
        use tantivy::schema::Value;
        document
            .get_first(self.source)
            .and_then(|value| value.as_bytes())
            .unwrap_or_default()
    }

    /// The Tantivy document of one event with its chain `link`. `source` is the event's
    /// storage JSON; the document keeps it compact (see [`super::source::compact`]).
    pub fn document(
        &self,
        event: &AuditEvent,
        seq: u64,
        source: &[u8],
        link: ChainLink,
    ) -> tantivy::TantivyDocument {
        let mut doc = tantivy::TantivyDocument::default();
        doc.add_text(self.id, id_key(&event.tenant_id, &event.id));
        doc.add_text(self.tenant, &event.tenant_id);
        doc.add_i64(self.timestamp, event.timestamp_us);
        doc.add_u64(self.seq, seq);
        doc.add_u64(self.action, event.action.ordinal());
        doc.add_u64(self.identity_type, event.identity_type.ordinal());
        doc.add_text(self.identity_id, &event.identity_id);
        doc.add_text(self.text, &event.identity_id);
        if let Some(path) = &event.secret_path {
            doc.add_text(self.secret_path, path);
            doc.add_text(self.text, path);
        }
        if let Some(ip) = event.source_ip {
            doc.add_ip_addr(self.source_ip, to_ipv6(ip));
        }
        if let Some(request_id) = &event.request_id {
            doc.add_text(self.request_id, request_id);
            doc.add_u64(self.request_id_bucket, request_id_bucket(request_id));
        }
        if let Some(user_agent) = &event.user_agent {
            doc.add_text(self.text, user_agent);
        }
        for (key, value) in &event.extra_data {
            doc.add_text(self.text, key);
            add_json_strings(&mut doc, self.text, value);
        }
        doc.add_bool(self.success, event.success);
        doc.add_bytes(self.source, &super::source::compact(source, event));
        doc.add_u64(self.chain_seq, link.seq);
        for (field, word) in self
            .chain_hash
            .iter()
            .zip(super::chain::hash_words(&link.hash))
        {
            doc.add_u64(*field, word);
        }
        doc
    }
}

/// Tantivy keeps every IP as IPv6; IPv4 addresses are stored mapped (`::ffff:a.b.c.d`).
pub fn to_ipv6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

/// Adds every string, number and key inside `value` to the free-text field.
fn add_json_strings(doc: &mut tantivy::TantivyDocument, field: Field, value: &serde_json::Value) {
    match value {
        serde_json::Value::String(text) => doc.add_text(field, text),
        serde_json::Value::Number(number) => doc.add_text(field, number.to_string()),
        serde_json::Value::Array(items) => {
            for item in items {
                add_json_strings(doc, field, item);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                doc.add_text(field, key);
                add_json_strings(doc, field, item);
            }
        }
        serde_json::Value::Bool(_) | serde_json::Value::Null => {}
    }
}

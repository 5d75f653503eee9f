//! Exports (SPEC §3.5): time ranges of a tenant's events written to object storage as JSONL or
//! CSV part files plus a manifest.
//!
//! `format` encodes part files (streaming, optionally gzip, with per-file record count, size
//! and SHA-256).

pub mod format;

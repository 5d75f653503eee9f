//! Exports (SPEC §3.5): time ranges of a tenant's events written to object storage as JSONL or
//! CSV part files plus a manifest.
//!
//! - [`job`]: the data model (spec, checkpoint, status) shared by REST, runner and operator;
//! - [`request`]: what an export asks for (a REST body or an AuditExport spec), validated once;
//! - [`engine`]: one job from snapshot to manifest, with retries and resume;
//! - [`manifest`]: the signed manifest and the chain of manifests per destination family;
//! - [`metrics`]: job runs, records, bytes, parts and retries by destination type;
//! - [`format`]: part-file encoders (JSONL/CSV, gzip, size and SHA-256);
//! - [`sink`]: destinations (file, S3, GCS, Azure Blob) behind one trait;
//! - [`credentials`]: destination credentials from ScaiVault (or a development directory);
//! - [`policy`]: tenant confinement (the `file` root, allowed credentials paths);
//! - [`supervisor`]: the job supervisor of both modes (slots, stop reasons, phases, resume)
//!   and the [`supervisor::JobStore`] it records jobs in;
//! - [`schedule`]: continuous exports (cron schedules, the exactly-once watermark);
//! - [`registry`] and [`runner`]: where exports are recorded, and the standalone job runner
//!   (the supervisor over the job files).

pub mod credentials;
pub mod engine;
pub mod format;
pub mod job;
pub mod manifest;
pub mod metrics;
pub mod policy;
pub mod registry;
pub mod request;
pub mod runner;
pub mod schedule;
pub mod sink;
pub mod supervisor;

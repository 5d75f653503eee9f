//! `scaivault-audit`: the audit-log service of the ScaiVault secrets manager, as a library.
//!
//! ```text
//! HTTP (api) ─▶ auth ─▶ event validation ─▶ store (WAL ─▶ Tantivy index) ─▶ query ─▶ JSON
//! AuditExport / REST export ─▶ reconcile (operator) ─▶ job supervisor ─▶ engine ─▶ sink
//!     ─▶ status (written by the leader only)
//! ```
//!
//! Modules, one concern each: [`event`] (the SPEC §2 event, its validation and JSON shapes),
//! [`timestamp`] (RFC 3339 ⇄ microseconds), [`store`] (write-ahead log, index, the single
//! writer), [`query`] (filters, versioned cursors, summaries), [`api`] (the REST surface and
//! its server), [`auth`] (tokens, scopes, tenants), [`export`] (jobs, engine, formats, sinks), [`integrity`] (hash chain, keys,
//! checkpoints, verification), [`retention`] (the sweep that deletes expired events),
//! [`snapshot`] (index snapshots in object storage and restoring from them),
//! [`operator`] (the `AuditExport` resource, controller and leader election), [`config`]
//! (settings), [`telemetry`] (logs and metrics), [`state`] (the handles every handler shares),
//! [`key_file`], [`durable_file`], [`token_bucket`] and [`reload`] (re-reading mounted files)
//! (small shared mechanisms).
//!
//! The command line (`serve`, `check-config`, `healthcheck`, `token`, `crdgen`, and the offline `import`, `gen`
//! and `bench`) is the binary's (`src/main.rs`, `src/cli/`), not the library's: the library has
//! no `anyhow` and no subcommands. `docs/architecture.md` draws the modules, the two data flows and
//! which module owns which state.

pub mod api;
pub mod auth;
pub mod config;
pub mod durable_file;
pub mod event;
pub mod export;
pub mod integrity;
pub mod key_file;
pub mod operator;
pub mod query;
pub mod reload;
pub mod retention;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod timestamp;
pub mod token_bucket;

//! `scaivault-audit`: the audit-log service of the ScaiVault secrets manager.
//!
//! ```text
//! HTTP (api) ─▶ auth ─▶ event validation ─▶ store (WAL ─▶ Tantivy index) ─▶ query ─▶ JSON
//! ```
//!
//! Modules, one concern each: [`event`] (the SPEC §2 event), [`store`] (write-ahead log, index,
//! the single writer), [`query`] (filters, cursors), [`api`] (the REST surface), [`auth`]
//! (tokens, scopes, tenants), [`config`], [`telemetry`], [`state`] (what handlers share), and
//! the offline commands [`import`], [`workload`] and [`bench`].

pub mod api;
pub mod auth;
pub mod bench;
pub mod config;
pub mod event;
pub mod export;
pub mod import;
pub mod key_file;
pub mod operator;
pub mod query;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod timestamp;
pub mod token_bucket;
pub mod workload;

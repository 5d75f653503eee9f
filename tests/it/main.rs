//! The black-box tests, one binary: the real `scaivault-audit` binary driven over HTTP through
//! [`harness`], one module per concern. Tests that need a tool from `scripts/` are
//! `#[ignore = "needs scripts/…"]`: plain `cargo test` skips them, `scripts/test.sh` installs
//! the tools and runs them with `--include-ignored` (see docs/testing.md).

// Test code: a failed expectation is a test failure, so panicking is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod audit_of_audit;
mod auth_hardening;
mod check_config;
mod cluster;
mod cluster_exports;
mod cluster_restore;
mod cluster_schedules;
mod durability;
mod export_confinement;
mod export_schedules;
mod export_sinks;
mod export_verify;
mod exports;
mod helm_chart;
mod helm_cluster;
mod helm_ops;
mod ingest_api;
mod integrity;
mod jwt_auth;
mod metrics;
mod openapi;
mod operations;
mod operator_crd;
mod operator_e2e;
mod operator_kmock;
mod query_api;
mod reference;
mod reloads;
mod retention;
mod snapshots;
mod store_hardening;
mod tls;

//! The offline subcommands of the `scaivault-audit` binary: `import` (bulk load), `gen` (the
//! reference workload) and `bench` (benchmarks). They use the library like any other client
//! and report errors with `anyhow`, which the library itself does not use.

pub mod bench;
pub mod import;
pub mod workload;

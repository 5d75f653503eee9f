//! The subcommands of the `scaivault-audit` binary: `serve` ([`serve`]), `check-config`,
//! `healthcheck` ([`healthcheck`]), `token` ([`token`]), `integrity` ([`integrity`], the signing key ring), `snapshot`
//! ([`snapshot`], index snapshots), `crdgen`, `verify`
//! ([`verify`], an export or a data directory), and the offline commands `import` ([`import`],
//! bulk load), `gen` ([`workload`], the reference workload) and `bench` ([`bench`]). They use the
//! library like any other client and report errors with `anyhow`, which the library itself does
//! not use.

pub mod bench;
pub mod healthcheck;
pub mod import;
pub mod integrity;
pub mod serve;
pub mod snapshot;
pub mod token;
pub mod verify;
pub mod workload;

use anyhow::Context;
use clap::{Parser, Subcommand};
use scaivault_audit::api;
use scaivault_audit::config::{ConfigError, Settings, SettingsArgs};

#[derive(Debug, Parser)]
#[command(
    name = "scaivault-audit",
    version,
    about = "Audit-log service of the ScaiVault secrets manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (defaults: data in ./data, listening on 127.0.0.1:8080).
    Serve(SettingsArgs),
    /// Validate the configuration and print the effective settings as TOML.
    CheckConfig(SettingsArgs),
    /// Ask the local server whether it is alive (or, with --ready, ready) over HTTP or HTTPS
    /// as configured; exit status 0 when it answers 200, 1 otherwise (for HEALTHCHECK).
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Bulk-load NDJSON events into a data directory (offline: the server must not run on it).
    Import(import::ImportArgs),
    /// Write the reference workload (docs/workload.md) as NDJSON.
    Gen(workload::GenArgs),
    /// Run a benchmark and print its figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Manage static API tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Manage the key ring that signs checkpoints and export manifests.
    #[command(subcommand)]
    Integrity(integrity::IntegrityCommand),
    /// Index snapshots in object storage ([snapshots]): create (stopped store), restore (into
    /// an empty data directory), list.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Verify an export at its destination (signature, files, records, hash chain), or a data
    /// directory with --data-dir. Exit status 0: intact; 1: problems found; 2: could not run.
    Verify(verify::VerifyArgs),
    /// Write the AuditExport and AuditExportSchedule CustomResourceDefinitions (generated from
    /// the Rust types).
    Crdgen {
        /// Output file of AuditExport; `-` writes to stdout.
        #[arg(long, default_value = "crds/auditexport.yaml")]
        output: std::path::PathBuf,
        /// Output file of AuditExportSchedule; `-` writes to stdout.
        #[arg(long, default_value = "crds/auditexportschedule.yaml")]
        schedule_output: std::path::PathBuf,
    },
}

/// A command used wrongly (arguments that parse but do not go together, an invalid value):
/// exit status 2, like clap's own usage errors, where failures at run time exit 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit status of a failed command: 2 for a usage error (clap's, a [`UsageError`], or an
/// invalid configuration: a flag, variable or config file the command cannot run with), 1 for
/// a failure at run time (I/O, a refused operation, a server that cannot start).
fn failure_status(error: &anyhow::Error) -> u8 {
    let usage = error
        .chain()
        .any(|cause| cause.is::<UsageError>() || cause.is::<ConfigError>());
    if usage { 2 } else { 1 }
}

/// Parses the command line, runs the subcommand, and maps an error to its exit status
/// ([`failure_status`]; `verify` keeps its own 0/1/2).
pub fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Verify(args) = cli.command {
        return match run_async_value(verify::run(args)) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::ExitCode::from(2)
            }
        };
    }
    let result = match cli.command {
        Command::Serve(args) => run_async(serve::serve(args)),
        Command::CheckConfig(args) => check_config(&args),
        Command::Healthcheck(args) => run_async(healthcheck::run(args)),
        Command::Import(args) => run_async(import::run(args)),
        Command::Gen(args) => workload::run_gen(&args).context("gen failed"),
        Command::Bench(command) => run_async(bench::run(command)),
        Command::Token(command) => token::run(command),
        Command::Integrity(command) => integrity::run(command),
        Command::Snapshot(command) => run_async(snapshot::run(command)),
        Command::Crdgen {
            output,
            schedule_output,
        } => scaivault_audit::operator::crd_yaml()
            .and_then(|yaml| {
                scaivault_audit::operator::schedule_crd_yaml().map(|schedule| (yaml, schedule))
            })
            .map_err(anyhow::Error::msg)
            .and_then(|(yaml, schedule)| {
                crdgen(&output, &yaml)?;
                crdgen(&schedule_output, &schedule)
            }),
        Command::Verify(_) => Ok(()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let message = format!("error: {error:#}");
            let line =
                scaivault_audit::telemetry::output_line("ERROR", "scaivault_audit", &message, &[]);
            eprintln!("{line}");
            std::process::ExitCode::from(failure_status(&error))
        }
    }
}

fn run_async(future: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    run_async_value(future)
}

fn run_async_value<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?
        .block_on(future)
}

fn check_config(args: &SettingsArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    if let Some((cert, key)) = &settings.tls {
        api::tls::acceptor(cert, key)?;
    }
    // A configured key ring must exist and load, as `serve` will require (the default one is
    // created at the first start).
    if !settings.integrity.create_keys {
        scaivault_audit::integrity::keys::Keyring::load(&settings.integrity.keys_dir, false)?;
    }
    print!("{}", settings.describe());
    Ok(())
}

fn crdgen(output: &std::path::Path, yaml: &str) -> anyhow::Result<()> {
    if output == std::path::Path::new("-") {
        print!("{yaml}");
        return Ok(());
    }
    if let Some(parent) = output
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    std::fs::write(output, yaml)
        .with_context(|| format!("failed to write {}", output.display()))?;
    eprintln!("wrote {}", output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_runtime_failures_exit_1() {
        let invalid = ConfigError::Invalid {
            key: "listen",
            message: "not an address".into(),
        };
        assert_eq!(failure_status(&anyhow::Error::new(invalid)), 2);
        let usage = anyhow::Error::new(UsageError("give --tenant-id".into()));
        assert_eq!(failure_status(&usage.context("token new failed")), 2);
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "in use");
        assert_eq!(failure_status(&anyhow::Error::new(io)), 1);
        assert_eq!(failure_status(&anyhow::anyhow!("no key ring")), 1);
    }
}

//! `scaivault-audit verify LOCATION`: checks an export where it lies (docs/integrity.md)
//! with [`scaivault_audit::integrity::verify`]; `verify --data-dir DIR` checks a data
//! directory's chains ([`verify_data_dir`]).
//!
//! LOCATION is a local directory (or a `manifest.json` in one), `s3://BUCKET/PREFIX/`,
//! `gs://BUCKET/PREFIX/` or `azure://ACCOUNT/CONTAINER/PREFIX/` (or the URL of a
//! `manifest.json`). Exit status: 0 when everything holds, 1 when a problem was found, 2 when
//! the verification could not run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args};
use scaivault_audit::config::{Settings, SettingsArgs};
use scaivault_audit::export::credentials::{
    CredentialSource, DestinationCredentials, ScaiVaultClient, SecretData,
};
use scaivault_audit::export::job::{Destination, DestinationType};
use scaivault_audit::export::sink::{self, Sink, SinkContext, endpoint::EndpointPolicy};
use scaivault_audit::integrity::keys::PublicKeys;
use scaivault_audit::integrity::verify::{KeyMap, Report, verify_export};
use scaivault_audit::store::verify::{self as store_verify, StoreReport};

/// Name of the manifest an export writes last.
const MANIFEST: &str = "manifest.json";

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["location", "data_dir"])))]
pub struct VerifyArgs {
    /// The export: a directory, s3://BUCKET/PREFIX/, gs://BUCKET/PREFIX/,
    /// azure://ACCOUNT/CONTAINER/PREFIX/, or a manifest.json (path or URL).
    pub location: Option<String>,
    /// Verify the hash chains and checkpoints of a data directory instead (offline).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// ScaiVault secret path of the destination credentials (read through the ScaiVault
    /// client of `--config`).
    #[arg(long, value_name = "PATH")]
    pub credentials_path: Option<String>,
    /// The service's configuration file (for `--credentials-path`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A JSON object with the keys of the credentials secret's `data` (outside the service).
    #[arg(long, value_name = "FILE", conflicts_with = "credentials_path")]
    pub credentials_file: Option<PathBuf>,
    /// Endpoint of the object store (emulators, S3-compatible stores); overrides the
    /// credentials' `endpoint_url`.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Trusted public keys: a JWKS / JWK (JSON) or an Ed25519 SPKI PEM.
    #[arg(long, value_name = "FILE", required_unless_present_any = ["keys_url", "data_dir"])]
    pub public_key: Option<PathBuf>,
    /// Fetch the trusted keys from the service (`GET /v1/audit/integrity/keys`).
    #[arg(long, value_name = "URL", conflicts_with = "public_key")]
    pub keys_url: Option<String>,
    /// A file holding the bearer token for `--keys-url`.
    #[arg(long, value_name = "FILE", requires = "keys_url")]
    pub keys_token_file: Option<PathBuf>,
    /// Print `{"ok", "problems", "checked"}` as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the command; `Ok(false)` when problems were found.
pub async fn run(args: VerifyArgs) -> anyhow::Result<bool> {
    if let Some(dir) = &args.data_dir {
        return verify_data_dir(dir, &args).await;
    }
    let location = args.location.clone().unwrap_or_default();
    let keys = trusted_keys(&args).await?;
    let target = Target::parse(&location)?;
    let report = match target {
        Target::Local(path) => verify_local(&path, &keys).await?,
        Target::Remote {
            kind,
            bucket,
            key,
            account,
        } => {
            let credentials = remote_credentials(&args, kind, account.as_deref()).await?;
            let sink = open_sink(kind, &bucket, credentials).await?;
            verify_remote(sink.as_ref(), &key, &keys).await?
        }
    };
    print_report(&report, args.json)?;
    Ok(report.ok)
}

/// `verify --data-dir DIR`: recomputes the hash chains of a stopped store and checks them
/// against its signed checkpoints. The trusted keys are `--public-key`/`--keys-url`, or else
/// the public keys listed in the data directory's own key ring (`integrity/keys`).
pub async fn verify_data_dir(dir: &Path, args: &VerifyArgs) -> anyhow::Result<bool> {
    let keys = if args.public_key.is_some() || args.keys_url.is_some() {
        trusted_keys(args).await?
    } else {
        let ring = dir.join("integrity").join("keys");
        PublicKeys::from_keyring_dir(&ring).map_err(|error| {
            anyhow::anyhow!("{error}; give the trusted keys with --public-key or --keys-url")
        })?
    };
    let data_dir = dir.to_path_buf();
    let report =
        tokio::task::spawn_blocking(move || store_verify::verify_data_dir(&data_dir, &keys))
            .await?
            .with_context(|| format!("cannot verify the data directory {}", dir.display()))?;
    print_store_report(dir, &report, args.json)?;
    Ok(report.ok())
}

fn print_store_report(dir: &Path, report: &StoreReport, json: bool) -> anyhow::Result<()> {
    if json {
        let document = serde_json::json!({
            "ok": report.ok(),
            "problems": report.problems,
            "unlisted_problems": report.unlisted_problems,
            "checked": {
                "data_dir": dir,
                "events": report.events,
                "tenants": report.tenants,
                "checkpoints": report.checkpoints,
                "checkpoints_expired": report.checkpoints_expired,
                "retention_gaps": report.retention_gaps,
            },
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(());
    }
    println!("data directory: {}", dir.display());
    println!(
        "events: {}, tenants: {}, checkpoints: {}",
        report.events, report.tenants, report.checkpoints
    );
    if report.retention_gaps > 0 || report.checkpoints_expired > 0 {
        println!(
            "retention: {} gap(s) crossed from their anchors, {} checkpoint(s) of deleted events",
            report.retention_gaps, report.checkpoints_expired
        );
    }
    if report.ok() {
        println!("OK: every chain follows from its events and reaches its signed checkpoints");
        return Ok(());
    }
    let total = report.problems.len() as u64 + report.unlisted_problems;
    println!("FAILED: {total} problem(s)");
    for problem in &report.problems {
        match problem.sequence {
            Some(sequence) => println!(
                "- tenant {}, event #{sequence}: {}",
                problem.tenant_id, problem.message
            ),
            None => println!("- tenant {}: {}", problem.tenant_id, problem.message),
        }
    }
    if report.unlisted_problems > 0 {
        println!("- … and {} more", report.unlisted_problems);
    }
    Ok(())
}

/// Where the export is.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Local(PathBuf),
    Remote {
        kind: DestinationType,
        bucket: String,
        /// The manifest's key.
        key: String,
        /// Azure: the storage account named in the URL.
        account: Option<String>,
    },
}

impl Target {
    fn parse(location: &str) -> anyhow::Result<Target> {
        let remote = |kind, rest: &str, account: Option<String>| -> anyhow::Result<Target> {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                bail!("{location}: no bucket (container) in the URL");
            }
            Ok(Target::Remote {
                kind,
                bucket: bucket.to_owned(),
                key: manifest_key(prefix),
                account,
            })
        };
        if let Some(rest) = location.strip_prefix("s3://") {
            return remote(DestinationType::S3, rest, None);
        }
        if let Some(rest) = location.strip_prefix("gs://") {
            return remote(DestinationType::Gcs, rest, None);
        }
        if let Some(rest) = location.strip_prefix("azure://") {
            let Some((account, rest)) = rest.split_once('/') else {
                bail!("{location}: expected azure://ACCOUNT/CONTAINER/PREFIX/");
            };
            return remote(DestinationType::AzureBlob, rest, Some(account.to_owned()));
        }
        if location.contains("://") {
            bail!("{location}: not a directory, s3://, gs:// or azure:// location");
        }
        Ok(Target::Local(PathBuf::from(location)))
    }
}

/// The manifest key of a URL's path: itself when it names a `.json`, else the manifest under
/// it as a directory.
fn manifest_key(prefix: &str) -> String {
    if prefix.ends_with(".json") {
        prefix.to_owned()
    } else if prefix.is_empty() || prefix.ends_with('/') {
        format!("{prefix}{MANIFEST}")
    } else {
        format!("{prefix}/{MANIFEST}")
    }
}

/// The public keys from `--public-key` or `--keys-url`.
async fn trusted_keys(args: &VerifyArgs) -> anyhow::Result<PublicKeys> {
    if let Some(path) = &args.public_key {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the public key {}", path.display()))?;
        return PublicKeys::from_file_contents(&text)
            .map_err(|error| anyhow::anyhow!("{}: {error}", path.display()));
    }
    let Some(url) = &args.keys_url else {
        bail!("give --public-key FILE or --keys-url URL");
    };
    let mut request = reqwest::Client::new().get(url);
    if let Some(file) = &args.keys_token_file {
        let token = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        request = request.bearer_auth(token.trim());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot fetch the keys from {url}"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    let document: serde_json::Value = response
        .json()
        .await
        .with_context(|| format!("{url} did not answer JSON"))?;
    PublicKeys::from_jwks(&document).map_err(|error| anyhow::anyhow!("{url}: {error}"))
}

/// A local export: the directory it was written to under its bucket, or a copy of it.
async fn verify_local(path: &Path, keys: &PublicKeys) -> anyhow::Result<Report> {
    let manifest_path = if path.is_dir() {
        path.join(MANIFEST)
    } else {
        path.to_path_buf()
    };
    let manifest_path = std::path::absolute(&manifest_path)
        .with_context(|| format!("{}: not a usable path", manifest_path.display()))?;
    let (Some(dir), Some(file_name)) = (manifest_path.parent(), manifest_path.file_name()) else {
        bail!("{}: not a manifest path", manifest_path.display());
    };
    let file_name = file_name.to_string_lossy().into_owned();
    let written_key = written_manifest_key(dir, &file_name).await?;
    let Some(written_key) = written_key else {
        // No readable manifest: let the verifier report it.
        let sink = open_sink(
            DestinationType::File,
            &dir.to_string_lossy(),
            dir_credentials(dir),
        )
        .await?;
        return Ok(verify_export(sink.as_ref(), &file_name, &KeyMap::default(), keys).await?);
    };
    let text = manifest_path.to_string_lossy();
    let (root, found_key, key_map) = match text.strip_suffix(&format!("/{written_key}")) {
        // The export where it was written: the bucket's root is above it.
        Some(root) => (PathBuf::from(root), written_key.clone(), KeyMap::default()),
        // A copy: its directory in its parent, the family's other exports beside it.
        None => {
            let dir_name = dir
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let root = dir.parent().unwrap_or(dir).to_path_buf();
            (
                root,
                format!("{dir_name}/{file_name}"),
                KeyMap::relocated_directory(&written_key, &dir_name),
            )
        }
    };
    let sink = open_sink(
        DestinationType::File,
        &root.to_string_lossy(),
        dir_credentials(&root),
    )
    .await?;
    Ok(verify_export(sink.as_ref(), &found_key, &key_map, keys).await?)
}

/// The key the manifest in `dir` was written at (`destination.prefix` + `manifest.json`), if
/// it is readable.
async fn written_manifest_key(dir: &Path, file_name: &str) -> anyhow::Result<Option<String>> {
    let bytes = match std::fs::read(dir.join(file_name)) {
        Ok(bytes) => bytes,
        Err(_) => return Ok(None),
    };
    let manifest: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(manifest) => manifest,
        Err(_) => return Ok(None),
    };
    Ok(manifest
        .get("destination")
        .and_then(|destination| destination.get("prefix"))
        .and_then(|prefix| prefix.as_str())
        .map(|prefix| format!("{prefix}{MANIFEST}")))
}

/// An export in an object store: where the manifest was written, or a copy in the same bucket.
async fn verify_remote(sink: &dyn Sink, key: &str, keys: &PublicKeys) -> anyhow::Result<Report> {
    let written = match sink.read_small(key).await? {
        sink::SmallObject::Body(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|manifest| {
                manifest
                    .get("destination")?
                    .get("prefix")?
                    .as_str()
                    .map(|prefix| format!("{prefix}{MANIFEST}"))
            }),
        _ => None,
    };
    let key_map = match written {
        Some(written) => KeyMap::new(&written, key),
        None => KeyMap::default(),
    };
    Ok(verify_export(sink, key, &key_map, keys).await?)
}

fn dir_credentials(dir: &Path) -> DestinationCredentials {
    DestinationCredentials::FileDirectory(dir.to_path_buf())
}

/// Credentials from `--credentials-file` or `--credentials-path`, with `--endpoint-url`.
async fn remote_credentials(
    args: &VerifyArgs,
    kind: DestinationType,
    account: Option<&str>,
) -> anyhow::Result<DestinationCredentials> {
    let mut data = if let Some(file) = &args.credentials_file {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let data: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a JSON object", file.display()))?;
        SecretData::new(file.display().to_string(), data)
    } else if let Some(path) = &args.credentials_path {
        credential_source(args.config.as_deref())?
            .fetch(path)
            .await
            .map_err(|error| anyhow::anyhow!("{path}: {error}"))?
    } else {
        bail!("give --credentials-file FILE or --credentials-path PATH for a remote location");
    };
    if let Some(url) = &args.endpoint_url {
        data = data.with("endpoint_url", url);
    }
    if let (Some(account), DestinationType::AzureBlob) = (account, kind) {
        data = data.with_default("account_name", account);
    }
    let credentials = DestinationCredentials::parse(kind, &data)
        .map_err(|error| anyhow::anyhow!("the credentials: {error}"))?;
    if let (DestinationCredentials::Azure(azure), Some(account)) = (&credentials, account)
        && azure.account_name != account
    {
        bail!(
            "the URL names storage account {account}, the credentials are for {}",
            azure.account_name
        );
    }
    Ok(credentials)
}

/// The ScaiVault client (or development directory) of the service's configuration.
fn credential_source(config: Option<&Path>) -> anyhow::Result<CredentialSource> {
    let mut args = SettingsArgs::default();
    args.config = config.map(Path::to_path_buf);
    let settings = Settings::resolve(&args)?;
    let export = &settings.export;
    Ok(
        match (&export.scaivault_url, &export.scaivault_token_file) {
            (Some(url), Some(token_file)) => CredentialSource::ScaiVault(
                ScaiVaultClient::new(url, token_file.clone()).map_err(anyhow::Error::msg)?,
            ),
            _ => match &export.credentials_dir {
                Some(dir) => CredentialSource::Directory(dir.clone()),
                None => bail!(
                    "--credentials-path needs [export] scaivault_url and scaivault_token_file (or \
                 credentials_dir) in --config"
                ),
            },
        },
    )
}

/// A read-only sink on `bucket` (any endpoint: the user chose it).
async fn open_sink(
    kind: DestinationType,
    bucket: &str,
    credentials: DestinationCredentials,
) -> anyhow::Result<std::sync::Arc<dyn Sink>> {
    let destination = Destination {
        kind,
        bucket: bucket.to_owned(),
        prefix: String::new(),
        credentials_path: None,
    };
    let journal_dir = std::env::temp_dir().join("scaivault-verify");
    let context = SinkContext {
        export_id: "verify".to_owned(),
        endpoints: EndpointPolicy::allow_all(),
        journal_dir,
    };
    Ok(sink::open(&destination, credentials, &context).await?)
}

fn print_report(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    let checked = &report.checked;
    println!("manifest: {}", checked.manifest);
    if let Some(id) = &checked.export_id {
        println!("export: {id}");
    }
    match &checked.signed_by {
        Some(kid) => println!("signature: valid (key {kid})"),
        None => println!("signature: NOT valid"),
    }
    println!(
        "files: {}, records: {}, bytes: {}",
        checked.files, checked.records, checked.bytes
    );
    println!("chain: {}", checked.chain);
    println!("checkpoint: {}", checked.checkpoint);
    println!("previous manifest: {}", checked.previous_manifest);
    if report.ok {
        println!("OK: the export is intact");
    } else {
        println!("FAILED: {} problem(s)", report.problems.len());
        for problem in &report.problems {
            println!("- {}", problem.message);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn locations_name_a_destination_and_the_manifest_key() {
        let remote = |location: &str| match Target::parse(location).unwrap() {
            Target::Remote {
                kind,
                bucket,
                key,
                account,
            } => (kind, bucket, key, account),
            Target::Local(path) => panic!("{location} is local: {}", path.display()),
        };
        assert_eq!(
            remote("s3://audit/acme/2026-01/"),
            (
                DestinationType::S3,
                "audit".into(),
                "acme/2026-01/manifest.json".into(),
                None
            )
        );
        assert_eq!(
            remote("gs://audit/acme/2026-01").2,
            "acme/2026-01/manifest.json"
        );
        assert_eq!(remote("s3://audit").2, "manifest.json");
        assert_eq!(remote("s3://audit/x/manifest.json").2, "x/manifest.json");
        assert_eq!(
            remote("azure://acct/audit/acme/"),
            (
                DestinationType::AzureBlob,
                "audit".into(),
                "acme/manifest.json".into(),
                Some("acct".into())
            )
        );
        assert!(Target::parse("azure://acct").is_err());
        assert!(Target::parse("https://example.com/x").is_err());
        assert_eq!(
            Target::parse("./out/acme").unwrap(),
            Target::Local("./out/acme".into())
        );
    }
}

//! The signed export manifest (SPEC §3.5, docs/exports.md "Manifest") and the chain of
//! manifests per destination family.
//!
//! A manifest describes every part file (key, size, SHA-256, record count, first and last
//! record), the export's filters and time range, the tenant's chain position at the export's
//! snapshot (`chain`), the signed checkpoint covering that position (`checkpoint`), the hash of
//! the previous manifest written to the same destination family (`previous_manifest`), and an
//! Ed25519 `signature` over the canonical JSON of everything else
//! ([`crate::integrity::keys::Keyring::sign_object`]). The object is written as pretty JSON;
//! the signature is over the canonical form of the parsed object, so whitespace is irrelevant.
//!
//! **Destination family**: the same destination type and bucket (container, directory), and
//! the prefix without its last path segment ([`family_prefix`]): `audit/2026-01/` and
//! `audit/2026-02/` are one family (`audit/`), so a tenant's monthly exports chain. The last
//! manifest of each (tenant, family) is kept durably ([`ManifestLinkStore`]): in the data
//! directory (`integrity/manifest-links.json`, [`ManifestLinks`]) for one process, in
//! JetStream's key-value store for the replicas of a cluster
//! (`crate::cluster::manifest_links`), so deleting the newest manifest at the destination does
//! not silently re-link the next one. Recording is conditional on the family's link being
//! unchanged since it was read: two exports of one family that race never link to the same
//! predecessor (the loser writes its manifest again, linked to the winner's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::engine::ExportOutcome;
use super::job::{ExportSpec, LateSummary};
use crate::integrity::chain::ChainLink;
use crate::integrity::checkpoint::CheckpointLog;

/// Version of the manifest layout (1: before signatures and chain members).
pub const MANIFEST_VERSION: u64 = 2;

/// File name of the manifest links inside the integrity directory.
pub const LINKS_FILE: &str = "manifest-links.json";

/// What signs manifests: the checkpoint log (which owns the key ring) and the last manifest
/// of each destination family.
pub struct ExportIntegrity {
    pub checkpoints: Arc<CheckpointLog>,
    pub links: Arc<dyn ManifestLinkStore>,
}

/// The previous manifest of a family: its key and the SHA-256 of its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLink {
    pub key: String,
    pub sha256: String,
}

/// A family's newest manifest as read from a [`ManifestLinkStore`], with the version a
/// conditional [`ManifestLinkStore::record`] must still find (0: the family has none yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyLink {
    pub newest: Option<ManifestLink>,
    pub version: u64,
}

/// Why the manifest links cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LinksError {
    #[error("manifest links {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest links {path}: not a JSON object of links ({message})")]
    Corrupt { path: PathBuf, message: String },
    /// The shared store (the cluster's key-value bucket) did not answer or refused.
    #[error("manifest links bucket {bucket}: {message}")]
    Shared { bucket: String, message: String },
}

/// Where the newest manifest of each (tenant, destination family) is kept, keyed by
/// [`family_key`].
#[async_trait]
pub trait ManifestLinkStore: Send + Sync {
    /// The family's newest manifest and its version.
    async fn newest(&self, family: &str) -> Result<FamilyLink, LinksError>;

    /// Records `link` as the family's newest, durably, if the family is still at `version`;
    /// `false` (nothing written) when another manifest was recorded since.
    async fn record(
        &self,
        family: &str,
        version: u64,
        link: &ManifestLink,
    ) -> Result<bool, LinksError>;
}

/// The links of one process: one small JSON file in the integrity directory, rewritten
/// atomically. Versions count the records since the process started.
pub struct ManifestLinks {
    path: PathBuf,
    state: tokio::sync::Mutex<LocalLinks>,
}

#[derive(Default)]
struct LocalLinks {
    links: BTreeMap<String, ManifestLink>,
    versions: BTreeMap<String, u64>,
}

impl ManifestLinks {
    /// Opens (or starts) the links file in `dir`.
    pub fn open(dir: &Path) -> Result<ManifestLinks, LinksError> {
        let path = dir.join(LINKS_FILE);
        let io = |source| LinksError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let links: BTreeMap<String, ManifestLink> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| LinksError::Corrupt {
                path: path.clone(),
                message: error.to_string(),
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(io(error)),
        };
        let versions = links.keys().map(|family| (family.clone(), 1)).collect();
        Ok(ManifestLinks {
            path,
            state: tokio::sync::Mutex::new(LocalLinks { links, versions }),
        })
    }
}

#[async_trait]
impl ManifestLinkStore for ManifestLinks {
    async fn newest(&self, family: &str) -> Result<FamilyLink, LinksError> {
        let state = self.state.lock().await;
        Ok(FamilyLink {
            newest: state.links.get(family).cloned(),
            version: state.versions.get(family).copied().unwrap_or(0),
        })
    }

    async fn record(
        &self,
        family: &str,
        version: u64,
        link: &ManifestLink,
    ) -> Result<bool, LinksError> {
        let mut state = self.state.lock().await;
        if state.versions.get(family).copied().unwrap_or(0) != version {
            return Ok(false);
        }
        let mut links = state.links.clone();
        links.insert(family.to_string(), link.clone());
        let body = serde_json::to_vec_pretty(&links).map_err(|error| LinksError::Corrupt {
            path: self.path.clone(),
            message: error.to_string(),
        })?;
        crate::durable_file::replace(&self.path, &body).map_err(|source| LinksError::Io {
            path: self.path.clone(),
            source,
        })?;
        state.links = links;
        state.versions.insert(family.to_string(), version + 1);
        Ok(true)
    }
}

/// The prefix of `prefix`'s destination family: without its last path segment (`audit/2026-01/`
/// and `audit/2026-01` → `audit/`; `2026-01/` → ``).
pub fn family_prefix(prefix: &str) -> &str {
    let trimmed = prefix.trim_end_matches('/');
    match trimmed.rfind('/') {
        Some(index) => &prefix[..=index],
        None => "",
    }
}

/// The key of `spec`'s (tenant, destination family) in a [`ManifestLinkStore`].
pub fn family_key(spec: &ExportSpec) -> String {
    let destination = &spec.destination;
    json!([
        spec.tenant_id,
        destination.kind.as_str(),
        destination.bucket,
        family_prefix(&destination.prefix)
    ])
    .to_string()
}

/// The tenant's chain position at the snapshot, as the manifest carries it.
pub fn chain_json(head: &ChainLink) -> Value {
    json!({"chain_seq": head.seq, "chain_hash": head.hash_hex()})
}

/// What goes into a manifest besides the spec and the outcome.
pub struct ManifestParts {
    pub head: ChainLink,
    pub checkpoint: Option<Value>,
    pub previous: Option<ManifestLink>,
    /// A scheduled run's late events (the `late` member; absent for other exports).
    pub late: Option<LateSummary>,
}

/// The manifest object (unsigned).
pub fn manifest_object(
    export_id: &str,
    spec: &ExportSpec,
    outcome: &ExportOutcome,
    parts: &ManifestParts,
) -> Map<String, Value> {
    let destination = &spec.destination;
    let manifest = json!({
        "manifest_version": MANIFEST_VERSION,
        "export_id": export_id,
        "status": "completed",
        "tenant_id": spec.tenant_id,
        "format": spec.format,
        "compression": spec.compression,
        "from": spec.from,
        "to": spec.to,
        "filters": spec.filters,
        "max_records_per_file": spec.max_records_per_file,
        "destination": {
            "type": destination.kind,
            "bucket": destination.bucket,
            "prefix": destination.prefix,
        },
        "record_count": outcome.record_count,
        "files": outcome.files,
        "chain": chain_json(&parts.head),
        "checkpoint": parts.checkpoint,
        "previous_manifest": parts.previous,
        "completed_at": outcome.completed_at,
    });
    match manifest {
        Value::Object(mut map) => {
            if let Some(late) = &parts.late {
                map.insert("late".into(), json!(late));
            }
            map
        }
        _ => Map::new(),
    }
}

/// The SHA-256 (hex) of a manifest's stored bytes: what `previous_manifest` carries.
pub fn manifest_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(key: &str) -> ManifestLink {
        ManifestLink {
            key: key.into(),
            sha256: "00".repeat(32),
        }
    }

    #[tokio::test]
    async fn a_record_needs_the_version_it_read_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let links = ManifestLinks::open(dir.path()).unwrap();
        let empty = links.newest("f").await.unwrap();
        assert_eq!((empty.newest, empty.version), (None, 0));
        assert!(links.record("f", 0, &link("a")).await.unwrap());
        // A writer that read the family before that record is refused.
        assert!(!links.record("f", 0, &link("b")).await.unwrap());
        let read = links.newest("f").await.unwrap();
        assert_eq!((read.newest, read.version), (Some(link("a")), 1));
        assert!(links.record("f", 1, &link("b")).await.unwrap());
        assert_eq!(links.newest("other").await.unwrap().version, 0);
        let reopened = ManifestLinks::open(dir.path()).unwrap();
        assert_eq!(reopened.newest("f").await.unwrap().newest, Some(link("b")));
    }

    #[test]
    fn a_family_is_the_prefix_without_its_last_segment() {
        for (prefix, family) in [
            ("audit/2026-01/", "audit/"),
            ("audit/2026-02/", "audit/"),
            ("audit/2026-01", "audit/"),
            ("a/b/c/", "a/b/"),
            ("2026-01/", ""),
            ("", ""),
        ] {
            assert_eq!(family_prefix(prefix), family, "{prefix}");
        }
    }
}

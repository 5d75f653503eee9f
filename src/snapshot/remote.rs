//! The destination of snapshots: any export sink (S3, GCS, Azure Blob, a `file` directory)
//! under a prefix, opened from `[snapshots]` with the export machinery's credentials
//! (ScaiVault or the development directory), endpoint policy and `file` root.
//!
//! ```text
//! PREFIXsnapshots/ID/index/…            the index commit's files
//! PREFIXsnapshots/ID/integrity/…        checkpoint log, retention anchors, manifest links,
//!                                       public key ring
//! PREFIXsnapshots/ID.manifest.json      written last
//! ```
//! Manifests sit beside the snapshot folders, not in them, so that one listing of
//! `PREFIXsnapshots/` finds them on every destination (a `file` destination lists one
//! directory level).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::capture::StagedSnapshot;
use super::manifest::{self, SnapshotManifest};
use super::{SnapshotError, io};
use crate::config::Settings;
use crate::config::snapshots::SnapshotDestination;
use crate::export::credentials::{CredentialSource, DestinationCredentials, ScaiVaultClient};
use crate::export::job::{Destination, DestinationType};
use crate::export::policy::ExportPolicy;
use crate::export::sink::endpoint::EndpointPolicy;
use crate::export::sink::{self, ObjectInfo, Sink, SinkContext, SmallObject};

/// Content type of snapshot files.
const CONTENT_TYPE: &str = "application/octet-stream";
/// How long another replica's incomplete upload is left alone when the cluster's uploader
/// prunes ([`manifest::abandoned_across_replicas`]): longer than any upload of an index takes.
const FOREIGN_UPLOAD_GRACE_MS: u64 = 24 * 3600 * 1000;

/// How to open the destination of `[snapshots]` (again for every run: credentials rotate).
#[derive(Debug, Clone)]
pub struct DestinationOpener {
    destination: SnapshotDestination,
    credentials: CredentialSource,
    endpoints: EndpointPolicy,
    file_root: Option<PathBuf>,
    /// Where S3 multipart uploads are journaled (`DATA_DIR/snapshots`).
    journal_dir: PathBuf,
    /// A cluster replica's tag ([`manifest::owner_tag`] of its replica id): its snapshot ids
    /// end with it (the cluster's uploader prunes every replica's, its own incomplete uploads
    /// at once). `None` embedded.
    owner: Option<String>,
}

impl DestinationOpener {
    /// The opener of `settings`' `[snapshots]` destination; `None` when snapshots are off.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, SnapshotError> {
        let Some(destination) = settings.snapshots.destination.clone() else {
            return Ok(None);
        };
        let export = &settings.export;
        let credentials = match (&export.scaivault_url, &export.scaivault_token_file) {
            (Some(url), Some(token_file)) => CredentialSource::ScaiVault(
                ScaiVaultClient::new(url, token_file.clone())
                    .map_err(|error| SnapshotError::Destination(error.to_string()))?,
            ),
            _ => match &export.credentials_dir {
                Some(dir) => CredentialSource::Directory(dir.clone()),
                None => CredentialSource::Unconfigured,
            },
        };
        Ok(Some(DestinationOpener {
            destination,
            credentials,
            endpoints: export.endpoints.clone(),
            file_root: export.file_root.clone(),
            journal_dir: settings.store.data_dir.join("snapshots"),
            owner: settings
                .cluster
                .as_ref()
                .map(|cluster| manifest::owner_tag(&cluster.replica_id)),
        }))
    }

    /// `s3://bucket/prefix` and the like, for messages.
    pub fn location(&self) -> String {
        format!(
            "{}://{}/{}",
            self.destination.kind, self.destination.bucket, self.destination.prefix
        )
    }

    /// Opens the destination: credentials read, endpoints checked.
    pub async fn open(&self) -> Result<SnapshotTarget, SnapshotError> {
        let destination = &self.destination;
        let failed =
            |message: String| SnapshotError::Destination(format!("{}: {message}", self.location()));
        let kind = DestinationType::parse(&destination.kind)
            .ok_or_else(|| failed("not a destination type".into()))?;
        let credentials = if kind == DestinationType::File {
            let root = self
                .file_root
                .as_ref()
                .ok_or_else(|| failed("file destinations need [export] file_root".into()))?;
            fs_create(root)?;
            let root = root.canonicalize().map_err(io("resolve", root))?;
            let policy = ExportPolicy::new(Some(root), Vec::new());
            let dir = policy
                .file_directory(&destination.bucket)
                .map_err(|refusal| failed(refusal.to_string()))?;
            DestinationCredentials::FileDirectory(dir)
        } else {
            self.credentials
                .destination(kind, destination.credentials_path.as_deref())
                .await
                .map_err(|error| failed(error.to_string()))?
        };
        let context = SinkContext {
            export_id: "snapshots".into(),
            endpoints: self.endpoints.clone(),
            journal_dir: self.journal_dir.clone(),
        };
        let target = Destination {
            kind,
            bucket: destination.bucket.clone(),
            prefix: destination.prefix.clone(),
            credentials_path: destination.credentials_path.clone(),
        };
        let sink = sink::open(&target, credentials, &context).await?;
        let target = SnapshotTarget::new(sink, &destination.prefix);
        Ok(match &self.owner {
            Some(owner) => target.owned_by(owner),
            None => target,
        })
    }
}

fn fs_create(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))
}

/// Snapshots under a prefix of a sink.
#[derive(Clone)]
pub struct SnapshotTarget {
    sink: Arc<dyn Sink>,
    prefix: String,
    owner: Option<String>,
    /// Whether [`SnapshotTarget::prune`] considers every replica's snapshots.
    across_replicas: bool,
}

impl SnapshotTarget {
    pub fn new(sink: Arc<dyn Sink>, prefix: &str) -> Self {
        SnapshotTarget {
            sink,
            prefix: prefix.to_string(),
            owner: None,
            across_replicas: false,
        }
    }

    /// This target as one cluster replica's, tagged `owner` ([`manifest::owner_tag`]): the
    /// snapshots it uploads carry the tag, and [`SnapshotTarget::prune`] deletes only those.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.owner = Some(owner.to_string());
        self
    }

    /// This replica's target as the cluster's single uploader's (the holder of the
    /// `snapshotter` role): [`SnapshotTarget::prune`] considers the snapshots of every replica,
    /// so that those a former uploader left are pruned too. No effect without an owner.
    pub fn pruning_across_replicas(mut self) -> Self {
        self.across_replicas = true;
        self
    }

    /// The uploader's tag, if this target is one cluster replica's.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The sink (for reads of snapshot files).
    pub fn sink(&self) -> &dyn Sink {
        self.sink.as_ref()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every object under `PREFIXsnapshots/`.
    async fn listing(&self) -> Result<Vec<ObjectInfo>, SnapshotError> {
        Ok(self.sink.list(&manifest::folder(&self.prefix)).await?)
    }

    /// The ids of the complete snapshots, newest first.
    pub async fn complete_ids(&self) -> Result<Vec<String>, SnapshotError> {
        let listing = self.listing().await?;
        Ok(manifest::complete_ids(
            &self.prefix,
            listing.iter().map(|object| object.key.as_str()),
        ))
    }

    /// The manifest of snapshot `id`, checked against `supported_index_version`.
    pub async fn manifest(
        &self,
        id: &str,
        supported_index_version: u32,
    ) -> Result<SnapshotManifest, SnapshotError> {
        let key = manifest::manifest_key(&self.prefix, id);
        let bad = |message: &str| SnapshotError::BadManifest {
            id: id.to_string(),
            message: message.to_string(),
        };
        let bytes = match self.sink.read_small(&key).await? {
            SmallObject::Body(bytes) => bytes,
            SmallObject::Missing => return Err(SnapshotError::NotFound(id.to_string())),
            SmallObject::TooLarge => return Err(bad("larger than the read limit")),
        };
        let manifest: SnapshotManifest =
            serde_json::from_slice(&bytes).map_err(|error| bad(&error.to_string()))?;
        if manifest.id != id {
            return Err(bad("its id is another snapshot's"));
        }
        manifest.check(supported_index_version)?;
        Ok(manifest)
    }

    /// Uploads `staged`'s files, then its manifest; returns the bytes uploaded. On failure the
    /// incomplete uploads are aborted (no manifest: the files name no snapshot).
    pub async fn upload(&self, staged: &StagedSnapshot) -> Result<u64, SnapshotError> {
        let id = &staged.manifest.id;
        // Multipart uploads an interrupted earlier run left behind (this node's journal only).
        if let Err(error) = self
            .sink
            .abort_incomplete(&manifest::folder(&self.prefix))
            .await
        {
            tracing::warn!(%error, "could not abort earlier incomplete snapshot uploads");
        }
        let result = self.upload_files(staged).await;
        if result.is_err() {
            let folder = format!("{}{id}/", manifest::folder(&self.prefix));
            if let Err(error) = self.sink.abort_incomplete(&folder).await {
                tracing::warn!(%error, "could not abort the snapshot's incomplete uploads");
            }
        }
        let bytes = result?;
        let body = serde_json::to_vec_pretty(&staged.manifest).map_err(SnapshotError::Payload)?;
        let key = manifest::manifest_key(&self.prefix, id);
        self.sink.put_bytes(&key, body, "application/json").await?;
        Ok(bytes)
    }

    async fn upload_files(&self, staged: &StagedSnapshot) -> Result<u64, SnapshotError> {
        let mut bytes = 0;
        for file in &staged.manifest.files {
            let key = manifest::file_key(&self.prefix, &staged.manifest.id, &file.path);
            self.sink
                .upload_file(&key, &staged.local(&file.path), CONTENT_TYPE)
                .await?;
            bytes += file.size_bytes;
        }
        Ok(bytes)
    }

    /// Deletes every complete snapshot after the newest `keep` (its manifest first: from then
    /// on it does not exist, whatever of its files remain), and the files of uploads that never
    /// completed and are older than the oldest kept snapshot. Returns how many snapshots were
    /// deleted.
    ///
    /// A cluster replica's target ([`SnapshotTarget::owned_by`]) considers only the snapshots
    /// that replica uploaded: replicas sharing a destination never delete each other's
    /// snapshots (nor each other's uploads in progress), so each keeps its newest `keep`. The
    /// cluster's single uploader ([`SnapshotTarget::pruning_across_replicas`]) considers every
    /// replica's ([`manifest::to_prune_across_replicas`]).
    pub async fn prune(&self, keep: usize, supported: u32) -> Result<usize, SnapshotError> {
        if let (Some(owner), true) = (self.owner.as_deref(), self.across_replicas) {
            return self.prune_across_replicas(owner, keep, supported).await;
        }
        let listing = self.listing().await?;
        let owner = self.owner.as_deref();
        let keys = || {
            listing
                .iter()
                .map(|object| object.key.as_str())
                .filter(|key| {
                    manifest::id_of_key(&self.prefix, key)
                        .is_some_and(|id| manifest::is_owned_by(id, owner))
                })
        };
        let complete = manifest::complete_ids(&self.prefix, keys());
        let old = manifest::to_prune(&complete, keep);
        for id in &old {
            let files = match self.manifest(id, supported).await {
                Ok(manifest) => manifest.files,
                // Unreadable: only its manifest goes (its files are found by the listing).
                Err(_) => Vec::new(),
            };
            self.sink
                .delete(&manifest::manifest_key(&self.prefix, id))
                .await?;
            for file in files {
                self.sink
                    .delete(&manifest::file_key(&self.prefix, id, &file.path))
                    .await?;
            }
        }
        let kept: Vec<String> = complete.iter().take(keep.max(1)).cloned().collect();
        for key in manifest::abandoned_keys(&self.prefix, keys(), &kept) {
            self.sink.delete(&key).await?;
        }
        Ok(old.len())
    }

    /// [`SnapshotTarget::prune`] of the cluster's uploader (tagged `own`): over the complete
    /// snapshots of every replica (not those of an embedded store sharing the destination).
    async fn prune_across_replicas(
        &self,
        own: &str,
        keep: usize,
        supported: u32,
    ) -> Result<usize, SnapshotError> {
        let listing = self.listing().await?;
        let keys = || {
            listing
                .iter()
                .map(|object| object.key.as_str())
                .filter(|key| {
                    manifest::id_of_key(&self.prefix, key).is_some_and(manifest::is_replica_id)
                })
        };
        let complete = manifest::complete_ids(&self.prefix, keys());
        let mut snapshots = Vec::with_capacity(complete.len());
        let mut files = std::collections::HashMap::new();
        for id in &complete {
            // Unreadable: never the furthest, and only its manifest goes when pruned.
            let next = match self.manifest(id, supported).await {
                Ok(manifest) => {
                    let next = manifest.log_position().map(|position| position + 1);
                    files.insert(id.clone(), manifest.files);
                    next
                }
                Err(_) => None,
            };
            snapshots.push(manifest::ReplicaSnapshot {
                id: id.clone(),
                next,
            });
        }
        let old = manifest::to_prune_across_replicas(&snapshots, keep);
        for id in &old {
            self.sink
                .delete(&manifest::manifest_key(&self.prefix, id))
                .await?;
            for file in files.remove(id).unwrap_or_default() {
                self.sink
                    .delete(&manifest::file_key(&self.prefix, id, &file.path))
                    .await?;
            }
            if !manifest::is_owned_by(id, Some(own)) {
                tracing::info!(%id, "pruned an index snapshot a former uploader left");
            }
        }
        let kept: Vec<String> = complete
            .iter()
            .filter(|id| !old.contains(id))
            .cloned()
            .collect();
        let now_ms = u64::try_from(crate::timestamp::now_micros() / 1000).unwrap_or(0);
        for key in manifest::abandoned_across_replicas(
            &self.prefix,
            keys(),
            &kept,
            own,
            now_ms,
            FOREIGN_UPLOAD_GRACE_MS,
        ) {
            self.sink.delete(&key).await?;
        }
        Ok(old.len())
    }
}

//! The newest export manifest of each (tenant, destination family), shared by the replicas of
//! a cluster through JetStream's key-value store (docs/cluster.md "Coordination"), so that an
//! export resumed or run on any replica links to the family's newest manifest whichever
//! replica wrote it.
//!
//! One key per family (`family.` and the SHA-256 of [`crate::export::manifest::family_key`]);
//! the family's version is the key's revision. A record is `create` for a family without one
//! and `update` expecting the revision read otherwise: JetStream refuses it when another
//! replica recorded a manifest of the family in between, and the export then writes its
//! manifest again, linked to that one.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::export::manifest::{FamilyLink, LinksError, ManifestLink, ManifestLinkStore};

/// How long one key-value request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a family's key holds: the newest manifest, and the family itself for people reading
/// the bucket.
#[derive(Debug, Serialize, Deserialize)]
struct StoredLink {
    family: String,
    #[serde(flatten)]
    link: ManifestLink,
}

/// The manifest links in a key-value bucket.
pub struct KvManifestLinks {
    kv: kv::Store,
    bucket: String,
}

impl KvManifestLinks {
    /// Opens the bucket `bucket`, creating it (file storage, `replicas` replicas, one value per
    /// key) if missing.
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<KvManifestLinks, LinksError> {
        let config = kv::Config {
            bucket: bucket.to_string(),
            description: "scaivault-audit: the newest export manifest per destination family"
                .into(),
            history: 1,
            max_value_size: 8192,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        };
        let kv = super::kv::open_or_create(context, config)
            .await
            .map_err(|message| LinksError::Shared {
                bucket: bucket.to_string(),
                message,
            })?;
        Ok(KvManifestLinks {
            kv,
            bucket: bucket.to_string(),
        })
    }

    fn failed(&self, message: impl Into<String>) -> LinksError {
        LinksError::Shared {
            bucket: self.bucket.clone(),
            message: message.into(),
        }
    }
}

/// The key of `family` (any bytes: hashed into the key alphabet).
fn key_of(family: &str) -> String {
    format!("family.{}", hex::encode(Sha256::digest(family.as_bytes())))
}

#[async_trait]
impl ManifestLinkStore for KvManifestLinks {
    async fn newest(&self, family: &str) -> Result<FamilyLink, LinksError> {
        let entry = tokio::time::timeout(REQUEST_TIMEOUT, self.kv.entry(key_of(family)))
            .await
            .map_err(|_| self.failed("no answer in time"))?
            .map_err(|error| self.failed(super::describe(&error)))?;
        let Some(entry) = entry else {
            return Ok(FamilyLink {
                newest: None,
                version: 0,
            });
        };
        if entry.operation != kv::Operation::Put {
            return Ok(FamilyLink {
                newest: None,
                version: entry.revision,
            });
        }
        let stored: StoredLink = serde_json::from_slice(&entry.value).map_err(|error| {
            self.failed(format!("{}: not a manifest link ({error})", entry.key))
        })?;
        Ok(FamilyLink {
            newest: Some(stored.link),
            version: entry.revision,
        })
    }

    async fn record(
        &self,
        family: &str,
        version: u64,
        link: &ManifestLink,
    ) -> Result<bool, LinksError> {
        let value = serde_json::to_vec(&StoredLink {
            family: family.to_string(),
            link: link.clone(),
        })
        .map_err(|error| self.failed(error.to_string()))?;
        let key = key_of(family);
        let value = Bytes::from(value);
        let written = if version == 0 {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.kv.create(&key, value)).await {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(error)) if error.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Ok(Err(error)) => Err(super::describe(&error)),
                Err(_) => Err("no answer in time".to_string()),
            }
        } else {
            match tokio::time::timeout(REQUEST_TIMEOUT, self.kv.update(&key, value, version)).await
            {
                Ok(Ok(_)) => Ok(true),
                Ok(Err(error)) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Ok(false)
                }
                Ok(Err(error)) => Err(super::describe(&error)),
                Err(_) => Err("no answer in time".to_string()),
            }
        };
        written.map_err(|message| self.failed(message))
    }
}

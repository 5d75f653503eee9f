//! Who may export which tenant through an `AuditExport` resource (pure, apart from the key
//! file).
//!
//! - A resource the service created itself (`POST /v1/audit/export`, whose caller was
//!   authorised for the tenant) carries an HMAC over its namespace, name, export id, requester
//!   and spec ([`SIGNATURE_ANNOTATION`]). Only such a resource's `export-id` and `requested-by`
//!   annotations are honoured, and only it may name any tenant.
//! - Any other resource (kubectl, GitOps, or a REST resource edited afterwards) is judged by its
//!   namespace: the namespace label [`NAMESPACE_TENANT_LABEL`], set by cluster administrators,
//!   lists the tenants whose exports may be created there. Its annotations are ignored: the
//!   export id is derived from the resource's uid, the requester is `kubernetes:NS/NAME`.
//!
//! The HMAC key is `DATA_DIR/operator-annotations.key` (32 random bytes, mode 0600, created on
//! first start), so only this installation's service can sign.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::crd::{AuditExport, AuditExportSpec};
use super::{EXPORT_ID_ANNOTATION, REQUESTED_BY_ANNOTATION};

/// Namespace label naming the tenants whose exports may be created in the namespace: one
/// tenant id, or several separated by `.` (a label-value character tenant ids never contain),
/// e.g. `tnt_acme` or `tnt_acme.tnt_globex`.
pub const NAMESPACE_TENANT_LABEL: &str = "audit.scailabs.ai/tenant";
/// HMAC of a resource the service created (`v1.` + base64url HMAC-SHA256).
pub const SIGNATURE_ANNOTATION: &str = "audit.scailabs.ai/signature";
/// Error code (and the `Failed` condition's reason `TenantNotAllowed`) of a refused resource.
pub const TENANT_NOT_ALLOWED: &str = "tenant_not_allowed";

const KEY_FILE: &str = "operator-annotations.key";
const SIGNATURE_VERSION: &str = "v1.";
const DOMAIN: &[u8] = b"scaivault-audit/auditexport-annotations/v1";

/// Signs and verifies the annotations of service-created resources.
#[derive(Clone)]
pub struct AnnotationSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for AnnotationSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnnotationSigner { key: <redacted> }")
    }
}

/// What a signature covers.
pub struct Signed<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub export_id: &'a str,
    pub requested_by: &'a str,
    pub spec: &'a AuditExportSpec,
}

impl AnnotationSigner {
    pub fn new(key: [u8; 32]) -> Self {
        AnnotationSigner { key }
    }

    /// Reads `DIR/operator-annotations.key`, or creates it (random, mode 0600).
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        crate::key_file::load_or_create(&data_dir.join(KEY_FILE))
            .map(|key| AnnotationSigner { key })
    }

    /// The annotation value for `signed` (`None` only if the spec cannot be serialised).
    pub fn sign(&self, signed: &Signed<'_>) -> Option<String> {
        let mac = self.mac(signed)?.finalize().into_bytes();
        Some(format!(
            "{SIGNATURE_VERSION}{}",
            URL_SAFE_NO_PAD.encode(mac)
        ))
    }

    /// Whether `signature` is this key's signature of `signed` (constant-time comparison).
    pub fn verify(&self, signed: &Signed<'_>, signature: &str) -> bool {
        let Some(encoded) = signature.strip_prefix(SIGNATURE_VERSION) else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(encoded) else {
            return false;
        };
        self.mac(signed)
            .is_some_and(|mac| mac.verify_slice(&tag).is_ok())
    }

    fn mac(&self, signed: &Signed<'_>) -> Option<Hmac<Sha256>> {
        let spec = canonical_spec(signed.spec)?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).ok()?;
        let fields: [&[u8]; 6] = [
            DOMAIN,
            signed.namespace.as_bytes(),
            signed.name.as_bytes(),
            signed.export_id.as_bytes(),
            signed.requested_by.as_bytes(),
            &spec,
        ];
        for field in fields {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        Some(mac)
    }
}

/// The spec as serialised from its type (field order fixed, absent options left out). The CRD
/// schema declares no defaults, so the API server stores the spec as created.
fn canonical_spec(spec: &AuditExportSpec) -> Option<Vec<u8>> {
    serde_json::to_vec(spec).ok()
}

/// Who stands behind a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Created by this service's REST API: its annotations are authentic and the tenant was
    /// authorised by the API.
    Service {
        export_id: String,
        requested_by: String,
    },
    /// Anything else: the namespace label decides; the resource itself is the actor.
    Namespace,
}

/// The origin of `object`: [`Origin::Service`] only with a valid signature.
pub fn origin(object: &AuditExport, signer: &AnnotationSigner) -> Origin {
    let annotations = object.annotations();
    let (Some(export_id), Some(requested_by), Some(signature), Some(namespace)) = (
        annotations.get(EXPORT_ID_ANNOTATION),
        annotations.get(REQUESTED_BY_ANNOTATION),
        annotations.get(SIGNATURE_ANNOTATION),
        object.metadata.namespace.as_deref(),
    ) else {
        return Origin::Namespace;
    };
    let name = object.name_any();
    let signed = Signed {
        namespace,
        name: &name,
        export_id,
        requested_by,
        spec: &object.spec,
    };
    if signer.verify(&signed, signature) {
        Origin::Service {
            export_id: export_id.clone(),
            requested_by: requested_by.clone(),
        }
    } else {
        Origin::Namespace
    }
}

/// The actor of a resource the service did not create: `kubernetes:NAMESPACE/NAME`.
pub fn resource_actor(object: &AuditExport) -> String {
    format!(
        "kubernetes:{}/{}",
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

/// The tenants a namespace label value allows (`.`-separated tenant ids; empty parts ignored).
pub fn allowed_tenants(label: &str) -> Vec<&str> {
    label
        .split('.')
        .filter(|tenant| !tenant.is_empty())
        .collect()
}

/// Whether `namespace`'s `audit.scailabs.ai/tenant` label lets its resources export `tenant`
/// (read from the API server). `Ok(Err(_))` is a refusal; `Err(_)` a failure to read the
/// namespace (the caller retries).
pub async fn namespace_admits(
    namespaces: &kube::Api<k8s_openapi::api::core::v1::Namespace>,
    namespace: &str,
    tenant: &str,
) -> Result<Result<(), crate::export::job::ExportFailure>, kube::Error> {
    let found = namespaces.get_opt(namespace).await?;
    let label = found
        .as_ref()
        .and_then(|ns| ns.labels().get(NAMESPACE_TENANT_LABEL).cloned());
    Ok(check_tenant(namespace, label.as_deref(), tenant)
        .map_err(|message| crate::export::job::ExportFailure::new(TENANT_NOT_ALLOWED, message)))
}

/// Whether a resource in `namespace` (label value `label`) may export `tenant`; the refusal
/// names the label.
pub fn check_tenant(namespace: &str, label: Option<&str>, tenant: &str) -> Result<(), String> {
    let Some(label) = label else {
        return Err(format!(
            "namespace '{namespace}' has no label {NAMESPACE_TENANT_LABEL}: a cluster administrator \
             sets it to the tenant ids whose exports may be created there (several separated by '.')"
        ));
    };
    if allowed_tenants(label).contains(&tenant) {
        return Ok(());
    }
    Err(format!(
        "tenant '{tenant}' is not allowed in namespace '{namespace}': its label \
         {NAMESPACE_TENANT_LABEL} allows '{label}'"
    ))
}

/// The export id of a resource the service did not create: `exp_` + a ULID whose time is the
/// resource's creation and whose randomness is a hash of its uid, so every reconcile (and every
/// replica) derives the same id and its `export_created` event is recorded once.
pub fn derived_export_id(object: &AuditExport, now: Timestamp) -> String {
    let Some(uid) = object.metadata.uid.as_deref() else {
        return crate::export::registry::new_export_id();
    };
    let created = object
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now, |time| time.0);
    let millis = u64::try_from(created.as_millisecond()).unwrap_or(0);
    let digest = Sha256::digest(uid.as_bytes());
    let mut random = [0u8; 16];
    random[6..].copy_from_slice(&digest[..10]);
    let ulid = ulid::Ulid::from_parts(millis, u128::from_be_bytes(random));
    format!("exp_{}", ulid.to_string().to_lowercase())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::fs;

    fn signed_object(signer: &AnnotationSigner) -> AuditExport {
        let mut object = AuditExport::test();
        let export_id = "exp_01jz0000000000000000000000";
        let signature = signer
            .sign(&Signed {
                namespace: "default",
                name: "test",
                export_id,
                requested_by: "user:alice",
                spec: &object.spec,
            })
            .unwrap();
        let annotations = object.annotations_mut();
        annotations.insert(EXPORT_ID_ANNOTATION.into(), export_id.into());
        annotations.insert(REQUESTED_BY_ANNOTATION.into(), "user:alice".into());
        annotations.insert(SIGNATURE_ANNOTATION.into(), signature);
        object
    }

    #[test]
    fn only_a_valid_signature_makes_annotations_authentic() {
        let signer = AnnotationSigner::new([7; 32]);
        let object = signed_object(&signer);
        assert_eq!(
            origin(&object, &signer),
            Origin::Service {
                export_id: "exp_01jz0000000000000000000000".into(),
                requested_by: "user:alice".into()
            }
        );
        // Another installation's key, a changed field, a missing or garbled signature.
        assert_eq!(
            origin(&object, &AnnotationSigner::new([8; 32])),
            Origin::Namespace
        );
        let mut tenant = object.clone();
        tenant.spec.tenant_id = "tnt_globex".into();
        let mut bucket = object.clone();
        bucket.spec.destination.bucket = "/elsewhere".into();
        let mut requester = object.clone();
        requester
            .annotations_mut()
            .insert(REQUESTED_BY_ANNOTATION.into(), "user:mallory".into());
        let mut moved = object.clone();
        moved.metadata.namespace = Some("team-b".into());
        let mut unsigned = object.clone();
        unsigned.annotations_mut().remove(SIGNATURE_ANNOTATION);
        let mut garbled = object.clone();
        garbled
            .annotations_mut()
            .insert(SIGNATURE_ANNOTATION.into(), "v1.AAAA".into());
        for changed in [tenant, bucket, requester, moved, unsigned, garbled] {
            assert_eq!(origin(&changed, &signer), Origin::Namespace);
        }
        // Any change to the spec breaks it too.
        let mut compression = object.clone();
        compression.spec.compression = Some(super::super::crd::ExportCompression::Gzip);
        assert_eq!(origin(&compression, &signer), Origin::Namespace);
    }

    #[test]
    fn the_namespace_label_lists_the_allowed_tenants() {
        assert_eq!(
            allowed_tenants("tnt_acme.tnt-globex"),
            ["tnt_acme", "tnt-globex"]
        );
        assert!(check_tenant("team-a", Some("tnt_acme"), "tnt_acme").is_ok());
        assert!(check_tenant("team-a", Some("tnt_x.tnt_acme"), "tnt_acme").is_ok());
        let foreign = check_tenant("team-a", Some("tnt_acme"), "tnt_globex").unwrap_err();
        assert!(
            foreign.contains("audit.scailabs.ai/tenant") && foreign.contains("tnt_globex"),
            "{foreign}"
        );
        // A prefix is not a tenant.
        assert!(check_tenant("team-a", Some("tnt_acme"), "tnt_ac").is_err());
        let missing = check_tenant("team-a", None, "tnt_acme").unwrap_err();
        assert!(
            missing.contains("has no label audit.scailabs.ai/tenant"),
            "{missing}"
        );
    }

    #[test]
    fn derived_export_ids_are_stable_per_resource() {
        let now = Timestamp::from_second(1_790_000_000).unwrap();
        let object = AuditExport::test();
        let id = derived_export_id(&object, now);
        assert!(id.starts_with("exp_") && id.len() == 30, "{id}");
        assert_eq!(id, derived_export_id(&object, now));
        let mut other = object.clone();
        other.metadata.uid = Some("uid-2".into());
        assert_ne!(id, derived_export_id(&other, now));
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = AnnotationSigner::load_or_create(dir.path()).unwrap();
        let again = AnnotationSigner::load_or_create(dir.path()).unwrap();
        assert_eq!(first.key, again.key);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

//! Tenant confinement of exports: where a `file` destination may write and which ScaiVault
//! secrets a tenant's export may read with the service's own token.
//!
//! One [`ExportPolicy`], built from `[export] file_root` and `[export] credentials_path_prefixes`,
//! is checked by `POST /v1/audit/export` before the export is accepted and again by the engine
//! before a job fetches anything or opens its destination, so REST exports, `AuditExport`
//! resources and jobs resumed from before an upgrade all meet the same rules.

use std::path::{Component, Path, PathBuf};

use super::job::{Destination, DestinationType, ExportFailure, ExportSpec, check_file_bucket};

/// How the `file_root` setting is named in messages (TOML key, flag, environment variable).
pub const FILE_ROOT_SETTING: &str =
    "[export] file_root (--export-file-root, SCAIVAULT_AUDIT_EXPORT_FILE_ROOT)";

pub use crate::config::export::{
    DEFAULT_CREDENTIALS_PATH_PREFIX, TENANT_PLACEHOLDER, check_credentials_prefix, comparable_path,
    paths_overlap,
};

/// Why the policy refused an export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No `file_root` is configured (the default in Kubernetes).
    #[error(
        "file destinations are disabled on this server: an administrator must set {FILE_ROOT_SETTING}"
    )]
    FileDestinationsDisabled,
    /// The bucket of a `file` destination is not a directory inside the root.
    #[error("{0}")]
    FileBucket(String),
    /// `credentials_path` lies outside every prefix this tenant may use.
    #[error(
        "credentials_path '{path}' is outside the secret paths this tenant's exports may use \
         ({allowed})"
    )]
    CredentialsPathDenied { path: String, allowed: String },
}

impl PolicyError {
    /// The request field the refusal is about.
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::FileDestinationsDisabled => "destination.type",
            PolicyError::FileBucket(_) => "destination.bucket",
            PolicyError::CredentialsPathDenied { .. } => "destination.credentials_path",
        }
    }

    /// A tenant reaching outside its own secrets, rather than a malformed request (403).
    pub fn is_access_denied(&self) -> bool {
        matches!(self, PolicyError::CredentialsPathDenied { .. })
    }

    /// The failure of a job refused by the policy.
    pub fn to_failure(&self) -> ExportFailure {
        let code = if self.is_access_denied() {
            TENANT_ACCESS_DENIED
        } else {
            DESTINATION_NOT_ALLOWED
        };
        ExportFailure::new(code, format!("{}: {self}", self.field()))
    }
}

/// Failure code of a credentials path outside the tenant's prefixes (REST: 403).
pub const TENANT_ACCESS_DENIED: &str = "tenant_access_denied";
/// Failure code of a destination this installation does not allow (REST: 422).
pub const DESTINATION_NOT_ALLOWED: &str = "destination_not_allowed";

/// Why a path under a root could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("'{0}' is a symbolic link; export directories may not pass through links")]
    Symlink(String),
    #[error("'{0}' exists and is not a directory")]
    NotADirectory(String),
    #[error("'{0}' is not a plain relative path")]
    NotRelative(String),
    #[error("'{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The export rules of this installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPolicy {
    /// Absolute directory under which `file` destinations live; `None` disables them.
    file_root: Option<PathBuf>,
    /// Secret-path prefixes, with [`TENANT_PLACEHOLDER`] still in them.
    credentials_path_prefixes: Vec<String>,
}

impl ExportPolicy {
    /// A policy over `file_root` (an existing directory, ideally canonical) and the prefixes.
    pub fn new(file_root: Option<PathBuf>, credentials_path_prefixes: Vec<String>) -> Self {
        ExportPolicy {
            file_root,
            credentials_path_prefixes,
        }
    }

    /// The root of `file` destinations, when they are enabled.
    pub fn file_root(&self) -> Option<&Path> {
        self.file_root.as_deref()
    }

    /// Checks `spec` without writing anything: the credentials path first (nothing may be
    /// fetched for a foreign path), then a `file` destination's directory.
    pub fn check(&self, spec: &ExportSpec) -> Result<(), PolicyError> {
        if let Some(path) = &spec.destination.credentials_path {
            self.check_credentials_path(&spec.tenant_id, path)?;
        }
        if spec.destination.kind == DestinationType::File {
            self.check_file_destination(&spec.destination)?;
        }
        Ok(())
    }

    /// Whether `tenant` may have the service read the secret at `path`.
    pub fn check_credentials_path(&self, tenant: &str, path: &str) -> Result<(), PolicyError> {
        let allowed = self.credentials_path_prefixes.iter().any(|prefix| {
            let prefix = prefix.replace(TENANT_PLACEHOLDER, tenant);
            path_is_under(path, &prefix)
        });
        if allowed {
            return Ok(());
        }
        let allowed = if self.credentials_path_prefixes.is_empty() {
            "none are allowed".to_string()
        } else {
            let expanded: Vec<String> = self
                .credentials_path_prefixes
                .iter()
                .map(|prefix| prefix.replace(TENANT_PLACEHOLDER, tenant))
                .collect();
            format!("allowed: {}", expanded.join(", "))
        };
        Err(PolicyError::CredentialsPathDenied {
            path: path.to_string(),
            allowed,
        })
    }

    /// The existing part of a `file` destination's directory, and of its prefix's directories,
    /// must be plain directories inside the root (missing ones are created when the job runs).
    fn check_file_destination(&self, destination: &Destination) -> Result<(), PolicyError> {
        let root = self.root()?;
        check_file_bucket(&destination.bucket)
            .map_err(|problem| PolicyError::FileBucket(problem.into()))?;
        let mut path = destination.bucket.clone();
        if let Some((prefix_dir, _)) = destination.prefix.rsplit_once('/') {
            path = format!("{path}/{prefix_dir}");
        }
        walk_under(root, &path, false)
            .map(|_| ())
            .map_err(|error| bucket_error(&error))
    }

    /// Opens (creating missing directories) the directory of a `file` destination: the root
    /// joined with the bucket, with no symbolic link on the way.
    pub fn file_directory(&self, bucket: &str) -> Result<PathBuf, PolicyError> {
        let root = self.root()?;
        check_file_bucket(bucket).map_err(|problem| PolicyError::FileBucket(problem.into()))?;
        walk_under(root, bucket, true).map_err(|error| bucket_error(&error))
    }

    fn root(&self) -> Result<&Path, PolicyError> {
        self.file_root
            .as_deref()
            .ok_or(PolicyError::FileDestinationsDisabled)
    }
}

fn bucket_error(error: &WalkError) -> PolicyError {
    match error {
        // The server's own paths stay out of the message; the log has them.
        WalkError::Io { path, source } => {
            tracing::warn!(path, error = %source, "file export directory unusable");
            PolicyError::FileBucket(format!(
                "the directory '{path}' under the file root cannot be used ({})",
                source.kind()
            ))
        }
        other => PolicyError::FileBucket(other.to_string()),
    }
}

/// `path` equals the prefix or lies below it; a prefix ending in `/` matches everything under it.
fn path_is_under(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Walks `relative` (plain `/`-separated names) below `root`, one component at a time, refusing
/// symbolic links and non-directories on the way; with `create`, missing directories are
/// created, else the walk stops at the first missing one. Returns `root` joined with `relative`.
pub fn walk_under(root: &Path, relative: &str, create: bool) -> Result<PathBuf, WalkError> {
    let mut current = root.to_path_buf();
    let mut walked = String::new();
    for component in Path::new(relative).components() {
        let Component::Normal(name) = component else {
            return Err(WalkError::NotRelative(relative.to_string()));
        };
        current.push(name);
        if !walked.is_empty() {
            walked.push('/');
        }
        walked.push_str(&name.to_string_lossy());
        match std::fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(WalkError::Symlink(walked));
            }
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => return Err(WalkError::NotADirectory(walked)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
                create_one(&current, &walked)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(root.join(relative));
            }
            Err(source) => {
                return Err(WalkError::Io {
                    path: walked,
                    source,
                });
            }
        }
    }
    Ok(current)
}

/// Creates one directory; a concurrent creation is fine as long as the result is a directory.
fn create_one(path: &Path, walked: &str) -> Result<(), WalkError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(path) {
                Ok(metadata) if metadata.is_dir() => Ok(()),
                Ok(metadata) if metadata.file_type().is_symlink() => {
                    Err(WalkError::Symlink(walked.to_string()))
                }
                _ => Err(WalkError::NotADirectory(walked.to_string())),
            }
        }
        Err(source) => Err(WalkError::Io {
            path: walked.to_string(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::format::{Compression, ExportFormat};
    use std::collections::BTreeMap;

    fn spec(kind: DestinationType, bucket: &str, credentials_path: Option<&str>) -> ExportSpec {
        ExportSpec {
            tenant_id: "tnt_acme".into(),
            from: "2026-01-01T00:00:00.000000Z".into(),
            to: "2026-02-01T00:00:00.000000Z".into(),
            format: ExportFormat::Jsonl,
            compression: Compression::None,
            filters: BTreeMap::new(),
            destination: Destination {
                kind,
                bucket: bucket.into(),
                prefix: String::new(),
                credentials_path: credentials_path.map(str::to_string),
            },
            max_records_per_file: 10,
            late: None,
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|error| panic!("{error}"))
    }

    fn policy(root: Option<&Path>) -> ExportPolicy {
        ExportPolicy::new(
            root.map(Path::to_path_buf),
            vec![DEFAULT_CREDENTIALS_PATH_PREFIX.into()],
        )
    }

    #[test]
    fn credentials_paths_must_be_under_a_tenant_prefix() {
        let policy = ExportPolicy::new(
            None,
            vec![
                DEFAULT_CREDENTIALS_PATH_PREFIX.into(),
                "infra/aws/audit-export-writer".into(),
            ],
        );
        for allowed in [
            "tenants/tnt_acme/s3",
            "tenants/tnt_acme/deep/er",
            "infra/aws/audit-export-writer",
            "infra/aws/audit-export-writer/eu",
        ] {
            assert_eq!(
                policy.check_credentials_path("tnt_acme", allowed),
                Ok(()),
                "{allowed}"
            );
        }
        for denied in [
            "tenants/tnt_other/s3",
            "tenants/tnt_acme2/s3",
            "tenants/tnt_acme",
            "infra/aws/audit-export-writer-other",
            "infra/aws",
            "platform/root",
        ] {
            let refused = policy.check_credentials_path("tnt_acme", denied);
            assert!(
                matches!(&refused, Err(error) if error.is_access_denied()),
                "{denied}: {refused:?}"
            );
        }
        let none = ExportPolicy::new(None, Vec::new());
        assert!(
            none.check_credentials_path("tnt_acme", "tenants/tnt_acme/x")
                .is_err()
        );
    }

    #[test]
    fn a_foreign_credentials_path_is_refused_before_the_file_check() {
        let refused = policy(None).check(&spec(
            DestinationType::S3,
            "acme-audit",
            Some("tenants/tnt_other/s3"),
        ));
        let failure = refused.map_err(|error| error.to_failure());
        assert!(
            matches!(&failure, Err(f) if f.code == "tenant_access_denied"),
            "{failure:?}"
        );
    }

    #[test]
    fn without_a_root_file_destinations_are_refused_naming_the_setting() {
        let refused = policy(None).check(&spec(DestinationType::File, "audit", None));
        let Err(error) = refused else {
            panic!("accepted")
        };
        assert_eq!(error.field(), "destination.type");
        assert!(error.to_string().contains("file_root"), "{error}");
        assert!(
            error
                .to_string()
                .contains("SCAIVAULT_AUDIT_EXPORT_FILE_ROOT"),
            "{error}"
        );
        assert_eq!(error.to_failure().code, "destination_not_allowed");
    }

    #[test]
    fn file_buckets_resolve_under_the_root_and_refuse_links_and_files() {
        let root = tempdir();
        let outside = tempdir();
        let policy = policy(Some(root.path()));
        std::fs::create_dir(root.path().join("real")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(root.path().join("real"), root.path().join("inner"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(root.path().join("plain"), b"x").unwrap_or_else(|e| panic!("{e}"));

        let ok = policy.check(&spec(DestinationType::File, "real/sub", None));
        assert_eq!(ok, Ok(()));
        let made = policy
            .file_directory("real/sub/deeper")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(made, root.path().join("real/sub/deeper"));
        assert!(made.is_dir());

        for (bucket, needle) in [
            ("escape", "symbolic link"),
            ("escape/sub", "symbolic link"),
            ("inner", "symbolic link"),
            ("plain/sub", "not a directory"),
        ] {
            let refused = policy.check(&spec(DestinationType::File, bucket, None));
            assert!(
                matches!(&refused, Err(PolicyError::FileBucket(m)) if m.contains(needle)),
                "{bucket}: {refused:?}"
            );
            assert!(policy.file_directory(bucket).is_err(), "{bucket}");
        }
        assert_eq!(
            std::fs::read_dir(outside.path())
                .map(Iterator::count)
                .unwrap_or_default(),
            0,
            "nothing was created through the link"
        );
        for bucket in ["/etc", "../x", "real/../..", "a/./b"] {
            assert!(
                matches!(
                    policy.file_directory(bucket),
                    Err(PolicyError::FileBucket(_))
                ),
                "{bucket}"
            );
        }
    }

    #[test]
    fn prefixes_are_validated() {
        for good in ["tenants/{tenant_id}/", "infra/aws/audit-export-writer", "x"] {
            assert_eq!(check_credentials_prefix(good), Ok(()), "{good}");
        }
        for bad in ["", "/abs/", "a//b", "{tenant}/", "Upper/", "a/../b"] {
            assert!(check_credentials_prefix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn overlap_is_checked_on_normalised_paths() {
        let base = tempdir();
        let data = base.path().join("data");
        let compare = |path: PathBuf| comparable_path(&path).unwrap_or_else(|e| panic!("{e}"));
        let data_c = compare(data.clone());
        assert!(paths_overlap(&compare(data.join("exports")), &data_c));
        assert!(paths_overlap(&compare(base.path().to_path_buf()), &data_c));
        assert!(paths_overlap(&compare(data.join("x/../.")), &data_c));
        assert!(!paths_overlap(
            &compare(base.path().join("exports")),
            &data_c
        ));
        assert!(!paths_overlap(&compare(base.path().join("data2")), &data_c));
    }
}

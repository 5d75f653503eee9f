//! Static API tokens (stored as SHA-256 hashes in a TOML file) and the bootstrap token.
//!
//! ```toml
//! [[tokens]]
//! name = "ingest-acme"            # for operators; never shown to callers
//! sha256 = "<hex SHA-256 of the token>"
//! identity_id = "sa:scaivault-ingest"
//! scopes = ["audit:write"]
//! tenant_id = "tnt_acme"          # or: all_tenants = true (partner admin)
//! ```
//!
//! Tokens have 256 bits of entropy, so a plain SHA-256 is a safe way to store them: there is
//! nothing to brute-force that a slow password hash would protect.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Principal, Scope, TenantAccess};

/// Prefix of ScaiVault personal access tokens, kept for recognisability.
pub const TOKEN_PREFIX: &str = "skt_";
/// File name of the bootstrap token inside the data directory.
pub const BOOTSTRAP_TOKEN_FILE: &str = "bootstrap-token";

/// Errors loading tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid tokens file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Lowercase hex SHA-256 of a token, as stored in the tokens file.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `skt_` and 64 hex digits (256 bits).
pub fn generate_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// Static tokens by hash.
#[derive(Debug, Default, Clone)]
pub struct StaticTokens {
    by_hash: HashMap<String, Principal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    identity_id: String,
    scopes: Vec<String>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    all_tenants: bool,
}

impl StaticTokens {
    /// Loads and validates a tokens file.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = fs::read_to_string(path).map_err(|source| TokenFileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| TokenFileError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the TOML text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut tokens = StaticTokens::default();
        for entry in file.tokens {
            let name = entry.name.clone();
            let (hash, principal) = entry
                .into_principal()
                .map_err(|message| format!("token '{name}': {message}"))?;
            if tokens.by_hash.insert(hash, principal).is_some() {
                return Err(format!("token '{name}': the same sha256 appears twice"));
            }
        }
        Ok(tokens)
    }

    /// Adds one token in clear (the bootstrap token).
    pub fn insert(&mut self, token: &str, principal: Principal) {
        self.by_hash.insert(hash_token(token), principal);
    }

    /// The principal of a presented token.
    pub fn lookup(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&hash_token(token))
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

impl TokenEntry {
    fn into_principal(self) -> Result<(String, Principal), String> {
        let hash = self.sha256.to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hex digits".to_string());
        }
        if self.identity_id.trim().is_empty() {
            return Err("identity_id must not be empty".to_string());
        }
        let mut scopes = BTreeSet::new();
        for scope in &self.scopes {
            scopes.insert(Scope::parse(scope).ok_or_else(|| {
                format!(
                    "unknown scope '{scope}' (expected audit:read, audit:write or audit:export)"
                )
            })?);
        }
        let tenants = match (self.tenant_id, self.all_tenants) {
            (Some(tenant), false) => {
                crate::event::check_tenant_id(&tenant)
                    .map_err(|message| format!("tenant_id {message}"))?;
                TenantAccess::One(tenant)
            }
            (None, true) => TenantAccess::All,
            _ => return Err("set exactly one of tenant_id or all_tenants = true".to_string()),
        };
        Ok((
            hash,
            Principal {
                identity_id: self.identity_id,
                scopes,
                tenants,
            },
        ))
    }
}

/// The bootstrap token of a standalone start without configured auth. It is never printed
/// by the server or written to its log: `scaivault-audit token bootstrap --data-dir DIR`
/// prints it ([`BootstrapToken::read`]).
#[derive(Clone)]
pub struct BootstrapToken {
    pub token: String,
    pub path: PathBuf,
    /// True when this start generated it.
    pub created: bool,
}

impl std::fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapToken")
            .field("path", &self.path)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl BootstrapToken {
    /// The token stored in `DIR/bootstrap-token`, or `None` if there is none (the server
    /// never started on `data_dir` without configured authentication). Never creates one.
    pub fn read(data_dir: &Path) -> Result<Option<String>, TokenFileError> {
        let path = data_dir.join(BOOTSTRAP_TOKEN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) if text.trim().is_empty() => Err(TokenFileError::Invalid {
                path,
                message: "the file is empty".into(),
            }),
            Ok(text) => Ok(Some(text.trim().to_string())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenFileError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Reads `DIR/bootstrap-token`, or generates one and writes it with mode 0600.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, TokenFileError> {
        let path = data_dir.join(BOOTSTRAP_TOKEN_FILE);
        let io = |action| {
            let path = path.clone();
            move |source| TokenFileError::Io {
                action,
                path,
                source,
            }
        };
        match fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(TokenFileError::Invalid {
                        path,
                        message: "the file is empty".into(),
                    });
                }
                return Ok(BootstrapToken {
                    token,
                    path,
                    created: false,
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(io("read")(error)),
        }
        fs::create_dir_all(data_dir).map_err(io("create the data directory for"))?;
        let token = generate_token().map_err(|error| TokenFileError::Invalid {
            path: path.clone(),
            message: error.to_string(),
        })?;
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("create"))?
        };
        file.write_all(format!("{token}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write"))?;
        Ok(BootstrapToken {
            token,
            path,
            created: true,
        })
    }

    /// The bootstrap principal: every audit scope, every tenant.
    pub fn principal() -> Principal {
        Principal {
            identity_id: "system:bootstrap".into(),
            scopes: Scope::ALL.into_iter().collect(),
            tenants: TenantAccess::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_round_trip() {
        let token = "skt_reader";
        let text = format!(
            "[[tokens]]\nname = \"r\"\nsha256 = \"{}\"\nidentity_id = \"sa:r\"\nscopes = [\"audit:read\"]\ntenant_id = \"tnt_a\"\n\
             [[tokens]]\nname = \"admin\"\nsha256 = \"{}\"\nidentity_id = \"user:root@x\"\nscopes = [\"audit:read\", \"audit:export\"]\nall_tenants = true\n",
            hash_token(token),
            hash_token("skt_admin")
        );
        let tokens = StaticTokens::parse(&text).unwrap();
        assert_eq!(tokens.len(), 2);
        let reader = tokens.lookup(token).unwrap();
        assert_eq!(reader.tenants, TenantAccess::One("tnt_a".into()));
        assert_eq!(reader.scopes, [Scope::Read].into_iter().collect());
        assert_eq!(
            tokens.lookup("skt_admin").unwrap().tenants,
            TenantAccess::All
        );
        assert!(tokens.lookup("skt_other").is_none());
    }

    #[test]
    fn invalid_entries_are_explained() {
        let entry = |extra: &str| {
            format!(
                "[[tokens]]\nname = \"t\"\nsha256 = \"{}\"\nidentity_id = \"sa:t\"\n{extra}",
                hash_token("x")
            )
        };
        let cases = [
            (entry("scopes = [\"audit:admin\"]\ntenant_id = \"a\""), "unknown scope"),
            (entry("scopes = []"), "exactly one of"),
            (entry("scopes = []\ntenant_id = \"a\"\nall_tenants = true"), "exactly one of"),
            (entry("scopes = []\ntenant_id = \"bad tenant\""), "tenant_id"),
            (entry("scopes = []\ntenant_id = \"a\"\ncolour = 1"), "unknown field"),
            ("[[tokens]]\nname = \"t\"\nsha256 = \"abc\"\nidentity_id = \"x\"\nscopes = []\nall_tenants = true".to_string(), "64 hex"),
        ];
        for (text, expected) in cases {
            let error = StaticTokens::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn bootstrap_token_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = BootstrapToken::load_or_create(dir.path()).unwrap();
        assert!(first.created);
        assert!(first.token.starts_with(TOKEN_PREFIX) && first.token.len() == 4 + 64);
        let mode = fs::metadata(&first.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = BootstrapToken::load_or_create(dir.path()).unwrap();
        assert!(!second.created);
        assert_eq!(second.token, first.token);
        assert_eq!(
            BootstrapToken::read(dir.path()).unwrap().as_deref(),
            Some(first.token.as_str())
        );
        assert!(!format!("{first:?}").contains(&first.token));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(BootstrapToken::read(empty.path()).unwrap(), None);
        assert!(
            !empty
                .path()
                .join(BOOTSTRAP_TOKEN_FILE)
                .try_exists()
                .unwrap()
        );
    }

    #[test]
    fn the_example_tokens_file_holds_the_documented_tokens() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokens.example.toml");
        let tokens = StaticTokens::load(&path).unwrap();
        let ingest = tokens.lookup("skt_dev_ingest_acme").unwrap();
        assert_eq!(ingest.scopes, [Scope::Write].into_iter().collect());
        assert_eq!(ingest.tenants, TenantAccess::One("tnt_acme".into()));
        assert!(tokens.lookup("skt_dev_reader_acme").is_some());
        assert_eq!(
            tokens.lookup("skt_dev_partner_admin").unwrap().tenants,
            TenantAccess::All
        );
    }
}

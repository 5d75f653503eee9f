//! Ed25519 signing keys, their public JWKS, and signed JSON objects.
//!
//! A key ring is a directory (the data directory's `integrity/keys/` by default, or a mounted
//! Kubernetes Secret):
//!
//! ```text
//! keyring.json   {"active": KID, "keys": [{"kid", "x", "valid_from", "valid_until"}]}
//! KID.pem        the active private key, PKCS#8 PEM (mode 0600)
//! ```
//!
//! Every key ever used stays listed in `keyring.json` with its validity window, so signatures
//! made before a rotation still verify; only the active key's private half is kept. A key id
//! is the key's RFC 7638 JWK thumbprint. A signed object carries
//! `"signature": {"alg": "EdDSA", "kid": KID, "value": BASE64URL}` over the canonical JSON of
//! the object without its `signature` member.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::canonical;
use crate::{durable_file, timestamp};

/// Name of the member that carries an object's signature.
pub const SIGNATURE_MEMBER: &str = "signature";
const KEYRING_FILE: &str = "keyring.json";

/// Why a key ring cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key ring {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("signing key ring {dir}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error("no signing key ring in {0} (create one with `scaivault-audit integrity keygen`)")]
    Missing(PathBuf),
}

/// One public key and when it signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub kid: String,
    /// The public key, base64url (the JWK `x` member).
    pub x: String,
    pub valid_from: String,
    /// When it was rotated out; `None` for the active key.
    #[serde(default)]
    pub valid_until: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyringFile {
    active: String,
    keys: Vec<KeyEntry>,
}

/// The active signing key and every public key the service has signed with.
#[derive(Debug, Clone)]
pub struct Keyring {
    signing: SigningKey,
    kid: String,
    keys: Vec<KeyEntry>,
}

impl Keyring {
    /// Loads the key ring in `dir`; when there is none and `create` is set, creates one.
    pub fn load(dir: &Path, create: bool) -> Result<Keyring, KeyError> {
        match fs::read(dir.join(KEYRING_FILE)) {
            Ok(bytes) => Self::parse(dir, &bytes),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
                Self::generate(dir, Vec::new())
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(KeyError::Missing(dir.to_owned()))
            }
            Err(source) => Err(KeyError::Io {
                dir: dir.to_owned(),
                source,
            }),
        }
    }

    /// Replaces the active key of the ring in `dir` with a new one; the old public key stays
    /// listed, valid until now. Returns the new ring.
    pub fn rotate(dir: &Path) -> Result<Keyring, KeyError> {
        let old = Self::load(dir, false)?;
        let now = timestamp::format_micros(timestamp::now_micros());
        let mut keys = old.keys.clone();
        for entry in keys.iter_mut().filter(|entry| entry.kid == old.kid) {
            entry.valid_until = Some(now.clone());
        }
        let ring = Self::generate(dir, keys)?;
        // The retired private key is no longer needed.
        let _ = fs::remove_file(dir.join(format!("{}.pem", old.kid)));
        Ok(ring)
    }

    /// Adds the public keys of `keyring_json` (another ring's `keyring.json`, e.g. from a
    /// restored snapshot) to the ring in `dir` as retired keys, so that what they signed still
    /// verifies; creates the ring (with a new active key) when there is none. The other ring's
    /// private keys are never needed.
    pub fn adopt_public_ring(dir: &Path, keyring_json: &[u8]) -> Result<Keyring, KeyError> {
        let other: KeyringFile = serde_json::from_slice(keyring_json)
            .map_err(|error| invalid(dir, format!("the adopted {KEYRING_FILE}: {error}")))?;
        let now = timestamp::format_micros(timestamp::now_micros());
        let retired = other.keys.into_iter().map(|mut entry| {
            entry.valid_until.get_or_insert_with(|| now.clone());
            entry
        });
        match Self::load(dir, false) {
            Ok(mut ring) => {
                for entry in retired {
                    if !ring.keys.iter().any(|known| known.kid == entry.kid) {
                        ring.keys.push(entry);
                    }
                }
                let file = KeyringFile {
                    active: ring.kid.clone(),
                    keys: ring.keys.clone(),
                };
                let body = serde_json::to_vec_pretty(&file).unwrap_or_default();
                durable_file::replace(&dir.join(KEYRING_FILE), &body).map_err(|source| {
                    KeyError::Io {
                        dir: dir.to_owned(),
                        source,
                    }
                })?;
                Ok(ring)
            }
            Err(KeyError::Missing(_)) => Self::generate(dir, retired.collect()),
            Err(error) => Err(error),
        }
    }

    fn generate(dir: &Path, mut keys: Vec<KeyEntry>) -> Result<Keyring, KeyError> {
        let io = |source| KeyError::Io {
            dir: dir.to_owned(),
            source,
        };
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|error| io(std::io::Error::other(error)))?;
        let signing = SigningKey::from_bytes(&seed);
        let kid = thumbprint(&signing.verifying_key());
        let pem = signing
            .to_pkcs8_pem(Default::default())
            .map_err(|error| invalid(dir, format!("cannot encode a key: {error}")))?;
        fs::create_dir_all(dir).map_err(io)?;
        durable_file::create_private(&dir.join(format!("{kid}.pem")), pem.as_bytes())
            .map_err(io)?;
        keys.push(KeyEntry {
            kid: kid.clone(),
            x: URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
            valid_from: timestamp::format_micros(timestamp::now_micros()),
            valid_until: None,
        });
        let file = KeyringFile {
            active: kid.clone(),
            keys: keys.clone(),
        };
        let body = serde_json::to_vec_pretty(&file).unwrap_or_default();
        durable_file::replace(&dir.join(KEYRING_FILE), &body).map_err(io)?;
        Ok(Keyring { signing, kid, keys })
    }

    fn parse(dir: &Path, bytes: &[u8]) -> Result<Keyring, KeyError> {
        let file: KeyringFile = serde_json::from_slice(bytes)
            .map_err(|error| invalid(dir, format!("{KEYRING_FILE}: {error}")))?;
        let pem_path = dir.join(format!("{}.pem", file.active));
        let pem = fs::read_to_string(&pem_path).map_err(|source| KeyError::Io {
            dir: dir.to_owned(),
            source,
        })?;
        let signing = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|error| invalid(dir, format!("{}: {error}", pem_path.display())))?;
        if thumbprint(&signing.verifying_key()) != file.active {
            return Err(invalid(
                dir,
                format!("{} does not hold key {}", pem_path.display(), file.active),
            ));
        }
        if !file.keys.iter().any(|entry| entry.kid == file.active) {
            return Err(invalid(dir, "the active key is not listed".to_owned()));
        }
        Ok(Keyring {
            signing,
            kid: file.active,
            keys: file.keys,
        })
    }

    /// The active key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Every key, oldest first.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.keys
    }

    /// The JWKS document of every key (RFC 8037 OKP keys; `valid_from`/`valid_until` carry the
    /// validity windows).
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|entry| {
                json!({
                    "kty": "OKP", "crv": "Ed25519", "x": entry.x, "kid": entry.kid,
                    "use": "sig", "alg": "EdDSA",
                    "valid_from": entry.valid_from, "valid_until": entry.valid_until,
                })
            })
            .collect();
        json!({ "keys": keys })
    }

    /// The public keys, for verifying what this ring signed.
    pub fn public_keys(&self) -> PublicKeys {
        let mut keys = PublicKeys::default();
        for entry in &self.keys {
            if let Ok(key) = decode_x(&entry.x) {
                keys.keys.insert(entry.kid.clone(), key);
            }
        }
        keys
    }

    /// Signs `object` (a JSON object without `signature`): adds its `signature` member.
    pub fn sign_object(&self, object: &mut Map<String, Value>) {
        object.remove(SIGNATURE_MEMBER);
        let bytes = canonical::to_vec(&Value::Object(object.clone()));
        let signature = self.signing.sign(&bytes);
        object.insert(
            SIGNATURE_MEMBER.to_owned(),
            json!({
                "alg": "EdDSA",
                "kid": self.kid,
                "value": URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            }),
        );
    }
}

/// Why a signed object does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("it carries no signature")]
    Missing,
    #[error("its signature is malformed: {0}")]
    Malformed(String),
    #[error("it is signed with key {0}, which is not among the trusted public keys")]
    UnknownKey(String),
    #[error(
        "its signature does not match its content (key {0}): it was altered or signed by another key"
    )]
    Mismatch(String),
}

/// Public keys by key id: the trust anchor of a verifier.
#[derive(Debug, Clone, Default)]
pub struct PublicKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl PublicKeys {
    /// Reads a JWKS document (`{"keys": [...]}`) or a single JWK.
    pub fn from_jwks(document: &Value) -> Result<PublicKeys, String> {
        let entries = match document.get("keys") {
            Some(Value::Array(keys)) => keys.clone(),
            _ => vec![document.clone()],
        };
        let mut keys = PublicKeys::default();
        for entry in entries {
            if entry.get("kty").and_then(Value::as_str) != Some("OKP")
                || entry.get("crv").and_then(Value::as_str) != Some("Ed25519")
            {
                continue;
            }
            let x = entry
                .get("x")
                .and_then(Value::as_str)
                .ok_or("a JWK has no `x`")?;
            let key = decode_x(x)?;
            let kid = match entry.get("kid").and_then(Value::as_str) {
                Some(kid) => kid.to_owned(),
                None => thumbprint(&key),
            };
            keys.keys.insert(kid, key);
        }
        if keys.keys.is_empty() {
            return Err("no Ed25519 key in the JWKS".to_owned());
        }
        Ok(keys)
    }

    /// The public keys listed in the key ring in `dir` (its `keyring.json`; no private key is
    /// read).
    pub fn from_keyring_dir(dir: &Path) -> Result<PublicKeys, KeyError> {
        let bytes = fs::read(dir.join(KEYRING_FILE)).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KeyError::Missing(dir.to_owned()),
            _ => KeyError::Io {
                dir: dir.to_owned(),
                source,
            },
        })?;
        let file: KeyringFile = serde_json::from_slice(&bytes)
            .map_err(|error| invalid(dir, format!("{KEYRING_FILE}: {error}")))?;
        let mut keys = PublicKeys::default();
        for entry in file.keys {
            let key = decode_x(&entry.x).map_err(|error| invalid(dir, error))?;
            keys.keys.insert(entry.kid, key);
        }
        Ok(keys)
    }

    /// Reads a public key file: a JWKS/JWK (JSON) or an SPKI PEM (`openssl pkey -pubout`).
    pub fn from_file_contents(text: &str) -> Result<PublicKeys, String> {
        if text.trim_start().starts_with('{') {
            let document: Value =
                serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
            return Self::from_jwks(&document);
        }
        let key = VerifyingKey::from_public_key_pem(text)
            .map_err(|error| format!("not an Ed25519 public key PEM: {error}"))?;
        let mut keys = PublicKeys::default();
        keys.keys.insert(thumbprint(&key), key);
        Ok(keys)
    }

    /// Checks `object`'s signature; returns the signing key's id.
    pub fn verify_object(&self, object: &Map<String, Value>) -> Result<String, SignatureError> {
        let signature = object
            .get(SIGNATURE_MEMBER)
            .ok_or(SignatureError::Missing)?;
        let field = |name: &str| {
            signature
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| SignatureError::Malformed(format!("no `{name}`")))
        };
        if field("alg")? != "EdDSA" {
            return Err(SignatureError::Malformed("`alg` is not EdDSA".to_owned()));
        }
        let kid = field("kid")?.to_owned();
        let value = URL_SAFE_NO_PAD
            .decode(field("value")?)
            .map_err(|error| SignatureError::Malformed(error.to_string()))?;
        let signature = Signature::from_slice(&value)
            .map_err(|error| SignatureError::Malformed(error.to_string()))?;
        let key = self
            .keys
            .get(&kid)
            .ok_or_else(|| SignatureError::UnknownKey(kid.clone()))?;
        let mut unsigned = object.clone();
        unsigned.remove(SIGNATURE_MEMBER);
        let bytes = canonical::to_vec(&Value::Object(unsigned));
        key.verify(&bytes, &signature)
            .map_err(|_| SignatureError::Mismatch(kid.clone()))?;
        Ok(kid)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 key: the key id.
pub fn thumbprint(key: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(key.as_bytes());
    let members = format!("{{\"crv\":\"Ed25519\",\"kty\":\"OKP\",\"x\":\"{x}\"}}");
    URL_SAFE_NO_PAD.encode(Sha256::digest(members.as_bytes()))
}

fn decode_x(x: &str) -> Result<VerifyingKey, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(x)
        .map_err(|error| format!("bad `x`: {error}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "`x` is not 32 bytes".to_owned())?;
    VerifyingKey::from_bytes(&bytes).map_err(|error| format!("bad Ed25519 key: {error}"))
}

fn invalid(dir: &Path, message: String) -> KeyError {
    KeyError::Invalid {
        dir: dir.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_is_created_once_signs_and_keeps_old_keys_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Keyring::load(dir.path(), false),
            Err(KeyError::Missing(_))
        ));
        let first = Keyring::load(dir.path(), true).unwrap();
        assert_eq!(Keyring::load(dir.path(), false).unwrap().kid(), first.kid());
        let pem = dir.path().join(format!("{}.pem", first.kid()));
        let mode = fs::metadata(&pem).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        let mut object = json!({"b": 1, "a": "x"}).as_object().cloned().unwrap();
        first.sign_object(&mut object);
        let rotated = Keyring::rotate(dir.path()).unwrap();
        assert_ne!(rotated.kid(), first.kid());
        assert_eq!(rotated.entries().len(), 2);
        assert!(rotated.entries()[0].valid_until.is_some());
        assert_eq!(
            rotated.public_keys().verify_object(&object),
            Ok(first.kid().to_owned())
        );
        let jwks = PublicKeys::from_jwks(&rotated.jwks()).unwrap();
        assert_eq!(jwks.verify_object(&object), Ok(first.kid().to_owned()));

        object.insert("b".into(), json!(2));
        assert_eq!(
            jwks.verify_object(&object),
            Err(SignatureError::Mismatch(first.kid().to_owned()))
        );
        let other = Keyring::load(tempfile::tempdir().unwrap().path(), true).unwrap();
        other.sign_object(&mut object);
        assert!(matches!(
            jwks.verify_object(&object),
            Err(SignatureError::UnknownKey(_))
        ));
    }
}

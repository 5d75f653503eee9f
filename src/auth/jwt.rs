//! ScaiKey JWTs verified against a JWKS (SPEC §4, token source 1).
//!
//! A compact JWT signed with RS256, ES256 or EdDSA is checked against the key its header's
//! `kid` names in a JSON Web Key Set read from a file or an http(s) URL. Its claims map to a
//! [`Principal`]: `sub` is the identity, audit scopes come from `scope` (space-separated) or
//! `scopes` (array), `tenant_id` binds the tenant and the `partner_admin`/`super_admin` roles
//! grant every tenant.
//!
//! A token naming an unknown `kid` re-loads the key set (key rotation), at most once per
//! [`JwtOptions::refresh_min_interval`]; callers arriving during a refresh wait for it and
//! share its result. Verifications with known keys never wait for a refresh.
//!
//! The server starts the verifier with [`JwtVerifier::start`]: the key set is also re-loaded
//! every [`JwtOptions::refresh_interval`], so a key removed from the JWKS stops verifying
//! tokens within that interval. A key set that cannot be loaded at start does not stop the
//! process: the verifier reports itself not ready ([`JwtVerifier::not_ready`], which keeps
//! the pod out of its Service), answers JWTs with [`AuthError::Unavailable`], and retries
//! with a backoff until the load succeeds.
//!
//! Nothing from a token and no key material is ever logged.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{AuthError, Principal, Scope, TenantAccess};

/// The only signature algorithms accepted (SPEC §4).
const ALLOWED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
/// Roles whose tokens may act for every tenant.
const ALL_TENANT_ROLES: [&str; 2] = ["partner_admin", "super_admin"];
/// Longer tokens are rejected before any parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Larger key sets are refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// RSA keys with a shorter modulus are ignored.
const MIN_RSA_MODULUS_BITS: usize = 2048;
/// Larger configured leeways are capped (and cannot underflow jsonwebtoken's clock check).
const MAX_LEEWAY: Duration = Duration::from_secs(3600);
/// First retry delay after a failed load of a key set that never loaded; doubled per failure.
const FIRST_LOAD_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest delay between retries of a key set that never loaded.
const FIRST_LOAD_RETRY_MAX: Duration = Duration::from_secs(30);
/// Default [`JwtOptions::refresh_interval`] (`[auth] jwks_refresh_seconds`).
pub const DEFAULT_REFRESH_INTERVAL: Duration = crate::config::auth::DEFAULT_JWKS_REFRESH_INTERVAL;

pub use crate::config::JwksSource;

/// How tokens are checked and how the key set is refreshed.
#[derive(Debug, Clone)]
pub struct JwtOptions {
    /// Required `iss` value; not checked when `None`.
    pub issuer: Option<String>,
    /// Required `aud` member; not checked when `None`.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (whole seconds, at most an hour).
    pub leeway: Duration,
    /// Unknown-kid refreshes happen at most this often (the initial load does not count).
    pub refresh_min_interval: Duration,
    /// Bound on one JWKS load (file or HTTP).
    pub fetch_timeout: Duration,
    /// The key set is re-loaded this often (by [`JwtVerifier::start`]'s background task).
    pub refresh_interval: Duration,
}

impl Default for JwtOptions {
    fn default() -> Self {
        JwtOptions {
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            refresh_min_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
        }
    }
}

impl From<&crate::config::JwtSettings> for JwtOptions {
    /// The configured checks, with the fixed ones at their defaults.
    fn from(settings: &crate::config::JwtSettings) -> Self {
        JwtOptions {
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            refresh_interval: settings.refresh_interval,
            ..JwtOptions::default()
        }
    }
}

/// Why a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("failed to read JWKS file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The message carries the whole cause chain (reqwest's own message omits it), so the
    /// cause is not also exposed as `source()`.
    #[error("failed to fetch JWKS from {url}: {}", error_chain(cause))]
    Fetch { url: String, cause: reqwest::Error },
    #[error("failed to fetch JWKS from {url}: HTTP status {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("failed to fetch JWKS from {origin}: timed out after {timeout:?}")]
    Timeout { origin: String, timeout: Duration },
    #[error("JWKS from {origin} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("invalid JWKS from {origin}: {reason}")]
    Parse { origin: String, reason: String },
    #[error("JWKS from {origin} has no usable RS256, ES256 or EdDSA signing key")]
    NoUsableKeys { origin: String },
    #[error("failed to build the HTTP client for JWKS fetches: {}", error_chain(.0))]
    Client(reqwest::Error),
}

/// An error and its causes, `: `-separated (reqwest hides the cause from its own message).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Verifies ScaiKey JWTs against a JWKS. `Send + Sync`; share it in an `Arc`.
pub struct JwtVerifier {
    loader: JwksLoader,
    /// One per allowed algorithm: jsonwebtoken wants every listed algorithm to fit the key.
    validations: Vec<Validation>,
    keys: RwLock<Arc<KeySet>>,
    /// Why no key set is loaded yet; `None` once a load succeeded.
    unloaded: RwLock<Option<String>>,
    /// When the last unknown-kid refresh started; held while any refresh runs.
    refresh_gate: tokio::sync::Mutex<Option<Instant>>,
    refresh_min_interval: Duration,
    refresh_interval: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("source", &self.loader.origin.describe())
            .field("keys", &self.keys.read().keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Loads the JWKS once (fails if it cannot be read or parsed); no periodic refresh.
    pub async fn new(source: JwksSource, options: JwtOptions) -> Result<Self, JwksError> {
        let verifier = Self::unloaded(source, &options)?;
        let keys = verifier.loader.load().await?;
        verifier.install(keys);
        Ok(verifier)
    }

    /// Loads the JWKS (a failure is logged and leaves the verifier not ready) and spawns the
    /// task that re-loads it every [`JwtOptions::refresh_interval`], and retries a failed
    /// first load with a backoff. The task ends when the verifier is dropped. Fails only if
    /// the HTTP client cannot be built.
    pub async fn start(source: JwksSource, options: JwtOptions) -> Result<Arc<Self>, JwksError> {
        let verifier = Arc::new(Self::unloaded(source, &options)?);
        verifier.reload().await;
        tokio::spawn(refresh_periodically(Arc::downgrade(&verifier)));
        Ok(verifier)
    }

    fn unloaded(source: JwksSource, options: &JwtOptions) -> Result<Self, JwksError> {
        let loader = JwksLoader::new(source, options.fetch_timeout)?;
        let origin = loader.origin.describe();
        Ok(JwtVerifier {
            loader,
            validations: ALLOWED_ALGORITHMS
                .iter()
                .map(|algorithm| validation_for(*algorithm, options))
                .collect(),
            keys: RwLock::new(Arc::new(KeySet { keys: Vec::new() })),
            unloaded: RwLock::new(Some(format!("the JWKS from {origin} is not loaded yet"))),
            refresh_gate: tokio::sync::Mutex::new(None),
            refresh_min_interval: options.refresh_min_interval,
            refresh_interval: options.refresh_interval.max(Duration::from_secs(1)),
        })
    }

    /// Why the verifier cannot verify yet (no key set was ever loaded), if so.
    pub fn not_ready(&self) -> Option<String> {
        self.unloaded.read().clone()
    }

    fn install(&self, keys: KeySet) -> Arc<KeySet> {
        let keys = Arc::new(keys);
        *self.keys.write() = Arc::clone(&keys);
        *self.unloaded.write() = None;
        keys
    }

    /// Installs the key set of a JWKS document read elsewhere (the watched JWKS file,
    /// [`crate::reload`]); a document that does not parse is refused and the previous keys
    /// stay.
    pub fn replace_from_document(&self, bytes: &[u8]) -> Result<(), JwksError> {
        let origin = self.loader.origin.describe();
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge { origin });
        }
        self.install(parse_jwks(bytes, &origin)?);
        Ok(())
    }

    /// Re-loads the key set now; true if it loaded. A failure keeps the previous keys.
    async fn reload(&self) -> bool {
        let mut last_refresh = self.refresh_gate.lock().await;
        *last_refresh = Some(Instant::now());
        match self.loader.load().await {
            Ok(keys) => {
                self.install(keys);
                true
            }
            Err(error) => {
                let mut unloaded = self.unloaded.write();
                if unloaded.is_some() {
                    tracing::error!(%error, "cannot load the JWKS; not ready, retrying");
                    *unloaded = Some(error.to_string());
                } else {
                    warn!(%error, "JWKS refresh failed; keeping the previous keys");
                }
                false
            }
        }
    }

    /// Verifies a compact JWT and maps its claims to a Principal.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if self.unloaded.read().is_some() {
            debug!("JWT not verified: the JWKS is not loaded yet");
            return Err(AuthError::Unavailable);
        }
        let header = acceptable_header(token)?;
        let key = self.key_for(&header).await?;
        let validation = self
            .validation(key.algorithm)
            .ok_or_else(|| reject("algorithm not allowed"))?;
        let claims = jsonwebtoken::decode::<ScaiKeyClaims>(token, &key.key, validation)
            .map_err(|error| rejection(error.kind()))?
            .claims;
        principal_from_claims(claims)
    }

    fn validation(&self, algorithm: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|validation| validation.algorithms == [algorithm])
    }

    fn current_keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read())
    }

    /// The key for `header`, refreshing the key set once if its kid is unknown.
    async fn key_for(&self, header: &Header) -> Result<Arc<VerificationKey>, AuthError> {
        let seen = self.current_keys();
        match seen.lookup(header) {
            KeyLookup::Found(key) => return Ok(key),
            KeyLookup::Unusable => return Err(reject("no usable key for the token")),
            KeyLookup::UnknownKid => {}
        }
        let refreshed = self.refresh_after_unknown_kid(&seen).await;
        match refreshed.lookup(header) {
            KeyLookup::Found(key) => Ok(key),
            KeyLookup::Unusable | KeyLookup::UnknownKid => Err(reject("unknown key id")),
        }
    }

    /// Re-loads the key set unless another caller just did or the last refresh was too
    /// recent; returns the key set to retry with. Only unknown-kid callers wait on the gate.
    async fn refresh_after_unknown_kid(&self, seen: &Arc<KeySet>) -> Arc<KeySet> {
        let mut last_refresh = self.refresh_gate.lock().await;
        let current = self.current_keys();
        if !Arc::ptr_eq(&current, seen) {
            return current;
        }
        if last_refresh.is_some_and(|at| at.elapsed() < self.refresh_min_interval) {
            return current;
        }
        *last_refresh = Some(Instant::now());
        match self.loader.load().await {
            Ok(keys) => self.install(keys),
            Err(error) => {
                warn!(%error, "JWKS refresh failed; keeping the previous keys");
                current
            }
        }
    }
}

/// Re-loads the key set of `verifier` every refresh interval (sooner, with a backoff, while
/// it never loaded) until the verifier is dropped.
async fn refresh_periodically(verifier: Weak<JwtVerifier>) {
    let mut retry = FIRST_LOAD_RETRY_MIN;
    loop {
        let wait = match verifier.upgrade() {
            Some(verifier) if verifier.not_ready().is_some() => {
                retry.min(verifier.refresh_interval)
            }
            Some(verifier) => verifier.refresh_interval,
            None => return,
        };
        tokio::time::sleep(wait).await;
        let Some(verifier) = verifier.upgrade() else {
            return;
        };
        let was_ready = verifier.not_ready().is_none();
        if verifier.reload().await || was_ready {
            retry = FIRST_LOAD_RETRY_MIN;
        } else {
            retry = (retry * 2).min(FIRST_LOAD_RETRY_MAX);
        }
    }
}

/// The `iss` claim of a JWT-shaped token, read WITHOUT verifying anything: only to decide
/// where a token could be verified, never to trust it.
pub fn unverified_issuer(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_string)
}

/// True if `token` has the shape of a compact JWT (three base64url parts).
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !header.is_empty()
        && !payload.is_empty()
        && [header, payload, signature]
            .iter()
            .all(|part| part.bytes().all(is_base64url_byte))
}

fn is_base64url_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// The token's header, if its shape and algorithm are acceptable.
fn acceptable_header(token: &str) -> Result<Header, AuthError> {
    if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
        return Err(reject("not a compact JWT"));
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| reject("malformed header"))?;
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return Err(reject("algorithm not allowed"));
    }
    if header.crit.is_some() {
        return Err(reject("critical header extensions are not supported"));
    }
    Ok(header)
}

fn validation_for(algorithm: Algorithm, options: &JwtOptions) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = options.leeway.min(MAX_LEEWAY).as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &options.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    match &options.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// Logs why a token was refused (never its contents) and returns [`AuthError::Invalid`].
fn reject(reason: &'static str) -> AuthError {
    debug!(reason, "JWT rejected");
    AuthError::Invalid
}

fn rejection(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => {
            debug!("JWT rejected: expired");
            AuthError::Expired
        }
        ErrorKind::InvalidSignature => reject("bad signature"),
        ErrorKind::ImmatureSignature => reject("not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => reject("wrong issuer"),
        ErrorKind::InvalidAudience => reject("wrong audience"),
        ErrorKind::MissingRequiredClaim(_) => reject("missing required claim"),
        ErrorKind::InvalidClaimFormat(_) => reject("badly typed claim"),
        ErrorKind::InvalidAlgorithm => reject("algorithm does not match the key"),
        _ => reject("malformed token"),
    }
}

/// The claims this service reads; everything else is ignored.
#[derive(Debug, Deserialize)]
struct ScaiKeyClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<Words>,
    #[serde(default)]
    scopes: Option<Words>,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    role: Option<Words>,
}

/// A claim given as a space-separated string or as an array of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    Text(String),
    List(Vec<String>),
}

impl Words {
    fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Words::Text(text) => Box::new(text.split_whitespace()),
            Words::List(items) => Box::new(items.iter().map(|item| item.trim())),
        }
    }
}

fn principal_from_claims(claims: ScaiKeyClaims) -> Result<Principal, AuthError> {
    let tenants = tenant_access(&claims)?;
    let scopes = audit_scopes(&claims);
    let identity_id = claims
        .sub
        .filter(|sub| !sub.trim().is_empty())
        .ok_or_else(|| reject("empty sub"))?;
    Ok(Principal {
        identity_id,
        scopes,
        tenants,
    })
}

/// Audit scopes from `scope` and `scopes`; other products' scopes are dropped.
fn audit_scopes(claims: &ScaiKeyClaims) -> BTreeSet<Scope> {
    [&claims.scope, &claims.scopes]
        .into_iter()
        .flatten()
        .flat_map(Words::iter)
        .filter_map(Scope::parse)
        .collect()
}

fn tenant_access(claims: &ScaiKeyClaims) -> Result<TenantAccess, AuthError> {
    let all_tenants = claims
        .role
        .iter()
        .flat_map(Words::iter)
        .any(|role| ALL_TENANT_ROLES.contains(&role));
    if all_tenants {
        return Ok(TenantAccess::All);
    }
    match claims.tenant_id.as_deref() {
        Some(tenant) if crate::event::check_tenant_id(tenant).is_ok() => {
            Ok(TenantAccess::One(tenant.to_string()))
        }
        Some(_) => Err(reject("malformed tenant_id")),
        None => Err(reject("no tenant_id and no all-tenant role")),
    }
}

/// A public key from the JWKS, usable for exactly one algorithm.
struct VerificationKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The usable keys of one JWKS load.
struct KeySet {
    keys: Vec<Arc<VerificationKey>>,
}

enum KeyLookup {
    Found(Arc<VerificationKey>),
    /// The header's kid is not in the set: a refresh may help.
    UnknownKid,
    /// The kid is known but for another algorithm, or there is no kid and no single key
    /// for the algorithm: a refresh would not help.
    Unusable,
}

impl KeySet {
    fn lookup(&self, header: &Header) -> KeyLookup {
        match &header.kid {
            Some(kid) => self.lookup_kid(kid, header.alg),
            None => self.only_key_for(header.alg),
        }
    }

    fn lookup_kid(&self, kid: &str, algorithm: Algorithm) -> KeyLookup {
        let mut named = self
            .keys
            .iter()
            .filter(|key| key.kid.as_deref() == Some(kid))
            .peekable();
        if named.peek().is_none() {
            return KeyLookup::UnknownKid;
        }
        match named.find(|key| key.algorithm == algorithm) {
            Some(key) => KeyLookup::Found(Arc::clone(key)),
            None => KeyLookup::Unusable,
        }
    }

    fn only_key_for(&self, algorithm: Algorithm) -> KeyLookup {
        let mut candidates = self.keys.iter().filter(|key| key.algorithm == algorithm);
        match (candidates.next(), candidates.next()) {
            (Some(key), None) => KeyLookup::Found(Arc::clone(key)),
            _ => KeyLookup::Unusable,
        }
    }
}

/// A JWKS document; keys are parsed one by one so one odd key does not spoil the set.
#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<serde_json::Value>,
}

fn parse_jwks(bytes: &[u8], origin: &str) -> Result<KeySet, JwksError> {
    let document: JwksDocument =
        serde_json::from_slice(bytes).map_err(|error| JwksError::Parse {
            origin: origin.to_string(),
            // Position only: the message could quote parts of the document.
            reason: format!(
                "not a JWKS document ({:?} error at line {}, column {})",
                error.classify(),
                error.line(),
                error.column()
            ),
        })?;
    let listed = document.keys.len();
    let keys: Vec<_> = document
        .keys
        .into_iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value).ok())
        .filter_map(|jwk| verification_key(&jwk))
        .map(Arc::new)
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys {
            origin: origin.to_string(),
        });
    }
    info!(origin, usable = keys.len(), listed, "loaded JWKS");
    Ok(KeySet { keys })
}

/// The verification key for a JWK, if it is a signing key of an allowed kind.
fn verification_key(jwk: &Jwk) -> Option<VerificationKey> {
    if !is_signing_key(jwk) {
        return None;
    }
    let algorithm = algorithm_for(&jwk.algorithm)?;
    if let Some(declared) = jwk.common.key_algorithm
        && !declares(declared, algorithm)
    {
        return None;
    }
    if let AlgorithmParameters::RSA(rsa) = &jwk.algorithm
        && !is_strong_rsa_modulus(&rsa.n)
    {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    })
}

fn is_signing_key(jwk: &Jwk) -> bool {
    matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    )
}

/// The one allowed algorithm a key of this type and curve serves.
fn algorithm_for(parameters: &AlgorithmParameters) -> Option<Algorithm> {
    match parameters {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            Some(Algorithm::EdDSA)
        }
        _ => None,
    }
}

fn declares(declared: KeyAlgorithm, algorithm: Algorithm) -> bool {
    matches!(
        (declared, algorithm),
        (KeyAlgorithm::RS256, Algorithm::RS256)
            | (KeyAlgorithm::ES256, Algorithm::ES256)
            | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
    )
}

fn is_strong_rsa_modulus(modulus: &str) -> bool {
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(modulus.trim_end_matches('=')) else {
        return false;
    };
    let significant = bytes.iter().skip_while(|byte| **byte == 0).count();
    significant * 8 >= MIN_RSA_MODULUS_BITS
}

/// Reads the key set from its source, within the fetch timeout.
struct JwksLoader {
    origin: Origin,
    timeout: Duration,
}

/// A [`JwksSource`] ready to read.
enum Origin {
    File(PathBuf),
    Http {
        url: String,
        client: reqwest::Client,
    },
}

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::File(path) => path.display().to_string(),
            Origin::Http { url, .. } => url.clone(),
        }
    }
}

impl JwksLoader {
    fn new(source: JwksSource, timeout: Duration) -> Result<Self, JwksError> {
        let origin = match source {
            JwksSource::File(path) => Origin::File(path),
            JwksSource::Url(url) => Origin::Http {
                url,
                client: reqwest::Client::builder()
                    .timeout(timeout)
                    .build()
                    .map_err(JwksError::Client)?,
            },
        };
        Ok(JwksLoader { origin, timeout })
    }

    async fn load(&self) -> Result<KeySet, JwksError> {
        let origin = self.origin.describe();
        let bytes = tokio::time::timeout(self.timeout, self.read_document())
            .await
            .map_err(|_| JwksError::Timeout {
                origin: origin.clone(),
                timeout: self.timeout,
            })??;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(JwksError::TooLarge { origin });
        }
        parse_jwks(&bytes, &origin)
    }

    async fn read_document(&self) -> Result<Vec<u8>, JwksError> {
        match &self.origin {
            Origin::File(path) => read_file(path).await,
            Origin::Http { url, client } => fetch_url(client, url).await,
        }
    }
}

async fn read_file(path: &Path) -> Result<Vec<u8>, JwksError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| JwksError::Read {
            path: path.to_path_buf(),
            source,
        })
}

async fn fetch_url(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, JwksError> {
    let fetch_error = |cause: reqwest::Error| JwksError::Fetch {
        url: url.to_string(),
        cause: cause.without_url(),
    };
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(fetch_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(JwksError::Status {
            url: url.to_string(),
            status,
        });
    }
    if response
        .content_length()
        .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
    {
        return Err(JwksError::TooLarge {
            origin: url.to_string(),
        });
    }
    Ok(response.bytes().await.map_err(fetch_error)?.to_vec())
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, encode};
    use serde_json::{Value, json};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use warp::Filter;

    use super::*;

    const TEST_TIMEOUT: Duration = Duration::from_secs(30);
    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt");
    const RSA_PEM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa.pem"
    ));
    const RSA_2_PEM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/rsa-2.pem"
    ));
    const EC_PEM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/ec.pem"
    ));
    const ED_PEM: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/ed25519.pem"
    ));
    const JWKS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/jwks.json"
    ));
    const JWKS_RSA_2: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt/jwks-rsa-2.json"
    ));

    /// Runs a test body under [`TEST_TIMEOUT`], so every await in it is bounded.
    async fn bounded(body: impl Future<Output = ()>) {
        tokio::time::timeout(TEST_TIMEOUT, body)
            .await
            .expect("test timed out");
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn claims() -> Value {
        json!({
            "iss": "https://scaikey.example/tenants/tnt_acme",
            "aud": "scaivault",
            "sub": "sa:reporting",
            "scope": "audit:read secrets:read",
            "tenant_id": "tnt_acme",
            "iat": now(),
            "exp": now() + 3600,
        })
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn without(mut claims: Value, name: &str) -> Value {
        if let Some(object) = claims.as_object_mut() {
            object.remove(name);
        }
        claims
    }

    fn encoding_key(algorithm: Algorithm, pem: &str) -> EncodingKey {
        match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
        }
        .expect("test key")
    }

    fn sign(algorithm: Algorithm, kid: Option<&str>, pem: &str, claims: &Value) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        encode(&header, claims, &encoding_key(algorithm, pem)).expect("sign")
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, Some("rsa-1"), RSA_PEM, claims)
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(FIXTURES).join(name)
    }

    /// `jwks.json` plus the `rsa-2` key.
    fn jwks_with_rsa_2() -> Value {
        let mut document: Value = serde_json::from_str(JWKS).expect("jwks.json");
        let extra: Value = serde_json::from_str(JWKS_RSA_2).expect("jwks-rsa-2.json");
        let keys = document["keys"].as_array_mut().expect("keys");
        keys.extend(extra["keys"].as_array().expect("keys").iter().cloned());
        document
    }

    async fn file_verifier(options: JwtOptions) -> JwtVerifier {
        JwtVerifier::new(JwksSource::File(fixture("jwks.json")), options)
            .await
            .expect("load fixture JWKS")
    }

    fn principal(scopes: &[Scope], tenants: TenantAccess) -> Principal {
        Principal {
            identity_id: "sa:reporting".into(),
            scopes: scopes.iter().copied().collect(),
            tenants,
        }
    }

    /// A JWKS over HTTP whose document the test can swap (`None` answers 500) and which
    /// counts the fetches.
    struct JwksServer {
        url: String,
        document: Arc<parking_lot::Mutex<Option<Value>>>,
        fetches: Arc<AtomicUsize>,
        task: JoinHandle<()>,
    }

    impl JwksServer {
        async fn start(document: Value) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address");
            let shared = Arc::new(parking_lot::Mutex::new(Some(document)));
            let fetches = Arc::new(AtomicUsize::new(0));
            let route = {
                let (shared, fetches) = (Arc::clone(&shared), Arc::clone(&fetches));
                warp::path!("jwks.json").and(warp::get()).map(move || {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    match shared.lock().clone() {
                        Some(document) => warp::reply::with_status(
                            warp::reply::json(&document),
                            http::StatusCode::OK,
                        ),
                        None => warp::reply::with_status(
                            warp::reply::json(&json!({})),
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                        ),
                    }
                })
            };
            let task = tokio::spawn(warp::serve(route).incoming(listener).run());
            JwksServer {
                url: format!("http://{address}/jwks.json"),
                document: shared,
                fetches,
                task,
            }
        }

        fn serve(&self, document: Option<Value>) {
            *self.document.lock() = document;
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        async fn verifier(&self, options: JwtOptions) -> JwtVerifier {
            JwtVerifier::new(JwksSource::Url(self.url.clone()), options)
                .await
                .expect("load served JWKS")
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<JwtVerifier>();
    }

    #[tokio::test]
    async fn verifies_rs256_es256_and_eddsa_tokens() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let expected = principal(&[Scope::Read], TenantAccess::One("tnt_acme".into()));
            let tokens = [
                sign(Algorithm::RS256, Some("rsa-1"), RSA_PEM, &claims()),
                sign(Algorithm::ES256, Some("ec-1"), EC_PEM, &claims()),
                sign(Algorithm::EdDSA, Some("ed-1"), ED_PEM, &claims()),
            ];
            for token in tokens {
                assert_eq!(verifier.verify(&token).await, Ok(expected.clone()));
            }
        })
        .await
    }

    #[tokio::test]
    async fn maps_scope_string_and_scopes_array_to_audit_scopes() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let cases = [
                (
                    json!("audit:read  audit:export openid"),
                    None,
                    vec![Scope::Read, Scope::Export],
                ),
                (json!("secrets:read admin"), None, vec![]),
                (
                    json!(null),
                    Some(json!(["audit:write", "secrets:write"])),
                    vec![Scope::Write],
                ),
                (
                    json!("audit:read"),
                    Some(json!(["audit:export"])),
                    vec![Scope::Read, Scope::Export],
                ),
            ];
            for (scope, scopes, expected) in cases {
                let mut token_claims = with(claims(), "scope", scope.clone());
                if let Some(scopes) = scopes.clone() {
                    token_claims = with(token_claims, "scopes", scopes);
                }
                let found = verifier.verify(&rs256(&token_claims)).await;
                let wanted = principal(&expected, TenantAccess::One("tnt_acme".into()));
                assert_eq!(found, Ok(wanted), "scope {scope} scopes {scopes:?}");
            }
        })
        .await
    }

    #[tokio::test]
    async fn binds_tenant_and_grants_all_tenants_to_admin_roles() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let bound = with(claims(), "role", json!("tenant_admin"));
            assert_eq!(
                verifier.verify(&rs256(&bound)).await.map(|p| p.tenants),
                Ok(TenantAccess::One("tnt_acme".into()))
            );
            for role in ["partner_admin", "super_admin"] {
                let admin = with(claims(), "role", json!(role));
                assert_eq!(
                    verifier.verify(&rs256(&admin)).await.map(|p| p.tenants),
                    Ok(TenantAccess::All),
                    "{role} with tenant_id"
                );
                let admin = without(admin, "tenant_id");
                assert_eq!(
                    verifier.verify(&rs256(&admin)).await.map(|p| p.tenants),
                    Ok(TenantAccess::All),
                    "{role} without tenant_id"
                );
            }
            let no_tenant = with(
                without(claims(), "tenant_id"),
                "role",
                json!("tenant_admin"),
            );
            assert_eq!(
                verifier.verify(&rs256(&no_tenant)).await,
                Err(AuthError::Invalid)
            );
            let bad_tenant = with(claims(), "tenant_id", json!("bad tenant"));
            assert_eq!(
                verifier.verify(&rs256(&bad_tenant)).await,
                Err(AuthError::Invalid)
            );
        })
        .await
    }

    #[tokio::test]
    async fn expired_tokens_are_expired_beyond_the_leeway() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let long_expired = with(claims(), "exp", json!(now() - 120));
            assert_eq!(
                verifier.verify(&rs256(&long_expired)).await,
                Err(AuthError::Expired)
            );
            let within_leeway = with(claims(), "exp", json!(now() - 5));
            assert!(verifier.verify(&rs256(&within_leeway)).await.is_ok());

            let strict = file_verifier(JwtOptions {
                leeway: Duration::ZERO,
                ..JwtOptions::default()
            })
            .await;
            assert_eq!(
                strict.verify(&rs256(&within_leeway)).await,
                Err(AuthError::Expired)
            );
        })
        .await
    }

    #[tokio::test]
    async fn wrong_signatures_are_invalid() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            let other_key = sign(Algorithm::RS256, Some("rsa-1"), RSA_2_PEM, &claims());
            assert_eq!(verifier.verify(&other_key).await, Err(AuthError::Invalid));

            let valid = rs256(&claims());
            let (signed_part, _) = valid.rsplit_once('.').expect("three parts");
            let (header, _) = signed_part.split_once('.').expect("three parts");
            let forged_payload = b64(&with(claims(), "tenant_id", json!("tnt_other")));
            let signature = valid.rsplit('.').next().expect("signature");
            let tampered = format!("{header}.{forged_payload}.{signature}");
            assert_eq!(verifier.verify(&tampered).await, Err(AuthError::Invalid));

            let ec_under_rsa_kid = sign(Algorithm::ES256, Some("rsa-1"), EC_PEM, &claims());
            assert_eq!(
                verifier.verify(&ec_under_rsa_kid).await,
                Err(AuthError::Invalid)
            );
        })
        .await
    }

    #[tokio::test]
    async fn disallowed_algorithms_are_invalid() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let none_header = json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"});
            let alg_none = format!("{}.{}.", b64(&none_header), b64(&claims()));
            assert_eq!(verifier.verify(&alg_none).await, Err(AuthError::Invalid));

            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some("rsa-1".into());
            let hs256 = encode(
                &header,
                &claims(),
                &EncodingKey::from_secret(JWKS.as_bytes()),
            )
            .expect("sign");
            assert_eq!(verifier.verify(&hs256).await, Err(AuthError::Invalid));

            let rs384 = sign(Algorithm::RS384, Some("rsa-1"), RSA_PEM, &claims());
            assert_eq!(verifier.verify(&rs384).await, Err(AuthError::Invalid));
        })
        .await
    }

    #[tokio::test]
    async fn missing_or_empty_required_claims_are_invalid() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let cases = [
                ("no sub", without(claims(), "sub")),
                ("empty sub", with(claims(), "sub", json!(" "))),
                ("numeric sub", with(claims(), "sub", json!(42))),
                ("no exp", without(claims(), "exp")),
                ("string exp", with(claims(), "exp", json!("soon"))),
                ("no tenant", without(claims(), "tenant_id")),
                (
                    "nbf in the future",
                    with(claims(), "nbf", json!(now() + 600)),
                ),
            ];
            for (case, token_claims) in cases {
                assert_eq!(
                    verifier.verify(&rs256(&token_claims)).await,
                    Err(AuthError::Invalid),
                    "{case}"
                );
            }
            let nbf_past = with(claims(), "nbf", json!(now() - 10));
            assert!(verifier.verify(&rs256(&nbf_past)).await.is_ok());
        })
        .await
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        bounded(async {
            let verifier = file_verifier(JwtOptions {
                issuer: Some("https://scaikey.example/tenants/tnt_acme".into()),
                audience: Some("scaivault".into()),
                ..JwtOptions::default()
            })
            .await;
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            let many_audiences = with(claims(), "aud", json!(["other", "scaivault"]));
            assert!(verifier.verify(&rs256(&many_audiences)).await.is_ok());
            let cases = [
                (
                    "wrong iss",
                    with(claims(), "iss", json!("https://evil.example")),
                ),
                ("no iss", without(claims(), "iss")),
                ("wrong aud", with(claims(), "aud", json!("other"))),
                ("no aud", without(claims(), "aud")),
            ];
            for (case, token_claims) in cases {
                assert_eq!(
                    verifier.verify(&rs256(&token_claims)).await,
                    Err(AuthError::Invalid),
                    "{case}"
                );
            }

            let unchecked = file_verifier(JwtOptions::default()).await;
            let odd = with(with(claims(), "iss", json!("any")), "aud", json!("any"));
            assert!(unchecked.verify(&rs256(&odd)).await.is_ok());
            let bare = without(without(claims(), "iss"), "aud");
            assert!(unchecked.verify(&rs256(&bare)).await.is_ok());
        })
        .await
    }

    #[tokio::test]
    async fn kid_less_tokens_use_the_only_key_for_their_algorithm() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            for (algorithm, pem) in [
                (Algorithm::RS256, RSA_PEM),
                (Algorithm::ES256, EC_PEM),
                (Algorithm::EdDSA, ED_PEM),
            ] {
                let token = sign(algorithm, None, pem, &claims());
                assert!(verifier.verify(&token).await.is_ok(), "{algorithm:?}");
            }

            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, jwks_with_rsa_2().to_string()).expect("write");
            let two_rsa = JwtVerifier::new(JwksSource::File(path), JwtOptions::default())
                .await
                .expect("load");
            let ambiguous = sign(Algorithm::RS256, None, RSA_PEM, &claims());
            assert_eq!(two_rsa.verify(&ambiguous).await, Err(AuthError::Invalid));
            let named = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            assert!(two_rsa.verify(&named).await.is_ok());
        })
        .await
    }

    #[tokio::test]
    async fn malformed_tokens_are_invalid() {
        bounded(async {
            let verifier = file_verifier(JwtOptions::default()).await;
            let oversized = rs256(&with(claims(), "pad", json!("a".repeat(20_000))));
            let garbage_header = format!("{}.{}.sig", b64(&json!("not a header")), b64(&claims()));
            let not_json_claims = format!(
                "{}.{}.sig",
                b64(&json!({"alg": "RS256", "kid": "rsa-1"})),
                URL_SAFE_NO_PAD.encode("not json")
            );
            let critical = {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = Some("rsa-1".into());
                header.crit = Some(vec!["exp".into()]);
                encode(&header, &claims(), &encoding_key(Algorithm::RS256, RSA_PEM)).expect("sign")
            };
            for token in [
                "",
                "skt_0123",
                "a.b",
                "a.b.c.d",
                "!!!.???.###",
                oversized.as_str(),
                garbage_header.as_str(),
                not_json_claims.as_str(),
                critical.as_str(),
            ] {
                assert_eq!(
                    verifier.verify(token).await,
                    Err(AuthError::Invalid),
                    "{token:.40}"
                );
            }
        })
        .await
    }

    #[tokio::test]
    async fn unknown_kid_triggers_one_refresh_and_the_new_key_verifies() {
        bounded(async {
            let document = serde_json::from_str(JWKS).expect("jwks.json");
            let server = JwksServer::start(document).await;
            let verifier = server.verifier(JwtOptions::default()).await;
            assert_eq!(server.fetches(), 1, "initial load");

            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            assert_eq!(server.fetches(), 1, "known kids need no fetch");

            server.serve(Some(jwks_with_rsa_2()));
            let rotated = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            assert!(verifier.verify(&rotated).await.is_ok());
            assert_eq!(server.fetches(), 2, "exactly one refresh");
            assert!(verifier.verify(&rotated).await.is_ok());
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            assert_eq!(server.fetches(), 2, "the refreshed set is cached");
        })
        .await
    }

    #[tokio::test]
    async fn unknown_kid_burst_within_the_interval_fetches_at_most_once() {
        bounded(async {
            let document = serde_json::from_str(JWKS).expect("jwks.json");
            let server = JwksServer::start(document).await;
            let verifier = Arc::new(server.verifier(JwtOptions::default()).await);
            let tokens: Vec<String> = (0..20)
                .map(|n| {
                    let kid = format!("unknown-{n}");
                    sign(Algorithm::RS256, Some(&kid), RSA_PEM, &claims())
                })
                .collect();
            let tasks: Vec<_> = tokens
                .iter()
                .cloned()
                .map(|token| {
                    let verifier = Arc::clone(&verifier);
                    tokio::spawn(async move { verifier.verify(&token).await })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("join"), Err(AuthError::Invalid));
            }
            for token in &tokens {
                assert_eq!(verifier.verify(token).await, Err(AuthError::Invalid));
            }
            assert_eq!(server.fetches(), 2, "initial load plus one refresh");
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_refresh() {
        bounded(async {
            let document = serde_json::from_str(JWKS).expect("jwks.json");
            let server = JwksServer::start(document).await;
            let verifier = Arc::new(server.verifier(JwtOptions::default()).await);
            server.serve(Some(jwks_with_rsa_2()));
            let rotated = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (verifier, token) = (Arc::clone(&verifier), rotated.clone());
                    tokio::spawn(async move { verifier.verify(&token).await })
                })
                .collect();
            for task in tasks {
                assert!(task.await.expect("join").is_ok());
            }
            assert_eq!(server.fetches(), 2, "one shared refresh");
        })
        .await
    }

    #[tokio::test]
    async fn refreshes_again_once_the_interval_has_passed() {
        bounded(async {
            let document = serde_json::from_str(JWKS).expect("jwks.json");
            let server = JwksServer::start(document).await;
            let interval = Duration::from_millis(300);
            let verifier = server
                .verifier(JwtOptions {
                    refresh_min_interval: interval,
                    ..JwtOptions::default()
                })
                .await;
            let unknown = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            assert_eq!(verifier.verify(&unknown).await, Err(AuthError::Invalid));
            assert_eq!(verifier.verify(&unknown).await, Err(AuthError::Invalid));
            assert_eq!(server.fetches(), 2, "second miss is within the interval");

            server.serve(Some(jwks_with_rsa_2()));
            tokio::time::sleep(interval + Duration::from_millis(100)).await;
            assert!(verifier.verify(&unknown).await.is_ok());
            assert_eq!(server.fetches(), 3);
        })
        .await
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_previous_keys() {
        bounded(async {
            let document = serde_json::from_str(JWKS).expect("jwks.json");
            let server = JwksServer::start(document).await;
            let verifier = server.verifier(JwtOptions::default()).await;
            server.serve(None);
            let unknown = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            assert_eq!(verifier.verify(&unknown).await, Err(AuthError::Invalid));
            assert_eq!(server.fetches(), 2);
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
        })
        .await
    }

    #[tokio::test]
    async fn file_source_is_reread_on_refresh() {
        bounded(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, JWKS).expect("write");
            let verifier = JwtVerifier::new(JwksSource::File(path.clone()), JwtOptions::default())
                .await
                .expect("load");
            std::fs::write(&path, jwks_with_rsa_2().to_string()).expect("rewrite");
            let rotated = sign(Algorithm::RS256, Some("rsa-2"), RSA_2_PEM, &claims());
            assert!(verifier.verify(&rotated).await.is_ok());
        })
        .await
    }

    #[tokio::test]
    async fn loading_fails_with_the_source_in_the_message() {
        bounded(async {
            let missing = fixture("missing.json");
            let error = JwtVerifier::new(JwksSource::File(missing.clone()), JwtOptions::default())
                .await
                .expect_err("missing file");
            assert!(matches!(error, JwksError::Read { .. }), "{error:?}");
            assert!(error.to_string().contains(&missing.display().to_string()));

            let dir = tempfile::tempdir().expect("tempdir");
            let cases = [
                ("not-json.json", "{\"keys\": [", "invalid JWKS"),
                ("no-keys.json", "{\"keys\": []}", "no usable"),
                (
                    "hmac-only.json",
                    r#"{"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}"#,
                    "no usable",
                ),
            ];
            for (name, content, expected) in cases {
                let path = dir.path().join(name);
                std::fs::write(&path, content).expect("write");
                let error = JwtVerifier::new(JwksSource::File(path), JwtOptions::default())
                    .await
                    .expect_err(name);
                let message = error.to_string();
                assert!(
                    message.contains(expected) && message.contains(name),
                    "{message}"
                );
            }

            let server = JwksServer::start(json!({})).await;
            server.serve(None);
            let error =
                JwtVerifier::new(JwksSource::Url(server.url.clone()), JwtOptions::default())
                    .await
                    .expect_err("HTTP 500");
            assert_eq!(
                error.to_string(),
                format!(
                    "failed to fetch JWKS from {}: HTTP status 500 Internal Server Error",
                    server.url
                )
            );

            let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let url = format!("http://{}/jwks.json", closed.local_addr().expect("address"));
            drop(closed);
            let error = JwtVerifier::new(JwksSource::Url(url.clone()), JwtOptions::default())
                .await
                .expect_err("connection refused");
            assert!(matches!(error, JwksError::Fetch { .. }), "{error:?}");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("failed to fetch JWKS from {url}: ")),
                "{error}"
            );
        })
        .await
    }

    #[tokio::test]
    async fn unusable_jwks_entries_are_skipped() {
        bounded(async {
            let mut document: Value = serde_json::from_str(JWKS).expect("jwks.json");
            let rsa = document["keys"][0].clone();
            let extra = [
                json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
                with(with(rsa.clone(), "kid", json!("enc")), "use", json!("enc")),
                with(
                    with(rsa.clone(), "kid", json!("rs512")),
                    "alg",
                    json!("RS512"),
                ),
                with(with(rsa.clone(), "kid", json!("short")), "n", json!("AQAB")),
                json!({"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"}),
                json!({"kty": "weird", "kid": "weird"}),
            ];
            let keys = document["keys"].as_array_mut().expect("keys");
            keys.extend(extra);
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("jwks.json");
            std::fs::write(&path, document.to_string()).expect("write");
            let verifier = JwtVerifier::new(JwksSource::File(path), JwtOptions::default())
                .await
                .expect("usable keys remain");
            assert_eq!(verifier.current_keys().keys.len(), 3);
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            for kid in ["enc", "rs512", "short"] {
                let token = sign(Algorithm::RS256, Some(kid), RSA_PEM, &claims());
                assert_eq!(
                    verifier.verify(&token).await,
                    Err(AuthError::Invalid),
                    "{kid}"
                );
            }
        })
        .await
    }

    #[test]
    fn jwks_source_parse() {
        let file = |path: &str| Ok(JwksSource::File(PathBuf::from(path)));
        let url = |url: &str| Ok(JwksSource::Url(url.to_string()));
        assert_eq!(
            JwksSource::parse("file:///etc/scaikey/jwks.json"),
            file("/etc/scaikey/jwks.json")
        );
        assert_eq!(
            JwksSource::parse("file:///tmp/with%20space.json"),
            file("/tmp/with space.json")
        );
        assert_eq!(
            JwksSource::parse("/etc/scaikey/jwks.json"),
            file("/etc/scaikey/jwks.json")
        );
        assert_eq!(
            JwksSource::parse(" config/jwks.json "),
            file("config/jwks.json")
        );
        assert_eq!(
            JwksSource::parse("https://scaikey.example/.well-known/jwks.json"),
            url("https://scaikey.example/.well-known/jwks.json")
        );
        assert_eq!(
            JwksSource::parse("http://127.0.0.1:8080/jwks?tenant=a"),
            url("http://127.0.0.1:8080/jwks?tenant=a")
        );
        for junk in [
            "",
            "   ",
            "ftp://host/jwks.json",
            "http://",
            "https:// bad host/",
            "file://relative/x",
        ] {
            assert!(JwksSource::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn looks_like_jwt_shapes() {
        let token = rs256(&claims());
        assert!(looks_like_jwt(&token));
        assert!(looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."));
        assert!(looks_like_jwt("a-b_c.d.e"));
        for not_jwt in [
            "",
            "skt_0123456789abcdef",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a..c",
            "a.b.c=",
            "a+b.c.d",
            "a b.c.d",
        ] {
            assert!(!looks_like_jwt(not_jwt), "{not_jwt:?}");
        }
    }

    #[test]
    fn the_issuer_is_peeked_without_verification() {
        let token = rs256(&claims());
        assert_eq!(
            unverified_issuer(&token).as_deref(),
            Some("https://scaikey.example/tenants/tnt_acme")
        );
        let forged = format!(
            "{}.{}.x",
            b64(&json!({"alg": "RS256"})),
            b64(&json!({"iss": "k8s"}))
        );
        assert_eq!(unverified_issuer(&forged).as_deref(), Some("k8s"));
        let no_iss = rs256(&without(claims(), "iss"));
        assert_eq!(unverified_issuer(&no_iss), None);
        for junk in ["skt_abc", "a.b.c", "a.bm90IGpzb24.c", "a.WyJpc3MiXQ.c"] {
            assert_eq!(unverified_issuer(junk), None, "{junk}");
        }
    }

    #[tokio::test]
    async fn a_started_verifier_is_not_ready_until_its_jwks_loads_then_follows_it() {
        bounded(async {
            let server = JwksServer::start(json!({})).await;
            server.serve(None);
            let verifier = JwtVerifier::start(
                JwksSource::Url(server.url.clone()),
                JwtOptions {
                    refresh_interval: Duration::from_secs(1),
                    ..JwtOptions::default()
                },
            )
            .await
            .expect("start");
            assert!(
                verifier
                    .not_ready()
                    .is_some_and(|why| why.contains("HTTP status 500"))
            );
            assert_eq!(
                verifier.verify(&rs256(&claims())).await,
                Err(AuthError::Unavailable)
            );
            server.serve(Some(serde_json::from_str(JWKS).expect("jwks.json")));
            while verifier.not_ready().is_some() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(verifier.verify(&rs256(&claims())).await.is_ok());
            // rsa-1 leaves the published set: the periodic refresh drops it.
            server.serve(Some(
                serde_json::from_str(JWKS_RSA_2).expect("jwks-rsa-2.json"),
            ));
            while verifier.verify(&rs256(&claims())).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }
}

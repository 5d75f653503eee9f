//! Kubernetes ServiceAccount tokens (SPEC §4, source 2): verified with the TokenReview API
//! (for an audience), then mapped to scopes and a tenant by configured bindings. Positive
//! reviews are cached briefly, keyed by the token's SHA-256, so a busy in-cluster caller does
//! not cost one API request per call.
//!
//! Only tokens whose (unverified) `iss` claim is the cluster's issuer are sent to the API
//! server, and refusals are cached for [`NEGATIVE_CACHE_TTL`]: a caller cannot make the
//! service forward arbitrary JWT-shaped strings, or the same refused one over and over.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::{AuthError, Principal, Scope, TenantAccess};

/// How long a positive review is trusted.
pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// How long a refused token is refused without asking the API server again.
pub const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most cached reviews (each of the two caches); a cache is cleared when full.
const CACHE_CAPACITY: usize = 4096;
/// The issuer of ServiceAccount tokens in a default cluster (`--service-account-issuer`).
pub const DEFAULT_ISSUER: &str = crate::config::auth::DEFAULT_TOKEN_REVIEW_ISSUER;

/// Which ServiceAccount gets which scopes and tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// `namespace/name`.
    pub service_account: String,
    pub scopes: BTreeSet<Scope>,
    pub tenants: TenantAccess,
}

/// TokenReview settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewSettings {
    /// Audience the tokens must be issued for (projected token `audience`); `None` accepts the
    /// API server's default audience.
    pub audience: Option<String>,
    pub bindings: Vec<Binding>,
    /// The cluster's ServiceAccount token issuer: only tokens whose `iss` claim is exactly
    /// this are reviewed.
    pub issuer: String,
}

impl From<&crate::config::TokenReviewConfig> for TokenReviewSettings {
    /// The checked configuration as typed scopes and tenants (unknown scope names, which
    /// `config` refuses, are skipped).
    fn from(config: &crate::config::TokenReviewConfig) -> Self {
        TokenReviewSettings {
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            bindings: config
                .bindings
                .iter()
                .map(|binding| Binding {
                    service_account: binding.service_account.clone(),
                    scopes: binding
                        .scopes
                        .iter()
                        .filter_map(|scope| Scope::parse(scope))
                        .collect(),
                    tenants: match &binding.tenant_id {
                        Some(tenant) => TenantAccess::One(tenant.clone()),
                        None => TenantAccess::All,
                    },
                })
                .collect(),
        }
    }
}

/// Verifies ServiceAccount tokens through TokenReview.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    settings: TokenReviewSettings,
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
    /// Tokens refused recently, and when.
    refused: Mutex<HashMap<[u8; 32], Instant>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// `system:serviceaccount:NS:NAME` → `NS/NAME`.
pub fn service_account_of(username: &str) -> Option<String> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| format!("{namespace}/{name}"))
}

impl TokenReviewer {
    pub fn new(client: Client, settings: TokenReviewSettings) -> Self {
        TokenReviewer {
            api: Api::all(client),
            settings,
            cache: Mutex::default(),
            refused: Mutex::default(),
        }
    }

    /// Whether `token` claims to come from this cluster (its `iss`, read without verifying
    /// the signature, is the configured issuer): only those are worth a review.
    pub fn is_cluster_token(&self, token: &str) -> bool {
        super::jwt::unverified_issuer(token).as_deref() == Some(self.settings.issuer.as_str())
    }

    /// The principal of a ServiceAccount token, or why not.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if !self.is_cluster_token(token) {
            return Err(AuthError::Invalid);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((principal, at)) = self.cache.lock().get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(principal.clone());
        }
        if self
            .refused
            .lock()
            .get(&key)
            .is_some_and(|at| at.elapsed() < NEGATIVE_CACHE_TTL)
        {
            tracing::debug!("ServiceAccount token refused recently; not reviewed again");
            return Err(AuthError::Invalid);
        }
        let principal = match self.review(token).await {
            Ok(username) => self.principal(&username),
            Err(Refused::Unavailable) => return Err(AuthError::Invalid),
            Err(Refused::Refused) => Err(AuthError::Invalid),
        };
        match principal {
            Ok(principal) => {
                remember(&self.cache, key, (principal.clone(), Instant::now()));
                Ok(principal)
            }
            Err(error) => {
                remember(&self.refused, key, Instant::now());
                Err(error)
            }
        }
    }

    /// Asks the API server; the authenticated username.
    async fn review(&self, token: &str) -> Result<String, Refused> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: self
                    .settings
                    .audience
                    .clone()
                    .map(|audience| vec![audience]),
            },
            ..TokenReview::default()
        };
        let reviewed = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                Refused::Unavailable
            })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Refused::Refused);
        }
        if let Some(audience) = &self.settings.audience
            && !status.audiences.unwrap_or_default().contains(audience)
        {
            return Err(Refused::Refused);
        }
        status
            .user
            .and_then(|user| user.username)
            .ok_or(Refused::Refused)
    }

    /// Maps a reviewed username to its binding.
    fn principal(&self, username: &str) -> Result<Principal, AuthError> {
        let account = service_account_of(username).ok_or(AuthError::Invalid)?;
        let binding = self
            .settings
            .bindings
            .iter()
            .find(|binding| binding.service_account == account)
            .ok_or(AuthError::Invalid)?;
        Ok(Principal {
            identity_id: format!("sa:{account}"),
            scopes: binding.scopes.clone(),
            tenants: binding.tenants.clone(),
        })
    }
}

/// Why a review did not authenticate the token.
enum Refused {
    /// The API server answered: not authenticated (cached).
    Refused,
    /// The API server could not be asked (not cached: the next request asks again).
    Unavailable,
}

/// Inserts into a bounded cache (cleared when full).
fn remember<V>(cache: &Mutex<HashMap<[u8; 32], V>>, key: [u8; 32], value: V) {
    let mut cache = cache.lock();
    if cache.len() >= CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(key, value);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn service_account_usernames() {
        assert_eq!(
            service_account_of("system:serviceaccount:scaivault:server").as_deref(),
            Some("scaivault/server")
        );
        assert_eq!(service_account_of("system:serviceaccount:scaivault"), None);
        assert_eq!(service_account_of("alice"), None);
        assert_eq!(service_account_of("system:serviceaccount::x"), None);
    }
}

//! Who is calling, what they may do, and for which tenant.
//!
//! A bearer token resolves to a [`Principal`]: an identity, a set of [`Scope`]s and the
//! tenants it may act for. Token sources: ScaiKey JWTs verified against a JWKS ([`jwt`]),
//! static tokens from a file (stored hashed) and the generated bootstrap token
//! ([`static_tokens`]); in a cluster, Kubernetes ServiceAccount tokens checked with the
//! TokenReview API ([`token_review`]). Failed authentication is limited per client address
//! ([`failures`]).

pub mod failures;
pub mod jwt;
pub mod static_tokens;
pub mod token_review;

use parking_lot::RwLock;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use crate::event::TenantRule;

pub use static_tokens::{BootstrapToken, StaticTokens, hash_token};

/// An audit API permission (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Query logs, trails and summaries.
    Read,
    /// Ingest events.
    Write,
    /// Create and read exports.
    Export,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Export];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "audit:read",
            Scope::Write => "audit:write",
            Scope::Export => "audit:export",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == text)
    }
}

/// The tenants a principal may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantAccess {
    /// Bound to one tenant (the usual token).
    One(String),
    /// Partner admin or bootstrap: any tenant, chosen with `X-Tenant-ID` on reads and with
    /// `tenant_id` on each ingested event.
    All,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub identity_id: String,
    pub scopes: BTreeSet<Scope>,
    pub tenants: TenantAccess,
}

/// Why a request is not allowed. Each maps to one ScaiVault error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send an Authorization: Bearer token")]
    Missing,
    #[error("the Authorization header must be 'Bearer <token>'")]
    Malformed,
    #[error("the token is not valid")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token lacks the {} scope", .0.as_str())]
    InsufficientScope(Scope),
    #[error("the token may not access tenant '{0}'")]
    TenantAccessDenied(String),
    #[error("the X-Tenant-ID header is required for tokens not bound to one tenant")]
    TenantRequired,
    #[error("the signing keys of JWTs are not loaded yet; retry shortly")]
    Unavailable,
    #[error(
        "too many failed authentication attempts from this address (limit {limit} per minute); retry in {retry_after_secs} s"
    )]
    RateLimited { limit: u32, retry_after_secs: u64 },
}

impl Principal {
    /// Fails unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), AuthError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope(scope))
        }
    }

    /// The tenant a read acts on: the token's own, or for all-tenant tokens the `X-Tenant-ID`.
    pub fn read_tenant(&self, tenant_header: Option<&str>) -> Result<String, AuthError> {
        match (&self.tenants, tenant_header) {
            (TenantAccess::One(own), None) => Ok(own.clone()),
            (TenantAccess::One(own), Some(asked)) if asked == own => Ok(own.clone()),
            (TenantAccess::One(_), Some(asked)) => {
                Err(AuthError::TenantAccessDenied(asked.to_string()))
            }
            (TenantAccess::All, Some(asked)) => {
                crate::event::check_tenant_id(asked)
                    .map_err(|_| AuthError::TenantAccessDenied(asked.to_string()))?;
                Ok(asked.to_string())
            }
            (TenantAccess::All, None) => Err(AuthError::TenantRequired),
        }
    }

    /// How ingest validation treats a missing `tenant_id`.
    pub fn tenant_rule(&self) -> TenantRule<'_> {
        match &self.tenants {
            TenantAccess::One(own) => TenantRule::Bound(own),
            TenantAccess::All => TenantRule::Required,
        }
    }

    /// Whether this principal may write events of `tenant`.
    pub fn may_write_tenant(&self, tenant: &str) -> bool {
        match &self.tenants {
            TenantAccess::One(own) => own == tenant,
            TenantAccess::All => true,
        }
    }
}

/// Resolves bearer tokens to principals.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// Replaceable: the tokens file is re-read when it changes ([`crate::reload`]).
    static_tokens: Arc<RwLock<StaticTokens>>,
    jwt: Option<Arc<jwt::JwtVerifier>>,
    token_review: Option<token_review::TokenReviewer>,
    failures: failures::FailedAuthLimiter,
}

impl Authenticator {
    pub fn new(static_tokens: StaticTokens, jwt: Option<Arc<jwt::JwtVerifier>>) -> Self {
        Authenticator {
            static_tokens: Arc::new(RwLock::new(static_tokens)),
            jwt,
            token_review: None,
            failures: failures::FailedAuthLimiter::default(),
        }
    }

    /// Also accepts Kubernetes ServiceAccount tokens, verified with TokenReview.
    pub fn with_token_review(mut self, reviewer: token_review::TokenReviewer) -> Self {
        self.token_review = Some(reviewer);
        self
    }

    /// Refuses a client address for a while after `per_minute` failed authentications
    /// (0: never).
    pub fn with_failed_auth_limit(mut self, per_minute: u32) -> Self {
        self.failures = failures::FailedAuthLimiter::new(per_minute);
        self
    }

    /// The failed-authentication budget left to `client` (`None`: unlimited), for the
    /// `X-RateLimit-*` headers of a 401.
    pub fn failure_budget(&self, client: IpAddr) -> Option<crate::token_bucket::Budget> {
        self.failures.budget(client)
    }

    /// The JWT verifier, if JWTs are accepted (its JWKS file is re-read when it changes).
    pub fn jwt(&self) -> Option<Arc<jwt::JwtVerifier>> {
        self.jwt.clone()
    }

    /// The static tokens, to replace them when the tokens file changes: requests already
    /// authenticated keep their principal, the next ones see the new file.
    pub fn static_tokens(&self) -> Arc<RwLock<StaticTokens>> {
        Arc::clone(&self.static_tokens)
    }

    /// Why authentication cannot work yet (the JWKS never loaded), if so.
    pub fn not_ready(&self) -> Option<String> {
        self.jwt.as_ref().and_then(|verifier| verifier.not_ready())
    }

    /// Authenticates the value of an `Authorization` header (see [`Self::authenticate_from`]),
    /// without a client address (no failure limit).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.authenticate_from(None, authorization).await
    }

    /// Authenticates the value of an `Authorization` header sent from `client`. A client
    /// over its budget of failed authentications is refused before its token is looked at;
    /// a refused token (invalid, expired or malformed) counts against the budget.
    pub async fn authenticate_from(
        &self,
        client: Option<IpAddr>,
        authorization: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        if let Some(client) = client {
            self.failures
                .check(client)
                .map_err(|refusal| AuthError::RateLimited {
                    limit: refusal.limit,
                    retry_after_secs: refusal.retry_after_secs,
                })?;
        }
        let result = match bearer_token(header) {
            Ok(token) => self.resolve(token).await,
            Err(error) => Err(error),
        };
        if let (Some(client), Err(AuthError::Invalid | AuthError::Expired | AuthError::Malformed)) =
            (client, &result)
        {
            self.failures.record_failure(client);
        }
        result
    }

    /// A bearer token's principal: ServiceAccount tokens of this cluster (by their unverified
    /// issuer) through TokenReview when it is on, other JWTs against the JWKS when one is
    /// configured, anything else against the static tokens.
    async fn resolve(&self, token: &str) -> Result<Principal, AuthError> {
        if jwt::looks_like_jwt(token) {
            if let Some(reviewer) = &self.token_review
                && reviewer.is_cluster_token(token)
            {
                return reviewer.verify(token).await;
            }
            if let Some(verifier) = &self.jwt {
                return verifier.verify(token).await;
            }
        }
        self.static_tokens
            .read()
            .lookup(token)
            .cloned()
            .ok_or(AuthError::Invalid)
    }
}

fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(scopes: &[Scope], tenants: TenantAccess) -> Principal {
        Principal {
            identity_id: "sa:test".into(),
            scopes: scopes.iter().copied().collect(),
            tenants,
        }
    }

    #[test]
    fn scope_matrix() {
        let cases = [
            (&[Scope::Read][..], Scope::Read, true),
            (&[Scope::Read][..], Scope::Write, false),
            (&[Scope::Write][..], Scope::Read, false),
            (&[Scope::Export][..], Scope::Export, true),
            (&Scope::ALL[..], Scope::Write, true),
            (&[][..], Scope::Read, false),
        ];
        for (held, required, allowed) in cases {
            let result = principal(held, TenantAccess::All).require(required);
            assert_eq!(result.is_ok(), allowed, "{held:?} {required:?}");
            if !allowed {
                assert_eq!(result, Err(AuthError::InsufficientScope(required)));
            }
        }
    }

    #[test]
    fn read_tenant_rules() {
        let bound = principal(&[Scope::Read], TenantAccess::One("tnt_a".into()));
        assert_eq!(bound.read_tenant(None), Ok("tnt_a".into()));
        assert_eq!(bound.read_tenant(Some("tnt_a")), Ok("tnt_a".into()));
        assert_eq!(
            bound.read_tenant(Some("tnt_b")),
            Err(AuthError::TenantAccessDenied("tnt_b".into()))
        );
        let admin = principal(&[Scope::Read], TenantAccess::All);
        assert_eq!(admin.read_tenant(Some("tnt_b")), Ok("tnt_b".into()));
        assert_eq!(admin.read_tenant(None), Err(AuthError::TenantRequired));
        assert!(admin.read_tenant(Some("bad tenant")).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token("Bearer abc"), Ok("abc"));
        assert_eq!(bearer_token("bearer  abc "), Ok("abc"));
        assert_eq!(bearer_token("Basic abc"), Err(AuthError::Malformed));
        assert_eq!(bearer_token("Bearer"), Err(AuthError::Malformed));
        assert_eq!(bearer_token("Bearer "), Err(AuthError::Malformed));
        let auth = Authenticator::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            runtime.block_on(auth.authenticate(None)),
            Err(AuthError::Missing)
        );
        let invalid = runtime.block_on(auth.authenticate(Some("Bearer nope")));
        assert_eq!(invalid, Err(AuthError::Invalid));
    }
}

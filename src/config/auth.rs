//! `[auth]` and `[auth.token_review]`: static tokens, ScaiKey JWTs, Kubernetes ServiceAccount
//! tokens, per-identity rate limits and the failed-authentication limit.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, positive};

/// Default `[auth] jwks_refresh_seconds`.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// Default `[auth] failed_auth_per_minute`.
pub const DEFAULT_FAILED_AUTH_PER_MINUTE: u32 = 60;
/// The issuer of ServiceAccount tokens in a default cluster (`--service-account-issuer`).
pub const DEFAULT_TOKEN_REVIEW_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The audit scopes a binding may grant (SPEC §4; `auth::Scope` names, checked by a test).
pub const SCOPE_NAMES: [&str; 3] = ["audit:read", "audit:write", "audit:export"];

/// `[auth]` as given by flags/environment or the file (every key optional).
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Static API tokens file (TOML, hashed tokens). Without any auth configured, a bootstrap
    /// token is generated in the data directory.
    #[arg(
        id = "auth.tokens_file",
        long = "tokens-file",
        env = "SCAIVAULT_AUDIT_TOKENS_FILE",
        value_name = "FILE"
    )]
    pub tokens_file: Option<PathBuf>,
    /// JWKS of ScaiKey JWTs: an http(s) URL, or `file://` / a path.
    #[arg(
        id = "auth.jwks_url",
        long = "jwks-url",
        env = "SCAIKEY_JWKS_URL",
        value_name = "URL"
    )]
    pub jwks_url: Option<String>,
    /// Required `iss` claim of JWTs (unchecked when unset).
    #[arg(
        id = "auth.jwt_issuer",
        long = "jwt-issuer",
        env = "SCAIVAULT_AUDIT_JWT_ISSUER",
        value_name = "ISSUER"
    )]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim of JWTs (unchecked when unset).
    #[arg(
        id = "auth.jwt_audience",
        long = "jwt-audience",
        env = "SCAIVAULT_AUDIT_JWT_AUDIENCE",
        value_name = "AUDIENCE"
    )]
    pub jwt_audience: Option<String>,
    /// Audit queries per minute per identity (0 = unlimited).
    #[arg(
        id = "auth.rate_limit_queries_per_minute",
        long = "rate-limit-queries-per-minute",
        env = "SCAIVAULT_AUDIT_RATE_LIMIT_QUERIES_PER_MINUTE",
        value_name = "N"
    )]
    pub rate_limit_queries_per_minute: Option<u32>,
    /// Export requests per minute per identity (0 = unlimited).
    #[arg(
        id = "auth.rate_limit_exports_per_minute",
        long = "rate-limit-exports-per-minute",
        env = "SCAIVAULT_AUDIT_RATE_LIMIT_EXPORTS_PER_MINUTE",
        value_name = "N"
    )]
    pub rate_limit_exports_per_minute: Option<u32>,
    /// Accept JWTs for any audience (otherwise --jwt-audience is required with a JWKS).
    #[arg(
        id = "auth.jwt_allow_any_audience",
        long = "jwt-allow-any-audience",
        env = "SCAIVAULT_AUDIT_JWT_ALLOW_ANY_AUDIENCE",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub jwt_allow_any_audience: Option<bool>,
    /// Re-load the JWKS this often, so removed keys stop working (seconds).
    #[arg(
        id = "auth.jwks_refresh_seconds",
        long = "jwks-refresh-seconds",
        env = "SCAIVAULT_AUDIT_JWKS_REFRESH_SECONDS",
        value_name = "SECONDS"
    )]
    pub jwks_refresh_seconds: Option<u64>,
    /// Failed authentications per minute per client address before it gets 429 (0 = unlimited).
    #[arg(
        id = "auth.failed_auth_per_minute",
        long = "failed-auth-per-minute",
        env = "SCAIVAULT_AUDIT_FAILED_AUTH_PER_MINUTE",
        value_name = "N"
    )]
    pub failed_auth_per_minute: Option<u32>,
    #[command(flatten)]
    pub token_review: TokenReviewSection,
}

/// `[auth.token_review]`: Kubernetes ServiceAccount tokens.
#[derive(Debug, Clone, Default, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenReviewSection {
    /// Accept Kubernetes ServiceAccount tokens, verified with the TokenReview API.
    #[arg(
        id = "auth.token_review.enabled",
        long = "token-review",
        env = "SCAIVAULT_AUDIT_TOKEN_REVIEW",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub enabled: Option<bool>,
    /// Audience ServiceAccount tokens must be issued for.
    #[arg(
        id = "auth.token_review.audience",
        long = "token-review-audience",
        env = "SCAIVAULT_AUDIT_TOKEN_REVIEW_AUDIENCE",
        value_name = "AUDIENCE"
    )]
    pub audience: Option<String>,
    /// Issuer (`iss`) of the cluster's ServiceAccount tokens: only those are reviewed.
    #[arg(
        id = "auth.token_review.issuer",
        long = "token-review-issuer",
        env = "SCAIVAULT_AUDIT_TOKEN_REVIEW_ISSUER",
        value_name = "ISSUER"
    )]
    pub issuer: Option<String>,
    /// `[[auth.token_review.bindings]]`: a list of tables, in the file only.
    #[arg(skip)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<TokenReviewBindingSection>,
}

/// `[[auth.token_review.bindings]]`: scopes and tenant of one ServiceAccount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenReviewBindingSection {
    /// `namespace/name`.
    pub service_account: String,
    pub scopes: Vec<String>,
    pub tenant_id: Option<String>,
    pub all_tenants: Option<bool>,
}

impl AuthSection {
    /// This section over `lower`, key by key (flags/environment over the file).
    pub fn over(self, lower: Self) -> Self {
        let token_review = TokenReviewSection {
            enabled: self.token_review.enabled.or(lower.token_review.enabled),
            audience: self.token_review.audience.or(lower.token_review.audience),
            issuer: self.token_review.issuer.or(lower.token_review.issuer),
            bindings: if self.token_review.bindings.is_empty() {
                lower.token_review.bindings
            } else {
                self.token_review.bindings
            },
        };
        AuthSection {
            tokens_file: self.tokens_file.or(lower.tokens_file),
            jwks_url: self.jwks_url.or(lower.jwks_url),
            jwt_issuer: self.jwt_issuer.or(lower.jwt_issuer),
            jwt_audience: self.jwt_audience.or(lower.jwt_audience),
            rate_limit_queries_per_minute: self
                .rate_limit_queries_per_minute
                .or(lower.rate_limit_queries_per_minute),
            rate_limit_exports_per_minute: self
                .rate_limit_exports_per_minute
                .or(lower.rate_limit_exports_per_minute),
            jwt_allow_any_audience: self.jwt_allow_any_audience.or(lower.jwt_allow_any_audience),
            jwks_refresh_seconds: self.jwks_refresh_seconds.or(lower.jwks_refresh_seconds),
            failed_auth_per_minute: self.failed_auth_per_minute.or(lower.failed_auth_per_minute),
            token_review,
        }
    }
}

/// Per-identity request limits per minute (SPEC §3.7); 0 disables a category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub queries_per_minute: u32,
    pub exports_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            queries_per_minute: 50,
            exports_per_minute: 5,
        }
    }
}

/// Where the JWKS comes from: `file:///path/jwks.json` (or a plain path) or an http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl JwksSource {
    /// Parses `file:///abs/path`, a plain path, or an `http://`/`https://` URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the JWKS source is empty".to_string());
        }
        if text.contains("://") {
            parse_url_source(text)
        } else {
            Ok(JwksSource::File(PathBuf::from(text)))
        }
    }
}

fn parse_url_source(text: &str) -> Result<JwksSource, String> {
    let url =
        url::Url::parse(text).map_err(|error| format!("invalid JWKS URL '{text}': {error}"))?;
    match url.scheme() {
        "file" => url
            .to_file_path()
            .map(JwksSource::File)
            .map_err(|()| format!("invalid JWKS file URL '{text}': use file:///absolute/path")),
        "http" | "https" if url.host_str().is_some_and(|host| !host.is_empty()) => {
            Ok(JwksSource::Url(url.into()))
        }
        "http" | "https" => Err(format!("invalid JWKS URL '{text}': no host")),
        other => Err(format!(
            "unsupported JWKS URL scheme '{other}': use file://, http:// or https://"
        )),
    }
}

/// The configured JWT checks (`auth::jwt::JwtOptions` adds the fixed ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// Required `iss` value; not checked when `None`.
    pub issuer: Option<String>,
    /// Required `aud` member; not checked when `None`.
    pub audience: Option<String>,
    /// The key set is re-loaded this often.
    pub refresh_interval: Duration,
}

/// Which ServiceAccounts are accepted, through TokenReview, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// Audience the tokens must be issued for; `None` accepts the API server's default.
    pub audience: Option<String>,
    /// Only tokens whose `iss` claim is exactly this are reviewed.
    pub issuer: String,
    pub bindings: Vec<TokenReviewBinding>,
}

/// Scopes and tenant of one ServiceAccount (checked: `namespace/name`, known scopes, a valid
/// tenant id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenReviewBinding {
    /// `namespace/name`.
    pub service_account: String,
    /// Entries of [`SCOPE_NAMES`].
    pub scopes: Vec<String>,
    /// `None`: every tenant (`all_tenants = true`).
    pub tenant_id: Option<String>,
}

/// The resolved `[auth]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSettings {
    pub tokens_file: Option<PathBuf>,
    /// The JWKS location as configured, and parsed.
    pub jwks_url: Option<String>,
    pub jwks: Option<JwksSource>,
    pub jwt: JwtSettings,
    /// JWTs for any audience are accepted although a JWKS is configured without audience.
    pub jwt_allow_any_audience: bool,
    pub rate_limits: RateLimits,
    /// Failed authentications per minute per client address (0 = unlimited).
    pub failed_auth_per_minute: u32,
    /// `None`: TokenReview is off.
    pub token_review: Option<TokenReviewConfig>,
}

impl AuthSection {
    /// Defaults filled in and every value checked. With a JWKS, a JWT audience is required
    /// unless any audience is explicitly allowed: ScaiKey signs the tokens of every service
    /// with the same keys.
    pub fn resolve(&self) -> Result<AuthSettings, ConfigError> {
        let jwks = match &self.jwks_url {
            Some(text) => Some(
                JwksSource::parse(text)
                    .map_err(|message| invalid("jwks_url (SCAIKEY_JWKS_URL)", &message))?,
            ),
            None => None,
        };
        let audience = self
            .jwt_audience
            .clone()
            .filter(|audience| !audience.is_empty());
        let allow_any_audience = self.jwt_allow_any_audience.unwrap_or(false);
        if jwks.is_some() && audience.is_none() && !allow_any_audience {
            return Err(invalid(
                "jwt_audience (--jwt-audience, SCAIVAULT_AUDIT_JWT_AUDIENCE)",
                "is required when jwks_url is set, so that JWTs ScaiKey issued for other services \
                 are refused; to accept every audience, set jwt_allow_any_audience = true \
                 (--jwt-allow-any-audience, SCAIVAULT_AUDIT_JWT_ALLOW_ANY_AUDIENCE)",
            ));
        }
        let refresh_seconds = self
            .jwks_refresh_seconds
            .unwrap_or(DEFAULT_JWKS_REFRESH_INTERVAL.as_secs());
        positive("jwks_refresh_seconds", refresh_seconds)?;
        let defaults = RateLimits::default();
        Ok(AuthSettings {
            tokens_file: self.tokens_file.clone(),
            jwks_url: self.jwks_url.clone(),
            jwks,
            jwt: JwtSettings {
                issuer: self.jwt_issuer.clone(),
                audience,
                refresh_interval: Duration::from_secs(refresh_seconds),
            },
            jwt_allow_any_audience: allow_any_audience,
            rate_limits: RateLimits {
                queries_per_minute: self
                    .rate_limit_queries_per_minute
                    .unwrap_or(defaults.queries_per_minute),
                exports_per_minute: self
                    .rate_limit_exports_per_minute
                    .unwrap_or(defaults.exports_per_minute),
            },
            failed_auth_per_minute: self
                .failed_auth_per_minute
                .unwrap_or(DEFAULT_FAILED_AUTH_PER_MINUTE),
            token_review: self.token_review.resolve()?,
        })
    }
}

impl TokenReviewSection {
    /// `None` unless enabled; every binding checked.
    fn resolve(&self) -> Result<Option<TokenReviewConfig>, ConfigError> {
        if !self.enabled.unwrap_or(false) {
            return Ok(None);
        }
        let bindings = self
            .bindings
            .iter()
            .map(TokenReviewBindingSection::resolve)
            .collect::<Result<_, _>>()?;
        Ok(Some(TokenReviewConfig {
            audience: self
                .audience
                .clone()
                .filter(|audience| !audience.is_empty()),
            issuer: self
                .issuer
                .clone()
                .filter(|issuer| !issuer.is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_REVIEW_ISSUER.to_string()),
            bindings,
        }))
    }
}

impl TokenReviewBindingSection {
    fn resolve(&self) -> Result<TokenReviewBinding, ConfigError> {
        let key = "auth.token_review.bindings";
        let account = &self.service_account;
        if account.split('/').filter(|part| !part.is_empty()).count() != 2
            || account.matches('/').count() != 1
        {
            return Err(invalid(
                key,
                &format!("service_account '{account}' is not namespace/name"),
            ));
        }
        if let Some(scope) = self
            .scopes
            .iter()
            .find(|scope| !SCOPE_NAMES.contains(&scope.as_str()))
        {
            return Err(invalid(key, &format!("unknown scope '{scope}'")));
        }
        let tenant_id = match (&self.tenant_id, self.all_tenants.unwrap_or(false)) {
            (Some(tenant), false) => {
                crate::event::check_tenant_id(tenant)
                    .map_err(|message| invalid(key, &format!("tenant_id: {message}")))?;
                Some(tenant.clone())
            }
            (None, true) => None,
            _ => {
                return Err(invalid(
                    key,
                    &format!("{account}: give tenant_id or all_tenants = true"),
                ));
            }
        };
        Ok(TokenReviewBinding {
            service_account: account.clone(),
            scopes: self.scopes.clone(),
            tenant_id,
        })
    }
}

impl AuthSettings {
    /// The effective section, every key set.
    pub fn to_section(&self) -> AuthSection {
        AuthSection {
            tokens_file: self.tokens_file.clone(),
            jwks_url: self.jwks_url.clone(),
            jwt_issuer: self.jwt.issuer.clone(),
            jwt_audience: self.jwt.audience.clone(),
            rate_limit_queries_per_minute: Some(self.rate_limits.queries_per_minute),
            rate_limit_exports_per_minute: Some(self.rate_limits.exports_per_minute),
            jwt_allow_any_audience: Some(self.jwt_allow_any_audience),
            jwks_refresh_seconds: Some(self.jwt.refresh_interval.as_secs()),
            failed_auth_per_minute: Some(self.failed_auth_per_minute),
            token_review: match &self.token_review {
                Some(review) => review.to_section(),
                None => TokenReviewSection {
                    enabled: Some(false),
                    ..TokenReviewSection::default()
                },
            },
        }
    }
}

impl TokenReviewConfig {
    fn to_section(&self) -> TokenReviewSection {
        TokenReviewSection {
            enabled: Some(true),
            audience: self.audience.clone(),
            issuer: Some(self.issuer.clone()),
            bindings: self
                .bindings
                .iter()
                .map(|binding| TokenReviewBindingSection {
                    service_account: binding.service_account.clone(),
                    scopes: binding.scopes.clone(),
                    tenant_id: binding.tenant_id.clone(),
                    all_tenants: binding.tenant_id.is_none().then_some(true),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_names_are_the_auth_scopes() {
        let scopes = crate::auth::Scope::ALL.map(|scope| scope.as_str());
        assert_eq!(scopes, SCOPE_NAMES);
    }

    #[test]
    fn bindings_are_checked() {
        let binding = |account: &str, scope: &str, tenant: Option<&str>| {
            TokenReviewBindingSection {
                service_account: account.into(),
                scopes: vec![scope.into()],
                tenant_id: tenant.map(str::to_string),
                all_tenants: tenant.is_none().then_some(true),
            }
            .resolve()
        };
        assert!(binding("ns/sa", "audit:write", Some("tnt_acme")).is_ok());
        assert_eq!(
            binding("ns/sa", "audit:read", None).unwrap().tenant_id,
            None
        );
        for (account, scope) in [("sa", "audit:read"), ("ns/sa", "audit:admin")] {
            let error = binding(account, scope, None).unwrap_err().to_string();
            assert!(error.contains("auth.token_review.bindings"), "{error}");
        }
    }
}

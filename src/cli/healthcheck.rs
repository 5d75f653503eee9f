//! `scaivault-audit healthcheck`: asks the local server for `GET /v1/health` (or, with
//! `--ready`, `/v1/health/ready`) and exits 0 when it answers 200, 1 otherwise. For the
//! image's `HEALTHCHECK` and for environments without curl.
//!
//! It reads the same settings as `serve` (flags, environment, `--config`), so it finds the
//! server where the server listens (an unspecified address, `0.0.0.0` or `[::]`, is asked on
//! loopback) and speaks TLS when the server does. Over TLS the server must present exactly the
//! certificate of `TLS_CERT_FILE`: the name in the certificate is not checked (the probe dials
//! an address, not a name), the key is — a pinned certificate is a stronger check than a
//! CA chain for a probe that already knows which certificate to expect.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use scaivault_audit::config::{Settings, SettingsArgs};

/// `healthcheck` arguments: `serve`'s settings plus what to ask.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Ask for readiness (`/v1/health/ready`: the store has replayed, auth works) instead of
    /// liveness (`/v1/health`).
    #[arg(long)]
    ready: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    timeout: u64,
    #[command(flatten)]
    settings: SettingsArgs,
}

/// Runs the probe; an error (exit 1) says what failed.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args.settings)?;
    let path = if args.ready {
        "/v1/health/ready"
    } else {
        "/v1/health"
    };
    let address = probe_address(settings.listen);
    let (scheme, client) = match &settings.tls {
        Some((cert, _)) => ("https", pinned_client(cert, args.timeout)?),
        None => ("http", plain_client(args.timeout)?),
    };
    let url = format!("{scheme}://{address}{path}");
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url}: no answer"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        let body = response.text().await.unwrap_or_default();
        anyhow::bail!("{url} answered {status}: {}", body.trim());
    }
    println!("{url}: ok");
    Ok(())
}

/// Where to reach a server listening on `listen`: loopback for an unspecified address.
fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn plain_client(timeout: u64) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout))
        .no_proxy()
        .build()
        .context("failed to build the HTTP client")
}

/// A client that accepts exactly the leaf certificate of `cert_file`.
fn pinned_client(cert_file: &Path, timeout: u64) -> anyhow::Result<reqwest::Client> {
    let expected = CertificateDer::pem_file_iter(cert_file)
        .with_context(|| format!("failed to read {}", cert_file.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", cert_file.display()))?
        .with_context(|| format!("failed to read {}", cert_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = PinnedCertificate {
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(timeout))
        .no_proxy()
        .tls_backend_preconfigured(config)
        .build()
        .context("failed to build the HTTPS client")
}

/// Accepts the one expected end-entity certificate (and a handshake signed by its key).
#[derive(Debug)]
struct PinnedCertificate {
    expected: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presents another certificate than TLS_CERT_FILE".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let probe = |text: &str| probe_address(text.parse().unwrap()).to_string();
        assert_eq!(probe("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(probe("[::]:8443"), "[::1]:8443");
        assert_eq!(probe("10.1.2.3:8080"), "10.1.2.3:8080");
    }
}

//! TLS termination for the API (`TLS_CERT_FILE` / `TLS_KEY_FILE`, PEM).
//!
//! The certificate lives behind a [`ReloadableCert`]: the acceptor asks it for the current
//! certificate at every handshake, so a renewed certificate (cert-manager, a rotated Secret) is
//! swapped in without a restart, and open connections keep the session they negotiated
//! ([`crate::reload`] watches the files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Errors loading the certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read certificates from {path}: {message}")]
    Certificates { path: PathBuf, message: String },
    #[error("failed to read the private key from {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A TLS acceptor for the certificate chain and key in `cert_file` and `key_file`.
pub fn acceptor(cert_file: &Path, key_file: &Path) -> Result<TlsAcceptor, TlsError> {
    reloadable_acceptor(cert_file, key_file).map(|(acceptor, _)| acceptor)
}

/// A TLS acceptor whose certificate can be replaced while it serves (the handle).
pub fn reloadable_acceptor(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(TlsAcceptor, Arc<ReloadableCert>), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert_pem = read(cert_file, |message| TlsError::Certificates {
        path: cert_file.to_path_buf(),
        message,
    })?;
    let key_pem = read(key_file, |message| TlsError::Key {
        path: key_file.to_path_buf(),
        message,
    })?;
    let certified = certified_key(&provider, cert_file, &cert_pem, key_file, &key_pem)?;
    let resolver = Arc::new(ReloadableCert {
        current: RwLock::new(Arc::new(certified)),
        provider: provider.clone(),
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}

/// The server's certificate and key, replaceable at any time; every new handshake uses the
/// current one.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

impl ReloadableCert {
    /// Replaces the certificate with the PEM contents of the certificate and key files; a
    /// chain or key that does not load, or a key that does not match the certificate, is
    /// refused and the current certificate stays.
    pub fn replace(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let certified = certified_key(
            &self.provider,
            &self.cert_file,
            cert_pem,
            &self.key_file,
            key_pem,
        )?;
        *self.current.write() = Arc::new(certified);
        Ok(())
    }

    /// The files it was loaded from (certificate, key).
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert_file, &self.key_file]
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

fn read(path: &Path, error: impl Fn(String) -> TlsError) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(e.to_string()))
}

/// The chain and key of two PEM texts, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert_file: &Path,
    cert_pem: &[u8],
    key_file: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let certificates = parse_certificates(cert_file, cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| TlsError::Key {
        path: key_file.to_path_buf(),
        message: error.to_string(),
    })?;
    let certified = CertifiedKey::from_der(certificates, key, provider)?;
    // `from_der` lets an undecidable key through; a mismatch it can see is refused.
    certified.keys_match().or_else(|error| match error {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
        other => Err(other),
    })?;
    Ok(certified)
}

fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let error = |message: String| TlsError::Certificates {
        path: path.to_path_buf(),
        message,
    };
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no certificate in the file".into()));
    }
    Ok(certificates)
}

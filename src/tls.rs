//! HTTPS: a certificate chain and key from PEM files, served with ALPN for
//! HTTP/2 and HTTP/1.1. Over HTTP/2 every `EventSource` of a page shares one
//! connection, which lifts browsers' six-connections-per-origin cap.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--tls-cert` file is unreadable, not PEM, or holds no certificate.
    #[error("cannot read the certificate chain {path}: {message}")]
    Cert {
        /// The file, as given, so the operator sees which one.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The `--tls-key` file is unreadable or holds no supported private key.
    #[error("cannot read the private key {path}: {message}")]
    Key {
        /// The file, as given, so the operator sees which one.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Both files read, but rustls refuses them together (such as a key of another certificate).
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(String),
}

/// An acceptor for `cert` (PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            message: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

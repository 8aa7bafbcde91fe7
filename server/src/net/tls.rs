//! TLS on the one port: rustls (ring) with ALPN `h2` and `http/1.1`, the certificate and key read
//! from PEM files and re-read on demand (SIGHUP), keeping the old pair when the new one is bad.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
    ServerConfig,
};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

/// Why a certificate or key could not be used. Names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot read {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the key or the configuration.
    #[error("cannot use the key in {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What rustls said.
        reason: String,
    },
}

/// The certificate chain and key in use, swapped whole on reload.
#[derive(Debug)]
struct Certificates {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let file_error = |path: &Path, reason: String| TlsError::File {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| file_error(cert_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert_path, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(cert_path, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| file_error(key_path, format!("no usable PEM private key ({e})")))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::Key {
            path: key_path.display().to_string(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        reason: format!(
            "it does not belong to the certificate in {} ({e})",
            cert_path.display()
        ),
    })?;
    Ok(certified)
}

/// The server's TLS: an acceptor and the handle that reloads its certificate.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    certificates: Arc<Certificates>,
}

impl Tls {
    /// Reads the certificate chain and key (PEM) and builds the acceptor.
    pub(crate) fn new(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let certificates = Arc::new(Certificates {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(load(cert_path, key_path)?)),
        });
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Key {
                    path: key_path.display().to_string(),
                    reason: e.to_string(),
                })?
                .with_no_client_auth()
                .with_cert_resolver(certificates.clone());
        // Native gRPC needs h2; browsers take either.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificates,
        })
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Re-reads the certificate and key; new connections get them. A bad file keeps the old pair
    /// and says why.
    pub(crate) fn reload(&self) {
        let certificates = &self.certificates;
        match load(&certificates.cert_path, &certificates.key_path) {
            Ok(new) => {
                *certificates
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
                info!(cert = %certificates.cert_path.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                warn!(%error, "TLS certificate not reloaded: keeping the one in use");
            }
        }
    }
}

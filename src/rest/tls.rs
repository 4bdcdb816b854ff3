//! The API listener's certificate: PEM files read at start and again on SIGHUP (a bad
//! file keeps the certificate in force), served with rustls.

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read a PEM certificate chain: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    NoCert { path: PathBuf },
    #[error("{}: cannot read a PEM private key: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: the private key is not RSA, ECDSA or Ed25519: {source}", path.display())]
    KeyType {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS settings: {0}")]
    Config(rustls::Error),
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Cert {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let signing = any_supported_type(&private).map_err(|source| TlsError::KeyType {
        path: key.to_owned(),
        source,
    })?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// The certificate in force, swapped by [`Certificate::reload`].
#[derive(Debug)]
pub struct Certificate {
    files: RwLock<(PathBuf, PathBuf)>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Certificate>, TlsError> {
        Ok(Arc::new(Certificate {
            files: RwLock::new((cert.to_owned(), key.to_owned())),
            current: RwLock::new(load(cert, key)?),
        }))
    }

    /// Read the files again (new paths when given); on failure the old one stays.
    pub fn reload(&self, files: Option<(&Path, &Path)>) -> Result<(), TlsError> {
        let (cert, key) = match files {
            Some((c, k)) => (c.to_owned(), k.to_owned()),
            None => self.files.read().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        let loaded = load(&cert, &key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = (cert, key);
        Ok(())
    }

    /// An acceptor serving whatever certificate is in force at each handshake.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        let mut config = config;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

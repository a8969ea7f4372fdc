//! TLS for the server (`NBD_OPT_STARTTLS`), with rustls and the ring
//! provider: x509 credentials in a folder laid out as QEMU's
//! `tls-creds-x509` lays them out for a server (`ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, and `ca-crl.pem` if present).
//! Clients must present a certificate signed by that CA, as QEMU's
//! `verify-peer=on` (its default) asks.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// Server-side TLS credentials.
#[derive(Clone)]
pub struct Tls {
    pub(crate) acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

/// A credentials problem, naming the file.
fn bad(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {problem}", path.display()))
}

impl Tls {
    /// Loads x509 credentials from `dir`.
    pub fn x509_dir(dir: &Path) -> Result<Tls> {
        let ca = dir.join("ca-cert.pem");
        let cert = dir.join("server-cert.pem");
        let key = dir.join("server-key.pem");
        let crl = dir.join("ca-crl.pem");
        let mut roots = RootCertStore::empty();
        for c in certs(&ca)? {
            roots.add(c).map_err(|e| bad(&ca, e))?;
        }
        let chain = certs(&cert)?;
        let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| bad(&key, e))?;
        let crls = if crl.exists() {
            CertificateRevocationListDer::pem_file_iter(&crl)
                .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| bad(&crl, e))?
        } else {
            Vec::new()
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .with_crls(crls)
                .build()
                .map_err(|e| bad(&ca, e))?;
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(dir, e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad(&cert, e))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Every certificate in the PEM file `path` (at least one).
fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let list = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(path, e))?;
    if list.is_empty() {
        return Err(bad(path, "holds no certificate"));
    }
    Ok(list)
}

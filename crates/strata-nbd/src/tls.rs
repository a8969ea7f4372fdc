//! TLS for the server (`NBD_OPT_STARTTLS`). x509 credentials go through
//! rustls and the ring provider: a folder laid out as QEMU's
//! `tls-creds-x509` lays them out for a server (`ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, and `ca-crl.pem` if present), and
//! clients must present a certificate signed by that CA, as QEMU's
//! `verify-peer=on` (its default) asks. Pre-shared keys go through OpenSSL
//! (see `psk`), since rustls has none; they need the `tls-psk` feature (on
//! by default).

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};
#[cfg(feature = "tls-psk")]
use crate::psk;

/// Server-side TLS credentials.
#[derive(Clone)]
pub struct Tls {
    kind: Kind,
}

/// Which TLS library serves which credentials.
#[derive(Clone)]
enum Kind {
    /// x509 through rustls.
    X509(TlsAcceptor),
    /// Pre-shared keys through OpenSSL.
    #[cfg(feature = "tls-psk")]
    Psk(openssl::ssl::SslContext),
}

/// A stream TLS can run over, and what it yields.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

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
            kind: Kind::X509(TlsAcceptor::from(Arc::new(config))),
        })
    }

    /// Loads pre-shared keys from `path`, a keys file as GnuTLS's `psktool`
    /// writes it (`USERNAME:HEXKEY` lines); given a folder, its `keys.psk`
    /// (the layout of QEMU's `tls-creds-psk`).
    #[cfg(feature = "tls-psk")]
    pub fn psk_file(path: &Path) -> Result<Tls> {
        let file = if path.is_dir() {
            path.join("keys.psk")
        } else {
            path.to_path_buf()
        };
        let keys = psk::read_keys(&file)?;
        Ok(Tls {
            kind: Kind::Psk(psk::context(keys)?),
        })
    }

    /// Without the `tls-psk` feature: refused, naming the feature.
    #[cfg(not(feature = "tls-psk"))]
    pub fn psk_file(path: &Path) -> Result<Tls> {
        Err(bad(
            path,
            "TLS-PSK is not in this build of strata (built without the tls-psk feature)",
        ))
    }

    /// Runs the server side of the TLS handshake over `stream`.
    pub(crate) async fn accept<S: Stream>(&self, stream: S) -> Result<Box<dyn Stream>> {
        Ok(match &self.kind {
            Kind::X509(acceptor) => Box::new(acceptor.accept(stream).await?),
            #[cfg(feature = "tls-psk")]
            Kind::Psk(context) => {
                let ssl = openssl::ssl::Ssl::new(context)
                    .map_err(|e| Error::Tls(format!("OpenSSL: {e}")))?;
                let mut secure = tokio_openssl::SslStream::new(ssl, stream)
                    .map_err(|e| Error::Tls(format!("OpenSSL: {e}")))?;
                std::pin::Pin::new(&mut secure)
                    .accept()
                    .await
                    .map_err(|e| Error::Protocol(format!("TLS-PSK handshake: {e}")))?;
                let ssl = secure.ssl();
                tracing::debug!(
                    "TLS-PSK: {} {}",
                    ssl.version_str(),
                    ssl.current_cipher().map_or("?", |c| c.name())
                );
                Box::new(secure)
            }
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

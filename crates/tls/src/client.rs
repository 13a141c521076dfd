//! [`TlsClientConfig`]: the only `rustls::ClientConfig` custody makes, and the HTTP client built on it.

use std::path::Path;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::{Error, PinnedIssuerVerifier, ProxySettings, Result, SpkiPin};

/// A client TLS configuration for custody metadata connections: aws-lc-rs, TLS 1.2 and 1.3, ALPN `http/1.1`, the
/// [`PinnedIssuerVerifier`], optionally a client certificate, and no session resumption (every connection is fully
/// verified against the current CRLs and pins; connections are long-lived and reused instead).
#[derive(Clone, Debug)]
pub struct TlsClientConfig {
    config: Arc<ClientConfig>,
    verifier: Arc<PinnedIssuerVerifier>,
}

/// Collects roots, CRLs, pins and an optional client identity for [`TlsClientConfig`].
#[derive(Debug, Default)]
pub struct TlsClientConfigBuilder {
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    pins: Vec<SpkiPin>,
    client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl TlsClientConfig {
    pub fn builder() -> TlsClientConfigBuilder {
        TlsClientConfigBuilder::default()
    }

    /// The rustls configuration, for a raw TLS connection (tokio-rustls) or an in-memory one.
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A tokio-rustls connector for a non-HTTP metadata connection.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }

    pub fn verifier(&self) -> &Arc<PinnedIssuerVerifier> {
        &self.verifier
    }

    /// The HTTP client for metadata: https only, through `proxy` as configured (CONNECT), never through a proxy
    /// found behind our back. It pools connections, so a scan or sync opens one TLS connection per host and reuses it.
    pub fn http_client(&self, proxy: &ProxySettings) -> Result<reqwest::Client> {
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(ClientConfig::clone(&self.config))
            .https_only(true)
            .connect_timeout(std::time::Duration::from_secs(30));
        Ok(proxy.apply(builder)?.build()?)
    }
}

/// The HTTP client for signed data over plain HTTP only: TUF metadata of a repository served without TLS (its
/// signatures, not the transport, are what is trusted; the conformance suite serves it so) and content checked against
/// signed hashes. It goes through `proxy` as configured, pools connections, and cannot make an HTTPS connection at
/// all: its TLS configuration refuses every certificate, so an `https://` URL fails instead of falling back to some
/// trust store. Metadata over HTTPS uses [`TlsClientConfig::http_client`].
pub fn plain_http_client(proxy: &ProxySettings) -> Result<reqwest::Client> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RefuseEveryCertificate(provider)))
        .with_no_client_auth();
    let builder = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(std::time::Duration::from_secs(30));
    Ok(proxy.apply(builder)?.build()?)
}

/// The verifier of [`plain_http_client`]: no server certificate is acceptable.
#[derive(Debug)]
struct RefuseEveryCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for RefuseEveryCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General("this client speaks plain HTTP only; HTTPS needs a pinned TLS configuration".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("plain HTTP only".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("plain HTTP only".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TlsClientConfigBuilder {
    /// Trusts `root`, a custody root CA certificate (never the system trust store).
    pub fn root(mut self, root: CertificateDer<'static>) -> Self {
        self.roots.push(root);
        self
    }

    /// Adds a CRL. The CRLs must cover the whole chain: the root's CRL and the issuing intermediate's.
    pub fn crl(mut self, crl: CertificateRevocationListDer<'static>) -> Self {
        self.crls.push(crl);
        self
    }

    /// Adds a pin. Several pins are accepted at once, for rotation.
    pub fn pin(mut self, pin: SpkiPin) -> Self {
        self.pins.push(pin);
        self
    }

    /// Presents this certificate chain (leaf first) and key when a server asks for a client certificate.
    pub fn client_identity(mut self, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        self.client_identity = Some((chain, key));
        self
    }

    /// Adds every certificate of a PEM file as a root.
    pub fn roots_pem_file(mut self, path: &Path) -> Result<Self> {
        self.roots.extend(read_certificates(path)?);
        Ok(self)
    }

    /// Adds every CRL of a PEM file.
    pub fn crls_pem_file(mut self, path: &Path) -> Result<Self> {
        let io = |err: rustls::pki_types::pem::Error| pem_error(path, err);
        let crls = CertificateRevocationListDer::pem_file_iter(path).map_err(io)?.collect::<Result<Vec<_>, _>>();
        self.crls.extend(crls.map_err(io)?);
        Ok(self)
    }

    /// Reads the client certificate chain and key from PEM files.
    pub fn client_identity_pem_files(self, chain: &Path, key: &Path) -> Result<Self> {
        let chain = read_certificates(chain)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|err| pem_error(key, err))?;
        Ok(self.client_identity(chain, key))
    }

    pub fn build(self) -> Result<TlsClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = Arc::new(PinnedIssuerVerifier::new(
            &self.roots,
            &self.crls,
            &self.pins,
            provider.signature_verification_algorithms,
        )?);
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match self.client_identity {
            Some((chain, key)) => config.with_client_auth_cert(chain, key)?,
            None => config.with_no_client_auth(),
        };
        // reqwest leaves ALPN unset on a preconfigured configuration; custody speaks HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = Resumption::disabled();
        Ok(TlsClientConfig { config: Arc::new(config), verifier })
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| pem_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, err))?;
    if certs.is_empty() {
        return Err(Error::Pem { what: path.display().to_string(), detail: "no certificate in the file".into() });
    }
    Ok(certs)
}

pub(crate) fn pem_error(path: &Path, err: rustls::pki_types::pem::Error) -> Error {
    match err {
        rustls::pki_types::pem::Error::Io(source) => Error::Io { path: path.to_owned(), source },
        other => Error::Pem { what: path.display().to_string(), detail: other.to_string() },
    }
}

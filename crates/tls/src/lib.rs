//! The one TLS configuration of custody's metadata connections, and the HTTPS listener that serves them.
//!
//! Every metadata connection custody makes (agent to service, relay to upstream, CLI to admin API) is built here:
//! [`TlsClientConfig`] is the only place in the codebase that makes a `rustls::ClientConfig` (a test in
//! `tests/only_custody_tls_builds_clients.rs` enforces it), and its verifier, [`PinnedIssuerVerifier`], accepts a
//! server only when
//!
//! 1. the chain builds to a configured custody root (never the system trust store), with validity periods, key usage,
//!    the server name and revocation (CRLs for the whole chain, stale CRLs refused) checked, and
//! 2. the path that validated passes through a pinned issuer (SHA-256 of the SubjectPublicKeyInfo of an intermediate
//!    or the root). The pin is checked on the path the verifier built, not on the certificates the server sent.
//!
//! A refusal is an [`Error`] naming what was wrong (expired, revoked, pin mismatch, ...) with the subject, issuer and
//! SPKI SHA-256 of the certificate concerned; [`Error::from_reqwest`] digs it out of an HTTP client error.
//!
//! [`config`] reads the `[service]`, `[tls]`, `[content]` and `[proxy]` sections of a device or relay configuration and
//! lists the endpoints it contacts (`custody endpoints`); [`proxy`] decides which HTTP CONNECT proxy, if any, a
//! connection goes through; [`server`] is the rustls HTTPS listener with certificate hot reload and per-route client
//! certificates; [`peer`] is the mutual TLS between devices for peer-to-peer delivery ([`PeerTlsConfig`]).

pub mod client;
pub mod config;
pub mod peer;
pub mod pin;
pub mod proxy;
pub mod server;
pub mod verifier;

use std::path::PathBuf;

pub use client::{TlsClientConfig, TlsClientConfigBuilder, plain_http_client};
pub use config::{Endpoint, TransportConfig};
pub use peer::{PEER_ALPN, PeerIdentity, PeerTlsConfig, PeerTlsConfigBuilder, PeerVerifier};
pub use pin::SpkiPin;
pub use proxy::ProxySettings;
pub use server::{ClientIdentity, HttpsServer, ServerHandle, ServerStats, ServerTlsFiles};
pub use verifier::{CertInfo, PinnedIssuerVerifier};

/// Said by every unexpected-issuer error: what an operator behind a TLS-inspecting proxy has to do.
pub const PROXY_HINT: &str = "If this machine reaches the server through a TLS-inspecting proxy, that proxy must pass \
custody's host names through without inspection; `custody endpoints --config <file>` lists them.";

/// Everything that can go wrong in custody-tls: the refusals of the pinned verifier first (each naming the subject,
/// issuer and SPKI SHA-256 of the certificate concerned), then configuration and I/O errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the certificate of {host} has expired (not after {not_after}, now {now}): {cert}")]
    Expired { host: String, cert: Box<CertInfo>, not_after: String, now: String },

    #[error(
        "the certificate of {host} is not valid yet (not before {not_before}, now {now}); check this machine's \
         clock: {cert}"
    )]
    NotYetValid { host: String, cert: Box<CertInfo>, not_before: String, now: String },

    #[error("a certificate in the chain of {host} is revoked: {cert}")]
    Revoked { host: String, cert: Box<CertInfo> },

    #[error("the certificate of {host} is not valid for that name (it is for {names}): {cert}")]
    NameMismatch { host: String, names: String, cert: Box<CertInfo> },

    #[error(
        "the certificate chain of {host} does not lead to the configured custody root (the issuing certificate is \
         missing or unknown): {cert}. {hint}",
        hint = PROXY_HINT
    )]
    UnknownIssuer { host: String, cert: Box<CertInfo> },

    #[error(
        "the certificate of {host} was not issued through a pinned issuer: {cert}; the issuer it presented has SPKI \
         SHA-256 {issuer_spki}, the pins are {pins}. {hint}",
        hint = PROXY_HINT
    )]
    PinMismatch { host: String, cert: Box<CertInfo>, issuer_spki: String, pins: String },

    #[error(
        "the revocation list of {crl_issuer:?} is stale (next update was {next_update}, now {now}), so the \
         certificate of {host} cannot be checked; install a current CRL: {cert}"
    )]
    StaleCrl { host: String, cert: Box<CertInfo>, crl_issuer: String, next_update: String, now: String },

    #[error("no revocation list covers a certificate in the chain of {host}; configure the CRL of its issuer: {cert}")]
    RevocationUnknown { host: String, cert: Box<CertInfo> },

    #[error("the certificate of {host} is not meant for TLS servers (extended key usage): {cert}")]
    WrongUsage { host: String, cert: Box<CertInfo> },

    #[error("the certificate of {host} was refused ({reason}): {cert}")]
    Rejected { host: String, cert: Box<CertInfo>, reason: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{what}: {detail}")]
    Pem { what: String, detail: String },

    #[error(
        "invalid pin {0:?}: expected 64 hex digits, the SHA-256 of a DER SubjectPublicKeyInfo (`custody pki show`)"
    )]
    InvalidPin(String),

    #[error("no {0} configured: {1}")]
    Missing(&'static str, &'static str),

    #[error("invalid certificate or CRL: {0}")]
    InvalidCertificate(String),

    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),

    #[error("TLS verifier: {0}")]
    VerifierBuilder(#[from] rustls::server::VerifierBuilderError),

    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),

    #[error("invalid proxy {url:?}: {reason}")]
    Proxy { url: String, reason: &'static str },

    #[error("invalid URL {url:?}: {reason}")]
    Url { url: String, reason: String },

    #[error("{path}: {detail}")]
    Config { path: PathBuf, detail: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The verifier's refusal inside an error from a connection (a reqwest, hyper, io or rustls error and its
    /// sources), if that is why the connection failed.
    pub fn from_connection_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(err);
        while let Some(err) = next {
            if let Some(found) = Self::from_rustls(err) {
                return Some(found);
            }
            next = match err.downcast_ref::<std::io::Error>() {
                // io::Error::source() skips the error it wraps: step into it explicitly.
                Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
                None => err.source(),
            };
        }
        None
    }

    /// [`Error::from_connection_error`] for a reqwest error.
    pub fn from_reqwest(err: &reqwest::Error) -> Option<&Error> {
        Self::from_connection_error(err)
    }

    /// Whether this is a refusal of a server's certificate (rather than a configuration error).
    pub fn is_certificate_refusal(&self) -> bool {
        matches!(
            self,
            Self::Expired { .. }
                | Self::NotYetValid { .. }
                | Self::Revoked { .. }
                | Self::NameMismatch { .. }
                | Self::UnknownIssuer { .. }
                | Self::PinMismatch { .. }
                | Self::StaleCrl { .. }
                | Self::RevocationUnknown { .. }
                | Self::WrongUsage { .. }
                | Self::Rejected { .. }
        )
    }

    fn from_rustls<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        if let Some(found) = err.downcast_ref::<Error>() {
            return Some(found);
        }
        match err.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<Error>()
            }
            _ => None,
        }
    }
}

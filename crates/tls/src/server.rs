//! The HTTPS listener of custody's servers (update service, relay, admin API): rustls over tokio, HTTP/1.1 by hyper.
//!
//! - It serves the whole chain in the certificate file (leaf, then the issuing intermediate), which clients need to
//!   build the path to the pinned intermediate.
//! - It re-reads the certificate chain, the key, and the client-certificate roots and CRLs when one of those files
//!   changes (polled: modification time, size and inode, so an atomic rename is seen). New handshakes get the new
//!   configuration; established connections keep theirs and are not dropped. A broken or half-written set of files
//!   is logged and the previous configuration stays in use.
//! - Client certificates are optional at the TLS level and required by route: requests whose path lies under one of
//!   [`ClientAuthFiles::required_on`] get `403 Forbidden` unless the connection presented a verified client
//!   certificate. Handlers find it in the request extensions as a [`ClientIdentity`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::TcpListener;

use crate::client::pem_error;
use crate::{Error, Result, SpkiPin};

/// How long a client has to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the files are checked for changes, unless [`HttpsServer::reload_interval`] says otherwise.
const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The files a listener serves from.
#[derive(Clone, Debug)]
pub struct ServerTlsFiles {
    /// PEM: the server certificate, then its issuing intermediate(s).
    pub cert_chain: PathBuf,
    /// PEM private key of the server certificate.
    pub key: PathBuf,
    pub client_auth: Option<ClientAuthFiles>,
}

/// Client certificates: who may issue them, their revocation lists, and the routes that require one.
#[derive(Clone, Debug)]
pub struct ClientAuthFiles {
    /// PEM: the CA certificate(s) client certificates must chain to (the custody root, or the device intermediate).
    pub roots: PathBuf,
    /// PEM CRLs covering the client chains (stale CRLs are refused).
    pub crls: Vec<PathBuf>,
    /// Path prefixes, by whole segments (`/admin` covers `/admin` and `/admin/x`, not `/administrator`).
    pub required_on: Vec<String>,
}

/// A bound, not yet serving, HTTPS listener.
pub struct HttpsServer {
    listener: TcpListener,
    files: ServerTlsFiles,
    config: ServerConfig,
    reload_interval: Duration,
}

/// A running listener. Dropping it stops accepting and reloading; established connections run on until they close.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: Arc<ServerStats>,
    accept_task: tokio::task::JoinHandle<()>,
    reload_task: tokio::task::JoinHandle<()>,
}

/// Counters of a running listener.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    handshakes: AtomicU64,
    reloads: AtomicU64,
}

/// The verified client certificate chain of the connection a request came on (leaf first).
#[derive(Clone, Debug)]
pub struct ClientIdentity {
    pub chain: Arc<Vec<CertificateDer<'static>>>,
}

/// What the connection tasks share with the reload task.
struct Shared {
    config: RwLock<Arc<ServerConfig>>,
    required_on: Vec<String>,
    stats: Arc<ServerStats>,
}

impl HttpsServer {
    /// Binds `addr` and loads the files once (so that a wrong file fails here, not at the first handshake).
    pub async fn bind(addr: SocketAddr, files: ServerTlsFiles) -> Result<Self> {
        let config = load(&files)?;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| Error::Io { path: addr.to_string().into(), source })?;
        Ok(Self { listener, files, config, reload_interval: DEFAULT_RELOAD_INTERVAL })
    }

    /// How often to check the files for changes.
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(|source| Error::Io { path: "listener".into(), source })
    }

    /// Serves `service` on every connection, on the current tokio runtime.
    pub fn spawn<S, B>(self, service: S) -> Result<ServerHandle>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let local_addr = self.local_addr()?;
        let stats = Arc::new(ServerStats::default());
        let required_on = self.files.client_auth.as_ref().map(|auth| auth.required_on.clone()).unwrap_or_default();
        let shared = Arc::new(Shared { config: RwLock::new(Arc::new(self.config)), required_on, stats: stats.clone() });
        let reload_task = tokio::spawn(watch_files(shared.clone(), self.files, self.reload_interval));
        let listener = self.listener;
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                // Small responses go out at once: without this, Nagle holds a reply that follows the handshake's
                // last flight until the client's delayed ACK (40 ms per new connection, measured).
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                }
                let config = shared.config.read().unwrap_or_else(PoisonError::into_inner).clone();
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let (shared, service) = (shared.clone(), service.clone());
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    shared.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|chain| ClientIdentity { chain: Arc::new(chain.to_vec()) });
                    let per_request = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                        let (shared, service, identity) = (shared.clone(), service.clone(), identity.clone());
                        async move {
                            if identity.is_none() && shared.requires_client_cert(request.uri().path()) {
                                let body = Full::new(Bytes::from_static(b"a client certificate is required\n"));
                                let mut response = Response::new(Either::Right(body));
                                *response.status_mut() = StatusCode::FORBIDDEN;
                                return Ok(response);
                            }
                            if let Some(identity) = identity {
                                request.extensions_mut().insert(identity);
                            }
                            service.call(request).await.map(|response| response.map(Either::Left))
                        }
                    });
                    let connection =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), per_request);
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, error = %err, "connection ended with an error");
                    }
                });
            }
        });
        Ok(ServerHandle { local_addr, stats, accept_task, reload_task })
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reload_task.abort();
    }
}

impl ServerStats {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// TLS handshakes completed.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    /// Successful reloads of the files.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }
}

impl ClientIdentity {
    /// The pin-style SHA-256 of the client certificate's key, a stable device identifier.
    pub fn spki_sha256(&self) -> Option<SpkiPin> {
        SpkiPin::of_certificate(self.chain.first()?).ok()
    }
}

impl Shared {
    fn requires_client_cert(&self, path: &str) -> bool {
        self.required_on.iter().any(|prefix| {
            let prefix = prefix.trim_end_matches('/');
            prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

/// Polls the files and swaps in a new configuration when they change.
async fn watch_files(shared: Arc<Shared>, files: ServerTlsFiles, interval: Duration) {
    let mut last = stamp(&files);
    loop {
        tokio::time::sleep(interval).await;
        let current = stamp(&files);
        if current == last {
            continue;
        }
        last = current;
        match load(&files) {
            Ok(config) => {
                *shared.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                shared.stats.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %files.cert_chain.display(), "reloaded TLS certificate, key and CRLs");
            }
            Err(err) => {
                tracing::warn!(error = %err, "TLS files changed but cannot be loaded; keeping the previous ones")
            }
        }
    }
}

/// Modification time, size and inode of every file, to notice any change including an atomic rename.
fn stamp(files: &ServerTlsFiles) -> Vec<Option<(std::time::SystemTime, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let auth = files.client_auth.iter().flat_map(|auth| std::iter::once(&auth.roots).chain(&auth.crls));
    std::iter::once(&files.cert_chain)
        .chain(std::iter::once(&files.key))
        .chain(auth)
        .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))))
        .collect()
}

/// Builds the rustls server configuration from the files.
fn load(files: &ServerTlsFiles) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certificates(&files.cert_chain)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| pem_error(&files.key, err))?;
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &files.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for root in read_certificates(&auth.roots)? {
                roots.add(root)?;
            }
            let mut crls = Vec::new();
            for path in &auth.crls {
                let found = CertificateRevocationListDer::pem_file_iter(path)
                    .map_err(|err| pem_error(path, err))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| pem_error(path, err))?;
                crls.extend(found);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .with_crls(crls)
                .enforce_revocation_expiration()
                .allow_unauthenticated()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // custody clients never resume sessions (every connection is verified in full), so tickets would only cost a
    // write after each handshake.
    config.send_tls13_tickets = 0;
    Ok(config)
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

/// A service answering every request with `200 OK` and `body`: handy for health checks and tests.
pub fn static_service(
    body: &'static str,
) -> impl Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send + Sync
{
    hyper::service::service_fn(move |_request: Request<Incoming>| async move {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body.as_bytes()))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_prefixes_match_whole_segments() {
        let shared = Shared {
            config: RwLock::new(Arc::new(
                ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_no_client_auth()
                    .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new())),
            )),
            required_on: vec!["/admin".into(), "/devices/".into()],
            stats: Arc::default(),
        };
        assert!(shared.requires_client_cert("/admin"));
        assert!(shared.requires_client_cert("/admin/keys"));
        assert!(!shared.requires_client_cert("/administrator"));
        assert!(shared.requires_client_cert("/devices/42"));
        assert!(!shared.requires_client_cert("/metadata/root.json"));
    }
}

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
//!   certificate. Handlers find it in the request extensions as a [`ClientIdentity`], and the client's TCP address
//!   as a `SocketAddr`.
//! - Every connection is bounded ([`ConnectionLimits`]): at most `max_connections` at once (at the limit the listener
//!   stops accepting, so further clients wait in the kernel's backlog instead of being served), a TLS handshake
//!   deadline, hyper's header-read deadline and a keep-alive idle timeout. [`serve_http1`] and [`accept_within`] are
//!   the same bounds for a plain HTTP listener (the content origin of custody-server). What happens to connections
//!   is counted in [`ServerStats`] and reported to an optional [`EventSink`] (for `/metrics`).
//! - [`ServerHandle::shutdown`] ends it gracefully: no new connections, responses in progress finished, every
//!   connection (idle keep-alive ones too) closed with TLS's close_notify.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::pem_error;
use crate::{Error, Result, SpkiPin};

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

/// Bounds on the connections of a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once. At the limit the listener stops accepting until one closes, so further clients
    /// wait in the kernel's accept backlog (and time out there if it is full) rather than being served.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake (HTTPS only).
    pub handshake_timeout: Duration,
    /// hyper's header-read timeout: the complete request headers must arrive within this time of the connection
    /// being ready (after the handshake) or of the previous response. hyper starts it when a keep-alive connection
    /// goes idle, so it also bounds the wait for the next request.
    pub header_timeout: Duration,
    /// A connection with no request in progress is closed this long after its last response. Idle connections are
    /// closed after the shorter of this and `header_timeout`.
    pub keep_alive_timeout: Duration,
}

/// Something that happened to a connection, reported to an [`EventSink`] (custody-server turns these into metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// A connection was accepted and is now open.
    Opened,
    /// An open connection closed, for whatever reason (also after the events below).
    Closed,
    /// The listener reached `max_connections` and stopped accepting until a connection closes.
    LimitReached,
    /// A connection was closed because a deadline passed.
    TimedOut(Deadline),
    /// The TLS handshake failed (not a timeout).
    HandshakeFailed,
}

/// Which deadline of [`ConnectionLimits`] passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    Handshake,
    Header,
    KeepAlive,
}

/// Receives [`ConnectionEvent`]s; called on the connection's task, so it must be quick.
pub type EventSink = Arc<dyn Fn(ConnectionEvent) + Send + Sync>;

/// The connection slots of a listener ([`ConnectionLimits::max_connections`]), taken by [`accept_within`].
#[derive(Clone, Debug)]
pub struct ConnectionSlots(Arc<Semaphore>);

/// How [`serve_http1`] ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The client closed, or the connection was shut down between requests.
    Closed,
    /// Closed because a deadline passed.
    TimedOut(Deadline),
    /// An HTTP or I/O error.
    Failed(hyper::Error),
}

/// A bound, not yet serving, HTTPS listener.
pub struct HttpsServer {
    listener: TcpListener,
    files: ServerTlsFiles,
    config: ServerConfig,
    reload_interval: Duration,
    limits: ConnectionLimits,
    events: Option<EventSink>,
}

/// A running listener. [`ServerHandle::shutdown`] ends it gracefully; dropping it stops accepting and reloading, and
/// established connections run on until they close.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: Arc<ServerStats>,
    accept_task: tokio::task::JoinHandle<()>,
    reload_task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    connections: TaskTracker,
}

/// Counters of a running listener.
#[derive(Debug, Default)]
pub struct ServerStats {
    accepted: AtomicU64,
    handshakes: AtomicU64,
    reloads: AtomicU64,
    open: AtomicU64,
    timed_out: AtomicU64,
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
    limits: ConnectionLimits,
    events: Option<EventSink>,
}

/// Whether a connection has a request in progress, and since when it has not (for the keep-alive timeout).
#[derive(Default)]
struct Activity {
    /// Requests whose response has not been sent in full, and the end of the last response.
    state: Mutex<(usize, Option<Instant>)>,
}

/// Marks a request in progress until dropped with its response body.
struct InProgress(Arc<Activity>);

impl HttpsServer {
    /// Binds `addr` and loads the files once (so that a wrong file fails here, not at the first handshake).
    pub async fn bind(addr: SocketAddr, files: ServerTlsFiles) -> Result<Self> {
        let config = load(&files)?;
        let listener =
            TcpListener::bind(addr).await.map_err(|source| Error::Io { path: addr.to_string().into(), source })?;
        Ok(Self {
            listener,
            files,
            config,
            reload_interval: DEFAULT_RELOAD_INTERVAL,
            limits: ConnectionLimits::default(),
            events: None,
        })
    }

    /// How often to check the files for changes.
    pub fn reload_interval(mut self, interval: Duration) -> Self {
        self.reload_interval = interval;
        self
    }

    /// Bounds on connections, instead of [`ConnectionLimits::default`].
    pub fn limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Reports what happens to connections to `sink`.
    pub fn on_event(mut self, sink: EventSink) -> Self {
        self.events = Some(sink);
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
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(self.config)),
            required_on,
            stats: stats.clone(),
            limits: self.limits,
            events: self.events,
        });
        let reload_task = tokio::spawn(watch_files(shared.clone(), self.files, self.reload_interval));
        let listener = self.listener;
        let slots = ConnectionSlots::new(self.limits.max_connections);
        let (stop, connections) = (CancellationToken::new(), TaskTracker::new());
        let (accepting, tracker) = (stop.clone(), connections.clone());
        let accept_task = tokio::spawn(async move {
            loop {
                let (tcp, peer, slot) = tokio::select! {
                    () = accepting.cancelled() => break,
                    accepted = accept_within(&listener, &slots, shared.events.as_ref()) => accepted,
                };
                shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
                let (shared, service, stop) = (shared.clone(), service.clone(), accepting.clone());
                tracker.spawn(async move {
                    shared.stats.open.fetch_add(1, Ordering::Relaxed);
                    shared.emit(ConnectionEvent::Opened);
                    if let Some(deadline) = shared.serve(tcp, peer, service, stop.cancelled_owned()).await {
                        shared.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                        shared.emit(ConnectionEvent::TimedOut(deadline));
                    }
                    shared.stats.open.fetch_sub(1, Ordering::Relaxed);
                    shared.emit(ConnectionEvent::Closed);
                    drop(slot);
                });
            }
        });
        Ok(ServerHandle { local_addr, stats, accept_task, reload_task, stop, connections })
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Stops accepting (the listening socket is closed when this returns) and ends every connection: a response in
    /// progress is finished first, an idle keep-alive connection is closed at once, each with TLS's close_notify, so
    /// that clients see a clean end and not a cut. Waits for them up to `limit`; returns whether all closed in time
    /// (the rest are left to the caller's exit).
    pub async fn shutdown(mut self, limit: Duration) -> bool {
        self.stop.cancel();
        // The accept loop ends at the cancel, dropping the listener.
        let _ = (&mut self.accept_task).await;
        self.connections.close();
        tokio::time::timeout(limit, self.connections.wait()).await.is_ok()
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.reload_task.abort();
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnectionSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max.max(1))))
    }
}

/// Accepts the next connection once one of `slots` is free, so that at the limit further clients wait in the
/// kernel's accept backlog; reports [`ConnectionEvent::LimitReached`] when it has to wait. Sets `TCP_NODELAY` on the
/// connection. Accept errors (out of file descriptors and the like) are logged and retried after 100 ms rather than
/// spun on. The connection holds its slot until the returned permit is dropped.
pub async fn accept_within(
    listener: &TcpListener,
    slots: &ConnectionSlots,
    events: Option<&EventSink>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    let slot = match slots.0.clone().try_acquire_owned() {
        Ok(slot) => slot,
        Err(_) => {
            tracing::debug!("connection limit reached; not accepting until a connection closes");
            if let Some(sink) = events {
                sink(ConnectionEvent::LimitReached);
            }
            // `ConnectionSlots` never closes its semaphore, so acquiring can only wait, not fail.
            slots.0.clone().acquire_owned().await.expect("the semaphore of ConnectionSlots is never closed")
        }
    };
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                // Small responses go out at once: without this, Nagle holds a reply that follows the handshake's
                // last flight (or a response written in pieces) until the client's delayed ACK, 40 ms (measured).
                if let Err(err) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
                }
                return (tcp, peer, slot);
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection within `limits`' header-read and keep-alive timeouts, until the client closes,
/// a deadline passes, or `shutdown` resolves (then the response in progress is finished and the connection closed).
pub async fn serve_http1<I, S, B>(
    io: I,
    service: S,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> ConnectionEnd
where
    I: Read + Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let activity = Arc::new(Activity::default());
    let tracked = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_progress = activity.begin();
            let response = service.call(request);
            async move {
                let response = response.await?;
                // The request stays in progress until hyper is done with the body (sent in full, or dropped).
                Ok::<_, S::Error>(response.map(move |body| {
                    body.map_frame(move |frame| {
                        let _in_progress = &in_progress;
                        frame
                    })
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(io, tracked);
    tokio::pin!(connection);
    tokio::pin!(shutdown);
    // Checked lazily: the timer is not touched per request; when it fires it closes the connection if it has been
    // idle long enough, else it is set to the next time that could be so.
    let keep_alive = tokio::time::sleep(limits.keep_alive_timeout);
    tokio::pin!(keep_alive);
    let (mut closing, mut went_idle) = (false, false);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) if went_idle => ConnectionEnd::TimedOut(Deadline::KeepAlive),
                    Ok(()) => ConnectionEnd::Closed,
                    Err(err) if err.is_timeout() => ConnectionEnd::TimedOut(Deadline::Header),
                    Err(err) => ConnectionEnd::Failed(err),
                };
            }
            () = shutdown.as_mut(), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = keep_alive.as_mut(), if !closing => {
                let now = Instant::now();
                match activity.idle_until(limits.keep_alive_timeout) {
                    Some(until) if until <= now => {
                        // No request in progress: hyper closes the connection at once.
                        connection.as_mut().graceful_shutdown();
                        (closing, went_idle) = (true, true);
                    }
                    Some(until) => keep_alive.as_mut().reset(until),
                    // A request in progress, or none served yet (the header timeout covers that): look again later.
                    None => keep_alive.as_mut().reset(now + limits.keep_alive_timeout),
                }
            }
        }
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InProgress {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0 += 1;
        InProgress(self.clone())
    }

    /// When the keep-alive timeout would close the connection: none while a request is in progress, nor before the
    /// first response (the header timeout covers that).
    fn idle_until(&self, timeout: Duration) -> Option<Instant> {
        let (in_progress, last_response) = *self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match in_progress {
            0 => last_response?.checked_add(timeout),
            _ => None,
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 -= 1;
        state.1 = Some(Instant::now());
    }
}

impl ServerStats {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now (in the handshake or after it).
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed because a deadline of [`ConnectionLimits`] passed.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
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
    /// One connection: the TLS handshake, then HTTP/1.1 until it closes or `shutdown` resolves. Returns the deadline
    /// that closed it, if one did.
    async fn serve<S, B>(
        self: &Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        service: S,
        shutdown: impl Future<Output = ()>,
    ) -> Option<Deadline>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner).clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(self.limits.handshake_timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                tracing::debug!(%peer, error = %err, "TLS handshake failed");
                self.emit(ConnectionEvent::HandshakeFailed);
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return Some(Deadline::Handshake);
            }
        };
        self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
        let identity =
            tls.get_ref().1.peer_certificates().map(|chain| ClientIdentity { chain: Arc::new(chain.to_vec()) });
        let shared = self.clone();
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
                // The client's TCP address, for handlers that need it (the service's peer matching).
                request.extensions_mut().insert(peer);
                service.call(request).await.map(|response| response.map(Either::Left))
            }
        });
        match serve_http1(TokioIo::new(tls), per_request, &self.limits, shutdown).await {
            ConnectionEnd::Closed => None,
            ConnectionEnd::TimedOut(deadline) => {
                tracing::debug!(%peer, ?deadline, "connection timed out");
                Some(deadline)
            }
            ConnectionEnd::Failed(err) => {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
                None
            }
        }
    }

    fn emit(&self, event: ConnectionEvent) {
        if let Some(sink) = &self.events {
            sink(event);
        }
    }

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
            limits: ConnectionLimits::default(),
            events: None,
        };
        assert!(shared.requires_client_cert("/admin"));
        assert!(shared.requires_client_cert("/admin/keys"));
        assert!(!shared.requires_client_cert("/administrator"));
        assert!(shared.requires_client_cert("/devices/42"));
        assert!(!shared.requires_client_cert("/metadata/root.json"));
    }
}

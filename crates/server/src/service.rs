//! Starting and stopping the service: the data directory, the store, both listeners, and the background tasks
//! (re-signing snapshot and timestamp, PKI upkeep, device gauges).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use custody_api::routes::DEVICE_AUTHENTICATED;
use custody_store::{DeviceQuery, Store, StoreOptions};
use custody_tls::server::{
    ClientAuthFiles, ConnectionEnd, ConnectionEvent, ConnectionSlots, Deadline, EventSink, accept_within, serve_http1,
};
use custody_tls::{HttpsServer, ServerHandle, ServerTlsFiles};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::app::{App, AppState, http_router, https_router};
use crate::config::{IdentityMode, ServiceConfig, duration};
use crate::content::{ContentStore, DirStore};
use crate::datadir::{Created, DEVICE_CA, DataDir, write_file};
use crate::enrollment::EnrollmentTokens;
use crate::repository::RepoService;

/// A running service.
pub struct Running {
    pub https_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The URLs written into `client/custody.toml`.
    pub https_url: String,
    pub http_url: String,
    pub data: DataDir,
    /// Set when this start created the data directory.
    pub created: Option<Created>,
    /// Set when this start created the first admin token (written to this file).
    pub admin_token_file: Option<PathBuf>,
    app: App,
    https: ServerHandle,
    stop: CancellationToken,
    http_task: tokio::task::JoinHandle<()>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// The process-wide metrics recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will show nothing");
            }
            handle
        })
        .clone()
}

/// Starts the service on `data_dir` (created when empty).
pub async fn start(data_dir: &Path, config: ServiceConfig) -> Result<Running, Error> {
    let metrics = metrics_handle();
    let (data, created) = {
        let (dir, config) = (data_dir.to_owned(), config.clone());
        tokio::task::spawn_blocking(move || DataDir::open_or_create(&dir, &config))
            .await
            .map_err(|err| Error::Other(format!("data directory task: {err}")))??
    };
    maintain_pki(&data, &config).await;

    let store = Store::open(&data.database_url(&config), &StoreOptions::default())
        .await
        .map_err(|err| Error::Store(crate::device_api::error_chain(&err)))?;
    let admin_token_file = first_admin_token(&store, &data).await?;
    let content: Arc<dyn ContentStore> = Arc::new(DirStore::open(&data.content()).map_err(Error::io(data.content()))?);
    let repo = Arc::new(RepoService::new(
        data.repo(),
        data.pending(),
        content.clone(),
        config.repository.refresh_at,
        duration(config.repository.check_interval),
    ));
    let next_refresh = repo.refresh_if_due().await?;

    let app: App = Arc::new(AppState {
        requests: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
        config: config.clone(),
        data: data.clone(),
        store,
        repo: repo.clone(),
        content,
        enrollment: EnrollmentTokens::new(data.root().join("enrollment.json")),
        metrics,
        in_flight: TaskTracker::new(),
    });

    let device_ca = data.pki().join("ca").join(DEVICE_CA);
    let required_on = match config.devices.identity {
        IdentityMode::Certificate => DEVICE_AUTHENTICATED.iter().map(|r| (*r).to_owned()).collect(),
        IdentityMode::CertificateOrToken => Vec::new(),
    };
    let files = ServerTlsFiles {
        cert_chain: data.resolve(&config.tls.cert_chain),
        key: data.resolve(&config.tls.key),
        client_auth: Some(ClientAuthFiles {
            roots: device_ca.join("cert.pem"),
            crls: vec![device_ca.join("crl.pem")],
            required_on,
        }),
    };
    let https = HttpsServer::bind(config.listen.https, files)
        .await?
        .reload_interval(duration(config.tls.reload_interval))
        .limits(config.limits.connections())
        .on_event(connection_metrics("https"))
        .spawn(TowerToHyperService::new(https_router(app.clone())))?;
    let https_addr = https.local_addr();

    let listener = TcpListener::bind(config.listen.http).await.map_err(Error::io(config.listen.http.to_string()))?;
    let http_addr = listener.local_addr().map_err(Error::io("listener"))?;
    let stop = CancellationToken::new();
    let http_task = tokio::spawn(serve_plain(listener, http_router(app.clone()), config.clone(), stop.clone()));

    let https_url = config.listen.public_url.clone().unwrap_or_else(|| url("https", https_addr));
    let http_url = config.listen.content_url.clone().unwrap_or_else(|| url("http", http_addr));
    let client = {
        let (data, https_url, http_url) = (data.clone(), https_url.clone(), http_url.clone());
        tokio::task::spawn_blocking(move || data.write_client_config(&https_url, &http_url))
            .await
            .map_err(|err| Error::Other(format!("client configuration task: {err}")))??
    };
    tracing::info!(%https_addr, %http_addr, client = %client.display(), "custody server started");

    let background = vec![
        tokio::spawn(refresh_loop(repo, next_refresh, stop.clone())),
        tokio::spawn(pki_loop(data.clone(), config.clone(), stop.clone())),
        tokio::spawn(device_gauges(app.clone(), stop.clone())),
    ];
    Ok(Running {
        https_addr,
        http_addr,
        https_url,
        http_url,
        data,
        created,
        admin_token_file,
        app,
        https,
        stop,
        http_task,
        background,
    })
}

impl Running {
    /// Stops accepting, waits (at most `limits.shutdown_timeout`) for requests in progress, and closes the store.
    pub async fn shutdown(self) {
        let limit = duration(self.app.config.limits.shutdown_timeout);
        tracing::info!("shutting down: no new connections; waiting for requests in progress");
        self.stop.cancel();
        // HTTPS connections finish their response in progress and close with a TLS goodbye, idle ones at once.
        let https = self.https.shutdown(limit);
        self.app.in_flight.close();
        if tokio::time::timeout(limit, self.app.in_flight.wait()).await.is_err() {
            tracing::warn!("HTTPS requests still running after {}s; stopping anyway", limit.as_secs());
        }
        if !https.await {
            tracing::warn!("HTTPS connections still open after {}s; stopping anyway", limit.as_secs());
        }
        if tokio::time::timeout(limit, self.http_task).await.is_err() {
            tracing::warn!("content transfers still running after {}s; stopping anyway", limit.as_secs());
        }
        for task in self.background {
            task.abort();
        }
        self.app.store.close().await;
        tracing::info!("custody server stopped");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!("cannot install signal handlers; waiting for Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The plain HTTP listener, with the same connection bounds as the HTTPS one (`[limits]`), and a graceful end: on
/// `stop`, no new connections; open ones finish their current response.
async fn serve_plain(listener: TcpListener, router: axum::Router, config: ServiceConfig, stop: CancellationToken) {
    let limits = config.limits.connections();
    let slots = ConnectionSlots::new(limits.max_connections);
    let events = connection_metrics("http");
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer, slot) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = accept_within(&listener, &slots, Some(&events)) => accepted,
        };
        let (service, stop, events) = (TowerToHyperService::new(router.clone()), stop.clone(), events.clone());
        connections.spawn(async move {
            events(ConnectionEvent::Opened);
            match serve_http1(TokioIo::new(tcp), service, &limits, stop.cancelled_owned()).await {
                ConnectionEnd::Closed => {}
                ConnectionEnd::TimedOut(deadline) => {
                    tracing::debug!(%peer, ?deadline, "connection timed out");
                    events(ConnectionEvent::TimedOut(deadline));
                }
                ConnectionEnd::Failed(err) => tracing::debug!(%peer, error = %err, "connection ended with an error"),
            }
            events(ConnectionEvent::Closed);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Turns a listener's connection events into metrics: `custody_connections_open` (gauge),
/// `custody_connections_accepted_total`, `custody_connection_limit_reached_total` (the listener stopped accepting at
/// `max_connections`; the clients wait in the backlog), `custody_connections_timed_out_total` by `deadline`
/// (`handshake`, `header`, `keep-alive`), `custody_tls_handshake_failures_total`.
fn connection_metrics(listener: &'static str) -> EventSink {
    Arc::new(move |event| match event {
        ConnectionEvent::Opened => {
            metrics::gauge!("custody_connections_open", "listener" => listener).increment(1.0);
            metrics::counter!("custody_connections_accepted_total", "listener" => listener).increment(1);
        }
        ConnectionEvent::Closed => metrics::gauge!("custody_connections_open", "listener" => listener).decrement(1.0),
        ConnectionEvent::LimitReached => {
            metrics::counter!("custody_connection_limit_reached_total", "listener" => listener).increment(1);
        }
        ConnectionEvent::TimedOut(deadline) => {
            let deadline = match deadline {
                Deadline::Handshake => "handshake",
                Deadline::Header => "header",
                Deadline::KeepAlive => "keep-alive",
            };
            metrics::counter!("custody_connections_timed_out_total", "listener" => listener, "deadline" => deadline)
                .increment(1);
        }
        ConnectionEvent::HandshakeFailed => {
            metrics::counter!("custody_tls_handshake_failures_total", "listener" => listener).increment(1);
        }
        _ => {}
    })
}

/// Re-signs snapshot and timestamp when due (the first check ran at start).
async fn refresh_loop(repo: Arc<RepoService>, mut next: jiff::Timestamp, stop: CancellationToken) {
    loop {
        let wait = jiff::Timestamp::now().duration_until(next).unsigned_abs();
        let wait = if next <= jiff::Timestamp::now() { Duration::ZERO } else { wait };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        next = match repo.refresh_if_due().await {
            Ok(next) => next,
            Err(err) => {
                tracing::error!(error = %err, "re-signing snapshot and timestamp failed; retrying in a minute");
                jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60)
            }
        };
    }
}

/// PKI upkeep every hour: CRLs of the online intermediates, the server certificate.
async fn pki_loop(data: DataDir, config: ServiceConfig, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        maintain_pki(&data, &config).await;
    }
}

async fn maintain_pki(data: &DataDir, config: &ServiceConfig) {
    let (data, renew_before) = (data.clone(), config.tls.renew_before);
    let before = jiff::SignedDuration::from_secs(i64::try_from(renew_before.seconds()).unwrap_or(i64::MAX));
    let result = tokio::task::spawn_blocking(move || crate::pki::maintain(&data, before, jiff::Timestamp::now())).await;
    match result {
        Ok(Ok(done)) => done.iter().for_each(|what| tracing::info!("PKI: {what}")),
        Ok(Err(err)) => tracing::error!(error = %err, "PKI upkeep failed"),
        Err(err) => tracing::error!(error = %err, "PKI upkeep task failed"),
    }
}

/// `custody_devices` and `custody_active_devices` (seen within `devices.active_window`), every five minutes.
async fn device_gauges(app: App, stop: CancellationToken) {
    loop {
        let window = jiff::SignedDuration::from_secs(
            i64::try_from(app.config.devices.active_window.seconds()).unwrap_or(i64::MAX),
        );
        let since = jiff::Timestamp::now() - window;
        let (mut total, mut active, mut after) = (0u64, 0u64, None);
        loop {
            let query = DeviceQuery { group: None, after, limit: custody_store::limits::MAX_PAGE };
            let Ok(page) = app.store.list_devices(&query).await else { break };
            total += page.len() as u64;
            active += page.iter().filter(|d| d.last_seen >= since).count() as u64;
            match page.last() {
                Some(last) if page.len() == query.limit as usize => after = Some(last.id),
                _ => break,
            }
        }
        metrics::gauge!("custody_devices").set(total as f64);
        metrics::gauge!("custody_active_devices").set(active as f64);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
    }
}

/// Creates the first admin token (scope write) when there is none, and writes it to `DATA/admin-token`.
async fn first_admin_token(store: &Store, data: &DataDir) -> Result<Option<PathBuf>, Error> {
    let store_err = |err: custody_store::Error| Error::Store(crate::device_api::error_chain(&err));
    if !store.admin_tokens().await.map_err(store_err)?.is_empty() {
        return Ok(None);
    }
    let created = store
        .create_admin_token("initial", custody_store::Scope::Write, jiff::Timestamp::now())
        .await
        .map_err(store_err)?;
    let path = data.admin_token();
    write_file(&path, format!("{}\n", created.secret.expose()).as_bytes(), 0o600)?;
    Ok(Some(path))
}

fn url(scheme: &str, addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", addr.port())
}

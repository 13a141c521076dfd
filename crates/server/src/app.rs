//! The routes of both listeners, their shared state, and the middleware that bounds and measures requests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use custody_api::ErrorCode;
use custody_api::admin::Scope;
use custody_api::routes;
use custody_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::admin_api;
use crate::config::{ServiceConfig, duration};
use crate::content::ContentStore;
use crate::datadir::{DEVICE_CA, DataDir, SERVICE_CA};
use crate::device_api;
use crate::enrollment::EnrollmentTokens;
use crate::error::ApiError;
use crate::repository::RepoService;

/// What every handler shares.
pub type App = Arc<AppState>;

pub struct AppState {
    pub config: ServiceConfig,
    pub data: DataDir,
    pub store: Store,
    pub repo: Arc<RepoService>,
    pub content: Arc<dyn ContentStore>,
    pub enrollment: EnrollmentTokens,
    pub metrics: PrometheusHandle,
    /// Requests in progress on the HTTPS listener, waited for at shutdown.
    pub in_flight: TaskTracker,
    /// Bounds the requests the HTTPS listener handles at once.
    pub requests: Arc<Semaphore>,
}

/// The HTTPS listener: metadata, device API, admin API, metrics.
pub fn https_router(app: App) -> Router {
    let limits = &app.config.limits;
    let metadata = Router::new()
        .route("/metadata/{*path}", get(crate::metadata::serve))
        .with_state(app.data.repo().join("metadata"));
    let api = Router::new()
        .route(routes::DEVICE_ENROLL, post(device_api::enroll))
        .route(routes::DEVICE_INVENTORY, put(device_api::inventory))
        .route(routes::DEVICE_EVENTS, post(device_api::events))
        .route(routes::DEVICE_PEERS, post(crate::peers::peers))
        .route(routes::ADMIN_UPDATES, get(admin_api::updates))
        .route("/admin/v1/updates/{id}", get(admin_api::update))
        .route("/admin/v1/updates/{id}/compliance", get(admin_api::update_compliance))
        .route(routes::ADMIN_COMPLIANCE, get(admin_api::compliance))
        .route(routes::ADMIN_DEVICES, get(admin_api::devices))
        .route("/admin/v1/devices/{id}", get(admin_api::device))
        .route("/admin/v1/devices/{id}/revoke", post(admin_api::revoke_device))
        .route(routes::ADMIN_TOKENS, get(admin_api::tokens).post(admin_api::create_token))
        .route("/admin/v1/tokens/{id}", axum::routing::delete(admin_api::revoke_token))
        .route(
            routes::ADMIN_ENROLLMENT_TOKENS,
            get(admin_api::enrollment_tokens).post(admin_api::create_enrollment_token),
        )
        .route("/admin/v1/enrollment-tokens/{id}", axum::routing::delete(admin_api::revoke_enrollment_token))
        .route("/admin/v1/content/sha256/{hex}", axum::routing::head(admin_api::content_exists))
        .route(routes::ADMIN_PUBLISH, post(admin_api::publish))
        .route(routes::ADMIN_STAGED, get(admin_api::staged))
        .route("/admin/v1/staged/{role}", get(admin_api::staged_role))
        .route(routes::ADMIN_STATUS, get(admin_api::status))
        .route(routes::ADMIN_DELIVERY, get(admin_api::delivery))
        .route(routes::METRICS, get(metrics))
        .with_state(app.clone())
        .merge(metadata)
        .layer(middleware::from_fn_with_state(duration(limits.request_timeout), deadline));
    let upload = Router::new()
        .route("/admin/v1/content/sha256/{hex}", put(admin_api::upload))
        .with_state(app.clone())
        .layer(middleware::from_fn_with_state(duration(limits.upload_timeout), deadline));
    Router::new()
        .merge(api)
        .merge(upload)
        .route(routes::HEALTH, get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(app.clone(), bound))
        .layer(middleware::from_fn_with_state("https", track))
}

/// The plain HTTP listener: content, piece layers, certificates and CRLs.
pub fn http_router(app: App) -> Router {
    let origin = Arc::new(crate::origin::Origin {
        store: app.content.clone(),
        throttle: crate::throttle::Throttle::new(&app.config.content.rate_limit),
    });
    let content = Router::new()
        .route("/targets/{*path}", get(crate::origin::targets))
        .route("/content/sha256/{hex}", get(crate::origin::by_sha256))
        .route("/pieces/sha256/{hex}", get(crate::origin::pieces))
        .with_state(origin);
    let pki = Router::new().route("/pki/{file}", get(pki_file)).with_state(app.data.pki());
    Router::new()
        .merge(content)
        .merge(pki)
        .route(routes::HEALTH, get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state("http", track))
}

async fn health() -> &'static str {
    "ok\n"
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route (docs/api.md lists them)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method (docs/api.md)")
}

/// `GET /metrics`: Prometheus text format.
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiError> {
    if app.config.metrics.require_token {
        admin_api::authorize(&app, &headers, Scope::Read).await?;
    }
    let body = app.metrics.render();
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response())
}

/// `GET /pki/<file>`: the root certificate and the CRLs devices must keep current.
async fn pki_file(
    State(dir): State<PathBuf>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let path = match file.as_str() {
        "root.pem" => dir.join("root/cert.pem"),
        "root-crl.pem" => dir.join("root/crl.pem"),
        "service-crl.pem" => dir.join("ca").join(SERVICE_CA).join("crl.pem"),
        "device-crl.pem" => dir.join("ca").join(DEVICE_CA).join("crl.pem"),
        _ => return Err(ApiError::not_found("PKI files: root.pem, root-crl.pem, service-crl.pem, device-crl.pem")),
    };
    let bytes = tokio::fs::read(&path).await.map_err(|err| ApiError::internal(format!("{}: {err}", path.display())))?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file"), (header::CACHE_CONTROL, "no-cache")], bytes).into_response())
}

/// Answers `408` when a request takes longer than `limit`.
async fn deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(ErrorCode::Timeout, format!("the request took longer than {}s", limit.as_secs()))
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .into_response(),
    }
}

/// Bounds concurrent HTTPS requests (`429` beyond), and tracks them for a graceful shutdown.
async fn bound(State(app): State<App>, request: Request, next: Next) -> Response {
    if app.in_flight.is_closed() {
        return ApiError::new(ErrorCode::Unavailable, "the service is shutting down").into_response();
    }
    let Ok(_permit) = app.requests.clone().try_acquire_owned() else {
        let mut response =
            ApiError::new(ErrorCode::TooManyRequests, "too many requests at once; retry shortly").into_response();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let _token = app.in_flight.token();
    next.run(request).await
}

/// Counts requests by listener, route pattern, method and status, and measures their duration.
async fn track(State(listener): State<&'static str>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    metrics::gauge!("custody_http_requests_in_flight", "listener" => listener).increment(1.0);
    let response = next.run(request).await;
    metrics::gauge!("custody_http_requests_in_flight", "listener" => listener).decrement(1.0);
    let status = response.status().as_u16().to_string();
    metrics::counter!("custody_http_requests_total", "listener" => listener, "route" => route.clone(),
        "method" => method, "status" => status)
    .increment(1);
    metrics::histogram!("custody_http_request_duration_seconds", "listener" => listener, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

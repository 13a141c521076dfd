//! The crate's error type ([`Error`]: starting, configuring, data directory) and the error answered to HTTP clients
//! ([`ApiError`]: a status and a `custody_api::ErrorBody`).

use std::path::PathBuf;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custody_api::{ErrorBody, ErrorCode, FieldError};

/// Everything that can stop the service from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration {path}: {detail}")]
    Config { path: PathBuf, detail: String },
    #[error("data directory {path}: {detail}")]
    DataDir { path: PathBuf, detail: String },
    #[error("repository: {0}")]
    Repo(#[from] custody_repo::Error),
    #[error("PKI: {0}")]
    Pki(#[from] custody_pki::Error),
    #[error("TLS listener: {0}")]
    Tls(#[from] custody_tls::Error),
    #[error("metadata: {0}")]
    Tuf(#[from] custody_tuf::Error),
    #[error("database: {0}")]
    Store(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// An error answered to a client: its status, the JSON body, and for 401 a `WWW-Authenticate` challenge.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, body: ErrorBody::new(code, message) }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// A `bad-request` about `field` (a path from the top of the body; empty for the body as a whole).
    pub fn bad_field(field: String, message: impl Into<String>) -> Self {
        let mut err = Self::new(ErrorCode::BadRequest, message);
        err.body.field = (!field.is_empty()).then_some(field);
        err
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Rejected, message)
    }

    pub fn too_large(limit: u64) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, format!("the body is larger than this route's limit of {limit} bytes"))
    }

    /// A failure of the service itself; logged here, since the client only learns that something failed.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "request failed");
        Self::new(ErrorCode::Internal, message)
    }

    pub fn from_http(err: axum::http::Error) -> Self {
        Self::internal(format!("building the response: {err}"))
    }

    pub fn code(&self) -> ErrorCode {
        self.body.error
    }

    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        Self { status: StatusCode::BAD_REQUEST, body: err.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.body.error {
            ErrorCode::Internal | ErrorCode::Unknown => "internal",
            ErrorCode::Unauthorized | ErrorCode::Forbidden => "auth",
            ErrorCode::PayloadTooLarge => "too-large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::TooManyRequests | ErrorCode::Unavailable => "overload",
            ErrorCode::NotFound | ErrorCode::MethodNotAllowed => "not-found",
            _ => "bad-request",
        };
        metrics::counter!("custody_errors_total", "kind" => kind).increment(1);
        let mut response = (self.status, axum::Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

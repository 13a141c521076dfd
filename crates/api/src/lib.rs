//! The wire contract of the custody update service: routes, request and response bodies, error bodies and size
//! limits of the device API (`/device/v1/...`) and the admin API (`/admin/v1/...`). `docs/api.md` describes every
//! route, body and status code; this crate is what the service, the device agent and the CLI compile against.
//!
//! The crate only defines values and checks them ([`device::EnrollRequest::validate`],
//! [`device::Inventory::to_device_inventory`], [`device::EventBatch::validate`], ...): no I/O, no HTTP client or
//! server.
//!
//! # Versioning
//!
//! The major version is in the path: `/device/v1`, `/admin/v1`. Within one major version:
//!
//! - **responses may grow**: new fields and new enum values may appear, so clients must ignore unknown response
//!   fields (the response types here do), and treat an unknown [`ErrorCode`] like its HTTP status;
//! - **requests do not change**: request bodies are parsed strictly (an unknown field is a 400 naming it, so a typo
//!   never silently drops data), hence a new request field, event type or changed meaning needs the next major
//!   version, which the service then serves beside the old one;
//! - the limits in [`limits`] never shrink.

pub mod admin;
pub mod device;
pub mod limits;
pub mod p2p;
pub mod routes;

use serde::{Deserialize, Serialize};

/// The body of every error response (any status from 400 up), `Content-Type: application/json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    /// A sentence for people: what was wrong and, where possible, what to do.
    pub message: String,
    /// The request field at fault, as a path from the top of the body (`events[3].error.code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Machine-readable error kinds. Each goes with one HTTP status ([`ErrorCode::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// 400: the body is not JSON, or not the JSON the route takes (`field` names where).
    BadRequest,
    /// 400: the body parsed, but a value is not acceptable (`field` names it).
    InvalidField,
    /// 401: no credentials, or unknown, expired or revoked ones.
    Unauthorized,
    /// 403: valid credentials without the right (a read token on a write route, a retired device).
    Forbidden,
    /// 404: no such route, update, device, token or content.
    NotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state (a role version that is no longer the next one).
    Conflict,
    /// 413: the body is larger than the route's limit ([`limits`]).
    PayloadTooLarge,
    /// 415: the body is not `application/json` (or `application/octet-stream` for uploads).
    UnsupportedMediaType,
    /// 422: signed metadata was refused (bad signatures, wrong delegation, content missing).
    Rejected,
    /// 429: too many requests or connections; retry later.
    TooManyRequests,
    /// 500: the service failed; the request may be retried.
    Internal,
    /// 503: the service is shutting down or overloaded; retry later.
    Unavailable,
    /// 408/504: the request took longer than the service allows.
    Timeout,
    /// A code this build does not know (a newer service): go by the HTTP status.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest | Self::InvalidField => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Timeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Rejected => 422,
            Self::TooManyRequests => 429,
            Self::Internal | Self::Unknown => 500,
            Self::Unavailable => 503,
        }
    }
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self { error, message: message.into(), field: None }
    }
}

impl From<FieldError> for ErrorBody {
    fn from(err: FieldError) -> Self {
        Self { error: ErrorCode::InvalidField, message: err.to_string(), field: Some(err.field) }
    }
}

/// A request value that is not acceptable: which field (a path from the top of the body) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { field: field.into(), problem: problem.into() }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for FieldError {}

/// Checks a free-text name (token and device names): 1 to `max` characters, not blank, no control characters.
pub(crate) fn check_text(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    let count = value.chars().count();
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty or blank"));
    }
    if count > max {
        return Err(FieldError::new(field, format!("has {count} characters; at most {max} are allowed")));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_kebab_case_and_unknown_ones_are_tolerated() {
        let body = ErrorBody::from(FieldError::new("events[0].id", "must not be the nil UUID"));
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"error":"invalid-field","message":"events[0].id: must not be the nil UUID","field":"events[0].id"}"#
        );
        let newer: ErrorBody = serde_json::from_str(r#"{"error":"quota-exceeded","message":"m","extra":1}"#).unwrap();
        assert_eq!(newer.error, ErrorCode::Unknown);
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
    }

    #[test]
    fn text_checks_name_the_problem() {
        assert!(check_text("name", "ci", 10).is_ok());
        assert_eq!(check_text("name", " ", 10).unwrap_err().problem, "must not be empty or blank");
        assert!(check_text("name", "a\u{7}b", 10).unwrap_err().problem.contains("control"));
        assert!(check_text("name", "abcdefghijk", 10).unwrap_err().problem.contains("at most 10"));
    }
}

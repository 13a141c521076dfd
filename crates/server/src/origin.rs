//! The content origin (plain HTTP): content-addressed, immutable URLs with HEAD, single ranges, strong ETags and
//! cache headers that let any CDN or caching proxy sit in front. Bytes are streamed from the store.
//!
//! - `/targets/<dir>/<HASH>.<name>`: the consistent-snapshot name a TUF client fetches (SHA-256 or SHA-512 in hex);
//! - `/content/sha256/<hex>`.

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use futures_util::StreamExt;

use crate::content::{ContentId, ContentStore};
use crate::error::ApiError;

/// `Cache-Control` of content and immutable metadata: a URL names one set of bytes forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What to send for a request's `Range` (and `If-Range`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// The whole content, `200`.
    Full,
    /// These bytes, `206`.
    Partial(Range<u64>),
    /// `416`: the range starts past the end.
    Unsatisfiable,
}

impl RangeDecision {
    /// Decides from the request headers, for content of `length` bytes whose strong tag is `etag` (quoted).
    ///
    /// Only one `bytes` range is served; a request with several, an unparsable one, or an `If-Range` that is not the
    /// current tag gets the whole content (RFC 9110 §14.2 lets a server ignore `Range`).
    pub fn decide(range: Option<&str>, if_range: Option<&str>, etag: &str, length: u64) -> Self {
        let Some(range) = range else { return Self::Full };
        if if_range.is_some_and(|tag| tag.trim() != etag) {
            return Self::Full;
        }
        let Some(spec) = range.trim().strip_prefix("bytes=") else { return Self::Full };
        if spec.contains(',') {
            return Self::Full;
        }
        let Some((first, last)) = spec.trim().split_once('-') else { return Self::Full };
        let parse = |text: &str| -> Option<u64> {
            (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
        };
        match (first.trim(), last.trim()) {
            ("", suffix) => match parse(suffix) {
                Some(0) => Self::Unsatisfiable,
                Some(_) if length == 0 => Self::Unsatisfiable,
                Some(n) => Self::Partial(length.saturating_sub(n)..length),
                None => Self::Full,
            },
            (start, "") => match parse(start) {
                Some(start) if start >= length => Self::Unsatisfiable,
                Some(start) => Self::Partial(start..length),
                None => Self::Full,
            },
            (start, end) => match (parse(start), parse(end)) {
                (Some(start), Some(end)) if start > end => Self::Full,
                (Some(start), Some(_)) if start >= length => Self::Unsatisfiable,
                (Some(start), Some(end)) => Self::Partial(start..end.min(length - 1) + 1),
                _ => Self::Full,
            },
        }
    }
}

/// `GET`/`HEAD /targets/...`: the hash is the part of the last segment before its first dot.
pub async fn targets(
    State(store): State<Arc<dyn ContentStore>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    let hash = last.split_once('.').map_or(last, |(hash, _)| hash);
    let id = ContentId::from_hex(hash).ok_or_else(|| {
        ApiError::not_found("target names are <dir>/<HASH>.<name> with a lower-case hex SHA-256 or SHA-512")
    })?;
    serve(store.as_ref(), id, &method, &headers).await
}

/// `GET`/`HEAD /content/sha256/<hex>`.
pub async fn by_sha256(
    State(store): State<Arc<dyn ContentStore>>,
    method: Method,
    axum::extract::Path(hex): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    match ContentId::from_hex(&hex) {
        Some(id @ ContentId::Sha256(_)) => serve(store.as_ref(), id, &method, &headers).await,
        _ => Err(ApiError::not_found("content is named by 64 lower-case hex digits of its SHA-256")),
    }
}

/// Answers one content request.
async fn serve(
    store: &dyn ContentStore,
    id: ContentId,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let object = store
        .lookup(id)
        .await
        .map_err(|err| ApiError::internal(format!("content store: {err}")))?
        .ok_or_else(|| ApiError::not_found("no such content"))?;
    let etag = format!("\"{}\"", hex::encode(object.sha256));
    let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, IMMUTABLE)
        .header(header::ACCEPT_RANGES, "bytes");
    if header(header::IF_NONE_MATCH)
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
    {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(ApiError::from_http);
    }
    let length = object.length;
    let (status, range, builder) =
        match RangeDecision::decide(header(header::RANGE), header(header::IF_RANGE), &etag, length) {
            RangeDecision::Full => (StatusCode::OK, 0..length, builder),
            RangeDecision::Partial(range) => {
                let content_range = format!("bytes {}-{}/{length}", range.start, range.end - 1);
                (StatusCode::PARTIAL_CONTENT, range, builder.header(header::CONTENT_RANGE, content_range))
            }
            RangeDecision::Unsatisfiable => {
                return builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{length}"))
                    .body(Body::empty())
                    .map_err(ApiError::from_http);
            }
        };
    let builder = builder
        .status(status)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
        .header(header::CONTENT_LENGTH, range.end - range.start);
    if method == Method::HEAD {
        return builder.body(Body::empty()).map_err(ApiError::from_http);
    }
    let stream =
        store.read(object.sha256, range).await.map_err(|err| ApiError::internal(format!("content store: {err}")))?.map(
            |chunk| {
                if let Ok(bytes) = &chunk {
                    metrics::counter!("custody_content_bytes_served_total").increment(bytes.len() as u64);
                }
                chunk
            },
        );
    builder.body(Body::from_stream(stream)).map_err(ApiError::from_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: &str = "\"abc\"";

    fn decide(range: &str, length: u64) -> RangeDecision {
        RangeDecision::decide(Some(range), None, TAG, length)
    }

    #[test]
    fn single_ranges_in_every_form() {
        assert_eq!(decide("bytes=0-9", 100), RangeDecision::Partial(0..10));
        assert_eq!(decide("bytes=90-", 100), RangeDecision::Partial(90..100));
        assert_eq!(decide("bytes=-10", 100), RangeDecision::Partial(90..100));
        assert_eq!(decide("bytes=-500", 100), RangeDecision::Partial(0..100));
        assert_eq!(decide("bytes=50-500", 100), RangeDecision::Partial(50..100));
        assert_eq!(decide("bytes=99-99", 100), RangeDecision::Partial(99..100));
    }

    #[test]
    fn unsatisfiable_and_ignored_ranges() {
        assert_eq!(decide("bytes=100-", 100), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=100-200", 100), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=-0", 100), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=0-", 0), RangeDecision::Unsatisfiable);
        assert_eq!(decide("bytes=0-1,5-6", 100), RangeDecision::Full, "several ranges: whole content");
        assert_eq!(decide("bytes=5-1", 100), RangeDecision::Full, "invalid: ignored");
        assert_eq!(decide("items=0-1", 100), RangeDecision::Full);
        assert_eq!(decide("bytes=a-b", 100), RangeDecision::Full);
        assert_eq!(decide("bytes=+1-2", 100), RangeDecision::Full);
        assert_eq!(RangeDecision::decide(None, None, TAG, 100), RangeDecision::Full);
    }

    #[test]
    fn if_range_must_be_the_current_strong_tag() {
        assert_eq!(RangeDecision::decide(Some("bytes=0-1"), Some(TAG), TAG, 100), RangeDecision::Partial(0..2));
        assert_eq!(RangeDecision::decide(Some("bytes=0-1"), Some("\"old\""), TAG, 100), RangeDecision::Full);
        assert_eq!(RangeDecision::decide(Some("bytes=0-1"), Some("W/\"abc\""), TAG, 100), RangeDecision::Full);
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(RangeDecision::decide(Some("bytes=0-1"), Some(date), TAG, 100), RangeDecision::Full);
    }
}

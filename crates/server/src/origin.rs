//! The content origin (plain HTTP): content-addressed, immutable URLs with HEAD, single ranges, strong ETags and
//! cache headers that let any CDN or caching proxy sit in front. Small ranges are read in the same blocking task that
//! finds the object; larger ones are streamed from the store. An optional bandwidth limit paces the bytes
//! ([`crate::throttle`]).
//!
//! - `/targets/<dir>/<HASH>.<name>`: the consistent-snapshot name a TUF client fetches (SHA-256 or SHA-512 in hex);
//! - `/content/sha256/<hex>`;
//! - `/pieces/sha256/<hex>`: the piece layer of content published with pieces ([`crate::pieces`]).

use std::ops::Range;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use futures_util::StreamExt;

use crate::content::{ByteStream, ContentBody, ContentId, ContentStore, Select, StoredObject};
use crate::error::ApiError;
use crate::throttle::Throttle;

/// `Cache-Control` of content and immutable metadata: a URL names one set of bytes forever.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What the origin's routes share.
pub struct Origin {
    pub store: Arc<dyn ContentStore>,
    pub throttle: Throttle,
}

/// The request headers that decide the answer, owned so that the store's blocking task can decide the range.
#[derive(Clone, Debug, Default)]
struct Conditions {
    range: Option<String>,
    if_range: Option<String>,
    if_none_match: Option<String>,
    head: bool,
}

/// The answer to a content request, once the object is known.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    NotModified,
    Unsatisfiable,
    /// `200` (whole) or `206` (part) with these bytes.
    Send {
        range: Range<u64>,
        partial: bool,
    },
}

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
    State(origin): State<Arc<Origin>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let last = uri.path().rsplit('/').next().unwrap_or_default();
    let hash = last.split_once('.').map_or(last, |(hash, _)| hash);
    let id = ContentId::from_hex(hash).ok_or_else(|| {
        ApiError::not_found("target names are <dir>/<HASH>.<name> with a lower-case hex SHA-256 or SHA-512")
    })?;
    origin.serve(id, &method, &headers).await
}

/// `GET`/`HEAD /content/sha256/<hex>`.
pub async fn by_sha256(
    State(origin): State<Arc<Origin>>,
    method: Method,
    axum::extract::Path(hex): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    match ContentId::from_hex(&hex) {
        Some(id @ ContentId::Sha256(_)) => origin.serve(id, &method, &headers).await,
        _ => Err(ApiError::not_found("content is named by 64 lower-case hex digits of its SHA-256")),
    }
}

/// `GET`/`HEAD /pieces/sha256/<hex>`: the piece layer of content published with pieces (32 bytes per piece), as
/// immutable as the content. Ranges are not served (the layer is small; `200` with all of it).
pub async fn pieces(
    State(origin): State<Arc<Origin>>,
    method: Method,
    axum::extract::Path(hex): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let Some(ContentId::Sha256(sha256)) = ContentId::from_hex(&hex) else {
        return Err(ApiError::not_found("piece layers are named by 64 lower-case hex digits of the content's SHA-256"));
    };
    let layer = origin
        .store
        .piece_layer(sha256)
        .await
        .map_err(|err| ApiError::internal(format!("content store: {err}")))?
        .ok_or_else(|| ApiError::not_found("no piece layer for this content (it was not published with pieces)"))?;
    // One layer per content, never replaced (crate::pieces), so the content's name names the layer too.
    let etag = format!("\"pieces-{hex}\"");
    let builder = Response::builder().header(header::ETAG, &etag).header(header::CACHE_CONTROL, IMMUTABLE);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
    {
        return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(ApiError::from_http);
    }
    let builder = builder
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
        .header(header::CONTENT_LENGTH, layer.len());
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(layer) };
    builder.body(body).map_err(ApiError::from_http)
}

impl Origin {
    /// Answers one content request, with one trip to the store: it decides the range once it knows the length.
    async fn serve(&self, id: ContentId, method: &Method, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
        let conditions = Conditions::from_request(method, headers);
        let select: Select = {
            let conditions = conditions.clone();
            Box::new(move |object: &StoredObject| match conditions.answer(object) {
                Answer::Send { range, .. } if !conditions.head => Some(range),
                _ => None,
            })
        };
        let opened = self
            .store
            .open(id, select)
            .await
            .map_err(|err| ApiError::internal(format!("content store: {err}")))?
            .ok_or_else(|| ApiError::not_found("no such content"))?;
        let (object, length) = (opened.object, opened.object.length);
        let builder = Response::builder()
            .header(header::ETAG, object.etag())
            .header(header::CACHE_CONTROL, IMMUTABLE)
            .header(header::ACCEPT_RANGES, "bytes");
        let (range, partial) = match conditions.answer(&object) {
            Answer::NotModified => {
                return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(ApiError::from_http);
            }
            Answer::Unsatisfiable => {
                return builder
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{length}"))
                    .body(Body::empty())
                    .map_err(ApiError::from_http);
            }
            Answer::Send { range, partial } => (range, partial),
        };
        let mut builder = builder
            .status(if partial { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK })
            .header(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"))
            .header(header::CONTENT_LENGTH, range.end - range.start);
        if partial {
            builder =
                builder.header(header::CONTENT_RANGE, format!("bytes {}-{}/{length}", range.start, range.end - 1));
        }
        let body = match opened.body {
            None => Body::empty(),
            Some((_, ContentBody::Bytes(bytes))) if self.throttle.is_off() => {
                metrics::counter!("custody_content_bytes_served_total").increment(bytes.len() as u64);
                Body::from(bytes)
            }
            Some((_, body)) => {
                let stream: ByteStream = match body {
                    ContentBody::Bytes(bytes) => Box::pin(futures_util::stream::once(std::future::ready(Ok(bytes)))),
                    ContentBody::Stream(stream) => stream,
                };
                let counted = self.throttle.pace(stream).map(|chunk| {
                    if let Ok(bytes) = &chunk {
                        metrics::counter!("custody_content_bytes_served_total").increment(bytes.len() as u64);
                    }
                    chunk
                });
                Body::from_stream(counted)
            }
        };
        builder.body(body).map_err(ApiError::from_http)
    }
}

impl StoredObject {
    /// The strong tag of an object: its SHA-256, quoted.
    fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(self.sha256))
    }
}

impl Conditions {
    fn from_request(method: &Method, headers: &HeaderMap) -> Self {
        let header = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Self {
            range: header(header::RANGE),
            if_range: header(header::IF_RANGE),
            if_none_match: header(header::IF_NONE_MATCH),
            head: method == Method::HEAD,
        }
    }

    /// What to answer for `object`: the same when the store reads the range and after it.
    fn answer(&self, object: &StoredObject) -> Answer {
        // The tag is needed for conditional requests only (most are not).
        let etag = match self.if_none_match.is_some() || self.if_range.is_some() {
            true => object.etag(),
            false => String::new(),
        };
        if self
            .if_none_match
            .as_deref()
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            return Answer::NotModified;
        }
        let length = object.length;
        match RangeDecision::decide(self.range.as_deref(), self.if_range.as_deref(), &etag, length) {
            RangeDecision::Full => Answer::Send { range: 0..length, partial: false },
            RangeDecision::Partial(range) => Answer::Send { range, partial: true },
            RangeDecision::Unsatisfiable => Answer::Unsatisfiable,
        }
    }
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

//! TUF metadata over HTTPS: the files of the repository's `metadata/` directory. `timestamp.json` and `root.json`
//! change in place and must never be cached; every other file is written once under a versioned name.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri, header};

use crate::error::ApiError;
use crate::origin::IMMUTABLE;

/// `GET`/`HEAD /metadata/<file>`. The raw path is used (not a decoded one), since role file names are
/// percent-encoded on disk as in the URL.
pub async fn serve(
    State(dir): State<PathBuf>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::not_found("no such metadata file");
    let relative = uri.path().strip_prefix("/metadata/").ok_or_else(not_found)?;
    let safe = relative.split('/').all(|segment| {
        !segment.is_empty()
            && !segment.starts_with('.')
            && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b))
    });
    if !safe || relative.split('/').count() > 3 {
        return Err(not_found());
    }
    let bytes = match tokio::fs::read(dir.join(relative)).await {
        Ok(bytes) => bytes,
        Err(err) if matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::IsADirectory) => {
            return Err(not_found());
        }
        Err(err) => return Err(ApiError::internal(format!("metadata/{relative}: {err}"))),
    };
    let mutable = matches!(relative, "timestamp.json" | "root.json");
    let builder = Response::builder().header(header::CONTENT_TYPE, "application/json");
    let builder = if mutable {
        builder.header(header::CACHE_CONTROL, "no-store")
    } else {
        let etag = format!("\"{}\"", hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)));
        let matches = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
        let builder = builder.header(header::CACHE_CONTROL, IMMUTABLE).header(header::ETAG, &etag);
        if matches {
            return builder.status(StatusCode::NOT_MODIFIED).body(Body::empty()).map_err(ApiError::from_http);
        }
        builder
    };
    metrics::counter!("custody_metadata_bytes_served_total").increment(bytes.len() as u64);
    let builder = builder.header(header::CONTENT_LENGTH, bytes.len());
    let body = if method == Method::HEAD { Body::empty() } else { Body::from(bytes) };
    builder.body(body).map_err(ApiError::from_http)
}

//! Reading request bodies: a size limit, the media type, and strict JSON parsing whose errors name the field.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use custody_api::ErrorCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Reads a JSON body of at most `limit` bytes into `T`. A body over the limit is `413`, another media type `415`,
/// and bad JSON `400` naming the field (`events[2].time`).
pub async fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: Body, limit: usize) -> Result<T, ApiError> {
    let media_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("the body must be application/json, not {media_type:?}"),
        ));
    }
    let bytes = read_limited(headers, body, limit).await?;
    parse_json(&bytes)
}

/// A body over its limit is still read and thrown away up to this many bytes in all, so that a client that sent one
/// finishes writing and reads the `413` instead of a broken pipe (what nginx's lingering close does); a larger one
/// gets the `413` at once and the connection is closed under it.
const DISCARD_UP_TO: u64 = 16 << 20;

/// Reads a whole body of at most `limit` bytes (`413` beyond, checked on `Content-Length` first; nothing past the
/// limit is kept).
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut body = body;
    if let Some(length) = declared.filter(|length| *length > limit as u64) {
        if length <= DISCARD_UP_TO {
            discard(&mut body, 0).await;
        }
        return Err(ApiError::too_large(limit as u64));
    }
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|err| ApiError::bad_field(String::new(), format!("reading the body failed: {err}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() + data.len() > limit {
            discard(&mut body, (collected.len() + data.len()) as u64).await;
            return Err(ApiError::too_large(limit as u64));
        }
        collected.extend_from_slice(&data);
    }
    Ok(collected.freeze())
}

/// Reads and drops the rest of `body`, up to [`DISCARD_UP_TO`] bytes counting the `read` ones already read.
async fn discard(body: &mut Body, mut read: u64) {
    while read <= DISCARD_UP_TO {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len() as u64),
            _ => return,
        }
    }
}

/// Parses JSON into `T`; the error names the field at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = inner.to_string();
        // serde reports a missing field at the object that should hold it: name the field itself.
        let named = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next()).map(str::to_owned);
        let field = match (path.as_str(), named) {
            (".", Some(name)) => name,
            (".", None) => String::new(),
            (path, Some(name)) => format!("{path}.{name}"),
            (path, None) => path.to_owned(),
        };
        let text = if field.is_empty() { format!("invalid JSON: {message}") } else { format!("{field}: {message}") };
        ApiError::bad_field(field, text)
    })?;
    deserializer.end().map_err(|err| ApiError::bad_field(String::new(), format!("invalid JSON: {err}")))?;
    Ok(value)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use custody_api::device::{EventBatch, Inventory};

    use super::*;

    fn field_of<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> Option<String> {
        parse_json::<T>(json.as_bytes()).unwrap_err().body().field.clone()
    }

    #[test]
    fn errors_name_the_field() {
        let event = r#"{"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a6b", "time": "2025-06-10T12:00:00Z", "type": "reboot-pending",
            "update": {"id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1}}"#;
        let batch = |event: &str| format!(r#"{{"events": [{event}, {event}]}}"#);
        assert!(parse_json::<EventBatch>(batch(event).as_bytes()).is_ok());
        let bad_time = event.replace("2025-06-10T12:00:00Z", "yesterday");
        assert_eq!(
            field_of::<EventBatch>(&format!(r#"{{"events": [{event}, {bad_time}]}}"#)).unwrap(),
            "events[1].time"
        );
        let missing = event.replace(r#""type": "reboot-pending","#, "");
        assert_eq!(field_of::<EventBatch>(&batch(&missing)).unwrap(), "events[0].type");
        let extra = event.replace(r#""type""#, r#""colour": 1, "type""#);
        assert_eq!(field_of::<EventBatch>(&batch(&extra)).unwrap(), "events[0].colour");
        assert_eq!(field_of::<Inventory>("{}").unwrap(), "os_family");
        let revision = event.replace(r#""revision": 1"#, r#""revision": "one""#);
        assert_eq!(field_of::<EventBatch>(&batch(&revision)).unwrap(), "events[0].update.revision");
        assert_eq!(field_of::<Inventory>("not json"), None);
        let trailing = format!("{} x", batch(event));
        assert_eq!(parse_json::<EventBatch>(trailing.as_bytes()).unwrap_err().code(), ErrorCode::BadRequest);
    }

    #[test]
    fn bearer_tokens() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}

//! Fetching bytes with a hard length cap.

use std::future::Future;
use std::time::Duration;

/// Where metadata and targets come from. Implementations must never return more than `max_length` bytes.
pub trait Fetcher {
    /// Fetches `url`; `Ok(None)` when the server says it does not exist (404 or 403).
    fn fetch(&self, url: &str, max_length: u64) -> impl Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send;
}

/// A [`Fetcher`] over a local directory tree, for `file://` URLs: repositories on removable media or a shared file
/// system (devices without network access). A missing file is "not found"; the length cap holds as for HTTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileFetcher;

impl Fetcher for FileFetcher {
    async fn fetch(&self, url: &str, max_length: u64) -> Result<Option<Vec<u8>>, FetchError> {
        let io = |source| FetchError::File { url: url.to_owned(), source };
        let Some(path) = url.strip_prefix("file://") else {
            return Err(FetchError::Scheme { url: url.to_owned() });
        };
        let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        // Read in place with blocking calls, as `MetadataDir` writes: a local file is read in microseconds to a
        // millisecond or so, less than handing it to tokio's blocking pool costs (a thread to start on first use,
        // two wake-ups per file; tokio's `File` even hands each read of a growing buffer to the pool and back).
        let body = read_capped(std::path::Path::new(path.as_ref()), max_length).map_err(io)?;
        let Some(body) = body else { return Ok(None) };
        if body.len() as u64 > max_length {
            return Err(FetchError::TooLong { url: url.to_owned(), limit: max_length });
        }
        Ok(Some(body))
    }
}

/// The file at `path`, read up to one byte past `max_length` (to tell "exactly the cap" from "longer"); `None` if
/// it does not exist.
fn read_capped(path: &std::path::Path, max_length: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let limit = max_length.saturating_add(1);
    // The size is only a hint for the first allocation (the file may change while it is read); `take` is the cap.
    let hint = file.metadata().map_or(0, |m| m.len()).min(limit);
    let mut body = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(limit).read_to_end(&mut body)?;
    Ok(Some(body))
}

/// A failed fetch.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url} sent more than the allowed {limit} bytes")]
    TooLong { url: String, limit: u64 },
    #[error("GET {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot read {url}")]
    File {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: this fetcher reads file:// URLs only")]
    Scheme { url: String },
    #[error("GET {url} took longer than {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// A [`Fetcher`] over HTTP(S) with reqwest.
///
/// The client is made elsewhere (with the pinned TLS configuration for HTTPS); this adds the length cap, reading the
/// body chunk by chunk and stopping as soon as the cap is passed, and an overall deadline per request.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpFetcher {
    pub fn new(client: reqwest::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }
}

impl Fetcher for HttpFetcher {
    fn fetch(&self, url: &str, max_length: u64) -> impl Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send {
        let request = async move {
            let transport = |source| FetchError::Transport { url: url.to_owned(), source };
            let mut response = self.client.get(url).send().await.map_err(transport)?;
            let status = response.status().as_u16();
            if status == 404 || status == 403 {
                return Ok(None);
            }
            if !response.status().is_success() {
                return Err(FetchError::Status { url: url.to_owned(), status });
            }
            let too_long = || FetchError::TooLong { url: url.to_owned(), limit: max_length };
            if response.content_length().is_some_and(|len| len > max_length) {
                return Err(too_long());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if (body.len() + chunk.len()) as u64 > max_length {
                    return Err(too_long());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Some(body))
        };
        async move {
            tokio::time::timeout(self.timeout, request)
                .await
                .unwrap_or_else(|_| Err(FetchError::Timeout { url: url.to_owned(), timeout: self.timeout }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_fetcher_caps_length_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ten"), b"0123456789").unwrap();
        let url = |name: &str| format!("file://{}/{name}", dir.path().display());
        assert_eq!(FileFetcher.fetch(&url("ten"), 10).await.unwrap().unwrap(), b"0123456789");
        assert_eq!(FileFetcher.fetch(&url("ten"), 1000).await.unwrap().unwrap(), b"0123456789");
        assert!(matches!(FileFetcher.fetch(&url("ten"), 9).await, Err(FetchError::TooLong { limit: 9, .. })));
        assert!(FileFetcher.fetch(&url("absent"), 10).await.unwrap().is_none());
        assert!(matches!(FileFetcher.fetch(&url(""), 10).await, Err(FetchError::File { .. })));
        assert!(matches!(FileFetcher.fetch("http://example.invalid/x", 10).await, Err(FetchError::Scheme { .. })));
    }
}

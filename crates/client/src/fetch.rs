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
        let path = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let mut body = Vec::new();
        // Read one byte past the cap to tell "exactly the cap" from "longer".
        tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::AsyncReadExt::take(file, max_length + 1), &mut body)
            .await
            .map_err(io)?;
        if body.len() as u64 > max_length {
            return Err(FetchError::TooLong { url: url.to_owned(), limit: max_length });
        }
        Ok(Some(body))
    }
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

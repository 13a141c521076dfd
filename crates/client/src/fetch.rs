//! Fetching bytes with a hard length cap.

use std::future::Future;
use std::time::Duration;

/// Where metadata and targets come from. Implementations must never return more than `max_length` bytes.
pub trait Fetcher {
    /// Fetches `url`; `Ok(None)` when the server says it does not exist (404 or 403).
    fn fetch(&self, url: &str, max_length: u64) -> impl Future<Output = Result<Option<Vec<u8>>, FetchError>> + Send;
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

//! Content downloads: the target's bytes from the configured sources in order (`[content] sources`, then the origin),
//! resumed with HTTP `Range` after an interruption, written through the install engine's `ArtifactWriter`, which
//! checks intention and free space before the first byte, hashes while writing and alone makes a `VerifiedArtifact`.
//!
//! Per source, up to [`ATTEMPTS_PER_SOURCE`] attempts: an interrupted body (connection cut, idle timeout) is resumed
//! from the bytes already on disk with `Range: bytes=N-`; a `206` must start exactly at `N` (`Content-Range`), a `200`
//! restarts from zero. A `404`, `403` or `410`, another error status, a refused connection or a body past the signed
//! length moves on to the next source. When the complete file fails verification (a source serving other bytes than
//! the signed ones), the file is discarded and the next source starts from zero. When every source failed, the error
//! lists what each did.
//!
//! Time limits: `request_timeout` until the response headers, `idle_timeout` between two body chunks; there is no limit
//! on a whole transfer that keeps making progress. Plain-HTTP sources use custody-tls's `plain_http_client`;
//! `https://` sources use the pinned client, so they must present a custody certificate (the service itself).

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_api::device::DeliveryStats;
use custody_catalog::{DeviceInventory, UpdateEntry};
use custody_install::{ArtifactWriter, VerifiedArtifact};
use custody_tuf::TrustedTarget;
use tracing::{debug, info, warn};

use crate::Error;

/// Attempts per source before moving on to the next.
pub const ATTEMPTS_PER_SOURCE: u32 = 3;
/// Pause before retrying the same source.
const RETRY_DELAY: Duration = Duration::from_millis(300);

/// Fetches target content from an ordered list of sources.
#[derive(Debug, Clone)]
pub struct Downloader {
    plain: reqwest::Client,
    pinned: Option<reqwest::Client>,
    sources: Vec<String>,
    request_timeout: Duration,
    idle_timeout: Duration,
}

/// Progress of one download, reported after each chunk that moves it by at least 1 % (and at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub received: u64,
    pub total: u64,
    /// The base URL currently used.
    pub source: String,
}

/// What one download needs: the signed target and entry, the device (for the intention check), the staging
/// directory, and whether the repository names targets by hash (consistent snapshots).
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub target: &'a TrustedTarget,
    pub entry: &'a UpdateEntry,
    pub device: &'a DeviceInventory,
    pub staging_dir: &'a Path,
    pub consistent_snapshot: bool,
}

/// A verified download and where its bytes came from.
#[derive(Debug)]
pub struct Fetched {
    pub artifact: VerifiedArtifact,
    /// The bytes received by this fetch, from every attempt and source (all over HTTP): a download resumed from a
    /// partial file counts what it fetched now, one verified before counts nothing.
    pub delivery: DeliveryStats,
}

/// Why one attempt at one source failed.
#[derive(Debug)]
enum Attempt {
    /// The transfer stopped midway; what is on disk is kept and the same source is tried again (with `Range`).
    Interrupted(String),
    /// This source cannot deliver the file; go to the next one.
    SourceFailed(String),
    /// Not the source's fault: stop (disk full, intention check failed, ...).
    Fatal(Error),
}

impl Downloader {
    /// `sources` are base URLs ending in `/`; `pinned` serves `https://` sources (without it they are refused).
    pub fn new(
        plain: reqwest::Client,
        pinned: Option<reqwest::Client>,
        sources: Vec<String>,
        request_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self { plain, pinned, sources, request_timeout, idle_timeout }
    }

    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Downloads and verifies `job.target`, resuming a partial download left by an earlier run.
    pub async fn fetch(
        &self,
        job: Job<'_>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<VerifiedArtifact, Error> {
        Ok(self.fetch_counted(job, progress).await?.artifact)
    }

    /// [`Downloader::fetch`], also saying how many bytes it received.
    pub async fn fetch_counted(
        &self,
        job: Job<'_>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<Fetched, Error> {
        let name = job.file_name();
        let mut received = 0u64;
        let mut failures = Vec::new();
        for source in &self.sources {
            let url = format!("{source}{name}");
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut writer = ArtifactWriter::resume(job.staging_dir, job.target, job.entry, job.device)
                    .map_err(Error::from_install)?;
                let outcome = match writer.written() == job.target.file().length {
                    true => Ok(()),
                    false => self.transfer(&job, &url, source, &mut writer, &mut received, progress).await,
                };
                match outcome {
                    Ok(()) => match writer.finish() {
                        Ok(artifact) => {
                            info!(target = %job.target.path(), %url, received, "downloaded and verified");
                            return Ok(Fetched { artifact, delivery: DeliveryStats::http(received) });
                        }
                        Err(
                            e @ (custody_install::Error::HashMismatch { .. }
                            | custody_install::Error::LengthMismatch { .. }),
                        ) => {
                            warn!(%url, "content refused: {e}");
                            failures.push(format!("{url}: {e}"));
                            break;
                        }
                        Err(other) => return Err(Error::from_install(other)),
                    },
                    Err(Attempt::Fatal(e)) => return Err(e),
                    Err(Attempt::SourceFailed(why)) => {
                        debug!(%url, "source failed: {why}");
                        failures.push(format!("{url}: {why}"));
                        break;
                    }
                    Err(Attempt::Interrupted(why)) if attempt < ATTEMPTS_PER_SOURCE => {
                        debug!(%url, attempt, "interrupted, resuming: {why}");
                        tokio::time::sleep(RETRY_DELAY * attempt).await;
                    }
                    Err(Attempt::Interrupted(why)) => {
                        failures.push(format!("{url}: {why} (after {attempt} attempts)"));
                        break;
                    }
                }
            }
        }
        Err(Error::Download { path: job.target.path().to_owned(), failures })
    }

    /// One request: from `writer.written()` to the end, or until something fails. Adds the body bytes it receives
    /// to `received`.
    async fn transfer(
        &self,
        job: &Job<'_>,
        url: &str,
        source: &str,
        writer: &mut ArtifactWriter,
        received: &mut u64,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<(), Attempt> {
        let client = match url.starts_with("https://") {
            true => self.pinned.as_ref().ok_or_else(|| Attempt::SourceFailed("no pinned client for https".into()))?,
            false => &self.plain,
        };
        let offset = writer.written();
        let mut request = client.get(url);
        if offset > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let response = match tokio::time::timeout(self.request_timeout, request.send()).await {
            Err(_) => return Err(Attempt::Interrupted(format!("no response within {:?}", self.request_timeout))),
            Ok(Err(e)) if e.is_connect() => {
                return Err(Attempt::SourceFailed(format!("cannot connect: {}", crate::error_chain(&e))));
            }
            Ok(Err(e)) => return Err(Attempt::Interrupted(crate::error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        match status {
            206 if offset > 0 => {
                let range = response
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if !range.starts_with(&format!("bytes {offset}-")) {
                    return Err(Attempt::SourceFailed(format!(
                        "asked for bytes from {offset}, got Content-Range {range:?}"
                    )));
                }
            }
            200 if offset > 0 => {
                debug!(url, offset, "the server ignored Range; starting again from zero");
                *writer = ArtifactWriter::create(job.staging_dir, job.target, job.entry, job.device)
                    .map_err(|e| Attempt::Fatal(Error::from_install(e)))?;
            }
            200 => {}
            416 => {
                // What is on disk does not fit this file any more; start again.
                *writer = ArtifactWriter::create(job.staging_dir, job.target, job.entry, job.device)
                    .map_err(|e| Attempt::Fatal(Error::from_install(e)))?;
                return Err(Attempt::Interrupted("HTTP 416: range not satisfiable; restarting from zero".into()));
            }
            _ => return Err(Attempt::SourceFailed(format!("HTTP {status}"))),
        }
        let total = job.target.file().length;
        let step = (total / 100).max(64 * 1024);
        let mut reported = writer.written();
        let mut response = response;
        loop {
            let chunk = match tokio::time::timeout(self.idle_timeout, response.chunk()).await {
                Err(_) => return Err(Attempt::Interrupted(format!("no data for {:?}", self.idle_timeout))),
                Ok(Err(e)) => return Err(Attempt::Interrupted(crate::error_chain(&e))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => chunk,
            };
            *received = received.saturating_add(chunk.len() as u64);
            match writer.write(&chunk) {
                Ok(()) => {}
                Err(e @ custody_install::Error::TooLong { .. }) => return Err(Attempt::SourceFailed(e.to_string())),
                Err(e) => return Err(Attempt::Fatal(Error::from_install(e))),
            }
            let written = writer.written();
            if written - reported >= step || written == total {
                reported = written;
                progress(&Progress { received: written, total, source: source.to_owned() });
            }
        }
        if writer.written() < total {
            return Err(Attempt::Interrupted(format!("the body ended after {} of {total} bytes", writer.written())));
        }
        Ok(())
    }
}

impl Job<'_> {
    /// The file name under a source's base URL: `dir/<sha256>.name` with consistent snapshots, else the path.
    pub(crate) fn file_name(&self) -> String {
        target_file_name(self.target, self.consistent_snapshot)
    }

    /// Where the partial download of this job lives (the install engine's naming: `<sha256>.download`).
    pub fn partial_path(&self) -> PathBuf {
        let sha256 = self.target.file().sha256().unwrap_or_default().to_ascii_lowercase();
        self.staging_dir.join(format!("{sha256}.download"))
    }

    /// Whether the whole file is on disk (it is verified again, once, when it is installed).
    pub fn partial_complete(&self) -> bool {
        std::fs::metadata(self.partial_path()).is_ok_and(|m| m.len() == self.target.file().length)
    }
}

/// The file name of `target` under a source's base URL: `dir/<sha256>.name` with consistent snapshots, else the path.
pub(crate) fn target_file_name(target: &TrustedTarget, consistent_snapshot: bool) -> String {
    match (consistent_snapshot, target.file().sha256()) {
        (true, Some(sha256)) => match target.path().rsplit_once('/') {
            Some((dir, name)) => format!("{dir}/{sha256}.{name}"),
            None => format!("{sha256}.{}", target.path()),
        },
        _ => target.path().to_owned(),
    }
}

//! The custody device agent: it scans for the updates this device needs, decides whether and when to download and
//! install them (custody-policy), downloads them from CDNs or the origin with resume, has the install engine verify
//! and install them, and reports every state change to the service. It runs as a daemon (`custody agent run`) with a
//! schedule and a local API on a Unix socket, or one command at a time from the CLI.
//!
//! Modules, in the order of a scan:
//! - [`config`]: the device configuration (`[service]`, `[tls]`, `[content]`, `[proxy]`, `[agent]`, `[policy]`);
//! - [`state`]: the state directory and its lock;
//! - [`enroll`]: the device's identity from the service (a client certificate from a CSR, or a token);
//! - [`inventory`]: what the device is (os-release, `uname -m`, hardware ids, installed products);
//! - [`evaluate`]: sans-I/O: trusted targets and inventory in, needed updates (and reasons for the others) out;
//! - [`download`]: sources in order, `Range` resume, timeouts, progress; bytes go into the install engine's
//!   `ArtifactWriter`, which alone makes a `VerifiedArtifact`;
//! - [`p2p`]: the `[p2p]` section and peer-to-peer downloads through custody-peer (pieces from peers and HTTP,
//!   each verified against the signed piece tree), the peer listener and discovery;
//! - [`cache_index`]: a cache server's index of the signed catalog (content id → signed target), through which it
//!   fetches for its group what the group's devices ask for;
//! - [`report`]: the on-disk event queue and its delivery to the service;
//! - [`agent`]: the operations (scan, download, install, hold, rollback, status) on one device;
//! - [`local_api`]: the newline-delimited JSON protocol on the Unix socket, its server (peer credentials checked
//!   against an allow-list) and its client;
//! - [`daemon`]: the schedule, the local API and the work queue together.

pub mod agent;
pub mod cache_index;
pub mod config;
pub mod daemon;
pub mod download;
pub mod enroll;
pub mod evaluate;
pub mod inventory;
pub mod local_api;
pub mod p2p;
pub mod report;
pub mod state;

use std::path::{Path, PathBuf};

pub use agent::{Agent, AgentStatus, InstallOutcome, ScanOutcome};
pub use config::AgentConfig;

/// Everything that can go wrong in the agent. Each variant names what it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {detail}", path.display())]
    Config { path: PathBuf, detail: String },

    #[error("{}: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },

    #[error("inventory: {source_name}: {detail}")]
    Inventory { source_name: String, detail: String },

    #[error("TLS configuration")]
    Tls(#[from] custody_tls::Error),

    #[error("signed metadata could not be refreshed")]
    Metadata(#[from] custody_client::Error),

    #[error("no source delivered {path}: {}", failures.join("; "))]
    Download { path: String, failures: Vec<String> },

    #[error(transparent)]
    Install(Box<custody_install::Error>),

    #[error("the service at {url} could not be reached: {detail}")]
    Service { url: String, detail: String },

    #[error("no update {0} is needed on this device (run a scan, or see `custody agent list --all`)")]
    UnknownUpdate(String),

    #[error("{what} is held; `custody agent unhold` releases it")]
    Held { what: String },

    #[error("the local API at {}: {detail}", socket.display())]
    LocalApi { socket: PathBuf, detail: String },

    #[error("{0}")]
    Refused(String),

    /// The daemon answered a local API request with an error.
    #[error("the agent answered {code}: {message}")]
    Remote { code: String, message: String },

    #[error("another custody agent holds the state directory {}; talk to it through its socket", .0.display())]
    Busy(PathBuf),
}

impl Error {
    /// A closure mapping an `io::Error` to [`Error::Io`] for `action` on `path`.
    pub(crate) fn io(action: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.as_ref().to_owned();
        move |source| Error::Io { action, path, source }
    }

    pub(crate) fn from_install(error: custody_install::Error) -> Self {
        Self::Install(Box::new(error))
    }

    /// The errno of the OS error that caused this, else 1: the `code` of a failure event.
    pub fn errno_or_one(&self) -> i64 {
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = next {
            if let Some(errno) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) {
                return i64::from(errno);
            }
            next = err.source();
        }
        1
    }

    /// A stable code for reports (custody-api's `EventError.code`) and the local API.
    pub fn code(&self) -> &str {
        use custody_install::Error as I;
        match self {
            Self::Io { .. } => "io",
            Self::Config { .. } => "config",
            Self::Corrupt { .. } => "corrupt-state",
            Self::Inventory { .. } => "inventory",
            Self::Tls(_) => "tls",
            Self::Metadata(_) => "metadata",
            Self::Download { .. } => "download",
            Self::Install(error) => match **error {
                I::HashMismatch { .. } => "hash-mismatch",
                I::LengthMismatch { .. } | I::TooLong { .. } => "length-mismatch",
                I::InsufficientSpace { .. } => "no-space",
                I::NotApplicable { .. } => "not-applicable",
                I::PrerequisitesMissing { .. } => "prerequisites-missing",
                I::HealthCheckFailed { .. } => "health-check-failed",
                _ => "install",
            },
            Self::Service { .. } => "service-unreachable",
            Self::UnknownUpdate(_) => "unknown-update",
            Self::Held { .. } => "held",
            Self::LocalApi { .. } => "local-api",
            Self::Refused(_) => "refused",
            Self::Remote { code, .. } => code,
            Self::Busy(_) => "busy",
        }
    }
}

/// An error and its causes on one line (reqwest and hyper keep the interesting part in `source()`).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

//! The service's configuration file (TOML). Every key has a default, so `custody server --data DIR` runs without
//! one; docs/configuration.md, "Service", lists them. Relative paths are relative to the data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_repo::Expiry;
use serde::Deserialize;

use crate::Error;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub devices: DevicesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub content: ContentConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub init: InitConfig,
}

/// `[listen]`: where the two listeners bind, and the URLs clients use.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Metadata, device API, admin API, metrics.
    #[serde(default = "ListenConfig::default_https")]
    pub https: SocketAddr,
    /// Content, certificates and CRLs.
    #[serde(default = "ListenConfig::default_http")]
    pub http: SocketAddr,
    /// The HTTPS URL devices and admins use (written into `client/custody.toml`); default from the address.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The content URL devices use; default from the address.
    #[serde(default)]
    pub content_url: Option<String>,
}

/// `[tls]`: the server certificate (hot-reloaded when the files change).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: server certificate, then the service intermediate.
    #[serde(default = "TlsConfig::default_chain")]
    pub cert_chain: PathBuf,
    #[serde(default = "TlsConfig::default_key")]
    pub key: PathBuf,
    /// How often the files are checked for changes.
    #[serde(default = "TlsConfig::default_reload")]
    pub reload_interval: Expiry,
    /// Renew the server certificate from the service intermediate (when its key is in `pki/`) once this much of its
    /// lifetime is left.
    #[serde(default = "TlsConfig::default_renew_before")]
    pub renew_before: Expiry,
}

/// `[repository]`: re-signing snapshot and timestamp.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// Re-sign a role once this fraction of its validity period has passed (0.1 to 0.9).
    #[serde(default = "RepositoryConfig::default_refresh_at")]
    pub refresh_at: f64,
    /// The longest time between two checks.
    #[serde(default = "RepositoryConfig::default_check_interval")]
    pub check_interval: Expiry,
}

/// `[database]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://...` or `postgres://...`; default: SQLite in `DATA/custody.db`.
    #[serde(default)]
    pub url: Option<String>,
}

/// How devices identify themselves on the device API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityMode {
    /// A client certificate from the device intermediate; the TLS listener refuses device routes without one.
    #[default]
    Certificate,
    /// A client certificate, or a device token for devices that enrolled without a CSR.
    CertificateOrToken,
}

/// `[devices]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    #[serde(default)]
    pub identity: IdentityMode,
    /// Lifetime of device certificates, in days.
    #[serde(default = "DevicesConfig::default_certificate_days")]
    pub certificate_days: u32,
    /// A device seen within this period counts as active (`custody_active_devices`).
    #[serde(default = "DevicesConfig::default_active_window")]
    pub active_window: Expiry,
}

/// `[limits]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections on each listener; at the limit it stops accepting, so more wait in the kernel's backlog.
    #[serde(default = "LimitsConfig::default_max_connections")]
    pub max_connections: usize,
    /// Requests handled at once on the HTTPS listener; more get `429`.
    #[serde(default = "LimitsConfig::default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Deadline of an API or metadata request (`408` after it).
    #[serde(default = "LimitsConfig::default_request_timeout")]
    pub request_timeout: Expiry,
    /// Deadline of a content upload.
    #[serde(default = "LimitsConfig::default_upload_timeout")]
    pub upload_timeout: Expiry,
    /// Time a client has to send a request's headers, from the connection being ready (after the TLS handshake) or
    /// from the previous response (both listeners).
    #[serde(default = "LimitsConfig::default_header_timeout")]
    pub header_timeout: Expiry,
    /// Time a client has to complete the TLS handshake (HTTPS listener).
    #[serde(default = "LimitsConfig::default_handshake_timeout")]
    pub handshake_timeout: Expiry,
    /// A connection with no request in progress is closed this long after its last response (both listeners); at
    /// most `header_timeout`, which hyper also runs while a connection waits for its next request.
    #[serde(default = "LimitsConfig::default_keep_alive_timeout")]
    pub keep_alive_timeout: Expiry,
    /// Largest content upload, in bytes.
    #[serde(default = "LimitsConfig::default_max_upload_bytes")]
    pub max_upload_bytes: u64,
    /// How long shutdown waits for requests in progress.
    #[serde(default = "LimitsConfig::default_shutdown_timeout")]
    pub shutdown_timeout: Expiry,
}

/// `[content]`: the content origin (plain HTTP listener).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentConfig {
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

/// `[content.rate_limit]`: bandwidth limits in bytes per second; 0 (the default) is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Each connection (one response at a time on HTTP/1.1).
    #[serde(default)]
    pub per_connection: u64,
    /// All content responses together.
    #[serde(default)]
    pub total: u64,
}

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Require an admin token (any scope) on `/metrics`.
    #[serde(default)]
    pub require_token: bool,
}

/// `[init]`: used only when the data directory is created.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// Extra DNS names and IP addresses for the server certificate (localhost, 127.0.0.1, ::1 and the host name are
    /// always included).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Validity of newly signed metadata, as in `repo.toml` (docs/repository.md).
    #[serde(default)]
    pub expiry: InitExpiry,
}

/// `[init.expiry]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitExpiry {
    pub root: Option<Expiry>,
    pub targets: Option<Expiry>,
    pub delegated: Option<Expiry>,
    pub snapshot: Option<Expiry>,
    pub timestamp: Option<Expiry>,
}

impl ServiceConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        Self::from_toml(&text).map_err(|detail| Error::Config { path: path.to_owned(), detail })
    }

    /// Parses and checks a configuration.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|err| err.to_string())?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !(0.1..=0.9).contains(&self.repository.refresh_at) {
            return Err(format!(
                "repository.refresh_at must be between 0.1 and 0.9, not {}",
                self.repository.refresh_at
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_concurrent_requests == 0 {
            return Err("limits.max_connections and limits.max_concurrent_requests must be at least 1".into());
        }
        let limits = &self.limits;
        if limits.keep_alive_timeout.seconds() > limits.header_timeout.seconds() {
            return Err(format!(
                "limits.keep_alive_timeout ({}s) cannot be longer than limits.header_timeout ({}s): the header \
                 timeout also runs while a connection waits for its next request, so it would close idle connections \
                 first; raise header_timeout too, or lower keep_alive_timeout",
                limits.keep_alive_timeout.seconds(),
                limits.header_timeout.seconds()
            ));
        }
        if self.devices.certificate_days == 0 {
            return Err("devices.certificate_days must be at least 1".into());
        }
        for url in [&self.listen.public_url, &self.listen.content_url].into_iter().flatten() {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{url:?} is not an http(s) URL"));
            }
        }
        Ok(())
    }
}

/// A configured period as a `Duration`.
pub fn duration(period: Expiry) -> Duration {
    Duration::from_secs(period.seconds())
}

impl LimitsConfig {
    /// The bounds on each listener's connections.
    pub fn connections(&self) -> custody_tls::server::ConnectionLimits {
        custody_tls::server::ConnectionLimits {
            max_connections: self.max_connections,
            handshake_timeout: duration(self.handshake_timeout),
            header_timeout: duration(self.header_timeout),
            keep_alive_timeout: duration(self.keep_alive_timeout),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self { https: Self::default_https(), http: Self::default_http(), public_url: None, content_url: None }
    }
}

impl ListenConfig {
    fn default_https() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8443))
    }

    fn default_http() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8080))
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_chain: Self::default_chain(),
            key: Self::default_key(),
            reload_interval: Self::default_reload(),
            renew_before: Self::default_renew_before(),
        }
    }
}

impl TlsConfig {
    fn default_chain() -> PathBuf {
        PathBuf::from("tls/chain.pem")
    }

    fn default_key() -> PathBuf {
        PathBuf::from("tls/key.pem")
    }

    fn default_reload() -> Expiry {
        Expiry(5)
    }

    fn default_renew_before() -> Expiry {
        Expiry(30 * 86_400)
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        Self { refresh_at: Self::default_refresh_at(), check_interval: Self::default_check_interval() }
    }
}

impl RepositoryConfig {
    fn default_refresh_at() -> f64 {
        0.5
    }

    fn default_check_interval() -> Expiry {
        Expiry(600)
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            identity: IdentityMode::default(),
            certificate_days: Self::default_certificate_days(),
            active_window: Self::default_active_window(),
        }
    }
}

impl DevicesConfig {
    fn default_certificate_days() -> u32 {
        custody_pki::layout::DEVICE_DAYS
    }

    fn default_active_window() -> Expiry {
        Expiry(86_400)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: Self::default_max_connections(),
            max_concurrent_requests: Self::default_max_concurrent_requests(),
            request_timeout: Self::default_request_timeout(),
            upload_timeout: Self::default_upload_timeout(),
            header_timeout: Self::default_header_timeout(),
            handshake_timeout: Self::default_handshake_timeout(),
            keep_alive_timeout: Self::default_keep_alive_timeout(),
            max_upload_bytes: Self::default_max_upload_bytes(),
            shutdown_timeout: Self::default_shutdown_timeout(),
        }
    }
}

impl LimitsConfig {
    fn default_max_connections() -> usize {
        4096
    }

    fn default_max_concurrent_requests() -> usize {
        512
    }

    fn default_request_timeout() -> Expiry {
        Expiry(30)
    }

    fn default_upload_timeout() -> Expiry {
        Expiry(3600)
    }

    fn default_header_timeout() -> Expiry {
        Expiry(10)
    }

    fn default_handshake_timeout() -> Expiry {
        Expiry(10)
    }

    fn default_keep_alive_timeout() -> Expiry {
        Expiry(5)
    }

    fn default_max_upload_bytes() -> u64 {
        4 << 30
    }

    fn default_shutdown_timeout() -> Expiry {
        Expiry(30)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let config = ServiceConfig::from_toml("").unwrap();
        assert_eq!(config.listen.https.port(), 8443);
        assert_eq!(config.listen.http.port(), 8080);
        assert_eq!(config.devices.identity, IdentityMode::Certificate);
        assert_eq!(config.limits.request_timeout, Expiry(30));
    }

    #[test]
    fn values_are_checked_and_typos_refused() {
        let config = ServiceConfig::from_toml(
            "[listen]\nhttps = \"127.0.0.1:0\"\n[devices]\nidentity = \"certificate-or-token\"\n\
             [init.expiry]\ntimestamp = \"4s\"\n",
        )
        .unwrap();
        assert_eq!(config.devices.identity, IdentityMode::CertificateOrToken);
        assert_eq!(config.init.expiry.timestamp, Some(Expiry(4)));
        assert!(ServiceConfig::from_toml("[listen]\nhtps = \"x\"\n").unwrap_err().contains("unknown field"));
        assert!(ServiceConfig::from_toml("[repository]\nrefresh_at = 1.5\n").unwrap_err().contains("refresh_at"));
        assert!(ServiceConfig::from_toml("[limits]\nrequest_timeout = \"soon\"\n").is_err());
    }

    #[test]
    fn connection_limits_and_rate_limits() {
        let defaults = ServiceConfig::from_toml("").unwrap();
        assert_eq!(defaults.content.rate_limit, RateLimitConfig { per_connection: 0, total: 0 }, "off by default");
        let connections = defaults.limits.connections();
        assert_eq!(connections.max_connections, 4096);
        assert_eq!(connections.keep_alive_timeout, Duration::from_secs(5));
        let config = ServiceConfig::from_toml(
            "[limits]\nmax_connections = 2\nheader_timeout = \"2s\"\nkeep_alive_timeout = \"1s\"\n\
             handshake_timeout = \"3s\"\n[content.rate_limit]\nper_connection = 1048576\n",
        )
        .unwrap();
        assert_eq!(config.limits.connections().handshake_timeout, Duration::from_secs(3));
        assert_eq!(config.content.rate_limit, RateLimitConfig { per_connection: 1 << 20, total: 0 });
        let err = ServiceConfig::from_toml("[limits]\nkeep_alive_timeout = \"75s\"\n").unwrap_err();
        assert!(err.contains("keep_alive_timeout (75s) cannot be longer than limits.header_timeout (10s)"), "{err}");
        assert!(ServiceConfig::from_toml("[limits]\nheader_timeout = \"0s\"\n").is_err(), "periods are at least 1s");
        assert!(ServiceConfig::from_toml("[content]\nrate = 5\n").unwrap_err().contains("unknown field"));
    }
}

//! The transport part of a device or relay configuration file (TOML), and the endpoints it makes the machine contact.
//! docs/configuration.md describes the format:
//!
//! ```toml
//! role = "device"                      # or "relay" (then [service] is the upstream)
//! [service]
//! url = "https://updates.example.com:8443"
//! [tls]
//! roots = ["root.pem"]                 # custody root CA(s); relative paths are relative to this file
//! pins = ["<64 hex digits>"]           # SPKI SHA-256 of the service's issuing CA (several during a rotation)
//! crls = ["root-crl.pem", "service-crl.pem"]
//! client_cert = "device-chain.pem"     # optional, for mutual TLS
//! client_key = "device-key.pem"
//! [content]
//! sources = ["http://cdn.example.com"]
//! [proxy]
//! url = "http://proxy.corp.example:3128"   # optional; else the process environment, unless from_environment = false
//! no_proxy = ["localhost"]
//! ```
//!
//! Other sections of the same file belong to other parts of custody and are ignored here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, ProxySettings, Result, SpkiPin, TlsClientConfig};

/// The transport sections of a configuration file.
#[derive(Clone, Debug, Deserialize)]
pub struct TransportConfig {
    #[serde(default)]
    pub role: Role,
    pub service: UrlSection,
    /// The admin API a CLI talks to, if different from the service.
    #[serde(default)]
    pub admin: Option<UrlSection>,
    #[serde(default)]
    pub tls: Option<TlsSection>,
    #[serde(default)]
    pub content: ContentSection,
    #[serde(default)]
    pub proxy: ProxySection,
    /// Directory relative paths are resolved against (the configuration file's).
    #[serde(skip)]
    base_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Device,
    Relay,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSection {
    pub url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub roots: Vec<PathBuf>,
    pub pins: Vec<SpkiPin>,
    pub crls: Vec<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentSection {
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub no_proxy: Vec<String>,
    /// Use the process's own environment (`https_proxy`, ...) when `url` is not set.
    #[serde(default = "default_true")]
    pub from_environment: bool,
}

/// A host and port the machine contacts, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub scheme: String,
    /// `metadata`, `upstream-metadata` (a relay's), `admin`, `content` or `proxy`.
    pub purpose: String,
    /// Whether the connection is certificate-pinned: a TLS-inspecting proxy must pass it through untouched.
    pub pinned: bool,
    /// `direct`, or the proxy URL the connection goes through.
    pub route: String,
}

/// The JSON form of `custody endpoints --json`: `{"endpoints": [...]}`.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointList {
    pub endpoints: Vec<Endpoint>,
}

impl TransportConfig {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        Self::from_toml(&text, &base_dir).map_err(|err| match err {
            Error::Config { detail, .. } => Error::Config { path: path.to_owned(), detail },
            other => other,
        })
    }

    /// Parses a configuration; relative paths will be resolved against `base_dir`.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Self> {
        let mut config: Self =
            toml::from_str(text).map_err(|err| Error::Config { path: PathBuf::new(), detail: err.to_string() })?;
        config.base_dir = base_dir.to_owned();
        Ok(config)
    }

    /// The proxy settings: the `[proxy]` section, else `env` (the process environment) if allowed; the section's
    /// `no_proxy` entries apply either way.
    pub fn proxy_settings(&self, env: impl FnOnce() -> Result<ProxySettings>) -> Result<ProxySettings> {
        match &self.proxy.url {
            Some(url) => ProxySettings::all(url, &self.proxy.no_proxy),
            None if self.proxy.from_environment => {
                let mut settings = env()?;
                settings.no_proxy.extend(self.proxy.no_proxy.iter().cloned());
                Ok(settings)
            }
            None => Ok(ProxySettings::direct()),
        }
    }

    /// Every endpoint the machine contacts, in configuration order, each once.
    pub fn endpoints(&self, proxy: &ProxySettings) -> Result<Vec<Endpoint>> {
        let metadata = match self.role {
            Role::Device => "metadata",
            Role::Relay => "upstream-metadata",
        };
        let mut wanted: Vec<(&str, &str, bool)> = vec![(self.service.url.as_str(), metadata, true)];
        if let Some(admin) = &self.admin {
            wanted.push((admin.url.as_str(), "admin", true));
        }
        wanted.extend(self.content.sources.iter().map(|url| (url.as_str(), "content", false)));
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (url, purpose, pinned) in wanted {
            let parsed = parse_url(url, if pinned { &["https"] } else { &["https", "http"] })?;
            let route = proxy.proxy_for(&parsed.scheme, &parsed.host).unwrap_or("direct").to_owned();
            let endpoint = Endpoint {
                host: parsed.host,
                port: parsed.port,
                scheme: parsed.scheme,
                purpose: purpose.to_owned(),
                pinned,
                route,
            };
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        let mut proxies: Vec<&str> = endpoints.iter().map(|e| e.route.as_str()).filter(|r| *r != "direct").collect();
        proxies.dedup();
        let proxy_endpoints = proxies
            .into_iter()
            .map(|url| {
                let parsed = parse_url(url, &["http"])?;
                Ok(Endpoint {
                    host: parsed.host,
                    port: parsed.port,
                    scheme: parsed.scheme,
                    purpose: "proxy".to_owned(),
                    pinned: false,
                    route: "direct".to_owned(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        for endpoint in proxy_endpoints {
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        Ok(endpoints)
    }

    /// The pinned TLS client configuration of the `[tls]` section.
    pub fn tls_client(&self) -> Result<TlsClientConfig> {
        let tls = self.tls.as_ref().ok_or(Error::Missing("[tls] section", "roots, pins and crls are required"))?;
        let mut builder = TlsClientConfig::builder();
        for root in &tls.roots {
            builder = builder.roots_pem_file(&self.base_dir.join(root))?;
        }
        for crl in &tls.crls {
            builder = builder.crls_pem_file(&self.base_dir.join(crl))?;
        }
        for pin in &tls.pins {
            builder = builder.pin(*pin);
        }
        builder = match (&tls.client_cert, &tls.client_key) {
            (Some(cert), Some(key)) => {
                builder.client_identity_pem_files(&self.base_dir.join(cert), &self.base_dir.join(key))?
            }
            (None, None) => builder,
            _ => return Err(Error::Missing("client_cert or client_key", "set both, or neither")),
        };
        builder.build()
    }
}

struct ParsedUrl {
    scheme: String,
    host: String,
    port: u16,
}

fn parse_url(url: &str, schemes: &[&str]) -> Result<ParsedUrl> {
    let bad = |reason: String| Error::Url { url: url.to_owned(), reason };
    let parsed = reqwest::Url::parse(url).map_err(|err| bad(err.to_string()))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(bad(format!("the scheme must be {}", schemes.join(" or "))));
    }
    let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("no host".into()))?;
    let port = parsed.port_or_known_default().ok_or_else(|| bad("no port".into()))?;
    Ok(ParsedUrl { scheme: parsed.scheme().to_owned(), host: host.to_owned(), port })
}

fn default_true() -> bool {
    true
}

impl Default for ProxySection {
    fn default() -> Self {
        Self { url: None, no_proxy: Vec::new(), from_environment: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        role = "relay"
        [service]
        url = "https://updates.example.com:8443/api"
        [admin]
        url = "https://admin.example.com"
        [content]
        sources = ["http://cdn.example.com", "https://mirror.example.net:9443/x", "http://cdn.example.com/other"]
        [proxy]
        url = "http://proxy.corp.example:3128"
        no_proxy = ["mirror.example.net"]
        [agent]
        something_else = 1
    "#;

    #[test]
    fn lists_endpoints_with_routes() {
        let config = TransportConfig::from_toml(CONFIG, Path::new("/etc/custody")).unwrap();
        let proxy = config.proxy_settings(|| panic!("the environment must not be read")).unwrap();
        let endpoints = config.endpoints(&proxy).unwrap();
        let summary: Vec<String> =
            endpoints.iter().map(|e| format!("{}:{} {} {} {}", e.host, e.port, e.purpose, e.pinned, e.route)).collect();
        assert_eq!(
            summary,
            [
                "updates.example.com:8443 upstream-metadata true http://proxy.corp.example:3128",
                "admin.example.com:443 admin true http://proxy.corp.example:3128",
                "cdn.example.com:80 content false http://proxy.corp.example:3128",
                "mirror.example.net:9443 content false direct",
                "proxy.corp.example:3128 proxy false direct",
            ]
        );
    }

    #[test]
    fn proxy_from_environment_only_when_allowed() {
        let base = "[service]\nurl = \"https://s.example\"\n";
        let env = || ProxySettings::all("http://envproxy:1", &[]);
        let config = TransportConfig::from_toml(base, Path::new(".")).unwrap();
        assert_eq!(config.proxy_settings(env).unwrap().https.as_deref(), Some("http://envproxy:1"));
        let config =
            TransportConfig::from_toml(&format!("{base}[proxy]\nno_proxy = [\"s.example\"]\n"), Path::new("."));
        let settings = config.unwrap().proxy_settings(env).unwrap();
        assert_eq!(settings.proxy_for("https", "s.example"), None);
        assert_eq!(settings.proxy_for("https", "t.example"), Some("http://envproxy:1"));
        let config = TransportConfig::from_toml(&format!("{base}[proxy]\nfrom_environment = false\n"), Path::new("."));
        assert_eq!(config.unwrap().proxy_settings(env).unwrap(), ProxySettings::direct());
    }

    #[test]
    fn refuses_bad_configurations() {
        let plain = TransportConfig::from_toml("[service]\nurl = \"http://s.example\"\n", Path::new(".")).unwrap();
        assert!(matches!(plain.endpoints(&ProxySettings::direct()), Err(Error::Url { .. })));
        assert!(TransportConfig::from_toml("[service]\nurl = \"https://s\"\ntypo = 1\n", Path::new(".")).is_err());
        let bad_pin = "[service]\nurl = \"https://s\"\n[tls]\nroots = []\ncrls = []\npins = [\"abc\"]\n";
        assert!(TransportConfig::from_toml(bad_pin, Path::new(".")).is_err());
        let no_tls = TransportConfig::from_toml("[service]\nurl = \"https://s\"\n", Path::new(".")).unwrap();
        assert!(matches!(no_tls.tls_client(), Err(Error::Missing(..))));
    }
}

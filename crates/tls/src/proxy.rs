//! Which HTTP proxy a connection goes through.
//!
//! A pinned connection passes through an HTTP CONNECT proxy untouched: the proxy relays bytes and the TLS session is
//! end to end. A TLS-*intercepting* proxy cannot present a certificate on a pinned path, so it is refused (see
//! [`crate::Error::PinMismatch`]).
//!
//! Sources, in order: the `[proxy]` section of the configuration file, else (unless `from_environment = false`) the
//! environment **of the process itself**: `https_proxy`/`HTTPS_PROXY` for https URLs, `http_proxy` (lower case only,
//! as curl does, because `HTTP_PROXY` can be set from a request header in CGI-like contexts) for http URLs,
//! `no_proxy`/`NO_PROXY` for exceptions. The agent daemon therefore uses only what its service manager gives it
//! (the system-wide unit or `/etc` configuration): it never reads a user's environment, profile or desktop proxy
//! settings, which a local user could point at a proxy of their own (the lesson of CVE-2020-1013, where Windows
//! Update honoured a user-configured proxy).

use crate::{Error, Result};

/// The proxy decision of a client: the proxies, if any, and the hosts that bypass them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy for `https://` URLs (an `http://host:port` proxy that speaks CONNECT).
    pub https: Option<String>,
    /// Proxy for `http://` URLs.
    pub http: Option<String>,
    /// Hosts reached directly: `*`, a host name (which also matches its subdomains; a leading `.` is allowed) or an
    /// IP address.
    pub no_proxy: Vec<String>,
}

impl ProxySettings {
    /// No proxy at all.
    pub fn direct() -> Self {
        Self::default()
    }

    /// One proxy for every URL, with exceptions.
    pub fn all(url: &str, no_proxy: &[String]) -> Result<Self> {
        validate(url)?;
        Ok(Self { https: Some(url.to_owned()), http: Some(url.to_owned()), no_proxy: no_proxy.to_vec() })
    }

    /// Settings from environment variables (pass `std::env::vars()` for the process's own environment).
    pub fn from_env_vars<K: AsRef<str>, V: AsRef<str>>(vars: impl IntoIterator<Item = (K, V)>) -> Result<Self> {
        let mut found = std::collections::HashMap::new();
        for (key, value) in vars {
            let value = value.as_ref().trim();
            if !value.is_empty() {
                found.insert(key.as_ref().to_owned(), value.to_owned());
            }
        }
        let pick = |names: &[&str]| names.iter().find_map(|name| found.get(*name).cloned());
        let https = pick(&["https_proxy", "HTTPS_PROXY"]);
        let http = pick(&["http_proxy"]);
        for url in https.iter().chain(http.iter()) {
            validate(url)?;
        }
        let no_proxy = pick(&["no_proxy", "NO_PROXY"])
            .map(|list| list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        Ok(Self { https, http, no_proxy })
    }

    /// Settings from this process's environment. For the agent daemon that is the environment its service manager
    /// set, which is system-wide configuration (see the module documentation).
    pub fn from_process_env() -> Result<Self> {
        Self::from_env_vars(std::env::vars())
    }

    /// The proxy a request to `scheme://host` goes through, if any.
    pub fn proxy_for(&self, scheme: &str, host: &str) -> Option<&str> {
        let proxy = match scheme {
            "https" => self.https.as_deref(),
            "http" => self.http.as_deref(),
            _ => None,
        }?;
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let bypass = self.no_proxy.iter().any(|entry| {
            let entry = entry.trim_start_matches('.').trim_end_matches('.').to_ascii_lowercase();
            entry == "*" || host == entry || host.ends_with(&format!(".{entry}"))
        });
        if bypass { None } else { Some(proxy) }
    }

    /// Installs these settings on a reqwest client builder. The builder's own proxy discovery (which would read the
    /// environment behind our back) is switched off; [`ProxySettings::proxy_for`] alone decides.
    pub(crate) fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let builder = builder.no_proxy();
        if self.https.is_none() && self.http.is_none() {
            return Ok(builder);
        }
        let settings = self.clone();
        let proxy = reqwest::Proxy::custom(move |url: &reqwest::Url| {
            let proxy = settings.proxy_for(url.scheme(), url.host_str()?)?;
            reqwest::Url::parse(proxy).ok()
        });
        Ok(builder.proxy(proxy))
    }
}

/// A proxy must be `http://host[:port]`: CONNECT over a plain connection to the proxy. (A TLS connection to the proxy
/// itself would have to be verified too, and custody's verifier only accepts custody servers.)
fn validate(url: &str) -> Result<()> {
    let bad = |reason| Err(Error::Proxy { url: url.to_owned(), reason });
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("not a URL; expected http://host:port");
    };
    if parsed.scheme() != "http" {
        return bad("only http:// proxies (HTTP CONNECT) are supported");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return bad("no host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_rules() {
        let env = [
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", "http://httpoxy:1"),
            ("NO_PROXY", " localhost, .corp.example ,,10.0.0.1"),
        ];
        let settings = ProxySettings::from_env_vars(env).unwrap();
        assert_eq!(settings.https.as_deref(), Some("http://lower:3128"));
        assert_eq!(settings.http, None, "upper-case HTTP_PROXY is ignored");
        assert_eq!(settings.no_proxy, ["localhost", ".corp.example", "10.0.0.1"]);
        assert_eq!(settings.proxy_for("https", "updates.example"), Some("http://lower:3128"));
        assert_eq!(settings.proxy_for("https", "LOCALHOST"), None);
        assert_eq!(settings.proxy_for("https", "a.corp.example"), None);
        assert_eq!(settings.proxy_for("https", "corp.example"), None);
        assert_eq!(settings.proxy_for("https", "notcorp.example"), Some("http://lower:3128"));
        assert_eq!(settings.proxy_for("https", "10.0.0.1"), None);
        assert_eq!(settings.proxy_for("http", "cdn.example"), None);
        assert_eq!(ProxySettings::from_env_vars([("HTTPS_PROXY", "")]).unwrap(), ProxySettings::direct());
    }

    #[test]
    fn wildcard_and_validation() {
        let settings = ProxySettings::all("http://proxy:8080", &["*".into()]).unwrap();
        assert_eq!(settings.proxy_for("https", "anything"), None);
        assert!(ProxySettings::all("https://proxy:8443", &[]).is_err());
        assert!(ProxySettings::all("socks5://proxy:1080", &[]).is_err());
        assert!(ProxySettings::all("proxy:8080", &[]).is_err());
        assert!(ProxySettings::from_env_vars([("https_proxy", "https://p:1")]).is_err());
    }
}

//! The device configuration: the transport sections of custody-tls (`[service]`, `[tls]`, `[content]`, `[proxy]`)
//! plus the agent's own `[agent]` and `[policy]` sections, all in one TOML file (docs/configuration.md, "Agent").

use std::path::{Path, PathBuf};
use std::time::Duration;

use custody_catalog::{Arch, HardwareId, ProductName};
use custody_policy::Policy;
use custody_tls::TransportConfig;
use jiff::SignedDuration;
use serde::Deserialize;

use crate::Error;

/// Default state directory: metadata, downloads, install state, the report queue, holds.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/custody";
/// Default path of the local API socket.
pub const DEFAULT_SOCKET: &str = "/run/custody/agent.sock";

/// A device's whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The file it was read from (relative paths in it are relative to its directory).
    pub path: PathBuf,
    pub transport: TransportConfig,
    pub agent: AgentSection,
    pub policy: Policy,
    /// `[p2p]`: peer-to-peer delivery; `None`: HTTP only.
    pub p2p: Option<crate::p2p::P2pSection>,
}

/// The `[agent]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Where the agent keeps its state (docs/configuration.md lists the layout).
    #[serde(default = "AgentSection::default_state_dir")]
    pub state_dir: PathBuf,
    /// The trusted root metadata shipped with the device (`1.root.json`), copied into the state directory the first
    /// time; after that the state directory's root, updated through the signed root chain, is authoritative.
    #[serde(default)]
    pub trusted_root: Option<PathBuf>,
    /// Base URL of the TUF metadata; default `<service.url>/metadata/`. Must be https (pinned) unless it is a
    /// `file://` URL (removable media).
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// Base URL of the origin's target files, tried after `[content] sources`; default `http://<service host>/targets/`
    /// (the service serves content on its plain-HTTP listener; content is verified against signed metadata).
    #[serde(default)]
    pub origin_url: Option<String>,
    /// Base URL of the device API (reports); default `<service.url>/`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// A file holding the device token (`Authorization: Bearer`), for services that identify devices by token
    /// rather than by client certificate (`[tls] client_cert`).
    #[serde(default)]
    pub device_token_file: Option<PathBuf>,
    /// Products the device wants even though none is installed yet (e.g. an OS image product).
    #[serde(default)]
    pub products: Vec<String>,
    /// os-release file; default `/etc/os-release`, else `/usr/lib/os-release`.
    #[serde(default)]
    pub os_release: Option<PathBuf>,
    /// Architecture as `uname -m` prints it; default: the running kernel's.
    #[serde(default)]
    pub arch: Option<String>,
    /// Hardware ids of the device, instead of reading them from sysfs.
    #[serde(default)]
    pub hardware_ids: Option<Vec<String>>,
    /// The sysfs mount whose `bus/*/devices/*/modalias` files list the hardware (default `/sys`).
    #[serde(default = "AgentSection::default_sysfs")]
    pub sysfs: PathBuf,
    /// IANA time zone of maintenance windows; default: the system's (`/etc/localtime`, `TZ`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Longest wait for a server to answer a request (until the response headers).
    #[serde(default = "AgentSection::default_request_timeout")]
    pub request_timeout: SignedDuration,
    /// Longest pause inside a response body before a download is abandoned (and resumed from another attempt).
    #[serde(default = "AgentSection::default_idle_timeout")]
    pub idle_timeout: SignedDuration,
    /// Fetch snapshot Merkle proofs instead of the whole snapshot (docs/catalog.md).
    #[serde(default = "AgentSection::default_true")]
    pub snapshot_proofs: bool,
    /// The device's own check of a new OS image after its reboot (an absolute program and its arguments, run
    /// without a shell like a signed health check); without it, the agent starting on the new OS is the check.
    #[serde(default)]
    pub os_health_check: Option<Vec<String>>,
    /// Boots of a new OS image without confirmation before the agent gives it up and makes the previous slot
    /// active again (the boot counter).
    #[serde(default = "AgentSection::default_os_boot_attempts")]
    pub os_boot_attempts: u32,
    /// Where the running kernel's boot id is read (a new id: the device rebooted).
    #[serde(default = "AgentSection::default_boot_id_file")]
    pub boot_id_file: PathBuf,
    /// The kernel command line, whose `custody.slot=a|b` (set by the bootloader) says which OS slot booted.
    #[serde(default = "AgentSection::default_kernel_cmdline")]
    pub kernel_cmdline: PathBuf,
    #[serde(default)]
    pub local_api: LocalApiSection,
}

/// `[agent.local_api]`: the Unix socket applications and the CLI talk to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalApiSection {
    #[serde(default = "LocalApiSection::default_socket")]
    pub socket: PathBuf,
    /// Group owning the socket (name or number); the socket is mode 0660. Without it the socket is root's, 0600.
    #[serde(default)]
    pub group: Option<String>,
    /// Who may connect besides root, and what they may ask for.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
}

/// One `[[agent.local_api.allow]]` entry: a uid or a gid, and what its processes may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    /// Products it may scan and install now; `"*"` for every product.
    #[serde(default)]
    pub products: Vec<String>,
    /// May also hold, unhold, roll back, and download or install anything (what root may do).
    #[serde(default)]
    pub admin: bool,
}

#[derive(Deserialize)]
struct AgentFile {
    #[serde(default)]
    agent: Option<AgentSection>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    p2p: Option<crate::p2p::P2pSection>,
}

impl AgentConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io("read", path))?;
        Self::from_toml(&text, path)
    }

    /// Parses a configuration as if read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, Error> {
        let base = path.parent().unwrap_or(Path::new("."));
        let config_error = |detail: String| Error::Config { path: path.to_owned(), detail };
        let transport = TransportConfig::from_toml(text, base).map_err(|e| config_error(e.to_string()))?;
        let file: AgentFile = toml::from_str(text).map_err(|e| config_error(e.to_string()))?;
        let mut agent = match file.agent {
            Some(agent) => agent,
            None => toml::from_str::<AgentSection>("").map_err(|e| config_error(e.to_string()))?,
        };
        let policy = file.policy.unwrap_or_default();
        policy.validate().map_err(|e| config_error(format!("[policy]: {e}")))?;
        agent.resolve_paths(base);
        let mut p2p = file.p2p;
        if let Some(section) = p2p.as_mut() {
            section.check().map_err(|e| config_error(format!("[p2p]: {e}")))?;
            section.cache_dir = section.cache_dir.take().map(|dir| base.join(dir));
        }
        let config = Self { path: path.to_owned(), transport, agent, policy, p2p };
        config.check().map_err(config_error)?;
        Ok(config)
    }

    /// What serde cannot check: names, URLs, durations, allow entries.
    fn check(&self) -> Result<(), String> {
        let agent = &self.agent;
        for product in &agent.products {
            product.parse::<ProductName>().map_err(|e| format!("agent.products: {e}"))?;
        }
        if let Some(arch) = &agent.arch {
            arch.parse::<Arch>().map_err(|e| format!("agent.arch: {e}"))?;
        }
        for id in agent.hardware_ids.iter().flatten() {
            id.parse::<HardwareId>().map_err(|e| format!("agent.hardware_ids: {e}"))?;
        }
        for (name, value) in [("request_timeout", agent.request_timeout), ("idle_timeout", agent.idle_timeout)] {
            if value < SignedDuration::from_secs(1) || value > SignedDuration::from_hours(1) {
                return Err(format!("agent.{name} must be between 1s and 1h, not {value:#}"));
            }
        }
        if let Some(argv) = &agent.os_health_check {
            custody_catalog::Argv::new(argv.clone()).map_err(|e| format!("agent.os_health_check: {e}"))?;
        }
        if !(1..=100).contains(&agent.os_boot_attempts) {
            return Err(format!("agent.os_boot_attempts must be 1 to 100, not {}", agent.os_boot_attempts));
        }
        if let Some(zone) = &agent.time_zone {
            jiff::tz::TimeZone::get(zone).map_err(|e| format!("agent.time_zone: {zone:?}: {e}"))?;
        }
        for (index, entry) in agent.local_api.allow.iter().enumerate() {
            if entry.uid.is_some() == entry.gid.is_some() {
                return Err(format!("agent.local_api.allow[{index}]: give exactly one of uid and gid"));
            }
            for product in entry.products.iter().filter(|p| *p != "*") {
                product.parse::<ProductName>().map_err(|e| format!("agent.local_api.allow[{index}].products: {e}"))?;
            }
        }
        let metadata = self.metadata_url();
        if !(metadata.starts_with("https://") || metadata.starts_with("file://")) {
            return Err(format!("agent.metadata_url {metadata:?} must be https:// (pinned) or file://"));
        }
        Ok(())
    }

    /// Base URL of the TUF metadata, ending in `/`.
    pub fn metadata_url(&self) -> String {
        let url = self.agent.metadata_url.clone().unwrap_or_else(|| join_url(&self.transport.service.url, "metadata/"));
        with_slash(url)
    }

    /// Base URLs target files are fetched from, in order: `[content] sources`, then the origin.
    pub fn content_sources(&self) -> Vec<String> {
        let origin = self.agent.origin_url.clone().unwrap_or_else(|| {
            let host = reqwest::Url::parse(&self.transport.service.url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .unwrap_or_default();
            format!("http://{host}/targets/")
        });
        // The same server written two ways (`http://host/` and `http://host:80/`) is one source.
        let normal = |url: String| match reqwest::Url::parse(&url) {
            Ok(parsed) => with_slash(parsed.to_string()),
            Err(_) => with_slash(url),
        };
        let mut sources: Vec<String> = self.transport.content.sources.iter().cloned().map(normal).collect();
        let origin = normal(origin);
        if !sources.contains(&origin) {
            sources.push(origin);
        }
        sources
    }

    /// The mutual-TLS configuration between peers: the `[tls]` roots and CRLs, and the device's certificate and key
    /// (`client_cert`, `client_key`). An error says why the device cannot take part (no certificate: enrolled with
    /// a token).
    pub fn peer_tls(&self) -> Result<custody_tls::PeerTlsConfig, String> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let tls = self.transport.tls.as_ref().ok_or("the configuration has no [tls] section")?;
        let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) else {
            return Err("the device has no client certificate ([tls] client_cert, client_key)".into());
        };
        let mut builder = custody_tls::PeerTlsConfig::builder();
        for root in &tls.roots {
            builder = builder.roots_pem_file(&base.join(root)).map_err(|e| e.to_string())?;
        }
        for crl in &tls.crls {
            builder = builder.crls_pem_file(&base.join(crl)).map_err(|e| e.to_string())?;
        }
        builder = builder.identity_pem_files(&base.join(cert), &base.join(key)).map_err(|e| e.to_string())?;
        builder.build().map_err(|e| e.to_string())
    }

    /// Base URL of the device API, ending in `/`.
    pub fn api_url(&self) -> String {
        with_slash(self.agent.api_url.clone().unwrap_or_else(|| self.transport.service.url.clone()))
    }

    /// The time zone maintenance windows are in.
    pub fn time_zone(&self) -> Result<jiff::tz::TimeZone, Error> {
        match &self.agent.time_zone {
            // Checked by `check` when the configuration was loaded; looked up again here.
            Some(zone) => jiff::tz::TimeZone::get(zone)
                .map_err(|e| Error::Config { path: self.path.clone(), detail: format!("agent.time_zone: {e}") }),
            None => Ok(jiff::tz::TimeZone::system()),
        }
    }

    pub fn request_timeout(&self) -> Duration {
        self.agent.request_timeout.unsigned_abs()
    }

    pub fn idle_timeout(&self) -> Duration {
        self.agent.idle_timeout.unsigned_abs()
    }

    /// The install engine's settings from `[agent]`: the OS check and boot counter, and the boot id now (read
    /// from `boot_id_file`; `None` if it cannot be read).
    pub fn install_options(&self) -> custody_install::Options {
        let boot_id = std::fs::read_to_string(&self.agent.boot_id_file).ok().map(|id| id.trim().to_owned());
        custody_install::Options {
            os_boot_attempts: self.agent.os_boot_attempts,
            // Checked by `check` when the configuration was loaded.
            os_health_check: self.agent.os_health_check.clone().and_then(|argv| custody_catalog::Argv::new(argv).ok()),
            boot_id: boot_id.filter(|id| !id.is_empty()),
            ..custody_install::Options::default()
        }
    }

    /// The OS slot the bootloader started, from `custody.slot=a|b` on the kernel command line, if present.
    pub fn booted_slot(&self) -> Option<custody_install::Slot> {
        let cmdline = std::fs::read_to_string(&self.agent.kernel_cmdline).ok()?;
        cmdline.split_whitespace().find_map(|arg| match arg.strip_prefix("custody.slot=")? {
            "a" => Some(custody_install::Slot::A),
            "b" => Some(custody_install::Slot::B),
            _ => None,
        })
    }

    /// The products named in `[agent] products` (checked at load).
    pub fn wanted_products(&self) -> Vec<ProductName> {
        self.agent.products.iter().filter_map(|p| p.parse().ok()).collect()
    }
}

impl AgentSection {
    fn default_state_dir() -> PathBuf {
        PathBuf::from(DEFAULT_STATE_DIR)
    }

    fn default_sysfs() -> PathBuf {
        PathBuf::from("/sys")
    }

    fn default_request_timeout() -> SignedDuration {
        SignedDuration::from_secs(60)
    }

    fn default_idle_timeout() -> SignedDuration {
        SignedDuration::from_secs(60)
    }

    fn default_true() -> bool {
        true
    }

    fn default_os_boot_attempts() -> u32 {
        3
    }

    fn default_boot_id_file() -> PathBuf {
        PathBuf::from("/proc/sys/kernel/random/boot_id")
    }

    fn default_kernel_cmdline() -> PathBuf {
        PathBuf::from("/proc/cmdline")
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| *p = base.join(&*p);
        resolve(&mut self.state_dir);
        resolve(&mut self.sysfs);
        resolve(&mut self.local_api.socket);
        resolve(&mut self.boot_id_file);
        resolve(&mut self.kernel_cmdline);
        if let Some(p) = self.trusted_root.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.os_release.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.device_token_file.as_mut() {
            resolve(p);
        }
    }
}

impl LocalApiSection {
    fn default_socket() -> PathBuf {
        PathBuf::from(DEFAULT_SOCKET)
    }
}

impl Default for LocalApiSection {
    fn default() -> Self {
        Self { socket: Self::default_socket(), group: None, allow: Vec::new() }
    }
}

fn join_url(base: &str, tail: &str) -> String {
    format!("{}/{tail}", base.trim_end_matches('/'))
}

fn with_slash(mut url: String) -> String {
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[service]\nurl = \"https://updates.example.com:8443\"\n";

    fn parse(extra: &str) -> Result<AgentConfig, Error> {
        AgentConfig::from_toml(&format!("{BASE}{extra}"), Path::new("/etc/custody/agent.toml"))
    }

    #[test]
    fn defaults_derive_from_the_service_url() {
        let config = parse("[content]\nsources = [\"http://cdn.example.com/c\"]\n").unwrap();
        assert_eq!(config.agent.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.agent.local_api.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(config.metadata_url(), "https://updates.example.com:8443/metadata/");
        assert_eq!(config.content_sources(), ["http://cdn.example.com/c/", "http://updates.example.com/targets/"]);
        // The origin written with its default port is the origin, not a second source.
        let config = parse("[content]\nsources = [\"http://updates.example.com:80/targets/\"]\n").unwrap();
        assert_eq!(config.content_sources(), ["http://updates.example.com/targets/"]);
        assert_eq!(config.api_url(), "https://updates.example.com:8443/");
        assert_eq!(config.policy, Policy::default());
        assert_eq!(config.request_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn agent_and_policy_sections() {
        let config = parse(
            r#"
            [agent]
            state_dir = "state"
            products = ["acme-os"]
            hardware_ids = ["pci:8086:15f3"]
            idle_timeout = "10s"
            time_zone = "UTC"
            [agent.local_api]
            socket = "/tmp/a.sock"
            group = "custody"
            allow = [{ uid = 1000, products = ["acme-agent"] }, { gid = 50, products = ["*"], admin = true }]
            [policy]
            default = "download-only"
            [policy.schedule]
            interval = "6h"
            "#,
        )
        .unwrap();
        assert_eq!(config.agent.state_dir, Path::new("/etc/custody/state"));
        assert_eq!(config.wanted_products()[0].as_str(), "acme-os");
        assert_eq!(config.idle_timeout(), Duration::from_secs(10));
        assert_eq!(config.agent.local_api.allow[1].gid, Some(50));
        assert_eq!(config.policy.default, custody_policy::Mode::DownloadOnly);
        assert_eq!(config.policy.schedule.interval, SignedDuration::from_hours(6));
    }

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let section = doc.split("\n## Agent").nth(1).expect("docs/configuration.md has an Agent section");
        let example = section.split("```toml\n").nth(1).and_then(|s| s.split("```").next()).unwrap();
        let config = parse(example).unwrap();
        assert_eq!(config.policy.kinds.os, Some(custody_policy::Mode::DownloadOnly));
        assert_eq!(config.agent.local_api.allow[0].products, ["acme-agent"]);
        assert_eq!(config.policy.maintenance_windows.len(), 1);
    }

    #[test]
    fn bad_values_are_named() {
        let err = |extra: &str| parse(extra).unwrap_err().to_string();
        assert!(err("[agent]\nproducts = [\"Acme\"]\n").contains("agent.products"));
        assert!(err("[agent]\narch = \"amd64\"\n").contains("use \"x86_64\""));
        assert!(err("[agent]\nhardware_ids = [\"PCI:8086\"]\n").contains("agent.hardware_ids"));
        assert!(err("[agent]\nstate_dri = \"x\"\n").contains("state_dri"));
        assert!(err("[agent]\nidle_timeout = \"0s\"\n").contains("agent.idle_timeout"));
        assert!(err("[agent.local_api]\nallow = [{ products = [\"a\"] }]\n").contains("exactly one of uid and gid"));
        assert!(err("[agent]\nmetadata_url = \"http://x/\"\n").contains("https://"));
        assert!(err("[policy]\ndefault = \"sometimes\"\n").contains("sometimes"));
        assert!(err("[policy.schedule]\njitter = 0.9\n").contains("[policy]"));
        assert!(err("[agent]\ntime_zone = \"Mars/Olympus\"\n").contains("agent.time_zone"));
    }
}

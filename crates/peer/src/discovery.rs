//! Finding peers: the update service's peer matching ([`MatchingClient`], `POST /device/v1/peers`), DNS-SD over
//! multicast DNS on the LAN ([`LanDiscovery`], service type [`SERVICE_TYPE`]), and the interface addresses a device
//! announces ([`local_subnets`]).
//!
//! What discovery returns is a hint, never trusted data: a candidate is only an address to try. The connection
//! authenticates the device (mutual TLS with device certificates) and every piece is verified against the signed
//! piece tree. mDNS advertises that a device takes part (its device id, group and port), never which content it
//! holds, so the LAN does not learn a device's updates from it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use custody_api::p2p::{PeerEntry, PeerList, PeerQuery};
use custody_p2p::{ContentId, DownloadMode, PeerKind};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::{Error, PeerCandidate};

/// The DNS-SD service type of custody peers.
pub const SERVICE_TYPE: &str = "_custody-p2p._tcp.local.";

/// The largest peer-matching answer read (50 peers take a few KiB).
const MAX_ANSWER: usize = 1 << 20;

/// A client of the service's peer matching. It takes the agent's pinned HTTP client (the request needs the device's
/// client certificate) and the device API's base URL.
#[derive(Clone, Debug)]
pub struct MatchingClient {
    client: reqwest::Client,
    url: String,
}

/// What a device announces about itself when it asks for peers of a content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    pub content: ContentId,
    pub mode: DownloadMode,
    pub group: Option<String>,
    /// The port of this device's [`PeerNode`](crate::PeerNode).
    pub port: u16,
    /// Interface addresses with prefix lengths ([`local_subnets`]).
    pub addresses: Vec<String>,
    pub complete: bool,
    pub cache_server: bool,
}

impl MatchingClient {
    /// `api_base` is the device API's base URL (`https://updates.example.com:8443/`); the route is appended.
    pub fn new(client: reqwest::Client, api_base: &str) -> Self {
        let url = format!("{}{}", api_base.trim_end_matches('/'), custody_api::routes::DEVICE_PEERS);
        Self { client, url }
    }

    /// Announces this device for `announcement.content` and returns the peers the service matched, best first, with
    /// the time after which to ask again. Modes 0, 99 and 100 never ask ([`Error::ModeTakesNoMatching`]).
    pub async fn peers(&self, announcement: &Announcement) -> Result<(Vec<PeerCandidate>, Duration), Error> {
        if !announcement.mode.peers() {
            return Err(Error::ModeTakesNoMatching(announcement.mode));
        }
        let query = PeerQuery {
            content: announcement.content.to_string(),
            mode: announcement.mode.code(),
            group: announcement.group.clone(),
            port: announcement.port,
            addresses: announcement.addresses.clone(),
            complete: announcement.complete,
            cache_server: announcement.cache_server,
        };
        let list = self.query(&query).await?;
        let candidates = list.peers.iter().filter_map(PeerCandidate::from_entry).collect();
        Ok((candidates, Duration::from_secs(u64::from(list.refresh_after_seconds))))
    }

    /// The raw exchange: `query` in, the service's answer out. An error status is returned with the service's
    /// message.
    pub async fn query(&self, query: &PeerQuery) -> Result<PeerList, Error> {
        let failed = |reason: String| Error::Matching { url: self.url.clone(), reason };
        let mut response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            // Invariant: a struct of strings, numbers and booleans always serialises.
            .body(serde_json::to_vec(query).unwrap_or_default())
            .send()
            .await
            .map_err(|err| failed(crate::error_chain(&err)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|err| failed(crate::error_chain(&err)))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(failed(format!("the answer exceeds {MAX_ANSWER} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let message = match serde_json::from_slice::<custody_api::ErrorBody>(&body) {
                Ok(error) => error.message,
                Err(_) => String::from_utf8_lossy(&body).chars().take(200).collect(),
            };
            return Err(failed(format!("HTTP {status}: {message}")));
        }
        serde_json::from_slice(&body).map_err(|err| failed(format!("invalid answer: {err}")))
    }
}

impl PeerCandidate {
    /// A candidate from a peer-matching answer; `None` for an address that does not parse or a kind this build
    /// does not know.
    pub fn from_entry(entry: &PeerEntry) -> Option<Self> {
        let kind = match entry.kind {
            custody_api::p2p::PeerKind::Lan => PeerKind::Lan,
            custody_api::p2p::PeerKind::Group => PeerKind::Group,
            custody_api::p2p::PeerKind::Internet => PeerKind::Internet,
            custody_api::p2p::PeerKind::CacheServer => PeerKind::CacheServer,
            custody_api::p2p::PeerKind::Unknown => return None,
        };
        let addr = entry.address.parse().ok()?;
        Some(Self { addr, kind, device: Some(entry.device.to_string()) })
    }
}

/// The addresses of this machine's interfaces with their prefix lengths (`"192.168.1.20/24"`), for
/// [`Announcement::addresses`]: loopback, link-local and unspecified addresses left out, at most `max`.
pub fn local_subnets(max: usize) -> Result<Vec<String>, Error> {
    let interfaces = if_addrs::get_if_addrs().map_err(Error::io("list network interfaces", "/"))?;
    let mut out = Vec::new();
    for interface in interfaces {
        let (ip, prefix) = match interface.addr {
            if_addrs::IfAddr::V4(v4) => (IpAddr::V4(v4.ip), v4.prefixlen),
            if_addrs::IfAddr::V6(v6) => (IpAddr::V6(v6.ip), v6.prefixlen),
        };
        let link_local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_loopback() || ip.is_unspecified() || link_local {
            continue;
        }
        out.push(format!("{ip}/{prefix}"));
        if out.len() == max {
            break;
        }
    }
    Ok(out)
}

/// DNS-SD over multicast DNS: advertises this device's peer listener on the LAN and browses for other devices'.
/// It runs its own thread (mdns-sd); dropping it shuts that down and withdraws the advertisement.
pub struct LanDiscovery {
    daemon: ServiceDaemon,
    own_device: String,
    advertised: Option<String>,
}

/// What this device advertises: TXT records `device`, `group` (if any) and `v` (the protocol version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanAdvertisement {
    pub device: String,
    pub group: Option<String>,
    pub port: u16,
    /// The addresses to advertise; empty: those of every interface, kept current by mdns-sd.
    pub addresses: Vec<IpAddr>,
}

/// A device found on the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanPeer {
    pub device: String,
    pub group: Option<String>,
    /// Its addresses, each with its listener port.
    pub addresses: Vec<SocketAddr>,
}

/// The stream of devices found by [`LanDiscovery::browse`].
pub struct LanBrowser {
    events: mdns_sd::Receiver<ServiceEvent>,
    own_device: String,
    /// Full service names already reported, with what was reported.
    seen: HashMap<String, LanPeer>,
}

impl LanDiscovery {
    /// Starts the mDNS responder and querier for this device (`own_device`: its device id, never reported by
    /// [`LanBrowser`]).
    pub fn new(own_device: &str) -> Result<Self, Error> {
        let daemon = ServiceDaemon::new().map_err(|err| Error::Mdns(err.to_string()))?;
        Ok(Self { daemon, own_device: own_device.to_owned(), advertised: None })
    }

    /// Advertises the peer listener (replacing an earlier advertisement).
    pub fn advertise(&mut self, advertisement: &LanAdvertisement) -> Result<(), Error> {
        let mdns = |err: mdns_sd::Error| Error::Mdns(err.to_string());
        if let Some(fullname) = self.advertised.take() {
            // The receiver only reports the outcome; nothing to wait for.
            let _ = self.daemon.unregister(&fullname).map_err(mdns)?;
        }
        let mut properties = vec![
            ("device".to_owned(), advertisement.device.clone()),
            ("v".to_owned(), custody_p2p::wire::PROTOCOL_VERSION.to_string()),
        ];
        if let Some(group) = &advertisement.group {
            properties.push(("group".to_owned(), group.clone()));
        }
        let host = format!("{}.local.", advertisement.device);
        let addresses: Vec<IpAddr> = advertisement.addresses.clone();
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &advertisement.device,
            &host,
            &addresses[..],
            advertisement.port,
            &properties[..],
        )
        .map_err(mdns)?;
        let info = match addresses.is_empty() {
            true => info.enable_addr_auto(),
            false => info,
        };
        let fullname = info.get_fullname().to_owned();
        self.daemon.register(info).map_err(mdns)?;
        tracing::info!(%fullname, port = advertisement.port, "advertising the peer listener on the LAN");
        self.advertised = Some(fullname);
        Ok(())
    }

    /// Starts browsing for other devices.
    pub fn browse(&self) -> Result<LanBrowser, Error> {
        let events = self.daemon.browse(SERVICE_TYPE).map_err(|err| Error::Mdns(err.to_string()))?;
        Ok(LanBrowser { events, own_device: self.own_device.clone(), seen: HashMap::new() })
    }
}

impl Drop for LanDiscovery {
    fn drop(&mut self) {
        if let Some(fullname) = self.advertised.take() {
            let _ = self.daemon.unregister(&fullname);
        }
        let _ = self.daemon.shutdown();
    }
}

impl LanBrowser {
    /// The next device found (or found again with other addresses); `None` when discovery stopped.
    pub async fn next(&mut self) -> Option<LanPeer> {
        loop {
            let event = self.events.recv_async().await.ok()?;
            let ServiceEvent::ServiceResolved(resolved) = event else { continue };
            let properties = resolved.get_properties();
            let Some(device) = properties.get_property_val_str("device").map(str::to_owned) else { continue };
            let version = properties.get_property_val_str("v");
            if device == self.own_device || version != Some(&custody_p2p::wire::PROTOCOL_VERSION.to_string()) {
                continue;
            }
            let port = resolved.get_port();
            let unique: HashSet<IpAddr> = resolved.get_addresses().iter().map(|ip| ip.to_ip_addr()).collect();
            let mut addresses: Vec<SocketAddr> = unique.into_iter().map(|ip| SocketAddr::new(ip, port)).collect();
            addresses.sort();
            let group = properties.get_property_val_str("group").map(str::to_owned);
            let peer = LanPeer { device, group, addresses };
            let fullname = resolved.get_fullname().to_owned();
            if self.seen.get(&fullname) == Some(&peer) {
                continue;
            }
            self.seen.insert(fullname, peer.clone());
            return Some(peer);
        }
    }
}

impl LanPeer {
    /// Where to connect to this device, as LAN candidates.
    pub fn candidates(&self) -> Vec<PeerCandidate> {
        self.addresses
            .iter()
            .map(|addr| PeerCandidate { addr: *addr, kind: PeerKind::Lan, device: Some(self.device.clone()) })
            .collect()
    }
}

//! Peer matching for peer-to-peer delivery: `POST /device/v1/peers` (docs/api.md, "Peers").
//!
//! A device with a certificate identity announces itself for a content and gets up to [`MAX_PEERS`] other devices
//! its download mode allows. The announcement is stored (custody-store, expiring after [`ANNOUNCEMENT_TTL`] unless
//! renewed, which the device does every [`REFRESH_AFTER_SECONDS`]), together with the address the service saw the
//! request come from: the TCP peer address of the connection. Behind a reverse proxy or load balancer that address
//! is the proxy's, which would put every device behind it on one LAN; the service must see devices' addresses itself
//! (docs/api.md).
//!
//! The store pre-selects announcements that may be on the asker's LAN, in its group or anywhere (by mode), never the
//! asker's own and never a revoked device's; the rule itself is custody-p2p's [`matching::matches`], applied to each.
//! Cache servers come first, then peers with the whole content, then LAN, group and internet peers.

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use custody_api::FieldError;
use custody_api::limits::MAX_PEER_QUERY_BYTES;
use custody_api::p2p::{MAX_PEERS, PeerEntry, PeerKind as WireKind, PeerList, PeerQuery};
use custody_p2p::matching::{self, Announce, Subnet};
use custody_p2p::{ContentId, DownloadMode, PeerKind};
use custody_store::{Identity, PeerAnnouncement, PeerCandidate, PeerNetwork, PeerReach, Sha256};
use custody_tls::ClientIdentity;
use jiff::Timestamp;

use crate::app::App;
use crate::device_api::{authenticate, store_error};
use crate::error::ApiError;
use crate::request::read_json;

/// How often a device renews its announcement (and gets fresh peers).
pub const REFRESH_AFTER_SECONDS: u32 = 300;
/// How long an announcement lasts without renewal: three refresh periods.
pub const ANNOUNCEMENT_TTL: jiff::SignedDuration = jiff::SignedDuration::from_secs(3 * REFRESH_AFTER_SECONDS as i64);
/// Announcements the store pre-selects before matching and ordering.
const CANDIDATES: u32 = 4 * MAX_PEERS as u32;

/// `POST /device/v1/peers`.
pub async fn peers(
    State(app): State<App>,
    client: Option<Extension<ClientIdentity>>,
    remote: Option<Extension<SocketAddr>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PeerList>, ApiError> {
    let device = authenticate(&app, client.as_deref(), &headers).await?;
    if let Identity::Token { .. } = device.identity {
        return Err(ApiError::forbidden(
            "peer-to-peer delivery needs a device certificate (peers authenticate each other with it); this device \
             enrolled with a token and downloads over HTTP only",
        ));
    }
    let query: PeerQuery = read_json(&headers, body, MAX_PEER_QUERY_BYTES).await?;
    let addresses = query.validate()?;
    let group = device.group.as_ref().map(|group| group.to_string());
    if query.group.is_some() && query.group != group {
        let enrolled = group.as_deref().map_or_else(|| "no group".to_owned(), |group| format!("group {group:?}"));
        return Err(FieldError::new(
            "group",
            format!("this device enrolled into {enrolled}; a device cannot choose another group for its peers"),
        )
        .into());
    }
    // Invariant: `PeerQuery::validate` accepts modes 1 to 3 only, which are download modes.
    let mode = DownloadMode::from_code(u64::from(query.mode))
        .map_err(|err| ApiError::internal(format!("mode {} passed validation: {err}", query.mode)))?;
    let reach = match mode {
        DownloadMode::Lan => PeerReach::Lan,
        DownloadMode::Group => PeerReach::Group,
        _ => PeerReach::Anyone,
    };
    let Some(Extension(remote)) = remote else {
        return Err(ApiError::internal("the HTTPS listener did not pass the client's address to the peer matching"));
    };
    let public_addr = remote.ip().to_canonical();
    let now = Timestamp::now();
    let announcement = PeerAnnouncement {
        device: device.id,
        content: query.content.parse::<Sha256>().map_err(|err| FieldError::new("content", err.to_string()))?,
        mode: query.mode,
        public_addr,
        addresses: addresses
            .iter()
            .map(|a| PeerNetwork::new(a.addr, a.prefix_len))
            .collect::<Result<_, _>>()
            .map_err(store_error)?,
        port: query.port,
        complete: query.complete,
        cache_server: query.cache_server,
        expires_at: now + ANNOUNCEMENT_TTL,
    };
    let candidates = app.store.announce_peer(&announcement, reach, CANDIDATES, now).await.map_err(store_error)?;
    metrics::counter!("custody_peer_queries_total", "mode" => mode.code().to_string()).increment(1);

    let asking = Announce {
        device: *device.id.as_uuid(),
        content: ContentId(announcement.content.0),
        mode,
        public_addr,
        addresses: addresses.iter().filter_map(|a| Subnet::new(a.addr, a.prefix_len).ok()).collect(),
        group,
        port: query.port,
        complete: query.complete,
        cache_server: query.cache_server,
    };
    let mut matched: Vec<(PeerKind, &PeerCandidate)> = candidates
        .iter()
        .filter_map(|candidate| {
            let other = announce(candidate)?;
            Some((matching::matches(&asking, &other)?, candidate))
        })
        .collect();
    matched.sort_by_key(|(kind, candidate)| {
        (*kind != PeerKind::CacheServer, !candidate.announcement.complete, closeness(*kind))
    });
    let peers: Vec<PeerEntry> = matched
        .into_iter()
        .take(MAX_PEERS)
        .map(|(kind, candidate)| PeerEntry {
            device: *candidate.announcement.device.as_uuid(),
            address: SocketAddr::new(address_for(&announcement, &candidate.announcement), candidate.announcement.port)
                .to_string(),
            kind: wire_kind(kind),
            complete: candidate.announcement.complete,
        })
        .collect();
    tracing::debug!(device = %device.id, content = %announcement.content, mode = mode.code(), peers = peers.len(),
        "peers matched");
    Ok(Json(PeerList { peers, refresh_after_seconds: REFRESH_AFTER_SECONDS }))
}

/// A stored announcement as custody-p2p's matching takes it; `None` for one stored with a mode that is not a
/// download mode (written by another build), which matches nothing.
fn announce(candidate: &PeerCandidate) -> Option<Announce> {
    let stored = &candidate.announcement;
    Some(Announce {
        device: *stored.device.as_uuid(),
        content: ContentId(stored.content.0),
        mode: DownloadMode::from_code(u64::from(stored.mode)).ok()?,
        public_addr: stored.public_addr,
        addresses: stored.addresses.iter().filter_map(|a| Subnet::new(a.addr(), a.prefix_len()).ok()).collect(),
        group: candidate.group.as_ref().map(|group| group.to_string()),
        port: stored.port,
        complete: stored.complete,
        cache_server: stored.cache_server,
    })
}

/// LAN peers before group peers before internet peers.
fn closeness(kind: PeerKind) -> u8 {
    match kind {
        PeerKind::CacheServer => 0,
        PeerKind::Lan => 1,
        PeerKind::Group => 2,
        PeerKind::Internet => 3,
    }
}

/// Where the asker reaches `other`: its address on a network they share (both inside each other's network), else,
/// behind the same public address, its first interface address, else its public address.
fn address_for(asking: &PeerAnnouncement, other: &PeerAnnouncement) -> IpAddr {
    let shared = other.addresses.iter().find(|theirs| {
        asking.addresses.iter().any(|mine| mine.network() == theirs.network())
            || asking.addresses.iter().any(|mine| contains(mine, theirs.addr()) && contains(theirs, mine.addr()))
    });
    match shared {
        Some(theirs) => theirs.addr(),
        None if other.public_addr == asking.public_addr => {
            other.addresses.first().map_or(other.public_addr, PeerNetwork::addr)
        }
        None => other.public_addr,
    }
}

/// Whether `ip` lies in `network`.
fn contains(network: &PeerNetwork, ip: IpAddr) -> bool {
    PeerNetwork::new(ip, network.prefix_len()).is_ok_and(|host| host.network() == network.network())
}

fn wire_kind(kind: PeerKind) -> WireKind {
    match kind {
        PeerKind::Lan => WireKind::Lan,
        PeerKind::Group => WireKind::Group,
        PeerKind::Internet => WireKind::Internet,
        PeerKind::CacheServer => WireKind::CacheServer,
    }
}

#[cfg(test)]
mod tests {
    use custody_api::p2p::PeerAddress;

    use super::*;

    fn announced(public: &str, addresses: &[&str]) -> PeerAnnouncement {
        PeerAnnouncement {
            device: custody_store::DeviceId::random(),
            content: Sha256([7; 32]),
            mode: 1,
            public_addr: public.parse().unwrap(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            port: 7680,
            complete: false,
            cache_server: false,
            expires_at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn peers_are_reached_on_a_shared_network_then_behind_the_nat_then_publicly() {
        let me = announced("203.0.113.7", &["192.168.7.10/24", "10.5.1.9/16"]);
        let same_lan = announced("203.0.113.7", &["172.16.0.3/12", "192.168.7.20/24"]);
        assert_eq!(address_for(&me, &same_lan).to_string(), "192.168.7.20");
        let other_prefix = announced("198.51.100.1", &["10.5.1.1/24"]);
        assert_eq!(address_for(&me, &other_prefix).to_string(), "10.5.1.1");
        let behind_nat = announced("203.0.113.7", &["172.16.0.3/12"]);
        assert_eq!(address_for(&me, &behind_nat).to_string(), "172.16.0.3");
        let elsewhere = announced("198.51.100.9", &["192.168.8.20/24"]);
        assert_eq!(address_for(&me, &elsewhere).to_string(), "198.51.100.9");
        let nothing = announced("203.0.113.7", &[]);
        assert_eq!(address_for(&me, &nothing).to_string(), "203.0.113.7");
    }

    #[test]
    fn parsed_addresses_fit_the_store_and_the_matching() {
        let address: PeerAddress = "fd00::7/64".parse().unwrap();
        let network = PeerNetwork::new(address.addr, address.prefix_len).unwrap();
        assert_eq!(network.to_string(), "fd00::7/64");
        assert_eq!(Subnet::new(address.addr, address.prefix_len).unwrap().to_string(), "fd00::7/64");
    }
}

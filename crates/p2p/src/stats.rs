//! Bytes moved per kind of source, as Delivery Optimization counts them (`BytesFromHttp`, `BytesFromCacheServer`,
//! `BytesFrom{Lan,Group,Internet}Peers`, `BytesToPeers`) and its `PercentPeerCaching`. Per download (a
//! [`Swarm`](crate::swarm::Swarm) keeps one) and summed per device and group with [`TransferStats::add`].

use serde::{Deserialize, Serialize};

use crate::swarm::PeerKind;

/// Bytes of verified content received per source kind, and bytes sent to peers. Only pieces that verified count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStats {
    /// From the origin, CDNs and plain HTTP caches.
    pub from_http: u64,
    /// From cache servers of the device's group (over the peer protocol).
    pub from_cache_server: u64,
    /// From peers on the same LAN.
    pub from_lan_peers: u64,
    /// From peers of the same group, not on the LAN.
    pub from_group_peers: u64,
    /// From other peers on the internet.
    pub from_internet_peers: u64,
    /// Sent to peers.
    pub to_peers: u64,
}

impl TransferStats {
    /// Bytes from peers: LAN, group and internet (cache servers are counted apart, as Delivery Optimization does).
    pub fn from_peers(&self) -> u64 {
        self.from_lan_peers + self.from_group_peers + self.from_internet_peers
    }

    /// All bytes downloaded, from every kind of source.
    pub fn total(&self) -> u64 {
        self.from_http + self.from_cache_server + self.from_peers()
    }

    /// Delivery Optimization's `PercentPeerCaching`: bytes from peers (LAN, group, internet) per 100 bytes
    /// downloaded; 0 when nothing was downloaded.
    pub fn percent_peer_caching(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.from_peers() as f64 * 100.0 / total as f64,
        }
    }

    /// Counts `bytes` received over HTTP.
    pub fn record_http(&mut self, bytes: u64) {
        self.from_http += bytes;
    }

    /// Counts `bytes` received from a peer of this kind.
    pub fn record_peer(&mut self, kind: PeerKind, bytes: u64) {
        let counter = match kind {
            PeerKind::Lan => &mut self.from_lan_peers,
            PeerKind::Group => &mut self.from_group_peers,
            PeerKind::Internet => &mut self.from_internet_peers,
            PeerKind::CacheServer => &mut self.from_cache_server,
        };
        *counter += bytes;
    }

    /// Counts `bytes` sent to a peer.
    pub fn record_upload(&mut self, bytes: u64) {
        self.to_peers += bytes;
    }

    /// Adds another download's (or device's) counters to these: device totals, group totals.
    pub fn add(&mut self, other: &TransferStats) {
        self.from_http += other.from_http;
        self.from_cache_server += other.from_cache_server;
        self.from_lan_peers += other.from_lan_peers;
        self.from_group_peers += other.from_group_peers;
        self.from_internet_peers += other.from_internet_peers;
        self.to_peers += other.to_peers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_peer_caching_is_dos_definition() {
        let mut stats = TransferStats::default();
        assert_eq!(stats.percent_peer_caching(), 0.0);
        stats.record_http(100);
        stats.record_peer(PeerKind::CacheServer, 100);
        stats.record_peer(PeerKind::Lan, 100);
        stats.record_peer(PeerKind::Group, 50);
        stats.record_peer(PeerKind::Internet, 50);
        stats.record_upload(1000);
        assert_eq!(stats.from_peers(), 200);
        assert_eq!(stats.total(), 400);
        assert_eq!(stats.percent_peer_caching(), 50.0);

        let mut device = TransferStats::default();
        device.add(&stats);
        device.add(&stats);
        assert_eq!(device.total(), 800);
        assert_eq!(device.to_peers, 2000);
        assert_eq!(device.percent_peer_caching(), 50.0);
    }

    #[test]
    fn serde_names_are_stable() {
        let stats = TransferStats { from_http: 1, to_peers: 2, ..Default::default() };
        let json = serde_json::to_value(stats).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"from_http": 1, "from_cache_server": 0, "from_lan_peers": 0, "from_group_peers": 0,
                               "from_internet_peers": 0, "to_peers": 2})
        );
        assert_eq!(serde_json::from_value::<TransferStats>(json).unwrap(), stats);
    }
}

//! Peer matching for peer-to-peer delivery: `POST /device/v1/peers` (docs/api.md, "Peers").
//!
//! A device downloading (or holding) a content that has a piece tree asks the service for peers of it, and in the
//! same request announces itself as one. The service answers with at most [`MAX_PEERS`] other devices that the
//! device's download mode allows (Delivery Optimization's modes 1 LAN, 2 group, 3 internet); modes 0 (HTTP only),
//! 99 (simple) and 100 (bypass) never ask. The device connects to them on their port with mutual TLS (device
//! certificates), and checks every piece it gets against the signed piece tree, so a peer list is a hint, never
//! trusted data.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::FieldError;
use crate::limits::MAX_PEER_ADDRESSES;

/// The most peers one answer lists.
pub const MAX_PEERS: usize = 50;

/// `POST /device/v1/peers`, with the device's client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerQuery {
    /// The content's SHA-256 (64 lower-case hex digits): the target's `sha256`, as in `/content/sha256/<hex>`.
    pub content: String,
    /// The device's download mode: 1 (LAN), 2 (group) or 3 (internet).
    pub mode: u8,
    /// The device's group, if it is configured with one; it must be the group the device enrolled into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The TCP port the device accepts peer connections on (7680 by default).
    pub port: u16,
    /// The addresses of the device's interfaces with their prefix lengths (`"192.168.1.20/24"`), at most
    /// [`MAX_PEER_ADDRESSES`]: devices sharing a network are on one LAN.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The device has every piece of the content.
    #[serde(default)]
    pub complete: bool,
    /// The device is a cache server for its group.
    #[serde(default)]
    pub cache_server: bool,
}

/// The answer: peers to try, best first, and when to ask again (which also renews the announcement).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    pub peers: Vec<PeerEntry>,
    pub refresh_after_seconds: u32,
}

/// A peer of the asking device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    /// The peer's device id: the common name its certificate must carry.
    pub device: Uuid,
    /// Where to connect: `ip:port` (`[ip]:port` for IPv6).
    pub address: String,
    pub kind: PeerKind,
    /// The peer has every piece.
    pub complete: bool,
}

/// Why a peer was matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// On the asker's LAN: behind the same public address, or on a network the asker is on.
    Lan,
    /// In the asker's group.
    Group,
    /// Anywhere else (mode 3).
    Internet,
    /// A cache server of the asker's group.
    CacheServer,
    /// A kind this build does not know (a newer service).
    #[serde(other)]
    Unknown,
}

/// A network address of [`PeerQuery::addresses`]: an interface address and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl PeerQuery {
    /// Checks every field; the parsed addresses on success.
    pub fn validate(&self) -> Result<Vec<PeerAddress>, FieldError> {
        let hex =
            self.content.len() == 64 && self.content.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(FieldError::new("content", "must be the content's SHA-256: 64 lower-case hex digits"));
        }
        match self.mode {
            1..=3 => {}
            0 => return Err(FieldError::new("mode", "mode 0 (HTTP only) takes no peers: do not ask for them")),
            99 => {
                return Err(FieldError::new(
                    "mode",
                    "mode 99 (simple) takes no peers from the service: it uses HTTP and local discovery only",
                ));
            }
            100 => return Err(FieldError::new("mode", "mode 100 (bypass) takes no peers: do not ask for them")),
            other => {
                return Err(FieldError::new(
                    "mode",
                    format!("{other} is not a download mode that asks for peers (1 LAN, 2 group, 3 internet)"),
                ));
            }
        }
        if let Some(group) = &self.group {
            crate::admin::check_group("group", group)?;
        }
        if self.port == 0 {
            return Err(FieldError::new("port", "must be the TCP port peers connect to, 1 to 65535"));
        }
        if self.addresses.len() > MAX_PEER_ADDRESSES {
            return Err(FieldError::new(
                "addresses",
                format!("has {} entries; at most {MAX_PEER_ADDRESSES} are allowed", self.addresses.len()),
            ));
        }
        self.addresses
            .iter()
            .enumerate()
            .map(|(index, text)| {
                text.parse::<PeerAddress>().map_err(|problem| FieldError::new(format!("addresses[{index}]"), problem))
            })
            .collect()
    }
}

impl std::str::FromStr for PeerAddress {
    type Err = String;

    /// `ip/prefix-length`; an unspecified, multicast or broadcast address is refused (no peer can be reached there).
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) =
            text.split_once('/').ok_or_else(|| format!("{text:?} is not ip/prefix-length (192.168.1.20/24)"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|length| *length <= bits && !prefix.starts_with('+'))
            .ok_or_else(|| format!("{prefix:?} is not a prefix length of 0 to {bits}"))?;
        let broadcast = matches!(addr, IpAddr::V4(v4) if v4.is_broadcast());
        if addr.is_unspecified() || addr.is_multicast() || broadcast {
            return Err(format!("{addr} is not the address of an interface"));
        }
        Ok(Self { addr, prefix_len })
    }
}

impl std::fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl PeerKind {
    /// The wire name (`cache-server`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Group => "group",
            Self::Internet => "internet",
            Self::CacheServer => "cache-server",
            Self::Unknown => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(rest: &str) -> Result<PeerQuery, serde_json::Error> {
        serde_json::from_str(&format!(r#"{{"content": "{}", "port": 7680, {rest}}}"#, "ab".repeat(32)))
    }

    #[test]
    fn queries_are_strict_and_name_the_field() {
        let ok = query(r#""mode": 1, "addresses": ["192.168.1.20/24", "fd00::7/64"], "complete": true"#).unwrap();
        let addresses = ok.validate().unwrap();
        assert_eq!(addresses[0], PeerAddress { addr: "192.168.1.20".parse().unwrap(), prefix_len: 24 });
        assert_eq!(addresses[1].to_string(), "fd00::7/64");
        assert!(!ok.cache_server && ok.group.is_none());

        let err = query(r#""mode": 1, "peers": 3"#).unwrap_err().to_string();
        assert!(err.contains("unknown field `peers`"), "{err}");
        assert!(query(r#""addresses": []"#).is_err(), "mode is required");

        for (mode, says) in [(0, "mode 0"), (99, "mode 99"), (100, "mode 100"), (4, "not a download mode")] {
            let err = query(&format!(r#""mode": {mode}"#)).unwrap().validate().unwrap_err();
            assert_eq!(err.field, "mode");
            assert!(err.problem.contains(says), "{err}");
        }
        let mut bad = ok.clone();
        bad.content = bad.content.to_uppercase();
        assert_eq!(bad.validate().unwrap_err().field, "content");
        let mut bad = ok.clone();
        bad.port = 0;
        assert_eq!(bad.validate().unwrap_err().field, "port");
        let mut bad = ok.clone();
        bad.group = Some("Plant 7".into());
        assert_eq!(bad.validate().unwrap_err().field, "group");
        let mut bad = ok.clone();
        bad.addresses = vec!["10.0.0.1/8".into(); MAX_PEER_ADDRESSES + 1];
        assert_eq!(bad.validate().unwrap_err().field, "addresses");
        for address in ["10.0.0.1", "10.0.0.1/33", "::1/129", "0.0.0.0/0", "224.0.0.1/4", "host/24", "10.0.0.1/+8"] {
            let mut bad = ok.clone();
            bad.addresses = vec!["10.0.0.1/8".into(), address.into()];
            assert_eq!(bad.validate().unwrap_err().field, "addresses[1]", "{address}");
        }
    }

    #[test]
    fn peer_lists_name_kinds_in_kebab_case_and_tolerate_new_ones() {
        let list = PeerList {
            peers: vec![PeerEntry {
                device: Uuid::from_u128(7),
                address: "192.168.1.20:7680".into(),
                kind: PeerKind::CacheServer,
                complete: true,
            }],
            refresh_after_seconds: 300,
        };
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["peers"][0]["kind"], "cache-server");
        assert_eq!(serde_json::from_value::<PeerList>(json).unwrap(), list);
        let newer: PeerEntry = serde_json::from_str(
            r#"{"device": "00000000-0000-0000-0000-000000000007", "address": "[fd00::7]:7680", "kind": "relay",
                "complete": false, "rtt_ms": 3}"#,
        )
        .unwrap();
        assert_eq!(newer.kind, PeerKind::Unknown);
    }
}

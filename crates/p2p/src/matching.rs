//! Which devices may exchange a content, by Delivery Optimization's download modes: the rule behind the service's
//! peer-matching endpoint (`POST /device/v1/peers`) and local discovery.
//!
//! - Modes 0 (HTTP only), 99 (simple) and 100 (bypass) never peer.
//! - Mode 1 (LAN): devices on the same LAN: the same public address as the service sees it (behind one NAT), or a
//!   shared subnet (see below).
//! - Mode 2 (group): LAN, or the same group id.
//! - Mode 3 (internet): anyone; the kind is [`PeerKind::Internet`] when neither LAN nor group.
//! - A cache server of the asker's group matches in modes 1 to 3 as [`PeerKind::CacheServer`].
//!
//! A pair matches only when the kind is allowed by **both** devices' modes: a device in LAN mode is never handed to
//! an internet peer.
//!
//! A *shared subnet* is a pair of interface addresses, one of each device, each inside the other's subnet (so both
//! sides agree on it), neither loopback, link-local, multicast or unspecified, with a prefix of at least /8 (IPv4)
//! or /32 (IPv6). Private ranges (RFC 1918, CGNAT, IPv6 ULA) are reused by every site, so a shared private subnet
//! counts only when the service sees both devices at private addresses too, i.e. inside one routed network; a
//! shared global subnet (typically an IPv6 /64, where devices have no common NAT address) always counts. Group
//! membership is configuration, not proof of identity; peers still authenticate with device certificates and verify
//! every piece.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::Error;
use crate::policy::DownloadMode;
use crate::swarm::PeerKind;
use crate::wire::ContentId;

/// One device taking part in the swarm of one content, as recorded by the matching service (or heard on the LAN).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The device id (the CN of its certificate).
    pub device: Uuid,
    pub content: ContentId,
    /// The device's download mode; it limits whom it is matched with.
    pub mode: DownloadMode,
    /// The address the service saw the request come from.
    pub public_addr: IpAddr,
    /// The device's interface addresses with their prefix lengths.
    pub addresses: Vec<Subnet>,
    /// The device's group id, if configured.
    pub group: Option<String>,
    /// The TCP port of its peer listener.
    pub port: u16,
    /// The device has the whole content.
    pub complete: bool,
    /// The device is a cache server for its group.
    pub cache_server: bool,
}

/// Whether `other` may be offered to `asking` as a peer for the same content, and as which kind. `None` for the
/// same device, another content, or a pair either device's mode does not allow.
pub fn matches(asking: &Announce, other: &Announce) -> Option<PeerKind> {
    if asking.device == other.device || asking.content != other.content {
        return None;
    }
    let same_group = matches!((&asking.group, &other.group), (Some(a), Some(b)) if !a.is_empty() && a == b);
    let kind = if other.cache_server && same_group {
        PeerKind::CacheServer
    } else if same_lan(asking, other) {
        PeerKind::Lan
    } else if same_group {
        PeerKind::Group
    } else {
        PeerKind::Internet
    };
    (asking.mode.allows(kind) && other.mode.allows(kind)).then_some(kind)
}

/// The same public address, or a shared subnet (module documentation). Symmetric.
fn same_lan(a: &Announce, b: &Announce) -> bool {
    if a.public_addr == b.public_addr && !a.public_addr.is_unspecified() {
        return true;
    }
    let private_network = !is_global(a.public_addr) && !is_global(b.public_addr);
    a.addresses.iter().any(|x| {
        b.addresses.iter().any(|y| {
            x.is_peering_subnet()
                && y.is_peering_subnet()
                && x.contains(y.addr)
                && y.contains(x.addr)
                && (is_global(x.addr) || private_network)
        })
    })
}

/// Whether `ip` is a globally unique unicast address: not private (RFC 1918, IPv6 ULA), shared (CGNAT), loopback,
/// link-local, multicast or unspecified.
fn is_global(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xffc0) == 0xfe80
                || (first & 0xfe00) == 0xfc00)
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An interface address with its prefix length, written `ip/prefix` (`192.168.1.20/24`, `2001:db8::7/64`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    pub addr: IpAddr,
    prefix_len: u8,
}

impl Subnet {
    /// Fails when the prefix is longer than the address (32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, Error> {
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        match prefix_len <= bits {
            true => Ok(Self { addr, prefix_len }),
            false => Err(Error::Parse {
                what: "address with prefix",
                text: format!("{addr}/{prefix_len}"),
                reason: format!("the prefix length is at most {bits}"),
            }),
        }
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside this subnet (same family, same leading `prefix_len` bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// An address that can say two devices share a link: unicast, not loopback or link-local, and a prefix no
    /// wider than /8 (IPv4) or /32 (IPv6).
    fn is_peering_subnet(&self) -> bool {
        match self.addr {
            IpAddr::V4(v4) => {
                self.prefix_len >= 8
                    && !(v4.is_loopback()
                        || v4.is_link_local()
                        || v4.is_unspecified()
                        || v4.is_broadcast()
                        || v4.is_multicast())
            }
            IpAddr::V6(v6) => {
                self.prefix_len >= 32
                    && !(v6.is_loopback()
                        || v6.is_unspecified()
                        || v6.is_multicast()
                        || (v6.segments()[0] & 0xffc0) == 0xfe80
                        || v6.to_ipv4_mapped().is_some())
            }
        }
    }
}

impl FromStr for Subnet {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Parse { what: "address with prefix", text: text.into(), reason };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| invalid("expected ip/prefix".into()))?;
        let addr: IpAddr = addr.parse().map_err(|e| invalid(format!("{e}")))?;
        let prefix_ok = !prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit());
        let prefix_len: u8 = match prefix_ok {
            true => prefix.parse().map_err(|e| invalid(format!("prefix length: {e}")))?,
            false => return Err(invalid("the prefix length is a decimal number".into())),
        };
        Self::new(addr, prefix_len).map_err(|_| invalid("the prefix length is longer than the address".into()))
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl fmt::Debug for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Subnet({self})")
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subnet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(n: u128, mode: DownloadMode, public: &str, addresses: &[&str], group: Option<&str>) -> Announce {
        Announce {
            device: Uuid::from_u128(n),
            content: ContentId([7; 32]),
            mode,
            public_addr: public.parse().unwrap(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            group: group.map(Into::into),
            port: 7680,
            complete: false,
            cache_server: false,
        }
    }

    use DownloadMode::{Bypass, Group, HttpOnly, Internet, Lan, Simple};

    #[test]
    fn modes_without_peering_match_nothing() {
        for mode in [HttpOnly, Simple, Bypass] {
            let a = device(1, mode, "203.0.113.1", &["192.168.1.2/24"], Some("g"));
            let b = device(2, Internet, "203.0.113.1", &["192.168.1.3/24"], Some("g"));
            assert_eq!(matches(&a, &b), None, "{mode:?} asking");
            assert_eq!(matches(&b, &a), None, "{mode:?} asked");
        }
    }

    #[test]
    fn lan_is_the_same_nat_or_a_shared_subnet() {
        // Same public address (one NAT), different private subnets.
        let a = device(1, Lan, "198.51.100.7", &["192.168.1.2/24"], None);
        let b = device(2, Lan, "198.51.100.7", &["10.0.0.3/16"], None);
        assert_eq!(matches(&a, &b), Some(PeerKind::Lan));
        // The same private subnet at two sites behind different NATs is not a LAN.
        let c = device(3, Lan, "198.51.100.8", &["192.168.1.3/24"], None);
        assert_eq!(matches(&a, &c), None);
        // Inside one routed network (the service sees private addresses), a shared private subnet is.
        let d = device(4, Lan, "10.1.2.3", &["10.1.2.3/24"], None);
        let e = device(5, Lan, "10.1.2.4", &["10.1.2.4/24"], None);
        let f = device(6, Lan, "10.1.3.4", &["10.1.3.4/24"], None);
        assert_eq!(matches(&d, &e), Some(PeerKind::Lan));
        assert_eq!(matches(&d, &f), None);
        // IPv6: one global /64, different addresses and no NAT.
        let g = device(7, Lan, "2a00:1450::1", &["2a00:1450::1/64"], None);
        let h = device(8, Lan, "2a00:1450::2", &["2a00:1450::2/64", "fe80::1/64"], None);
        let i = device(9, Lan, "2a00:1451::2", &["2a00:1451::2/64"], None);
        assert_eq!(matches(&g, &h), Some(PeerKind::Lan));
        assert_eq!(matches(&g, &i), None);
        // Link-local, loopback and too wide prefixes say nothing.
        let j = device(10, Lan, "10.9.9.1", &["fe80::1/64", "127.0.0.1/8", "11.0.0.1/4"], None);
        let k = device(11, Lan, "10.9.9.2", &["fe80::2/64", "127.0.0.2/8", "11.1.0.1/4"], None);
        assert_eq!(matches(&j, &k), None);
        // Both sides must agree on the subnet.
        let l = device(12, Lan, "10.9.9.1", &["10.5.1.9/16"], None);
        let m = device(13, Lan, "10.9.9.2", &["10.5.1.1/24"], None);
        assert_eq!(matches(&l, &m), Some(PeerKind::Lan));
        let n = device(14, Lan, "10.9.9.2", &["10.5.1.1/24"], None);
        let o = device(15, Lan, "10.9.9.3", &["10.5.0.2/24"], None);
        assert_eq!(matches(&n, &o), None);
    }

    #[test]
    fn group_mode_adds_the_group_and_internet_mode_everyone() {
        let a = device(1, Group, "198.51.100.1", &[], Some("site-a"));
        let same_group = device(2, Group, "198.51.100.2", &[], Some("site-a"));
        let other_group = device(3, Group, "198.51.100.3", &[], Some("site-b"));
        let lan_no_group = device(4, Group, "198.51.100.1", &[], None);
        assert_eq!(matches(&a, &same_group), Some(PeerKind::Group));
        assert_eq!(matches(&a, &other_group), None);
        assert_eq!(matches(&a, &lan_no_group), Some(PeerKind::Lan));
        // A LAN-mode device is not handed out as a group peer, nor does it receive one.
        let lan_mode = device(5, Lan, "198.51.100.9", &[], Some("site-a"));
        assert_eq!(matches(&a, &lan_mode), None);
        assert_eq!(matches(&lan_mode, &a), None);
        // Empty group ids do not group.
        let empty_a = device(6, Group, "198.51.100.11", &[], Some(""));
        let empty_b = device(7, Group, "198.51.100.12", &[], Some(""));
        assert_eq!(matches(&empty_a, &empty_b), None);

        let x = device(8, Internet, "198.51.100.20", &[], None);
        let y = device(9, Internet, "203.0.113.20", &[], None);
        assert_eq!(matches(&x, &y), Some(PeerKind::Internet));
        assert_eq!(matches(&a, &y), None, "group mode does not take internet peers");
        let z = device(10, Internet, "198.51.100.1", &[], Some("site-a"));
        assert_eq!(matches(&x, &z), Some(PeerKind::Internet));
        assert_eq!(matches(&a, &z), Some(PeerKind::Lan));
    }

    #[test]
    fn cache_servers_of_the_group_match_in_modes_one_to_three() {
        let mut cache = device(100, Internet, "192.0.2.50", &[], Some("site-a"));
        cache.cache_server = true;
        cache.complete = true;
        for mode in [Lan, Group, Internet] {
            let asker = device(1, mode, "198.51.100.1", &[], Some("site-a"));
            assert_eq!(matches(&asker, &cache), Some(PeerKind::CacheServer), "{mode:?}");
        }
        for mode in [HttpOnly, Simple, Bypass] {
            let asker = device(1, mode, "198.51.100.1", &[], Some("site-a"));
            assert_eq!(matches(&asker, &cache), None, "{mode:?}");
        }
        let other_group = device(2, Lan, "198.51.100.1", &[], Some("site-b"));
        assert_eq!(matches(&other_group, &cache), None);
    }

    #[test]
    fn never_the_same_device_or_another_content() {
        let a = device(1, Internet, "198.51.100.1", &[], None);
        assert_eq!(matches(&a, &a.clone()), None);
        let mut b = device(2, Internet, "198.51.100.1", &[], None);
        b.content = ContentId([8; 32]);
        assert_eq!(matches(&a, &b), None);
    }

    #[test]
    fn subnets_parse_strictly() {
        let s: Subnet = "192.168.1.20/24".parse().unwrap();
        assert_eq!(s.to_string(), "192.168.1.20/24");
        assert!(s.contains("192.168.1.200".parse().unwrap()));
        assert!(!s.contains("192.168.2.1".parse().unwrap()));
        assert!(!s.contains("::1".parse().unwrap()));
        let all: Subnet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: Subnet = "2001:db8::7/64".parse().unwrap();
        assert!(v6.contains("2001:db8::ffff".parse().unwrap()));
        for bad in ["192.168.1.1", "192.168.1.1/33", "::1/129", "1.2.3.4/", "1.2.3.4/+1", "1.2.3.4/0024", "x/8", ""] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"192.168.1.20/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).unwrap(), s);
    }
}

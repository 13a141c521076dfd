//! Peer announcements: the service's side of peer-to-peer delivery (docs/store.md, "Peers").
//!
//! A device downloading or holding a content announces itself for it
//! ([`Store::announce_peer`](crate::Store::announce_peer)): the address the service saw its request come from, the
//! networks of its interfaces, its port, and whether it has the whole content or is a cache server. The announcement
//! expires unless the device repeats it. In the same transaction the store returns the other devices' live
//! announcements for that content that may be on the asker's LAN, in its group, or anywhere ([`PeerReach`]): a
//! superset of what the download mode allows, which the service narrows with `custody_p2p::matching`. Revoked
//! devices are never returned, and revoking a device withdraws its announcements.

use core::fmt;
use core::str::FromStr;
use std::net::IpAddr;

use jiff::Timestamp;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};

use crate::device::{DeviceId, GroupName, Sha256};
use crate::sql::{Backend, SqlStore, parse, timestamp};
use crate::{Error, limits};

/// An address of one of a device's interfaces and its prefix length: `192.168.1.20/24`, `2001:db8::7/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerNetwork {
    addr: IpAddr,
    prefix_len: u8,
}

/// One device's announcement for one content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAnnouncement {
    pub device: DeviceId,
    /// The content's SHA-256.
    pub content: Sha256,
    /// The device's download mode (Delivery Optimization's number), which limits whom it is matched with.
    pub mode: u8,
    /// The address the service saw the device's request come from (behind NAT: the NAT's public address).
    pub public_addr: IpAddr,
    /// The device's interfaces, at most [`limits::MAX_PEER_ADDRESSES`].
    pub addresses: Vec<PeerNetwork>,
    /// Where the device accepts peer connections (not 0).
    pub port: u16,
    /// The device has every piece.
    pub complete: bool,
    /// The device is a cache server of its group.
    pub cache_server: bool,
    pub expires_at: Timestamp,
}

/// Another device's live announcement, with the group that device is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCandidate {
    pub announcement: PeerAnnouncement,
    pub group: Option<GroupName>,
}

/// Which announcements [`Store::announce_peer`](crate::Store::announce_peer) returns. Each includes the previous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerReach {
    /// Devices with the asker's public address, devices sharing one of its networks (same network address and
    /// prefix length), and cache servers of its group.
    Lan,
    /// Also every device of the asker's group.
    Group,
    /// Every device.
    Anyone,
}

impl PeerNetwork {
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, Error> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return Err(Error::invalid(
                "peer network",
                format!("{addr}/{prefix_len}: the prefix is longer than {bits}"),
            ));
        }
        Ok(Self { addr, prefix_len })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The network itself: the address with its host bits cleared (`192.168.1.0/24`).
    pub fn network(&self) -> Self {
        let addr = match self.addr {
            IpAddr::V4(addr) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V4((u32::from(addr) & mask).into())
            }
            IpAddr::V6(addr) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V6((u128::from(addr) & mask).into())
            }
        };
        Self { addr, prefix_len: self.prefix_len }
    }
}

impl fmt::Display for PeerNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for PeerNetwork {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let parsed = text
            .split_once('/')
            .and_then(|(addr, prefix)| Some((addr.parse::<IpAddr>().ok()?, prefix.parse::<u8>().ok()?)));
        match parsed {
            Some((addr, prefix_len)) => Self::new(addr, prefix_len),
            None => Err(Error::invalid("peer network", format!("{text:?} is not ip/prefix-length"))),
        }
    }
}

impl PeerAnnouncement {
    /// Checks the bounds the store enforces.
    pub fn validate(&self, now: Timestamp) -> Result<(), Error> {
        if self.addresses.len() > limits::MAX_PEER_ADDRESSES {
            return Err(Error::invalid(
                "peer addresses",
                format!("{} addresses, at most {} allowed", self.addresses.len(), limits::MAX_PEER_ADDRESSES),
            ));
        }
        if self.port == 0 {
            return Err(Error::invalid("peer port", "0 is not a port to connect to"));
        }
        if self.expires_at <= now {
            return Err(Error::invalid(
                "peer announcement expiry",
                format!("{} is not in the future", self.expires_at),
            ));
        }
        Ok(())
    }
}

impl PeerReach {
    /// The number the candidates query compares with.
    fn code(self) -> i64 {
        match self {
            Self::Lan => 1,
            Self::Group => 2,
            Self::Anyone => 3,
        }
    }
}

impl<B> SqlStore<B>
where
    B: Backend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'c> &'c Pool<B>: Executor<'c, Database = B>,
    B::Arguments: IntoArguments<B>,
    i64: for<'q> Encode<'q, B> + for<'r> Decode<'r, B> + Type<B>,
    String: for<'q> Encode<'q, B> + for<'r> Decode<'r, B> + Type<B>,
    Option<i64>: for<'q> Encode<'q, B>,
    Option<String>: for<'q> Encode<'q, B>,
    &'static str: ColumnIndex<B::Row>,
{
    /// Records (or renews) `announcement` and returns up to `limit` live announcements of other, unrevoked devices
    /// for the same content within `reach` of the asker: cache servers first, then devices with the whole content,
    /// then those behind the asker's public address, then in its group, then the most recently renewed. Expired
    /// announcements are deleted on the way. A revoked device cannot announce ([`Error::DeviceRevoked`]).
    pub async fn announce_peer(
        &self,
        announcement: &PeerAnnouncement,
        reach: PeerReach,
        limit: u32,
        now: Timestamp,
    ) -> Result<Vec<PeerCandidate>, Error> {
        announcement.validate(now)?;
        if !(1..=limits::MAX_PEER_CANDIDATES).contains(&limit) {
            return Err(Error::invalid(
                "peer candidates limit",
                format!("{limit}; 1 to {} allowed", limits::MAX_PEER_CANDIDATES),
            ));
        }
        sqlx::query("DELETE FROM peer_announcements WHERE expires_at <= $1")
            .bind(now.as_microsecond())
            .execute(&self.pool)
            .await?;
        let (device, content) = (announcement.device.to_string(), announcement.content.to_string());
        let mut tx = B::begin_write(&self.pool).await?;
        if !Self::touch_in(&mut tx, &announcement.device, now).await? {
            return Err(Error::UnknownDevice(announcement.device));
        }
        let asker =
            Self::device_in(&mut tx, &announcement.device).await?.ok_or(Error::UnknownDevice(announcement.device))?;
        if asker.revoked_at.is_some() {
            return Err(Error::DeviceRevoked(asker.id));
        }
        let addresses: Vec<String> = announcement.addresses.iter().map(PeerNetwork::to_string).collect();
        sqlx::query(
            "INSERT INTO peer_announcements \
             (content, device_id, mode, public_addr, addresses, port, complete, cache_server, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (content, device_id) DO UPDATE SET \
             mode = excluded.mode, public_addr = excluded.public_addr, addresses = excluded.addresses, port = excluded.port, \
             complete = excluded.complete, cache_server = excluded.cache_server, expires_at = excluded.expires_at",
        )
        .bind(content.clone())
        .bind(device.clone())
        .bind(i64::from(announcement.mode))
        .bind(announcement.public_addr.to_string())
        // Invariant: a list of strings always serializes.
        .bind(serde_json::to_string(&addresses).expect("strings serialize"))
        .bind(i64::from(announcement.port))
        .bind(i64::from(announcement.complete))
        .bind(i64::from(announcement.cache_server))
        .bind(announcement.expires_at.as_microsecond())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM peer_networks WHERE content = $1 AND device_id = $2")
            .bind(content.clone())
            .bind(device.clone())
            .execute(&mut *tx)
            .await?;
        let networks: std::collections::BTreeSet<String> =
            announcement.addresses.iter().map(|address| address.network().to_string()).collect();
        for network in networks {
            sqlx::query("INSERT INTO peer_networks (content, device_id, network) VALUES ($1, $2, $3)")
                .bind(content.clone())
                .bind(device.clone())
                .bind(network)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query(
            "SELECT a.device_id, a.mode, a.public_addr, a.addresses, a.port, a.complete, a.cache_server, a.expires_at, \
             d.device_group FROM peer_announcements a JOIN devices d ON d.id = a.device_id \
             WHERE a.content = $1 AND a.device_id <> $2 AND a.expires_at > $3 AND d.revoked_at IS NULL \
             AND ($4 = 3 OR a.public_addr = $5 OR (a.cache_server = 1 AND d.device_group = $6) \
                  OR ($4 = 2 AND d.device_group = $6) \
                  OR EXISTS (SELECT 1 FROM peer_networks theirs JOIN peer_networks mine ON mine.network = theirs.network \
                             WHERE theirs.content = a.content AND theirs.device_id = a.device_id \
                             AND mine.content = $1 AND mine.device_id = $2)) \
             ORDER BY a.cache_server DESC, a.complete DESC, \
             CASE WHEN a.public_addr = $5 THEN 0 WHEN d.device_group = $6 THEN 1 ELSE 2 END, \
             a.expires_at DESC, a.device_id LIMIT $7",
        )
        .bind(content)
        .bind(device)
        .bind(now.as_microsecond())
        .bind(reach.code())
        .bind(announcement.public_addr.to_string())
        .bind(asker.group.as_ref().map(GroupName::to_string))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|row| candidate_from_row::<B>(row, announcement.content)).collect()
    }
}

fn candidate_from_row<B>(row: &B::Row, content: Sha256) -> Result<PeerCandidate, Error>
where
    B: Backend,
    i64: for<'r> Decode<'r, B> + Type<B>,
    String: for<'r> Decode<'r, B> + Type<B>,
    &'static str: ColumnIndex<B::Row>,
{
    let addresses: String = row.try_get("addresses")?;
    let addresses: Vec<String> =
        serde_json::from_str(&addresses).map_err(|error| Error::corrupt("peer addresses", error))?;
    let port: i64 = row.try_get("port")?;
    let mode: i64 = row.try_get("mode")?;
    let group: Option<String> = row.try_get("device_group")?;
    let announcement = PeerAnnouncement {
        device: parse("device id", row.try_get("device_id")?)?,
        content,
        mode: u8::try_from(mode).map_err(|error| Error::corrupt("peer download mode", error))?,
        public_addr: parse("peer public address", row.try_get("public_addr")?)?,
        addresses: addresses.into_iter().map(|text| parse("peer network", text)).collect::<Result<_, _>>()?,
        port: u16::try_from(port).map_err(|error| Error::corrupt("peer port", error))?,
        complete: row.try_get::<i64, _>("complete")? != 0,
        cache_server: row.try_get::<i64, _>("cache_server")? != 0,
        expires_at: timestamp(row.try_get("expires_at")?)?,
    };
    Ok(PeerCandidate { announcement, group: group.map(|group| parse("group name", group)).transpose()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_clear_host_bits() {
        let lan: PeerNetwork = "192.168.1.20/24".parse().unwrap();
        assert_eq!(lan.network().to_string(), "192.168.1.0/24");
        assert_eq!(lan.to_string(), "192.168.1.20/24");
        let v6: PeerNetwork = "2001:db8::7/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "2001:db8::/64");
        assert_eq!("10.1.2.3/0".parse::<PeerNetwork>().unwrap().network().to_string(), "0.0.0.0/0");
        assert_eq!("10.1.2.3/32".parse::<PeerNetwork>().unwrap().network().to_string(), "10.1.2.3/32");
        for bad in ["10.1.2.3/33", "10.1.2.3", "::1/129", "host/24", "10.1.2.3/-1", ""] {
            assert!(bad.parse::<PeerNetwork>().is_err(), "{bad}");
        }
    }
}

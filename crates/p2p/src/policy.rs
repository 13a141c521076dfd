//! Delivery Optimization's policies for custody: download modes, the defaults Windows ships with, and the decisions
//! taken from them. Every decision that says no returns a [`Refusal`] naming why.
//!
//! Sizes are in bytes. Delivery Optimization states its limits in "GB" and "MB" and means binary units, as Windows
//! counts them; the defaults below are GiB and MiB. Durations in serialised form use the friendly format (`"72h"`,
//! `"30s"`).
//!
//! | Field | Default | Delivery Optimization policy |
//! |---|---|---|
//! | `download_mode` | 1 (LAN) | `DODownloadMode` |
//! | `group` | none | `DOGroupID` |
//! | `max_cache_percent` | 20 | `DOMaxCacheSize` (% of the free disk) |
//! | `max_cache_size` | 10 GiB | `DOAbsoluteMaxCacheSize` (the smaller of the two wins) |
//! | `max_cache_age` | 72 h (0 = unlimited) | `DOMaxCacheAge` |
//! | `min_file_size` | 50 MiB | `DOMinFileSizeToCache` (1 to 10 MiB recommended for large sites) |
//! | `min_ram` | 4 GiB | `DOMinRAMAllowedToPeer` |
//! | `min_disk` | 32 GiB | `DOMinDiskSizeAllowedToPeer` |
//! | `monthly_upload_cap` | 20 GiB (0 = unlimited) | `DOMonthlyUploadDataCap` (to internet peers) |
//! | `max_upload_rate` | 0 = unlimited | `DOMaxUploadBandwidth` |
//! | `max_foreground_download_rate`, `max_background_download_rate` | 0 = unlimited | `DOMaxForegroundDownloadBandwidth`, `DOMaxBackgroundDownloadBandwidth` |
//! | `http_delay_foreground`, `http_delay_background` | 0 (HTTP from the start) | `DODelay{Fore,Back}groundDownloadFromHttp` |
//! | `min_background_qos` | 500 KiB/s | `DOMinBackgroundQos` (custody applies it to foreground downloads too) |
//! | `min_battery_to_upload` | none: no uploads on battery | `DOMinBatteryPercentageAllowedToUpload` (40–60 % recommended) |

use core::fmt;
use core::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Error;
use crate::swarm::PeerKind;
use crate::wire::ContentId;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Delivery Optimization's download modes (`DODownloadMode`), serialised as their number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DownloadMode {
    /// 0: HTTP only, no peering.
    HttpOnly,
    /// 1: peers on the same LAN (behind the same NAT, or on a shared subnet).
    #[default]
    Lan,
    /// 2: LAN peers and peers of the same group.
    Group,
    /// 3: LAN, group and internet peers.
    Internet,
    /// 99: HTTP only, without the matching service.
    Simple,
    /// 100: HTTP only, the download left to another mechanism (obsolete in Windows; kept for the number).
    Bypass,
}

impl DownloadMode {
    pub fn code(self) -> u8 {
        match self {
            Self::HttpOnly => 0,
            Self::Lan => 1,
            Self::Group => 2,
            Self::Internet => 3,
            Self::Simple => 99,
            Self::Bypass => 100,
        }
    }

    pub fn from_code(code: u64) -> Result<Self, Error> {
        Ok(match code {
            0 => Self::HttpOnly,
            1 => Self::Lan,
            2 => Self::Group,
            3 => Self::Internet,
            99 => Self::Simple,
            100 => Self::Bypass,
            other => {
                return Err(Error::Parse {
                    what: "download mode",
                    text: other.to_string(),
                    reason: "expected 0 (http-only), 1 (lan), 2 (group), 3 (internet), 99 (simple) or 100 (bypass)"
                        .into(),
                });
            }
        })
    }

    /// Whether this mode takes part in peer-to-peer delivery at all (modes 1, 2 and 3).
    pub fn peers(self) -> bool {
        matches!(self, Self::Lan | Self::Group | Self::Internet)
    }

    /// Whether a device in this mode may exchange content with a peer of this kind.
    pub fn allows(self, kind: PeerKind) -> bool {
        match self {
            Self::HttpOnly | Self::Simple | Self::Bypass => false,
            Self::Lan => matches!(kind, PeerKind::Lan | PeerKind::CacheServer),
            Self::Group => !matches!(kind, PeerKind::Internet),
            Self::Internet => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::HttpOnly => "http-only",
            Self::Lan => "lan",
            Self::Group => "group",
            Self::Internet => "internet",
            Self::Simple => "simple",
            Self::Bypass => "bypass",
        }
    }
}

impl fmt::Display for DownloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.name())
    }
}

/// The number (`1`) or the name (`lan`, `http-only`, `group`, `internet`, `simple`, `bypass`).
impl FromStr for DownloadMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let named = [Self::HttpOnly, Self::Lan, Self::Group, Self::Internet, Self::Simple, Self::Bypass]
            .into_iter()
            .find(|mode| mode.name() == text);
        match (named, text.parse::<u64>()) {
            (Some(mode), _) => Ok(mode),
            (None, Ok(code)) => Self::from_code(code),
            (None, Err(_)) => Self::from_code(u64::MAX).map_err(|e| match e {
                Error::Parse { what, reason, .. } => Error::Parse { what, text: text.into(), reason },
                other => other,
            }),
        }
    }
}

impl Serialize for DownloadMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for DownloadMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_code(u64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// The peer-to-peer policy of a device, with Delivery Optimization's defaults (module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerPolicy {
    pub download_mode: DownloadMode,
    /// The group id (mode 2); any string agreed on by the devices of a site.
    pub group: Option<String>,
    /// The cache may use this percentage of the free disk (the cache's own files counted as free).
    pub max_cache_percent: u8,
    /// ... and at most this many bytes; the smaller limit wins.
    pub max_cache_size: u64,
    /// A cached content is removed this long after its download completed; 0 keeps it until space is needed.
    #[serde(with = "friendly_duration")]
    pub max_cache_age: Duration,
    /// Smaller content is downloaded over HTTP only and not cached for peers.
    pub min_file_size: u64,
    /// Devices with less RAM (total) do not take part.
    pub min_ram: u64,
    /// Devices with a smaller disk (total) do not take part.
    pub min_disk: u64,
    /// Bytes uploaded to internet peers per calendar month; 0 is unlimited.
    pub monthly_upload_cap: u64,
    /// Upload rate limit in bytes per second; 0 is unlimited.
    pub max_upload_rate: u64,
    /// Download rate limits in bytes per second for foreground (user-started) and background downloads; 0 is
    /// unlimited.
    pub max_foreground_download_rate: u64,
    pub max_background_download_rate: u64,
    /// How long HTTP waits before it also takes other devices' shares of the pieces, and pieces slow peers have (it
    /// takes its own share of those no peer has at once; custody_p2p::swarm).
    #[serde(with = "friendly_duration")]
    pub http_delay_foreground: Duration,
    #[serde(with = "friendly_duration")]
    pub http_delay_background: Duration,
    /// Bytes per second below which peers are too slow: after the HTTP delay, HTTP then also takes pieces peers
    /// have, if it is faster ([`SwarmConfig::min_peer_rate`](crate::SwarmConfig)).
    pub min_background_qos: u64,
    /// On battery, upload only at or above this charge; none: never upload on battery.
    pub min_battery_to_upload: Option<u8>,
}

impl Default for PeerPolicy {
    fn default() -> Self {
        Self {
            download_mode: DownloadMode::Lan,
            group: None,
            max_cache_percent: 20,
            max_cache_size: 10 * GIB,
            max_cache_age: Duration::from_secs(3 * 24 * 3600),
            min_file_size: 50 * MIB,
            min_ram: 4 * GIB,
            min_disk: 32 * GIB,
            monthly_upload_cap: 20 * GIB,
            max_upload_rate: 0,
            max_foreground_download_rate: 0,
            max_background_download_rate: 0,
            http_delay_foreground: Duration::ZERO,
            http_delay_background: Duration::ZERO,
            min_background_qos: 500 * 1024,
            min_battery_to_upload: None,
        }
    }
}

impl PeerPolicy {
    /// Whether content of `len` bytes may be downloaded from peers (and then cached and offered to them).
    pub fn may_download_from_peers(&self, len: u64, device: &DeviceResources) -> Result<(), Refusal> {
        self.check_device(device)?;
        if len < self.min_file_size {
            return Err(Refusal::FileTooSmall { len, min: self.min_file_size });
        }
        Ok(())
    }

    /// Whether the device may upload to a peer of kind `to` now, having uploaded `uploaded_to_internet_this_month`
    /// bytes to internet peers this calendar month (the monthly cap counts only those).
    pub fn may_upload(
        &self,
        device: &DeviceResources,
        to: PeerKind,
        uploaded_to_internet_this_month: u64,
    ) -> Result<(), Refusal> {
        self.check_device(device)?;
        if !self.download_mode.allows(to) {
            return Err(Refusal::PeerKind { mode: self.download_mode, kind: to });
        }
        if device.on_battery {
            match (self.min_battery_to_upload, device.battery_percent) {
                (None, _) => return Err(Refusal::OnBattery),
                (Some(min), Some(percent)) if percent >= min => {}
                (Some(min), percent) => return Err(Refusal::BatteryLow { percent, min }),
            }
        }
        if to == PeerKind::Internet
            && self.monthly_upload_cap != 0
            && uploaded_to_internet_this_month >= self.monthly_upload_cap
        {
            return Err(Refusal::MonthlyUploadCap {
                uploaded: uploaded_to_internet_this_month,
                cap: self.monthly_upload_cap,
            });
        }
        Ok(())
    }

    /// The most bytes the cache may hold: `max_cache_percent` of the free disk (counting the cache's own `cached`
    /// bytes as free, so the limit does not shrink as the cache fills), and at most `max_cache_size`.
    pub fn cache_limit(&self, device: &DeviceResources, cached: u64) -> u64 {
        let available = u128::from(device.free_disk) + u128::from(cached);
        let share = available * u128::from(self.max_cache_percent.min(100)) / 100;
        u64::try_from(share).unwrap_or(u64::MAX).min(self.max_cache_size)
    }

    /// The cached contents to remove now, oldest first: every entry older than `max_cache_age`, then more of the
    /// oldest until the rest fits in [`PeerPolicy::cache_limit`].
    pub fn cache_evictions(&self, entries: &[CacheEntry], device: &DeviceResources, now: SystemTime) -> Vec<ContentId> {
        let mut by_age: Vec<&CacheEntry> = entries.iter().collect();
        by_age.sort_by_key(|entry| (entry.completed, entry.content));
        let cached = entries.iter().fold(0u64, |sum, entry| sum.saturating_add(entry.size));
        let limit = self.cache_limit(device, cached);
        let mut kept = cached;
        let mut evicted = Vec::new();
        for entry in by_age {
            let age = now.duration_since(entry.completed).unwrap_or(Duration::ZERO);
            let expired = !self.max_cache_age.is_zero() && age >= self.max_cache_age;
            if expired || kept > limit {
                kept = kept.saturating_sub(entry.size);
                evicted.push(entry.content);
            }
        }
        evicted
    }

    /// The download rate limit in bytes per second (0: unlimited).
    pub fn download_rate(&self, foreground: bool) -> u64 {
        match foreground {
            true => self.max_foreground_download_rate,
            false => self.max_background_download_rate,
        }
    }

    /// The HTTP delay, for [`SwarmConfig::http_delay`](crate::SwarmConfig).
    pub fn http_delay(&self, foreground: bool) -> Duration {
        match foreground {
            true => self.http_delay_foreground,
            false => self.http_delay_background,
        }
    }

    /// The checks shared by downloads and uploads: the mode peers, the device is big enough.
    fn check_device(&self, device: &DeviceResources) -> Result<(), Refusal> {
        if !self.download_mode.peers() {
            return Err(Refusal::Mode(self.download_mode));
        }
        if device.total_ram < self.min_ram {
            return Err(Refusal::NotEnoughRam { ram: device.total_ram, min: self.min_ram });
        }
        if device.total_disk < self.min_disk {
            return Err(Refusal::NotEnoughDisk { disk: device.total_disk, min: self.min_disk });
        }
        Ok(())
    }
}

/// What the device is and has now, measured by the caller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceResources {
    /// Total RAM in bytes.
    pub total_ram: u64,
    /// Size of the disk holding the cache, in bytes.
    pub total_disk: u64,
    /// Free bytes on that disk.
    pub free_disk: u64,
    pub on_battery: bool,
    /// Battery charge in percent, when known.
    pub battery_percent: Option<u8>,
}

/// One content in the peer cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheEntry {
    pub content: ContentId,
    pub size: u64,
    /// When its download completed (wall-clock time, persisted with the cache).
    pub completed: SystemTime,
}

/// Why a policy decision said no.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("download mode {0} does not use peers")]
    Mode(DownloadMode),
    #[error("download mode {mode} does not exchange content with {kind} peers")]
    PeerKind { mode: DownloadMode, kind: PeerKind },
    #[error("content of {len} bytes is below the minimum file size for peering ({min} bytes)")]
    FileTooSmall { len: u64, min: u64 },
    #[error("the device has {ram} bytes of RAM, below the minimum for peering ({min})")]
    NotEnoughRam { ram: u64, min: u64 },
    #[error("the device's disk has {disk} bytes, below the minimum for peering ({min})")]
    NotEnoughDisk { disk: u64, min: u64 },
    #[error("the device is on battery and uploads on battery are off")]
    OnBattery,
    #[error("the battery is at {}, below the {min} % needed to upload on battery", match .percent {
        Some(percent) => format!("{percent} %"),
        None => "an unknown level".to_owned(),
    })]
    BatteryLow { percent: Option<u8>, min: u8 },
    #[error("{uploaded} bytes uploaded to internet peers this month reach the monthly cap of {cap}")]
    MonthlyUploadCap { uploaded: u64, cap: u64 },
}

/// A token bucket: `rate` bytes per second, up to `burst` bytes at once. 0 is unlimited. [`RateLimiter::take`] says
/// how long to wait before sending (or after receiving) the bytes taken, so a large piece is paid for after the fact
/// and the average rate holds.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    /// Tokens in nanobytes (bytes × 10⁹), negative while in debt.
    tokens: i128,
    last: Instant,
}

const NANOS: i128 = 1_000_000_000;

impl RateLimiter {
    /// A full bucket of `burst` bytes (at least 1) refilled at `rate` bytes per second; `rate` 0 never waits.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let burst = burst.max(1);
        Self { rate, burst, tokens: i128::from(burst) * NANOS, last: now }
    }

    /// Changes the rate (the bucket keeps its tokens, capped at the burst).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate;
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Takes `bytes` from the bucket and returns how long to wait until the bucket is out of debt (zero when it
    /// held enough).
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= i128::from(bytes) * NANOS;
        match self.tokens >= 0 {
            true => Duration::ZERO,
            false => {
                let rate = i128::from(self.rate);
                // Nanoseconds until the debt is refilled, rounded up: debt (nanobytes) / rate (bytes per second).
                let nanos = (-self.tokens + rate - 1) / rate;
                Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let added = i128::try_from(elapsed.as_nanos()).unwrap_or(i128::MAX / 2).saturating_mul(i128::from(self.rate));
        self.tokens = self.tokens.saturating_add(added).min(i128::from(self.burst) * NANOS);
    }
}

/// Durations written in jiff's friendly format (`"72h"`, `"1m 30s"`), read in it or ISO 8601.
mod friendly_duration {
    use std::time::Duration;

    use jiff::SignedDuration;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let signed = SignedDuration::try_from(*duration).map_err(serde::ser::Error::custom)?;
        serializer.collect_str(&format_args!("{signed:#}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        let signed: SignedDuration = text.parse().map_err(serde::de::Error::custom)?;
        Duration::try_from(signed).map_err(|_| serde::de::Error::custom(format!("negative duration {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_device() -> DeviceResources {
        DeviceResources {
            total_ram: 8 * GIB,
            total_disk: 256 * GIB,
            free_disk: 100 * GIB,
            on_battery: false,
            battery_percent: None,
        }
    }

    #[test]
    fn defaults_are_delivery_optimizations() {
        let policy = PeerPolicy::default();
        assert_eq!(policy.download_mode, DownloadMode::Lan);
        assert_eq!(policy.max_cache_percent, 20);
        assert_eq!(policy.max_cache_size, 10 * GIB);
        assert_eq!(policy.max_cache_age, Duration::from_secs(259_200));
        assert_eq!(policy.min_file_size, 50 * MIB);
        assert_eq!(policy.min_ram, 4 * GIB);
        assert_eq!(policy.min_disk, 32 * GIB);
        assert_eq!(policy.monthly_upload_cap, 20 * GIB);
        assert_eq!((policy.max_upload_rate, policy.download_rate(true), policy.download_rate(false)), (0, 0, 0));
        assert_eq!(policy.http_delay(false), Duration::ZERO);
        assert_eq!(policy.min_background_qos, 500 * 1024);
        assert_eq!(policy.min_battery_to_upload, None);

        // The serialised form reads back, and an empty section is the defaults.
        let json = serde_json::to_value(&policy).unwrap();
        assert_eq!(json["max_cache_age"], "72h");
        assert_eq!(json["download_mode"], 1);
        assert_eq!(serde_json::from_value::<PeerPolicy>(json).unwrap(), policy);
        assert_eq!(serde_json::from_str::<PeerPolicy>("{}").unwrap(), policy);
        let set: PeerPolicy =
            serde_json::from_str(r#"{"download_mode": 2, "group": "site-a", "http_delay_background": "1m"}"#).unwrap();
        assert_eq!(set.download_mode, DownloadMode::Group);
        assert_eq!(set.http_delay(false), Duration::from_secs(60));
        assert!(serde_json::from_str::<PeerPolicy>(r#"{"download_mode": 4}"#).is_err());
        assert!(serde_json::from_str::<PeerPolicy>(r#"{"max_cache_age": "-1s"}"#).is_err());
        assert!(serde_json::from_str::<PeerPolicy>(r#"{"unknown": 1}"#).is_err());
    }

    #[test]
    fn download_modes() {
        for (code, mode) in [
            (0, DownloadMode::HttpOnly),
            (1, DownloadMode::Lan),
            (2, DownloadMode::Group),
            (3, DownloadMode::Internet),
            (99, DownloadMode::Simple),
            (100, DownloadMode::Bypass),
        ] {
            assert_eq!(DownloadMode::from_code(code), Ok(mode));
            assert_eq!(mode.code() as u64, code);
            assert_eq!(code.to_string().parse::<DownloadMode>(), Ok(mode));
            assert_eq!(mode.name().parse::<DownloadMode>(), Ok(mode));
            assert_eq!(serde_json::to_string(&mode).unwrap(), code.to_string());
        }
        assert_eq!(DownloadMode::Group.to_string(), "2 (group)");
        let error = "4".parse::<DownloadMode>().unwrap_err().to_string();
        assert!(error.contains("invalid download mode \"4\"") && error.contains("99 (simple)"), "{error}");
        let error = "lan-ish".parse::<DownloadMode>().unwrap_err().to_string();
        assert!(error.contains("\"lan-ish\""), "{error}");
    }

    #[test]
    fn downloads_from_peers_name_each_refusal() {
        let policy = PeerPolicy::default();
        let device = big_device();
        assert_eq!(policy.may_download_from_peers(50 * MIB, &device), Ok(()));
        assert_eq!(
            policy.may_download_from_peers(50 * MIB - 1, &device),
            Err(Refusal::FileTooSmall { len: 50 * MIB - 1, min: 50 * MIB })
        );
        for mode in [DownloadMode::HttpOnly, DownloadMode::Simple, DownloadMode::Bypass] {
            let policy = PeerPolicy { download_mode: mode, ..PeerPolicy::default() };
            assert_eq!(policy.may_download_from_peers(GIB, &device), Err(Refusal::Mode(mode)));
        }
        let small_ram = DeviceResources { total_ram: 2 * GIB, ..device };
        assert_eq!(
            policy.may_download_from_peers(GIB, &small_ram),
            Err(Refusal::NotEnoughRam { ram: 2 * GIB, min: 4 * GIB })
        );
        let small_disk = DeviceResources { total_disk: 16 * GIB, ..device };
        let refusal = policy.may_download_from_peers(GIB, &small_disk).unwrap_err();
        assert_eq!(refusal, Refusal::NotEnoughDisk { disk: 16 * GIB, min: 32 * GIB });
        assert!(refusal.to_string().contains("below the minimum for peering"), "{refusal}");
        let large_site = PeerPolicy { min_file_size: MIB, ..PeerPolicy::default() };
        assert_eq!(large_site.may_download_from_peers(2 * MIB, &device), Ok(()));
    }

    #[test]
    fn uploads_name_each_refusal() {
        let policy = PeerPolicy::default();
        let device = big_device();
        assert_eq!(policy.may_upload(&device, PeerKind::Lan, 0), Ok(()));
        assert_eq!(
            policy.may_upload(&device, PeerKind::Internet, 0),
            Err(Refusal::PeerKind { mode: DownloadMode::Lan, kind: PeerKind::Internet })
        );
        let battery = DeviceResources { on_battery: true, battery_percent: Some(90), ..device };
        assert_eq!(policy.may_upload(&battery, PeerKind::Lan, 0), Err(Refusal::OnBattery));
        let on_battery_ok = PeerPolicy { min_battery_to_upload: Some(50), ..PeerPolicy::default() };
        assert_eq!(on_battery_ok.may_upload(&battery, PeerKind::Lan, 0), Ok(()));
        let low = DeviceResources { battery_percent: Some(49), ..battery };
        let refusal = on_battery_ok.may_upload(&low, PeerKind::Lan, 0).unwrap_err();
        assert_eq!(refusal, Refusal::BatteryLow { percent: Some(49), min: 50 });
        assert_eq!(refusal.to_string(), "the battery is at 49 %, below the 50 % needed to upload on battery");
        let unknown = DeviceResources { battery_percent: None, ..battery };
        assert_eq!(
            on_battery_ok.may_upload(&unknown, PeerKind::Lan, 0),
            Err(Refusal::BatteryLow { percent: None, min: 50 })
        );

        let internet = PeerPolicy { download_mode: DownloadMode::Internet, ..PeerPolicy::default() };
        assert_eq!(internet.may_upload(&device, PeerKind::Internet, 20 * GIB - 1), Ok(()));
        assert_eq!(
            internet.may_upload(&device, PeerKind::Internet, 20 * GIB),
            Err(Refusal::MonthlyUploadCap { uploaded: 20 * GIB, cap: 20 * GIB })
        );
        // The cap is for internet peers only; 0 lifts it.
        assert_eq!(internet.may_upload(&device, PeerKind::Lan, 100 * GIB), Ok(()));
        let uncapped = PeerPolicy { monthly_upload_cap: 0, ..internet };
        assert_eq!(uncapped.may_upload(&device, PeerKind::Internet, 100 * GIB), Ok(()));
        let http_only = PeerPolicy { download_mode: DownloadMode::HttpOnly, ..PeerPolicy::default() };
        assert_eq!(http_only.may_upload(&device, PeerKind::Lan, 0), Err(Refusal::Mode(DownloadMode::HttpOnly)));
    }

    fn entry(n: u8, size: u64, completed: SystemTime) -> CacheEntry {
        CacheEntry { content: ContentId([n; 32]), size, completed }
    }

    #[test]
    fn cache_evicts_by_age_then_by_size_oldest_first() {
        let policy = PeerPolicy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000);
        let hours = |h: u64| now - Duration::from_secs(h * 3600);
        let device = DeviceResources { free_disk: 100 * GIB, ..big_device() };
        // 20 % of (100 GiB free + cache) is above 10 GiB: the absolute limit applies.
        assert_eq!(policy.cache_limit(&device, 0), 10 * GIB);
        let small_disk = DeviceResources { free_disk: 10 * GIB, ..device };
        assert_eq!(policy.cache_limit(&small_disk, 0), 2 * GIB);
        assert_eq!(policy.cache_limit(&small_disk, 5 * GIB), 3 * GIB);

        // By age: older than 72 h goes, whatever the space.
        let entries = [entry(1, GIB, hours(80)), entry(2, GIB, hours(1)), entry(3, GIB, hours(72))];
        assert_eq!(policy.cache_evictions(&entries, &device, now), vec![ContentId([1; 32]), ContentId([3; 32])]);
        let unlimited_age = PeerPolicy { max_cache_age: Duration::ZERO, ..PeerPolicy::default() };
        assert!(unlimited_age.cache_evictions(&entries, &device, now).is_empty());

        // By size: the limit on 10 GiB free with 3 GiB cached is 20 % of 13 GiB = 2.6 GiB: the oldest goes first,
        // until the rest fits.
        let entries = [entry(1, GIB, hours(3)), entry(2, GIB, hours(1)), entry(3, GIB, hours(2))];
        let crowded = DeviceResources { free_disk: 10 * GIB, ..device };
        assert_eq!(policy.cache_evictions(&entries, &crowded, now), vec![ContentId([1; 32])]);
        let tiny = PeerPolicy { max_cache_size: GIB, ..PeerPolicy::default() };
        assert_eq!(tiny.cache_evictions(&entries, &crowded, now), vec![ContentId([1; 32]), ContentId([3; 32])]);
        // Entries from the future (clock changes) are young, not expired.
        let future = [entry(9, 1, now + Duration::from_secs(3600))];
        assert!(policy.cache_evictions(&future, &device, now).is_empty());
    }

    #[test]
    fn token_bucket() {
        let start = Instant::now();
        let mut bucket = RateLimiter::new(1000, 500, start);
        assert_eq!(bucket.take(500, start), Duration::ZERO, "the burst is there at once");
        assert_eq!(bucket.take(1000, start), Duration::from_secs(1), "1000 bytes of debt at 1000 B/s");
        // After waiting, the debt is paid and the next bytes cost their time.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.take(250, later), Duration::from_millis(250));
        // Refill never exceeds the burst.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!(bucket.take(500, much_later), Duration::ZERO);
        assert_eq!(bucket.take(1, much_later), Duration::from_millis(1));
        // The average rate holds over many takes.
        let mut bucket = RateLimiter::new(1_000_000, 64 * 1024, start);
        let mut now = start;
        for _ in 0..100 {
            now += bucket.take(100_000, now);
        }
        let elapsed = now - start;
        assert!(elapsed >= Duration::from_millis(9_934) && elapsed <= Duration::from_secs(10), "{elapsed:?}");
        // 0 is unlimited; changing the rate applies to the next take.
        let mut free = RateLimiter::new(0, 0, start);
        assert_eq!(free.take(u64::MAX, start), Duration::ZERO);
        free.set_rate(10, start);
        assert_eq!(free.take(11, start), Duration::from_secs(1));
    }
}

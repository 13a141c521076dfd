//! `repo.toml`: the parts of a repository that are not in its metadata.
//!
//! The metadata is authoritative for keys and thresholds (root for the top-level roles, the delegator for a delegated
//! role). `repo.toml` adds what the metadata cannot say: how long each role's metadata stays valid, which private key
//! file holds which key id, and which delegations this tool made (so that `add --role bins` knows `bins` is a group
//! of hashed bins).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;

/// The contents of `repo.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Layout version of the repository directory.
    pub format: u32,
    pub expiry: ExpiryConfig,
    /// Key id → private key file, relative to the repository directory (or absolute).
    ///
    /// A listed file may be absent: an offline key kept elsewhere. Its key then signs only through `sign --key`.
    #[serde(default)]
    pub keys: BTreeMap<String, PathBuf>,
    /// Delegations made by this tool, in the order they were made.
    #[serde(default, rename = "delegation")]
    pub delegations: Vec<DelegationConfig>,
}

/// How long newly signed metadata of each role stays valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryConfig {
    pub root: Expiry,
    pub targets: Expiry,
    /// Every delegated role that has no `expiry` of its own in its `[[delegation]]`.
    pub delegated: Expiry,
    pub snapshot: Expiry,
    pub timestamp: Expiry,
}

/// One delegation made by `custody repo delegate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationConfig {
    /// The delegated role, or for hashed bins the prefix of the bin names (and the name `add --role` accepts).
    pub name: String,
    pub delegator: String,
    /// Path patterns, for a plain delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Number of hashed bins, for a hashed-bin delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bins: Option<u32>,
    /// Validity of this delegation's metadata, if not `expiry.delegated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<Expiry>,
}

impl Config {
    pub const FORMAT: u32 = 1;

    pub(crate) fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        let config: Self =
            toml::from_str(&text).map_err(|e| Error::Config { path: path.to_owned(), reason: e.to_string() })?;
        if config.format != Self::FORMAT {
            return Err(Error::Config {
                path: path.to_owned(),
                reason: format!("format {} is not supported (this build reads format {})", config.format, Self::FORMAT),
            });
        }
        Ok(config)
    }

    pub(crate) fn to_toml(&self) -> Result<String, Error> {
        let body = toml::to_string_pretty(self)
            .map_err(|e| Error::Config { path: "repo.toml".into(), reason: e.to_string() })?;
        Ok(format!("# custody repository configuration: see docs/repository.md\n{body}"))
    }

    /// The validity period of newly signed metadata of `role`.
    pub fn expiry_of(&self, role: &str) -> Expiry {
        match role {
            "root" => self.expiry.root,
            "targets" => self.expiry.targets,
            "snapshot" => self.expiry.snapshot,
            "timestamp" => self.expiry.timestamp,
            _ => self.delegation_of(role).and_then(|d| d.expiry).unwrap_or(self.expiry.delegated),
        }
    }

    /// The `[[delegation]]` entry that made `role` (the role itself or, for a bin, its group).
    pub fn delegation_of(&self, role: &str) -> Option<&DelegationConfig> {
        self.delegations.iter().find(|d| d.name == role).or_else(|| {
            self.delegations.iter().find(|d| {
                d.bins.is_some() && role.strip_prefix(d.name.as_str()).is_some_and(|rest| rest.starts_with('-'))
            })
        })
    }

    /// The hashed-bin group named `name`, if there is one.
    pub fn bin_group(&self, name: &str) -> Option<&DelegationConfig> {
        self.delegations.iter().find(|d| d.name == name && d.bins.is_some())
    }
}

impl Default for ExpiryConfig {
    fn default() -> Self {
        let days = |d: u32| Expiry(u64::from(d) * 86_400);
        Self { root: days(365), targets: days(90), delegated: days(90), snapshot: days(7), timestamp: days(1) }
    }
}

/// A validity period, written in `repo.toml` and on the command line as a number with a unit: `90d`, `12h`, `30m`,
/// `2w` or `45s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry(pub u64);

impl Expiry {
    pub fn seconds(self) -> u64 {
        self.0
    }

    /// `now` plus this period, truncated to whole seconds as metadata writes it.
    pub fn after(self, now: jiff::Timestamp) -> jiff::Timestamp {
        let secs = now.as_second().saturating_add(i64::try_from(self.0).unwrap_or(i64::MAX));
        jiff::Timestamp::from_second(secs).unwrap_or(jiff::Timestamp::MAX)
    }
}

impl std::str::FromStr for Expiry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a period such as 90d, 12h, 30m, 2w or 45s");
        let trimmed = s.trim();
        let unit_at = trimmed.char_indices().last().map_or(0, |(i, _)| i);
        let (number, unit) = trimmed.split_at(unit_at);
        let n: u64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad()),
        };
        match n.checked_mul(scale) {
            Some(0) | None => Err(bad()),
            Some(secs) => Ok(Self(secs)),
        }
    }
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0;
        for (unit, scale) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs.is_multiple_of(scale) {
                return write!(f, "{}{unit}", secs / scale);
            }
        }
        write!(f, "{secs}s")
    }
}

impl Serialize for Expiry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Expiry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_parses_and_prints() {
        assert_eq!("90d".parse::<Expiry>().unwrap(), Expiry(90 * 86_400));
        assert_eq!("12h".parse::<Expiry>().unwrap().to_string(), "12h");
        assert_eq!("14d".parse::<Expiry>().unwrap().to_string(), "2w");
        assert_eq!("61s".parse::<Expiry>().unwrap().to_string(), "61s");
        for bad in ["", "d", "0d", "5y", "-1d", "1.5d", "5é"] {
            assert!(bad.parse::<Expiry>().is_err(), "{bad}");
        }
    }

    #[test]
    fn config_round_trips_through_toml() {
        let config = Config {
            format: Config::FORMAT,
            expiry: ExpiryConfig::default(),
            keys: BTreeMap::from([("ab".into(), "keys/root.ab.pem".into())]),
            delegations: vec![
                DelegationConfig {
                    name: "bins".into(),
                    delegator: "targets".into(),
                    paths: None,
                    bins: Some(16),
                    expiry: None,
                },
                DelegationConfig {
                    name: "acme".into(),
                    delegator: "targets".into(),
                    paths: Some(vec!["acme/*".into()]),
                    bins: None,
                    expiry: Some(Expiry(3_600)),
                },
            ],
        };
        let text = config.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        assert_eq!(config.expiry_of("acme"), Expiry(3_600));
        assert_eq!(config.expiry_of("bins-3"), config.expiry.delegated);
        assert_eq!(config.delegation_of("bins-3").unwrap().name, "bins");
        assert!(config.bin_group("bins").is_some());
        assert!(config.bin_group("acme").is_none());
    }
}

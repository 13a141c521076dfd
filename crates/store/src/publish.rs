//! The publish history: what was published, removed or re-signed, when and by whom.

use core::fmt;
use core::str::FromStr;

use custody_catalog::{ProductName, UpdateId};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::text::{check_name, check_text};
use crate::{Error, limits};

/// What [`Store::append_publish`](crate::Store::append_publish) stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPublishRecord {
    /// Who did it: an admin token's name, or an operator's name; 1 to 128 bytes.
    pub actor: String,
    pub action: PublishAction,
    #[serde(default, with = "crate::text::option_as_str", skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(default, with = "crate::text::option_as_str", skip_serializing_if = "Option::is_none")]
    pub product: Option<ProductName>,
    /// The snapshot version that made the change visible to devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_version: Option<u64>,
    /// Free text, at most [`limits::MAX_PUBLISH_DETAIL`] bytes.
    #[serde(default)]
    pub detail: String,
}

/// A stored publish record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRecord {
    /// Increases with every record.
    pub seq: i64,
    pub at: Timestamp,
    #[serde(flatten)]
    pub record: NewPublishRecord,
}

/// A page of [`Store::publish_history`](crate::Store::publish_history), newest first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishQuery {
    /// Only records about this update.
    pub update: Option<UpdateId>,
    /// Records with `seq` below this (the last `seq` of the previous page).
    pub before: Option<i64>,
    /// At most this many, 1 to [`limits::MAX_PAGE`].
    pub limit: u32,
}

impl Default for PublishQuery {
    fn default() -> Self {
        Self { update: None, before: None, limit: 100 }
    }
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PublishAction {
    /// An update (or a new revision) was added to the repository.
    Publish,
    /// An update was removed from the repository.
    Remove,
    /// The online roles (snapshot, timestamp) were re-signed.
    Refresh,
    /// A role's keys were rotated.
    Rotate,
}

impl NewPublishRecord {
    /// Checks the bounds the store enforces.
    pub fn validate(&self) -> Result<(), Error> {
        check_name("publish actor", &self.actor, 128)?;
        check_text("publish detail", &self.detail, limits::MAX_PUBLISH_DETAIL, true)?;
        if self.snapshot_version.is_some_and(|version| version > i64::MAX as u64) {
            return Err(Error::invalid("snapshot version", "larger than 2^63 - 1"));
        }
        Ok(())
    }
}

impl PublishAction {
    pub const ALL: [Self; 4] = [Self::Publish, Self::Remove, Self::Refresh, Self::Rotate];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Remove => "remove",
            Self::Refresh => "refresh",
            Self::Rotate => "rotate",
        }
    }
}

impl FromStr for PublishAction {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::ALL.into_iter().find(|action| action.as_str() == text).ok_or_else(|| {
            Error::invalid("publish action", format!("{text:?} is not publish, remove, refresh or rotate"))
        })
    }
}

impl fmt::Display for PublishAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_is_flat() {
        let record = PublishRecord {
            seq: 7,
            at: "2026-03-01T10:00:00Z".parse().unwrap(),
            record: NewPublishRecord {
                actor: "release-bot".into(),
                action: PublishAction::Publish,
                update: Some("0b5e4b1e-6c8d-4c44-9d5c-9a1f7e1f2a10".parse().unwrap()),
                revision: Some(2),
                product: Some("acme-os".parse().unwrap()),
                snapshot_version: Some(41),
                detail: String::new(),
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""action":"publish","update":"0b5e4b1e-6c8d-4c44-9d5c-9a1f7e1f2a10""#), "{json}");
        assert_eq!(serde_json::from_str::<PublishRecord>(&json).unwrap(), record);
    }

    #[test]
    fn validation_names_the_field() {
        let mut record = NewPublishRecord {
            actor: " bot".into(),
            action: PublishAction::Refresh,
            update: None,
            revision: None,
            product: None,
            snapshot_version: None,
            detail: String::new(),
        };
        assert!(record.validate().unwrap_err().to_string().starts_with("invalid publish actor"));
        record.actor = "bot".into();
        record.snapshot_version = Some(u64::MAX);
        assert!(record.validate().unwrap_err().to_string().starts_with("invalid snapshot version"));
    }
}

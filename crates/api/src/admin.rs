//! The admin API: updates, devices, compliance, tokens, content upload and publishing.
//!
//! Every route takes `Authorization: Bearer <admin token>`. A token has a [`Scope`]: `read` may call every `GET`,
//! `write` may also change things (create and revoke tokens, retire devices, upload content, publish).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::device::{DeliveryStats, Event, Inventory};
use crate::limits::{MAX_ENROLLMENT_HOURS, MAX_ENROLLMENT_USES, MAX_NAME_BYTES};
use crate::{FieldError, check_text};
use custody_catalog::UpdateId;

/// What an admin token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Every `GET` of the admin API.
    Read,
    /// Everything: also creating and revoking tokens, retiring devices, uploading content and publishing.
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Scope {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        match text {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            _ => Err(FieldError::new("scope", format!("{text:?} is not a scope; use \"read\" or \"write\""))),
        }
    }
}

/// One update of the catalog: a target whose `custom` holds a custody catalog entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateSummary {
    pub id: UpdateId,
    pub revision: u32,
    pub title: String,
    pub product: String,
    pub version: String,
    /// `os`, `app`, `driver`, `definitions`, `store-app`.
    pub kind: String,
    pub classification: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    pub release_date: String,
    /// The TUF target path.
    pub path: String,
    /// The targets role that lists it.
    pub role: String,
    pub length: u64,
    pub sha256: String,
}

/// `GET /admin/v1/updates`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateList {
    pub updates: Vec<UpdateSummary>,
}

/// `GET /admin/v1/updates/<id>`: the summary and the whole catalog entry (`custom.custody`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateDetail {
    pub update: UpdateSummary,
    pub entry: Value,
}

/// The state of one update on one device: set by the device's latest event about the update (docs/api.md,
/// "Compliance").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComplianceState {
    /// Installed (install succeeded, or a scan found it installed).
    Installed,
    /// Installed; the device waits for a reboot.
    PendingReboot,
    /// Applicable and not installed (a scan said so, or a download started).
    Needed,
    /// Downloaded, not installed yet.
    Downloaded,
    /// The last download or install attempt failed.
    Failed,
    /// A scan found that the update does not apply to the device.
    NotApplicable,
}

impl ComplianceState {
    pub const ALL: [ComplianceState; 6] =
        [Self::Installed, Self::PendingReboot, Self::Needed, Self::Downloaded, Self::Failed, Self::NotApplicable];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::PendingReboot => "pending-reboot",
            Self::Needed => "needed",
            Self::Downloaded => "downloaded",
            Self::Failed => "failed",
            Self::NotApplicable => "not-applicable",
        }
    }
}

impl std::str::FromStr for ComplianceState {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| FieldError::new("state", format!("{text:?} is not a compliance state")))
    }
}

/// How many enrolled devices are in each state for one update; `unknown` devices reported nothing about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceCounts {
    pub devices: u64,
    pub installed: u64,
    pub pending_reboot: u64,
    pub needed: u64,
    pub downloaded: u64,
    pub failed: u64,
    pub not_applicable: u64,
    pub unknown: u64,
}

impl ComplianceCounts {
    pub fn get(&self, state: ComplianceState) -> u64 {
        match state {
            ComplianceState::Installed => self.installed,
            ComplianceState::PendingReboot => self.pending_reboot,
            ComplianceState::Needed => self.needed,
            ComplianceState::Downloaded => self.downloaded,
            ComplianceState::Failed => self.failed,
            ComplianceState::NotApplicable => self.not_applicable,
        }
    }
}

/// One update's line in the compliance summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateCompliance {
    pub update: UpdateSummary,
    pub counts: ComplianceCounts,
}

/// `GET /admin/v1/compliance`: every update of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplianceReport {
    pub updates: Vec<UpdateCompliance>,
}

/// One device's state for an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCompliance {
    pub device_id: Uuid,
    pub state: ComplianceState,
    /// The revision the deciding event was about.
    pub revision: u32,
    /// The error code of a failed download or install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// The time of the deciding event (the device's clock).
    pub time: Timestamp,
}

/// `GET /admin/v1/updates/<id>/compliance?state=S&limit=N&after=ID`: counts, and one page of the devices that
/// reported about the update, in device id order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateComplianceDetail {
    pub update: UpdateSummary,
    pub counts: ComplianceCounts,
    pub devices: Vec<DeviceCompliance>,
    /// The `after` of the next page, if there may be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

/// How a device proves its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentityKind {
    Certificate,
    Token,
}

/// One enrolled device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSummary {
    pub id: Uuid,
    pub hostname: String,
    pub identity: IdentityKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub enrolled_at: Timestamp,
    /// The last enrollment, inventory or event report.
    pub last_seen: Timestamp,
    /// When an admin revoked the device (`POST /admin/v1/devices/<id>/revoke`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// `POST /admin/v1/devices/<id>/revoke`: the device authenticates no more, is nobody's peer, and its certificate goes
/// on the device CRL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeDevice {
    /// The CRL's reason: `unspecified` (default), `key-compromise`, `affiliation-changed`, `superseded`,
    /// `cessation-of-operation` or `privilege-withdrawn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer to a revocation (repeating it changes nothing and answers the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRevoked {
    pub device: DeviceSummary,
    /// The device's certificate, for a certificate identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<RevokedCertificate>,
}

/// A device certificate and whether it is on the device CRL (`GET /pki/device-crl.pem`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCertificate {
    pub serial: String,
    /// `false` for a certificate the CA directory's index does not list (issued before the service recorded its
    /// device certificates there): the service refuses it, but TLS peers cannot learn of it from the CRL.
    pub on_crl: bool,
}

/// `GET /admin/v1/devices?limit=N&after=<id>`: devices in id order; `next` is the `after` of the next page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<DeviceSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Uuid>,
}

/// `GET /admin/v1/delivery`: where devices' downloads came from, summed per device group (from the `delivery` of
/// their `download-succeeded` events), in group order; devices without a group last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryReport {
    pub groups: Vec<GroupDelivery>,
}

/// The download statistics of one device group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupDelivery {
    /// The group (from the enrollment token); absent for devices without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Devices of the group that reported at least one download with statistics.
    pub devices: u64,
    /// Downloads reported with statistics.
    pub downloads: u64,
    /// Bytes by source, and bytes uploaded to peers.
    pub bytes: DeliveryStats,
    /// Peering efficiency: bytes from peers (LAN, group, internet) / bytes downloaded * 100.
    pub percent_peer_caching: f64,
}

/// An event as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event: Event,
    pub received_at: Timestamp,
}

/// `GET /admin/v1/devices/<id>`: the device, its inventory and its latest events (newest first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceDetail {
    pub device: DeviceSummary,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// When the service received the inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_at: Option<Timestamp>,
    pub events: Vec<StoredEvent>,
}

/// `POST /admin/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    pub name: String,
    pub scope: Scope,
}

/// An admin token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: Uuid,
    pub name: String,
    pub scope: Scope,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// The answer to `POST /admin/v1/tokens`: the secret is shown this once; the service keeps only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub info: TokenInfo,
}

/// `GET /admin/v1/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `POST /admin/v1/enrollment-tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    pub name: String,
    /// The group devices enrolling with it join (1 to 64 of `a-z 0-9 . _ -`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How many devices may enroll with it (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub uses: u32,
    /// Validity in hours (default 168, one week).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_hours: Option<u32>,
}

/// An enrollment token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenInfo {
    pub id: Uuid,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub uses: u32,
    pub uses_left: u32,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The answer to `POST /admin/v1/enrollment-tokens`: the secret is shown this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedEnrollmentToken {
    pub token: String,
    pub info: EnrollmentTokenInfo,
}

/// `GET /admin/v1/enrollment-tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentTokenList {
    pub enrollment_tokens: Vec<EnrollmentTokenInfo>,
}

/// The answer to `PUT /admin/v1/content/sha256/<hex>` (and the body of `HEAD` as headers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentStored {
    pub sha256: String,
    pub sha512: String,
    pub length: u64,
    /// `false` when the content was already stored.
    pub created: bool,
}

/// `POST /admin/v1/publish`: one targets role's new metadata, signed where the publisher runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// `targets` or a delegated role the repository already has.
    pub role: String,
    /// The TUF metadata envelope `{"signed": {...}, "signatures": [...]}` of the role's next version.
    pub metadata: Value,
}

/// The answer to a publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum PublishResponse {
    /// `200`: the role is published with a new snapshot and timestamp.
    Published {
        role: String,
        version: u64,
        snapshot_version: u64,
        timestamp_version: u64,
        added: Vec<String>,
        changed: Vec<String>,
        removed: Vec<String>,
    },
    /// `202`: the signatures are valid but below the role's threshold; the metadata waits for more (another
    /// publish of the same `signed` object with other signatures adds them).
    Pending(StagedRole),
}

/// A role waiting for signatures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRole {
    pub role: String,
    pub version: u64,
    pub signatures: u32,
    pub threshold: u32,
    /// Key ids that may still sign.
    pub missing_keyids: Vec<String>,
}

/// `GET /admin/v1/staged`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedList {
    pub staged: Vec<StagedRole>,
}

/// `GET /admin/v1/status`: the published metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub roles: Vec<RoleState>,
    /// When the background task next re-signs snapshot and timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_refresh: Option<Timestamp>,
}

/// One published role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleState {
    pub role: String,
    pub version: u64,
    pub expires: Timestamp,
}

impl CreateToken {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)
    }
}

impl CreateEnrollmentToken {
    /// Validity when `expires_in_hours` is absent.
    pub const DEFAULT_HOURS: u32 = 168;

    pub fn validate(&self) -> Result<(), FieldError> {
        check_name("name", &self.name)?;
        if let Some(group) = &self.group {
            check_group("group", group)?;
        }
        if !(1..=MAX_ENROLLMENT_USES).contains(&self.uses) {
            return Err(FieldError::new("uses", format!("must be 1 to {MAX_ENROLLMENT_USES}")));
        }
        if let Some(hours) = self.expires_in_hours
            && !(1..=MAX_ENROLLMENT_HOURS).contains(&hours)
        {
            return Err(FieldError::new("expires_in_hours", format!("must be 1 to {MAX_ENROLLMENT_HOURS}")));
        }
        Ok(())
    }
}

impl RevokeDevice {
    /// The CRL reasons an admin may give.
    pub const REASONS: [&str; 6] = [
        "unspecified",
        "key-compromise",
        "affiliation-changed",
        "superseded",
        "cessation-of-operation",
        "privilege-withdrawn",
    ];

    pub fn validate(&self) -> Result<(), FieldError> {
        match &self.reason {
            Some(reason) if !Self::REASONS.contains(&reason.as_str()) => {
                Err(FieldError::new("reason", format!("{reason:?} is not one of {}", Self::REASONS.join(", "))))
            }
            _ => Ok(()),
        }
    }
}

impl PublishRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.role.is_empty() || self.role.chars().any(char::is_control) {
            return Err(FieldError::new("role", "must be a role name (not empty, no control characters)"));
        }
        if !self.metadata.is_object() {
            return Err(FieldError::new("metadata", "must be a TUF metadata object {\"signed\", \"signatures\"}"));
        }
        Ok(())
    }
}

/// A device group: 1 to 64 of `a-z 0-9 . _ -`, starting with a letter or digit.
pub(crate) fn check_group(field: &str, group: &str) -> Result<(), FieldError> {
    let valid = !group.is_empty()
        && group.len() <= 64
        && group.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && group.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    match valid {
        true => Ok(()),
        false => Err(FieldError::new(field, "must be 1 to 64 of a-z 0-9 . _ -, starting with a letter or digit")),
    }
}

/// A token name: 1 to [`MAX_NAME_BYTES`] bytes, no control characters, no surrounding white space.
fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    check_text(field, name, MAX_NAME_BYTES)?;
    if name.len() > MAX_NAME_BYTES || name.trim() != name {
        return Err(FieldError::new(field, format!("must be 1 to {MAX_NAME_BYTES} bytes without surrounding spaces")));
    }
    Ok(())
}

fn one() -> u32 {
    1
}

fn is_one(value: &u32) -> bool {
    *value == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_order_read_below_write() {
        assert!(Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
        assert_eq!("write".parse::<Scope>().unwrap(), Scope::Write);
        assert_eq!("admin".parse::<Scope>().unwrap_err().field, "scope");
    }

    #[test]
    fn token_requests_are_checked() {
        let ok: CreateEnrollmentToken = serde_json::from_str(r#"{"name": "line 3"}"#).unwrap();
        assert_eq!(ok.uses, 1);
        assert!(ok.validate().is_ok());
        let bad = CreateEnrollmentToken { uses: 0, ..ok };
        assert_eq!(bad.validate().unwrap_err().field, "uses");
        let bad = CreateToken { name: " ci".into(), scope: Scope::Read };
        assert_eq!(bad.validate().unwrap_err().field, "name");
        let bad: CreateEnrollmentToken = serde_json::from_str(r#"{"name": "x", "group": "Plant 7"}"#).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "group");
        assert!(serde_json::from_str::<CreateToken>(r#"{"name": "x", "scope": "root"}"#).is_err());
    }

    #[test]
    fn publish_responses_are_tagged() {
        let pending = PublishResponse::Pending(StagedRole {
            role: "targets".into(),
            version: 3,
            signatures: 1,
            threshold: 2,
            missing_keyids: vec!["ab".into()],
        });
        let json = serde_json::to_value(&pending).unwrap();
        assert_eq!(json["result"], "pending");
        assert_eq!(json["threshold"], 2);
        assert_eq!(serde_json::from_value::<PublishResponse>(json).unwrap(), pending);
        for state in ComplianceState::ALL {
            assert_eq!(state.as_str().parse::<ComplianceState>().unwrap(), state);
            assert_eq!(ComplianceCounts::default().get(state), 0);
        }
    }
}

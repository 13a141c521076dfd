//! The device API: enrollment, inventory and event reports.
//!
//! Every request body is parsed strictly (unknown fields are refused) and then checked with its `validate` method,
//! whose errors name the field. The agent can run the same checks before sending.

use std::collections::{BTreeMap, BTreeSet};

use custody_catalog::{Arch, DeviceInventory, HardwareId, OsFamily, ProductName, UpdateId, Version};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::limits::{
    MAX_CSR_BYTES, MAX_EVENT_DETAIL_BYTES, MAX_EVENTS_PER_BATCH, MAX_HARDWARE_IDS, MAX_HOSTNAME_BYTES,
    MAX_INSTALLED_UPDATES, MAX_PRODUCTS,
};
use crate::{FieldError, check_text};

/// `POST /device/v1/enroll`, with `Authorization: Bearer <enrollment token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// Chosen by the device once, and sent again on every retry of the same enrollment: a retry with the same id
    /// and token gets the same device id (and does not use up another use of the token).
    pub enrollment_id: Uuid,
    /// The device's host name, for people (not an identity).
    pub hostname: String,
    /// A PEM PKCS#10 certificate signing request (ECDSA P-256 or Ed25519 key). With it the device gets a client
    /// certificate; without it, a device token (if the service allows token identities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
}

/// The answer to an enrollment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: Uuid,
    pub identity: DeviceIdentity,
}

/// How the device proves who it is on the other device routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeviceIdentity {
    /// Present this client certificate (mutual TLS). `chain` is PEM: the device certificate, then the device
    /// intermediate. Its common name is the device id.
    Certificate { chain: String, not_after: Timestamp },
    /// Send `Authorization: Bearer <token>`. The service keeps only a hash; a retried enrollment gets a new token
    /// and the previous one stops working.
    Token { token: String },
}

/// `PUT /device/v1/inventory`: what the device is and has, replacing the previous inventory (`204 No Content`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// os-release `ID`.
    pub os_family: String,
    /// os-release `VERSION_ID`, if present and dotted-numeric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// `uname -m`.
    pub arch: String,
    /// Installed products and their versions (dotted-numeric).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub products: BTreeMap<String, String>,
    /// Hardware ids (`pci:8086:15f3`, ...; docs/catalog.md §5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hardware_ids: Vec<String>,
    /// Updates installed on the device (any revision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub installed_updates: Vec<UpdateId>,
}

/// `POST /device/v1/events`: 1 to [`MAX_EVENTS_PER_BATCH`] events, stored all or none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    pub events: Vec<Event>,
}

/// One event about one update. `result` is present exactly for `scan-finished`, `code` exactly for the `*-failed`
/// types ([`EventType`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Chosen by the device when the event happens and kept across retries: the service stores each id once per
    /// device, so sending a batch again is harmless. The same id with other content is a conflict (409).
    pub id: Uuid,
    /// When it happened, by the device's clock. A device's latest event about an update sets its compliance state.
    pub time: Timestamp,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub update: UpdateRef,
    /// `scan-finished`: what the scan found about the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ScanResult>,
    /// `download-failed`, `install-failed`: the error code (an installer's exit status, an errno, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// Details for people: at most [`MAX_EVENT_DETAIL_BYTES`] bytes; newline and tab are the only control
    /// characters allowed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// The device evaluated the update against itself (`result`).
    ScanFinished,
    DownloadStarted,
    DownloadSucceeded,
    DownloadFailed,
    InstallSucceeded,
    InstallFailed,
    /// The update is installed but takes effect after a reboot.
    RebootPending,
}

/// What a scan found about one update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanResult {
    /// Applicable and not installed.
    Needed,
    Installed,
    NotApplicable,
}

/// An update and the revision the event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRef {
    pub id: UpdateId,
    pub revision: u32,
}

/// The answer to an event batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatchResponse {
    /// Events stored now.
    pub accepted: u32,
    /// Events whose id was already stored with the same content: acknowledged, not stored again.
    pub duplicates: u32,
}

impl EnrollRequest {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.enrollment_id.is_nil() {
            return Err(FieldError::new("enrollment_id", "must not be the nil UUID"));
        }
        check_hostname("hostname", &self.hostname)?;
        if let Some(csr) = &self.csr {
            if csr.len() > MAX_CSR_BYTES {
                return Err(FieldError::new("csr", format!("is {} bytes; at most {MAX_CSR_BYTES}", csr.len())));
            }
            if !csr.contains("-----BEGIN CERTIFICATE REQUEST-----") {
                return Err(FieldError::new("csr", "must be a PEM certificate request (BEGIN CERTIFICATE REQUEST)"));
            }
        }
        Ok(())
    }
}

impl Inventory {
    /// Checks every field and converts the inventory into the form applicability is evaluated against.
    pub fn to_device_inventory(&self) -> Result<DeviceInventory, FieldError> {
        let os_family: OsFamily = self.os_family.parse().map_err(|e| FieldError::new("os_family", reason(e)))?;
        let os_version = match &self.os_version {
            Some(text) => Some(text.parse::<Version>().map_err(|e| FieldError::new("os_version", reason(e)))?),
            None => None,
        };
        let arch: Arch = self.arch.parse().map_err(|e| FieldError::new("arch", reason(e)))?;
        check_count("products", self.products.len(), MAX_PRODUCTS)?;
        let mut products = BTreeMap::new();
        for (name, version) in &self.products {
            let field = format!("products.{name}");
            let product: ProductName = name.parse().map_err(|e| FieldError::new(&field, reason(e)))?;
            let version: Version = version.parse().map_err(|e| FieldError::new(&field, reason(e)))?;
            products.insert(product, version);
        }
        check_count("hardware_ids", self.hardware_ids.len(), MAX_HARDWARE_IDS)?;
        let mut hardware_ids = BTreeSet::new();
        for (index, id) in self.hardware_ids.iter().enumerate() {
            let parsed: HardwareId =
                id.parse().map_err(|e| FieldError::new(format!("hardware_ids[{index}]"), reason(e)))?;
            hardware_ids.insert(parsed);
        }
        check_count("installed_updates", self.installed_updates.len(), MAX_INSTALLED_UPDATES)?;
        Ok(DeviceInventory {
            os_family,
            os_version,
            arch,
            products,
            hardware_ids,
            installed_updates: self.installed_updates.iter().copied().collect(),
        })
    }
}

impl EventBatch {
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.events.is_empty() {
            return Err(FieldError::new("events", "must hold at least one event"));
        }
        check_count("events", self.events.len(), MAX_EVENTS_PER_BATCH)?;
        for (index, event) in self.events.iter().enumerate() {
            event.validate(&format!("events[{index}]"))?;
        }
        Ok(())
    }
}

impl Event {
    /// Checks the event; `at` is its path in the request (`events[3]`).
    pub fn validate(&self, at: &str) -> Result<(), FieldError> {
        if self.id.is_nil() {
            return Err(FieldError::new(format!("{at}.id"), "must not be the nil UUID"));
        }
        if self.update.revision == 0 {
            return Err(FieldError::new(format!("{at}.update.revision"), "must be at least 1"));
        }
        let is_scan = self.kind == EventType::ScanFinished;
        match (&self.result, is_scan) {
            (None, true) => return Err(FieldError::new(format!("{at}.result"), self.kind.required())),
            (Some(_), false) => return Err(FieldError::new(format!("{at}.result"), self.kind.forbidden())),
            _ => {}
        }
        match (&self.code, self.kind.is_failure()) {
            (None, true) => return Err(FieldError::new(format!("{at}.code"), self.kind.required())),
            (Some(_), false) => return Err(FieldError::new(format!("{at}.code"), self.kind.forbidden())),
            _ => {}
        }
        if self.detail.len() > MAX_EVENT_DETAIL_BYTES {
            return Err(FieldError::new(
                format!("{at}.detail"),
                format!("is {} bytes; at most {MAX_EVENT_DETAIL_BYTES} are allowed", self.detail.len()),
            ));
        }
        if self.detail.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(FieldError::new(
                format!("{at}.detail"),
                "must not contain control characters but newline and tab",
            ));
        }
        Ok(())
    }
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 7] = [
        Self::ScanFinished,
        Self::DownloadStarted,
        Self::DownloadSucceeded,
        Self::DownloadFailed,
        Self::InstallSucceeded,
        Self::InstallFailed,
        Self::RebootPending,
    ];

    /// The wire name (`install-failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScanFinished => "scan-finished",
            Self::DownloadStarted => "download-started",
            Self::DownloadSucceeded => "download-succeeded",
            Self::DownloadFailed => "download-failed",
            Self::InstallSucceeded => "install-succeeded",
            Self::InstallFailed => "install-failed",
            Self::RebootPending => "reboot-pending",
        }
    }

    pub fn is_failure(self) -> bool {
        matches!(self, Self::DownloadFailed | Self::InstallFailed)
    }

    fn required(self) -> String {
        format!("is required for {} events", self.as_str())
    }

    fn forbidden(self) -> String {
        format!("must be absent from {} events", self.as_str())
    }
}

impl std::str::FromStr for EventType {
    type Err = FieldError;

    fn from_str(text: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| FieldError::new("type", format!("{text:?} is not an event type")))
    }
}

impl ScanResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Needed => "needed",
            Self::Installed => "installed",
            Self::NotApplicable => "not-applicable",
        }
    }
}

/// A host name: 1 to [`MAX_HOSTNAME_BYTES`] bytes, no spaces or control characters.
fn check_hostname(field: &str, value: &str) -> Result<(), FieldError> {
    check_text(field, value, MAX_HOSTNAME_BYTES)?;
    if value.len() > MAX_HOSTNAME_BYTES || value.chars().any(char::is_whitespace) {
        return Err(FieldError::new(field, format!("must be 1 to {MAX_HOSTNAME_BYTES} bytes without spaces")));
    }
    Ok(())
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), FieldError> {
    if count > max {
        return Err(FieldError::new(field, format!("has {count} entries; at most {max} are allowed")));
    }
    Ok(())
}

/// The reason part of a catalog value error (the catalog prefixes "invalid <what>:").
fn reason(err: custody_catalog::Error) -> String {
    match err {
        custody_catalog::Error::Value { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        serde_json::from_str(
            r#"{"os_family": "debian", "os_version": "12", "arch": "x86_64",
                "products": {"acme-agent": "2.3.1"}, "hardware_ids": ["pci:8086:15f3"],
                "installed_updates": ["3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90"]}"#,
        )
        .unwrap()
    }

    fn event(rest: &str) -> Result<(), FieldError> {
        let json = format!(
            r#"{{"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a6b", "time": "2025-06-10T12:00:00Z",
                "update": {{"id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 2}}, {rest}}}"#
        );
        let event: Event = serde_json::from_str(&json).unwrap();
        event.validate("events[0]")
    }

    #[test]
    fn inventory_converts_and_names_bad_fields() {
        let device = inventory().to_device_inventory().unwrap();
        assert_eq!(device.arch.as_str(), "x86_64");
        assert_eq!(device.installed_updates.len(), 1);

        let mut bad = inventory();
        bad.arch = "amd64".into();
        let err = bad.to_device_inventory().unwrap_err();
        assert_eq!(err.field, "arch");
        assert!(err.problem.contains("x86_64"), "{err}");

        let mut bad = inventory();
        bad.products.insert("acme-agent".into(), "2.4.0-rc1".into());
        assert_eq!(bad.to_device_inventory().unwrap_err().field, "products.acme-agent");

        let mut bad = inventory();
        bad.hardware_ids.push("PCI:8086:15F3".into());
        assert_eq!(bad.to_device_inventory().unwrap_err().field, "hardware_ids[1]");

        let mut bad = inventory();
        bad.hardware_ids = vec!["pci:1:1".into(); MAX_HARDWARE_IDS + 1];
        assert!(bad.to_device_inventory().unwrap_err().problem.contains("at most 4096"));

        let unknown = r#"{"os_family": "debian", "arch": "x86_64", "kernel": "6.1"}"#;
        let err = serde_json::from_str::<Inventory>(unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `kernel`"), "{err}");
    }

    #[test]
    fn events_need_exactly_the_fields_of_their_type() {
        assert!(event(r#""type": "scan-finished", "result": "not-applicable""#).is_ok());
        assert!(event(r#""type": "download-started""#).is_ok());
        assert!(event(r#""type": "install-failed", "code": -2, "detail": "post_install exited 2\nsee log""#).is_ok());

        let err = event(r#""type": "install-failed""#).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.problem.as_str()),
            ("events[0].code", "is required for install-failed events")
        );
        assert_eq!(event(r#""type": "scan-finished""#).unwrap_err().field, "events[0].result");
        assert_eq!(event(r#""type": "reboot-pending", "result": "installed""#).unwrap_err().field, "events[0].result");
        assert_eq!(event(r#""type": "download-succeeded", "code": 1"#).unwrap_err().field, "events[0].code");
        let long = "x".repeat(MAX_EVENT_DETAIL_BYTES + 1);
        let err = event(&format!(r#""type": "download-started", "detail": "{long}""#)).unwrap_err();
        assert_eq!(err.field, "events[0].detail");
        let err = event(r#""type": "download-started", "detail": "a\u0007b""#).unwrap_err();
        assert_eq!(err.field, "events[0].detail");
    }

    #[test]
    fn batches_are_bounded() {
        assert_eq!(EventBatch { events: vec![] }.validate().unwrap_err().field, "events");
        let one: Event = serde_json::from_str(
            r#"{"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a6b", "time": "2025-06-10T12:00:00Z", "type": "reboot-pending",
                "update": {"id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 1}}"#,
        )
        .unwrap();
        let batch = EventBatch { events: vec![one; MAX_EVENTS_PER_BATCH + 1] };
        assert!(batch.validate().unwrap_err().problem.contains("at most 256"));
        assert_eq!("reboot-pending".parse::<EventType>().unwrap(), EventType::RebootPending);
    }

    #[test]
    fn enrollment_checks_id_hostname_and_csr() {
        let ok = EnrollRequest { enrollment_id: Uuid::from_u128(7), hostname: "edge-7".into(), csr: None };
        assert!(ok.validate().is_ok());
        let bad = EnrollRequest { hostname: "edge 7".into(), ..ok.clone() };
        assert_eq!(bad.validate().unwrap_err().field, "hostname");
        let bad = EnrollRequest { csr: Some("MIIB...".into()), ..ok.clone() };
        assert_eq!(bad.validate().unwrap_err().field, "csr");
        let bad = EnrollRequest { enrollment_id: Uuid::nil(), ..ok };
        assert_eq!(bad.validate().unwrap_err().field, "enrollment_id");
        let identity = DeviceIdentity::Token { token: "t".into() };
        assert_eq!(serde_json::to_string(&identity).unwrap(), r#"{"type":"token","token":"t"}"#);
    }
}

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

/// One event: about an update, a product, or the agent itself. Which of the optional fields an event carries is
/// fixed by its type ([`EventType`], and the table in docs/api.md): a field the type does not take is refused, so a
/// misplaced value is never stored silently.
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
    /// The update the event is about: required for the update events, optional for `rolled-back`, `recovered`
    /// and `uninstalled` (the update of the version left), one of `update` and `product` for `held` and
    /// `unheld` (with revision 0: a hold covers every revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateRef>,
    /// The product a product event is about (a catalog product name); optional for `scan-failed` (a one-product
    /// scan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// `scan-finished`: what the scan found about the update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ScanResult>,
    /// `download-failed`, `install-failed`, `scan-failed`: the error code (an installer's exit status, an errno,
    /// ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i64>,
    /// `rolled-back`: the version left; `recovered`: the version the interrupted operation was about (if known);
    /// `uninstalled`: the version removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `rolled-back`: the version restored; `recovered`: the version in use after recovery (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `rolled-back`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RollbackReason>,
    /// `recovered`: the operation a crash interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
    /// `recovered`: whether recovery finished the operation or undid it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RecoveryOutcome>,
    /// `download-succeeded` (optional): where the bytes came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryStats>,
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
    /// The update is downloaded and verified (`delivery`: where its bytes came from).
    DownloadSucceeded,
    DownloadFailed,
    InstallSucceeded,
    InstallFailed,
    /// The update is installed but takes effect after a reboot.
    RebootPending,
    /// A scan failed before it could evaluate anything (`code`; `product` for a one-product scan).
    ScanFailed,
    /// An update (`update`, revision 0) or a product (`product`) is held: neither downloaded nor installed.
    Held,
    /// A hold was released.
    Unheld,
    /// A product went back from version `from` to `to` (`reason`: by request, or automatically).
    RolledBack,
    /// At start, the agent found an `operation` on `product` that a crash or power loss interrupted, and finished
    /// it or undid it (`outcome`); `to` is the version in use afterwards.
    Recovered,
    /// A product was removed (`from`: its version).
    Uninstalled,
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

/// Why a product went back to an earlier version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackReason {
    /// Someone asked for it (`custody agent rollback`).
    Manual,
    /// The new version's health check failed right after the switch.
    HealthCheckFailed,
    /// A new OS image was not confirmed after the reboot: its check failed, or the boot counter ran out, or the
    /// bootloader fell back to the other slot.
    BootFailed,
}

/// An operation of the install engine that a crash can interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Install,
    OsInstall,
    Rollback,
    OsRollback,
    Uninstall,
    /// Confirming a new OS image after the reboot.
    OsConfirm,
}

/// What recovery did with an interrupted operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecoveryOutcome {
    /// The operation had reached the point where it stands; recovery finished it.
    Completed,
    /// The install had not finished; recovery restored the previous version.
    Undone,
}

/// Where the bytes of one download came from, and how many this device served to peers meanwhile (bytes each).
/// HTTP-only downloads count everything in `from_http`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryStats {
    /// From the origin, a CDN or an HTTP cache (`[content] sources`).
    pub from_http: u64,
    /// From a cache server of the device's group.
    pub from_cache_server: u64,
    /// From peers on the device's network.
    pub from_lan_peers: u64,
    /// From peers of the device's group elsewhere.
    pub from_group_peers: u64,
    /// From other peers on the internet.
    pub from_internet_peers: u64,
    /// Uploaded to peers.
    pub to_peers: u64,
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
        let field = |name: &str| format!("{at}.{name}");
        if self.id.is_nil() {
            return Err(FieldError::new(field("id"), "must not be the nil UUID"));
        }
        let shape = self.kind.shape();
        let fields = [
            ("update", self.update.is_some(), shape.update),
            ("product", self.product.is_some(), shape.product),
            ("result", self.result.is_some(), shape.result),
            ("code", self.code.is_some(), shape.code),
            ("from", self.from.is_some(), shape.from),
            ("to", self.to.is_some(), shape.to),
            ("reason", self.reason.is_some(), shape.reason),
            ("operation", self.operation.is_some(), shape.recovery),
            ("outcome", self.outcome.is_some(), shape.recovery),
            ("delivery", self.delivery.is_some(), shape.delivery),
        ];
        for (name, present, takes) in fields {
            match (takes, present) {
                (Takes::Required, false) => return Err(FieldError::new(field(name), self.kind.required())),
                (Takes::No, true) => return Err(FieldError::new(field(name), self.kind.forbidden())),
                _ => {}
            }
        }
        let hold = matches!(self.kind, EventType::Held | EventType::Unheld);
        if hold && self.update.is_some() == self.product.is_some() {
            let problem = format!("{} events name exactly one of update and product", self.kind.as_str());
            return Err(FieldError::new(field("update"), problem));
        }
        match (&self.update, hold) {
            (Some(update), true) if update.revision != 0 => {
                let problem = "must be 0 in held and unheld events: a hold covers every revision";
                return Err(FieldError::new(field("update.revision"), problem));
            }
            (Some(update), false) if update.revision == 0 => {
                return Err(FieldError::new(field("update.revision"), "must be at least 1"));
            }
            _ => {}
        }
        if let Some(product) = &self.product {
            product.parse::<ProductName>().map_err(|e| FieldError::new(field("product"), reason(e)))?;
        }
        for (name, version) in [("from", &self.from), ("to", &self.to)] {
            if let Some(version) = version {
                version.parse::<Version>().map_err(|e| FieldError::new(field(name), reason(e)))?;
            }
        }
        if let Some(delivery) = &self.delivery {
            delivery.validate(&field("delivery"))?;
        }
        if self.detail.len() > MAX_EVENT_DETAIL_BYTES {
            return Err(FieldError::new(
                field("detail"),
                format!("is {} bytes; at most {MAX_EVENT_DETAIL_BYTES} are allowed", self.detail.len()),
            ));
        }
        if self.detail.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(FieldError::new(field("detail"), "must not contain control characters but newline and tab"));
        }
        Ok(())
    }
}

/// Whether an event type takes a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Takes {
    Required,
    Optional,
    No,
}

/// The fields an event type takes.
#[derive(Clone, Copy, Debug)]
struct Shape {
    update: Takes,
    product: Takes,
    result: Takes,
    code: Takes,
    from: Takes,
    to: Takes,
    reason: Takes,
    /// `operation` and `outcome`.
    recovery: Takes,
    delivery: Takes,
}

impl EventType {
    /// Every event type, in declaration order.
    pub const ALL: [EventType; 13] = [
        Self::ScanFinished,
        Self::DownloadStarted,
        Self::DownloadSucceeded,
        Self::DownloadFailed,
        Self::InstallSucceeded,
        Self::InstallFailed,
        Self::RebootPending,
        Self::ScanFailed,
        Self::Held,
        Self::Unheld,
        Self::RolledBack,
        Self::Recovered,
        Self::Uninstalled,
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
            Self::ScanFailed => "scan-failed",
            Self::Held => "held",
            Self::Unheld => "unheld",
            Self::RolledBack => "rolled-back",
            Self::Recovered => "recovered",
            Self::Uninstalled => "uninstalled",
        }
    }

    /// The types that carry an error `code`.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::DownloadFailed | Self::InstallFailed | Self::ScanFailed)
    }

    fn shape(self) -> Shape {
        use Takes::{No, Optional, Required};
        let update_event = Shape {
            update: Required,
            product: No,
            result: No,
            code: No,
            from: No,
            to: No,
            reason: No,
            recovery: No,
            delivery: No,
        };
        let product_event = Shape { update: Optional, product: Required, ..update_event };
        match self {
            Self::ScanFinished => Shape { result: Required, ..update_event },
            Self::DownloadSucceeded => Shape { delivery: Optional, ..update_event },
            Self::DownloadFailed | Self::InstallFailed => Shape { code: Required, ..update_event },
            Self::DownloadStarted | Self::InstallSucceeded | Self::RebootPending => update_event,
            Self::ScanFailed => Shape { update: No, product: Optional, code: Required, ..update_event },
            Self::Held | Self::Unheld => Shape { product: Optional, ..product_event },
            Self::RolledBack => Shape { from: Required, to: Required, reason: Required, ..product_event },
            Self::Recovered => Shape { from: Optional, to: Optional, recovery: Required, ..product_event },
            Self::Uninstalled => Shape { from: Required, ..product_event },
        }
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

impl RollbackReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::HealthCheckFailed => "health-check-failed",
            Self::BootFailed => "boot-failed",
        }
    }
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::OsInstall => "os-install",
            Self::Rollback => "rollback",
            Self::OsRollback => "os-rollback",
            Self::Uninstall => "uninstall",
            Self::OsConfirm => "os-confirm",
        }
    }
}

impl RecoveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Undone => "undone",
        }
    }
}

impl DeliveryStats {
    /// HTTP only: every byte from the origin, a CDN or a cache.
    pub fn http(bytes: u64) -> Self {
        Self { from_http: bytes, ..Self::default() }
    }

    /// Bytes from peers: LAN, group and internet (not the cache server).
    pub fn from_peers(&self) -> u64 {
        self.from_lan_peers.saturating_add(self.from_group_peers).saturating_add(self.from_internet_peers)
    }

    /// Bytes downloaded, from every source.
    pub fn total(&self) -> u64 {
        self.from_http.saturating_add(self.from_cache_server).saturating_add(self.from_peers())
    }

    /// Delivery Optimization's peering efficiency: bytes from peers / bytes downloaded * 100 (0 when nothing was
    /// downloaded).
    pub fn percent_peer_caching(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            total => self.from_peers() as f64 * 100.0 / total as f64,
        }
    }

    /// Checks the counts; `at` is the field's path (`events[3].delivery`).
    pub fn validate(&self, at: &str) -> Result<(), FieldError> {
        let counts = [
            ("from_http", self.from_http),
            ("from_cache_server", self.from_cache_server),
            ("from_lan_peers", self.from_lan_peers),
            ("from_group_peers", self.from_group_peers),
            ("from_internet_peers", self.from_internet_peers),
            ("to_peers", self.to_peers),
        ];
        for (name, count) in counts {
            if i64::try_from(count).is_err() {
                return Err(FieldError::new(format!("{at}.{name}"), format!("is {count}; at most {} bytes", i64::MAX)));
            }
        }
        Ok(())
    }
}

impl std::ops::AddAssign for DeliveryStats {
    /// Sums the counts (saturating).
    fn add_assign(&mut self, other: Self) {
        self.from_http = self.from_http.saturating_add(other.from_http);
        self.from_cache_server = self.from_cache_server.saturating_add(other.from_cache_server);
        self.from_lan_peers = self.from_lan_peers.saturating_add(other.from_lan_peers);
        self.from_group_peers = self.from_group_peers.saturating_add(other.from_group_peers);
        self.from_internet_peers = self.from_internet_peers.saturating_add(other.from_internet_peers);
        self.to_peers = self.to_peers.saturating_add(other.to_peers);
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

    /// An event without an update: `rest` holds its type and fields.
    fn product_event(rest: &str) -> Result<(), FieldError> {
        let json =
            format!(r#"{{"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a6b", "time": "2025-06-10T12:00:00Z", {rest}}}"#);
        let event: Event = serde_json::from_str(&json).unwrap();
        event.validate("events[0]")
    }

    #[test]
    fn product_and_agent_events_need_exactly_their_fields() {
        assert!(product_event(r#""type": "scan-failed", "code": 7, "detail": "metadata: timestamp expired""#).is_ok());
        assert!(product_event(r#""type": "scan-failed", "code": 1, "product": "acme-agent""#).is_ok());
        assert!(product_event(r#""type": "held", "product": "acme-agent""#).is_ok());
        assert!(
            product_event(
                r#""type": "unheld", "update": {"id": "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90", "revision": 0}"#
            )
            .is_ok()
        );
        assert!(
            product_event(
                r#""type": "rolled-back", "product": "acme-agent", "from": "2.4.0", "to": "2.3.1", "reason": "manual""#
            )
            .is_ok()
        );
        assert!(
            event(
                r#""type": "rolled-back", "product": "acme-os", "from": "7.1", "to": "7.0", "reason": "boot-failed""#
            )
            .is_ok()
        );
        assert!(product_event(
            r#""type": "recovered", "product": "acme-agent", "operation": "install", "outcome": "undone", "from": "2.4.0", "to": "2.3.1""#
        )
        .is_ok());
        assert!(product_event(
            r#""type": "recovered", "product": "acme-agent", "operation": "uninstall", "outcome": "completed", "from": "2.4.0""#
        )
        .is_ok());
        assert!(product_event(r#""type": "uninstalled", "product": "acme-agent", "from": "2.4.0""#).is_ok());
        let delivery = r#""delivery": {"from_http": 10, "from_cache_server": 0, "from_lan_peers": 30,
            "from_group_peers": 0, "from_internet_peers": 0, "to_peers": 5}"#;
        assert!(event(&format!(r#""type": "download-succeeded", {delivery}"#)).is_ok());

        let field = |result: Result<(), FieldError>| result.unwrap_err().field;
        assert_eq!(field(product_event(r#""type": "scan-failed""#)), "events[0].code");
        assert_eq!(field(event(r#""type": "scan-failed", "code": 1"#)), "events[0].update");
        assert_eq!(field(product_event(r#""type": "download-started""#)), "events[0].update");
        assert_eq!(field(event(r#""type": "install-succeeded", "product": "acme-agent""#)), "events[0].product");
        assert_eq!(field(product_event(r#""type": "held""#)), "events[0].update");
        let both = event(r#""type": "held", "product": "acme-agent""#).unwrap_err();
        assert_eq!(both.problem, "held events name exactly one of update and product");
        assert_eq!(field(event(r#""type": "held""#)), "events[0].update.revision", "a hold has revision 0");
        assert_eq!(field(product_event(r#""type": "held", "product": "Acme""#)), "events[0].product");
        let no_reason = r#""type": "rolled-back", "product": "acme-agent", "from": "2.4.0", "to": "2.3.1""#;
        assert_eq!(field(product_event(no_reason)), "events[0].reason");
        let bad_version = r#""type": "uninstalled", "product": "acme-agent", "from": "2.4.0-rc1""#;
        assert_eq!(field(product_event(bad_version)), "events[0].from");
        let no_outcome = r#""type": "recovered", "product": "acme-agent", "operation": "install", "from": "2.4.0""#;
        assert_eq!(field(product_event(no_outcome)), "events[0].outcome");
        assert_eq!(field(event(&format!(r#""type": "install-succeeded", {delivery}"#))), "events[0].delivery");
        let huge = r#""type": "download-succeeded", "delivery": {"from_http": 18446744073709551615,
            "from_cache_server": 0, "from_lan_peers": 0, "from_group_peers": 0, "from_internet_peers": 0, "to_peers": 0}"#;
        assert_eq!(field(event(huge)), "events[0].delivery.from_http");
        let unknown =
            r#"{"id": "6a1f9b3e-5c2d-4e8f-9a7b-1c2d3e4f5a6b", "time": "2025-06-10T12:00:00Z", "type": "rebooted"}"#;
        assert!(serde_json::from_str::<Event>(unknown).unwrap_err().to_string().contains("unknown variant"));
        for kind in EventType::ALL {
            assert_eq!(kind.as_str().parse::<EventType>().unwrap(), kind);
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn delivery_stats_sum_and_give_the_peering_efficiency() {
        let mut stats = DeliveryStats::http(100);
        assert_eq!((stats.total(), stats.from_peers(), stats.percent_peer_caching()), (100, 0, 0.0));
        stats += DeliveryStats {
            from_lan_peers: 200,
            from_group_peers: 50,
            from_cache_server: 50,
            to_peers: 9,
            ..Default::default()
        };
        assert_eq!((stats.total(), stats.from_peers(), stats.to_peers), (400, 250, 9));
        assert_eq!(stats.percent_peer_caching(), 62.5);
        assert_eq!(DeliveryStats::default().percent_peer_caching(), 0.0);
        let mut full = DeliveryStats::http(u64::MAX);
        full += DeliveryStats::http(1);
        assert_eq!(full.from_http, u64::MAX, "sums saturate");
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

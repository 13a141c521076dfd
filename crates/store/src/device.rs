//! Devices, their identity and their inventory.

use core::fmt;
use core::str::FromStr;
use std::collections::{BTreeMap, BTreeSet};

use custody_catalog::{DeviceInventory, UpdateId, Version};
use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::text::{check_name, check_text, check_token, uuid_id};
use crate::{Error, limits};

uuid_id!(
    /// A device's id. The service chooses it at enrollment (it is the CN of a device
    /// certificate, so it exists before the certificate does).
    DeviceId,
    "device id"
);

/// An enrolled device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub name: DeviceName,
    pub identity: Identity,
    pub group: Option<GroupName>,
    pub labels: Labels,
    pub enrolled_at: Timestamp,
    /// The last enrollment, inventory or event report (the latest `now` passed with one).
    pub last_seen: Timestamp,
    /// When an admin revoked the device ([`Store::revoke_device`](crate::Store::revoke_device)): it authenticates no
    /// more and is nobody's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
}

/// What [`Store::enroll`](crate::Store::enroll) stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDevice {
    pub id: DeviceId,
    pub name: DeviceName,
    pub identity: Identity,
    pub group: Option<GroupName>,
    #[serde(default)]
    pub labels: Labels,
}

/// The result of an enrollment, which is idempotent on the identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enrollment {
    /// The device was enrolled now.
    New(Device),
    /// A device with this identity was enrolled before; it is returned unchanged (the id, name,
    /// group and labels of the repeated request are ignored).
    Existing(Device),
}

impl Enrollment {
    pub fn device(&self) -> &Device {
        match self {
            Self::New(device) | Self::Existing(device) => device,
        }
    }

    pub fn into_device(self) -> Device {
        match self {
            Self::New(device) | Self::Existing(device) => device,
        }
    }
}

/// How a device authenticates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Identity {
    /// A client certificate issued by the service's device intermediate.
    Certificate {
        serial: CertSerial,
        /// SHA-256 of the certificate's DER encoding: what a TLS connection is looked up by.
        fingerprint: Sha256,
    },
    /// A bearer token; only its SHA-256 is stored.
    Token { hash: Sha256 },
}

impl Identity {
    /// The token identity for a device token's secret.
    pub fn token(secret: &[u8]) -> Self {
        Self::Token { hash: Sha256::of(secret) }
    }

    /// What the device is looked up by.
    pub fn key(&self) -> IdentityKey {
        match self {
            Self::Certificate { fingerprint, .. } => IdentityKey::Certificate(*fingerprint),
            Self::Token { hash } => IdentityKey::Token(*hash),
        }
    }
}

/// The unique part of an [`Identity`], which a request authenticates with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdentityKey {
    /// The SHA-256 of the client certificate's DER.
    Certificate(Sha256),
    /// The SHA-256 of the token's secret.
    Token(Sha256),
}

impl IdentityKey {
    /// The token key for a device token's secret.
    pub fn token(secret: &[u8]) -> Self {
        Self::Token(Sha256::of(secret))
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::Certificate(_) => "certificate",
            Self::Token(_) => "token",
        }
    }

    pub(crate) fn digest(&self) -> &Sha256 {
        match self {
            Self::Certificate(digest) | Self::Token(digest) => digest,
        }
    }
}

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    pub fn of(data: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl FromStr for Sha256 {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let mut bytes = [0; 32];
        match hex::decode_to_slice(text, &mut bytes) {
            Ok(()) if !text.bytes().any(|b| b.is_ascii_uppercase()) => Ok(Self(bytes)),
            _ => Err(Error::invalid("SHA-256 digest", format!("{text:?} is not 64 lower-case hex digits"))),
        }
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A certificate serial number: 1 to 40 lower-case hex digits (at most 20 octets, RFC 5280).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CertSerial(String);

/// A device's display name: 1 to 128 bytes, no control characters, no surrounding white space.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceName(String);

/// A device group, used to target updates and to filter listings and compliance: 1 to 64
/// characters from `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupName(String);

macro_rules! text_newtype {
    ($name:ident, |$text:ident| $check:expr) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str($text: &str) -> Result<Self, Error> {
                $check?;
                Ok(Self($text.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(text: String) -> Result<Self, Error> {
                text.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

text_newtype!(CertSerial, |text| CertSerial::check(text));
text_newtype!(DeviceName, |text| check_name("device name", text, 128));
text_newtype!(GroupName, |text| check_token("group name", text, 64, b"._-"));

impl CertSerial {
    fn check(text: &str) -> Result<(), Error> {
        let hex = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        match hex && text.len() <= 40 {
            true => Ok(()),
            false => {
                Err(Error::invalid("certificate serial", format!("{text:?} is not 1 to 40 lower-case hex digits")))
            }
        }
    }
}

/// Labels on a device (`site = "berlin"`): at most [`limits::MAX_LABELS`]; keys 1 to 63
/// characters from `a-z 0-9 . _ / -` starting with a letter or digit, values at most 256 bytes
/// without control characters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = Error;

    fn try_from(labels: BTreeMap<String, String>) -> Result<Self, Error> {
        if labels.len() > limits::MAX_LABELS {
            return Err(Error::invalid(
                "labels",
                format!("{} labels, at most {} allowed", labels.len(), limits::MAX_LABELS),
            ));
        }
        for (key, value) in &labels {
            check_token("label key", key, 63, b"._/-")?;
            check_text("label value", value, 256, false)?;
        }
        Ok(Self(labels))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}

/// What a device reports about itself: the catalog's [`DeviceInventory`], with the JSON form of
/// the device API and the size bounds of [`limits`].
///
/// ```json
/// {"os_family": "debian", "os_version": "12.5", "arch": "x86_64",
///  "products": {"acme-os": "4.2"}, "hardware_ids": ["pci:8086:15f3"],
///  "installed_updates": ["0b5e4b1e-6c8d-4c44-9d5c-9a1f7e1f2a10"]}
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory(pub DeviceInventory);

impl Inventory {
    /// Checks the size bounds.
    pub fn validate(&self) -> Result<(), Error> {
        let inventory = &self.0;
        let counts = [
            ("products", inventory.products.len(), limits::MAX_PRODUCTS),
            ("hardware ids", inventory.hardware_ids.len(), limits::MAX_HARDWARE_IDS),
            ("installed updates", inventory.installed_updates.len(), limits::MAX_INSTALLED_UPDATES),
        ];
        for (what, count, max) in counts {
            if count > max {
                return Err(Error::invalid("inventory", format!("{count} {what}, at most {max} allowed")));
            }
        }
        Ok(())
    }
}

/// The JSON form of [`Inventory`].
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryJson {
    os_family: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    os_version: Option<String>,
    arch: String,
    #[serde(default)]
    products: BTreeMap<String, String>,
    #[serde(default)]
    hardware_ids: BTreeSet<String>,
    #[serde(default)]
    installed_updates: BTreeSet<String>,
}

impl InventoryJson {
    fn parse(self) -> Result<Inventory, Error> {
        let field = |name: &'static str| move |error: custody_catalog::Error| Error::invalid(name, error.to_string());
        let inventory = Inventory(DeviceInventory {
            os_family: self.os_family.parse().map_err(field("inventory os_family"))?,
            os_version: self
                .os_version
                .map(|version| version.parse::<Version>())
                .transpose()
                .map_err(field("inventory os_version"))?,
            arch: self.arch.parse().map_err(field("inventory arch"))?,
            products: self
                .products
                .into_iter()
                .map(|(product, version)| Ok((product.parse()?, version.parse()?)))
                .collect::<Result<_, custody_catalog::Error>>()
                .map_err(field("inventory products"))?,
            hardware_ids: self
                .hardware_ids
                .iter()
                .map(|id| id.parse())
                .collect::<Result<_, _>>()
                .map_err(field("inventory hardware_ids"))?,
            installed_updates: self
                .installed_updates
                .iter()
                .map(|id| id.parse::<UpdateId>())
                .collect::<Result<_, _>>()
                .map_err(field("inventory installed_updates"))?,
        });
        inventory.validate()?;
        Ok(inventory)
    }
}

impl From<&Inventory> for InventoryJson {
    fn from(Inventory(inventory): &Inventory) -> Self {
        Self {
            os_family: inventory.os_family.to_string(),
            os_version: inventory.os_version.as_ref().map(|version| version.as_str().to_owned()),
            arch: inventory.arch.to_string(),
            products: inventory
                .products
                .iter()
                .map(|(product, version)| (product.to_string(), version.as_str().to_owned()))
                .collect(),
            hardware_ids: inventory.hardware_ids.iter().map(ToString::to_string).collect(),
            installed_updates: inventory.installed_updates.iter().map(ToString::to_string).collect(),
        }
    }
}

impl Inventory {
    /// The JSON form (also what the database stores).
    pub fn to_json(&self) -> String {
        // Invariant: InventoryJson holds only strings and maps/sets of strings, which always
        // serialize.
        serde_json::to_string(&InventoryJson::from(self)).expect("inventory JSON serializes")
    }

    /// Parses and validates the JSON form.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let wire: InventoryJson =
            serde_json::from_str(json).map_err(|error| Error::invalid("inventory", error.to_string()))?;
        wire.parse()
    }
}

impl Serialize for Inventory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        InventoryJson::from(self).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Inventory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        InventoryJson::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A device's latest inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInventory {
    pub device: DeviceId,
    pub reported_at: Timestamp,
    pub inventory: Inventory,
}

/// A page of [`Store::list_devices`](crate::Store::list_devices), in id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Only devices of this group.
    pub group: Option<GroupName>,
    /// Devices after this id (the last id of the previous page).
    pub after: Option<DeviceId>,
    /// At most this many, 1 to [`limits::MAX_PAGE`].
    pub limit: u32,
}

impl Default for DeviceQuery {
    fn default() -> Self {
        Self { group: None, after: None, limit: 100 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_json_round_trips() {
        let json = r#"{"os_family":"debian","os_version":"12.5","arch":"x86_64","products":{"acme-os":"4.2"},"hardware_ids":["pci:8086:15f3"],"installed_updates":["0b5e4b1e-6c8d-4c44-9d5c-9a1f7e1f2a10"]}"#;
        let inventory = Inventory::from_json(json).unwrap();
        assert_eq!(inventory.0.arch.as_str(), "x86_64");
        assert_eq!(inventory.to_json(), json);
        let minimal = Inventory::from_json(r#"{"os_family":"debian","arch":"aarch64"}"#).unwrap();
        assert_eq!(minimal.0.os_version, None);
        assert!(minimal.0.products.is_empty());
    }

    #[test]
    fn inventory_errors_name_the_field() {
        let error = Inventory::from_json(r#"{"os_family":"debian","arch":"amd64"}"#).unwrap_err();
        assert!(error.to_string().starts_with("invalid inventory arch:"), "{error}");
        assert!(error.to_string().contains("x86_64"), "{error}");
        let error = Inventory::from_json(r#"{"os_family":"debian","arch":"x86_64","colour":"red"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field `colour`"), "{error}");
        let error =
            Inventory::from_json(r#"{"os_family":"debian","arch":"x86_64","products":{"acme":"one"}}"#).unwrap_err();
        assert!(error.to_string().starts_with("invalid inventory products:"), "{error}");
    }

    #[test]
    fn inventory_size_is_bounded() {
        let ids: Vec<String> = (0..=limits::MAX_HARDWARE_IDS).map(|i| format!("\"usb:{i:08x}\"")).collect();
        let json = format!(r#"{{"os_family":"debian","arch":"x86_64","hardware_ids":[{}]}}"#, ids.join(","));
        let error = Inventory::from_json(&json).unwrap_err();
        assert_eq!(error.to_string(), "invalid inventory: 4097 hardware ids, at most 4096 allowed");
    }

    #[test]
    fn labels_are_bounded_and_checked() {
        let labels: BTreeMap<String, String> = [("site".into(), "berlin".into())].into();
        assert_eq!(Labels::try_from(labels).unwrap().get("site"), Some("berlin"));
        let too_many: BTreeMap<String, String> =
            (0..=limits::MAX_LABELS).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(Labels::try_from(too_many).is_err());
        let bad_key: BTreeMap<String, String> = [("Site".into(), "x".into())].into();
        assert!(Labels::try_from(bad_key).is_err());
        let bad_value: BTreeMap<String, String> = [("site".into(), "a\nb".into())].into();
        assert!(Labels::try_from(bad_value).is_err());
    }

    #[test]
    fn identity_serde_and_keys() {
        let identity = Identity::Certificate { serial: "0a1b".parse().unwrap(), fingerprint: Sha256::of(b"der") };
        let json = serde_json::to_string(&identity).unwrap();
        assert!(json.starts_with(r#"{"kind":"certificate","serial":"0a1b","fingerprint":""#), "{json}");
        assert_eq!(serde_json::from_str::<Identity>(&json).unwrap(), identity);
        assert_eq!(identity.key(), IdentityKey::Certificate(Sha256::of(b"der")));
        assert_eq!(Identity::token(b"secret").key(), IdentityKey::token(b"secret"));
        assert!("0A1B".parse::<CertSerial>().is_err());
        assert!("".parse::<CertSerial>().is_err());
        assert!("a".repeat(41).parse::<CertSerial>().is_err());
        assert!(Sha256::of(b"x").to_string().parse::<Sha256>().is_ok());
        assert!(Sha256::of(b"x").to_string().to_uppercase().parse::<Sha256>().is_err());
    }

    #[test]
    fn device_ids_are_strict_uuids() {
        let id = DeviceId::random();
        assert_eq!(id.to_string().parse::<DeviceId>().unwrap(), id);
        assert!("00000000-0000-0000-0000-000000000000".parse::<DeviceId>().is_err());
        assert!(id.to_string().to_uppercase().parse::<DeviceId>().is_err());
        assert!(id.as_uuid().simple().to_string().parse::<DeviceId>().is_err());
    }
}

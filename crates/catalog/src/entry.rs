//! One update of the catalog, as carried in its TUF target's `custom` field.

use core::fmt;
use core::str::FromStr;

use jiff::civil::Date;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Error;
use crate::applicability::{Applicability, DeviceInventory, ProductName};
use crate::content::ContentInfo;
use crate::installer::{Handler, Installer};
use crate::json::{Field, Object, quoted, string_enum};
use crate::version::Version;

/// The key of the catalog object inside a target's `custom` object. Other keys of `custom`
/// belong to others and are ignored.
pub const NAMESPACE: &str = "custody";

/// The schema this build reads and writes. Any change to the schema, even an added optional
/// field or enum value, takes a new number (see docs/catalog.md).
pub const SCHEMA: u64 = 1;

/// Keys of an operator's [`UpdateDescription`].
const DESCRIPTION_KEYS: &[&str] = &[
    "id",
    "revision",
    "title",
    "description",
    "kind",
    "product",
    "classification",
    "severity",
    "version",
    "release_date",
    "applicability",
    "prerequisites",
    "supersedes",
    "reboot",
    "installer",
];

/// Keys of the catalog object: the description's, the schema and the content.
const ENTRY_KEYS: &[&str] = &[
    "schema",
    "id",
    "revision",
    "title",
    "description",
    "kind",
    "product",
    "classification",
    "severity",
    "version",
    "release_date",
    "applicability",
    "prerequisites",
    "supersedes",
    "reboot",
    "installer",
    "content",
];

/// One update: the parsed `custom` object of its TUF target.
///
/// Built only by parsing ([`UpdateEntry::parse`], [`UpdateEntry::from_description`]), so that
/// the rules that span fields hold: the installer's handler fits the kind, hardware ids appear
/// only on drivers, an update neither requires nor supersedes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateEntry {
    id: UpdateId,
    revision: u32,
    title: String,
    description: String,
    product: ProductName,
    classification: Classification,
    severity: Option<Severity>,
    version: Version,
    release_date: Date,
    applicability: Applicability,
    prerequisites: Vec<Prerequisite>,
    supersedes: Vec<UpdateId>,
    reboot: Reboot,
    installer: Installer,
    content: ContentInfo,
}

impl UpdateEntry {
    /// The most characters in a title.
    pub const MAX_TITLE: usize = 200;
    /// The most characters in a description.
    pub const MAX_DESCRIPTION: usize = 16 * 1024;

    /// Parses a TUF target's `custom` object: `{"custody": {"schema": 1, ...}, ...}`.
    ///
    /// Keys of `custom` other than `custody` are ignored; unknown keys inside it are errors. An
    /// entry of a newer schema is [`Error::UnsupportedSchema`], whatever else it holds.
    pub fn parse(custom: &Value) -> Result<Self, Error> {
        let custom = Field::root(custom).object()?;
        let body = custom.required(NAMESPACE)?;
        let object = body.object()?;
        let schema = object.required("schema")?;
        match schema.u64()? {
            SCHEMA => {}
            0 => return Err(schema.invalid("schema numbers start at 1")),
            found => {
                return Err(Error::UnsupportedSchema { found, supported: SCHEMA });
            }
        }
        let fields = body.strict_object(ENTRY_KEYS)?;
        let content = ContentInfo::from_json(fields.required("content")?)?;
        Self::from_fields(&fields, content)
    }

    /// [`UpdateEntry::parse`] from JSON bytes.
    pub fn parse_slice(custom: &[u8]) -> Result<Self, Error> {
        let custom: Value = serde_json::from_slice(custom)?;
        Self::parse(&custom)
    }

    /// Builds an entry from an operator's description and the content info computed from the
    /// payload ([`ContentHasher`](crate::ContentHasher)). Error paths are relative to the
    /// description (`applicability.os.version_range.min`).
    pub fn from_description(description: &UpdateDescription, content: ContentInfo) -> Result<Self, Error> {
        let fields = Object::strict_root(&description.0, DESCRIPTION_KEYS)?;
        Self::from_fields(&fields, content)
    }

    /// The `custom` object of the entry's TUF target: `{"custody": {...}}`. Parsing it gives
    /// back an equal entry, and for JSON that [`UpdateEntry::parse`] accepts it gives back the
    /// same `custody` object.
    pub fn to_custom_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("schema".into(), SCHEMA.into());
        body.extend(self.description_json());
        body.insert("content".into(), self.content.to_json());
        let mut custom = Map::new();
        custom.insert(NAMESPACE.into(), Value::Object(body));
        Value::Object(custom)
    }

    /// The entry as an operator's description, without schema and content: for editing an
    /// entry and building it again with [`UpdateEntry::from_description`].
    pub fn to_description(&self) -> UpdateDescription {
        UpdateDescription(self.description_json())
    }

    /// The update's identity, shared by all its revisions.
    pub fn id(&self) -> UpdateId {
        self.id
    }

    /// The revision, from 1; a higher revision of the same id replaces a lower one.
    pub fn revision(&self) -> u32 {
        self.revision
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    pub fn kind(&self) -> Kind {
        self.installer.kind()
    }

    pub fn product(&self) -> &ProductName {
        &self.product
    }

    pub fn classification(&self) -> Classification {
        self.classification
    }

    /// The severity, if rated.
    pub fn severity(&self) -> Option<Severity> {
        self.severity
    }

    /// The version the update installs.
    pub fn version(&self) -> &Version {
        &self.version
    }

    pub fn release_date(&self) -> Date {
        self.release_date
    }

    pub fn applicability(&self) -> &Applicability {
        &self.applicability
    }

    /// All must be satisfied before the update is installed.
    pub fn prerequisites(&self) -> &[Prerequisite] {
        &self.prerequisites
    }

    /// Updates this one replaces.
    pub fn supersedes(&self) -> &[UpdateId] {
        &self.supersedes
    }

    pub fn reboot(&self) -> Reboot {
        self.reboot
    }

    pub fn installer(&self) -> &Installer {
        &self.installer
    }

    pub fn content(&self) -> &ContentInfo {
        &self.content
    }

    /// The prerequisites `device` does not satisfy.
    pub fn unmet_prerequisites<'a>(&'a self, device: &'a DeviceInventory) -> impl Iterator<Item = &'a Prerequisite> {
        self.prerequisites.iter().filter(|prerequisite| !prerequisite.is_satisfied(device))
    }

    /// Parses the fields shared by the catalog object and a description.
    fn from_fields(fields: &Object<'_>, content: ContentInfo) -> Result<Self, Error> {
        let id: UpdateId = fields.required("id")?.parse()?;

        let revision_field = fields.required("revision")?;
        let revision = match u32::try_from(revision_field.u64()?) {
            Ok(revision) if revision >= 1 => revision,
            _ => return Err(revision_field.invalid("must be from 1 to 4294967295")),
        };

        let title_field = fields.required("title")?;
        let title = title_field.text(Self::MAX_TITLE, false)?;
        if title.trim().is_empty() {
            return Err(title_field.invalid("must not be blank"));
        }
        let description = fields.required("description")?.text(Self::MAX_DESCRIPTION, true)?;

        let kind: Kind = fields.required("kind")?.parse()?;

        let date_field = fields.required("release_date")?;
        let date_text = date_field.str()?;
        let release_date = date_text
            .parse::<Date>()
            .ok()
            .filter(|date| date.to_string() == date_text)
            .ok_or_else(|| date_field.invalid(format!("{} is not a date as YYYY-MM-DD", quoted(date_text))))?;

        let prerequisites = match fields.optional("prerequisites") {
            Some(list) => list.list(64, true, |element| {
                let prerequisite = Prerequisite::from_json(element)?;
                match prerequisite.ids().contains(&id) {
                    true => Err(element.invalid("an update cannot require itself")),
                    false => Ok(prerequisite),
                }
            })?,
            None => Vec::new(),
        };
        let supersedes = match fields.optional("supersedes") {
            Some(list) => list.list(1024, true, |element| {
                let superseded: UpdateId = element.parse()?;
                match superseded == id {
                    true => Err(element.invalid("an update cannot supersede itself")),
                    false => Ok(superseded),
                }
            })?,
            None => Vec::new(),
        };

        Ok(Self {
            id,
            revision,
            title,
            description,
            product: fields.required("product")?.parse()?,
            classification: fields.required("classification")?.parse()?,
            severity: fields.optional("severity").map(|field| field.parse()).transpose()?,
            version: fields.required("version")?.parse()?,
            release_date,
            applicability: Applicability::from_json(fields.required("applicability")?, kind)?,
            prerequisites,
            supersedes,
            reboot: fields.required("reboot")?.parse()?,
            installer: Installer::from_json(fields.required("installer")?, kind)?,
            content,
        })
    }

    /// The JSON of every field but schema and content.
    fn description_json(&self) -> Map<String, Value> {
        let mut object = Map::new();
        object.insert("id".into(), self.id.to_string().into());
        object.insert("revision".into(), self.revision.into());
        object.insert("title".into(), self.title.as_str().into());
        object.insert("description".into(), self.description.as_str().into());
        object.insert("kind".into(), self.kind().as_str().into());
        object.insert("product".into(), self.product.as_str().into());
        object.insert("classification".into(), self.classification.as_str().into());
        if let Some(severity) = self.severity {
            object.insert("severity".into(), severity.as_str().into());
        }
        object.insert("version".into(), self.version.as_str().into());
        object.insert("release_date".into(), self.release_date.to_string().into());
        object.insert("applicability".into(), self.applicability.to_json());
        if !self.prerequisites.is_empty() {
            let prerequisites = self.prerequisites.iter().map(Prerequisite::to_json).collect();
            object.insert("prerequisites".into(), Value::Array(prerequisites));
        }
        if !self.supersedes.is_empty() {
            let supersedes = self.supersedes.iter().map(|id| Value::from(id.to_string())).collect();
            object.insert("supersedes".into(), Value::Array(supersedes));
        }
        object.insert("reboot".into(), self.reboot.as_str().into());
        object.insert("installer".into(), self.installer.to_json());
        object
    }
}

/// An operator's description of an update, as read from TOML or JSON by the repository tool:
/// the catalog object without `schema` and `content`. It is untyped until
/// [`UpdateEntry::from_description`] parses it, so that errors name its fields.
///
/// In TOML, write `release_date` as a quoted string: a bare TOML date does not deserialize into
/// a JSON string.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UpdateDescription(pub Map<String, Value>);

/// An update's identity: a UUID, written in lower-case hyphenated form. The nil UUID is not an
/// id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpdateId(Uuid);

impl UpdateId {
    pub fn new(uuid: Uuid) -> Result<Self, Error> {
        match uuid.is_nil() {
            true => Err(Error::Value { what: "update id", reason: "the nil UUID is not an update id".into() }),
            false => Ok(Self(uuid)),
        }
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

/// Written as its string form, so an id in any JSON or TOML (API bodies, agent state) passes the same checks.
impl serde::Serialize for UpdateId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UpdateId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for UpdateId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match Uuid::try_parse(text) {
            Ok(uuid) if uuid.hyphenated().to_string() == text => Self::new(uuid),
            _ => Err(Error::Value {
                what: "update id",
                reason: format!("{} is not a UUID in lower-case hyphenated form", quoted(text)),
            }),
        }
    }
}

impl fmt::Display for UpdateId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// A prerequisite: an update that must be installed (any revision) first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prerequisite {
    /// `{"update": id}`: this update.
    Update(UpdateId),
    /// `{"any_of": [id, id, ...]}`: at least one of two or more updates.
    AnyOf(Vec<UpdateId>),
}

impl Prerequisite {
    /// The updates named; one of them must be installed.
    pub fn ids(&self) -> &[UpdateId] {
        match self {
            Self::Update(id) => core::slice::from_ref(id),
            Self::AnyOf(ids) => ids,
        }
    }

    pub fn is_satisfied(&self, device: &DeviceInventory) -> bool {
        self.ids().iter().any(|id| device.installed_updates.contains(id))
    }

    fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["update", "any_of"])?;
        match (object.optional("update"), object.optional("any_of")) {
            (Some(update), None) => Ok(Self::Update(update.parse()?)),
            (None, Some(list)) => {
                let ids = list.list(64, true, |element| element.parse())?;
                match ids.len() {
                    1 => Err(list.invalid("needs two or more ids; use \"update\" for one")),
                    _ => Ok(Self::AnyOf(ids)),
                }
            }
            _ => Err(field.invalid("needs exactly one of \"update\" and \"any_of\"")),
        }
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        match self {
            Self::Update(id) => object.insert("update".into(), id.to_string().into()),
            Self::AnyOf(ids) => {
                let ids = ids.iter().map(|id| Value::from(id.to_string())).collect();
                object.insert("any_of".into(), Value::Array(ids))
            }
        };
        Value::Object(object)
    }
}

string_enum! {
    /// What an update is; each kind has one installer [`Handler`].
    pub enum Kind ("kind") {
        Os => "os",
        App => "app",
        Driver => "driver",
        Definitions => "definitions",
        StoreApp => "store-app",
    }
}

impl Kind {
    /// The installer handler of updates of this kind.
    pub fn handler(self) -> Handler {
        match self {
            Self::Os => Handler::OsImage,
            Self::App => Handler::Archive,
            Self::Driver => Handler::Driver,
            Self::Definitions => Handler::Definitions,
            Self::StoreApp => Handler::StoreApp,
        }
    }
}

string_enum! {
    /// Why an update exists, for operators' approval rules.
    pub enum Classification ("classification") {
        Security => "security",
        Critical => "critical",
        Definitions => "definitions",
        Driver => "driver",
        Feature => "feature",
        Update => "update",
    }
}

string_enum! {
    /// The publisher's severity rating (MSRC scale).
    pub enum Severity ("severity") {
        Critical => "critical",
        Important => "important",
        Moderate => "moderate",
        Low => "low",
    }
}

string_enum! {
    /// Whether installing the update reboots the device.
    pub enum Reboot ("reboot") {
        /// Never reboots.
        Never => "never",
        /// Always needs a reboot to take effect.
        Required => "required",
        /// The installer decides at run time and may ask for one.
        May => "may",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::Problem;

    const ID: &str = "3f0c1c52-6b1e-4c8e-9a57-2f4d8e1b7a90";
    const OTHER: &str = "9b2d7c1e-0a4f-4f43-8d1a-6c3e5b7a9f12";
    const THIRD: &str = "5e8a0d3b-7c21-4b9e-8f6a-1d2c3b4a5e6f";
    const FOURTH: &str = "c47e2a19-3b5d-4e8f-a1c2-9d8e7f6a5b4c";

    /// The example of docs/catalog.md.
    fn example() -> Value {
        json!({
            "custody": {
                "schema": 1,
                "id": ID,
                "revision": 2,
                "title": "Acme agent 2.4.0",
                "description": "Fixes CVE-2025-0001 in the agent's parser.\nRestarts the agent.",
                "kind": "app",
                "product": "acme-agent",
                "classification": "security",
                "severity": "important",
                "version": "2.4.0",
                "release_date": "2025-06-10",
                "applicability": {
                    "os": { "family": "debian", "version_range": { "min": "12", "below": "14" } },
                    "arch": ["x86_64", "aarch64"],
                    "installed": {
                        "product": "acme-agent",
                        "version_range": { "min": "2.0", "below": "2.4.0" }
                    }
                },
                "prerequisites": [
                    { "update": OTHER },
                    { "any_of": [THIRD, FOURTH] }
                ],
                "supersedes": [THIRD],
                "reboot": "never",
                "installer": {
                    "handler": "archive",
                    "format": "tar-zstd",
                    "destination": "/opt/acme-agent",
                    "post_install": ["/opt/acme-agent/bin/acme-agent", "--migrate-config"]
                },
                "content": {
                    "length": 7340032,
                    "sha256": "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4",
                    "pieces": {
                        "piece_size": 1048576,
                        "tree": "bep52-sha256",
                        "root": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                    }
                }
            },
            "acme-dashboard": { "color": "red" }
        })
    }

    /// `example()` with the value at JSON `pointer` replaced (or removed for `None`).
    fn with(pointer: &str, value: Option<Value>) -> Value {
        let mut custom = example();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match (custom.pointer_mut(parent).unwrap(), value) {
            (Value::Object(map), Some(value)) => {
                map.insert(key.into(), value);
            }
            (Value::Object(map), None) => {
                map.remove(key);
            }
            (Value::Array(array), Some(value)) => array[key.parse::<usize>().unwrap()] = value,
            (parent, _) => panic!("cannot edit {parent}"),
        }
        custom
    }

    #[test]
    fn parses_the_example() {
        let entry = UpdateEntry::parse(&example()).unwrap();
        assert_eq!(entry.id().to_string(), ID);
        assert_eq!(entry.revision(), 2);
        assert_eq!(entry.kind(), Kind::App);
        assert_eq!(entry.classification(), Classification::Security);
        assert_eq!(entry.severity(), Some(Severity::Important));
        assert_eq!(entry.version().as_str(), "2.4.0");
        assert_eq!(entry.release_date(), jiff::civil::date(2025, 6, 10));
        assert_eq!(entry.reboot(), Reboot::Never);
        assert_eq!(entry.applicability().arch.len(), 2);
        assert_eq!(entry.prerequisites().len(), 2);
        assert_eq!(entry.supersedes()[0].to_string(), THIRD);
        let Installer::Archive { post_install, .. } = entry.installer() else {
            panic!("not an archive installer");
        };
        assert_eq!(post_install.as_ref().unwrap().program(), "/opt/acme-agent/bin/acme-agent");
        let tree = entry.content().piece_tree().unwrap();
        assert_eq!(tree.layout().piece_count(), 7);
    }

    #[test]
    fn round_trips() {
        let custom = example();
        let entry = UpdateEntry::parse(&custom).unwrap();
        let written = entry.to_custom_json();
        // The same catalog object; other tools' keys are not ours to write.
        assert_eq!(written[NAMESPACE], custom[NAMESPACE]);
        assert_eq!(written.as_object().unwrap().len(), 1);
        assert_eq!(UpdateEntry::parse(&written).unwrap(), entry);
        let bytes = serde_json::to_vec(&written).unwrap();
        assert_eq!(UpdateEntry::parse_slice(&bytes).unwrap(), entry);
    }

    #[test]
    fn builds_from_a_description() {
        let mut body = example()[NAMESPACE].as_object().unwrap().clone();
        body.remove("schema");
        let content = body.remove("content").unwrap();
        let description: UpdateDescription = serde_json::from_value(Value::Object(body)).unwrap();
        let content = ContentInfo::from_json(Field::root(&content)).unwrap();
        let entry = UpdateEntry::from_description(&description, content.clone()).unwrap();
        assert_eq!(entry, UpdateEntry::parse(&example()).unwrap());
        assert_eq!(entry.to_description(), description);

        let mut bad = description.clone();
        bad.0["applicability"]["os"]["version_range"]["min"] = json!("twelve");
        let Err(Error::Field { path, .. }) = UpdateEntry::from_description(&bad, content.clone()) else {
            panic!("accepted");
        };
        assert_eq!(path, "applicability.os.version_range.min");

        let mut bad = description;
        bad.0.insert("schema".into(), json!(1));
        let Err(Error::Field { path, problem }) = UpdateEntry::from_description(&bad, content) else {
            panic!("accepted");
        };
        assert_eq!((path.as_str(), problem), ("schema", Problem::Unknown));
    }

    #[test]
    fn every_field_error_names_its_field() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<Value>, &str, &str)] = &[
            ("/custody", None, "custody", "missing"),
            ("/custody", Some(json!([])), "custody", "expected object"),
            ("/custody/schema", None, "custody.schema", "missing"),
            ("/custody/schema", Some(json!("1")), "custody.schema", "expected non-negative integer"),
            ("/custody/schema", Some(json!(0)), "custody.schema", "start at 1"),
            ("/custody/shell", Some(json!("rm -rf /")), "custody.shell", "unknown field"),
            ("/custody/id", Some(json!(ID.to_uppercase())), "custody.id", "lower-case hyphenated"),
            ("/custody/id", Some(json!("00000000-0000-0000-0000-000000000000")), "custody.id", "nil"),
            ("/custody/revision", Some(json!(0)), "custody.revision", "from 1"),
            ("/custody/revision", Some(json!(1.0)), "custody.revision", "expected non-negative integer"),
            ("/custody/revision", Some(json!(1u64 << 32)), "custody.revision", "from 1"),
            ("/custody/title", None, "custody.title", "missing"),
            ("/custody/title", Some(json!("  ")), "custody.title", "blank"),
            ("/custody/title", Some(json!("a\nb")), "custody.title", "control character"),
            ("/custody/title", Some(json!("x".repeat(201))), "custody.title", "longer than 200"),
            ("/custody/description", Some(json!("bell\u{7}")), "custody.description", "control character"),
            ("/custody/kind", Some(json!("firmware")), "custody.kind", "unknown value \"firmware\""),
            ("/custody/product", Some(json!("Acme")), "custody.product", "not allowed"),
            ("/custody/classification", Some(json!("upgrade")), "custody.classification", "expected one of"),
            ("/custody/severity", Some(json!(null)), "custody.severity", "expected string"),
            ("/custody/severity", Some(json!("urgent")), "custody.severity", "unknown value"),
            ("/custody/version", Some(json!("2.4.0-rc1")), "custody.version", "decimal numbers"),
            ("/custody/release_date", Some(json!("2025-6-10")), "custody.release_date", "YYYY-MM-DD"),
            ("/custody/release_date", Some(json!("2025-02-30")), "custody.release_date", "YYYY-MM-DD"),
            ("/custody/applicability", None, "custody.applicability", "missing"),
            ("/custody/applicability/os/family", Some(json!("Debian")), "custody.applicability.os.family", "not allowed"),
            ("/custody/applicability/os/version_range", Some(json!({"min": "14", "below": "12"})), "custody.applicability.os.version_range", "empty range"),
            ("/custody/applicability/os/version_range", Some(json!({})), "custody.applicability.os.version_range", "needs \"min\""),
            ("/custody/applicability/os/version_range/min", Some(json!("twelve")), "custody.applicability.os.version_range.min", "decimal numbers"),
            ("/custody/applicability/os/version_range/max", Some(json!("13")), "custody.applicability.os.version_range.max", "unknown field"),
            ("/custody/applicability/arch/1", Some(json!("amd64")), "custody.applicability.arch[1]", "use \"x86_64\""),
            ("/custody/applicability/arch/1", Some(json!("x86_64")), "custody.applicability.arch[1]", "duplicate of [0]"),
            ("/custody/applicability/arch", Some(json!([])), "custody.applicability.arch", "must not be empty"),
            ("/custody/applicability/arch", Some(json!("x86_64")), "custody.applicability.arch", "expected array"),
            ("/custody/applicability/installed/product", None, "custody.applicability.installed.product", "missing"),
            ("/custody/applicability/installed/version_range/below", Some(json!(2)), "custody.applicability.installed.version_range.below", "expected string"),
            ("/custody/applicability/hardware_ids", Some(json!(["pci:8086:15f3"])), "custody.applicability.hardware_ids", "only allowed for kind \"driver\""),
            ("/custody/prerequisites/0", Some(json!({"update": ID})), "custody.prerequisites[0]", "cannot require itself"),
            ("/custody/prerequisites/0", Some(json!({"update": OTHER, "any_of": [THIRD, FOURTH]})), "custody.prerequisites[0]", "exactly one of"),
            ("/custody/prerequisites/0", Some(json!({"update": "x"})), "custody.prerequisites[0].update", "not a UUID"),
            ("/custody/prerequisites/1", Some(json!({"any_of": [THIRD]})), "custody.prerequisites[1].any_of", "two or more"),
            ("/custody/prerequisites/1", Some(json!({"any_of": [THIRD, THIRD]})), "custody.prerequisites[1].any_of[1]", "duplicate of [0]"),
            ("/custody/supersedes/0", Some(json!(ID)), "custody.supersedes[0]", "cannot supersede itself"),
            ("/custody/supersedes", Some(json!([])), "custody.supersedes", "must not be empty"),
            ("/custody/reboot", Some(json!("always")), "custody.reboot", "expected one of: never, required, may"),
            ("/custody/installer", Some(json!({"handler": "os-image", "slot_layout": "a-b", "format": "raw"})), "custody.installer.handler", "does not fit kind \"app\"; expected \"archive\""),
            ("/custody/installer/handler", None, "custody.installer.handler", "missing"),
            ("/custody/installer/shell", Some(json!("sh -c")), "custody.installer.shell", "unknown field"),
            ("/custody/installer/format", Some(json!("zip")), "custody.installer.format", "unknown value"),
            ("/custody/installer/destination", Some(json!("/opt/../etc")), "custody.installer.destination", "normalized"),
            ("/custody/installer/destination", Some(json!("opt")), "custody.installer.destination", "absolute"),
            ("/custody/installer/post_install", Some(json!("/bin/sh -c 'x'")), "custody.installer.post_install", "expected array"),
            ("/custody/installer/post_install/0", Some(json!("acme-agent")), "custody.installer.post_install[0]", "the program"),
            ("/custody/installer/post_install/1", Some(json!("a\u{0}b")), "custody.installer.post_install[1]", "NUL"),
            ("/custody/content", None, "custody.content", "missing"),
            ("/custody/content/length", Some(json!(0)), "custody.content.length", "at least 1"),
            ("/custody/content/length", Some(json!(-1)), "custody.content.length", "expected non-negative integer"),
            ("/custody/content/sha256", Some(json!("8f4343")), "custody.content.sha256", "64 lower-case hex"),
            ("/custody/content/pieces/piece_size", Some(json!(1000000)), "custody.content.pieces.piece_size", "power of two"),
            ("/custody/content/pieces/piece_size", Some(json!(8192)), "custody.content.pieces.piece_size", "power of two"),
            ("/custody/content/pieces/tree", Some(json!("blake3")), "custody.content.pieces.tree", "expected one of: bep52-sha256"),
            ("/custody/content/pieces/root", None, "custody.content.pieces.root", "missing"),
        ];
        for (pointer, value, path, message) in cases {
            let custom = with(pointer, value.clone());
            match UpdateEntry::parse(&custom) {
                Err(Error::Field { path: found, problem }) => {
                    assert_eq!(&found, path, "{pointer}");
                    let problem = problem.to_string();
                    assert!(problem.contains(message), "{pointer}: {problem:?}");
                }
                other => panic!("{pointer}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_kinds_check_their_installer_arguments() {
        let driver = |installer: Value| {
            let mut custom = with("/custody/kind", Some(json!("driver")));
            custom["custody"]["installer"] = installer;
            custom["custody"]["applicability"]["hardware_ids"] = json!(["pci:8086:15f3"]);
            custom
        };
        let good = driver(json!({
            "handler": "driver",
            "format": "tar",
            "destination": "/lib/modules/updates/acme",
            "reload_command": ["/usr/lib/acme/reload-driver", "acme_nic"]
        }));
        let entry = UpdateEntry::parse(&good).unwrap();
        assert_eq!(entry.kind(), Kind::Driver);
        assert_eq!(entry.applicability().hardware_ids.len(), 1);
        assert_eq!(UpdateEntry::parse(&entry.to_custom_json()).unwrap(), entry);

        let missing = driver(json!({
            "handler": "driver", "format": "tar", "destination": "/lib/modules/updates/acme"
        }));
        let Err(Error::Field { path, problem }) = UpdateEntry::parse(&missing) else {
            panic!("accepted");
        };
        assert_eq!((path.as_str(), problem), ("custody.installer.reload_command", Problem::Missing));

        let mut definitions = with("/custody/kind", Some(json!("definitions")));
        definitions["custody"]["installer"] = json!({"handler": "definitions", "keep": 3});
        let entry = UpdateEntry::parse(&definitions).unwrap();
        assert_eq!(entry.installer(), &Installer::Definitions { keep: 3 });
        definitions["custody"]["installer"]["keep"] = json!(65);
        let Err(Error::Field { path, .. }) = UpdateEntry::parse(&definitions) else {
            panic!("accepted");
        };
        assert_eq!(path, "custody.installer.keep");

        let mut os = with("/custody/kind", Some(json!("os")));
        os["custody"]["installer"] = json!({"handler": "os-image", "slot_layout": "a-b", "format": "raw-zstd"});
        let entry = UpdateEntry::parse(&os).unwrap();
        assert_eq!(
            entry.installer(),
            &Installer::OsImage { slot_layout: crate::SlotLayout::Dual, format: crate::ImageFormat::RawZstd }
        );

        let mut store = with("/custody/kind", Some(json!("store-app")));
        store["custody"]["installer"] = json!({"handler": "store-app"});
        assert_eq!(UpdateEntry::parse(&store).unwrap().installer(), &Installer::StoreApp);
        store["custody"]["installer"]["destination"] = json!("/opt");
        let Err(Error::Field { path, problem }) = UpdateEntry::parse(&store) else {
            panic!("accepted");
        };
        assert_eq!((path.as_str(), problem), ("custody.installer.destination", Problem::Unknown));
    }

    #[test]
    fn newer_schema_is_a_clear_error_before_anything_else() {
        let mut custom = with("/custody/schema", Some(json!(2)));
        custom["custody"]["delta"] = json!({"from": "2.3.0"});
        custom["custody"]["kind"] = json!("firmware");
        let error = UpdateEntry::parse(&custom).unwrap_err();
        assert!(matches!(error, Error::UnsupportedSchema { found: 2, supported: 1 }));
        assert_eq!(error.to_string(), "custody.schema: unsupported catalog schema 2; this build supports schema 1");
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        let Err(Error::Field { path, problem }) = UpdateEntry::parse(&json!([1])) else {
            panic!("accepted");
        };
        assert_eq!((path.as_str(), problem), ("(top level)", Problem::Type("object")));
        assert!(matches!(UpdateEntry::parse_slice(b"{\"custody\":"), Err(Error::Json(_))));
    }

    #[test]
    fn prerequisites_against_installed_updates() {
        let entry = UpdateEntry::parse(&example()).unwrap();
        let mut device = DeviceInventory {
            os_family: "debian".parse().unwrap(),
            os_version: Some("12".parse().unwrap()),
            arch: "x86_64".parse().unwrap(),
            products: BTreeMap::new(),
            hardware_ids: BTreeSet::new(),
            installed_updates: BTreeSet::from([OTHER.parse().unwrap()]),
        };
        let unmet: Vec<_> = entry.unmet_prerequisites(&device).collect();
        assert_eq!(unmet, [&entry.prerequisites()[1]]);
        device.installed_updates.insert(FOURTH.parse().unwrap());
        assert_eq!(entry.unmet_prerequisites(&device).count(), 0);
    }

    /// Entries built from arbitrary choices of every enumerated field.
    fn entry_json() -> impl Strategy<Value = Value> {
        let installers = prop::sample::select(vec![
            ("os", json!({"handler": "os-image", "slot_layout": "single", "format": "raw"})),
            ("app", json!({"handler": "archive", "format": "tar", "destination": "/"})),
            (
                "driver",
                json!({"handler": "driver", "format": "tar-zstd", "destination": "/lib/firmware", "reload_command": ["/bin/true"]}),
            ),
            ("definitions", json!({"handler": "definitions", "keep": 0})),
            ("store-app", json!({"handler": "store-app"})),
        ]);
        (
            installers,
            prop::sample::select(Classification::ALL),
            prop::option::of(prop::sample::select(Severity::ALL)),
            prop::sample::select(Reboot::ALL),
            prop::collection::vec(0u64..100_000, 1..=Version::MAX_COMPONENTS),
            1u32..,
            prop::sample::subsequence(vec!["x86_64", "aarch64", "armv7l", "riscv64"], 0..=4),
            prop::option::of((0u32..=10, any::<[u8; 32]>())),
            "[A-Za-z0-9][A-Za-z0-9 ]{0,40}",
        )
            .prop_map(
                |((kind, installer), classification, severity, reboot, version, revision, arch, pieces, title)| {
                    let version: Vec<String> = version.iter().map(u64::to_string).collect();
                    let mut body = json!({
                        "schema": 1,
                        "id": ID,
                        "revision": revision,
                        "title": title,
                        "description": "",
                        "kind": kind,
                        "product": "acme",
                        "classification": classification.as_str(),
                        "version": version.join("."),
                        "release_date": "2024-02-29",
                        "applicability": {},
                        "reboot": reboot.as_str(),
                        "installer": installer,
                        "content": {
                            "length": 1,
                            "sha256": "00".repeat(32),
                        }
                    });
                    if let Some(severity) = severity {
                        body["severity"] = json!(severity.as_str());
                    }
                    if !arch.is_empty() {
                        body["applicability"]["arch"] = json!(arch);
                    }
                    if let Some((shift, root)) = pieces {
                        body["content"]["pieces"] = json!({
                            "piece_size": 16384u64 << shift,
                            "tree": "bep52-sha256",
                            "root": hex::encode(root),
                        });
                    }
                    json!({ NAMESPACE: body })
                },
            )
    }

    proptest! {
        #[test]
        fn parse_and_write_are_inverse(custom in entry_json()) {
            let entry = UpdateEntry::parse(&custom).unwrap();
            let written = entry.to_custom_json();
            prop_assert_eq!(&written, &custom);
            prop_assert_eq!(UpdateEntry::parse(&written).unwrap(), entry);
        }

        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = UpdateEntry::parse_slice(&bytes);
        }
    }
}

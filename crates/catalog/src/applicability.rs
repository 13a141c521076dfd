//! Which devices an update applies to, and the device facts it is evaluated against.

use core::fmt;
use core::str::FromStr;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::Error;
use crate::entry::{Kind, UpdateId};
use crate::json::{Field, quoted};
use crate::version::{Version, VersionRange};

/// The conditions a device must meet for an update to apply. Every condition is optional; an
/// absent condition holds for every device, and all present conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applicability {
    /// The operating system the device must run.
    pub os: Option<OsRequirement>,
    /// The device's architecture must be one of these; empty means any.
    pub arch: Vec<Arch>,
    /// A product that must be installed, optionally within a version range.
    pub installed: Option<ProductRequirement>,
    /// For drivers: the device must have at least one of these hardware ids; empty means any.
    pub hardware_ids: Vec<HardwareId>,
}

impl Applicability {
    /// Evaluates the conditions in the order OS family, OS version, architecture, installed
    /// product, hardware ids, and reports the first that fails.
    pub fn evaluate(&self, device: &DeviceInventory) -> Evaluation {
        if let Some(os) = &self.os {
            if os.family != device.os_family {
                return Evaluation::NotApplicable(NotApplicable::OsFamily {
                    required: os.family.clone(),
                    found: device.os_family.clone(),
                });
            }
            if let Some(range) = &os.version_range {
                match &device.os_version {
                    None => {
                        return Evaluation::NotApplicable(NotApplicable::OsVersionUnknown { range: range.clone() });
                    }
                    Some(found) if !range.contains(found) => {
                        return Evaluation::NotApplicable(NotApplicable::OsVersion {
                            range: range.clone(),
                            found: found.clone(),
                        });
                    }
                    Some(_) => {}
                }
            }
        }

        if !self.arch.is_empty() && !self.arch.contains(&device.arch) {
            return Evaluation::NotApplicable(NotApplicable::Arch {
                allowed: self.arch.clone(),
                found: device.arch.clone(),
            });
        }

        if let Some(installed) = &self.installed {
            let Some(found) = device.products.get(&installed.product) else {
                return Evaluation::NotApplicable(NotApplicable::ProductNotInstalled {
                    product: installed.product.clone(),
                });
            };
            if let Some(range) = &installed.version_range
                && !range.contains(found)
            {
                return Evaluation::NotApplicable(NotApplicable::ProductVersion {
                    product: installed.product.clone(),
                    range: range.clone(),
                    found: found.clone(),
                });
            }
        }

        if !self.hardware_ids.is_empty() && !self.hardware_ids.iter().any(|id| device.hardware_ids.contains(id)) {
            return Evaluation::NotApplicable(NotApplicable::NoMatchingHardware);
        }

        Evaluation::Applicable
    }

    pub(crate) fn from_json(field: Field<'_>, kind: Kind) -> Result<Self, Error> {
        let object = field.strict_object(&["os", "arch", "installed", "hardware_ids"])?;
        let os = object.optional("os").map(OsRequirement::from_json).transpose()?;
        let arch = match object.optional("arch") {
            Some(list) => list.list(32, true, |element| element.parse())?,
            None => Vec::new(),
        };
        let installed = object.optional("installed").map(ProductRequirement::from_json).transpose()?;
        let hardware_ids = match object.optional("hardware_ids") {
            Some(list) if kind != Kind::Driver => {
                return Err(list.invalid(format!("only allowed for kind \"{}\", not \"{kind}\"", Kind::Driver)));
            }
            Some(list) => list.list(1024, true, |element| element.parse())?,
            None => Vec::new(),
        };
        Ok(Self { os, arch, installed, hardware_ids })
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(os) = &self.os {
            let mut os_object = Map::new();
            os_object.insert("family".into(), os.family.as_str().into());
            if let Some(range) = &os.version_range {
                os_object.insert("version_range".into(), range.to_json());
            }
            object.insert("os".into(), Value::Object(os_object));
        }
        if !self.arch.is_empty() {
            let arch = self.arch.iter().map(|a| Value::from(a.as_str())).collect();
            object.insert("arch".into(), Value::Array(arch));
        }
        if let Some(installed) = &self.installed {
            let mut installed_object = Map::new();
            installed_object.insert("product".into(), installed.product.as_str().into());
            if let Some(range) = &installed.version_range {
                installed_object.insert("version_range".into(), range.to_json());
            }
            object.insert("installed".into(), Value::Object(installed_object));
        }
        if !self.hardware_ids.is_empty() {
            let ids = self.hardware_ids.iter().map(|id| Value::from(id.as_str())).collect();
            object.insert("hardware_ids".into(), Value::Array(ids));
        }
        Value::Object(object)
    }
}

/// The operating system an update applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsRequirement {
    /// Matched exactly against the device's os-release `ID` (`ID_LIKE` is not consulted).
    pub family: OsFamily,
    /// Matched against the device's os-release `VERSION_ID`; absent means any version.
    pub version_range: Option<VersionRange>,
}

impl OsRequirement {
    fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["family", "version_range"])?;
        Ok(Self {
            family: object.required("family")?.parse()?,
            version_range: object.optional("version_range").map(VersionRange::from_json).transpose()?,
        })
    }
}

/// A product that must be installed on the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProductRequirement {
    pub product: ProductName,
    /// The installed version must be in this range; absent means any installed version.
    pub version_range: Option<VersionRange>,
}

impl ProductRequirement {
    fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["product", "version_range"])?;
        Ok(Self {
            product: object.required("product")?.parse()?,
            version_range: object.optional("version_range").map(VersionRange::from_json).transpose()?,
        })
    }
}

/// What a device reports about itself, for [`Applicability::evaluate`] and
/// [`Prerequisite::is_satisfied`](crate::Prerequisite::is_satisfied). Collecting it (reading
/// `/etc/os-release`, `uname -m`, sysfs) is the agent's job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInventory {
    /// os-release `ID`.
    pub os_family: OsFamily,
    /// os-release `VERSION_ID`, if the OS has one and it is dotted-numeric.
    pub os_version: Option<Version>,
    /// `uname -m`.
    pub arch: Arch,
    /// Installed products and their versions.
    pub products: BTreeMap<ProductName, Version>,
    /// Hardware ids of the devices present, in the form described at [`HardwareId`].
    pub hardware_ids: BTreeSet<HardwareId>,
    /// Updates installed on the device (any revision).
    pub installed_updates: BTreeSet<UpdateId>,
}

/// The result of [`Applicability::evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evaluation {
    Applicable,
    NotApplicable(NotApplicable),
}

/// Why an update does not apply to a device: the first condition that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotApplicable {
    OsFamily {
        required: OsFamily,
        found: OsFamily,
    },
    /// The update constrains the OS version but the device reports none.
    OsVersionUnknown {
        range: VersionRange,
    },
    OsVersion {
        range: VersionRange,
        found: Version,
    },
    Arch {
        allowed: Vec<Arch>,
        found: Arch,
    },
    ProductNotInstalled {
        product: ProductName,
    },
    ProductVersion {
        product: ProductName,
        range: VersionRange,
        found: Version,
    },
    /// None of the update's hardware ids is present on the device.
    NoMatchingHardware,
}

impl fmt::Display for NotApplicable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OsFamily { required, found } => {
                write!(f, "OS family is {found}, the update is for {required}")
            }
            Self::OsVersionUnknown { range } => {
                write!(f, "OS version unknown, the update needs {range}")
            }
            Self::OsVersion { range, found } => {
                write!(f, "OS version {found} is not in {range}")
            }
            Self::Arch { allowed, found } => {
                let allowed = allowed.iter().map(Arch::as_str).collect::<Vec<_>>();
                write!(f, "architecture {found} is not one of {}", allowed.join(", "))
            }
            Self::ProductNotInstalled { product } => write!(f, "{product} is not installed"),
            Self::ProductVersion { product, range, found } => {
                write!(f, "{product} {found} is installed, the update needs {range}")
            }
            Self::NoMatchingHardware => f.write_str("none of the hardware ids is present"),
        }
    }
}

/// An operating system family: the os-release `ID`, such as `debian`, `ubuntu`, `fedora`.
///
/// 1 to 64 characters from `a-z 0-9 . _ -` (the os-release rule for `ID`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OsFamily(String);

impl OsFamily {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OsFamily {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        check_token(text, "OS family", 64, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })?;
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for OsFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A CPU architecture as the kernel names it (`uname -m`): `x86_64`, `aarch64`, `armv7l`,
/// `riscv64`, `i686`, `ppc64le`, `s390x`, `loongarch64`.
///
/// 1 to 32 characters from `a-z 0-9 _`. Distribution names that `uname -m` never prints
/// (`amd64`, `arm64`, `armhf`, `i386`, `ppc64el`) are rejected with the kernel name to use, so
/// that a typo cannot make an update silently apply to no device.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arch(String);

impl Arch {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        const ALIASES: &[(&str, &str)] = &[
            ("amd64", "x86_64"),
            ("x64", "x86_64"),
            ("x86-64", "x86_64"),
            ("arm64", "aarch64"),
            ("armhf", "armv7l"),
            ("i386", "i686"),
            ("x86", "i686"),
            ("ppc64el", "ppc64le"),
        ];
        if let Some((_, kernel_name)) = ALIASES.iter().find(|(alias, _)| *alias == text) {
            return Err(Error::Value {
                what: "architecture",
                reason: format!("{} is not a kernel name; use \"{kernel_name}\"", quoted(text)),
            });
        }
        check_token(text, "architecture", 32, |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')?;
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A product name, such as `acme-os` or `acme-agent`.
///
/// 1 to 64 characters from `a-z 0-9 . _ -`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProductName(String);

impl ProductName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ProductName {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        check_token(text, "product name", 64, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })?;
        if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Error::Value {
                what: "product name",
                reason: format!("{} must start with a letter or digit", quoted(text)),
            });
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for ProductName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hardware id, compared exactly: `pci:8086:15f3`, `usb:1d6b:0002`, `of:brcm,bcm2711-gpio`.
///
/// 1 to 256 printable ASCII characters without spaces or upper-case letters (hex digits are
/// written in lower case, so that `8086:15F3` cannot silently fail to match). The conventions
/// for each bus are in docs/catalog.md.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HardwareId(String);

impl HardwareId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HardwareId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        check_token(text, "hardware id", 256, |b| b.is_ascii_graphic() && !b.is_ascii_uppercase())?;
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for HardwareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `text` is 1 to `max` bytes, each `allowed`.
fn check_token(text: &str, what: &'static str, max: usize, allowed: fn(u8) -> bool) -> Result<(), Error> {
    let reason = if text.is_empty() {
        "empty".to_owned()
    } else if text.len() > max {
        format!("longer than {max} bytes")
    } else if let Some(c) = text.chars().find(|c| !c.is_ascii() || !allowed(*c as u8)) {
        format!("{}: character {c:?} is not allowed", quoted(text))
    } else {
        return Ok(());
    };
    Err(Error::Value { what, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> DeviceInventory {
        DeviceInventory {
            os_family: "debian".parse().unwrap(),
            os_version: Some("12.5".parse().unwrap()),
            arch: "x86_64".parse().unwrap(),
            products: BTreeMap::from([("acme-agent".parse().unwrap(), "2.3.1".parse().unwrap())]),
            hardware_ids: BTreeSet::from(["pci:8086:15f3".parse().unwrap()]),
            installed_updates: BTreeSet::new(),
        }
    }

    fn range(min: Option<&str>, below: Option<&str>) -> VersionRange {
        VersionRange::new(min.map(|m| m.parse().unwrap()), below.map(|b| b.parse().unwrap())).unwrap()
    }

    #[test]
    fn empty_applicability_applies_everywhere() {
        assert_eq!(Applicability::default().evaluate(&device()), Evaluation::Applicable);
    }

    #[test]
    fn all_conditions_met() {
        let applicability = Applicability {
            os: Some(OsRequirement {
                family: "debian".parse().unwrap(),
                version_range: Some(range(Some("12"), Some("13"))),
            }),
            arch: vec!["aarch64".parse().unwrap(), "x86_64".parse().unwrap()],
            installed: Some(ProductRequirement {
                product: "acme-agent".parse().unwrap(),
                version_range: Some(range(Some("2"), None)),
            }),
            hardware_ids: vec!["pci:10de:2204".parse().unwrap(), "pci:8086:15f3".parse().unwrap()],
        };
        assert_eq!(applicability.evaluate(&device()), Evaluation::Applicable);
    }

    #[test]
    fn os_family_mismatch() {
        let applicability = Applicability {
            os: Some(OsRequirement { family: "ubuntu".parse().unwrap(), version_range: None }),
            ..Applicability::default()
        };
        let Evaluation::NotApplicable(reason) = applicability.evaluate(&device()) else {
            panic!("applicable");
        };
        assert!(matches!(reason, NotApplicable::OsFamily { .. }));
        assert_eq!(reason.to_string(), "OS family is debian, the update is for ubuntu");
    }

    #[test]
    fn os_version_out_of_range_or_unknown() {
        let applicability = Applicability {
            os: Some(OsRequirement {
                family: "debian".parse().unwrap(),
                version_range: Some(range(Some("11"), Some("12"))),
            }),
            ..Applicability::default()
        };
        assert!(matches!(
            applicability.evaluate(&device()),
            Evaluation::NotApplicable(NotApplicable::OsVersion { .. })
        ));
        let mut no_version = device();
        no_version.os_version = None;
        assert!(matches!(
            applicability.evaluate(&no_version),
            Evaluation::NotApplicable(NotApplicable::OsVersionUnknown { .. })
        ));
    }

    #[test]
    fn arch_mismatch() {
        let applicability = Applicability { arch: vec!["aarch64".parse().unwrap()], ..Applicability::default() };
        assert!(matches!(applicability.evaluate(&device()), Evaluation::NotApplicable(NotApplicable::Arch { .. })));
    }

    #[test]
    fn installed_product_missing_or_out_of_range() {
        let mut applicability = Applicability {
            installed: Some(ProductRequirement { product: "acme-viewer".parse().unwrap(), version_range: None }),
            ..Applicability::default()
        };
        assert!(matches!(
            applicability.evaluate(&device()),
            Evaluation::NotApplicable(NotApplicable::ProductNotInstalled { .. })
        ));
        applicability.installed = Some(ProductRequirement {
            product: "acme-agent".parse().unwrap(),
            version_range: Some(range(None, Some("2.3.1"))),
        });
        assert!(matches!(
            applicability.evaluate(&device()),
            Evaluation::NotApplicable(NotApplicable::ProductVersion { .. })
        ));
    }

    #[test]
    fn no_matching_hardware() {
        let applicability =
            Applicability { hardware_ids: vec!["usb:1d6b:0002".parse().unwrap()], ..Applicability::default() };
        assert_eq!(applicability.evaluate(&device()), Evaluation::NotApplicable(NotApplicable::NoMatchingHardware));
    }

    #[test]
    fn first_failing_condition_is_reported() {
        let applicability = Applicability {
            os: Some(OsRequirement { family: "fedora".parse().unwrap(), version_range: None }),
            arch: vec!["riscv64".parse().unwrap()],
            ..Applicability::default()
        };
        assert!(matches!(applicability.evaluate(&device()), Evaluation::NotApplicable(NotApplicable::OsFamily { .. })));
    }

    #[test]
    fn token_rules() {
        assert!("x86_64".parse::<Arch>().is_ok());
        let err = "amd64".parse::<Arch>().unwrap_err().to_string();
        assert!(err.contains("use \"x86_64\""), "{err}");
        assert!("X86_64".parse::<Arch>().is_err());
        assert!("".parse::<OsFamily>().is_err());
        assert!("opensuse-leap".parse::<OsFamily>().is_ok());
        assert!("Debian".parse::<OsFamily>().is_err());
        assert!("-acme".parse::<ProductName>().is_err());
        assert!("acme os".parse::<ProductName>().is_err());
        assert!("pci:8086:15F3".parse::<HardwareId>().is_err());
        assert!("of:brcm,bcm2711-gpio".parse::<HardwareId>().is_ok());
        assert!("pci:8086 15f3".parse::<HardwareId>().is_err());
        assert!("é".parse::<HardwareId>().is_err());
    }
}

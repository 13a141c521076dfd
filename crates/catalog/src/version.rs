//! Dotted-numeric versions and half-open version ranges.

use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};
use core::str::FromStr;

use serde_json::{Map, Value};

use crate::Error;
use crate::json::{Field, quoted};

/// A dotted-numeric version: `10.0.19045.3086`, `6.1`, `22.04`, `2`.
///
/// One to [`Version::MAX_COMPONENTS`] decimal components, each fitting in a `u64`, separated by
/// single dots. Versions compare component by component as numbers, and missing trailing
/// components count as zero, so `1.2 == 1.2.0 < 1.2.1 < 1.10`. Leading zeros are allowed
/// (`22.04` is Ubuntu's `VERSION_ID`) and do not count (`22.04 == 22.4`); the text is kept as
/// written so that an entry serializes back to the same JSON. Pre-release tags (`1.0-rc1`) are
/// not versions here: a publisher maps them to numbers.
#[derive(Clone, Debug)]
pub struct Version {
    text: Box<str>,
    components: Box<[u64]>,
}

impl Version {
    /// The most components a version may have.
    pub const MAX_COMPONENTS: usize = 8;

    /// The numeric components, as written.
    pub fn components(&self) -> &[u64] {
        &self.components
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The components without trailing zeros: equal versions have equal significant components,
    /// and comparing these slices lexicographically is the version order.
    fn significant(&self) -> &[u64] {
        let end = self.components.iter().rposition(|c| *c != 0).map_or(0, |last| last + 1);
        &self.components[..end]
    }
}

impl FromStr for Version {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::Value { what: "version", reason: format!("{}: {reason}", quoted(text)) };
        let components = text
            .split('.')
            .map(|component| {
                if component.is_empty() || !component.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid("expected decimal numbers separated by single dots, like 10.0.19045.3086"));
                }
                component.parse::<u64>().map_err(|_| invalid("a component does not fit in 64 bits"))
            })
            .collect::<Result<Box<[u64]>, Error>>()?;
        if components.len() > Self::MAX_COMPONENTS {
            return Err(invalid(&format!("more than {} components", Self::MAX_COMPONENTS)));
        }
        Ok(Self { text: text.into(), components })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.significant().cmp(other.significant())
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.significant() == other.significant()
    }
}

impl Eq for Version {}

impl Hash for Version {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.significant().hash(state);
    }
}

/// A half-open range of versions: `min <= v < below`. At least one bound is present, and
/// `min < below` when both are.
///
/// The upper bound is exclusive because with zero-extended comparison an inclusive `5.15`
/// would exclude `5.15.1`; "below 5.16" says what is meant.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VersionRange {
    min: Option<Version>,
    below: Option<Version>,
}

impl VersionRange {
    pub fn new(min: Option<Version>, below: Option<Version>) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Value { what: "version range", reason };
        match (&min, &below) {
            (None, None) => {
                Err(invalid("needs \"min\", \"below\" or both; omit the range to allow any version".into()))
            }
            (Some(min), Some(below)) if min >= below => {
                Err(invalid(format!("empty range: min {min} is not below {below}")))
            }
            _ => Ok(Self { min, below }),
        }
    }

    /// The inclusive lower bound.
    pub fn min(&self) -> Option<&Version> {
        self.min.as_ref()
    }

    /// The exclusive upper bound.
    pub fn below(&self) -> Option<&Version> {
        self.below.as_ref()
    }

    pub fn contains(&self, version: &Version) -> bool {
        self.min.as_ref().is_none_or(|min| version >= min) && self.below.as_ref().is_none_or(|below| version < below)
    }

    pub(crate) fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let object = field.strict_object(&["min", "below"])?;
        let min = object.optional("min").map(|f| f.parse()).transpose()?;
        let below = object.optional("below").map(|f| f.parse()).transpose()?;
        Self::new(min, below).map_err(|e| field.locate(e))
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(min) = &self.min {
            object.insert("min".into(), min.as_str().into());
        }
        if let Some(below) = &self.below {
            object.insert("below".into(), below.as_str().into());
        }
        Value::Object(object)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.min, &self.below) {
            (Some(min), Some(below)) => write!(f, ">= {min}, < {below}"),
            (Some(min), None) => write!(f, ">= {min}"),
            (None, Some(below)) => write!(f, "< {below}"),
            (None, None) => f.write_str("any"),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap()
    }

    #[test]
    fn orders_numerically_with_zero_extension() {
        assert!(v("1.2") < v("1.10"));
        assert!(v("10.0.19045.3086") > v("10.0.19045.999"));
        assert!(v("10.0.19045") < v("10.0.19045.1"));
        assert_eq!(v("1.2"), v("1.2.0.0"));
        assert_eq!(v("22.04"), v("22.4"));
        assert!(v("2") > v("1.99.99"));
        assert_eq!(v("0"), v("0.0"));
    }

    #[test]
    fn keeps_text_as_written() {
        assert_eq!(v("22.04").to_string(), "22.04");
        assert_eq!(v("22.04").components(), &[22, 4]);
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1..2",
            "1.a",
            "v1",
            "1.0-rc1",
            " 1",
            "+1",
            "-1",
            "1.2.3.4.5.6.7.8.9",
            "18446744073709551616",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?} was accepted");
        }
        assert!("18446744073709551615".parse::<Version>().is_ok());
    }

    #[test]
    fn range_bounds() {
        let range = VersionRange::new(Some(v("10.0.19041")), Some(v("10.0.22000"))).unwrap();
        assert!(range.contains(&v("10.0.19041")));
        assert!(range.contains(&v("10.0.19045.3086")));
        assert!(!range.contains(&v("10.0.22000")));
        assert!(!range.contains(&v("10.0.19040.9")));
        assert!(VersionRange::new(None, None).is_err());
        assert!(VersionRange::new(Some(v("2")), Some(v("2.0"))).is_err());
        assert!(VersionRange::new(Some(v("3")), Some(v("2"))).is_err());
        assert_eq!(range.to_string(), ">= 10.0.19041, < 10.0.22000");
    }

    fn version() -> impl Strategy<Value = Version> {
        prop::collection::vec(0u64..5, 1..=Version::MAX_COMPONENTS).prop_map(|parts| {
            let text = parts.iter().map(u64::to_string).collect::<Vec<_>>().join(".");
            v(&text)
        })
    }

    proptest! {
        #[test]
        fn order_is_zero_extended_lexicographic(a in version(), b in version()) {
            let pad = |x: &Version| {
                let mut parts = x.components().to_vec();
                parts.resize(Version::MAX_COMPONENTS, 0);
                parts
            };
            prop_assert_eq!(a.cmp(&b), pad(&a).cmp(&pad(&b)));
            prop_assert_eq!(a == b, pad(&a) == pad(&b));
        }

        #[test]
        fn display_parses_back(a in version()) {
            let again: Version = a.to_string().parse().unwrap();
            prop_assert_eq!(again.as_str(), a.as_str());
        }
    }
}

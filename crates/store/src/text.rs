//! Checks shared by the validated text types, serde through `Display`/`FromStr` for the catalog's
//! types (which have no serde of their own), and the UUID id newtypes.

use core::fmt::Display;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serializer};

use crate::Error;

/// Free text: at most `max` bytes, no control characters except (if `multiline`) `\n` and `\t`.
/// PostgreSQL cannot store NUL in TEXT; other control characters would garble logs and consoles.
pub(crate) fn check_text(what: &'static str, text: &str, max: usize, multiline: bool) -> Result<(), Error> {
    if text.len() > max {
        return Err(Error::invalid(what, format!("{} bytes, at most {max} allowed", text.len())));
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\t'));
    match text.chars().find(|&c| !allowed(c)) {
        Some(c) => Err(Error::invalid(what, format!("control character {c:?} is not allowed"))),
        None => Ok(()),
    }
}

/// A name shown to people: 1 to `max` bytes of text without control characters and without
/// leading or trailing white space.
pub(crate) fn check_name(what: &'static str, text: &str, max: usize) -> Result<(), Error> {
    if text.is_empty() {
        return Err(Error::invalid(what, "empty"));
    }
    if text.trim() != text {
        return Err(Error::invalid(what, format!("{text:?} has leading or trailing white space")));
    }
    check_text(what, text, max, false)
}

/// An identifier: 1 to `max` bytes of `a-z 0-9` and `extra`, starting with a letter or digit.
pub(crate) fn check_token(what: &'static str, text: &str, max: usize, extra: &[u8]) -> Result<(), Error> {
    let reason = if text.is_empty() {
        "empty".to_owned()
    } else if text.len() > max {
        format!("longer than {max} bytes")
    } else if let Some(c) = text
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || (c.is_ascii() && extra.contains(&(c as u8)))))
    {
        format!("{text:?}: character {c:?} is not allowed (a-z, 0-9 and {:?})", String::from_utf8_lossy(extra))
    } else if !text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        format!("{text:?} must start with a letter or digit")
    } else {
        return Ok(());
    };
    Err(Error::invalid(what, reason))
}

/// Serde through `Display` and `FromStr`, for `#[serde(with = "crate::text::as_str")]`.
pub(crate) mod as_str {
    use super::*;

    pub(crate) fn serialize<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// [`as_str`] for an `Option`.
pub(crate) mod option_as_str {
    use super::*;

    pub(crate) fn serialize<T: Display, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.collect_str(value),
            None => serializer.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Defines a UUID id newtype: written in lower-case hyphenated form, never nil, with serde
/// through that form.
macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new random (version 4) id.
            pub fn random() -> Self {
                Self(uuid::Uuid::new_v4())
            }

            pub fn new(uuid: uuid::Uuid) -> Result<Self, $crate::Error> {
                match uuid.is_nil() {
                    true => Err($crate::Error::invalid($what, "the nil UUID is not an id")),
                    false => Ok(Self(uuid)),
                }
            }

            pub fn as_uuid(&self) -> &uuid::Uuid {
                &self.0
            }
        }

        impl core::str::FromStr for $name {
            type Err = $crate::Error;

            fn from_str(text: &str) -> Result<Self, $crate::Error> {
                match uuid::Uuid::try_parse(text) {
                    Ok(uuid) if uuid.hyphenated().to_string() == text => Self::new(uuid),
                    _ => Err($crate::Error::invalid(
                        $what,
                        format!("{text:?} is not a UUID in lower-case hyphenated form"),
                    )),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl TryFrom<String> for $name {
            type Error = $crate::Error;

            fn try_from(text: String) -> Result<Self, $crate::Error> {
                text.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }
    };
}
pub(crate) use uuid_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_refuses_control_characters_and_length() {
        assert!(check_text("detail", "line one\nline two\tx", 100, true).is_ok());
        assert!(check_text("detail", "a\nb", 100, false).is_err());
        assert!(check_text("detail", "nul\0", 100, true).is_err());
        assert!(check_text("detail", "\u{1b}[31m", 100, true).is_err());
        let error = check_text("detail", &"x".repeat(101), 100, true).unwrap_err();
        assert_eq!(error.to_string(), "invalid detail: 101 bytes, at most 100 allowed");
    }

    #[test]
    fn names_are_trimmed_and_non_empty() {
        assert!(check_name("name", "kiosk 12 (lobby)", 64).is_ok());
        assert!(check_name("name", "", 64).is_err());
        assert!(check_name("name", " kiosk", 64).is_err());
        assert!(check_name("name", "kiosk\n", 64).is_err());
    }

    #[test]
    fn tokens_name_the_bad_character() {
        assert!(check_token("group", "lab-2.east_1", 64, b"._-").is_ok());
        let error = check_token("group", "Lab", 64, b"._-").unwrap_err();
        assert!(error.to_string().contains("character 'L'"), "{error}");
        assert!(check_token("group", "-lab", 64, b"._-").is_err());
        assert!(check_token("group", "", 64, b"._-").is_err());
        assert!(check_token("group", &"a".repeat(65), 64, b"._-").is_err());
    }
}

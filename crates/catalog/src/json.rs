//! Reading JSON values while tracking the path of each field, so that every error names it.

use core::fmt;
use core::str::FromStr;

use serde_json::{Map, Value};

use crate::{Error, Problem};

/// A JSON value together with its path from the top of the parsed document.
#[derive(Clone, Copy)]
pub(crate) struct Field<'a> {
    pub(crate) value: &'a Value,
    pub(crate) path: Path<'a>,
}

impl<'a> Field<'a> {
    pub(crate) fn root(value: &'a Value) -> Self {
        Self { value, path: Path::Root }
    }

    /// An object whose keys must all be in `known`.
    pub(crate) fn strict_object(&self, known: &[&str]) -> Result<Object<'a>, Error> {
        let object = self.object()?;
        object.deny_unknown(known)?;
        Ok(object)
    }

    /// An object that may hold keys this crate does not know (only the `custom` object itself).
    pub(crate) fn object(&self) -> Result<Object<'a>, Error> {
        match self.value {
            Value::Object(map) => Ok(Object { map, path: self.path }),
            _ => Err(self.error(Problem::Type("object"))),
        }
    }

    pub(crate) fn str(&self) -> Result<&'a str, Error> {
        self.value.as_str().ok_or_else(|| self.error(Problem::Type("string")))
    }

    /// A non-negative integer (JSON numbers with a fraction or exponent are rejected).
    pub(crate) fn u64(&self) -> Result<u64, Error> {
        self.value.as_u64().ok_or_else(|| self.error(Problem::Type("non-negative integer")))
    }

    /// A string parsed with `T::from_str`; its [`Error::Value`] becomes an error at this path.
    pub(crate) fn parse<T: FromStr<Err = Error>>(&self) -> Result<T, Error> {
        self.str()?.parse().map_err(|e| self.locate(e))
    }

    /// A string of at most `max_chars` characters without control characters, except that
    /// `multiline` text may hold line feeds and tabs.
    pub(crate) fn text(&self, max_chars: usize, multiline: bool) -> Result<String, Error> {
        let text = self.str()?;
        if text.chars().count() > max_chars {
            return Err(self.invalid(format!("longer than {max_chars} characters")));
        }
        let allowed = |c: char| !c.is_control() || (multiline && (c == '\n' || c == '\t'));
        if let Some(c) = text.chars().find(|c| !allowed(*c)) {
            return Err(self.invalid(format!("control character {c:?} is not allowed")));
        }
        Ok(text.to_owned())
    }

    /// A non-empty array of at most `max` elements, each parsed by `element`. With `unique`,
    /// duplicates are rejected (at the path of the second occurrence).
    pub(crate) fn list<T: PartialEq>(
        &self,
        max: usize,
        unique: bool,
        element: impl Fn(Field<'_>) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let Value::Array(values) = self.value else {
            return Err(self.error(Problem::Type("array")));
        };
        if values.is_empty() {
            return Err(self.invalid("must not be empty; omit the field instead"));
        }
        if values.len() > max {
            return Err(self.invalid(format!("more than {max} elements")));
        }
        let mut items: Vec<T> = Vec::with_capacity(values.len());
        for (index, value) in values.iter().enumerate() {
            let field = Field { value, path: Path::Index(&self.path, index) };
            let item = element(field)?;
            if unique && let Some(first) = items.iter().position(|seen| *seen == item) {
                return Err(field.invalid(format!("duplicate of [{first}]")));
            }
            items.push(item);
        }
        Ok(items)
    }

    /// Moves an [`Error::Value`] (from a `FromStr` or `new` function) to this field's path.
    pub(crate) fn locate(&self, error: Error) -> Error {
        match error {
            Error::Value { reason, .. } => self.invalid(reason),
            other => other,
        }
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> Error {
        self.error(Problem::Invalid(reason.into()))
    }

    pub(crate) fn error(&self, problem: Problem) -> Error {
        Error::Field { path: self.path.to_string(), problem }
    }
}

/// A JSON object at a known path.
pub(crate) struct Object<'a> {
    map: &'a Map<String, Value>,
    path: Path<'a>,
}

impl<'a> Object<'a> {
    /// The top-level object of an operator's description, whose keys must all be in `known`.
    pub(crate) fn strict_root(map: &'a Map<String, Value>, known: &[&str]) -> Result<Self, Error> {
        let object = Self { map, path: Path::Root };
        object.deny_unknown(known)?;
        Ok(object)
    }

    pub(crate) fn required(&self, key: &'static str) -> Result<Field<'_>, Error> {
        let path = Path::Key(&self.path, key);
        match self.map.get(key) {
            Some(value) => Ok(Field { value, path }),
            None => Err(Error::Field { path: path.to_string(), problem: Problem::Missing }),
        }
    }

    pub(crate) fn optional(&self, key: &'static str) -> Option<Field<'_>> {
        self.map.get(key).map(|value| Field { value, path: Path::Key(&self.path, key) })
    }

    fn deny_unknown(&self, known: &[&str]) -> Result<(), Error> {
        match self.map.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(Error::Field { path: Path::Key(&self.path, key).to_string(), problem: Problem::Unknown }),
            None => Ok(()),
        }
    }
}

/// The path of a field: `custody.applicability.arch[1]`.
#[derive(Clone, Copy)]
pub(crate) enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => f.write_str("(top level)"),
            Self::Key(Self::Root, key) => f.write_str(key),
            Self::Key(parent, key) => write!(f, "{parent}.{key}"),
            Self::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// `text` quoted for an error message, shortened to 64 characters.
pub(crate) fn quoted(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Defines a fieldless enum written as one of a fixed set of strings.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )+
        }

        impl $name {
            /// Every value, in schema order.
            pub const ALL: &[Self] = &[$( Self::$variant, )+];

            /// The JSON string of this value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $text, )+
                }
            }
        }

        impl core::str::FromStr for $name {
            type Err = crate::Error;

            fn from_str(text: &str) -> Result<Self, crate::Error> {
                match text {
                    $( $text => Ok(Self::$variant), )+
                    _ => Err(crate::Error::Value {
                        what: $what,
                        reason: format!(
                            "unknown value {}; expected one of: {}",
                            crate::json::quoted(text),
                            [$( $text ),+].join(", "),
                        ),
                    }),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub(crate) use string_enum;

//! How an update is installed: the handler and all of its arguments.
//!
//! Everything that influences what runs on the device lives here, inside signed metadata (the
//! lesson of WSUSpect, where a signed binary ran with arguments from unsigned metadata). Commands
//! are argv arrays whose program is an absolute path: never shell strings, never a `PATH` search.

use core::fmt;
use core::str::FromStr;

use serde_json::{Map, Value};

use crate::Error;
use crate::entry::Kind;
use crate::json::{Field, Path, quoted, string_enum};

/// The installer of an update: a handler with typed arguments. Each [`Kind`] has exactly one
/// handler ([`Kind::handler`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installer {
    /// Kind `os`: write a full OS image to the inactive slot (or through recovery with a single
    /// slot) and switch to it on the next boot.
    OsImage { slot_layout: SlotLayout, format: ImageFormat },
    /// Kind `app`: unpack an archive into `destination`, then run `post_install` if present.
    Archive { format: ArchiveFormat, destination: AbsPath, post_install: Option<Argv> },
    /// Kind `driver`: unpack an archive into `destination`, then run `reload_command` to load
    /// the new driver.
    Driver { format: ArchiveFormat, destination: AbsPath, reload_command: Argv },
    /// Kind `definitions`: add a definitions set to the product's definitions store and keep the
    /// `keep` previous sets for rollback.
    Definitions { keep: u32 },
    /// Kind `store-app`: hand the package to the device's app store for the entry's product.
    StoreApp,
}

impl Installer {
    /// The most previous definitions sets [`Installer::Definitions`] may keep.
    pub const MAX_KEEP: u32 = 64;

    pub fn handler(&self) -> Handler {
        match self {
            Self::OsImage { .. } => Handler::OsImage,
            Self::Archive { .. } => Handler::Archive,
            Self::Driver { .. } => Handler::Driver,
            Self::Definitions { .. } => Handler::Definitions,
            Self::StoreApp => Handler::StoreApp,
        }
    }

    /// The kind of update this installer belongs to.
    pub fn kind(&self) -> Kind {
        match self {
            Self::OsImage { .. } => Kind::Os,
            Self::Archive { .. } => Kind::App,
            Self::Driver { .. } => Kind::Driver,
            Self::Definitions { .. } => Kind::Definitions,
            Self::StoreApp => Kind::StoreApp,
        }
    }

    /// Parses the `installer` object of an entry of `kind`; the handler must be the kind's.
    pub(crate) fn from_json(field: Field<'_>, kind: Kind) -> Result<Self, Error> {
        let object = field.object()?;
        let handler_field = object.required("handler")?;
        let handler: Handler = handler_field.parse()?;
        if handler != kind.handler() {
            return Err(handler_field.invalid(format!(
                "handler \"{handler}\" does not fit kind \"{kind}\"; expected \"{}\"",
                kind.handler()
            )));
        }

        let known: &[&str] = match handler {
            Handler::OsImage => &["handler", "slot_layout", "format"],
            Handler::Archive => &["handler", "format", "destination", "post_install"],
            Handler::Driver => &["handler", "format", "destination", "reload_command"],
            Handler::Definitions => &["handler", "keep"],
            Handler::StoreApp => &["handler"],
        };
        let object = field.strict_object(known)?;
        Ok(match handler {
            Handler::OsImage => Self::OsImage {
                slot_layout: object.required("slot_layout")?.parse()?,
                format: object.required("format")?.parse()?,
            },
            Handler::Archive => Self::Archive {
                format: object.required("format")?.parse()?,
                destination: object.required("destination")?.parse()?,
                post_install: object.optional("post_install").map(Argv::from_json).transpose()?,
            },
            Handler::Driver => Self::Driver {
                format: object.required("format")?.parse()?,
                destination: object.required("destination")?.parse()?,
                reload_command: Argv::from_json(object.required("reload_command")?)?,
            },
            Handler::Definitions => {
                let keep_field = object.required("keep")?;
                let keep = keep_field.u64()?;
                match u32::try_from(keep) {
                    Ok(keep) if keep <= Self::MAX_KEEP => Self::Definitions { keep },
                    _ => return Err(keep_field.invalid(format!("at most {}", Self::MAX_KEEP))),
                }
            }
            Handler::StoreApp => Self::StoreApp,
        })
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("handler".into(), self.handler().as_str().into());
        match self {
            Self::OsImage { slot_layout, format } => {
                object.insert("slot_layout".into(), slot_layout.as_str().into());
                object.insert("format".into(), format.as_str().into());
            }
            Self::Archive { format, destination, post_install } => {
                object.insert("format".into(), format.as_str().into());
                object.insert("destination".into(), destination.as_str().into());
                if let Some(post_install) = post_install {
                    object.insert("post_install".into(), post_install.to_json());
                }
            }
            Self::Driver { format, destination, reload_command } => {
                object.insert("format".into(), format.as_str().into());
                object.insert("destination".into(), destination.as_str().into());
                object.insert("reload_command".into(), reload_command.to_json());
            }
            Self::Definitions { keep } => {
                object.insert("keep".into(), (*keep).into());
            }
            Self::StoreApp => {}
        }
        Value::Object(object)
    }
}

string_enum! {
    /// The name of an installer handler, written as `installer.handler`.
    pub enum Handler ("installer handler") {
        OsImage => "os-image",
        Archive => "archive",
        Driver => "driver",
        Definitions => "definitions",
        StoreApp => "store-app",
    }
}

string_enum! {
    /// How the device's OS partitions are laid out.
    pub enum SlotLayout ("slot layout") {
        /// Two root slots (A/B): the image goes to the inactive one, with rollback on a failed
        /// boot.
        Dual => "a-b",
        /// One root slot: the image is applied from a recovery system.
        Single => "single",
    }
}

string_enum! {
    /// The encoding of an OS image.
    pub enum ImageFormat ("image format") {
        Raw => "raw",
        RawZstd => "raw-zstd",
    }
}

string_enum! {
    /// The encoding of an archive.
    pub enum ArchiveFormat ("archive format") {
        Tar => "tar",
        TarZstd => "tar-zstd",
    }
}

/// An absolute, normalized path: starts with `/`, no empty, `.` or `..` components, no trailing
/// `/` (except `/` itself), no control characters, at most 4096 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbsPath(String);

impl AbsPath {
    pub const MAX_LEN: usize = 4096;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AbsPath {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let reason = if !text.starts_with('/') {
            Some("must be an absolute path")
        } else if text.len() > Self::MAX_LEN {
            Some("longer than 4096 bytes")
        } else if text.chars().any(char::is_control) {
            Some("control characters are not allowed")
        } else if text != "/"
            // Slicing at 1 is safe: the text starts with the one-byte '/'.
            && text[1..]
                .split('/')
                .any(|component| matches!(component, "" | "." | ".."))
        {
            Some("must be normalized: no empty, \".\" or \"..\" components, no trailing \"/\"")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::Value { what: "path", reason: format!("{}: {reason}", quoted(text)) }),
            None => Ok(Self(text.to_owned())),
        }
    }
}

impl fmt::Display for AbsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A command as an argv array: 1 to 256 arguments of at most 4096 bytes without NUL, the first
/// an [`AbsPath`] to the program. It is executed directly, without a shell.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Argv(Vec<String>);

impl Argv {
    pub const MAX_ARGS: usize = 256;
    pub const MAX_ARG_LEN: usize = 4096;

    pub fn new(args: Vec<String>) -> Result<Self, Error> {
        let invalid = |reason: String| Error::Value { what: "argv", reason };
        if args.is_empty() {
            return Err(invalid("empty".into()));
        }
        if args.len() > Self::MAX_ARGS {
            return Err(invalid(format!("more than {} arguments", Self::MAX_ARGS)));
        }
        for (index, arg) in args.iter().enumerate() {
            Self::check(arg, index == 0).map_err(|reason| invalid(format!("[{index}]: {reason}")))?;
        }
        Ok(Self(args))
    }

    /// The program: an absolute path.
    pub fn program(&self) -> &str {
        // Invariant: an `Argv` is never empty (checked by `new` and `from_json`).
        &self.0[0]
    }

    /// All arguments, the program first.
    pub fn args(&self) -> &[String] {
        &self.0
    }

    fn from_json(field: Field<'_>) -> Result<Self, Error> {
        let args = field.list(Self::MAX_ARGS, false, |element| {
            let arg = element.str()?;
            let is_program = matches!(element.path, Path::Index(_, 0));
            Self::check(arg, is_program).map_err(|reason| element.invalid(reason))?;
            Ok(arg.to_owned())
        })?;
        Ok(Self(args))
    }

    fn to_json(&self) -> Value {
        Value::Array(self.0.iter().map(|arg| Value::from(arg.as_str())).collect())
    }

    fn check(arg: &str, is_program: bool) -> Result<(), String> {
        if arg.contains('\0') {
            return Err("NUL is not allowed".into());
        }
        if arg.len() > Self::MAX_ARG_LEN {
            return Err(format!("longer than {} bytes", Self::MAX_ARG_LEN));
        }
        if is_program && let Err(Error::Value { reason, .. }) = arg.parse::<AbsPath>() {
            return Err(format!("the program {reason}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths() {
        for good in ["/", "/opt/acme", "/lib/modules/updates", "/a b/c"] {
            assert!(good.parse::<AbsPath>().is_ok(), "{good:?}");
        }
        for bad in ["", "opt", "./opt", "/opt/", "//opt", "/opt//x", "/opt/./x", "/opt/../etc", "/..", "/a\nb"] {
            assert!(bad.parse::<AbsPath>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn argv_rules() {
        let argv = Argv::new(vec!["/usr/sbin/modprobe".into(), "acme".into()]).unwrap();
        assert_eq!(argv.program(), "/usr/sbin/modprobe");
        assert!(Argv::new(vec![]).is_err());
        let err = Argv::new(vec!["modprobe".into()]).unwrap_err().to_string();
        assert!(err.contains("[0]: the program"), "{err}");
        assert!(Argv::new(vec!["/bin/true".into(), "a\0b".into()]).is_err());
        assert!(Argv::new(vec!["/bin/true".into(), String::new()]).is_ok());
    }
}

//! Admin API bearer tokens, and the secret format they share with enrollment tokens.
//!
//! A token is `<prefix><id>_<secret>` (`custody_admin_`, `custody_enroll_`): the token's id
//! (32 hex digits) and 32 random bytes (43 characters of unpadded base64url). The store keeps the SHA-256 of the secret bytes, never
//! the secret. A plain SHA-256 is enough: salts and slow hashes protect guessable passwords
//! against dictionary attacks, while a 256-bit random secret cannot be guessed, and finding a
//! preimage of SHA-256 takes 2^256 work; a fast hash also keeps the per-request check cheap.
//! Verification looks the token up by its id and compares the digests in constant time, so
//! timing tells nothing about the stored digest.

use core::fmt;
use core::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;
use crate::device::Sha256;
use crate::text::{check_name, uuid_id};

uuid_id!(
    /// An admin token's id; it is part of the token.
    TokenId,
    "admin token id"
);

/// What a token may do. `Write` includes `Read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
}

/// An admin token as stored, without its secret or digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: TokenId,
    pub name: String,
    pub scope: Scope,
    pub created_at: Timestamp,
    /// The last successful verification, updated at most once a minute.
    pub last_used: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// A token's secret text, shown once at creation. Its `Debug` does not print it, and the text
/// is wiped from memory when dropped.
pub struct TokenSecret(Zeroizing<String>);

/// [`Store::create_admin_token`](crate::Store::create_admin_token)'s result.
#[derive(Debug)]
pub struct CreatedAdminToken {
    pub token: AdminToken,
    pub secret: TokenSecret,
}

/// The prefix of admin tokens.
pub(crate) const ADMIN_PREFIX: &str = "custody_admin_";
const SECRET_BYTES: usize = 32;

impl Scope {
    /// Whether a token of this scope may do what needs `needed`.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

impl FromStr for Scope {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "read" => Ok(Self::Read),
            "write" => Ok(Self::Write),
            _ => Err(Error::invalid("scope", format!("{text:?} is not read or write"))),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AdminToken {
    /// Checks a token name: 1 to 64 bytes, no control characters, no surrounding white space.
    pub fn check_name(name: &str) -> Result<(), Error> {
        check_name("admin token name", name, 64)
    }
}

impl TokenSecret {
    /// A new secret for the token `id`, and the digest the store keeps.
    pub(crate) fn generate(prefix: &str, id: &uuid::Uuid) -> Result<(Self, Sha256), Error> {
        let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
        aws_lc_rs::rand::fill(secret.as_mut_slice()).map_err(|_| Error::Random)?;
        let text = format!("{prefix}{}_{}", id.simple(), URL_SAFE_NO_PAD.encode(secret.as_slice()));
        Ok((Self(Zeroizing::new(text)), Sha256::of(secret.as_slice())))
    }

    /// The token's id and the digest of its secret bytes, if `text` has the token form.
    pub(crate) fn parse(prefix: &str, text: &str) -> Option<(uuid::Uuid, Sha256)> {
        let rest = text.strip_prefix(prefix)?;
        let (id, secret) = (rest.get(..32)?, rest.get(32..)?.strip_prefix('_')?);
        if id.bytes().any(|b| b.is_ascii_uppercase()) || secret.len() != 43 {
            return None;
        }
        let id = uuid::Uuid::try_parse(id).ok().filter(|id| !id.is_nil())?;
        let secret = Zeroizing::new(URL_SAFE_NO_PAD.decode(secret).ok()?);
        (secret.len() == SECRET_BYTES).then(|| (id, Sha256::of(&secret)))
    }

    /// The text to hand to the admin.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_back_to_id_and_digest() {
        let id = uuid::Uuid::new_v4();
        let (secret, digest) = TokenSecret::generate(ADMIN_PREFIX, &id).unwrap();
        let text = secret.expose();
        assert_eq!(text.len(), ADMIN_PREFIX.len() + 32 + 1 + 43);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, text), Some((id, digest)));
        assert_eq!(TokenSecret::parse("custody_enroll_", text), None);
        assert_eq!(format!("{secret:?}"), "TokenSecret(..)");
        let (other, other_digest) = TokenSecret::generate(ADMIN_PREFIX, &id).unwrap();
        assert_ne!(other.expose(), text);
        assert_ne!(other_digest, digest);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let id = uuid::Uuid::new_v4();
        let (secret, _) = TokenSecret::generate(ADMIN_PREFIX, &id).unwrap();
        let text = secret.expose();
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, &text[1..]), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, &text[..text.len() - 1]), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, &format!("{text}A")), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, &text.to_uppercase()), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, &text.replacen('_', "-", 3)), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, ""), None);
        assert_eq!(TokenSecret::parse(ADMIN_PREFIX, "custody_admin_é"), None);
    }

    #[test]
    fn write_includes_read() {
        assert!(Scope::Write.allows(Scope::Read));
        assert!(Scope::Write.allows(Scope::Write));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
    }
}

//! Enrollment tokens: created by an admin, presented by a device to enroll.
//!
//! A token is `custody_enroll_<id>_<secret>` (the format of [`TokenSecret`]); only the SHA-256
//! of its secret is stored. It allows `uses` enrollments until `expires_at`. Each enrollment
//! attempt carries an [`EnrollmentId`] chosen by the device: a retry of an enrollment that went
//! through (with the same token) is accepted even when the token is used up, and enrolls no
//! second device. Because tokens live in the database, several service nodes share them.
//!
//! [`TokenSecret`]: crate::TokenSecret

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::device::{Device, DeviceId, GroupName, Sha256};
use crate::text::{check_name, uuid_id};
use crate::token::TokenSecret;

uuid_id!(
    /// An enrollment token's id; it is part of the token.
    EnrollmentTokenId,
    "enrollment token id"
);

uuid_id!(
    /// One enrollment attempt, chosen by the device and kept across its retries.
    EnrollmentId,
    "enrollment id"
);

/// The prefix of enrollment tokens.
pub(crate) const ENROLL_PREFIX: &str = "custody_enroll_";

/// The most enrollments one token may allow.
pub const MAX_ENROLLMENT_USES: u32 = 1_000_000;

/// What [`Store::create_enrollment_token`](crate::Store::create_enrollment_token) stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEnrollmentToken {
    /// 1 to 64 bytes, no control characters, no surrounding white space.
    pub name: String,
    /// The group devices enrolling with it join.
    pub group: Option<GroupName>,
    /// How many devices may enroll with it, 1 to [`MAX_ENROLLMENT_USES`].
    pub uses: u32,
    pub expires_at: Timestamp,
}

/// An enrollment token as stored, without its secret or digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    pub id: EnrollmentTokenId,
    pub name: String,
    pub group: Option<GroupName>,
    pub uses: u32,
    pub uses_left: u32,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// [`Store::create_enrollment_token`](crate::Store::create_enrollment_token)'s result.
#[derive(Debug)]
pub struct CreatedEnrollmentToken {
    pub token: EnrollmentToken,
    pub secret: TokenSecret,
}

/// A token found valid for an enrollment by
/// [`Store::redeem_enrollment_token`](crate::Store::redeem_enrollment_token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redemption {
    pub token: EnrollmentToken,
    /// The device an earlier attempt with this enrollment id and token enrolled (a retry):
    /// reuse its id.
    pub previous_device: Option<Device>,
}

/// An enrollment token of the service's former `enrollment.json`, for
/// [`Store::import_enrollment_tokens`](crate::Store::import_enrollment_tokens). That file kept the SHA-256 of the
/// secret's base64url *text*, not of its bytes, so the store marks the token and checks it that way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedEnrollmentToken {
    pub id: EnrollmentTokenId,
    pub name: String,
    pub group: Option<GroupName>,
    /// SHA-256 of the secret part of the token as text (what follows `custody_enroll_<id>_`).
    pub text_sha256: Sha256,
    pub uses: u32,
    pub uses_left: u32,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// An enrollment that went through, from the same file: a retry of it returns the same device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedEnrollment {
    pub enrollment: EnrollmentId,
    pub token: EnrollmentTokenId,
    pub device: DeviceId,
    pub at: Timestamp,
}

/// What [`Store::import_enrollment_tokens`](crate::Store::import_enrollment_tokens) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnrollmentImport {
    /// Tokens stored now.
    pub tokens: usize,
    /// Tokens that were stored already (an import repeated), left unchanged.
    pub tokens_present: usize,
    /// Enrollments stored now.
    pub enrollments: usize,
    /// Enrollments stored already, or whose token or device is not stored.
    pub enrollments_skipped: usize,
}

impl NewEnrollmentToken {
    /// Checks the bounds the store enforces.
    pub fn validate(&self, now: Timestamp) -> Result<(), Error> {
        check_name("enrollment token name", &self.name, 64)?;
        if !(1..=MAX_ENROLLMENT_USES).contains(&self.uses) {
            return Err(Error::invalid("enrollment token uses", format!("{}; 1 to {MAX_ENROLLMENT_USES}", self.uses)));
        }
        if self.expires_at <= now {
            return Err(Error::invalid("enrollment token expiry", format!("{} is not in the future", self.expires_at)));
        }
        Ok(())
    }
}

impl ImportedEnrollmentToken {
    /// Checks the bounds the store enforces (an expired token is imported as it is: it just does not work).
    pub fn validate(&self) -> Result<(), Error> {
        check_name("enrollment token name", &self.name, 64)?;
        if !(1..=MAX_ENROLLMENT_USES).contains(&self.uses) || self.uses_left > self.uses {
            return Err(Error::invalid(
                "enrollment token uses",
                format!("{} left of {}; 1 to {MAX_ENROLLMENT_USES} uses", self.uses_left, self.uses),
            ));
        }
        Ok(())
    }
}

impl EnrollmentToken {
    /// Whether it allows an enrollment at `now` (for a retry, `uses_left` does not matter).
    pub(crate) fn usable(&self, now: Timestamp, retry: bool) -> bool {
        self.revoked_at.is_none() && now < self.expires_at && (retry || self.uses_left > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_validated() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut token = NewEnrollmentToken {
            name: "line 3".into(),
            group: None,
            uses: 1,
            expires_at: "2026-01-08T00:00:00Z".parse().unwrap(),
        };
        assert!(token.validate(now).is_ok());
        token.uses = 0;
        assert!(token.validate(now).unwrap_err().to_string().starts_with("invalid enrollment token uses"));
        token.uses = 1;
        token.expires_at = now;
        assert!(token.validate(now).unwrap_err().to_string().starts_with("invalid enrollment token expiry"));
    }
}

//! Enrollment tokens: created by an admin, presented by a device once to enroll.
//!
//! custody-store has no table for them yet, so they live in one JSON file in the data directory
//! (`enrollment.json`, mode 0600, written atomically), with the recent enrollments that make a retried enrollment
//! idempotent. Only the SHA-256 of a token's secret is kept. Everything goes through one lock: enrollments are rare.
//!
//! A token is `custody_enroll_<id: 32 hex>_<secret: 43 base64url>`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use custody_api::admin::{CreateEnrollmentToken, EnrollmentTokenInfo};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;

const PREFIX: &str = "custody_enroll_";
/// Enrollments are remembered this long, for retries.
const REMEMBER: jiff::SignedDuration = jiff::SignedDuration::from_hours(7 * 24);

/// The enrollment tokens of one data directory.
pub struct EnrollmentTokens {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<StoredToken>,
    /// Enrollment id → the device it enrolled.
    #[serde(default)]
    enrollments: BTreeMap<Uuid, Remembered>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredToken {
    id: Uuid,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    /// Hex SHA-256 of the secret part.
    hash: String,
    uses: u32,
    uses_left: u32,
    created_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Remembered {
    device: Uuid,
    token: Uuid,
    at: Timestamp,
}

/// A valid token presented for an enrollment, held until the enrollment is finished or abandoned.
pub struct Redeemed<'a> {
    tokens: &'a EnrollmentTokens,
    _guard: tokio::sync::MutexGuard<'a, ()>,
    file: File,
    token: Uuid,
    enrollment_id: Uuid,
    /// The group of the token.
    pub group: Option<String>,
    /// The device of an earlier enrollment with the same id (a retry).
    pub previous_device: Option<Uuid>,
}

impl EnrollmentTokens {
    pub fn new(path: PathBuf) -> Self {
        Self { path, lock: tokio::sync::Mutex::new(()) }
    }

    fn load(&self) -> Result<File, ApiError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| ApiError::internal(format!("{}: {err}", self.path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(err) => Err(ApiError::internal(format!("{}: {err}", self.path.display()))),
        }
    }

    fn save(&self, file: &File) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec_pretty(file).map_err(|err| ApiError::internal(err.to_string()))?;
        crate::datadir::write_file(&self.path, &bytes, 0o600).map_err(|err| ApiError::internal(err.to_string()))
    }

    pub async fn create(
        &self,
        request: &CreateEnrollmentToken,
        now: Timestamp,
    ) -> Result<(String, EnrollmentTokenInfo), ApiError> {
        let _guard = self.lock.lock().await;
        let mut file = self.load()?;
        let id = Uuid::new_v4();
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| ApiError::internal("the random number generator failed"))?;
        let secret = URL_SAFE_NO_PAD.encode(secret);
        let hours = request.expires_in_hours.unwrap_or(CreateEnrollmentToken::DEFAULT_HOURS);
        let stored = StoredToken {
            id,
            name: request.name.clone(),
            group: request.group.clone(),
            hash: sha256_hex(&secret),
            uses: request.uses,
            uses_left: request.uses,
            created_at: now,
            expires_at: now + jiff::SignedDuration::from_hours(i64::from(hours)),
        };
        let info = stored.info();
        file.tokens.push(stored);
        self.save(&file)?;
        tracing::info!(token = %id, name = %request.name, uses = request.uses, "enrollment token created");
        Ok((format!("{PREFIX}{}_{secret}", id.simple()), info))
    }

    pub async fn list(&self) -> Result<Vec<EnrollmentTokenInfo>, ApiError> {
        let _guard = self.lock.lock().await;
        Ok(self.load()?.tokens.iter().map(StoredToken::info).collect())
    }

    pub async fn revoke(&self, id: Uuid) -> Result<(), ApiError> {
        let _guard = self.lock.lock().await;
        let mut file = self.load()?;
        let before = file.tokens.len();
        file.tokens.retain(|t| t.id != id);
        if file.tokens.len() == before {
            return Err(ApiError::not_found(format!("no enrollment token {id}")));
        }
        self.save(&file)
    }

    /// Checks `presented` for the enrollment `enrollment_id`. A token that is unknown, expired or used up is `401`;
    /// a retry of an earlier enrollment with the same token is accepted even when the token is used up.
    pub async fn redeem(&self, presented: &str, enrollment_id: Uuid, now: Timestamp) -> Result<Redeemed<'_>, ApiError> {
        let guard = self.lock.lock().await;
        let file = self.load()?;
        let refused = || ApiError::unauthorized("the enrollment token is unknown, expired or used up");
        let (id, secret) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(id, secret)| Some((Uuid::try_parse(id).ok()?, secret)))
            .ok_or_else(refused)?;
        let token = file.tokens.iter().find(|t| t.id == id).ok_or_else(refused)?;
        let hash = sha256_hex(secret);
        if aws_lc_rs::constant_time::verify_slices_are_equal(hash.as_bytes(), token.hash.as_bytes()).is_err()
            || token.expires_at <= now
        {
            return Err(refused());
        }
        let previous_device =
            file.enrollments.get(&enrollment_id).filter(|r| r.token == id).map(|remembered| remembered.device);
        if previous_device.is_none() && token.uses_left == 0 {
            return Err(refused());
        }
        let group = token.group.clone();
        Ok(Redeemed { tokens: self, _guard: guard, file, token: id, enrollment_id, group, previous_device })
    }
}

impl Redeemed<'_> {
    /// Records the enrollment (and uses the token up by one for a new one).
    pub fn finish(mut self, device: Uuid, now: Timestamp) -> Result<(), ApiError> {
        if self.previous_device.is_none()
            && let Some(token) = self.file.tokens.iter_mut().find(|t| t.id == self.token)
        {
            token.uses_left = token.uses_left.saturating_sub(1);
        }
        self.file.enrollments.retain(|_, r| r.at + REMEMBER > now);
        self.file.enrollments.insert(self.enrollment_id, Remembered { device, token: self.token, at: now });
        self.tokens.save(&self.file)
    }
}

impl StoredToken {
    fn info(&self) -> EnrollmentTokenInfo {
        EnrollmentTokenInfo {
            id: self.id,
            name: self.name.clone(),
            group: self.group.clone(),
            uses: self.uses,
            uses_left: self.uses_left,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_used_up_but_retries_go_through() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = EnrollmentTokens::new(dir.path().join("enrollment.json"));
        let now = Timestamp::now();
        let request = CreateEnrollmentToken { name: "line 3".into(), group: None, uses: 1, expires_in_hours: None };
        let (secret, info) = tokens.create(&request, now).await.unwrap();
        assert!(secret.starts_with(PREFIX));
        assert!(!std::fs::read_to_string(dir.path().join("enrollment.json")).unwrap().contains(&secret[40..]));

        let first = Uuid::from_u128(1);
        let device = Uuid::from_u128(99);
        let redeemed = tokens.redeem(&secret, first, now).await.unwrap();
        assert_eq!(redeemed.previous_device, None);
        redeemed.finish(device, now).unwrap();
        assert_eq!(tokens.list().await.unwrap()[0].uses_left, 0);

        let retry = tokens.redeem(&secret, first, now).await.unwrap();
        assert_eq!(retry.previous_device, Some(device));
        drop(retry);
        let second = tokens.redeem(&secret, Uuid::from_u128(2), now).await;
        assert_eq!(second.err().unwrap().code(), custody_api::ErrorCode::Unauthorized);

        let wrong = format!("{}x", &secret[..secret.len() - 1]);
        assert!(tokens.redeem(&wrong, first, now).await.is_err());
        let later = now + jiff::SignedDuration::from_hours(24 * 8);
        assert!(tokens.redeem(&secret, first, later).await.is_err(), "expired");
        tokens.revoke(info.id).await.unwrap();
        assert!(tokens.redeem(&secret, first, now).await.is_err(), "revoked");
    }
}

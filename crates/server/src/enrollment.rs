//! Enrollment tokens: created by an admin, presented by a device once to enroll. They live in custody-store, so
//! every service node sharing a database shares them, with the enrollments that make a retried enrollment idempotent
//! (docs/store.md, "Enrollment tokens"). Only the SHA-256 of a token's secret is kept.
//!
//! Earlier versions of the service kept them in `DATA/enrollment.json`. [`EnrollmentTokens::import_legacy`] moves
//! that file's tokens and remembered enrollments into the store once, then renames the file to
//! `enrollment.json.imported`; every operation here runs it first, so the file's tokens are never ignored. Those
//! tokens keep working: the file held the SHA-256 of the secret's text, which the store checks for them.
//!
//! A token is `custody_enroll_<id: 32 hex>_<secret: 43 base64url>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use custody_api::admin::{CreateEnrollmentToken, EnrollmentTokenInfo};
use custody_store::{
    EnrollmentId, EnrollmentImport, EnrollmentToken, EnrollmentTokenId, ImportedEnrollment, ImportedEnrollmentToken,
    NewEnrollmentToken, Store,
};
use jiff::Timestamp;
use serde::Deserialize;
use uuid::Uuid;

use crate::device_api::{error_chain, store_error};
use crate::error::ApiError;

/// The enrollment tokens of the service, and the file earlier versions kept them in.
pub struct EnrollmentTokens {
    legacy: PathBuf,
    imported: tokio::sync::OnceCell<()>,
}

/// `enrollment.json` as earlier versions wrote it.
#[derive(Debug, Deserialize)]
struct LegacyFile {
    tokens: Vec<LegacyToken>,
    /// Enrollment id → the device it enrolled.
    #[serde(default)]
    enrollments: BTreeMap<Uuid, LegacyEnrollment>,
}

#[derive(Debug, Deserialize)]
struct LegacyToken {
    id: Uuid,
    name: String,
    #[serde(default)]
    group: Option<String>,
    /// Hex SHA-256 of the secret's text.
    hash: String,
    uses: u32,
    uses_left: u32,
    created_at: Timestamp,
    expires_at: Timestamp,
}

#[derive(Debug, Deserialize)]
struct LegacyEnrollment {
    device: Uuid,
    token: Uuid,
    at: Timestamp,
}

impl EnrollmentTokens {
    /// `legacy`: where earlier versions kept the tokens (`DATA/enrollment.json`).
    pub fn new(legacy: PathBuf) -> Self {
        Self { legacy, imported: tokio::sync::OnceCell::new() }
    }

    /// Imports `enrollment.json` into the store if it exists, then renames it to `enrollment.json.imported`; does
    /// nothing the second time. Tokens already in the store are left as they are, so an import interrupted before
    /// the rename is safely repeated at the next start.
    pub async fn import_legacy(&self, store: &Store) -> Result<(), ApiError> {
        self.imported
            .get_or_try_init(|| async {
                let Some(file) = self.read_legacy()? else { return Ok(()) };
                let (tokens, enrollments) = file.convert().map_err(|problem| self.legacy_error(problem))?;
                let summary: EnrollmentImport = store
                    .import_enrollment_tokens(&tokens, &enrollments)
                    .await
                    .map_err(|err| self.legacy_error(error_chain(&err)))?;
                let imported = self.legacy.with_extension("json.imported");
                rename_durably(&self.legacy, &imported).map_err(|err| self.legacy_error(err.to_string()))?;
                tracing::info!(
                    file = %self.legacy.display(),
                    tokens = summary.tokens,
                    enrollments = summary.enrollments,
                    renamed = %imported.display(),
                    "imported the enrollment tokens of an earlier version into the store"
                );
                Ok(())
            })
            .await
            .copied()
    }

    pub async fn create(
        &self,
        store: &Store,
        request: &CreateEnrollmentToken,
        now: Timestamp,
    ) -> Result<(String, EnrollmentTokenInfo), ApiError> {
        self.import_legacy(store).await?;
        let hours = request.expires_in_hours.unwrap_or(CreateEnrollmentToken::DEFAULT_HOURS);
        let new = NewEnrollmentToken {
            name: request.name.clone(),
            group: request.group.as_deref().map(str::parse).transpose().map_err(store_error)?,
            uses: request.uses,
            expires_at: now + jiff::SignedDuration::from_hours(i64::from(hours)),
        };
        let created = store.create_enrollment_token(&new, now).await.map_err(store_error)?;
        Ok((created.secret.expose().to_owned(), info(&created.token)))
    }

    /// The tokens not revoked, oldest first (expired and used-up ones included).
    pub async fn list(&self, store: &Store) -> Result<Vec<EnrollmentTokenInfo>, ApiError> {
        self.import_legacy(store).await?;
        let tokens = store.enrollment_tokens().await.map_err(store_error)?;
        Ok(tokens.iter().filter(|token| token.revoked_at.is_none()).map(info).collect())
    }

    /// Revokes a token (again: changes nothing); devices enrolled with it stay enrolled.
    pub async fn revoke(&self, store: &Store, id: Uuid, now: Timestamp) -> Result<(), ApiError> {
        self.import_legacy(store).await?;
        let id = EnrollmentTokenId::new(id).map_err(|err| ApiError::not_found(err.to_string()))?;
        store.revoke_enrollment_token(&id, now).await.map_err(store_error)?;
        Ok(())
    }

    fn read_legacy(&self) -> Result<Option<LegacyFile>, ApiError> {
        match std::fs::read(&self.legacy) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|err| self.legacy_error(err.to_string())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.legacy_error(err.to_string())),
        }
    }

    fn legacy_error(&self, problem: String) -> ApiError {
        ApiError::internal(format!(
            "importing the enrollment tokens of {} into the store failed: {problem}; fix or remove the file",
            self.legacy.display()
        ))
    }
}

impl LegacyFile {
    /// The file's tokens and enrollments as the store imports them; the problem names the entry.
    fn convert(self) -> Result<(Vec<ImportedEnrollmentToken>, Vec<ImportedEnrollment>), String> {
        let tokens = self
            .tokens
            .into_iter()
            .map(|token| {
                let at = |err: custody_store::Error| format!("token {}: {err}", token.id);
                Ok(ImportedEnrollmentToken {
                    id: EnrollmentTokenId::new(token.id).map_err(at)?,
                    group: token.group.as_deref().map(str::parse).transpose().map_err(at)?,
                    text_sha256: token.hash.parse().map_err(at)?,
                    name: token.name,
                    uses: token.uses,
                    uses_left: token.uses_left,
                    created_at: token.created_at,
                    expires_at: token.expires_at,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let enrollments = self
            .enrollments
            .into_iter()
            .map(|(enrollment, remembered)| {
                let at = |err: custody_store::Error| format!("enrollment {enrollment}: {err}");
                Ok(ImportedEnrollment {
                    enrollment: EnrollmentId::new(enrollment).map_err(at)?,
                    token: EnrollmentTokenId::new(remembered.token).map_err(at)?,
                    device: custody_store::DeviceId::new(remembered.device).map_err(at)?,
                    at: remembered.at,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok((tokens, enrollments))
    }
}

/// The admin API's view of a token.
fn info(token: &EnrollmentToken) -> EnrollmentTokenInfo {
    EnrollmentTokenInfo {
        id: *token.id.as_uuid(),
        name: token.name.clone(),
        group: token.group.as_ref().map(|group| group.to_string()),
        uses: token.uses,
        uses_left: token.uses_left,
        created_at: token.created_at,
        expires_at: token.expires_at,
    }
}

/// Renames `from` to `to` and syncs their directory, so that the rename survives a crash.
fn rename_durably(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use custody_store::{DeviceId, Identity, Labels, NewDevice, StoreOptions};

    use super::*;

    /// What an earlier version wrote: a token for three devices with one enrollment remembered.
    fn legacy_file(token: Uuid, text: &str, device: DeviceId, enrollment: Uuid) -> String {
        let hash = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()));
        format!(
            r#"{{"tokens": [{{"id": "{token}", "name": "line 3", "group": "line3", "hash": "{hash}", "uses": 3,
                "uses_left": 2, "created_at": "2026-07-30T00:00:00Z", "expires_at": "2099-01-01T00:00:00Z"}}],
               "enrollments": {{"{enrollment}": {{"device": "{device}", "token": "{token}",
                "at": "2026-07-31T00:00:00Z"}}}}}}"#
        )
    }

    #[tokio::test]
    async fn enrollment_json_is_imported_once_and_its_tokens_keep_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("custody.db"), &StoreOptions::default()).await.unwrap();
        // Whole seconds: the store keeps microseconds.
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        let device = NewDevice {
            id: DeviceId::random(),
            name: "edge-7".parse().unwrap(),
            identity: Identity::token(b"device token"),
            group: None,
            labels: Labels::default(),
        };
        store.enroll(&device, now).await.unwrap();
        let (token, enrollment) = (Uuid::new_v4(), Uuid::new_v4());
        let text = "uH3iR5kQ0wQm1b3Qm8yI5Zt1yqvV9wz2q8v1x7c3k0A";
        let legacy = dir.path().join("enrollment.json");
        std::fs::write(&legacy, legacy_file(token, text, device.id, enrollment)).unwrap();

        let tokens = EnrollmentTokens::new(legacy.clone());
        let listed = tokens.list(&store).await.unwrap();
        assert_eq!((listed.len(), listed[0].uses_left, listed[0].group.as_deref()), (1, 2, Some("line3")));
        assert!(!legacy.exists());
        assert!(dir.path().join("enrollment.json.imported").exists());

        // The old token redeems, and the remembered enrollment is a retry of the same device.
        let secret = format!("custody_enroll_{}_{text}", token.simple());
        let retry = store.redeem_enrollment_token(&secret, &EnrollmentId::new(enrollment).unwrap(), now).await.unwrap();
        assert_eq!(retry.previous_device.map(|d| d.id), Some(device.id));

        // A second service (or a restart) imports nothing more, even if the file came back.
        std::fs::copy(dir.path().join("enrollment.json.imported"), &legacy).unwrap();
        let again = EnrollmentTokens::new(legacy.clone());
        again.import_legacy(&store).await.unwrap();
        assert_eq!(again.list(&store).await.unwrap(), listed);

        // New tokens, revocation.
        let request = CreateEnrollmentToken { name: "lab".into(), group: None, uses: 1, expires_in_hours: None };
        let (secret, info) = again.create(&store, &request, now).await.unwrap();
        assert!(secret.starts_with("custody_enroll_"));
        assert_eq!(info.expires_at, now + jiff::SignedDuration::from_hours(168));
        again.revoke(&store, info.id, now).await.unwrap();
        again.revoke(&store, info.id, now).await.unwrap();
        assert_eq!(again.list(&store).await.unwrap(), listed, "revoked tokens are not listed");
        let missing = again.revoke(&store, Uuid::new_v4(), now).await.unwrap_err();
        assert_eq!(missing.code(), custody_api::ErrorCode::NotFound);
    }

    #[tokio::test]
    async fn a_broken_enrollment_json_is_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("custody.db"), &StoreOptions::default()).await.unwrap();
        let legacy = dir.path().join("enrollment.json");
        std::fs::write(&legacy, r#"{"tokens": [{"id": "not a uuid"}]}"#).unwrap();
        let tokens = EnrollmentTokens::new(legacy.clone());
        let error = tokens.list(&store).await.unwrap_err();
        assert!(error.body().message.contains("enrollment.json"), "{:?}", error.body());
        assert!(legacy.exists(), "nothing is renamed when the import fails");
        assert!(store.enrollment_tokens().await.unwrap().is_empty());
    }
}

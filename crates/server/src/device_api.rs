//! The device API (`/device/v1`): enrollment, inventory and events (docs/api.md, "Device API").

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use custody_api::device::{
    DeviceIdentity, EnrollRequest, EnrollResponse, EventBatch, EventBatchResponse, EventType, Inventory,
};
use custody_api::limits::{MAX_CLOCK_SKEW_SECONDS, MAX_ENROLL_BYTES, MAX_EVENT_BATCH_BYTES, MAX_INVENTORY_BYTES};
use custody_api::{ErrorCode, FieldError};
use custody_store::{Device, DeviceId, EnrollmentId, Identity, IdentityKey, Labels, NewDevice, Sha256};
use custody_tls::ClientIdentity;
use jiff::Timestamp;

use crate::app::App;
use crate::config::IdentityMode;
use crate::error::ApiError;
use crate::request::{bearer, read_json};

/// `POST /device/v1/enroll`: checks the enrollment token (custody-store), issues the device its identity (a
/// certificate from the device intermediate, recorded in the CA index, or a device token), then enrolls it with the
/// token in one store transaction. A retry of an enrollment that went through gets the same device with the new
/// identity; the certificate it replaces is revoked (superseded). If enrolling fails after a certificate was issued,
/// that certificate is revoked, so that no valid certificate belongs to no device.
pub async fn enroll(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Json<EnrollResponse>, ApiError> {
    let presented = bearer(&headers)
        .ok_or_else(|| ApiError::unauthorized("enrollment needs Authorization: Bearer <enrollment token>"))?
        .to_owned();
    let request: EnrollRequest = read_json(&headers, body, MAX_ENROLL_BYTES).await?;
    request.validate()?;
    app.enrollment.import_legacy(&app.store).await?;
    let now = Timestamp::now();
    let attempt = EnrollmentId::new(request.enrollment_id).map_err(store_error)?;
    let redemption = app.store.redeem_enrollment_token(&presented, &attempt, now).await.map_err(store_error)?;
    if let Some(previous) = &redemption.previous_device
        && previous.revoked_at.is_some()
    {
        return Err(ApiError::forbidden(format!(
            "device {} of this enrollment was revoked; enroll with a new enrollment id and token",
            previous.id
        )));
    }
    let device_id = redemption.previous_device.as_ref().map_or_else(DeviceId::random, |previous| previous.id);
    let name = request.hostname.parse().map_err(|e| FieldError::new("hostname", store_reason(e)))?;
    let (identity, answer) = match &request.csr {
        Some(csr) => {
            let (data, csr, id) = (app.data.clone(), csr.clone(), device_id.to_string());
            let days = app.config.devices.certificate_days;
            let issued =
                tokio::task::spawn_blocking(move || crate::pki::issue_device_certificate(&data, &csr, &id, days, now))
                    .await
                    .map_err(|err| ApiError::internal(format!("worker: {err}")))?
                    .map_err(|err| match err {
                        crate::pki::CsrError::Invalid(_) => ApiError::from(FieldError::new("csr", err.to_string())),
                        crate::pki::CsrError::Issue(_) => ApiError::internal(err.to_string()),
                    })?;
            let identity = Identity::Certificate {
                serial: issued.serial.parse().map_err(store_error)?,
                fingerprint: Sha256::of(&issued.der),
            };
            (identity, DeviceIdentity::Certificate { chain: issued.chain, not_after: issued.not_after })
        }
        None if app.config.devices.identity == IdentityMode::CertificateOrToken => {
            let token = new_device_token()?;
            (Identity::token(token.as_bytes()), DeviceIdentity::Token { token })
        }
        None => {
            return Err(
                FieldError::new("csr", "this service identifies devices by client certificate: send a CSR").into()
            );
        }
    };
    let kind = match &identity {
        Identity::Certificate { .. } => "certificate",
        Identity::Token { .. } => "token",
    };
    let new = NewDevice { id: device_id, name, identity: identity.clone(), group: None, labels: Labels::default() };
    let enrolled = app.store.enroll_with_token(&redemption.token.id, &attempt, &new, now).await;
    let device = match enrolled {
        Ok(enrollment) => enrollment.into_device(),
        Err(err) => {
            if let Identity::Certificate { serial, .. } = &identity {
                revoke_certificate(&app, serial.as_str(), "cessation-of-operation").await;
            }
            return Err(store_error(err));
        }
    };
    if let Some(previous) = &redemption.previous_device
        && let Identity::Certificate { serial, .. } = &previous.identity
        && previous.identity != device.identity
    {
        revoke_certificate(&app, serial.as_str(), "superseded").await;
    }
    metrics::counter!("custody_enrollments_total", "identity" => kind).increment(1);
    tracing::info!(device = %device.id, identity = kind, "device enrolled");
    Ok(Json(EnrollResponse { device_id: *device.id.as_uuid(), identity: answer }))
}

/// Revokes a certificate the service issued; a failure is logged (the certificate stays valid but belongs to no
/// device, so the service refuses it anyway).
async fn revoke_certificate(app: &App, serial: &str, reason: &'static str) {
    let (data, serial) = (app.data.clone(), serial.to_owned());
    let now = Timestamp::now();
    let result = tokio::task::spawn_blocking(move || {
        let done = crate::pki::revoke_device_certificate(&data, &serial, reason, now);
        (serial, done)
    })
    .await;
    match result {
        Ok((serial, Ok(_))) => tracing::info!(%serial, reason, "unused device certificate revoked"),
        Ok((serial, Err(err))) => {
            tracing::error!(%serial, error = %err, "revoking an unused device certificate failed")
        }
        Err(err) => tracing::error!(error = %err, "revoking an unused device certificate failed"),
    }
}

/// `PUT /device/v1/inventory`.
pub async fn inventory(
    State(app): State<App>,
    client: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let device = authenticate(&app, client.as_deref(), &headers).await?;
    let inventory: Inventory = read_json(&headers, body, MAX_INVENTORY_BYTES).await?;
    let parsed = inventory.to_device_inventory()?;
    app.store
        .update_inventory(&device.id, &custody_store::Inventory(parsed), Timestamp::now())
        .await
        .map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /device/v1/events`.
pub async fn events(
    State(app): State<App>,
    client: Option<Extension<ClientIdentity>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EventBatchResponse>, ApiError> {
    let device = authenticate(&app, client.as_deref(), &headers).await?;
    let batch: EventBatch = read_json(&headers, body, MAX_EVENT_BATCH_BYTES).await?;
    batch.validate()?;
    let now = Timestamp::now();
    let latest = now + jiff::SignedDuration::from_secs(MAX_CLOCK_SKEW_SECONDS);
    let mut events = Vec::with_capacity(batch.events.len());
    for (index, event) in batch.events.iter().enumerate() {
        if event.time > latest {
            return Err(FieldError::new(
                format!("events[{index}].time"),
                "is more than 24 hours ahead of the service's clock",
            )
            .into());
        }
        events.push(crate::events::to_store(event, &format!("events[{index}]"))?);
    }
    let summary = app.store.record_events(&device.id, &events, now).await.map_err(store_error)?;
    for event in &batch.events {
        metrics::counter!("custody_device_events_total", "type" => event.kind.as_str()).increment(1);
    }
    if summary.recorded > 0 && batch.events.iter().any(|e| e.kind == EventType::ScanFinished) {
        metrics::counter!("custody_scans_total").increment(1);
    }
    Ok(Json(EventBatchResponse {
        accepted: u32::try_from(summary.recorded).unwrap_or(u32::MAX),
        duplicates: u32::try_from(summary.duplicates).unwrap_or(u32::MAX),
    }))
}

/// The device a request comes from: by its verified client certificate, else (where allowed) its device token. A
/// revoked device is refused (`403`), whatever it authenticates with.
pub(crate) async fn authenticate(
    app: &App,
    client: Option<&ClientIdentity>,
    headers: &HeaderMap,
) -> Result<Device, ApiError> {
    let device = if let Some(certificate) = client.and_then(|c| c.chain.first()) {
        let key = IdentityKey::Certificate(Sha256::of(certificate.as_ref()));
        app.store.device_by_identity(&key).await.map_err(store_error)?.ok_or_else(|| {
            ApiError::forbidden("this client certificate is not (or no longer) the identity of an enrolled device")
        })?
    } else if app.config.devices.identity == IdentityMode::CertificateOrToken
        && let Some(token) = bearer(headers)
    {
        let key = IdentityKey::token(token.as_bytes());
        app.store
            .device_by_identity(&key)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::unauthorized("unknown or replaced device token; enroll again"))?
    } else {
        return Err(ApiError::forbidden("device routes need the device's client certificate"));
    };
    if let Some(revoked_at) = device.revoked_at {
        return Err(ApiError::forbidden(format!(
            "device {} was revoked at {revoked_at}: it may not use the device API; enroll it again with a new \
             enrollment token",
            device.id
        )));
    }
    Ok(device)
}

/// A device token: `custody_device_` and 32 random bytes, base64url.
fn new_device_token() -> Result<String, ApiError> {
    use base64::Engine as _;
    let mut secret = [0u8; 32];
    aws_lc_rs::rand::fill(&mut secret).map_err(|_| ApiError::internal("the random number generator failed"))?;
    Ok(format!("custody_device_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)))
}

/// The answer to a store error.
pub fn store_error(err: custody_store::Error) -> ApiError {
    use custody_store::Error as E;
    match err {
        E::Invalid { .. } => ApiError::new(ErrorCode::InvalidField, err.to_string()),
        E::UnknownDevice(_) | E::UnknownToken(_) => ApiError::not_found(err.to_string()),
        E::DeviceIdTaken(_) | E::IdentityTaken(_) | E::EventConflict { .. } => ApiError::conflict(err.to_string()),
        E::UnknownEnrollmentToken(_) => ApiError::not_found(err.to_string()),
        E::EnrollmentInProgress(_) => ApiError::conflict(err.to_string()),
        E::TokenInvalid | E::TokenRevoked { .. } | E::EnrollmentTokenRefused => ApiError::unauthorized(err.to_string()),
        E::TokenScope { .. } | E::DeviceRevoked(_) => ApiError::forbidden(err.to_string()),
        other => ApiError::internal(format!("database: {}", error_chain(&other))),
    }
}

fn store_reason(err: custody_store::Error) -> String {
    match err {
        custody_store::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// An error and its causes on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

//! The admin API (`/admin/v1`): updates, compliance, devices (and their revocation), tokens, content upload and
//! publishing (docs/api.md, "Admin API"). Every handler starts by checking the bearer token for the scope it needs.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use custody_api::admin::{
    ComplianceCounts, ComplianceReport, ComplianceState, CreateEnrollmentToken, CreateToken, CreatedEnrollmentToken,
    CreatedToken, DeliveryReport, DeviceCompliance, DeviceDetail, DeviceList, DeviceRevoked, DeviceSummary,
    EnrollmentTokenList, GroupDelivery, IdentityKind, PublishRequest, PublishResponse, RevokeDevice,
    RevokedCertificate, Scope, ServiceStatus, StagedList, StoredEvent, TokenInfo, TokenList, UpdateCompliance,
    UpdateComplianceDetail, UpdateDetail, UpdateList,
};
use custody_api::device::Inventory;
use custody_api::limits::{MAX_ADMIN_BODY_BYTES, MAX_PAGE, MAX_PUBLISH_BYTES};
use custody_api::{ErrorCode, FieldError};
use custody_catalog::UpdateId;
use custody_store::{AdminToken, ComplianceQuery, DeviceId, DeviceQuery, TokenId};
use futures_util::TryStreamExt;
use jiff::Timestamp;
use serde::Deserialize;
use uuid::Uuid;

use crate::app::App;
use crate::content::{ByteStream, ContentId, PutError};
use crate::device_api::store_error;
use crate::error::ApiError;
use crate::request::{bearer, read_json};

/// Checks the request's admin token for `needed`.
pub async fn authorize(app: &App, headers: &HeaderMap, needed: Scope) -> Result<AdminToken, ApiError> {
    let secret =
        bearer(headers).ok_or_else(|| ApiError::unauthorized("the admin API needs Authorization: Bearer <token>"))?;
    let needed = match needed {
        Scope::Read => custody_store::Scope::Read,
        Scope::Write => custody_store::Scope::Write,
    };
    app.store.verify_admin_token(secret, needed, Timestamp::now()).await.map_err(store_error)
}

/// `GET /admin/v1/updates`.
pub async fn updates(State(app): State<App>, headers: HeaderMap) -> Result<Json<UpdateList>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let catalog = app.repo.catalog().await?;
    Ok(Json(UpdateList { updates: catalog.updates.iter().map(|u| u.summary.clone()).collect() }))
}

/// `GET /admin/v1/updates/<id>`.
pub async fn update(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<UpdateDetail>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let id = parse_update_id(&id)?;
    let catalog = app.repo.catalog().await?;
    let found = catalog.updates.iter().find(|u| u.summary.id == id).ok_or_else(|| no_update(id))?;
    Ok(Json(UpdateDetail { update: found.summary.clone(), entry: found.json.clone() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    after: Option<Uuid>,
    #[serde(default)]
    state: Option<String>,
}

/// `GET /admin/v1/updates/<id>/compliance`.
pub async fn update_compliance(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(page): Query<PageQuery>,
) -> Result<Json<UpdateComplianceDetail>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let id = parse_update_id(&id)?;
    let catalog = app.repo.catalog().await?;
    let found = catalog.updates.iter().find(|u| u.summary.id == id).ok_or_else(|| no_update(id))?;
    let limit = page_limit(page.limit)?;
    let state = page.state.as_deref().map(str::parse::<ComplianceState>).transpose()?;
    let summary = app.store.compliance_summary(&id, None).await.map_err(store_error)?;
    let query = ComplianceQuery {
        update: id,
        state: state.map(store_state),
        group: None,
        after: page.after.map(DeviceId::new).transpose().map_err(store_error)?,
        limit,
    };
    let rows = app.store.compliance(&query).await.map_err(store_error)?;
    let next = (rows.len() == limit as usize).then(|| rows.last().map(|r| *r.device.as_uuid())).flatten();
    let devices = rows
        .into_iter()
        .map(|row| DeviceCompliance {
            device_id: *row.device.as_uuid(),
            state: api_state(row.state),
            revision: row.revision,
            code: row.error_code,
            time: row.at,
        })
        .collect();
    Ok(Json(UpdateComplianceDetail { update: found.summary.clone(), counts: counts(&summary), devices, next }))
}

/// `GET /admin/v1/compliance`.
pub async fn compliance(State(app): State<App>, headers: HeaderMap) -> Result<Json<ComplianceReport>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let catalog = app.repo.catalog().await?;
    let overview: BTreeMap<UpdateId, custody_store::ComplianceSummary> = app
        .store
        .compliance_overview(None)
        .await
        .map_err(store_error)?
        .into_iter()
        .map(|summary| (summary.update, summary))
        .collect();
    let mut updates = Vec::with_capacity(catalog.updates.len());
    for update in &catalog.updates {
        let summary = match overview.get(&update.summary.id) {
            Some(summary) => summary.clone(),
            None => app.store.compliance_summary(&update.summary.id, None).await.map_err(store_error)?,
        };
        updates.push(UpdateCompliance { update: update.summary.clone(), counts: counts(&summary) });
    }
    Ok(Json(ComplianceReport { updates }))
}

/// `GET /admin/v1/devices`.
pub async fn devices(
    State(app): State<App>,
    headers: HeaderMap,
    Query(page): Query<PageQuery>,
) -> Result<Json<DeviceList>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    if page.state.is_some() {
        return Err(FieldError::new("state", "devices are not filtered by state").into());
    }
    let limit = page_limit(page.limit)?;
    let query =
        DeviceQuery { group: None, after: page.after.map(DeviceId::new).transpose().map_err(store_error)?, limit };
    let devices = app.store.list_devices(&query).await.map_err(store_error)?;
    let next = (devices.len() == limit as usize).then(|| devices.last().map(|d| *d.id.as_uuid())).flatten();
    Ok(Json(DeviceList { devices: devices.iter().map(device_summary).collect(), next }))
}

/// `GET /admin/v1/devices/<id>`.
pub async fn device(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<DeviceDetail>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let id: DeviceId = id.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let device = app
        .store
        .device(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found(format!("no device {id}")))?;
    let stored = app.store.inventory(&id).await.map_err(store_error)?;
    let history = app.store.device_history(&id, None, 100).await.map_err(store_error)?;
    Ok(Json(DeviceDetail {
        device: device_summary(&device),
        inventory_at: stored.as_ref().map(|s| s.reported_at),
        inventory: stored.map(|s| api_inventory(&s.inventory)),
        events: history
            .iter()
            .filter_map(|e| Some(StoredEvent { event: crate::events::to_api(&e.event)?, received_at: e.received_at }))
            .collect(),
    }))
}

/// `POST /admin/v1/devices/<id>/revoke`: the store marks the device revoked (the device API refuses it at once, and
/// it is nobody's peer), then its certificate is revoked in the CA directory and the device CRL re-signed (the HTTPS
/// listener reloads it and refuses the certificate at the handshake; devices fetch it from `/pki/device-crl.pem`).
/// Repeating it changes nothing, so a revocation that failed half-way is completed by retrying it.
pub async fn revoke_device(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<DeviceRevoked>, ApiError> {
    let actor = authorize(&app, &headers, Scope::Write).await?;
    let id: DeviceId = id.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let request: RevokeDevice = read_json(&headers, body, MAX_ADMIN_BODY_BYTES).await?;
    request.validate()?;
    let reason = request.reason.unwrap_or_else(|| "unspecified".to_owned());
    let now = Timestamp::now();
    let device = app.store.revoke_device(&id, now).await.map_err(|err| match err {
        custody_store::Error::UnknownDevice(_) => ApiError::not_found(format!("no device {id}")),
        other => store_error(other),
    })?;
    let certificate = match &device.identity {
        custody_store::Identity::Certificate { serial, .. } => {
            let (data, serial, reason) = (app.data.clone(), serial.to_string(), reason.clone());
            let revocation = tokio::task::spawn_blocking(move || {
                crate::pki::revoke_device_certificate(&data, &serial, &reason, now).map(|done| (serial, done))
            })
            .await
            .map_err(|err| ApiError::internal(format!("worker: {err}")))?
            .map_err(|err| ApiError::internal(format!("revoking the device certificate: {err}; retry")))?;
            let (serial, done) = revocation;
            if done == crate::pki::CertificateRevocation::NotIndexed {
                tracing::warn!(device = %id, %serial, "the device's certificate is not in the CA index; not on the CRL");
            }
            Some(RevokedCertificate { serial, on_crl: done == crate::pki::CertificateRevocation::OnCrl })
        }
        custody_store::Identity::Token { .. } => None,
    };
    metrics::counter!("custody_device_revocations_total").increment(1);
    tracing::info!(by = %actor.name, device = %id, reason, "device revoked");
    Ok(Json(DeviceRevoked { device: device_summary(&device), certificate }))
}

/// `GET /admin/v1/delivery`: download statistics per device group.
pub async fn delivery(State(app): State<App>, headers: HeaderMap) -> Result<Json<DeliveryReport>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let groups = app.store.delivery_by_group().await.map_err(store_error)?;
    let groups = groups
        .iter()
        .map(|group| {
            let bytes = crate::events::delivery_stats(&group.bytes);
            GroupDelivery {
                group: group.group.as_ref().map(ToString::to_string),
                devices: group.devices,
                downloads: group.downloads,
                percent_peer_caching: bytes.percent_peer_caching(),
                bytes,
            }
        })
        .collect();
    Ok(Json(DeliveryReport { groups }))
}

/// `GET /admin/v1/tokens`.
pub async fn tokens(State(app): State<App>, headers: HeaderMap) -> Result<Json<TokenList>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let tokens = app.store.admin_tokens().await.map_err(store_error)?;
    Ok(Json(TokenList { tokens: tokens.iter().map(token_info).collect() }))
}

/// `POST /admin/v1/tokens`.
pub async fn create_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let actor = authorize(&app, &headers, Scope::Write).await?;
    let request: CreateToken = read_json(&headers, body, MAX_ADMIN_BODY_BYTES).await?;
    request.validate()?;
    let scope = match request.scope {
        Scope::Read => custody_store::Scope::Read,
        Scope::Write => custody_store::Scope::Write,
    };
    let created = app.store.create_admin_token(&request.name, scope, Timestamp::now()).await.map_err(store_error)?;
    tracing::info!(by = %actor.name, token = %created.token.id, scope = %scope, "admin token created");
    let token = created.secret.expose().to_owned();
    Ok((StatusCode::CREATED, Json(CreatedToken { token, info: token_info(&created.token) })))
}

/// `DELETE /admin/v1/tokens/<id>`.
pub async fn revoke_token(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let actor = authorize(&app, &headers, Scope::Write).await?;
    let id: TokenId = id.parse().map_err(|e| ApiError::not_found(format!("{e}")))?;
    let revoked = app.store.revoke_admin_token(&id, Timestamp::now()).await.map_err(store_error)?;
    tracing::info!(by = %actor.name, token = %id, "admin token revoked");
    Ok(Json(token_info(&revoked)))
}

/// `GET /admin/v1/enrollment-tokens`.
pub async fn enrollment_tokens(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<EnrollmentTokenList>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    Ok(Json(EnrollmentTokenList { enrollment_tokens: app.enrollment.list(&app.store).await? }))
}

/// `POST /admin/v1/enrollment-tokens`.
pub async fn create_enrollment_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CreatedEnrollmentToken>), ApiError> {
    authorize(&app, &headers, Scope::Write).await?;
    let request: CreateEnrollmentToken = read_json(&headers, body, MAX_ADMIN_BODY_BYTES).await?;
    request.validate()?;
    let (token, info) = app.enrollment.create(&app.store, &request, Timestamp::now()).await?;
    Ok((StatusCode::CREATED, Json(CreatedEnrollmentToken { token, info })))
}

/// `DELETE /admin/v1/enrollment-tokens/<id>`.
pub async fn revoke_enrollment_token(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    authorize(&app, &headers, Scope::Write).await?;
    app.enrollment.revoke(&app.store, id, Timestamp::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `HEAD /admin/v1/content/sha256/<hex>`: whether the content is stored.
pub async fn content_exists(
    State(app): State<App>,
    headers: HeaderMap,
    Path(hex): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, Scope::Write).await?;
    let sha256 = parse_sha256(&hex)?;
    let found = app.content.hashes(sha256).await.map_err(|e| ApiError::internal(format!("content store: {e}")))?;
    match found {
        Some(hashes) => Ok((StatusCode::OK, [(header::CONTENT_LENGTH, hashes.length.to_string())]).into_response()),
        None => Ok(StatusCode::NOT_FOUND.into_response()),
    }
}

/// `PUT /admin/v1/content/sha256/<hex>`: streams the body into the content store, which checks the hash.
pub async fn upload(
    State(app): State<App>,
    headers: HeaderMap,
    Path(hex): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<custody_api::admin::ContentStored>), ApiError> {
    let actor = authorize(&app, &headers, Scope::Write).await?;
    let sha256 = parse_sha256(&hex)?;
    let media_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !media_type.eq_ignore_ascii_case("application/octet-stream") {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("content uploads are application/octet-stream, not {media_type:?}"),
        ));
    }
    let limit = app.config.limits.max_upload_bytes;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(ApiError::too_large(limit));
    }
    let stream: ByteStream = Box::pin(body.into_data_stream().map_err(std::io::Error::other));
    let (hashes, created) = app.content.put(sha256, stream, limit).await.map_err(|err| match err {
        PutError::TooLarge { limit } => ApiError::too_large(limit),
        PutError::HashMismatch { .. } => ApiError::rejected(err.to_string()),
        PutError::Body(_) => ApiError::bad_field(String::new(), err.to_string()),
        PutError::Io(_) => ApiError::internal(err.to_string()),
    })?;
    tracing::info!(by = %actor.name, sha256 = %hex, length = hashes.length, created, "content uploaded");
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(custody_api::admin::ContentStored {
            sha256: hex::encode(hashes.sha256),
            sha512: hex::encode(hashes.sha512),
            length: hashes.length,
            created,
        }),
    ))
}

/// `POST /admin/v1/publish`.
pub async fn publish(State(app): State<App>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let actor = authorize(&app, &headers, Scope::Write).await?;
    let request: PublishRequest = read_json(&headers, body, MAX_PUBLISH_BYTES).await?;
    request.validate()?;
    let bytes = serde_json::to_vec(&request.metadata).map_err(|err| ApiError::internal(err.to_string()))?;
    let response = app.repo.publish(&request.role, bytes).await?;
    if let PublishResponse::Published { role, version, snapshot_version, added, changed, removed, .. } = &response {
        let record = custody_store::NewPublishRecord {
            actor: actor.name.clone(),
            action: custody_store::PublishAction::Publish,
            update: None,
            revision: None,
            product: None,
            snapshot_version: Some(*snapshot_version),
            detail: format!(
                "{role} version {version}: added {}; changed {}; removed {}",
                list(added),
                list(changed),
                list(removed)
            )
            .chars()
            .take(custody_store::limits::MAX_PUBLISH_DETAIL / 4)
            .collect(),
        };
        if let Err(err) = app.store.append_publish(&record, Timestamp::now()).await {
            tracing::error!(error = %crate::device_api::error_chain(&err), "recording the publish failed");
        }
    }
    let status = match response {
        PublishResponse::Published { .. } => StatusCode::OK,
        PublishResponse::Pending(_) => StatusCode::ACCEPTED,
    };
    Ok((status, Json(response)).into_response())
}

/// `GET /admin/v1/staged`.
pub async fn staged(State(app): State<App>, headers: HeaderMap) -> Result<Json<StagedList>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    Ok(Json(StagedList { staged: app.repo.staged().await? }))
}

/// `GET /admin/v1/staged/<role>`: the waiting envelope.
pub async fn staged_role(
    State(app): State<App>,
    headers: HeaderMap,
    Path(role): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let bytes = app.repo.staged_role(&role).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// `GET /admin/v1/status`.
pub async fn status(State(app): State<App>, headers: HeaderMap) -> Result<Json<ServiceStatus>, ApiError> {
    authorize(&app, &headers, Scope::Read).await?;
    let (roles, next_refresh) = app.repo.status().await?;
    Ok(Json(ServiceStatus { roles, next_refresh }))
}

fn list(paths: &[String]) -> String {
    if paths.is_empty() { "none".into() } else { paths.join(", ") }
}

fn parse_update_id(text: &str) -> Result<UpdateId, ApiError> {
    text.parse().map_err(|_| ApiError::not_found(format!("{text:?} is not an update id (a lower-case UUID)")))
}

fn no_update(id: UpdateId) -> ApiError {
    ApiError::not_found(format!("no published update {id}"))
}

fn parse_sha256(hex: &str) -> Result<[u8; 32], ApiError> {
    match ContentId::from_hex(hex) {
        Some(ContentId::Sha256(sha256)) => Ok(sha256),
        _ => Err(ApiError::not_found("content is named by 64 lower-case hex digits of its SHA-256")),
    }
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(MAX_PAGE) {
        limit @ 1..=MAX_PAGE => Ok(limit),
        _ => Err(FieldError::new("limit", format!("must be 1 to {MAX_PAGE}")).into()),
    }
}

fn counts(summary: &custody_store::ComplianceSummary) -> ComplianceCounts {
    ComplianceCounts {
        devices: summary.devices,
        installed: summary.installed,
        pending_reboot: summary.pending_reboot,
        needed: summary.needed,
        downloaded: summary.downloaded,
        failed: summary.failed,
        not_applicable: summary.not_applicable,
        unknown: summary.unknown,
    }
}

fn store_state(state: ComplianceState) -> custody_store::ComplianceState {
    use custody_store::ComplianceState as S;
    match state {
        ComplianceState::Installed => S::Installed,
        ComplianceState::PendingReboot => S::PendingReboot,
        ComplianceState::Needed => S::Needed,
        ComplianceState::Downloaded => S::Downloaded,
        ComplianceState::Failed => S::Failed,
        ComplianceState::NotApplicable => S::NotApplicable,
    }
}

fn api_state(state: custody_store::ComplianceState) -> ComplianceState {
    use custody_store::ComplianceState as S;
    match state {
        S::Installed => ComplianceState::Installed,
        S::PendingReboot => ComplianceState::PendingReboot,
        S::Needed => ComplianceState::Needed,
        S::Downloaded => ComplianceState::Downloaded,
        S::Failed => ComplianceState::Failed,
        S::NotApplicable => ComplianceState::NotApplicable,
    }
}

fn device_summary(device: &custody_store::Device) -> DeviceSummary {
    DeviceSummary {
        id: *device.id.as_uuid(),
        hostname: device.name.to_string(),
        identity: match device.identity {
            custody_store::Identity::Certificate { .. } => IdentityKind::Certificate,
            custody_store::Identity::Token { .. } => IdentityKind::Token,
        },
        group: device.group.as_ref().map(ToString::to_string),
        labels: device.labels.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        enrolled_at: device.enrolled_at,
        last_seen: device.last_seen,
        revoked_at: device.revoked_at,
    }
}

fn api_inventory(inventory: &custody_store::Inventory) -> Inventory {
    let inventory = &inventory.0;
    Inventory {
        os_family: inventory.os_family.to_string(),
        os_version: inventory.os_version.as_ref().map(ToString::to_string),
        arch: inventory.arch.to_string(),
        products: inventory.products.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect(),
        hardware_ids: inventory.hardware_ids.iter().map(ToString::to_string).collect(),
        installed_updates: inventory.installed_updates.iter().copied().collect(),
    }
}

fn token_info(token: &AdminToken) -> TokenInfo {
    TokenInfo {
        id: *token.id.as_uuid(),
        name: token.name.clone(),
        scope: match token.scope {
            custody_store::Scope::Read => Scope::Read,
            custody_store::Scope::Write => Scope::Write,
        },
        created_at: token.created_at,
        last_used_at: token.last_used,
        revoked_at: token.revoked_at,
    }
}

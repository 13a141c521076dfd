//! Device events between their wire form (custody-api, kebab-case, checked by `EventBatch::validate`) and their
//! stored form (custody-store). Both directions live here so that a new event type is mapped in one place.

use custody_api::FieldError;
use custody_api::device::{
    DeliveryStats, Event, EventType, Operation, RecoveryOutcome, RollbackReason, ScanResult, UpdateRef,
};
use custody_store::{EventId, EventKind};

use crate::device_api::store_error;
use crate::error::ApiError;

/// The stored form of a validated event; `at` is its path in the request (`events[3]`).
pub fn to_store(event: &Event, at: &str) -> Result<custody_store::Event, ApiError> {
    let missing = |field: &str| -> ApiError {
        // Invariant: `Event::validate` requires every field the type takes; reaching this is a bug.
        ApiError::internal(format!("{at}.{field} passed validation but is missing"))
    };
    let code = || event.code.ok_or_else(|| missing("code"));
    let kind = match event.kind {
        EventType::ScanFinished => EventKind::ScanFinished {
            result: match event.result.ok_or_else(|| missing("result"))? {
                ScanResult::Needed => custody_store::ScanResult::Needed,
                ScanResult::Installed => custody_store::ScanResult::Installed,
                ScanResult::NotApplicable => custody_store::ScanResult::NotApplicable,
            },
        },
        EventType::DownloadStarted => EventKind::DownloadStarted,
        EventType::DownloadSucceeded => EventKind::DownloadSucceeded,
        EventType::DownloadFailed => EventKind::DownloadFailed { code: code()? },
        EventType::InstallSucceeded => EventKind::InstallSucceeded,
        EventType::InstallFailed => EventKind::InstallFailed { code: code()? },
        EventType::RebootPending => EventKind::RebootPending,
        EventType::ScanFailed => EventKind::ScanFailed { code: code()? },
        EventType::Held => EventKind::Held,
        EventType::Unheld => EventKind::Unheld,
        EventType::RolledBack => EventKind::RolledBack {
            reason: match event.reason.ok_or_else(|| missing("reason"))? {
                RollbackReason::Manual => custody_store::RollbackReason::Manual,
                RollbackReason::HealthCheckFailed => custody_store::RollbackReason::HealthCheckFailed,
                RollbackReason::BootFailed => custody_store::RollbackReason::BootFailed,
            },
        },
        EventType::Recovered => EventKind::Recovered {
            operation: match event.operation.ok_or_else(|| missing("operation"))? {
                Operation::Install => custody_store::Operation::Install,
                Operation::OsInstall => custody_store::Operation::OsInstall,
                Operation::Rollback => custody_store::Operation::Rollback,
                Operation::OsRollback => custody_store::Operation::OsRollback,
                Operation::Uninstall => custody_store::Operation::Uninstall,
                Operation::OsConfirm => custody_store::Operation::OsConfirm,
            },
            outcome: match event.outcome.ok_or_else(|| missing("outcome"))? {
                RecoveryOutcome::Completed => custody_store::RecoveryOutcome::Completed,
                RecoveryOutcome::Undone => custody_store::RecoveryOutcome::Undone,
            },
        },
        EventType::Uninstalled => EventKind::Uninstalled,
    };
    let product = match &event.product {
        Some(product) => Some(product.parse().map_err(|e| FieldError::new(format!("{at}.product"), format!("{e}")))?),
        None => None,
    };
    Ok(custody_store::Event {
        id: EventId::new(event.id).map_err(store_error)?,
        kind,
        update: event.update.map(|u| custody_store::UpdateRef { id: u.id, revision: u.revision }),
        product,
        from: event.from.clone(),
        to: event.to.clone(),
        delivery: event.delivery.map(|d| {
            custody_store::Delivery::from_counts([
                d.from_http,
                d.from_cache_server,
                d.from_lan_peers,
                d.from_group_peers,
                d.from_internet_peers,
                d.to_peers,
            ])
        }),
        at: event.time,
        detail: event.detail.clone(),
    })
}

/// The wire form of a stored event; `None` for a kind this build does not know (custody-store's kinds may grow).
pub fn to_api(event: &custody_store::Event) -> Option<Event> {
    let parts = event.kind.parts();
    let kind = match event.kind {
        EventKind::ScanFinished { .. } => EventType::ScanFinished,
        EventKind::DownloadStarted => EventType::DownloadStarted,
        EventKind::DownloadSucceeded => EventType::DownloadSucceeded,
        EventKind::DownloadFailed { .. } => EventType::DownloadFailed,
        EventKind::InstallSucceeded => EventType::InstallSucceeded,
        EventKind::InstallFailed { .. } => EventType::InstallFailed,
        EventKind::RebootPending => EventType::RebootPending,
        EventKind::ScanFailed { .. } => EventType::ScanFailed,
        EventKind::Held => EventType::Held,
        EventKind::Unheld => EventType::Unheld,
        EventKind::RolledBack { .. } => EventType::RolledBack,
        EventKind::Recovered { .. } => EventType::Recovered,
        EventKind::Uninstalled => EventType::Uninstalled,
        _ => return None,
    };
    Some(Event {
        id: *event.id.as_uuid(),
        time: event.at,
        kind,
        update: event.update.map(|u| UpdateRef { id: u.id, revision: u.revision }),
        product: event.product.as_ref().map(ToString::to_string),
        result: parts.result.map(|result| match result {
            custody_store::ScanResult::Needed => ScanResult::Needed,
            custody_store::ScanResult::Installed => ScanResult::Installed,
            custody_store::ScanResult::NotApplicable => ScanResult::NotApplicable,
        }),
        code: parts.code,
        from: event.from.clone(),
        to: event.to.clone(),
        reason: parts.reason.map(|reason| match reason {
            custody_store::RollbackReason::Manual => RollbackReason::Manual,
            custody_store::RollbackReason::HealthCheckFailed => RollbackReason::HealthCheckFailed,
            custody_store::RollbackReason::BootFailed => RollbackReason::BootFailed,
        }),
        operation: parts.operation.map(|operation| match operation {
            custody_store::Operation::Install => Operation::Install,
            custody_store::Operation::OsInstall => Operation::OsInstall,
            custody_store::Operation::Rollback => Operation::Rollback,
            custody_store::Operation::OsRollback => Operation::OsRollback,
            custody_store::Operation::Uninstall => Operation::Uninstall,
            custody_store::Operation::OsConfirm => Operation::OsConfirm,
        }),
        outcome: parts.outcome.map(|outcome| match outcome {
            custody_store::RecoveryOutcome::Completed => RecoveryOutcome::Completed,
            custody_store::RecoveryOutcome::Undone => RecoveryOutcome::Undone,
        }),
        delivery: event.delivery.map(|d| delivery_stats(&d)),
        detail: event.detail.clone(),
    })
}

/// The wire form of stored delivery statistics.
pub fn delivery_stats(delivery: &custody_store::Delivery) -> DeliveryStats {
    let [from_http, from_cache_server, from_lan_peers, from_group_peers, from_internet_peers, to_peers] =
        delivery.counts();
    DeliveryStats { from_http, from_cache_server, from_lan_peers, from_group_peers, from_internet_peers, to_peers }
}

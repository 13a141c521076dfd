//! The agent's operations on one device: scan, decide, download, install, hold, roll back, and what it reports.
//!
//! Mutating operations (scan, download, install, rollback, hold) run one at a time (the work lock); status, list and
//! history read what the last operation left and never wait for a download. Every state change is queued as an event
//! for the service and broadcast to local subscribers.

use custody_api::device::{
    DeliveryStats, Event, EventType, Operation, RecoveryOutcome, RollbackReason, ScanResult, UpdateRef,
};
use custody_catalog::{DeviceInventory, ProductName, Reboot, UpdateId};
use custody_client::{FetchError, Fetcher, FileFetcher, HttpFetcher, Updater, UpdaterConfig};
use custody_install::{HistoryEvent, Installer, OsBoot, Recovered, UpdateKey, VerifiedArtifact};
use custody_policy::{Decision, Holds, Progress, Trigger, UpdateFacts};
use custody_tls::ProxySettings;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::download::{Downloader, Job};
use crate::evaluate::{Needed, Rejected, SkipReason, Skipped, UpdateSummary};
use crate::inventory::Installed;
use crate::local_api::{HoldTarget, Op};
use crate::report::{Reporter, new_event, with_error};
use crate::state::{StateDir, read_json, write_json};
use crate::{Error, evaluate, inventory};

/// A cached scan older than this is refreshed before a download or install acts on it.
const SCAN_REUSE: jiff::SignedDuration = jiff::SignedDuration::from_mins(10);
/// Downloads listed in `status` (`last_downloads`), newest first.
const LAST_DOWNLOADS: usize = 10;
/// The error code of an install that a crash interrupted and recovery undid (`EINTR`).
const INTERRUPTED: i64 = libc::EINTR as i64;

/// Which needed updates an operation concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    Update(UpdateId),
    Product(ProductName),
}

/// The device agent.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    state: StateDir,
    /// `state.downloads()`, kept for borrowing.
    downloads: std::path::PathBuf,
    metadata: MetadataSource,
    downloader: Downloader,
    /// Peer-to-peer delivery, when `[p2p]` is configured.
    p2p: Option<crate::p2p::P2p>,
    reporter: Reporter,
    tz: jiff::tz::TimeZone,
    /// Held by mutating operations; holds the install engine.
    work: tokio::sync::Mutex<Installer>,
    /// Set when the daemon stops: operations that change state are refused from then on.
    closing: std::sync::atomic::AtomicBool,
    /// The last scan's needed updates with their signed targets (not persisted: re-derived by a scan).
    needed: std::sync::Mutex<Option<(Timestamp, Vec<Needed>, bool)>>,
    /// What `status` shows; persisted in status.json.
    status: std::sync::Mutex<AgentStatus>,
    events: broadcast::Sender<AgentEvent>,
}

/// Where signed metadata comes from.
#[derive(Debug, Clone)]
enum MetadataSource {
    Https(HttpFetcher),
    File(FileFetcher),
}

/// The agent's status (`custody agent status`, local API `status`), kept in status.json.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    #[serde(default)]
    pub last_scan: Option<ScanOutcome>,
    /// When the daemon scans next (absent when no daemon runs).
    #[serde(default)]
    pub next_scan: Option<Timestamp>,
    /// When the next maintenance window opens, if an install waits for it.
    #[serde(default)]
    pub next_window: Option<Timestamp>,
    /// Installed updates that take effect after a reboot.
    #[serde(default)]
    pub reboot_pending: Vec<UpdateSummary>,
    /// The last failure of a scheduled operation, if the last attempt failed.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The kernel's boot id when this status was written (a new one clears `reboot_pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// What the install engine recovered the last time it found an interrupted operation at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recovery: Option<Recovered>,
    /// Where this device's downloads came from, summed since its state was created.
    #[serde(default)]
    pub delivery: DeliveryTotals,
    /// The latest downloads and where their bytes came from, newest first.
    #[serde(default)]
    pub last_downloads: Vec<DownloadRecord>,
    /// A cache server's index and counters (`[p2p] cache_server`), as the running agent has them (not persisted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_server: Option<crate::p2p::CacheServerStatus>,
}

/// Delivery statistics summed over downloads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryTotals {
    pub downloads: u64,
    pub bytes: DeliveryStats,
    /// Bytes from peers / bytes downloaded * 100.
    pub percent_peer_caching: f64,
}

/// One download and where its bytes came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DownloadRecord {
    pub time: Timestamp,
    pub update: UpdateId,
    pub product: String,
    pub version: String,
    pub delivery: DeliveryStats,
    pub percent_peer_caching: f64,
}

/// The result of a scan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanOutcome {
    pub time: Timestamp,
    /// The product scanned alone, if the scan was for one product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The products whose updates were listed.
    pub products: Vec<String>,
    pub needed: Vec<UpdateSummary>,
    pub skipped: Vec<Skipped>,
    pub rejected: Vec<Rejected>,
}

/// What happened to one update in an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallOutcome {
    pub update: UpdateSummary,
    /// `installed`, `downloaded`, `held`, `notify`, `awaiting-approval`, `waiting-for-window`,
    /// `waiting-for-prerequisite`, `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default)]
    pub reboot_required: bool,
}

/// One line of `history`: a product's install engine event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryLine {
    pub product: String,
    #[serde(flatten)]
    pub event: HistoryEvent,
}

/// Something that happened, for local subscribers (docs/local-api.md, "Events").
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    ScanStarted {
        product: Option<String>,
    },
    ScanFinished {
        product: Option<String>,
        needed: usize,
    },
    ScanFailed {
        product: Option<String>,
        error: String,
    },
    DownloadProgress {
        update: UpdateId,
        product: String,
        received: u64,
        total: u64,
        source: String,
    },
    Downloaded {
        update: UpdateId,
        product: String,
        delivery: DeliveryStats,
    },
    DownloadFailed {
        update: UpdateId,
        product: String,
        error: String,
    },
    Installing {
        update: UpdateId,
        product: String,
    },
    Installed {
        update: UpdateId,
        product: String,
        reboot_required: bool,
    },
    InstallFailed {
        update: UpdateId,
        product: String,
        error: String,
    },
    /// `reason`: `manual`, `health-check-failed` or `boot-failed`.
    RolledBack {
        product: String,
        from: String,
        to: String,
        reason: RollbackReason,
    },
    /// An update (`update`) or a product (`product`) is held now.
    Held {
        update: Option<UpdateId>,
        product: Option<String>,
    },
    Unheld {
        update: Option<UpdateId>,
        product: Option<String>,
    },
    /// At start: an operation a crash interrupted, finished or undone; `current` is the version in use now.
    Recovered {
        product: String,
        operation: Operation,
        outcome: RecoveryOutcome,
        version: String,
        current: Option<String>,
    },
    /// A new OS image booted and passed its check.
    OsConfirmed {
        product: String,
        version: String,
    },
    Uninstalled {
        product: String,
        version: String,
    },
}

impl AgentEvent {
    /// The product the event concerns, if any (subscribers only see their products' events).
    pub fn product(&self) -> Option<&str> {
        match self {
            Self::ScanStarted { product } | Self::ScanFinished { product, .. } | Self::ScanFailed { product, .. } => {
                product.as_deref()
            }
            Self::Held { product, .. } | Self::Unheld { product, .. } => product.as_deref(),
            Self::DownloadProgress { product, .. }
            | Self::Downloaded { product, .. }
            | Self::DownloadFailed { product, .. }
            | Self::Installing { product, .. }
            | Self::Installed { product, .. }
            | Self::InstallFailed { product, .. }
            | Self::RolledBack { product, .. }
            | Self::Recovered { product, .. }
            | Self::OsConfirmed { product, .. }
            | Self::Uninstalled { product, .. } => Some(product),
        }
    }
}

impl Agent {
    /// Opens the agent on its configuration: state directory (created), trusted root (seeded), HTTP clients, report
    /// queue, install engine (locked). Call [`Agent::recover`] next, before any other operation, so that an install
    /// interrupted by a crash or power loss is finished or undone first.
    pub fn open(config: AgentConfig) -> Result<Self, Error> {
        let state = StateDir::new(&config.agent.state_dir);
        state.create()?;
        Self::seed_root(&config, &state)?;
        let proxy = config.transport.proxy_settings(ProxySettings::from_process_env)?;
        let metadata_url = config.metadata_url();
        let pinned = match &config.transport.tls {
            Some(_) => Some(config.transport.tls_client()?.http_client(&proxy)?),
            None => None,
        };
        let metadata = match (metadata_url.starts_with("file://"), &pinned) {
            (true, _) => MetadataSource::File(FileFetcher),
            (false, Some(client)) => MetadataSource::Https(HttpFetcher::new(client.clone(), config.request_timeout())),
            (false, None) => {
                return Err(Error::Config {
                    path: config.path.clone(),
                    detail: "[tls] is required: metadata comes over pinned HTTPS".into(),
                });
            }
        };
        let plain = custody_tls::plain_http_client(&proxy)?;
        let downloader = Downloader::new(
            plain.clone(),
            pinned.clone(),
            config.content_sources(),
            config.request_timeout(),
            config.idle_timeout(),
        );
        let p2p = crate::p2p::P2p::open(&config, &state, plain.clone(), pinned.clone())?;
        let report_client = match config.api_url().starts_with("https://") {
            true => pinned.clone().unwrap_or(plain),
            false => plain,
        };
        let token = match &config.agent.device_token_file {
            Some(path) => {
                Some(std::fs::read_to_string(path).map_err(Error::io("read the device token", path))?.trim().to_owned())
            }
            None => None,
        };
        let reporter =
            Reporter::open(&state.reports(), report_client, config.api_url(), token, config.request_timeout())?;
        let installer =
            Installer::with_options(&state.install(), config.install_options()).map_err(Error::from_install)?;
        let tz = config.time_zone()?;
        let mut status = read_json::<AgentStatus>(&state.status_file())?.unwrap_or_default();
        // A reboot happened since updates asked for one: they have taken effect.
        let boot = std::fs::read_to_string(&config.agent.boot_id_file).ok().map(|id| id.trim().to_owned());
        if status.boot_id != boot {
            status.reboot_pending.clear();
            status.boot_id = boot;
        }
        let (events, _) = broadcast::channel(1024);
        let agent = Self {
            config,
            downloads: state.downloads(),
            state,
            metadata,
            downloader,
            p2p,
            reporter,
            tz,
            work: tokio::sync::Mutex::new(installer),
            closing: std::sync::atomic::AtomicBool::new(false),
            needed: std::sync::Mutex::new(None),
            status: std::sync::Mutex::new(status),
            events,
        };
        Ok(agent)
    }

    /// Peer-to-peer delivery, when configured (the daemon starts its listener).
    pub fn p2p(&self) -> Option<&crate::p2p::P2p> {
        self.p2p.as_ref()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Copies the shipped root into the metadata directory the first time.
    fn seed_root(config: &AgentConfig, state: &StateDir) -> Result<(), Error> {
        let root = state.metadata().join("root.json");
        if root.exists() {
            return Ok(());
        }
        let Some(shipped) = &config.agent.trusted_root else {
            return Err(Error::Config {
                path: config.path.clone(),
                detail: format!(
                    "no trusted root: set [agent] trusted_root to the root metadata shipped with the device, or put \
                     it at {}",
                    root.display()
                ),
            });
        };
        let bytes = std::fs::read(shipped).map_err(Error::io("read the trusted root", shipped))?;
        crate::state::write_atomic(&root, &bytes)
    }

    /// Runs recovery of an interrupted install, then confirms (or gives up) a new OS image after its reboot,
    /// before the first operation of a daemon or a CLI command. Reports what it found (a `recovered` event, and
    /// what the recovered operation amounts to) and sends the reports at once, best effort.
    pub async fn recover(&self) -> Result<(), Error> {
        let mut installer = self.work.lock().await;
        let recovered = installer.recover().map_err(Error::from_install)?;
        if let Some(recovered) = &recovered {
            info!(operation = %recovered.operation, product = recovered.product, outcome = ?recovered.outcome, "recovered an interrupted operation");
            self.report_recovery(recovered);
            self.update_status(|status| status.last_recovery = Some(recovered.clone()))?;
        }
        let booted = installer.check_os_boot(self.config.booted_slot()).map_err(Error::from_install)?;
        if let Some(boot) = &booted {
            self.report_os_boot(boot);
        }
        drop(installer);
        if recovered.is_some() || matches!(booted, Some(OsBoot::Confirmed { .. } | OsBoot::Failed { .. })) {
            self.flush_reports().await;
        }
        Ok(())
    }

    /// Reports a recovered operation: `recovered` itself, then the event its outcome amounts to (an install
    /// finished or undone, a rollback or an uninstall that took place).
    fn report_recovery(&self, recovered: &Recovered) {
        use custody_install::Operation as Op;
        let update = recovered.update.map(update_ref);
        let operation = match recovered.operation {
            Op::Install => Operation::Install,
            Op::OsInstall => Operation::OsInstall,
            Op::Rollback => Operation::Rollback,
            Op::OsRollback => Operation::OsRollback,
            Op::Uninstall => Operation::Uninstall,
            Op::OsConfirm => Operation::OsConfirm,
        };
        let outcome = match recovered.outcome {
            custody_install::RecoveryOutcome::Completed => RecoveryOutcome::Completed,
            custody_install::RecoveryOutcome::Undone { .. } => RecoveryOutcome::Undone,
        };
        let version = Some(recovered.version.clone()).filter(|v| !v.is_empty());
        self.report(Event {
            update,
            product: Some(recovered.product.clone()),
            operation: Some(operation),
            outcome: Some(outcome),
            from: version.clone(),
            to: recovered.current.clone(),
            ..new_event(EventType::Recovered)
        });
        self.emit(AgentEvent::Recovered {
            product: recovered.product.clone(),
            operation,
            outcome,
            version: recovered.version.clone(),
            current: recovered.current.clone(),
        });
        let product = Some(recovered.product.clone());
        match (recovered.operation, outcome, update) {
            (Op::Install | Op::OsInstall, RecoveryOutcome::Undone, Some(update)) => {
                let detail =
                    "interrupted by a crash or power loss; the previous version was restored at the next start";
                self.report(Event {
                    update: Some(update),
                    code: Some(INTERRUPTED),
                    detail: detail.into(),
                    ..new_event(EventType::InstallFailed)
                });
            }
            (Op::Install | Op::OsConfirm, _, Some(update)) => {
                self.report(Event { update: Some(update), ..new_event(EventType::InstallSucceeded) });
            }
            (Op::OsInstall, _, Some(update)) => {
                self.report(Event { update: Some(update), ..new_event(EventType::InstallSucceeded) });
                self.report(Event { update: Some(update), ..new_event(EventType::RebootPending) });
            }
            (Op::Rollback | Op::OsRollback, _, _) => {
                let Some(to) = recovered.current.clone() else { return };
                let reason = match recovered.boot_failure {
                    Some(_) => RollbackReason::BootFailed,
                    None => RollbackReason::Manual,
                };
                self.report(Event {
                    update,
                    product,
                    from: version,
                    to: Some(to),
                    reason: Some(reason),
                    detail: recovered.boot_failure.as_deref().map(crate::report::detail).unwrap_or_default(),
                    ..new_event(EventType::RolledBack)
                });
            }
            (Op::Uninstall, _, _) if version.is_some() => {
                self.report(Event { update, product, from: version, ..new_event(EventType::Uninstalled) });
            }
            _ => {}
        }
    }

    /// Reports what the boot check decided about a new OS image: confirmed (installed), or given up.
    fn report_os_boot(&self, boot: &OsBoot) {
        match boot {
            OsBoot::RebootPending { product, version } => {
                info!(%product, %version, "the new OS image waits for a reboot");
            }
            OsBoot::Confirmed { product, version, update } => {
                info!(%product, %version, "the new OS image booted and is confirmed");
                if let Some(update) = update {
                    self.report(Event { update: Some(update_ref(*update)), ..new_event(EventType::InstallSucceeded) });
                }
                self.emit(AgentEvent::OsConfirmed { product: product.clone(), version: version.clone() });
            }
            OsBoot::Failed { product, version, update, restored, reason } => {
                warn!(%product, %version, ?restored, "the new OS image was given up: {reason}");
                let update = update.map(update_ref);
                match restored {
                    Some(restored) => {
                        self.report(Event {
                            update,
                            product: Some(product.clone()),
                            from: Some(version.clone()),
                            to: Some(restored.clone()),
                            reason: Some(RollbackReason::BootFailed),
                            detail: crate::report::detail(reason),
                            ..new_event(EventType::RolledBack)
                        });
                        self.emit(AgentEvent::RolledBack {
                            product: product.clone(),
                            from: version.clone(),
                            to: restored.clone(),
                            reason: RollbackReason::BootFailed,
                        });
                    }
                    // Nothing to go back to: the image stays, and its install counts as failed.
                    None => {
                        if update.is_some() {
                            self.report(Event {
                                update,
                                code: Some(1),
                                detail: crate::report::detail(reason),
                                ..new_event(EventType::InstallFailed)
                            });
                        }
                    }
                }
            }
        }
    }

    /// Handles one local API operation (the caller checked permissions).
    pub async fn handle(&self, op: Op) -> Result<Value, Error> {
        let changes_state = !matches!(op, Op::Status | Op::List { .. } | Op::Subscribe);
        if changes_state && self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Refused("the agent is shutting down".into()));
        }
        match op {
            Op::Status => to_json(&self.status()),
            Op::Scan { product } => to_json(&self.scan(product.as_ref()).await?),
            Op::List { all } => Ok(self.list(all)),
            Op::Download { selection } => to_json(&self.download(&selection).await?),
            Op::Install { selection } => to_json(&self.install(&selection, Trigger::InstallNow).await?),
            Op::History { product } => to_json(&self.history(product.as_ref()).await?),
            Op::Rollback { product } => self.rollback(&product).await,
            Op::Hold { target } => to_json(&self.hold(target, true).await?),
            Op::Unhold { target } => to_json(&self.hold(target, false).await?),
            Op::Uninstall { product } => self.uninstall(&product).await,
            // Handled by the connection.
            Op::Subscribe => Ok(json!({ "subscribed": true })),
        }
    }

    /// The product of a needed update of the last scan.
    pub fn product_of(&self, id: &UpdateId) -> Option<String> {
        let needed = self.lock_needed();
        let (_, list, _) = needed.as_ref()?;
        list.iter().find(|n| n.entry.id() == *id).map(|n| n.entry.product().to_string())
    }

    pub fn status(&self) -> AgentStatus {
        let mut status = self.lock_status().clone();
        status.cache_server = self.p2p.as_ref().and_then(crate::p2p::P2p::cache_server_status);
        status
    }

    /// The last scan's needed updates; with `all`, also the skipped and rejected ones.
    pub fn list(&self, all: bool) -> Value {
        let status = self.lock_status();
        let Some(scan) = &status.last_scan else {
            return json!({ "scanned": null, "needed": [] });
        };
        let mut value = json!({ "scanned": scan.time, "needed": scan.needed });
        if all {
            value["skipped"] = json!(scan.skipped);
            value["rejected"] = json!(scan.rejected);
        }
        value
    }

    /// Refreshes the signed metadata and evaluates what the device needs, for one product or all it has or wants.
    pub async fn scan(&self, product: Option<&ProductName>) -> Result<ScanOutcome, Error> {
        let installer = self.work.lock().await;
        self.scan_locked(&installer, product).await
    }

    async fn scan_locked(&self, installer: &Installer, product: Option<&ProductName>) -> Result<ScanOutcome, Error> {
        let product_name = product.map(|p| p.to_string());
        self.emit(AgentEvent::ScanStarted { product: product_name.clone() });
        let result = self.scan_inner(installer, product).await;
        match &result {
            Ok((outcome, _)) => {
                self.report_scan(outcome);
                self.emit(AgentEvent::ScanFinished { product: product_name, needed: outcome.needed.len() });
            }
            Err(e) => {
                warn!("scan failed: {}", crate::error_chain(e));
                self.report(with_error(Event { product: product_name.clone(), ..new_event(EventType::ScanFailed) }, e));
                self.emit(AgentEvent::ScanFailed { product: product_name, error: crate::error_chain(e) });
            }
        }
        let (outcome, device) = result?;
        if let Err(e) = self.reporter.send_inventory(&device).await {
            info!("inventory not sent (sent again after the next scan): {e}");
        }
        self.flush_reports().await;
        Ok(outcome)
    }

    async fn scan_inner(
        &self,
        installer: &Installer,
        product: Option<&ProductName>,
    ) -> Result<(ScanOutcome, DeviceInventory), Error> {
        let device = self.inventory(installer)?;
        let products: Vec<ProductName> = match product {
            Some(p) => vec![p.clone()],
            None => {
                let mut all: BTreeSet<ProductName> = device.products.keys().cloned().collect();
                all.extend(self.config.wanted_products());
                all.into_iter().collect()
            }
        };
        let now = Timestamp::now();
        let (targets, consistent) = match &self.metadata {
            MetadataSource::Https(fetcher) => self.list_targets(fetcher.clone(), &products, now).await?,
            MetadataSource::File(fetcher) => self.list_targets(*fetcher, &products, now).await?,
        };
        let evaluated = evaluate::evaluate(&device, targets);
        for rejected in &evaluated.rejected {
            warn!(path = rejected.path, "refused catalog entry: {}", rejected.problem);
        }
        let outcome = ScanOutcome {
            time: now,
            product: product.map(|p| p.to_string()),
            products: products.iter().map(|p| p.to_string()).collect(),
            needed: evaluated.needed.iter().map(Needed::summary).collect(),
            skipped: evaluated.skipped,
            rejected: evaluated.rejected,
        };
        info!(products = products.len(), needed = outcome.needed.len(), "scan finished");
        {
            let mut needed = self.lock_needed();
            // A one-product scan replaces that product's part of the cached list only.
            let mut list = match (product, needed.take()) {
                (Some(p), Some((_, mut old, _))) => {
                    old.retain(|n| n.entry.product() != p);
                    old
                }
                _ => Vec::new(),
            };
            list.extend(evaluated.needed);
            *needed = Some((now, list, consistent));
        }
        self.update_status(|status| {
            let merged = match (product, status.last_scan.take()) {
                (Some(p), Some(mut old)) => {
                    old.needed.retain(|n| n.product != p.as_str());
                    old.needed.extend(outcome.needed.iter().cloned());
                    old.skipped.retain(|n| n.product != p.as_str());
                    old.skipped.extend(outcome.skipped.iter().cloned());
                    old.rejected.extend(outcome.rejected.iter().cloned());
                    old.time = outcome.time;
                    old
                }
                _ => outcome.clone(),
            };
            status.last_scan = Some(merged);
            status.last_error = None;
        })?;
        Ok((outcome, device))
    }

    /// Refreshes and lists the targets of `products`; also says whether target files are named by hash.
    async fn list_targets<F: Fetcher>(
        &self,
        fetcher: F,
        products: &[ProductName],
        now: Timestamp,
    ) -> Result<(Vec<custody_tuf::TrustedTarget>, bool), Error> {
        let config = UpdaterConfig {
            metadata_dir: self.state.metadata(),
            metadata_url: self.config.metadata_url(),
            limits: Default::default(),
            snapshot_proofs: self.config.agent.snapshot_proofs,
        };
        let mut updater = Updater::new(config, fetcher, now)?;
        updater.refresh().await?;
        let mut targets = Vec::new();
        for product in products {
            match updater.list_targets(product.as_str()).await {
                Ok(list) => targets.extend(list),
                // A product the repository does not know (yet) has no updates.
                Err(custody_client::Error::Metadata(custody_tuf::Error::NotInSnapshot(role))) => {
                    info!(product = %product, role, "no role for this product in the repository");
                }
                Err(custody_client::Error::Fetch(FetchError::Status { status: 404, .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok((targets, updater.trusted().root().consistent_snapshot()))
    }

    /// The device's inventory now.
    fn inventory(&self, installer: &Installer) -> Result<DeviceInventory, Error> {
        let mut installed = Installed::default();
        for product in installed_products(installer)? {
            for version in installer.versions(&product).map_err(Error::from_install)? {
                if let Ok(id) = version.update_id.parse() {
                    installed.updates.insert(id);
                }
                if version.current {
                    let parsed = version.version.parse().map_err(|e| Error::Corrupt {
                        path: installer.state_dir().to_owned(),
                        detail: format!("installed {product} has version {:?}: {e}", version.version),
                    })?;
                    installed.products.insert(product.clone(), parsed);
                }
            }
        }
        inventory::collect(&self.config, installed)
    }

    /// The needed updates of `selection`, from a recent scan or a new one.
    async fn selected(&self, installer: &Installer, selection: &Selection) -> Result<(Vec<Needed>, bool), Error> {
        let fresh = {
            let needed = self.lock_needed();
            needed.as_ref().filter(|(time, _, _)| Timestamp::now().duration_since(*time) < SCAN_REUSE).cloned()
        };
        let (list, consistent) = match fresh {
            Some((_, list, consistent)) => (list, consistent),
            None => {
                let product = match selection {
                    Selection::Product(p) => Some(p),
                    _ => None,
                };
                self.scan_locked(installer, product).await?;
                let needed = self.lock_needed();
                let (_, list, consistent) = needed.as_ref().cloned().unwrap_or_default();
                (list, consistent)
            }
        };
        let chosen: Vec<Needed> = list
            .into_iter()
            .filter(|n| match selection {
                Selection::All => true,
                Selection::Update(id) => n.entry.id() == *id,
                Selection::Product(p) => n.entry.product() == p,
            })
            .collect();
        if let (Selection::Update(id), true) = (selection, chosen.is_empty()) {
            return Err(Error::UnknownUpdate(id.to_string()));
        }
        Ok((chosen, consistent))
    }

    /// Downloads (and verifies) the selected needed updates, whatever the policy says; holds still apply.
    pub async fn download(&self, selection: &Selection) -> Result<Vec<InstallOutcome>, Error> {
        let installer = self.work.lock().await;
        let (chosen, consistent) = self.selected(&installer, selection).await?;
        let device = self.inventory(&installer)?;
        let holds = self.state.load_holds()?;
        let mut outcomes = Vec::new();
        for needed in &chosen {
            if let Some(held) = held(&holds, needed) {
                outcomes.push(outcome(needed, "held", Some(held), false));
                continue;
            }
            match self.fetch(needed, &device, consistent).await {
                Ok(_) => outcomes.push(outcome(needed, "downloaded", None, false)),
                Err(e) => outcomes.push(outcome(needed, "failed", Some(crate::error_chain(&e)), false)),
            }
        }
        self.flush_reports().await;
        Ok(outcomes)
    }

    /// Carries out the policy for the selected needed updates: under `Trigger::Scheduled` each update's mode and the
    /// maintenance windows decide; under `Trigger::InstallNow` the updates are downloaded and installed now (holds
    /// still apply).
    pub async fn install(&self, selection: &Selection, trigger: Trigger) -> Result<Vec<InstallOutcome>, Error> {
        let mut installer = self.work.lock().await;
        let (chosen, consistent) = self.selected(&installer, selection).await?;
        let holds = self.state.load_holds()?;
        let mut outcomes = Vec::new();
        let mut next_window: Option<Timestamp> = None;
        for needed in &chosen {
            let device = self.inventory(&installer)?;
            let waiting = needed.after.iter().find(|id| !device.installed_updates.contains(id));
            if let Some(prerequisite) = waiting {
                let detail = format!("waits for prerequisite {prerequisite} to be installed first");
                outcomes.push(outcome(needed, "waiting-for-prerequisite", Some(detail), false));
                continue;
            }
            let result = self.carry_out(&mut installer, needed, &device, &holds, trigger, consistent).await;
            if let (true, Some(opens)) = (result.result == "waiting-for-window", &result.detail)
                && let Ok(opens) = opens.parse::<Timestamp>()
            {
                next_window = Some(next_window.map_or(opens, |w| w.min(opens)));
            }
            outcomes.push(result);
        }
        let pending: Vec<UpdateSummary> = outcomes
            .iter()
            .filter(|o| o.reboot_required && o.result == "installed")
            .map(|o| o.update.clone())
            .collect();
        self.update_status(|status| {
            status.next_window = next_window;
            status.reboot_pending.extend(pending);
            // What was installed is no longer needed.
            if let Some(scan) = status.last_scan.as_mut() {
                let installed: BTreeSet<UpdateId> =
                    outcomes.iter().filter(|o| o.result == "installed").map(|o| o.update.id).collect();
                scan.needed.retain(|n| !installed.contains(&n.id));
            }
        })?;
        {
            let installed: BTreeSet<UpdateId> =
                outcomes.iter().filter(|o| o.result == "installed").map(|o| o.update.id).collect();
            if let Some((_, list, _)) = self.lock_needed().as_mut() {
                list.retain(|n| !installed.contains(&n.entry.id()));
            }
        }
        self.flush_reports().await;
        Ok(outcomes)
    }

    /// Decides and acts for one update.
    async fn carry_out(
        &self,
        installer: &mut Installer,
        needed: &Needed,
        device: &DeviceInventory,
        holds: &Holds,
        trigger: Trigger,
        consistent: bool,
    ) -> InstallOutcome {
        let entry = &needed.entry;
        let facts = UpdateFacts { id: entry.id(), product: entry.product().as_str(), kind: entry.kind() };
        let job = self.job(needed, device, consistent);
        let progress = match job.partial_complete() {
            true => Progress::Downloaded,
            false => Progress::Needed,
        };
        let decide = |progress| self.config.policy.decide(facts, holds, progress, trigger, Timestamp::now(), &self.tz);
        let mut decision = decide(progress);
        let mut artifact = None;
        if decision == Decision::Download {
            match self.fetch(needed, device, consistent).await {
                Ok(verified) => artifact = Some(verified),
                Err(e) => return outcome(needed, "failed", Some(crate::error_chain(&e)), false),
            }
            decision = decide(Progress::Downloaded);
        }
        match decision {
            Decision::Held(_) => outcome(needed, "held", held(holds, needed), false),
            Decision::Notify => outcome(needed, "notify", None, false),
            Decision::AwaitApproval => outcome(needed, "awaiting-approval", None, false),
            Decision::WaitForWindow { opens } => outcome(needed, "waiting-for-window", Some(opens.to_string()), false),
            Decision::Download => outcome(needed, "downloaded", None, false),
            Decision::Install => {
                let artifact = match artifact {
                    Some(artifact) => artifact,
                    None => match self.fetch(needed, device, consistent).await {
                        Ok(artifact) => artifact,
                        Err(e) => return outcome(needed, "failed", Some(crate::error_chain(&e)), false),
                    },
                };
                self.install_artifact(installer, needed, artifact)
            }
        }
    }

    /// Hands a verified artifact to the install engine and reports the result.
    fn install_artifact(
        &self,
        installer: &mut Installer,
        needed: &Needed,
        artifact: VerifiedArtifact,
    ) -> InstallOutcome {
        let entry = &needed.entry;
        let (update, product) = (entry.id(), entry.product().to_string());
        self.emit(AgentEvent::Installing { update, product: product.clone() });
        match installer.install(artifact) {
            Ok(installed) => {
                let reboot_required = installed.reboot == Reboot::Required;
                self.report(update_event(EventType::InstallSucceeded, needed));
                if reboot_required {
                    self.report(update_event(EventType::RebootPending, needed));
                }
                self.emit(AgentEvent::Installed { update, product, reboot_required });
                outcome(needed, "installed", None, reboot_required)
            }
            Err(e) => {
                // A failed health check restored the previous version: a rollback too.
                let restored = match &e {
                    custody_install::Error::HealthCheckFailed { version, restored: Some(restored), .. } => {
                        Some((version.clone(), restored.clone()))
                    }
                    _ => None,
                };
                let error = Error::from_install(e);
                warn!(%update, "install failed: {}", crate::error_chain(&error));
                self.report(with_error(update_event(EventType::InstallFailed, needed), &error));
                if let Some((from, to)) = restored {
                    self.report(Event {
                        product: Some(product.clone()),
                        from: Some(from.clone()),
                        to: Some(to.clone()),
                        reason: Some(RollbackReason::HealthCheckFailed),
                        ..update_event(EventType::RolledBack, needed)
                    });
                    let reason = RollbackReason::HealthCheckFailed;
                    self.emit(AgentEvent::RolledBack { product: product.clone(), from, to, reason });
                }
                self.emit(AgentEvent::InstallFailed { update, product, error: crate::error_chain(&error) });
                outcome(needed, "failed", Some(crate::error_chain(&error)), false)
            }
        }
    }

    /// Downloads and verifies one update, reporting start, progress and the result.
    async fn fetch(
        &self,
        needed: &Needed,
        device: &DeviceInventory,
        consistent: bool,
    ) -> Result<VerifiedArtifact, Error> {
        let entry = &needed.entry;
        let (update, product) = (entry.id(), entry.product().to_string());
        let job = self.job(needed, device, consistent);
        if !job.partial_complete() {
            self.report(update_event(EventType::DownloadStarted, needed));
        }
        let events = self.events.clone();
        let mut on_progress = |p: &crate::download::Progress| {
            let _ = events.send(AgentEvent::DownloadProgress {
                update,
                product: product.clone(),
                received: p.received,
                total: p.total,
                source: p.source.clone(),
            });
        };
        let fetched = match &self.p2p {
            Some(p2p) if p2p.takes(&job) => p2p.fetch(job, self.downloader.sources()).await,
            _ => self.downloader.fetch_counted(job, &mut on_progress).await,
        };
        match fetched {
            Ok(fetched) => {
                let delivery = fetched.delivery;
                self.report(Event { delivery: Some(delivery), ..update_event(EventType::DownloadSucceeded, needed) });
                let record = DownloadRecord {
                    time: Timestamp::now(),
                    update,
                    product: product.clone(),
                    version: entry.version().to_string(),
                    delivery,
                    percent_peer_caching: delivery.percent_peer_caching(),
                };
                let noted = self.update_status(|status| {
                    status.delivery.downloads += 1;
                    status.delivery.bytes += delivery;
                    status.delivery.percent_peer_caching = status.delivery.bytes.percent_peer_caching();
                    status.last_downloads.insert(0, record);
                    status.last_downloads.truncate(LAST_DOWNLOADS);
                });
                if let Err(e) = noted {
                    warn!("cannot record the download in the status: {e}");
                }
                self.emit(AgentEvent::Downloaded { update, product, delivery });
                Ok(fetched.artifact)
            }
            Err(e) => {
                warn!(%update, "download failed: {}", crate::error_chain(&e));
                self.report(with_error(update_event(EventType::DownloadFailed, needed), &e));
                self.emit(AgentEvent::DownloadFailed { update, product, error: crate::error_chain(&e) });
                Err(e)
            }
        }
    }

    fn job<'a>(&'a self, needed: &'a Needed, device: &'a DeviceInventory, consistent: bool) -> Job<'a> {
        Job {
            target: &needed.target,
            entry: &needed.entry,
            device,
            staging_dir: &self.downloads,
            consistent_snapshot: consistent,
        }
    }

    /// The install history of one product or of every installed product, oldest first within a product.
    pub async fn history(&self, product: Option<&ProductName>) -> Result<Vec<HistoryLine>, Error> {
        let installer = self.work.lock().await;
        let products = match product {
            Some(p) => vec![p.clone()],
            None => installed_products(&installer)?,
        };
        let mut lines = Vec::new();
        for product in products {
            for event in installer.history(&product).map_err(Error::from_install)? {
                lines.push(HistoryLine { product: product.to_string(), event });
            }
        }
        Ok(lines)
    }

    /// Goes back to the previous version of `product`.
    pub async fn rollback(&self, product: &ProductName) -> Result<Value, Error> {
        let mut installer = self.work.lock().await;
        let outcome = installer.rollback(product).map_err(Error::from_install)?;
        info!(%product, from = outcome.from, to = outcome.to, "rolled back");
        self.report(Event {
            update: outcome.update.map(update_ref),
            product: Some(product.to_string()),
            from: Some(outcome.from.clone()),
            to: Some(outcome.to.clone()),
            reason: Some(RollbackReason::Manual),
            ..new_event(EventType::RolledBack)
        });
        self.emit(AgentEvent::RolledBack {
            product: product.to_string(),
            from: outcome.from.clone(),
            to: outcome.to.clone(),
            reason: RollbackReason::Manual,
        });
        if let Some(update) = outcome.update {
            self.forget_scan_result(update.id);
        }
        *self.lock_needed() = None;
        drop(installer);
        self.flush_reports().await;
        Ok(json!({ "product": product.as_str(), "from": outcome.from, "to": outcome.to }))
    }

    /// Removes `product`: its destination link and every kept version (not the OS).
    pub async fn uninstall(&self, product: &ProductName) -> Result<Value, Error> {
        let mut installer = self.work.lock().await;
        let removed = installer.uninstall(product).map_err(Error::from_install)?;
        info!(%product, version = removed.version, "uninstalled");
        self.report(Event {
            update: removed.update.map(update_ref),
            product: Some(product.to_string()),
            from: Some(removed.version.clone()),
            ..new_event(EventType::Uninstalled)
        });
        self.emit(AgentEvent::Uninstalled { product: product.to_string(), version: removed.version.clone() });
        if let Some(update) = removed.update {
            self.forget_scan_result(update.id);
        }
        *self.lock_needed() = None;
        drop(installer);
        self.flush_reports().await;
        Ok(json!({ "product": product.as_str(), "version": removed.version }))
    }

    /// Holds (or releases) an update or a product; a change is reported (holding what is held changes nothing).
    pub async fn hold(&self, target: HoldTarget, hold: bool) -> Result<Holds, Error> {
        let work = self.work.lock().await;
        let mut holds = self.state.load_holds()?;
        let changed = match (&target, hold) {
            (HoldTarget::Update(id), true) => holds.updates.insert(*id),
            (HoldTarget::Update(id), false) => holds.updates.remove(id),
            (HoldTarget::Product(p), true) => holds.products.insert(p.to_string()),
            (HoldTarget::Product(p), false) => holds.products.remove(p.as_str()),
        };
        self.state.save_holds(&holds)?;
        info!(?target, hold, changed, "holds changed");
        if changed {
            let kind = if hold { EventType::Held } else { EventType::Unheld };
            let (update, product) = match &target {
                // A hold covers every revision of the update: revision 0.
                HoldTarget::Update(id) => (Some(UpdateRef { id: *id, revision: 0 }), None),
                HoldTarget::Product(p) => (None, Some(p.to_string())),
            };
            self.report(Event { update, product: product.clone(), ..new_event(kind) });
            let update = update.map(|u| u.id);
            let product = product.or_else(|| update.and_then(|id| self.product_of(&id)));
            self.emit(match hold {
                true => AgentEvent::Held { update, product },
                false => AgentEvent::Unheld { update, product },
            });
            drop(work);
            self.flush_reports().await;
        }
        Ok(holds)
    }

    /// Refuses new operations that change state and waits for the one in progress (an install is never cut short).
    pub async fn close(&self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let _idle = self.work.lock().await;
    }

    /// Records the daemon's next scan time in the status.
    pub fn set_next_scan(&self, next: Option<Timestamp>) -> Result<(), Error> {
        self.update_status(|status| status.next_scan = next)
    }

    /// Records the failure of a scheduled operation in the status.
    pub fn set_last_error(&self, error: Option<String>) -> Result<(), Error> {
        self.update_status(|status| status.last_error = error)
    }

    /// Sends queued reports; a failure leaves them queued for the next flush.
    pub async fn flush_reports(&self) -> bool {
        match self.reporter.flush().await {
            Ok(_) => true,
            Err(e) => {
                info!("reports stay queued: {e}");
                false
            }
        }
    }

    /// Queues a report; a failure to queue it is logged (the operation it reports has happened).
    fn report(&self, event: Event) {
        let kind = event.kind;
        if let Err(e) = self.reporter.record(event) {
            warn!("cannot queue a {} report: {e}", kind.as_str());
        }
    }

    /// Drops an update from the scan results already reported, so that the next scan reports it again (it was
    /// installed, and no longer is).
    fn forget_scan_result(&self, update: UpdateId) {
        let path = self.state.root().join("scan-reported.json");
        let forgotten = read_json::<BTreeMap<UpdateId, String>>(&path).and_then(|known| {
            let mut known = known.unwrap_or_default();
            match known.remove(&update) {
                Some(_) => write_json(&path, &known),
                None => Ok(()),
            }
        });
        if let Err(e) = forgotten {
            warn!("{e}; the next scan may not report {update} again");
        }
    }

    /// Queues a `scan-finished` event for each update whose result (or revision) changed since it was last reported,
    /// so that a scan that finds nothing new sends nothing. Older revisions are not reported.
    fn report_scan(&self, outcome: &ScanOutcome) {
        let path = self.state.root().join("scan-reported.json");
        let mut known: BTreeMap<UpdateId, String> = match read_json(&path) {
            Ok(known) => known.unwrap_or_default(),
            Err(e) => {
                warn!("{e}; reporting every scan result again");
                BTreeMap::new()
            }
        };
        let needed = outcome.needed.iter().map(|u| (u.id, u.revision, ScanResult::Needed));
        let others = outcome.skipped.iter().filter_map(|s| {
            let result = match s.reason {
                SkipReason::OlderRevision { .. } => return None,
                SkipReason::Installed => ScanResult::Installed,
                _ => ScanResult::NotApplicable,
            };
            Some((s.id, s.revision, result))
        });
        let mut changed = Vec::new();
        let mut events = Vec::new();
        for (id, revision, result) in needed.chain(others) {
            let value = format!("{revision}:{}", result.as_str());
            if known.get(&id) == Some(&value) {
                continue;
            }
            events.push(Event {
                update: Some(UpdateRef { id, revision }),
                result: Some(result),
                ..new_event(EventType::ScanFinished)
            });
            changed.push((id, value));
        }
        match self.reporter.record_all(events) {
            Ok(_) => known.extend(changed),
            Err(e) => warn!("cannot queue the scan reports: {e}"),
        }
        if let Err(e) = write_json(&path, &known) {
            warn!("{e}");
        }
    }

    fn emit(&self, event: AgentEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    fn update_status(&self, change: impl FnOnce(&mut AgentStatus)) -> Result<(), Error> {
        let mut status = self.lock_status();
        change(&mut status);
        write_json(&self.state.status_file(), &*status)
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, AgentStatus> {
        // A panic while holding the lock leaves a status that is still a valid value.
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_needed(&self) -> std::sync::MutexGuard<'_, Option<(Timestamp, Vec<Needed>, bool)>> {
        self.needed.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An event of `kind` about the needed update.
fn update_event(kind: EventType, needed: &Needed) -> Event {
    Event { update: Some(UpdateRef { id: needed.entry.id(), revision: needed.entry.revision() }), ..new_event(kind) }
}

fn update_ref(update: UpdateKey) -> UpdateRef {
    UpdateRef { id: update.id, revision: update.revision }
}

/// The products the install engine holds: one directory each under `products/`, plus the OS image's product.
fn installed_products(installer: &Installer) -> Result<Vec<ProductName>, Error> {
    let mut products = BTreeSet::new();
    let dir = installer.state_dir().join("products");
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(Error::io("list", &dir))?;
                if let Some(product) = entry.file_name().to_str().and_then(|n| n.parse::<ProductName>().ok()) {
                    products.insert(product);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("list", &dir)(e)),
    }
    let os = installer.os_status().map_err(Error::from_install)?;
    for slot in os.slots.iter().filter_map(|s| s.installed.as_ref()) {
        if let Ok(product) = slot.product.parse() {
            products.insert(product);
        }
    }
    Ok(products.into_iter().collect())
}

fn held(holds: &Holds, needed: &Needed) -> Option<String> {
    let entry = &needed.entry;
    if holds.updates.contains(&entry.id()) {
        return Some(format!("update {} is held", entry.id()));
    }
    holds.products.contains(entry.product().as_str()).then(|| format!("product {} is held", entry.product()))
}

fn outcome(needed: &Needed, result: &str, detail: Option<String>, reboot_required: bool) -> InstallOutcome {
    InstallOutcome { update: needed.summary(), result: result.to_owned(), detail, reboot_required }
}

/// An answer as JSON (every answer type serializes; a failure would be a bug named in the error).
fn to_json<T: Serialize>(value: &T) -> Result<Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Refused(format!("cannot serialize the answer: {e}")))
}

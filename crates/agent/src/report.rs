//! Reports to the service: every state change becomes an event (custody-api's `Event`) that is first written to the
//! queue directory, one file per event, and then sent in order.
//!
//! - A file is named `<sequence, 20 digits>.json` and written atomically; its event id (a random UUID) is chosen
//!   once, when the event happens, so a batch sent again after a lost answer is recognised by the service and stored
//!   once (`POST /device/v1/events` is idempotent per event id).
//! - [`Reporter::flush`] sends the oldest events first, up to 256 per batch, and deletes each batch's files only after
//!   the service acknowledged it. A network failure or a 5xx/408/429 stops the flush; the daemon tries again with
//!   backoff ([`Backoff`]). A batch the service refuses as invalid (another 4xx) would block the queue forever, so its
//!   files are moved to `reports/refused/` and the error logged.
//! - The inventory (`PUT /device/v1/inventory`) is a state, not an event: it is sent after a scan when it changed
//!   since the service last acknowledged it, best effort.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use custody_api::device::{Event, EventBatch, EventBatchResponse, EventType, Inventory};
use custody_api::limits::{MAX_EVENT_DETAIL_BYTES, MAX_EVENTS_PER_BATCH};
use custody_catalog::DeviceInventory;
use tracing::{debug, info, warn};

use crate::Error;
use crate::state::{read_json, write_json};

/// The event queue and the client that empties it.
#[derive(Debug)]
pub struct Reporter {
    dir: PathBuf,
    client: reqwest::Client,
    api_url: String,
    token: Option<String>,
    timeout: Duration,
    next_sequence: AtomicU64,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Of those sent, how many the service already had.
    pub duplicates: usize,
    pub refused: usize,
}

/// Exponential backoff for retrying the service: 30 s doubling to 1 h, each delay with up to 20 % random extra.
#[derive(Debug, Clone, Copy, Default)]
pub struct Backoff {
    failures: u32,
}

impl Reporter {
    /// A reporter queueing in `dir` and sending to `api_url` (the device API base, ending in `/`) with `client` (the
    /// pinned client carrying the device's certificate) or a bearer `token`.
    pub fn open(
        dir: &Path,
        client: reqwest::Client,
        api_url: String,
        token: Option<String>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("create the directory", dir))?;
        // An agent killed while it queued an event leaves the temporary file of that write (`.<name>.tmp<pid>`).
        for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
            let entry = entry.map_err(Error::io("list", dir))?;
            if entry.file_name().to_str().is_some_and(|name| name.starts_with('.') && name.contains(".json.tmp")) {
                remove_if_present(&entry.path())?;
            }
        }
        let last = Self::queued_files(dir)?.last().and_then(|(sequence, _)| sequence.checked_add(1)).unwrap_or(1);
        Ok(Self { dir: dir.to_owned(), client, api_url, token, timeout, next_sequence: AtomicU64::new(last) })
    }

    /// Queues `event` (made with [`new_event`]) after checking it as the service will, so that the queue never
    /// holds an event the service would refuse; returns it.
    pub fn record(&self, event: Event) -> Result<Event, Error> {
        event
            .validate("event")
            .map_err(|e| Error::Refused(format!("a {} report is invalid: {e}", event.kind.as_str())))?;
        let sequence = self.next_sequence.fetch_add(1, Ordering::SeqCst);
        write_json(&self.dir.join(format!("{sequence:020}.json")), &event)?;
        debug!(kind = event.kind.as_str(), id = %event.id, "event queued");
        Ok(event)
    }

    /// Queues many events at once (a first scan reports one per update of the catalog's products): each is
    /// checked as [`Reporter::record`] does, and they are written as queue files of up to `MAX_EVENTS_PER_BATCH`
    /// events each (a JSON array), so that thousands of events cost a few files, not thousands. Returns how many
    /// were queued; an invalid event is logged and left out.
    pub fn record_all(&self, events: Vec<Event>) -> Result<usize, Error> {
        let mut valid = Vec::with_capacity(events.len());
        for event in events {
            match event.validate("event") {
                Ok(()) => valid.push(event),
                Err(e) => warn!("a {} report is invalid and is not queued: {e}", event.kind.as_str()),
            }
        }
        for chunk in valid.chunks(MAX_EVENTS_PER_BATCH) {
            let sequence = self.next_sequence.fetch_add(1, Ordering::SeqCst);
            write_json(&self.dir.join(format!("{sequence:020}.json")), &chunk)?;
        }
        debug!(events = valid.len(), "events queued");
        Ok(valid.len())
    }

    /// The queued events, oldest first.
    pub fn pending(&self) -> Result<Vec<Event>, Error> {
        let mut events = Vec::new();
        for (_, path) in Self::queued_files(&self.dir)? {
            let queued =
                read_json::<Queued>(&path)?.ok_or_else(|| Error::Corrupt { path, detail: "vanished".into() })?;
            events.extend(queued.into_events());
        }
        Ok(events)
    }

    /// How many events wait in the queue.
    pub fn queued(&self) -> Result<usize, Error> {
        Ok(self.pending()?.len())
    }

    /// Sends every queued event, oldest first. Stops at the first batch that cannot be delivered now.
    pub async fn flush(&self) -> Result<Flushed, Error> {
        let mut flushed = Flushed::default();
        let url = format!("{}{}", self.api_url, custody_api::routes::DEVICE_EVENTS.trim_start_matches('/'));
        loop {
            // Whole queue files, up to a batch's worth of events (a file of many events is a batch by itself).
            let mut files = Vec::new();
            let mut events: Vec<Event> = Vec::new();
            for (sequence, path) in Self::queued_files(&self.dir)? {
                match read_json::<Queued>(&path) {
                    Ok(Some(queued)) => {
                        let queued = queued.into_events();
                        if !events.is_empty() && events.len() + queued.len() > MAX_EVENTS_PER_BATCH {
                            break;
                        }
                        events.extend(queued);
                        files.push((sequence, path));
                    }
                    // A file that does not parse can never be sent: keep it aside, not in the way.
                    _ => self.set_aside(&path)?,
                }
                if events.len() >= MAX_EVENTS_PER_BATCH {
                    break;
                }
            }
            if files.is_empty() {
                return Ok(flushed);
            }
            if events.is_empty() {
                continue;
            }
            let batch = EventBatch { events };
            let mut request = self.client.post(&url).json(&batch).timeout(self.timeout);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                .map_err(|e| Error::Service { url: url.clone(), detail: crate::error_chain(&e) })?;
            let status = response.status().as_u16();
            match status {
                200..=299 => {
                    let answer: Option<EventBatchResponse> = response.json().await.ok();
                    for (_, path) in &files {
                        remove_if_present(path)?;
                    }
                    flushed.sent += batch.events.len();
                    flushed.duplicates += answer.map(|a| a.duplicates as usize).unwrap_or(0);
                    info!(count = batch.events.len(), "events delivered");
                }
                408 | 429 | 500..=599 => {
                    return Err(Error::Service { url, detail: format!("HTTP {status}; will retry") });
                }
                _ => {
                    let body = response.text().await.unwrap_or_default();
                    warn!(status, body, "the service refused an event batch; setting it aside in reports/refused/");
                    for (_, path) in &files {
                        self.set_aside(path)?;
                    }
                    flushed.refused += batch.events.len();
                }
            }
        }
    }

    /// Sends the device's inventory if it differs from the last one the service acknowledged (kept in
    /// `<queue>/../inventory-sent.json`), so that a scan on an unchanged device sends nothing. Best effort: the caller
    /// logs a failure, and the next scan sends it again.
    pub async fn send_inventory(&self, device: &DeviceInventory) -> Result<bool, Error> {
        let url = format!("{}{}", self.api_url, custody_api::routes::DEVICE_INVENTORY.trim_start_matches('/'));
        let inventory = Inventory {
            os_family: device.os_family.to_string(),
            os_version: device.os_version.as_ref().map(|v| v.to_string()),
            arch: device.arch.to_string(),
            products: device.products.iter().map(|(p, v)| (p.to_string(), v.to_string())).collect(),
            hardware_ids: device.hardware_ids.iter().map(|h| h.to_string()).collect(),
            installed_updates: device.installed_updates.iter().copied().collect(),
        };
        let sent_path = self.dir.parent().unwrap_or(&self.dir).join("inventory-sent.json");
        if read_json::<Inventory>(&sent_path).ok().flatten().as_ref() == Some(&inventory) {
            return Ok(false);
        }
        let mut request = self.client.put(&url).json(&inventory).timeout(self.timeout);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response =
            request.send().await.map_err(|e| Error::Service { url: url.clone(), detail: crate::error_chain(&e) })?;
        match response.status().is_success() {
            true => {
                write_json(&sent_path, &inventory)?;
                Ok(true)
            }
            false => Err(Error::Service { url, detail: format!("HTTP {}", response.status().as_u16()) }),
        }
    }

    /// `(sequence, path)` of every queued event, in sequence order.
    fn queued_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, Error> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
            let entry = entry.map_err(Error::io("list", dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if let Ok(sequence) = stem.parse::<u64>() {
                files.push((sequence, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    fn set_aside(&self, path: &Path) -> Result<(), Error> {
        let refused = self.dir.join("refused");
        std::fs::create_dir_all(&refused).map_err(Error::io("create the directory", &refused))?;
        let to = refused.join(path.file_name().unwrap_or_default());
        std::fs::rename(path, &to).map_err(Error::io("move aside", path))
    }
}

/// A queue file: one event ([`Reporter::record`]) or a batch of them ([`Reporter::record_all`]).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Queued {
    One(Box<Event>),
    Many(Vec<Event>),
}

impl Queued {
    fn into_events(self) -> Vec<Event> {
        match self {
            Self::One(event) => vec![*event],
            Self::Many(events) => events,
        }
    }
}

impl Backoff {
    /// Records a failure and returns how long to wait before the next try; `random` is a uniform draw from [0, 1).
    pub fn failed(&mut self, random: f64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_secs(30).saturating_mul(1 << self.failures.min(8).saturating_sub(1));
        let base = base.min(Duration::from_secs(3600));
        base + base.mul_f64(0.2 * random.clamp(0.0, 1.0))
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// A new event of `kind`, with a fresh id and the time now; the caller fills in what the type takes.
pub fn new_event(kind: EventType) -> Event {
    Event {
        id: uuid::Builder::from_random_bytes(rand::random()).into_uuid(),
        time: jiff::Timestamp::now(),
        kind,
        update: None,
        product: None,
        result: None,
        code: None,
        from: None,
        to: None,
        reason: None,
        operation: None,
        outcome: None,
        delivery: None,
        detail: String::new(),
    }
}

/// `event` with the `code` and `detail` of `error`: its errno if an OS error caused it, else 1; its code and text.
pub fn with_error(event: Event, error: &Error) -> Event {
    Event { code: Some(error.errno_or_one()), detail: event_detail(error), ..event }
}

/// `<code>: <error and causes>`, cut to what an event may carry, without control characters.
pub fn event_detail(error: &Error) -> String {
    detail(&format!("{}: {}", error.code(), crate::error_chain(error)))
}

/// `text` cut to what an event's detail may carry, control characters but newline replaced by spaces.
pub fn detail(text: &str) -> String {
    let mut detail = String::new();
    for c in text.chars().map(|c| if c.is_control() && c != '\n' { ' ' } else { c }) {
        if detail.len() + c.len_utf8() > MAX_EVENT_DETAIL_BYTES {
            break;
        }
        detail.push(c);
    }
    detail
}

fn remove_if_present(path: &Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| backoff.failed(0.0).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert!(backoff.failed(0.99).as_secs() <= 3600 * 6 / 5);
        backoff.succeeded();
        assert_eq!(backoff.failed(0.0).as_secs(), 30);
    }

    #[test]
    fn many_events_take_few_files_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let client = custody_tls::plain_http_client(&custody_tls::ProxySettings::direct()).unwrap();
        let reporter =
            Reporter::open(dir.path(), client, "http://127.0.0.1:9/".into(), None, Duration::from_secs(1)).unwrap();
        let mut failed = new_event(EventType::ScanFailed);
        failed.code = Some(1);
        let first = reporter.record(failed).unwrap();
        let scans: Vec<Event> = (0..MAX_EVENTS_PER_BATCH + 10)
            .map(|i| Event {
                update: Some(custody_api::device::UpdateRef {
                    id: custody_catalog::UpdateId::new(uuid::Uuid::from_u128(0x4000_8000_0000_0000_0000 + i as u128))
                        .unwrap(),
                    revision: 1,
                }),
                result: Some(custody_api::device::ScanResult::NotApplicable),
                ..new_event(EventType::ScanFinished)
            })
            .collect();
        assert_eq!(reporter.record_all(scans.clone()).unwrap(), scans.len());
        assert_eq!(Reporter::queued_files(dir.path()).unwrap().len(), 3, "one event, then two batch files");
        let pending = reporter.pending().unwrap();
        assert_eq!(pending.len(), scans.len() + 1);
        assert_eq!(pending[0].id, first.id);
        let ids: Vec<_> = pending[1..].iter().map(|e| e.id).collect();
        assert_eq!(ids, scans.iter().map(|e| e.id).collect::<Vec<_>>());
    }
}

//! The daemon (`custody agent run`): recovery at start, then the local API and the schedule until shutdown.
//!
//! - At start the install engine recovers an install that a crash or power loss interrupted, before anything else.
//! - Scans follow custody-policy's schedule: `interval` after the last scan plus up to `jitter × interval` at random
//!   (default 22 h + up to 20 %); a device that has never scanned, or whose last scan is older than that, scans at
//!   once. After each scheduled scan the policy is carried out for every needed update (`Trigger::Scheduled`).
//! - When an install waits for a maintenance window, the daemon wakes when the window opens.
//! - Queued reports that could not be sent are retried with exponential backoff (30 s doubling to 1 h).
//! - With `[p2p]`, the peer listener runs beside them, and the cache's complete content is announced to the
//!   service's peer matching every few minutes (crate::p2p).
//! - Local API requests are served concurrently; operations that change state run one at a time.
//! - On shutdown (SIGTERM, SIGINT) the socket stops accepting, the operation in progress finishes (an install is
//!   never cut short by the daemon itself; a download in progress is resumed by the next run), and the daemon exits.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{info, warn};

use crate::Error;
use crate::agent::{Agent, Selection};
use crate::local_api::LocalApiServer;
use crate::report::Backoff;

/// The longest the daemon sleeps before looking at the clock again (wall-clock jumps, suspend).
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Runs the daemon until `shutdown` resolves.
pub async fn run(agent: Arc<Agent>, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    agent.recover().await?;
    if let Some(p2p) = agent.p2p() {
        p2p.start().await?;
        // Devices that finished a download keep seeding it: announce the cache now and then.
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                if let Some(p2p) = agent.p2p() {
                    p2p.announce_cache().await;
                    p2p.evict();
                }
                tokio::time::sleep(crate::p2p::ANNOUNCE_EVERY).await;
            }
        });
    }
    let server = LocalApiServer::bind(&agent.config().agent.local_api)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server_task = {
        let agent = agent.clone();
        let mut stop_rx = stop_rx.clone();
        tokio::spawn(server.serve(agent, async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        }))
    };
    tokio::pin!(shutdown);
    // The status file is informational: failing to write it (disk full) must not stop updates.
    let noted = |written: Result<(), Error>| {
        if let Err(e) = written {
            warn!("cannot record the status: {e}");
        }
    };
    let schedule = agent.config().policy.schedule.clone();
    let mut backoff = Backoff::default();
    let mut next_flush: Option<Timestamp> = None;
    let mut next_scan = match agent.status().last_scan.as_ref() {
        Some(scan) if scan.product.is_none() => schedule.next_scan(scan.time, rand::random::<f64>()),
        _ => Timestamp::now(),
    };
    loop {
        let status = agent.status();
        let now = Timestamp::now();
        noted(agent.set_next_scan(Some(next_scan)));
        let mut wake = next_scan;
        if let Some(window) = status.next_window.filter(|w| *w < wake) {
            wake = window;
        }
        if let Some(flush) = next_flush.filter(|f| *f < wake) {
            wake = flush;
        }
        let sleep = wake.duration_since(now).unsigned_abs().min(MAX_SLEEP);
        if !sleep.is_zero() {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        let now = Timestamp::now();
        if now >= next_scan {
            info!("scheduled scan");
            // A failed scan is not retried at once: the next one follows the schedule from this attempt.
            next_scan = schedule.next_scan(now, rand::random::<f64>());
            match agent.scan(None).await {
                Ok(_) => {
                    let result = agent.install(&Selection::All, custody_policy::Trigger::Scheduled).await;
                    noted(agent.set_last_error(result.err().map(|e| crate::error_chain(&e))));
                }
                Err(e) => noted(agent.set_last_error(Some(crate::error_chain(&e)))),
            }
        } else if status.next_window.is_some_and(|w| w <= now) {
            info!("maintenance window open");
            if let Err(e) = agent.install(&Selection::All, custody_policy::Trigger::Scheduled).await {
                noted(agent.set_last_error(Some(crate::error_chain(&e))));
            }
        }
        let queued = agent.reporter().queued().unwrap_or_else(|e| {
            warn!("{e}");
            0
        });
        if next_flush.is_none_or(|f| f <= Timestamp::now()) && queued > 0 {
            next_flush = match agent.flush_reports().await {
                true => {
                    backoff.succeeded();
                    None
                }
                false => {
                    let delay = backoff.failed(rand::random::<f64>());
                    warn!(?delay, "the service is unreachable; reports stay queued");
                    Some(Timestamp::now() + delay)
                }
            };
        }
    }
    info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = server_task.await;
    agent.close().await;
    noted(agent.set_next_scan(None));
    Ok(())
}

//! The content origin's bandwidth limit (`[content.rate_limit]`): bytes per second per connection and for the whole
//! listener, both off by default. Responses are paced chunk by chunk; a chunk is sent when every limit it falls
//! under has room for it, so a limited transfer is slower but its bytes are the same.
//!
//! [`Pacer`] is the arithmetic (time passed in); [`Throttle`] applies it to response streams.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use crate::config::RateLimitConfig;
use crate::content::ByteStream;

/// Spaces out bytes to a rate: each reservation starts when the previous ones have had their time, so that over any
/// period at most `rate` bytes per second start (idle time earns no credit for a later burst).
#[derive(Debug)]
pub struct Pacer {
    rate: NonZeroU64,
    /// When the bytes reserved so far have had their time.
    free_at: Mutex<Option<Instant>>,
}

/// The limits of one listener: the total is shared by every response, the per-connection one is new for each
/// response (HTTP/1.1 sends one response at a time on a connection).
#[derive(Clone, Debug, Default)]
pub struct Throttle {
    per_connection: Option<NonZeroU64>,
    total: Option<Arc<Pacer>>,
}

/// The smallest piece a paced chunk is cut into.
const MIN_SLICE: usize = 1024;
/// Cut chunks so that one slice takes at most this fraction of a second at the lowest rate: smooth pacing.
const SLICES_PER_SECOND: u64 = 16;

impl Pacer {
    pub fn new(rate: NonZeroU64) -> Self {
        Self { rate, free_at: Mutex::new(None) }
    }

    /// Reserves `bytes` at `now`; returns how long to wait before sending them.
    pub fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
        let start = free_at.map_or(now, |at| at.max(now));
        *free_at = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate.get() as f64));
        start - now
    }
}

impl Throttle {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            per_connection: NonZeroU64::new(config.per_connection),
            total: NonZeroU64::new(config.total).map(|rate| Arc::new(Pacer::new(rate))),
        }
    }

    pub fn is_off(&self) -> bool {
        self.per_connection.is_none() && self.total.is_none()
    }

    /// `stream`, paced to the limits.
    pub fn pace(&self, stream: ByteStream) -> ByteStream {
        let lowest = [self.per_connection, self.total.as_ref().map(|total| total.rate)].into_iter().flatten().min();
        let Some(lowest) = lowest else { return stream };
        // A slice is at most 1/16 s of the lowest rate (at least 1 KiB): chunks of 64 KiB would make a slow limit
        // send in bursts.
        let slice = usize::try_from(lowest.get() / SLICES_PER_SECOND).unwrap_or(usize::MAX).max(MIN_SLICE);
        let connection = self.per_connection.map(Pacer::new);
        let total = self.total.clone();
        let sliced = stream.flat_map(move |chunk| {
            let slices: Vec<std::io::Result<Bytes>> = match chunk {
                Ok(mut bytes) => {
                    let mut slices = Vec::with_capacity(bytes.len() / slice + 1);
                    while bytes.len() > slice {
                        slices.push(Ok(bytes.split_to(slice)));
                    }
                    slices.push(Ok(bytes));
                    slices
                }
                Err(err) => vec![Err(err)],
            };
            futures_util::stream::iter(slices)
        });
        Box::pin(sliced.then(move |chunk| {
            let (now, length) = (Instant::now(), chunk.as_ref().map_or(0, |bytes| bytes.len() as u64));
            let wait = [connection.as_ref(), total.as_deref()]
                .into_iter()
                .flatten()
                .map(|pacer| pacer.reserve(length, now))
                .max()
                .unwrap_or_default();
            async move {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                chunk
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_follow_each_other_at_the_rate() {
        let pacer = Pacer::new(NonZeroU64::new(1000).unwrap());
        let start = Instant::now();
        assert_eq!(pacer.reserve(500, start), Duration::ZERO, "the first bytes go at once");
        assert_eq!(pacer.reserve(500, start), Duration::from_millis(500));
        assert_eq!(pacer.reserve(1000, start + Duration::from_millis(200)), Duration::from_millis(800));
        // Idle time earns no credit: after a pause the next bytes go at once, and the ones after wait again.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.reserve(2000, later), Duration::ZERO);
        assert_eq!(pacer.reserve(1, later), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_paced_stream_keeps_its_bytes() {
        // 128 KiB/s per connection: slices of 8 KiB; 100,000 bytes take about 0.7 s.
        let throttle = Throttle::new(&RateLimitConfig { per_connection: 128 << 10, total: 1 << 20 });
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();
        let chunks: Vec<std::io::Result<Bytes>> = data.chunks(65_536).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut paced = throttle.pace(Box::pin(futures_util::stream::iter(chunks)));
        let mut out = Vec::new();
        while let Some(chunk) = paced.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= 8 << 10, "64 KiB chunks are cut into 1/16 s of the lowest rate");
            out.extend_from_slice(&chunk);
        }
        assert_eq!(out, data);
        assert!(Throttle::new(&RateLimitConfig::default()).is_off());
    }
}

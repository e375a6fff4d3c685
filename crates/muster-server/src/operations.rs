//! Outstanding registration operations: the result of a registration waits here until the
//! device polls for it (MQTT or HTTPS). Entries expire after ten minutes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const TTL: Duration = Duration::from_secs(600);

/// The outcome of one registration.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// Registration id it belongs to (polls for another id are refused).
    pub(crate) registration_id: String,
    /// HTTP-like status to answer the poll with.
    pub(crate) status: u16,
    /// The JSON body.
    pub(crate) body: Value,
}

/// Operation id → outcome.
#[derive(Debug, Default)]
pub(crate) struct Operations {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    map: HashMap<String, (Instant, Outcome)>,
    /// Inserts since the last sweep: expired entries are swept every `SWEEP_EVERY` inserts,
    /// so the cost stays O(1) amortised however many operations are outstanding.
    since_sweep: usize,
}

const SWEEP_EVERY: usize = 4096;
/// Outcomes kept at most; beyond it new registrations are asked to retry (429).
const MAX_OUTSTANDING: usize = 100_000;

impl Operations {
    /// A new operation id (`4.<16 hex>.<32 hex>`: unreserved characters only, as the Python
    /// SDK URL-quotes it and the Node SDK does not).
    #[must_use]
    pub(crate) fn new_id() -> String {
        let mut bytes = [0u8; 24];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let hex = muster_pki::hex_upper(&bytes).to_ascii_lowercase();
        format!(
            "4.{}.{}",
            hex.get(..16).unwrap_or_default(),
            hex.get(16..).unwrap_or_default()
        )
    }

    /// Store `outcome` under `id`.
    pub(crate) fn insert(&self, id: &str, outcome: Outcome) {
        let now = Instant::now();
        if let Ok(mut table) = self.inner.lock() {
            table.since_sweep += 1;
            if table.since_sweep >= SWEEP_EVERY {
                table.since_sweep = 0;
                table.map.retain(|_, (t, _)| now.duration_since(*t) < TTL);
            }
            table.map.insert(id.to_owned(), (now, outcome));
        }
    }

    /// Whether no more outcomes can be kept (after sweeping expired ones).
    pub(crate) fn is_full(&self) -> bool {
        let Ok(mut table) = self.inner.lock() else {
            return true;
        };
        if table.map.len() < MAX_OUTSTANDING {
            return false;
        }
        let now = Instant::now();
        table.map.retain(|_, (t, _)| now.duration_since(*t) < TTL);
        table.since_sweep = 0;
        table.map.len() >= MAX_OUTSTANDING
    }

    /// The outcome of `id` if it exists, is fresh and belongs to `registration_id`.
    pub(crate) fn get(&self, id: &str, registration_id: &str) -> Option<Outcome> {
        let table = self.inner.lock().ok()?;
        let (t, outcome) = table.map.get(id)?;
        (t.elapsed() < TTL
            && outcome
                .registration_id
                .eq_ignore_ascii_case(registration_id))
        .then(|| outcome.clone())
    }
}

/// A token bucket: `rate` registrations per second with a one-second burst.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (no limit).
    pub(crate) fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            rate: f64::from(per_second),
            state: Mutex::new((f64::from(per_second), Instant::now())),
        })
    }

    /// Take one token; `false` when the bucket is empty.
    pub(crate) fn try_acquire(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn bucket_allows_the_rate_then_refuses() {
        assert!(RateLimit::new(0).is_none());
        let limit = RateLimit::new(5).unwrap_or_else(|| unreachable!());
        let granted = (0..20).filter(|_| limit.try_acquire()).count();
        assert_eq!(granted, 5, "a one-second burst of the rate");
    }
}

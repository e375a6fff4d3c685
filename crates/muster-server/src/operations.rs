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

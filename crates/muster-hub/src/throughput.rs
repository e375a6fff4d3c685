//! Device-to-cloud messages per second over the last hour, per logical hub, kept in memory for
//! the portal's overview ("messages per minute" and the last hour's chart). It starts empty
//! when the server starts; the durable record is the event log.

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds kept.
const WINDOW: usize = 3600;

/// Per-hub rings of per-second counts.
#[derive(Debug, Default)]
pub struct Throughput {
    hubs: Mutex<HashMap<String, Ring>>,
}

#[derive(Debug)]
struct Ring {
    /// `(unix second, count)` at `second % WINDOW`.
    slots: Vec<(u64, u64)>,
}

impl Ring {
    fn new() -> Self {
        Self {
            slots: vec![(0, 0); WINDOW],
        }
    }
}

fn slot(second: u64) -> usize {
    usize::try_from(second % WINDOW as u64).unwrap_or(0)
}

impl Throughput {
    /// Count `n` messages for `hub` at `now` (Unix seconds).
    pub fn record(&self, hub: &str, n: u64, now: u64) {
        let Ok(mut hubs) = self.hubs.lock() else {
            return;
        };
        let ring = hubs
            .entry(hub.to_ascii_lowercase())
            .or_insert_with(Ring::new);
        if let Some(s) = ring.slots.get_mut(slot(now)) {
            if s.0 == now {
                s.1 += n;
            } else {
                *s = (now, n);
            }
        }
    }

    /// Messages in the 60 seconds up to `now`.
    #[must_use]
    pub fn last_minute(&self, hub: &str, now: u64) -> u64 {
        self.range(hub, now.saturating_sub(59), now)
    }

    /// Per-minute counts for the hour up to `now`, oldest first (60 values; the last is the
    /// minute ending at `now`).
    #[must_use]
    pub fn last_hour(&self, hub: &str, now: u64) -> Vec<u64> {
        (0..60u64)
            .rev()
            .map(|m| {
                let end = now.saturating_sub(m * 60);
                self.range(hub, end.saturating_sub(59), end)
            })
            .collect()
    }

    fn range(&self, hub: &str, from: u64, to: u64) -> u64 {
        let Ok(hubs) = self.hubs.lock() else {
            return 0;
        };
        let Some(ring) = hubs.get(&hub.to_ascii_lowercase()) else {
            return 0;
        };
        (from..=to)
            .filter_map(|s| ring.slots.get(slot(s)).filter(|x| x.0 == s).map(|x| x.1))
            .sum()
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]
mod tests {
    use super::Throughput;

    #[test]
    fn counts_by_second_and_forgets_after_an_hour() {
        let t = Throughput::default();
        t.record("Hub", 3, 10_000);
        t.record("hub", 2, 10_000);
        t.record("hub", 1, 10_030);
        t.record("other", 7, 10_030);
        assert_eq!(t.last_minute("hub", 10_030), 6);
        assert_eq!(
            t.last_minute("hub", 10_060),
            1,
            "the first second left the minute"
        );
        let hour = t.last_hour("hub", 10_059);
        assert_eq!(hour.len(), 60);
        assert_eq!(hour.last(), Some(&6));
        assert_eq!(hour.iter().sum::<u64>(), 6);
        // The same slot an hour later holds the new second only.
        t.record("hub", 4, 10_000 + 3600);
        assert_eq!(t.last_minute("hub", 10_000 + 3600), 4);
        assert_eq!(t.last_minute("nobody", 10_000), 0);
    }
}

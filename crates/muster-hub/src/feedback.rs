//! Delivery feedback: when a service asks for it (`iothub-ack` = `positive`, `negative` or
//! `full` on a cloud-to-device message), settling the message leaves a record that the
//! service's feedback receiver (`/messages/serviceBound/feedback`) reads, in IoT Hub's shape.
//!
//! Records wait in memory, per logical hub, until a feedback receiver takes them (at most
//! [`MAX_PENDING`] per hub; the oldest go first). They do not survive a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::Notify;
use tracing::warn;

/// Records a hub keeps for its feedback receiver.
pub const MAX_PENDING: usize = 10_000;

/// One feedback record (IoT Hub's `FeedbackRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackRecord {
    /// The message's id.
    pub original_message_id: String,
    /// The device.
    pub device_id: String,
    /// `Success`, `Rejected`, `Expired`, `DeliveryCountExceeded` or `Purged`.
    pub status_code: String,
    /// `Success`, `Message rejected`, ….
    pub description: String,
    /// When the outcome happened (RFC 3339).
    pub enqueued_time_utc: String,
    /// The device identity's generation.
    pub device_generation_id: String,
}

/// Which outcomes a service asked to hear of (`iothub-ack`).
#[must_use]
pub fn wanted(ack: Option<&str>, success: bool) -> bool {
    match ack {
        Some("full") => true,
        Some("positive") => success,
        Some("negative") => !success,
        _ => false,
    }
}

/// The pending feedback of every hub on this node.
#[derive(Debug, Default)]
pub struct Feedback {
    pending: Mutex<HashMap<String, VecDeque<FeedbackRecord>>>,
    arrived: Notify,
}

impl Feedback {
    /// Keep a record for `hub`'s feedback receiver.
    pub fn push(&self, hub: &str, record: FeedbackRecord) {
        if let Ok(mut pending) = self.pending.lock() {
            let queue = pending.entry(hub.to_owned()).or_default();
            if queue.len() >= MAX_PENDING {
                warn!(hub, "feedback queue full; dropping the oldest record");
                queue.pop_front();
            }
            queue.push_back(record);
        }
        self.arrived.notify_waiters();
    }

    /// Take up to `max` records of `hub`, oldest first.
    pub fn take(&self, hub: &str, max: usize) -> Vec<FeedbackRecord> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let Some(queue) = pending.get_mut(hub) else {
            return Vec::new();
        };
        let n = queue.len().min(max);
        queue.drain(..n).collect()
    }

    /// Give records back (a receiver could not deliver them), ahead of newer ones.
    pub fn restore(&self, hub: &str, records: Vec<FeedbackRecord>) {
        if let Ok(mut pending) = self.pending.lock() {
            let queue = pending.entry(hub.to_owned()).or_default();
            for r in records.into_iter().rev() {
                queue.push_front(r);
            }
            queue.truncate(MAX_PENDING);
        }
    }

    /// Wait for the next record of any hub (register before checking with [`Self::take`]:
    /// `let n = feedback.arrived(); n.as_mut().enable();`).
    pub fn arrived(&self) -> tokio::sync::futures::Notified<'_> {
        self.arrived.notified()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> FeedbackRecord {
        FeedbackRecord {
            original_message_id: id.into(),
            device_id: "d1".into(),
            status_code: "Success".into(),
            description: "Success".into(),
            enqueued_time_utc: "2026-12-05T00:00:00Z".into(),
            device_generation_id: "1".into(),
        }
    }

    #[test]
    fn acks_select_outcomes() {
        assert!(wanted(Some("full"), true) && wanted(Some("full"), false));
        assert!(wanted(Some("positive"), true) && !wanted(Some("positive"), false));
        assert!(!wanted(Some("negative"), true) && wanted(Some("negative"), false));
        assert!(!wanted(Some("none"), true) && !wanted(None, false));
    }

    #[test]
    fn records_are_per_hub_and_in_order() {
        let f = Feedback::default();
        f.push("a", record("1"));
        f.push("a", record("2"));
        f.push("b", record("3"));
        let taken = f.take("a", 1);
        assert_eq!(taken, vec![record("1")]);
        f.restore("a", taken);
        let ids: Vec<_> = f
            .take("a", 10)
            .into_iter()
            .map(|r| r.original_message_id)
            .collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(f.take("b", 10), vec![record("3")]);
        assert!(f.take("c", 10).is_empty());
    }
}

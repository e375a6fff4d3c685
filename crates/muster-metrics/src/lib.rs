//! What a running muster is doing, as Prometheus metrics: one process-wide registry that the
//! listeners, the provisioning service, the hub and the event log record into, and that
//! `GET /metrics` encodes (OpenMetrics text).
//!
//! Every family is named `muster_…`. Labels are fixed, small sets (transport, protocol, outcome,
//! reason), never a device id: a label per device would make the registry grow with the fleet.
//! Recording is a few atomic operations, cheap enough for every message.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A connection's transport and application protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `tls` (a device port) or `websocket` (a tunnel on the HTTPS port).
    pub transport: &'static str,
    /// `mqtt`, `amqp` or `https`.
    pub protocol: &'static str,
}

/// An outcome (registrations, method calls).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened, from a fixed set per family.
    pub outcome: &'static str,
}

/// Why something failed (TLS handshakes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The listener: `mqtt`, `amqp` or `https`.
    pub listener: &'static str,
    /// The reason, from a fixed set (see `muster-server`'s TLS module).
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metric families. Get them with [`metrics`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open connections, by transport and protocol.
    pub connections: Family<ConnectionLabels, Gauge>,
    /// Connections accepted (after TLS), by transport and protocol.
    pub connections_opened: Family<ConnectionLabels, Counter>,
    /// TLS handshakes that failed, by listener and reason.
    pub tls_handshake_failures: Family<ReasonLabels, Counter>,
    /// DPS registrations, by outcome: `assigned`, `disabled`, `failed` (allocation or storage),
    /// `unauthorized` (attestation refused), `invalid` (bad request), `throttled`.
    pub registrations: Family<OutcomeLabels, Counter>,
    /// Device-to-cloud messages stored in the event log.
    pub telemetry_messages: Counter,
    /// Their body bytes.
    pub telemetry_bytes: Counter,
    /// Device-to-cloud messages refused (too large, or the log could not store them).
    pub telemetry_refused: Counter,
    /// Time from a group commit's first append being taken to its transaction being durable.
    pub event_log_commit_seconds: Histogram,
    /// Events per group commit.
    pub event_log_batch_size: Histogram,
    /// Cloud-to-device messages waiting for their device (set when `/metrics` is read).
    pub c2d_queue_depth: Gauge,
    /// Cloud-to-device messages accepted for delivery.
    pub c2d_enqueued: Counter,
    /// Direct-method calls by outcome (`answered`, `timeout`, `offline`), with their latency.
    pub method_seconds: HistogramFamily<OutcomeLabels>,
    /// Devices and modules connected to the hub (set when `/metrics` is read).
    pub devices_connected: Gauge,
}

fn latency_buckets() -> Histogram {
    // 0.1 ms … ~52 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.0, 20,
    ))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("muster");
        let connections = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "connections",
            "Open connections, by transport and protocol",
            connections.clone(),
        );
        let connections_opened = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections_opened",
            "Connections accepted after TLS, by transport and protocol",
            connections_opened.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by listener and reason",
            tls_handshake_failures.clone(),
        );
        let registrations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "dps_registrations",
            "DPS registrations, by outcome",
            registrations.clone(),
        );
        let telemetry_messages = Counter::default();
        registry.register(
            "telemetry_messages",
            "Device-to-cloud messages stored durably",
            telemetry_messages.clone(),
        );
        let telemetry_bytes = Counter::default();
        registry.register_with_unit(
            "telemetry_body",
            "Body bytes of the device-to-cloud messages stored",
            Unit::Bytes,
            telemetry_bytes.clone(),
        );
        let telemetry_refused = Counter::default();
        registry.register(
            "telemetry_refused",
            "Device-to-cloud messages refused (too large, or not storable)",
            telemetry_refused.clone(),
        );
        let event_log_commit_seconds = latency_buckets();
        registry.register_with_unit(
            "event_log_commit",
            "Event-log group commit latency, first append taken to durable",
            Unit::Seconds,
            event_log_commit_seconds.clone(),
        );
        let event_log_batch_size = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12),
        );
        registry.register(
            "event_log_batch_size",
            "Events per event-log group commit",
            event_log_batch_size.clone(),
        );
        let c2d_queue_depth = Gauge::default();
        registry.register(
            "c2d_queue_depth",
            "Cloud-to-device messages waiting for their device",
            c2d_queue_depth.clone(),
        );
        let c2d_enqueued = Counter::default();
        registry.register(
            "c2d_enqueued",
            "Cloud-to-device messages accepted for delivery",
            c2d_enqueued.clone(),
        );
        let method_seconds: HistogramFamily<OutcomeLabels> =
            Family::new_with_constructor(latency_buckets);
        registry.register_with_unit(
            "method_call",
            "Direct-method calls, by outcome, from request to answer",
            Unit::Seconds,
            method_seconds.clone(),
        );
        let devices_connected = Gauge::default();
        registry.register(
            "devices_connected",
            "Devices and modules connected to the hub",
            devices_connected.clone(),
        );
        Self {
            registry,
            connections,
            connections_opened,
            tls_handshake_failures,
            registrations,
            telemetry_messages,
            telemetry_bytes,
            telemetry_refused,
            event_log_commit_seconds,
            event_log_batch_size,
            c2d_queue_depth,
            c2d_enqueued,
            method_seconds,
            devices_connected,
        }
    }

    /// The registry in the OpenMetrics text format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the output well-formed anyway.
            out.push_str("# EOF\n");
        }
        out
    }

    /// Count a connection open until the guard drops.
    #[must_use]
    pub fn connection(&self, transport: &'static str, protocol: &'static str) -> ConnectionGuard {
        let labels = ConnectionLabels {
            transport,
            protocol,
        };
        self.connections_opened.get_or_create(&labels).inc();
        let gauge = self.connections.get_or_create(&labels).clone();
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// A failed TLS handshake.
    pub fn tls_failure(&self, listener: &'static str, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabels { listener, reason })
            .inc();
    }

    /// A registration's outcome.
    pub fn registration(&self, outcome: &'static str) {
        self.registrations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// A direct-method call's outcome and latency.
    pub fn method(&self, outcome: &'static str, took: Duration) {
        self.method_seconds
            .get_or_create(&OutcomeLabels { outcome })
            .observe(took.as_secs_f64());
    }

    /// One event-log group commit.
    pub fn commit(&self, events: usize, took: Duration) {
        #[allow(clippy::cast_precision_loss, reason = "batch sizes are small")]
        self.event_log_batch_size.observe(events as f64);
        self.event_log_commit_seconds.observe(took.as_secs_f64());
    }
}

/// Holds one open connection in [`Metrics::connections`]; the count drops with it.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
#[must_use]
pub fn metrics() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_encoded_and_connections_are_counted_while_open() {
        let m = metrics();
        {
            let _open = m.connection("tls", "mqtt");
            let text = m.encode();
            assert!(
                text.contains(r#"muster_connections{transport="tls",protocol="mqtt"} 1"#),
                "{text}"
            );
        }
        m.registration("assigned");
        m.method("timeout", Duration::from_millis(3));
        m.commit(7, Duration::from_millis(2));
        m.tls_failure("mqtt", "unknown_issuer");
        let text = m.encode();
        assert!(
            text.contains(r#"muster_connections{transport="tls",protocol="mqtt"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"muster_connections_opened_total{transport="tls",protocol="mqtt"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"muster_dps_registrations_total{outcome="assigned"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"muster_method_call_seconds_count{outcome="timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("muster_event_log_batch_size_sum 7.0"),
            "{text}"
        );
        assert!(
            text.contains(
                r#"muster_tls_handshake_failures_total{listener="mqtt",reason="unknown_issuer"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}

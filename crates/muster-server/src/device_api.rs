//! The DPS device API, shared by the MQTT and HTTPS transports: register, then poll.
//!
//! Register performs the whole registration at once and parks the result under a new operation
//! id. With `immediate_result` (the default) an `assigned` result is the answer itself: `200
//! {"operationId", "status":"assigned", "registrationState": …}`, one round trip. Otherwise,
//! and for failed allocations, it answers `202 {"status":"assigning"}` with `retry-after`, as
//! Azure does, and the poll answers with the result. Every failure is a JSON body
//! `{errorCode, trackingId, message, timestampUtc}` with a log line carrying the reason.

use muster_dps::registration::{Credential, RegistrationRequest};
use muster_dps::{Dps, DpsError};
use serde_json::{Value, json};
use tracing::warn;

use crate::operations::{Operations, Outcome};

/// Largest registration payload kept (JSON text bytes).
const MAX_PAYLOAD: usize = 8 * 1024;

/// A device-facing answer.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) retry_after: Option<u32>,
}

/// A new tracking id (for correlating a device's error with the server log): a random UUID.
pub(crate) fn tracking_id() -> String {
    uuid_text(&new_uuid())
}

/// A new random (version 4) UUID.
pub(crate) fn new_uuid() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// RFC 4122 text of 16 bytes.
pub(crate) fn uuid_text(b: &[u8; 16]) -> String {
    let h = muster_pki::hex_upper(b).to_ascii_lowercase();
    format!(
        "{}-{}-{}-{}-{}",
        h.get(0..8).unwrap_or_default(),
        h.get(8..12).unwrap_or_default(),
        h.get(12..16).unwrap_or_default(),
        h.get(16..20).unwrap_or_default(),
        h.get(20..32).unwrap_or_default()
    )
}

/// The DPS error body.
pub(crate) fn error_body(code: u32, message: &str, tracking: &str) -> Value {
    json!({
        "errorCode": code,
        "trackingId": tracking,
        "message": message,
        "timestampUtc": muster_dps::time_fmt::azure(time::OffsetDateTime::now_utc()),
    })
}

pub(crate) fn error_reply(e: &DpsError) -> Reply {
    let tracking = tracking_id();
    if e.status() >= 500 {
        warn!(tracking_id = tracking, error = %e, "registration failed");
    }
    Reply {
        status: e.status(),
        body: error_body(e.code(), &e.public_message(), &tracking),
        retry_after: match e {
            DpsError::Throttled { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        },
    }
}

/// A registration refused before attestation, counted by its outcome (what attestation
/// decides is counted by `Dps::register`).
fn refused(e: &DpsError) -> Reply {
    let outcome = match e {
        DpsError::Unauthorized { .. } => "unauthorized",
        DpsError::Throttled { .. } => "throttled",
        _ => "invalid",
    };
    muster_metrics::metrics().registration(outcome);
    error_reply(e)
}

/// Handle a register request body (`{"registrationId":…, "payload":…}`).
pub(crate) async fn register(
    dps: &Dps,
    operations: &Operations,
    limit: Option<&crate::operations::RateLimit>,
    (retry_after, immediate): (u32, bool),
    registration_id: &str,
    credential: Credential<'_>,
    body: &[u8],
) -> Reply {
    let parsed: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                warn!(registration_id, error = %e, "register request is not JSON");
                return refused(&DpsError::InvalidInput(format!(
                    "the request body is not valid JSON: {e}"
                )));
            }
        }
    };
    if let Some(claimed) = parsed.get("registrationId").and_then(Value::as_str)
        && !claimed.eq_ignore_ascii_case(registration_id)
    {
        warn!(
            registration_id,
            claimed, "registration id in the body differs from the connection's"
        );
        return refused(&DpsError::InvalidInput(
            "registrationId in the body differs from the one the device connected as".into(),
        ));
    }
    let payload = parsed.get("payload").cloned();
    if let Some(p) = &payload
        && p.to_string().len() > MAX_PAYLOAD
    {
        warn!(registration_id, "registration payload over the limit");
        return refused(&DpsError::InvalidInput(format!(
            "the registration payload is larger than {MAX_PAYLOAD} bytes"
        )));
    }
    if matches!(credential, Credential::None) {
        return refused(&DpsError::Unauthorized {
            reason: "no client certificate and no SAS token".into(),
        });
    }
    // Charged after the cheap checks, so requests that could never succeed do not drain it.
    if limit.is_some_and(|l| !l.try_acquire()) {
        warn!(
            registration_id,
            "registration throttled by the scope's rate limit"
        );
        return refused(&DpsError::Throttled {
            retry_after_secs: retry_after.max(1),
        });
    }
    if operations.is_full() {
        warn!(
            registration_id,
            "too many registrations awaiting their poll"
        );
        return refused(&DpsError::Throttled {
            retry_after_secs: retry_after.max(1),
        });
    }
    let request = RegistrationRequest {
        registration_id,
        credential,
        payload,
    };
    match dps.register(request).await {
        Ok(state) => {
            let op = Operations::new_id();
            let assigned =
                json!({"operationId": op, "status": "assigned", "registrationState": state});
            operations.insert(
                &op,
                Outcome {
                    registration_id: registration_id.to_owned(),
                    status: 200,
                    body: assigned.clone(),
                },
            );
            if immediate {
                return Reply {
                    status: 200,
                    body: assigned,
                    retry_after: None,
                };
            }
            Reply {
                status: 202,
                body: json!({"operationId": op, "status": "assigning"}),
                retry_after: Some(retry_after),
            }
        }
        Err(DpsError::AllocationFailed { reason }) => {
            // Azure's shape: the operation ends `failed`, with the reason in the state.
            let op = Operations::new_id();
            let failed = json!({
                "operationId": op,
                "status": "failed",
                "registrationState": {
                    "registrationId": registration_id,
                    "status": "failed",
                    "errorCode": 400_209,
                    "errorMessage": format!("Custom allocation failed: {reason}"),
                    "lastUpdatedDateTimeUtc": muster_dps::time_fmt::azure(time::OffsetDateTime::now_utc()),
                },
            });
            operations.insert(
                &op,
                Outcome {
                    registration_id: registration_id.to_owned(),
                    status: 200,
                    body: failed,
                },
            );
            Reply {
                status: 202,
                body: json!({"operationId": op, "status": "assigning"}),
                retry_after: Some(retry_after),
            }
        }
        Err(e) => error_reply(&e),
    }
}

/// Handle an operation-status poll.
pub(crate) fn poll(operations: &Operations, registration_id: &str, operation_id: &str) -> Reply {
    match operations.get(operation_id, registration_id) {
        Some(outcome) => Reply {
            status: outcome.status,
            body: outcome.body,
            retry_after: None,
        },
        None => {
            warn!(
                registration_id,
                operation_id, "poll for an unknown operation"
            );
            error_reply(&DpsError::NotFound {
                what: "operation",
                id: operation_id.to_owned(),
            })
        }
    }
}

//! Custom allocation: a webhook chooses the hub (and may supply the initial twin and a payload
//! for the device), with Azure's request and response shapes.
//!
//! Request body: `{"enrollmentGroup"|"individualEnrollment": …, "deviceRuntimeContext":
//! {"registrationId", "currentIotHubHostName", "currentDeviceId", "x509"|"symmetricKey",
//! "payload"}, "linkedHubs": [...]}`. Response: `{"iotHubHostName": …, "initialTwin"?: …,
//! "payload"?: …}`. Anything else — a non-2xx status, a timeout, a hub not in `linkedHubs` —
//! fails the registration with error code 400209.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// How long a webhook may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a webhook gave no usable decision: one line for the log and the device's `errorMessage`
/// (a status, a timeout, invalid JSON, a hub not linked to the enrollment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AllocationError(pub String);

/// Calls a custom-allocation webhook. The server supplies the HTTP implementation.
#[async_trait]
pub trait CustomAllocator: Send + Sync + std::fmt::Debug {
    /// POST `request` to `url` (with `api-version` added when given) and return the JSON reply.
    ///
    /// # Errors
    /// [`AllocationError`]: status, timeout, invalid JSON.
    async fn call(
        &self,
        url: &str,
        api_version: Option<&str>,
        request: &Value,
        timeout: Duration,
    ) -> Result<Value, AllocationError>;
}

/// The webhook's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Chosen hub host name.
    pub hub: String,
    /// Initial twin to use instead of the enrollment's.
    pub initial_twin: Option<Value>,
    /// Payload returned to the device.
    pub payload: Option<Value>,
}

/// Read and check a webhook reply against the linked hubs.
///
/// # Errors
/// [`AllocationError`] naming what is wrong with the reply.
pub fn decision(reply: &Value, linked_hubs: &[String]) -> Result<Decision, AllocationError> {
    let hub = reply
        .get("iotHubHostName")
        .and_then(Value::as_str)
        .ok_or_else(|| AllocationError("the webhook's reply has no iotHubHostName".to_owned()))?;
    let Some(linked) = linked_hubs.iter().find(|h| h.eq_ignore_ascii_case(hub)) else {
        return Err(AllocationError(format!(
            "the webhook chose '{hub}', which is not one of the enrollment's hubs"
        )));
    };
    let initial_twin = reply.get("initialTwin").filter(|v| !v.is_null()).cloned();
    if let Some(t) = &initial_twin
        && !t.is_object()
    {
        return Err(AllocationError(
            "the webhook's initialTwin is not a JSON object".to_owned(),
        ));
    }
    Ok(Decision {
        hub: linked.clone(),
        initial_twin,
        payload: reply.get("payload").filter(|v| !v.is_null()).cloned(),
    })
}

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

/// Calls a custom-allocation webhook. The server supplies the HTTP implementation.
#[async_trait]
pub trait CustomAllocator: Send + Sync + std::fmt::Debug {
    /// POST `request` to `url` (with `api-version` added when given) and return the JSON reply.
    ///
    /// # Errors
    /// A one-line reason (status, timeout, invalid JSON) for the log and the device's
    /// `errorMessage`.
    async fn call(
        &self,
        url: &str,
        api_version: Option<&str>,
        request: &Value,
        timeout: Duration,
    ) -> Result<Value, String>;
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
/// A one-line reason.
pub fn decision(reply: &Value, linked_hubs: &[String]) -> Result<Decision, String> {
    let hub = reply
        .get("iotHubHostName")
        .and_then(Value::as_str)
        .ok_or_else(|| "the webhook's reply has no iotHubHostName".to_owned())?;
    let Some(linked) = linked_hubs.iter().find(|h| h.eq_ignore_ascii_case(hub)) else {
        return Err(format!(
            "the webhook chose '{hub}', which is not one of the enrollment's hubs"
        ));
    };
    let initial_twin = reply.get("initialTwin").filter(|v| !v.is_null()).cloned();
    if let Some(t) = &initial_twin
        && !t.is_object()
    {
        return Err("the webhook's initialTwin is not a JSON object".to_owned());
    }
    Ok(Decision {
        hub: linked.clone(),
        initial_twin,
        payload: reply.get("payload").filter(|v| !v.is_null()).cloned(),
    })
}

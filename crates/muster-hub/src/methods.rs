//! Direct methods: the service's request, checked against IoT Hub's limits, and the device's
//! answer.
//!
//! A call names a method (no `/`, `?`, `#` or `+`, since transports put it in an address),
//! carries a JSON payload of at most 128 KB, and waits 5–300 s (default 30) for the device.
//! [`crate::Hub::invoke_method`] delivers it to the identity's live session and waits for the
//! reply the transport passes to [`crate::Hub::complete_method`].

use std::time::Duration;

use serde_json::Value;

use crate::registry::HubError;

/// Largest method payload (request or response), as in IoT Hub.
pub const MAX_METHOD_PAYLOAD: usize = 128 * 1024;
/// Shortest and longest response timeout a service may ask for.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 5..=300;
/// The response timeout when the service names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A validated direct-method call.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    /// Method name.
    pub name: String,
    /// Payload, as JSON text.
    pub payload: String,
    /// How long to wait for the device.
    pub timeout: Duration,
}

/// A device's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResult {
    /// The status the device chose.
    pub status: u16,
    /// The device's payload (JSON; text that is not JSON becomes a JSON string).
    pub payload: Value,
}

impl MethodCall {
    /// Read IoT Hub's request body: `{"methodName", "payload", "responseTimeoutInSeconds",
    /// "connectTimeoutInSeconds"}`.
    ///
    /// # Errors
    /// [`HubError::InvalidInput`] naming the broken rule.
    pub fn from_request(body: &Value) -> Result<Self, HubError> {
        let name = body
            .get("methodName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && !n.contains(['/', '?', '#', '+']))
            .ok_or_else(|| {
                HubError::InvalidInput("methodName is required (no '/', '?', '#' or '+')".into())
            })?
            .to_owned();
        let timeout = match body.get("responseTimeoutInSeconds") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(v) => match v.as_u64() {
                Some(s) if TIMEOUT_RANGE.contains(&s) => Duration::from_secs(s),
                _ => {
                    return Err(HubError::InvalidInput(
                        "responseTimeoutInSeconds must be between 5 and 300".into(),
                    ));
                }
            },
        };
        let payload = body
            .get("payload")
            .cloned()
            .unwrap_or(Value::Null)
            .to_string();
        if payload.len() > MAX_METHOD_PAYLOAD {
            return Err(HubError::InvalidInput(
                "the method payload is larger than 128 KB".into(),
            ));
        }
        Ok(Self {
            name,
            payload,
            timeout,
        })
    }
}

impl MethodResult {
    /// The device's answer from its status and payload bytes.
    #[must_use]
    pub fn from_device(status: u16, payload: &[u8]) -> Self {
        let payload = if payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(payload)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
        };
        Self { status, payload }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn limits() {
        let ok = MethodCall::from_request(&json!({"methodName": "reboot", "payload": {"a": 1}}))
            .unwrap();
        assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
        assert_eq!(ok.payload, r#"{"a":1}"#);
        for bad in [
            json!({"payload": 1}),
            json!({"methodName": "a/b"}),
            json!({"methodName": "m", "responseTimeoutInSeconds": 4}),
            json!({"methodName": "m", "responseTimeoutInSeconds": 301}),
            json!({"methodName": "m", "payload": "x".repeat(MAX_METHOD_PAYLOAD)}),
        ] {
            assert!(MethodCall::from_request(&bad).is_err(), "{bad}");
        }
        let edge = json!({"methodName": "m", "responseTimeoutInSeconds": 300});
        assert_eq!(
            MethodCall::from_request(&edge).unwrap().timeout,
            Duration::from_secs(300)
        );
    }

    #[test]
    fn device_answers() {
        assert_eq!(MethodResult::from_device(200, b"").payload, Value::Null);
        assert_eq!(
            MethodResult::from_device(200, b"{\"x\":1}").payload,
            json!({"x": 1})
        );
        assert_eq!(
            MethodResult::from_device(500, b"oops").payload,
            json!("oops")
        );
    }
}

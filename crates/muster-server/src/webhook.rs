//! The HTTP side of custom allocation: POST the request to the enrollment's webhook with a
//! timeout. Webhooks may be plain `http://` (a function on the same host) or `https://`, trusted
//! through the public roots or this server's own trust root.

use std::time::Duration;

use async_trait::async_trait;
use muster_dps::custom::{AllocationError, CustomAllocator};
use serde_json::Value;

/// reqwest-based [`CustomAllocator`].
#[derive(Debug)]
pub(crate) struct HttpAllocator {
    client: reqwest::Client,
}

impl HttpAllocator {
    pub(crate) fn new(extra_root_pem: Option<&[u8]>) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = extra_root_pem {
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
        }
        Ok(Self {
            client: builder.build()?,
        })
    }
}

#[async_trait]
impl CustomAllocator for HttpAllocator {
    async fn call(
        &self,
        url: &str,
        api_version: Option<&str>,
        request: &Value,
        timeout: Duration,
    ) -> Result<Value, AllocationError> {
        let mut req = self.client.post(url).timeout(timeout).json(request);
        if let Some(v) = api_version {
            req = req.query(&[("api-version", v)]);
        }
        // reqwest's messages carry the URL, which may hold a function key: never show it.
        let resp = req.send().await.map_err(|e| {
            let e = e.without_url();
            AllocationError(if e.is_timeout() {
                format!("the webhook did not answer within {} s", timeout.as_secs())
            } else {
                format!("the webhook cannot be reached ({e})")
            })
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(AllocationError(format!(
                "the webhook answered HTTP {}",
                status.as_u16()
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| AllocationError(format!("reading the webhook's reply: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AllocationError(format!("the webhook's reply is not JSON ({e})")))
    }
}

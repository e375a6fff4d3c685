//! A small client for muster's REST API: connection string → SAS token per request, the data
//! directory's trust root, Azure error bodies turned into one-line errors.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use muster_auth::connection_string::ConnectionString;
use muster_auth::sas::make_token;
use reqwest::Method;
use serde_json::Value;

use crate::cli::ApiArgs;

/// A REST response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) body: Value,
    pub(crate) headers: reqwest::header::HeaderMap,
}

#[derive(Debug)]
pub(crate) struct Api {
    client: reqwest::Client,
    /// Same trust, no overall timeout: streams stay open.
    stream_client: reqwest::Client,
    base: String,
    host: String,
    conn: ConnectionString,
}

impl Api {
    pub(crate) fn new(args: &ApiArgs, env_var: &str) -> Result<Self> {
        let info_key = if env_var.contains("HUB") {
            "hubConnectionString"
        } else {
            "dpsConnectionString"
        };
        // From the data directory, a server bound to one address (a cluster node on its own
        // loopback or LAN address) is reached there, whatever its host name resolves to.
        let mut bound: Option<std::net::IpAddr> = None;
        let text = match (&args.connection_string, std::env::var(env_var)) {
            (Some(cs), _) => cs.clone(),
            (None, Ok(cs)) if !cs.is_empty() => cs,
            _ => {
                let info = crate::serve::local_info(&args.server.data_dir)?;
                bound = info
                    .get("bind")
                    .and_then(Value::as_str)
                    .and_then(|b| b.parse::<std::net::IpAddr>().ok())
                    .filter(|ip| !ip.is_unspecified());
                info.get(info_key)
                    .and_then(Value::as_str)
                    .context("the data directory has no such policy")?
                    .to_owned()
            }
        };
        let conn = ConnectionString::parse(&text)?;
        let resolve = bound.map(|ip| {
            let (host, port) = match conn.host_name.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(443)),
                None => (conn.host_name.clone(), 443),
            };
            (host, std::net::SocketAddr::new(ip, port))
        });
        if conn.key_name.is_none() || conn.key.is_none() {
            bail!("the connection string needs SharedAccessKeyName and SharedAccessKey");
        }
        let trust: PathBuf = args
            .trust
            .clone()
            .unwrap_or_else(|| args.server.data_dir.join("tls/ca.pem"));
        let root = if trust.exists() {
            let pem = std::fs::read(&trust)
                .with_context(|| format!("cannot read {}", trust.display()))?;
            Some(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| trust.display().to_string())?,
            )
        } else {
            None
        };
        let build = |timeout: Option<Duration>| {
            let mut builder = reqwest::Client::builder().use_rustls_tls();
            if let Some((host, addr)) = &resolve {
                builder = builder.resolve(host, *addr);
            }
            if let Some(root) = &root {
                builder = builder.add_root_certificate(root.clone());
            }
            if let Some(t) = timeout {
                builder = builder.timeout(t);
            }
            builder.build().context("cannot build the HTTPS client")
        };
        // Same trust; the streaming client has no overall timeout so event streams stay open.
        let client = build(Some(Duration::from_secs(60)))?;
        let stream_client = build(None)?;
        Ok(Self {
            client,
            stream_client,
            base: format!("https://{}", conn.host_name),
            host: conn.host_name.clone(),
            conn,
        })
    }

    /// A request that failed before an answer: "cannot reach the server" when there was no
    /// connection at all, the request error otherwise.
    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        match crate::hints::Unreachable::from_request(&self.base, &e) {
            Some(u) => u.into(),
            None => anyhow::Error::new(e.without_url())
                .context(format!("request to {} failed", self.base)),
        }
    }

    fn token(&self) -> Result<String> {
        let expiry =
            u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0) + 3600;
        let key = self.conn.key.as_ref().context("no key")?;
        Ok(make_token(
            &self.host,
            key,
            self.conn.key_name.as_deref(),
            expiry,
        )?)
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Reply> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=2021-10-01", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("authorization", self.token()?)
            .header("accept", "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.context("reading the response")?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if !status.is_success() {
            // DPS bodies carry `message`; IoT Hub's legacy bodies `Message: "ErrorCode:<Code>;<text>"`.
            let message = body
                .get("message")
                .or_else(|| body.get("Message"))
                .and_then(Value::as_str)
                .map_or_else(|| body.to_string(), str::to_owned);
            let code = body
                .get("errorCode")
                .map(ToString::to_string)
                .unwrap_or_default();
            bail!(
                "{method} {path}: HTTP {} {code}: {message}",
                status.as_u16()
            );
        }
        Ok(Reply { body, headers })
    }

    /// POST raw bytes with extra headers (cloud-to-device messages).
    pub(crate) async fn send_bytes(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
    ) -> Result<()> {
        let url = format!("{}{path}?api-version=2021-04-12", self.base);
        let mut req = self
            .client
            .post(&url)
            .header("authorization", self.token()?)
            .body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {path}: HTTP {status}: {text}");
        }
        Ok(())
    }

    /// Open a streaming GET (the event stream).
    pub(crate) async fn stream(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}{path}&api-version=2021-04-12", self.base);
        let resp = self
            .stream_client
            .get(&url)
            .header("authorization", self.token()?)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            bail!("GET {path}: HTTP {status}: {text}");
        }
        Ok(resp)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        Ok(self.call(Method::GET, path, None, &[]).await?.body)
    }

    /// All pages of a query.
    pub(crate) async fn query_all(&self, path: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut continuation: Option<String> = None;
        loop {
            let mut headers = vec![("x-ms-max-item-count", "100".to_owned())];
            if let Some(c) = &continuation {
                headers.push(("x-ms-continuation", c.clone()));
            }
            let reply = self
                .call(
                    Method::POST,
                    path,
                    Some(&serde_json::json!({"query": "*"})),
                    &headers,
                )
                .await?;
            if let Value::Array(items) = reply.body {
                out.extend(items);
            }
            continuation = reply
                .headers
                .get("x-ms-continuation")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if continuation.is_none() {
                return Ok(out);
            }
        }
    }
}

/// Percent-encode a path segment.
pub(crate) fn seg(s: &str) -> String {
    muster_auth::sas::percent_encode(s)
}

/// A runtime for one management command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Print JSON or the table form.
pub(crate) fn print(output: crate::cli::Output, value: &Value, table: impl FnOnce(&Value)) {
    match output {
        crate::cli::Output::Json => out!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        crate::cli::Output::Table => table(value),
    }
}

/// A list: JSON as it is, or a table with a header row — and a sentence when it is empty.
pub(crate) fn print_list(
    output: crate::cli::Output,
    value: &Value,
    items: &[Value],
    (what, header): (&str, &str),
    row: impl Fn(&Value),
) {
    match output {
        crate::cli::Output::Json => print(output, value, |_| {}),
        crate::cli::Output::Table if items.is_empty() => out!("No {what}."),
        crate::cli::Output::Table => {
            out!("{header}");
            for item in items {
                row(item);
            }
        }
    }
}

/// Set a field of a JSON object (no-op on anything else).
pub(crate) fn set(doc: &mut Value, key: &str, value: Value) {
    if let Some(o) = doc.as_object_mut() {
        o.insert(key.to_owned(), value);
    }
}

/// The string at a JSON pointer, or "".
pub(crate) fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// An `If-Match` header: the etag quoted, or `*`.
pub(crate) fn if_match(etag: Option<String>) -> Vec<(&'static str, String)> {
    vec![(
        "if-match",
        etag.map_or_else(
            || "*".to_owned(),
            |e| format!("\"{}\"", e.trim_matches('"')),
        ),
    )]
}

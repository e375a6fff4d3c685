//! `muster hub …`: device identities and twins over the REST API (IoT Hub service shapes).

use anyhow::{Context as _, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};

use crate::api::{Api, if_match, print, print_list, s, seg, set};
use crate::cli::{
    ConsumerGroupCommand, DeviceIdentityCommand, DeviceTwinCommand, HubCommand, Output,
};

pub(crate) fn run(
    api_args: &crate::cli::ApiArgs,
    command: HubCommand,
    output: Output,
) -> Result<()> {
    let runtime = crate::api::runtime()?;
    runtime.block_on(async {
        let api = Api::new(api_args, "MUSTER_HUB_CONNECTION_STRING")?;
        match command {
            HubCommand::DeviceIdentity(c) => identity(&api, c, output).await,
            HubCommand::DeviceTwin(c) => twin(&api, c, output).await,
            HubCommand::Query { query_command } => {
                let mut all = Vec::new();
                let mut continuation: Option<String> = None;
                loop {
                    let mut headers = vec![("x-ms-max-item-count", "100".to_owned())];
                    if let Some(c) = &continuation {
                        headers.push(("x-ms-continuation", c.clone()));
                    }
                    let reply = api.call(Method::POST, "/devices/query", Some(&json!({"query": query_command})), &headers).await?;
                    if let Value::Array(items) = reply.body {
                        all.extend(items);
                    }
                    continuation = reply.headers.get("x-ms-continuation").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    if continuation.is_none() {
                        break;
                    }
                }
                print(output, &json!(all), |v| {
                    for t in v.as_array().into_iter().flatten() {
                        if t.get("deviceId").is_some() {
                            twin_table(t);
                        } else {
                            out!("{t}");
                        }
                    }
                });
                Ok(())
            }
            HubCommand::C2d(crate::cli::C2dCommand::Send {
                device_id,
                data,
                props,
                message_id,
                correlation_id,
                ack,
                expiry,
            }) => {
                let mut headers: Vec<(String, String)> = Vec::new();
                for p in props {
                    let (k, v) = p.split_once('=').with_context(|| format!("--prop '{p}' is not KEY=VALUE"))?;
                    headers.push((format!("iothub-app-{k}"), v.to_owned()));
                }
                for (name, value) in [("iothub-messageid", message_id), ("iothub-correlationid", correlation_id), ("iothub-ack", ack), ("iothub-expiry", expiry.map(|e| e.to_string()))] {
                    if let Some(v) = value {
                        headers.push((name.to_owned(), v));
                    }
                }
                api.send_bytes(&format!("/devices/{}/messages/devicebound", seg(&device_id)), data.into_bytes(), &headers).await?;
                if output == Output::Table {
                    out!("Queued a cloud-to-device message for '{device_id}'.");
                }
                Ok(())
            }
            HubCommand::InvokeDeviceMethod {
                device_id,
                method_name,
                method_payload,
                timeout,
            } => {
                let payload = parse("--method-payload", &method_payload)?;
                let body = json!({"methodName": method_name, "payload": payload, "responseTimeoutInSeconds": timeout, "connectTimeoutInSeconds": 0});
                let r = api.call(Method::POST, &format!("/twins/{}/methods", seg(&device_id)), Some(&body), &[]).await?.body;
                print(output, &r, |r| {
                    out!("status   {}", r.get("status").cloned().unwrap_or(Value::Null));
                    out!("payload  {}", r.get("payload").cloned().unwrap_or(Value::Null));
                });
                Ok(())
            }
            HubCommand::ConsumerGroup(c) => consumer_group(&api, c, output).await,
            HubCommand::Route(c) => crate::routing::route(&api, c, output).await,
            HubCommand::Endpoint(c) => crate::routing::endpoint(&api, c, output).await,
            HubCommand::Enrichment(c) => crate::routing::enrichment(&api, c, output).await,
            HubCommand::MonitorEvents {
                device_id,
                from,
                properties,
                timeout,
            } => {
                monitor(
                    &api,
                    device_id.as_deref(),
                    &from,
                    properties,
                    timeout,
                    output,
                )
                .await
            }
        }
    })
}

const DEVICE_HEADER: (&str, &str) = (
    "devices",
    "DEVICE ID                    STATUS    AUTH          CONNECTION    LAST ACTIVITY",
);

fn device_row(d: &Value) {
    out!(
        "{:<28} {:<9} {:<13} {:<13} {}",
        s(d, "/deviceId"),
        s(d, "/status"),
        s(d, "/authentication/type"),
        s(d, "/connectionState"),
        s(d, "/lastActivityTime")
    );
}

async fn consumer_group(api: &Api, cmd: ConsumerGroupCommand, output: Output) -> Result<()> {
    const BASE: &str = "/eventHubEndpoints/events/consumerGroups";
    let row = |g: &Value| {
        out!("{:<40} {}", s(g, "/name"), s(g, "/properties/created"));
    };
    match cmd {
        ConsumerGroupCommand::Create { name } => {
            let g = api
                .call(Method::PUT, &format!("{BASE}/{}", seg(&name)), None, &[])
                .await?
                .body;
            print(output, &g, row);
        }
        ConsumerGroupCommand::Show { name } => {
            let g = api
                .call(Method::GET, &format!("{BASE}/{}", seg(&name)), None, &[])
                .await?
                .body;
            print(output, &g, row);
        }
        ConsumerGroupCommand::List => {
            let list = api.call(Method::GET, BASE, None, &[]).await?.body;
            let groups = list.get("value").cloned().unwrap_or(Value::Array(vec![]));
            print(output, &groups, |v| {
                out!("{:<40} CREATED", "NAME");
                for g in v.as_array().into_iter().flatten() {
                    row(g);
                }
            });
        }
        ConsumerGroupCommand::Delete { name } => {
            api.call(Method::DELETE, &format!("{BASE}/{}", seg(&name)), None, &[])
                .await?;
            if output == Output::Table {
                out!("Deleted consumer group '{name}'.");
            }
        }
    }
    Ok(())
}

fn parse(flag: &str, text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{flag} is not valid JSON"))
}

async fn identity(api: &Api, cmd: DeviceIdentityCommand, output: Output) -> Result<()> {
    match cmd {
        DeviceIdentityCommand::Create {
            device_id,
            auth_method,
            primary_thumbprint,
            secondary_thumbprint,
            status,
        } => {
            let authentication = match auth_method.as_str() {
                "shared_private_key" => {
                    json!({"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}})
                }
                "x509_thumbprint" => json!({"type": "selfSigned", "x509Thumbprint": {
                    "primaryThumbprint": primary_thumbprint.context("--primary-thumbprint is required for x509_thumbprint")?,
                    "secondaryThumbprint": secondary_thumbprint}}),
                "x509_ca" => json!({"type": "certificateAuthority"}),
                other => bail!(
                    "unknown --auth-method '{other}' (shared_private_key, x509_thumbprint, x509_ca)"
                ),
            };
            let body = json!({"deviceId": device_id, "status": status, "authentication": authentication, "capabilities": {"iotEdge": false}});
            let r = api
                .call(
                    Method::PUT,
                    &format!("/devices/{}", seg(&device_id)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print(output, &r, device_row);
        }
        DeviceIdentityCommand::List { top } => {
            let r = api.get(&format!("/devices?top={top}")).await?;
            let items = r.as_array().cloned().unwrap_or_default();
            print_list(output, &r, &items, DEVICE_HEADER, device_row);
        }
        DeviceIdentityCommand::Show { device_id } => {
            let r = api.get(&format!("/devices/{}", seg(&device_id))).await?;
            print(output, &r, |d| {
                device_row(d);
                if let Some(t) = d
                    .pointer("/authentication/x509Thumbprint/primaryThumbprint")
                    .and_then(Value::as_str)
                {
                    out!("  thumbprint {t}");
                }
            });
        }
        DeviceIdentityCommand::Update { device_id, status } => {
            let path = format!("/devices/{}", seg(&device_id));
            let mut d = api.get(&path).await?;
            let etag = s(&d, "/etag").to_owned();
            if let Some(o) = d.as_object_mut() {
                o.insert("status".into(), json!(status));
            }
            let r = api
                .call(Method::PUT, &path, Some(&d), &if_match(Some(etag)))
                .await?
                .body;
            print(output, &r, device_row);
        }
        DeviceIdentityCommand::Delete { device_id, etag } => {
            api.call(
                Method::DELETE,
                &format!("/devices/{}", seg(&device_id)),
                None,
                &if_match(etag),
            )
            .await?;
            if output == Output::Table {
                out!("Deleted device '{device_id}'.");
            }
        }
    }
    Ok(())
}

fn twin_table(t: &Value) {
    out!(
        "{}  version {}  etag {}",
        s(t, "/deviceId"),
        t.get("version").unwrap_or(&Value::Null),
        s(t, "/etag")
    );
    let strip = |v: Option<&Value>| {
        let mut m = v.and_then(Value::as_object).cloned().unwrap_or_default();
        m.remove("$metadata");
        Value::Object(m)
    };
    out!("  tags      {}", t.get("tags").unwrap_or(&Value::Null));
    out!("  desired   {}", strip(t.pointer("/properties/desired")));
    out!("  reported  {}", strip(t.pointer("/properties/reported")));
}

async fn twin(api: &Api, cmd: DeviceTwinCommand, output: Output) -> Result<()> {
    match cmd {
        DeviceTwinCommand::Show { device_id } => {
            let r = api.get(&format!("/twins/{}", seg(&device_id))).await?;
            print(output, &r, twin_table);
        }
        DeviceTwinCommand::Update {
            device_id,
            desired,
            tags,
            etag,
        } => {
            if desired.is_none() && tags.is_none() {
                bail!("give --desired and/or --tags");
            }
            let mut patch = json!({});
            if let Some(d) = desired {
                set(
                    &mut patch,
                    "properties",
                    json!({"desired": parse("--desired", &d)?}),
                );
            }
            if let Some(t) = tags {
                set(&mut patch, "tags", parse("--tags", &t)?);
            }
            let r = api
                .call(
                    Method::PATCH,
                    &format!("/twins/{}", seg(&device_id)),
                    Some(&patch),
                    &if_match(etag),
                )
                .await?
                .body;
            print(output, &r, twin_table);
        }
        DeviceTwinCommand::Replace {
            device_id,
            json,
            etag,
        } => {
            let doc = parse("--json", &json)?;
            let r = api
                .call(
                    Method::PUT,
                    &format!("/twins/{}", seg(&device_id)),
                    Some(&doc),
                    &if_match(etag),
                )
                .await?
                .body;
            print(output, &r, twin_table);
        }
    }
    Ok(())
}

async fn monitor(
    api: &Api,
    device: Option<&str>,
    from: &str,
    properties: bool,
    timeout: Option<u64>,
    output: Output,
) -> Result<()> {
    let mut path = format!("/messages/events?from={}", seg(from));
    if let Some(d) = device {
        path.push_str(&format!("&deviceId={}", seg(d)));
    }
    let mut response = api.stream(&path).await?;
    if output == Output::Table {
        eprintln!("Watching device-to-cloud messages (from {from}); Ctrl-C stops.");
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + std::time::Duration::from_secs(t));
    let mut pending = String::new();
    loop {
        let next = response.chunk();
        let chunk = match deadline {
            Some(d) => match tokio::time::timeout_at(d, next).await {
                Ok(c) => c,
                Err(_) => return Ok(()),
            },
            None => next.await,
        };
        let Some(bytes) = chunk.context("the event stream broke")? else {
            return Ok(());
        };
        pending.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(i) = pending.find('\n') {
            let line: String = pending.drain(..=i).collect();
            let Ok(event) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            match output {
                Output::Json => out!("{}", event),
                Output::Table => {
                    out!("event:");
                    out!("  origin: {}", s(&event, "/deviceId"));
                    out!("  enqueued: {}", s(&event, "/enqueuedTimeUtc"));
                    out!(
                        "  payload: {}",
                        event.get("body").cloned().unwrap_or(Value::Null)
                    );
                    if properties {
                        out!(
                            "  properties: {}",
                            event.get("properties").cloned().unwrap_or(Value::Null)
                        );
                        out!(
                            "  system properties: {}",
                            event
                                .get("systemProperties")
                                .cloned()
                                .unwrap_or(Value::Null)
                        );
                    }
                }
            }
        }
    }
}

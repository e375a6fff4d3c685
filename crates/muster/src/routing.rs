//! `muster hub route|endpoint|enrichment …`: message routing over the REST API (`/routing`).

use anyhow::{Context as _, Result, bail};
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::api::{Api, print, print_list, s, seg, set};
use crate::cli::{EndpointCommand, EnrichmentCommand, Output, RouteCommand};

fn pairs(flag: &str, items: &[String]) -> Result<Map<String, Value>> {
    items
        .iter()
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("{flag} '{p}' is not KEY=VALUE"))?;
            Ok((k.to_owned(), json!(v)))
        })
        .collect()
}

fn route_row(r: &Value) {
    out!(
        "{:<24} {:<28} {:<8} {:<24} {}",
        s(r, "/name"),
        s(r, "/source"),
        r.get("isEnabled").and_then(Value::as_bool).unwrap_or(true),
        r.get("endpointNames")
            .and_then(Value::as_array)
            .map(|a| a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","))
            .unwrap_or_default(),
        s(r, "/condition")
    );
}

const ROUTES: (&str, &str) = (
    "routes",
    "NAME                     SOURCE                       ENABLED  ENDPOINTS                CONDITION",
);

pub(crate) async fn route(api: &Api, cmd: RouteCommand, output: Output) -> Result<()> {
    match cmd {
        RouteCommand::Create {
            name,
            source,
            condition,
            endpoints,
            disabled,
        } => {
            let body = json!({
                "name": name,
                "source": source,
                "condition": condition,
                "endpointNames": endpoints,
                "isEnabled": !disabled,
            });
            let r = api
                .call(
                    Method::PUT,
                    &format!("/routing/routes/{}", seg(&name)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print(output, &r, route_row);
        }
        RouteCommand::List => {
            let config = api.call(Method::GET, "/routing", None, &[]).await?.body;
            let routes = config.get("routes").cloned().unwrap_or(json!([]));
            let items = routes.as_array().cloned().unwrap_or_default();
            print_list(output, &routes, &items, ROUTES, route_row);
            if output == Output::Table {
                let on = config
                    .pointer("/fallbackRoute/isEnabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                out!(
                    "Fallback route (unmatched device messages to 'events'): {}",
                    if on { "enabled" } else { "disabled" }
                );
            }
        }
        RouteCommand::Show { name } => {
            let r = api
                .call(
                    Method::GET,
                    &format!("/routing/routes/{}", seg(&name)),
                    None,
                    &[],
                )
                .await?
                .body;
            print(output, &r, route_row);
        }
        RouteCommand::Delete { name } => {
            api.call(
                Method::DELETE,
                &format!("/routing/routes/{}", seg(&name)),
                None,
                &[],
            )
            .await?;
            if output == Output::Table {
                out!("Deleted route '{name}'.");
            }
        }
        RouteCommand::Test {
            name,
            condition,
            body,
            app_properties,
            system_properties,
            twin,
        } => {
            let body_value = if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&body).unwrap_or(Value::String(body))
            };
            let twin = twin
                .map(|t| serde_json::from_str::<Value>(&t).context("--twin is not valid JSON"))
                .transpose()?;
            let mut request = json!({
                "message": {
                    "body": body_value,
                    "appProperties": pairs("--app-property", &app_properties)?,
                    "systemProperties": pairs("--system-property", &system_properties)?,
                },
                "twin": twin,
            });
            match (name, condition) {
                (Some(n), None) => set(&mut request, "route", json!(n)),
                (None, Some(c)) => set(&mut request, "condition", json!(c)),
                _ => bail!("give --name (a route) or --condition"),
            }
            let r = api
                .call(Method::POST, "/routing/test", Some(&request), &[])
                .await?
                .body;
            print(output, &r, |r| {
                out!("result     {}", s(r, "/result"));
                out!("condition  {}", s(r, "/condition"));
            });
        }
        RouteCommand::Fallback { enabled } => {
            let r = api
                .call(
                    Method::PUT,
                    "/routing/fallbackRoute",
                    Some(&json!({"isEnabled": enabled})),
                    &[],
                )
                .await?
                .body;
            print(output, &r, |_| {
                out!(
                    "Fallback route {}.",
                    if enabled { "enabled" } else { "disabled" }
                );
            });
        }
    }
    Ok(())
}

fn endpoint_row(e: &Value) {
    let target = match s(e, "/type") {
        "webhook" => s(e, "/url").to_owned(),
        "file" => s(e, "/directory").to_owned(),
        "nats" => format!("{} {}", s(e, "/url"), s(e, "/subject")),
        _ => String::new(),
    };
    out!("{:<24} {:<8} {}", s(e, "/name"), s(e, "/type"), target);
}

pub(crate) async fn endpoint(api: &Api, cmd: EndpointCommand, output: Output) -> Result<()> {
    match cmd {
        EndpointCommand::Create {
            name,
            kind,
            url,
            headers,
            directory,
            max_file_bytes,
            max_file_seconds,
            subject,
        } => {
            let mut body = json!({"name": name, "type": kind});
            let need = |v: Option<String>, flag: &str| {
                v.with_context(|| format!("a {kind} endpoint needs {flag}"))
            };
            match kind.as_str() {
                "webhook" => {
                    set(&mut body, "url", json!(need(url, "--url")?));
                    set(
                        &mut body,
                        "headers",
                        Value::Object(pairs("--header", &headers)?),
                    );
                }
                "file" => {
                    set(
                        &mut body,
                        "directory",
                        json!(need(directory, "--directory")?),
                    );
                    if let Some(b) = max_file_bytes {
                        set(&mut body, "maxFileBytes", json!(b));
                    }
                    if let Some(s) = max_file_seconds {
                        set(&mut body, "maxFileSeconds", json!(s));
                    }
                }
                "nats" => {
                    set(&mut body, "url", json!(need(url, "--url")?));
                    set(&mut body, "subject", json!(need(subject, "--subject")?));
                }
                other => bail!("unknown endpoint type '{other}': use webhook, file or nats"),
            }
            let e = api
                .call(
                    Method::PUT,
                    &format!("/routing/endpoints/{}", seg(&name)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print(output, &e, endpoint_row);
        }
        EndpointCommand::List => {
            let list = api
                .call(Method::GET, "/routing/endpoints", None, &[])
                .await?
                .body;
            let items = list.as_array().cloned().unwrap_or_default();
            print_list(
                output,
                &list,
                &items,
                (
                    "custom endpoints",
                    "NAME                     TYPE     TARGET",
                ),
                endpoint_row,
            );
        }
        EndpointCommand::Show { name } => {
            let e = api
                .call(
                    Method::GET,
                    &format!("/routing/endpoints/{}", seg(&name)),
                    None,
                    &[],
                )
                .await?
                .body;
            print(output, &e, endpoint_row);
        }
        EndpointCommand::Delete { name } => {
            api.call(
                Method::DELETE,
                &format!("/routing/endpoints/{}", seg(&name)),
                None,
                &[],
            )
            .await?;
            if output == Output::Table {
                out!("Deleted endpoint '{name}'.");
            }
        }
    }
    Ok(())
}

pub(crate) async fn enrichment(api: &Api, cmd: EnrichmentCommand, output: Output) -> Result<()> {
    match cmd {
        EnrichmentCommand::Set {
            key,
            value,
            endpoints,
        } => {
            let body = json!({"key": key, "value": value, "endpointNames": endpoints});
            let e = api
                .call(
                    Method::PUT,
                    &format!("/routing/enrichments/{}", seg(&key)),
                    Some(&body),
                    &[],
                )
                .await?
                .body;
            print(output, &e, |e| {
                out!("{} = {}", s(e, "/key"), s(e, "/value"));
            });
        }
        EnrichmentCommand::List => {
            let config = api.call(Method::GET, "/routing", None, &[]).await?.body;
            let list = config.get("enrichments").cloned().unwrap_or(json!([]));
            let items = list.as_array().cloned().unwrap_or_default();
            print_list(
                output,
                &list,
                &items,
                (
                    "enrichments",
                    "KEY                      VALUE                          ENDPOINTS",
                ),
                |e| {
                    out!(
                        "{:<24} {:<30} {}",
                        s(e, "/key"),
                        s(e, "/value"),
                        e.get("endpointNames")
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    );
                },
            );
        }
        EnrichmentCommand::Delete { key } => {
            api.call(
                Method::DELETE,
                &format!("/routing/enrichments/{}", seg(&key)),
                None,
                &[],
            )
            .await?;
            if output == Output::Table {
                out!("Deleted enrichment '{key}'.");
            }
        }
    }
    Ok(())
}

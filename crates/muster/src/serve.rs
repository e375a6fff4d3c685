//! `muster serve`, `muster info`, `muster config default`.

use std::path::Path;

use anyhow::{Context as _, Result};
use muster_server::bootstrap::{Paths, State};
use muster_server::config::{Config, DEFAULT_CONFIG};
use serde_json::Value;

use crate::cli::ServeArgs;

/// Written by the server so `info` and the management commands find it.
const ENDPOINT_FILE: &str = muster_server::ENDPOINT_FILE;

fn init_logging(format: crate::cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        crate::cli::LogFormat::Json => builder.json().with_current_span(true).try_init(),
        crate::cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// Threads for blocking work (the stores' SQLite calls, file reads, password hashing).
const BLOCKING_THREADS: usize = 8;

/// Defaults ← `--config` file ← flags.
fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_toml(&text).with_context(|| path.display().to_string())?
        }
        None => Config::default(),
    };
    if let Some(d) = &args.data_dir {
        config.data_dir.clone_from(d);
    }
    if let Some(b) = args.bind {
        config.bind = b;
    }
    if let Some(p) = args.mqtt_port {
        config.mqtt_port = p;
    }
    if let Some(p) = args.amqp_port {
        config.amqp_port = p;
    }
    if let Some(p) = args.https_port {
        config.https_port = p;
    }
    if let Some(p) = args.portal_port {
        config.portal_port = p;
    }
    if let Some(a) = args.metrics_bind {
        config.metrics_bind = Some(a);
    }
    if let Some(store) = &args.store {
        config.store.clone_from(store);
    }
    if let Some(bus) = &args.bus {
        config.bus = Some(bus.clone());
    }
    if let Some(node) = &args.node_id {
        config.node_id = Some(node.clone());
    }
    if !args.hostnames.is_empty() {
        config.hostnames.clone_from(&args.hostnames);
    }
    config.check()?;
    Ok(config)
}

pub(crate) fn serve(args: &ServeArgs) -> Result<()> {
    init_logging(args.log_format);
    let config = load_config(args)?;
    match muster_server::raise_open_file_limit() {
        Ok((before, after)) if after > before => tracing::info!(
            before,
            after,
            "raised the open-file limit: room for about {} device connections",
            after.saturating_sub(64)
        ),
        Ok((_, limit)) if limit < 4096 => tracing::warn!(
            limit,
            "the open-file limit is {limit} and cannot go higher here: about {} device connections; raise the hard limit (`ulimit -Hn`, or LimitNOFILE= in a systemd unit)",
            limit.saturating_sub(64)
        ),
        Ok((_, limit)) => tracing::info!(
            limit,
            "open-file limit: room for about {} device connections",
            limit.saturating_sub(64)
        ),
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
    // Blocking work is SQLite behind one mutex per database, TLS key files and password
    // hashes: a few threads do all of it. Tokio's default allows 512, and a connect storm
    // made about two hundred, each waiting on the same lock and each keeping a stack and its
    // own malloc cache and arena after the storm (the soak measured RSS creeping up with
    // reconnects while the live heap stayed flat).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Take over SIGTERM and SIGINT before the server announces itself (endpoint.json), so a
        // stop that arrives at once is an orderly one.
        let signals = Signals::install();
        let running = muster_server::start(config.clone()).await?;
        if let Some(password) = &running.admin_password {
            // One write, and a closed stdout does not stop a running server (other commands
            // end quietly on one).
            use std::io::Write as _;
            let text = format!(
                "portal admin password (shown once; `muster portal reset-admin-password` makes a new one): {password}\nportal: {} — sign in as admin\n",
                field(&running.info, "portalUrl").as_str().unwrap_or_default()
            );
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                tracing::warn!(
                    "stdout is closed, so the portal admin password could not be shown: `muster portal reset-admin-password` makes a new one"
                );
            }
        }
        let token = running.shutdown_token();
        tokio::spawn(async move {
            signals.wait().await;
            tracing::info!("shutting down");
            token.cancel();
        });
        running.wait().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// SIGTERM and SIGINT, registered when made (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                unix: signal(SignalKind::terminate())
                    .and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `muster portal reset-admin-password`.
pub(crate) fn reset_admin_password(data_dir: &Path) -> Result<()> {
    if !data_dir.join("state.json").exists() {
        anyhow::bail!(
            "{} is not a muster data directory (it has no state.json) — start the server once with `muster serve --data-dir {}`, or point --data-dir at the server's",
            data_dir.display(),
            data_dir.display()
        );
    }
    let password = muster_server::portal::set_admin_password(data_dir).with_context(|| {
        format!(
            "cannot write {}",
            muster_server::portal::admin_hash_path(data_dir).display()
        )
    })?;
    out!("new portal admin password (shown once): {password}");
    Ok(())
}

/// `muster cluster status`: the live nodes of the data directory's cluster.
pub(crate) fn cluster_status(data_dir: &Path, bus: &str, output: crate::cli::Output) -> Result<()> {
    let info = local_info(data_dir)?;
    let scope = info
        .get("idScope")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let runtime = crate::api::runtime()?;
    let nodes = runtime
        .block_on(muster_bus_nats::status(bus, &scope))
        .context("cannot read the cluster's state")?;
    let connections: u64 = nodes.iter().map(|n| n.connections).sum();
    match output {
        crate::cli::Output::Json => out!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "idScope": scope,
                "nodes": nodes,
                "connections": connections,
            }))
            .unwrap_or_default()
        ),
        _ => {
            if nodes.is_empty() {
                out!("no live node of cluster {scope} on {bus}");
                return Ok(());
            }
            out!(
                "{:<24} {:>12} {:<22} {:>10}",
                "NODE",
                "CONNECTIONS",
                "STARTED (UTC)",
                "LAST SEEN"
            );
            for n in &nodes {
                let started = time::OffsetDateTime::from_unix_timestamp(n.started_ms / 1000)
                    .map(muster_types::time_fmt::azure)
                    .unwrap_or_default();
                out!(
                    "{:<24} {:>12} {:<22} {:>8.1} s",
                    n.node,
                    n.connections,
                    started.get(..19).unwrap_or(&started),
                    n.age_ms as f64 / 1000.0
                );
            }
            out!(
                "{} node(s), {connections} connection(s), cluster {scope}",
                nodes.len()
            );
        }
    }
    Ok(())
}

/// The server's identity and endpoint as recorded in its data directory.
pub(crate) fn local_info(data_dir: &Path) -> Result<Value> {
    let paths = Paths {
        dir: data_dir.to_path_buf(),
    };
    let text = match std::fs::read_to_string(paths.state()) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!(
            "{} is not a muster data directory (it has no state.json) — start the server once with `muster serve --data-dir {}`, or point --data-dir at the server's",
            data_dir.display(),
            data_dir.display()
        ),
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot read {}", paths.state().display()))
            );
        }
    };
    let state: State =
        serde_json::from_str(&text).with_context(|| paths.state().display().to_string())?;
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    let mut mqtt_port = config.mqtt_port;
    let mut https_port = config.https_port;
    let mut amqp_port = config.amqp_port;
    let mut portal_port = config.portal_port;
    if let Ok(text) = std::fs::read_to_string(data_dir.join(ENDPOINT_FILE))
        && let Ok(endpoint) = serde_json::from_str::<Value>(&text)
    {
        if let Some(h) = field(&endpoint, "hostnames").as_array() {
            config.hostnames = h
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
        }
        if let Some(b) = field(&endpoint, "bind")
            .as_str()
            .and_then(|b| b.parse().ok())
        {
            config.bind = b;
        }
        mqtt_port = field(&endpoint, "mqttPort")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(mqtt_port);
        https_port = field(&endpoint, "httpsPort")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(https_port);
        amqp_port = field(&endpoint, "amqpPort")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(amqp_port);
        portal_port = field(&endpoint, "portalPort")
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(portal_port);
        if let Some(p) = field(&endpoint, "partitions")
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
        {
            config.hub.partitions = p;
        }
    }
    let ports = muster_server::Ports {
        mqtt: mqtt_port,
        https: https_port,
        amqp: amqp_port,
        portal: portal_port,
    };
    Ok(muster_server::info(&config, &paths, &state, ports))
}

pub(crate) fn info(data_dir: &Path, json: bool) -> Result<()> {
    let info = local_info(data_dir)?;
    if json {
        out!("{}", serde_json::to_string(&info)?);
    } else {
        out!(
            "ID scope            {}",
            field(&info, "idScope").as_str().unwrap_or_default()
        );
        out!(
            "provisioning host   {}",
            field(&info, "hostname").as_str().unwrap_or_default()
        );
        out!(
            "MQTT (devices)      {}:{}",
            field(&info, "bind").as_str().unwrap_or_default(),
            field(&info, "mqttPort")
        );
        out!(
            "AMQP (SDKs)         {}:{}",
            field(&info, "bind").as_str().unwrap_or_default(),
            field(&info, "amqpPort")
        );
        out!(
            "HTTPS (REST)        {}:{}",
            field(&info, "bind").as_str().unwrap_or_default(),
            field(&info, "httpsPort")
        );
        out!(
            "portal (browsers)   {}",
            field(&info, "portalUrl").as_str().unwrap_or_default()
        );
        out!(
            "trust bundle        {}",
            field(&info, "trustBundle").as_str().unwrap_or_default()
        );
        out!(
            "hub connection      {}",
            field(&info, "hubConnectionString")
                .as_str()
                .unwrap_or_default()
        );
        out!(
            "DPS connection      {}",
            field(&info, "dpsConnectionString")
                .as_str()
                .unwrap_or_default()
        );
        out!(
            "Event Hubs-compatible name       {}",
            field(&info, "eventHubsCompatibleName")
                .as_str()
                .unwrap_or_default()
        );
        out!(
            "Event Hubs-compatible endpoint   {} ({} partitions)",
            field(&info, "eventHubsCompatibleEndpoint")
                .as_str()
                .unwrap_or_default(),
            field(&info, "partitions")
        );
        out!(
            "Event Hubs connection            {}",
            field(&info, "eventHubsConnectionString")
                .as_str()
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// A field of a JSON object, or `null`.
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    v.get(key).unwrap_or(&NULL)
}

pub(crate) fn config_default() {
    print!("{DEFAULT_CONFIG}");
}

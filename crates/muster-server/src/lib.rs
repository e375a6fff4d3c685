//! # muster-server
//!
//! The network side of muster: configuration, the data-directory bootstrap, TLS, the MQTT
//! listener (DPS and hub sessions), the HTTPS REST API, the wiring between the domain crates,
//! and orderly shutdown. Domain rules live in `muster-dps` and `muster-hub` (`Hub`); this crate
//! only translates.
//!
//! # Layout
//! - [`config`]: typed, layered configuration and the printable default.
//! - [`bootstrap`]: trust root, server certificate, ID scope, policy keys, database location.
//! - [`tls`]: the shared rustls configuration (client certificates requested, checked later).
//! - `mqtt`: the MQTT listener and its DPS and hub sessions (framing from `muster-mqtt`).
//! - `amqp`: the AMQP 1.0 listener: DPS, hub devices and service clients by link address.
//! - [`wiring`]: DPS → hub assignment and the DPS's CAs for hub authentication.
//! - `rest`: the axum router: DPS service API, DPS device API over HTTPS, SAS auth, errors.
//! - `device_api`: register/poll shared by both transports; `operations`: results awaiting a poll.
//! - `websocket`: MQTT and AMQP tunnelled through WebSockets on the HTTPS port.
//! - `json`: ASCII-only JSON for device responses; `webhook`: the HTTP client for custom allocation.
//!
//! # Ownership
//! [`Context`] is built once and shared read-only (`Arc`); the only mutable shared state is the
//! operations map (one short mutex section per register/poll) and the store (its own locking).

mod accept;
mod amqp;
pub mod bootstrap;
pub mod cluster;
pub mod config;
mod device_api;
mod json;
pub mod lock;
mod metrics;
mod mqtt;
mod operations;
pub mod portal;
mod rest;
mod routing;
pub mod tls;
mod webhook;
mod websocket;
pub mod wiring;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;

use std::net::SocketAddr;
use std::sync::Arc;

use muster_dps::{Dps, DpsConfig, Hub};
use muster_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::bootstrap::{Paths, State};
use crate::config::{Config, Limits};

/// What every connection handler shares.
#[derive(Debug)]
pub struct Context {
    pub(crate) dps: Dps,
    /// The hub core: every hub decision is made there.
    pub(crate) hub: muster_hub::Hub,
    pub(crate) operations: operations::Operations,
    pub(crate) retry_after: u32,
    /// Answer `assigned` registrations at once.
    pub(crate) immediate_result: bool,
    pub(crate) rate_limit: Option<operations::RateLimit>,
    pub(crate) limits: Limits,
    pub(crate) id_scope: String,
    pub(crate) state: State,
    /// Event Hubs receivers per partition (epochs, limits).
    pub(crate) readers: amqp::eventhub::Readers,
    /// When the hub was created (the data directory's state), Unix milliseconds.
    pub(crate) created_ms: i64,
    /// The AMQP listener's port, once bound (redirects name it).
    pub(crate) amqp_port: std::sync::OnceLock<u16>,
    /// The portal's sessions and sign-in limits.
    pub(crate) portal: portal::Portal,
    /// `muster info` for this server, once its ports are bound (the portal shows it).
    pub(crate) info: std::sync::OnceLock<Value>,
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Data directory.
    #[error("cannot prepare the data directory")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    /// Database.
    #[error("cannot open the database")]
    Store(#[from] muster_store::StoreError),
    /// The PostgreSQL store.
    #[error(transparent)]
    Postgres(#[from] muster_store_pg::OpenError),
    /// Joining the cluster bus.
    #[error(transparent)]
    Bus(#[from] muster_bus_nats::JoinError),
    /// Joining the nodes that share the store.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// TLS.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Another server holds the data directory, or it cannot be locked.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// Binding a port.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a file.
    #[error("cannot read {path}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
#[derive(Debug)]
pub struct Running {
    /// Where MQTT listens.
    pub mqtt_addr: SocketAddr,
    /// Where AMQP listens.
    pub amqp_addr: SocketAddr,
    /// Where HTTPS listens.
    pub https_addr: SocketAddr,
    /// Where the portal's HTTPS (no client-certificate request) listens.
    pub portal_addr: SocketAddr,
    /// Where plain-HTTP `/metrics` listens (`metrics_bind`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// `muster info` for this server.
    pub info: Value,
    /// The portal's admin password when this start created it (shown once, never stored).
    pub admin_password: Option<String>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    grace: std::time::Duration,
    /// `DIR/endpoint.json`, removed on a clean stop.
    endpoint: std::path::PathBuf,
    /// Held until the server has stopped.
    _lock: lock::DataDirLock,
}

impl Running {
    /// Ask the server to stop (idempotent).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// A token that stops the server when cancelled.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Wait until the server has stopped: listeners closed, connections drained or, after the
    /// grace period, abandoned.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            info!("shutdown grace period over; closing remaining connections");
        }
        // While the lock is still held: a server started after this one keeps its file.
        let _ = std::fs::remove_file(&self.endpoint);
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path).map_err(|source| ServerError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Prepare the data directory and build the shared context (no sockets yet).
fn build_context(
    config: &Config,
    store: Option<Arc<dyn muster_store::Store>>,
    cluster: Option<Arc<dyn muster_hub::cluster::Cluster>>,
    shared_events: Option<Arc<dyn muster_store::events::EventLog>>,
) -> Result<(Arc<Context>, Paths, State), ServerError> {
    config.check()?;
    let (paths, state) = bootstrap::prepare(config)?;
    let store: Arc<dyn muster_store::Store> = match store {
        Some(store) => store,
        None => Arc::new(SqliteStore::open(&paths.database())?),
    };
    let registry = muster_hub::registry::Registry::new(Arc::clone(&store));
    let assigner = wiring::LiveAssigner {
        registry: registry.clone(),
        context: Arc::default(),
    };
    let events: Arc<dyn muster_store::events::EventLog> = match shared_events {
        Some(events) => events,
        None => Arc::new(muster_store::events::SqliteEventLog::open(
            &paths.dir.join("events.db"),
            config.hub.event_retention,
        )?),
    };
    let hubs: Vec<Hub> = config
        .hostnames
        .iter()
        .map(|h| Hub {
            hostname: h.clone(),
            weight: 1,
        })
        .collect();
    let allocator = webhook::HttpAllocator::new(Some(&read(&paths.ca())?)).map_err(|reason| {
        ServerError::Io {
            path: paths.ca().display().to_string(),
            source: std::io::Error::other(reason),
        }
    })?;
    let dps = Dps::new(
        store,
        DpsConfig {
            id_scope: state.id_scope.clone(),
            hubs,
        },
        Arc::new(assigner.clone()),
    )
    .with_allocator(Arc::new(allocator));
    let mut resource_hosts: Vec<String> = bootstrap::server_names(config)
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    resource_hosts.push(config.bind.to_string());
    let hub = muster_hub::Hub::new(
        registry,
        events,
        Arc::new(wiring::DpsCas(dps.clone())),
        config.hostnames.clone(),
        resource_hosts,
    )
    .with_partitions(config.hub.partitions);
    let hub = match cluster {
        Some(cluster) => hub.with_cluster(cluster),
        None => hub,
    };
    let ctx = Arc::new(Context {
        dps,
        hub,
        operations: operations::Operations::default(),
        retry_after: config.dps.retry_after,
        immediate_result: config.dps.immediate_result,
        rate_limit: operations::RateLimit::new(config.dps.rate_limit),
        limits: config.limits.clone(),
        id_scope: state.id_scope.clone(),
        state: state.clone(),
        readers: amqp::eventhub::Readers::default(),
        created_ms: created_ms(&paths),
        amqp_port: std::sync::OnceLock::new(),
        portal: portal::Portal::new(
            &paths.dir,
            portal::Settings {
                idle: config.portal.session_idle,
                lifetime: config.portal.session_lifetime,
                attempts_per_minute: config.portal.sign_in_attempts_per_minute,
            },
        ),
        info: std::sync::OnceLock::new(),
    });

    let _ = assigner.context.set(Arc::downgrade(&ctx));
    Ok((ctx, paths, state))
}

/// When the data directory's state was first written, Unix milliseconds (now when unknown).
fn created_ms(paths: &Paths) -> i64 {
    let at = std::fs::metadata(&paths.dir)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .unwrap_or_else(|_| std::time::SystemTime::now());
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Raise this process's soft limit on open files to its hard limit (each device connection is
/// one descriptor; the usual soft limit, 1,024, stops a server at about a thousand devices).
/// Returns the limits before and after, or the reason it could not be raised.
///
/// # Errors
/// The system refused to change or report the limit.
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let (before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let after = rlimit::increase_nofile_limit(hard)?;
    Ok((before, after))
}

/// Bootstrap the data directory, bind both listeners and start serving.
///
/// # Errors
/// [`ServerError`] with the failing file, port or setting.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    config.check()?;
    // The ports first, then the data directory's lock: a busy port or a directory another
    // server holds ends the start before anything on disk is created or rewritten.
    let bind = |port: u16| SocketAddr::new(config.bind, port);
    let listen = |port: u16| async move {
        let listener = TcpListener::bind(bind(port))
            .await
            .map_err(|source| ServerError::Bind {
                addr: bind(port),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: bind(port),
            source,
        })?;
        Ok::<_, ServerError>((listener, addr))
    };
    let (mqtt_listener, mqtt_addr) = listen(config.mqtt_port).await?;
    let (amqp_listener, amqp_addr) = listen(config.amqp_port).await?;
    let (https_listener, https_addr) = listen(config.https_port).await?;
    let (portal_listener, portal_addr) = listen(config.portal_port).await?;
    let metrics_listener = match config.metrics_bind {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let lock = lock::DataDirLock::acquire(&config.data_dir)?;

    // The shared store, when there is one, is reached before anything else starts: a node
    // that cannot reach its database must not accept devices.
    let shared: Option<Arc<dyn muster_store::Store>> = if config.store == "sqlite" {
        None
    } else {
        Some(Arc::new(
            muster_store_pg::PgStore::connect(&config.store, config.store_pool_size).await?,
        ))
    };
    if let Some(store) = &shared {
        cluster::share_identity(store.as_ref(), &config).await?;
    }
    // Several nodes: join the bus under the cluster's ID scope (shared through the store).
    let bus = match &config.bus {
        Some(url) => {
            let (_, state) = bootstrap::prepare(&config)?;
            Some(
                muster_bus_nats::NatsCluster::join(
                    url,
                    &config::node_id(&config),
                    &state.id_scope,
                    config.bus_replicas,
                )
                .await?,
            )
        }
        None => None,
    };
    // The cluster's telemetry goes to its shared log on JetStream.
    let shared_events: Option<Arc<dyn muster_store::events::EventLog>> = match &bus {
        Some(bus) => Some(Arc::new(bus.event_log(config.hub.event_retention).await?)),
        None => None,
    };
    let (ctx, paths, state) = build_context(
        &config,
        shared.clone(),
        bus.clone()
            .map(|b| b as Arc<dyn muster_hub::cluster::Cluster>),
        shared_events,
    )?;
    // The portal's admin password: made at first start and printed once (only its hash is
    // kept). Hashing takes a moment, so it runs off the async threads, and before
    // `endpoint.json` announces the server.
    let dir = paths.dir.clone();
    let admin_password = tokio::task::spawn_blocking(move || portal::ensure_admin_password(&dir))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|source| ServerError::Io {
            path: portal::admin_hash_path(&paths.dir).display().to_string(),
            source,
        })?;
    if let Some(store) = &shared {
        cluster::share_admin_password(store.as_ref(), &paths.dir).await?;
    }
    let _ = ctx.amqp_port.set(amqp_addr.port());
    let chain = read(&paths.server())?;
    let key = read(&paths.server_key())?;
    let mqtt_tls = TlsAcceptor::from(tls::server_config(&chain, &key, false)?);
    let amqp_tls = mqtt_tls.clone();
    let https_tls = TlsAcceptor::from(tls::server_config(&chain, &key, true)?);
    let portal_tls = TlsAcceptor::from(tls::portal_config(&chain, &key)?);
    let ports = Ports {
        mqtt: mqtt_addr.port(),
        https: https_addr.port(),
        amqp: amqp_addr.port(),
        portal: portal_addr.port(),
    };
    let endpoint = write_endpoint(&config, &paths, ports)?;

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(mqtt::serve(
        mqtt_listener,
        Arc::clone(&ctx),
        mqtt_tls,
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(amqp::serve(
        amqp_listener,
        Arc::clone(&ctx),
        amqp_tls,
        shutdown.clone(),
        tracker.clone(),
    ));
    routing::spawn(Arc::clone(&ctx), shutdown.clone(), &tracker);
    if let Some(bus) = bus {
        let weak = Arc::downgrade(&ctx);
        let forget: muster_bus_nats::Forget = Arc::new(move |kind, key| {
            if kind == "routing"
                && let Some(ctx) = weak.upgrade()
            {
                ctx.hub.router().forget(key);
            }
        });
        tracker.spawn(bus.serve(Arc::clone(ctx.hub.presence()), forget, shutdown.clone()));
    }
    // Devices marked connected by a previous process hold no connection now. (Not on a
    // shared store: the devices other nodes hold are connected.)
    let sweep = Arc::clone(&ctx);
    let single_node = config.store == "sqlite";
    tracker.spawn(async move {
        if !single_node {
            return;
        }
        let hub = &sweep.hub;
        match hub
            .registry()
            .reset_stale_connections(|key| hub.presence().is_connected(key))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(devices = n, "marked stale connections disconnected"),
            Err(e) => tracing::warn!(error = %e, "cannot reset stale connection states"),
        }
    });
    tracker.spawn(rest::serve(
        https_listener,
        Arc::clone(&ctx),
        https_tls,
        shutdown.clone(),
        tracker.clone(),
    ));
    // The same API for browsers, on a handshake that asks for no client certificate.
    tracker.spawn(rest::serve(
        portal_listener,
        Arc::clone(&ctx),
        portal_tls,
        shutdown.clone(),
        tracker.clone(),
    ));
    if let Some(listener) = metrics_listener {
        tracker.spawn(metrics::serve_plain(
            listener,
            Arc::clone(&ctx),
            shutdown.clone(),
        ));
    }
    let info = info(&config, &paths, &state, ports);
    let _ = ctx.info.set(info.clone());
    info!(
        mqtt = %mqtt_addr,
        amqp = %amqp_addr,
        https = %https_addr,
        portal = %portal_addr,
        metrics = metrics_addr.map(|a| format!("http://{a}/metrics")),
        id_scope = state.id_scope,
        hostname = config.dps_host(),
        "muster is serving"
    );
    Ok(Running {
        mqtt_addr,
        amqp_addr,
        https_addr,
        portal_addr,
        metrics_addr,
        info,
        admin_password,
        shutdown,
        tracker,
        grace: config.limits.shutdown_grace,
        endpoint,
        _lock: lock,
    })
}

/// Where management commands find this server: `DIR/endpoint.json`, written only by the
/// lock holder and removed when it stops.
pub const ENDPOINT_FILE: &str = "endpoint.json";

/// The ports a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// MQTT over TLS.
    pub mqtt: u16,
    /// HTTPS (client certificates requested).
    pub https: u16,
    /// AMQP over TLS.
    pub amqp: u16,
    /// HTTPS for browsers (no client-certificate request).
    pub portal: u16,
}

fn write_endpoint(
    config: &Config,
    paths: &Paths,
    ports: Ports,
) -> Result<std::path::PathBuf, ServerError> {
    let path = paths.dir.join(ENDPOINT_FILE);
    let endpoint = json!({
        "hostnames": config.hostnames,
        "bind": config.bind.to_string(),
        "mqttPort": ports.mqtt,
        "httpsPort": ports.https,
        "amqpPort": ports.amqp,
        "portalPort": ports.portal,
        "partitions": config.hub.partitions,
        "pid": std::process::id(),
    });
    std::fs::write(&path, endpoint.to_string()).map_err(|source| ServerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(path)
}

/// The `muster info --json` document.
#[must_use]
pub fn info(config: &Config, paths: &Paths, state: &State, ports: Ports) -> Value {
    let (mqtt_port, https_port) = (ports.mqtt, ports.https);
    let host = config.dps_host();
    let host_port = if https_port == 443 {
        host.to_owned()
    } else {
        format!("{host}:{https_port}")
    };
    let cs = |policy: &str| {
        state.policy(policy).map(|p| {
            muster_auth::connection_string::ConnectionString::service(
                &host_port,
                &p.name,
                &muster_auth::Secret::new(p.primary_key.clone()),
            )
        })
    };
    let trust = std::fs::canonicalize(paths.ca()).unwrap_or_else(|_| paths.ca());
    // The built-in endpoint, as `az iot hub connection-string show --default-eventhub` gives it.
    // No port on 5671: the Python client keeps a port in every CBS audience and always dials
    // 5671 (`../shared/spec/event-hubs-wire.md` §1).
    let eh_endpoint = if ports.amqp == 5671 {
        format!("sb://{host}/")
    } else {
        format!("sb://{host}:{}/", ports.amqp)
    };
    let eh_name = muster_hub::eventhub::entity_name(host);
    let eh_cs = state.policy("service").map(|p| {
        format!(
            "Endpoint={eh_endpoint};SharedAccessKeyName={};SharedAccessKey={};EntityPath={eh_name}",
            p.name, p.primary_key
        )
    });
    json!({
        "idScope": state.id_scope,
        "hostname": host,
        "bind": config.bind.to_string(),
        "mqttPort": mqtt_port,
        "httpsPort": https_port,
        "amqpPort": ports.amqp,
        "portalPort": ports.portal,
        "portalUrl": format!("https://{host}:{}/portal/", ports.portal),
        "trustBundle": trust,
        "hubConnectionString": cs("iothubowner"),
        "dpsConnectionString": cs(bootstrap::DPS_POLICY),
        "eventHubsConnectionString": eh_cs,
        "eventHubsCompatibleName": eh_name,
        "eventHubsCompatibleEndpoint": eh_endpoint,
        "partitions": config.hub.partitions,
        "hubs": config.hostnames.iter().map(|h| json!({"name": h, "hostname": h})).collect::<Vec<_>>(),
    })
}

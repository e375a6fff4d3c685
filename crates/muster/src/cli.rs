//! The command tree. Flags and their defaults are the contract README.md and docs/ describe.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// muster: a self-hosted Device Provisioning Service and IoT hub.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--output`, for the commands that print results.
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct OutputArgs {
    /// Output format.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Table,
        help_heading = "Output options"
    )]
    pub(crate) output: Output,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable text.
    Table,
    /// One JSON document on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub(crate) enum Command {
    /// Run the provisioning service and hub (MQTT on 8883, AMQP on 5671, HTTPS on 8443 by default).
    Serve(ServeArgs),
    /// Print how to reach this server: ID scope, ports, trust bundle, connection strings.
    Info {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
        /// Print JSON (the same as `--output json`).
        #[arg(long)]
        json: bool,
    },
    /// Server configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The web portal's sign-in.
    Portal {
        #[command(flatten)]
        server: ServerArgs,
        #[command(subcommand)]
        command: PortalCommand,
    },
    /// Several nodes as one hub: their state on the bus.
    Cluster {
        #[command(flatten)]
        server: ServerArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Make and inspect certificates: CAs, proof-of-possession and device certificates.
    Certs {
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manage the IoT hub: device identities and twins, queries, cloud-to-device messages,
    /// direct methods and the event stream.
    Hub {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Manage the provisioning service: CA certificates, enrollments, registrations.
    Dps {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: DpsCommand,
    },
    /// Run devices: the lab's simulated device, or a fleet as a load generator.
    Device {
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Measure limits: the bare mutual-TLS handshake rate.
    Bench {
        #[command(flatten)]
        output: OutputArgs,
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Full mutual-TLS handshakes per second between a bare rustls server and client on
    /// loopback, with the certificate profile a fleet uses (the bound for provisioning and
    /// connect storms).
    Handshake {
        /// The CA that signs the server and client certificates (PEM).
        #[arg(long)]
        ca_cert: PathBuf,
        /// Its private key (PEM).
        #[arg(long)]
        ca_key: PathBuf,
        /// How long to measure.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Handshakes in progress at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once per process")]
pub(crate) enum DeviceCommand {
    /// The DPS lab's simulated device: provision, connect to the assigned hub, follow the
    /// `telemetryDelay` desired property and send sensor readings until Ctrl-C.
    Simulate(SimulateArgs),
    /// Drive N simulated devices: provision, connect, send telemetry, optionally fan a
    /// desired patch out to all of them; print the figures.
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FleetArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 100)]
    pub(crate) devices: usize,
    /// Devices provisioning or connecting at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// New provisionings / connections per second (default: as fast as concurrency allows).
    #[arg(long)]
    pub(crate) connect_rate: Option<f64>,
    /// Device ids are PREFIX + index.
    #[arg(long, default_value = "fleet-device-")]
    pub(crate) prefix: String,
    /// X.509: the CA (PEM; an intermediate may be followed by its root) that mints a leaf per
    /// device, CN = PREFIX + index.
    #[arg(long, requires = "ca_key", conflicts_with = "symmetric_key_env")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// The CA's private key (PEM).
    #[arg(long, requires = "ca_cert")]
    pub(crate) ca_key: Option<PathBuf>,
    /// Symmetric keys: environment variable holding the enrollment group's key.
    #[arg(long)]
    pub(crate) symmetric_key_env: Option<String>,
    /// The provisioning service's host, optionally with `:port`.
    #[arg(long, required_unless_present = "no_provision")]
    pub(crate) provisioning_host: Option<String>,
    /// The ID scope.
    #[arg(long, required_unless_present = "no_provision")]
    pub(crate) id_scope: Option<String>,
    /// How to reach the provisioning service and then the hub (the same transport; after
    /// `https` the hub is reached over MQTT).
    #[arg(long, value_enum, default_value_t = TransportArg::Mqtt)]
    pub(crate) transport: TransportArg,
    /// Connect straight to `--hub-host` (a hub or any MQTT broker) without provisioning.
    #[arg(long, requires = "hub_host")]
    pub(crate) no_provision: bool,
    /// The hub's host (default: the one provisioning assigns).
    #[arg(long)]
    pub(crate) hub_host: Option<String>,
    /// The hub's port (default: the provisioning port with MQTT or AMQP, else 8883).
    #[arg(long)]
    pub(crate) hub_port: Option<u16>,
    /// CA certificate the servers' certificates chain to (muster: DATA_DIR/tls/ca.pem).
    #[arg(long)]
    pub(crate) trust: Option<PathBuf>,
    /// Length of the telemetry phase, e.g. `60s`, `500ms`; `0s` = provisioning and connecting
    /// only.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: std::time::Duration,
    /// Per-device telemetry interval; `0s` = as fast as acknowledgements allow.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub(crate) telemetry_interval: std::time::Duration,
    /// Telemetry QoS (1: acknowledged once durable; 0: fire and forget).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub(crate) qos: u8,
    /// Telemetry body size in bytes.
    #[arg(long, default_value_t = 128)]
    pub(crate) payload_bytes: usize,
    /// Send the lab's readings (JSON temperature and humidity, the temperatureAlert property)
    /// instead of --payload-bytes of filler.
    #[arg(long)]
    pub(crate) lab_payload: bool,
    /// Unacknowledged messages per device when sending as fast as possible.
    #[arg(long, default_value_t = 8)]
    pub(crate) in_flight: usize,
    /// Connect from 127.0.0.1 … 127.0.0.N (more ephemeral ports for big fleets on loopback).
    #[arg(long, default_value_t = 1)]
    pub(crate) source_addresses: u8,
    /// After telemetry, PATCH every device's desired properties through the service API and
    /// time each notification.
    #[arg(long)]
    pub(crate) fanout: bool,
    /// PATCH requests in flight during `--fanout` (1 times each notification alone).
    #[arg(long, default_value_t = 8)]
    pub(crate) fanout_concurrency: usize,
    /// Keep the minted identities in this directory and reuse them on later runs (so a
    /// `--no-provision` run can connect as the devices an earlier run provisioned).
    #[arg(long)]
    pub(crate) identity_dir: Option<PathBuf>,
    /// Service connection string for `--fanout` (default: the local data directory's).
    #[arg(long)]
    pub(crate) hub_connection_string: Option<String>,
    /// Data directory of a local server, for `--fanout`'s connection string.
    #[arg(long, default_value = "./muster-data")]
    pub(crate) data_dir: PathBuf,
    /// Make the telemetry phase a soak: each device sends one message per
    /// --telemetry-interval, answers methods, echoes desired patches and receives C2D, while
    /// the service side calls random devices and devices reconnect (churn).
    #[arg(long)]
    pub(crate) soak: bool,
    /// Soak: service operations per second across the fleet (twin patch, C2D, method in turn).
    #[arg(long, default_value_t = 10.0, requires = "soak")]
    pub(crate) service_ops_per_sec: f64,
    /// Soak: percent of the devices that disconnect and connect again each minute.
    #[arg(long, default_value_t = 1.0, requires = "soak")]
    pub(crate) churn_per_minute: f64,
    /// Soak: write each device's ledger (messages sent, sequence numbers not acknowledged) here
    /// as JSON lines, to check the event stream against.
    #[arg(long, requires = "soak")]
    pub(crate) soak_ledger: Option<PathBuf>,
    /// Soak: the run's tag, sent as the `soakRun` property of every message [default: the
    /// start time].
    #[arg(long, requires = "soak")]
    pub(crate) soak_run: Option<String>,
    /// Read the server's Prometheus metrics here before and after the run (e.g. the
    /// `--metrics-bind` address: http://127.0.0.1:9464/metrics) and print what changed next to
    /// the fleet's own figures.
    #[arg(long)]
    pub(crate) metrics_url: Option<String>,
    /// Print the summary as one JSON object on the last line.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `60s`, `1.5s`, `500ms`, `2m`, or plain seconds: the grammar of `muster_types::duration`,
/// shared with the configuration file.
pub(crate) fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    muster_types::parse_duration(text).map_err(|e| e.to_string())
}

/// DPS transport for `device simulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TransportArg {
    /// MQTT over TLS (port 8883).
    Mqtt,
    /// HTTPS (port 443 unless `--provisioning-host HOST:PORT` says otherwise; muster serves it
    /// on 8443 by default).
    Https,
    /// AMQP 1.0 over TLS (port 5671), for provisioning and the hub.
    Amqp,
    /// MQTT through a WebSocket on the HTTPS port (443), for provisioning and the hub.
    MqttWs,
    /// AMQP through a WebSocket on the HTTPS port (443), for provisioning and the hub.
    AmqpWs,
}

#[derive(Debug, Args)]
pub(crate) struct SimulateArgs {
    /// The provisioning service's host name, optionally with `:port`.
    #[arg(long)]
    pub(crate) provisioning_host: String,
    /// The provisioning service's ID scope (`muster info` prints it).
    #[arg(long)]
    pub(crate) id_scope: String,
    /// The device certificate: PEM (leaf first, then its chain; may hold the key too) or a
    /// PKCS#12 file (`.pfx`/`.p12`).
    #[arg(long, conflicts_with_all = ["symmetric_key_env", "group_key_env"])]
    pub(crate) cert: Option<PathBuf>,
    /// The private key in PEM, when it is not in the certificate file.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Environment variable holding the PKCS#12 password.
    #[arg(long, requires = "cert")]
    pub(crate) cert_password_env: Option<String>,
    /// Environment variable holding the device's symmetric key (individual enrollment).
    #[arg(long, requires = "registration_id", conflicts_with = "group_key_env")]
    pub(crate) symmetric_key_env: Option<String>,
    /// Environment variable holding a symmetric-key enrollment group's key; the device key is
    /// derived from it and the registration id.
    #[arg(long, requires = "registration_id")]
    pub(crate) group_key_env: Option<String>,
    /// The registration id of a symmetric-key device.
    #[arg(long)]
    pub(crate) registration_id: Option<String>,
    /// The CA certificate the servers' certificates chain to (muster: DATA_DIR/tls/ca.pem).
    /// Without it the public web roots are used.
    #[arg(long)]
    pub(crate) trust: Option<PathBuf>,
    /// How to reach the provisioning service and then the hub (the same transport; after
    /// `https` the hub is reached over MQTT).
    #[arg(long, value_enum, default_value_t = TransportArg::Mqtt)]
    pub(crate) transport: TransportArg,
    /// The hub's port (default: the provisioning port with MQTT or AMQP, else 8883).
    #[arg(long)]
    pub(crate) hub_port: Option<u16>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub(crate) duration: Option<u64>,
}

/// Which CA of the directory signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CaChoice {
    /// `root-ca.pem` / `root-ca.key.pem`.
    Root,
    /// `intermediate-ca.pem` / `intermediate-ca.key.pem`.
    Intermediate,
}

/// What a chain is checked for by `show --trust`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Purpose {
    /// TLS client authentication, as a device uses the certificate.
    Client,
    /// Any purpose (no extendedKeyUsage requirement).
    Any,
}

#[derive(Debug, Args)]
pub(crate) struct DirArg {
    /// Directory holding the certificates.
    #[arg(long, default_value = "./certs")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a root CA and an intermediate CA signed by it.
    CreateRootAndIntermediate {
        #[command(flatten)]
        dir: DirArg,
        /// Key algorithm: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        /// Validity of the root CA in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Validity of the intermediate CA in days (never beyond the root's).
        #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..=36500))]
        intermediate_days: u32,
        /// Text the CA common names start with ("<prefix> Root CA", "<prefix> Intermediate CA").
        #[arg(long, default_value = "muster")]
        subject_prefix: String,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create the proof-of-possession certificate for a verification code.
    CreateVerificationCert {
        /// The verification code the provisioning service generated.
        code: String,
        #[command(flatten)]
        dir: DirArg,
        /// The CA whose possession is proven (the one that was uploaded).
        #[arg(long, value_enum, default_value_t = CaChoice::Root)]
        ca: CaChoice,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create a device (client) certificate whose common name is the device/registration id.
    CreateDeviceCert {
        /// Device and registration id; becomes the certificate's CN.
        id: String,
        #[command(flatten)]
        dir: DirArg,
        /// The CA that signs the device certificate.
        #[arg(long, value_enum, default_value_t = CaChoice::Intermediate)]
        ca: CaChoice,
        /// Validity in days (never beyond the issuing CA's).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Key algorithm of the device key.
        #[arg(long, default_value = "ecdsa-p256")]
        algorithm: String,
        /// Name of an environment variable holding the password for `<ID>.pfx`; without it no
        /// PFX is written. Passwords are never taken from the command line.
        #[arg(long, value_name = "VAR")]
        pfx_password_env: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Describe every certificate in a PEM, DER or PKCS#12 file.
    Show {
        /// The file.
        file: PathBuf,
        /// A file of trusted CA certificates: also validate the file's chain against it.
        #[arg(long, value_name = "ROOT")]
        trust: Option<PathBuf>,
        /// The purpose the chain is checked for with --trust.
        #[arg(long, value_enum, default_value_t = Purpose::Client)]
        purpose: Purpose,
        /// Name of an environment variable holding the password of a PKCS#12 file or an
        /// encrypted key.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
}

/// Where the server's files are, and how to reach it.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Data directory of the server.
    #[arg(
        long,
        env = "MUSTER_DATA_DIR",
        default_value = "./muster-data",
        global = true,
        help_heading = "Connection options"
    )]
    pub(crate) data_dir: PathBuf,
}

/// How a management command reaches the REST API.
#[derive(Debug, Clone, Args)]
pub(crate) struct ApiArgs {
    /// Service connection string (`HostName=…;SharedAccessKeyName=…;SharedAccessKey=…`);
    /// by default taken from MUSTER_HUB_CONNECTION_STRING / MUSTER_DPS_CONNECTION_STRING or from
    /// the local data directory.
    #[arg(long, global = true, help_heading = "Connection options")]
    pub(crate) connection_string: Option<String>,
    /// PEM file of the CA that signed the server's certificate (default: the data directory's).
    #[arg(long, global = true, help_heading = "Connection options")]
    pub(crate) trust: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
}

/// `muster serve` flags.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory (created on first start) [default: ./muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Log lines on stderr: `text` for people, `json` (one object a line) for log collectors.
    #[arg(long, env = "MUSTER_LOG_FORMAT", value_enum, default_value = "text")]
    pub(crate) log_format: LogFormat,
    /// TOML configuration file (see `muster config default`).
    #[arg(long, env = "MUSTER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "MUSTER_BIND")]
    pub(crate) bind: Option<std::net::IpAddr>,
    /// MQTT-over-TLS port [default: 8883].
    #[arg(long, env = "MUSTER_MQTT_PORT")]
    pub(crate) mqtt_port: Option<u16>,
    /// AMQP-over-TLS port [default: 5671].
    #[arg(long, env = "MUSTER_AMQP_PORT")]
    pub(crate) amqp_port: Option<u16>,
    /// HTTPS port [default: 8443].
    #[arg(long, env = "MUSTER_HTTPS_PORT")]
    pub(crate) https_port: Option<u16>,
    /// HTTPS port for browsers (the portal): the same API, without asking for a client
    /// certificate [default: 8444].
    #[arg(long, env = "MUSTER_PORTAL_PORT")]
    pub(crate) portal_port: Option<u16>,
    /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics, without authentication
    /// (bind a private address). Without it, /metrics is on the HTTPS port for a caller with a
    /// hub or DPS policy's SAS token.
    #[arg(long, env = "MUSTER_METRICS_BIND", value_name = "ADDR:PORT")]
    pub(crate) metrics_bind: Option<std::net::SocketAddr>,
    /// Where durable state lives: "sqlite" (DIR/muster.db, the default) or a PostgreSQL URL,
    /// postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE, which several nodes can share.
    #[arg(
        long,
        env = "MUSTER_STORE",
        value_name = "sqlite|URL",
        hide_env_values = true
    )]
    pub(crate) store: Option<String>,
    /// Join several nodes into one hub over this NATS server (with JetStream),
    /// nats://HOST:PORT; needs a PostgreSQL --store shared by the nodes.
    #[arg(long, env = "MUSTER_BUS", value_name = "URL")]
    pub(crate) bus: Option<String>,
    /// This node's name on the bus [default: the machine's host name].
    #[arg(long, env = "MUSTER_NODE_ID", value_name = "NAME")]
    pub(crate) node_id: Option<String>,
    /// Host name devices and clients use; repeat for several hubs (the first is the DPS host)
    /// [default: localhost]. From the environment: MUSTER_HOSTNAMES, comma-separated.
    #[arg(long = "hostname", env = "MUSTER_HOSTNAMES", value_delimiter = ',')]
    pub(crate) hostnames: Vec<String>,
}

/// How `muster serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object a line: `timestamp`, `level`, `fields`, `spans`.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The live nodes: their connections, start time and how long ago each last announced
    /// itself (reads the bus; the cluster is named by the data directory's ID scope).
    Status {
        /// The cluster's NATS server.
        #[arg(long, env = "MUSTER_BUS", value_name = "URL")]
        bus: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PortalCommand {
    /// Make a new admin password for the portal and print it once (the old one stops working
    /// at once, also on a running server; only its hash is stored).
    ResetAdminPassword,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print the commented default configuration.
    Default,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DpsCommand {
    /// CA certificates and proof of possession.
    #[command(subcommand)]
    Certificate(CertificateCommand),
    /// Enrollment groups.
    #[command(subcommand)]
    EnrollmentGroup(GroupCommand),
    /// Individual enrollments.
    #[command(subcommand)]
    Enrollment(EnrollmentCommand),
    /// Registration records.
    #[command(subcommand)]
    Registration(RegistrationCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertificateCommand {
    /// Upload a CA certificate.
    Create {
        /// Name enrollment groups will refer to.
        #[arg(long)]
        name: String,
        /// PEM or DER file.
        #[arg(long)]
        path: PathBuf,
        /// Mark it verified without proof of possession.
        #[arg(long)]
        verified: bool,
    },
    /// Replace a CA certificate.
    Update {
        /// Name.
        #[arg(long)]
        name: String,
        /// PEM or DER file.
        #[arg(long)]
        path: PathBuf,
        /// Etag to match (default: any).
        #[arg(long)]
        etag: Option<String>,
    },
    /// List CA certificates.
    List,
    /// Show one CA certificate (with an outstanding verification code).
    Show {
        /// Name.
        #[arg(long)]
        name: String,
    },
    /// Delete a CA certificate.
    Delete {
        /// Name.
        #[arg(long)]
        name: String,
        /// Etag to match (default: any).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Ask for a verification code.
    GenerateVerificationCode {
        /// Name.
        #[arg(long)]
        name: String,
        /// Etag to match (default: the current one).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Complete proof of possession: upload a verification certificate (`--path`), or let
    /// muster do code → sign → verify in one step with the CA's key (`--ca-key`), which never
    /// leaves this machine.
    Verify {
        /// Name.
        #[arg(long)]
        name: String,
        /// The verification certificate (CN = the code).
        #[arg(long, conflicts_with = "ca_key")]
        path: Option<PathBuf>,
        /// The CA's private key: generate the code, sign the proof locally, verify.
        #[arg(long, required_unless_present = "path")]
        ca_key: Option<PathBuf>,
        /// Environment variable holding the password of an encrypted CA key.
        #[arg(long, value_name = "VAR")]
        ca_key_password_env: Option<String>,
        /// Etag to match (default: the current one).
        #[arg(long)]
        etag: Option<String>,
    },
}

/// Enrollment settings shared by create and update.
#[derive(Debug, Clone, Args)]
pub(crate) struct EnrollmentSettings {
    /// Initial twin, as JSON: `{"tags":{…},"properties":{"desired":{…}}}`.
    #[arg(long)]
    pub(crate) initial_twin: Option<String>,
    /// Only the initial desired properties, as JSON (`{"telemetryDelay":"1"}`).
    #[arg(long, conflicts_with = "initial_twin")]
    pub(crate) initial_twin_properties: Option<String>,
    /// Hubs devices may be assigned to (host names, comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub(crate) iot_hubs: Option<Vec<String>>,
    /// hashed (evenly weighted), geoLatency or static.
    #[arg(long)]
    pub(crate) allocation_policy: Option<String>,
    /// reprovisionandmigratedata (default), reprovisionandresetdata or never.
    #[arg(long)]
    pub(crate) reprovision_policy: Option<String>,
    /// enabled or disabled.
    #[arg(long)]
    pub(crate) provisioning_status: Option<String>,
    /// Devices are IoT Edge devices.
    #[arg(long)]
    pub(crate) edge_enabled: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Create an enrollment group.
    Create {
        /// Enrollment group id.
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
        /// X.509: name of a verified CA certificate.
        #[arg(long, group = "attestation")]
        ca_name: Option<String>,
        /// X.509: a second verified CA certificate.
        #[arg(long, requires = "ca_name")]
        secondary_ca_name: Option<String>,
        /// X.509: a signing (intermediate) certificate file carried in the group.
        #[arg(long, group = "attestation")]
        certificate_path: Option<PathBuf>,
        /// Symmetric keys (generated unless given with --primary-key/--secondary-key).
        #[arg(long, group = "attestation")]
        symmetric_key: bool,
        /// Primary group key (base64).
        #[arg(long, requires = "symmetric_key")]
        primary_key: Option<String>,
        /// Secondary group key (base64).
        #[arg(long, requires = "symmetric_key")]
        secondary_key: Option<String>,
        #[command(flatten)]
        settings: EnrollmentSettings,
    },
    /// Change an enrollment group.
    Update {
        /// Enrollment group id.
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
        #[command(flatten)]
        settings: EnrollmentSettings,
        /// Etag to match (default: the current one).
        #[arg(long)]
        etag: Option<String>,
    },
    /// List enrollment groups.
    List,
    /// Show one enrollment group.
    Show {
        /// Enrollment group id.
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
        /// Also show the keys of a symmetric-key group.
        #[arg(long)]
        show_keys: bool,
    },
    /// Delete an enrollment group.
    Delete {
        /// Enrollment group id.
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
        /// Etag to match.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnrollmentCommand {
    /// Create an individual enrollment.
    Create {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
        /// Device id to create (default: the registration id).
        #[arg(long)]
        device_id: Option<String>,
        /// X.509: the device's certificate file.
        #[arg(long, group = "attestation")]
        certificate_path: Option<PathBuf>,
        /// Symmetric keys (generated unless given).
        #[arg(long, group = "attestation")]
        symmetric_key: bool,
        /// Primary key (base64).
        #[arg(long, requires = "symmetric_key")]
        primary_key: Option<String>,
        #[command(flatten)]
        settings: EnrollmentSettings,
    },
    /// Change an individual enrollment.
    Update {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
        #[command(flatten)]
        settings: EnrollmentSettings,
        /// Etag to match (default: the current one).
        #[arg(long)]
        etag: Option<String>,
    },
    /// List individual enrollments.
    List,
    /// Show one individual enrollment.
    Show {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
    },
    /// Delete an individual enrollment.
    Delete {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
        /// Etag to match.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RegistrationCommand {
    /// Registration records of an enrollment group.
    List {
        /// Enrollment group id.
        #[arg(long, visible_alias = "group-id")]
        enrollment_id: String,
    },
    /// One registration record.
    Show {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
    },
    /// Delete a registration record (the device provisions afresh next time).
    Delete {
        /// Registration id.
        #[arg(long)]
        registration_id: String,
        /// Etag to match.
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HubCommand {
    /// Device identities in the registry.
    #[command(subcommand)]
    DeviceIdentity(DeviceIdentityCommand),
    /// Device twins.
    #[command(subcommand)]
    DeviceTwin(DeviceTwinCommand),
    /// Run a query over device twins (`SELECT * FROM devices WHERE tags.site = 'lab'`).
    Query {
        /// The query.
        #[arg(long, short = 'q')]
        query_command: String,
    },
    /// Cloud-to-device messages.
    #[command(subcommand)]
    C2d(C2dCommand),
    /// Call a direct method on a connected device and print its answer.
    InvokeDeviceMethod {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// Method name.
        #[arg(long)]
        method_name: String,
        /// Payload, JSON.
        #[arg(long, default_value = "{}")]
        method_payload: String,
        /// Seconds to wait for the device's answer (5–300).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Consumer groups of the built-in Event Hubs-compatible endpoint.
    #[command(subcommand)]
    ConsumerGroup(ConsumerGroupCommand),
    /// Message routes: which messages go to which endpoints (IoT Hub's routing queries).
    #[command(subcommand)]
    Route(RouteCommand),
    /// Custom routing endpoints: webhook, file sink, NATS subject.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Message enrichments: application properties added for chosen endpoints.
    #[command(subcommand)]
    Enrichment(EnrichmentCommand),
    /// Watch device-to-cloud messages as they arrive (like `az iot hub monitor-events`).
    MonitorEvents {
        /// Only this device's messages.
        #[arg(long, short = 'd')]
        device_id: Option<String>,
        /// Where to start: latest (default), earliest, or a sequence number.
        #[arg(long, default_value = "latest")]
        from: String,
        /// Show application properties.
        #[arg(long)]
        properties: bool,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        timeout: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RouteCommand {
    /// Create or replace a route.
    Create {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
        /// What it carries: DeviceMessages, TwinChangeEvents, DeviceLifecycleEvents or
        /// DeviceConnectionStateEvents.
        #[arg(long, default_value = "DeviceMessages")]
        source: String,
        /// The routing query, e.g. "temperatureAlert = 'true'" or "$body.temperature > 30"
        /// (default: every message).
        #[arg(long, default_value = "true")]
        condition: String,
        /// Endpoint names (`events` is the built-in one); repeat for several.
        #[arg(long = "endpoint", short = 'e', required = true)]
        endpoints: Vec<String>,
        /// Create it switched off.
        #[arg(long)]
        disabled: bool,
    },
    /// List the routes.
    List,
    /// Show one route.
    Show {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Delete a route.
    Delete {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Test a route (or a condition) on a sample message.
    Test {
        /// The route to test.
        #[arg(long, short = 'n', conflicts_with = "condition")]
        name: Option<String>,
        /// A condition to test instead of a route.
        #[arg(long)]
        condition: Option<String>,
        /// The message body (JSON is sent as JSON with a JSON content type).
        #[arg(long, default_value = "")]
        body: String,
        /// An application property KEY=VALUE; repeat for several.
        #[arg(long = "app-property")]
        app_properties: Vec<String>,
        /// A system property KEY=VALUE (contentType, contentEncoding, …); repeat for several.
        #[arg(long = "system-property")]
        system_properties: Vec<String>,
        /// The sender's twin, JSON, for `$twin` conditions.
        #[arg(long)]
        twin: Option<String>,
    },
    /// Switch the fallback route (unmatched device messages to `events`) on or off.
    Fallback {
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// Create or replace an endpoint.
    Create {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
        /// webhook, file or nats.
        #[arg(long = "type", short = 't')]
        kind: String,
        /// webhook: the http(s) URL; nats: nats://host:port.
        #[arg(long)]
        url: Option<String>,
        /// webhook: a request header KEY=VALUE; repeat for several.
        #[arg(long = "header")]
        headers: Vec<String>,
        /// file: the directory to write under.
        #[arg(long)]
        directory: Option<String>,
        /// file: begin a new file past this many bytes.
        #[arg(long)]
        max_file_bytes: Option<u64>,
        /// file: begin a new file after this many seconds.
        #[arg(long)]
        max_file_seconds: Option<u64>,
        /// nats: the subject to publish to.
        #[arg(long)]
        subject: Option<String>,
    },
    /// List the custom endpoints.
    List,
    /// Show one endpoint.
    Show {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Delete an endpoint (no route may use it).
    Delete {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnrichmentCommand {
    /// Add or replace an enrichment.
    Set {
        /// The application property it sets.
        #[arg(long, short = 'k')]
        key: String,
        /// A static value, `$iothubname`, or `$twin.tags.…`/`$twin.properties.…`.
        #[arg(long)]
        value: String,
        /// Endpoints whose messages get it; repeat for several.
        #[arg(long = "endpoint", short = 'e', required = true)]
        endpoints: Vec<String>,
    },
    /// List the enrichments.
    List,
    /// Delete an enrichment.
    Delete {
        /// Its key.
        #[arg(long, short = 'k')]
        key: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConsumerGroupCommand {
    /// Create a consumer group (1-50 letters, digits, '.', '-', '_').
    Create {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// List the consumer groups (`$Default` first).
    List,
    /// Show one consumer group.
    Show {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
    /// Delete a consumer group (`$Default` cannot be deleted).
    Delete {
        /// Its name.
        #[arg(long, short = 'n')]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceIdentityCommand {
    /// Create a device (SAS keys generated unless a thumbprint or CA authentication is given).
    Create {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// Authentication: shared_private_key (default), x509_thumbprint or x509_ca.
        #[arg(long, default_value = "shared_private_key")]
        auth_method: String,
        /// Primary thumbprint (x509_thumbprint).
        #[arg(long)]
        primary_thumbprint: Option<String>,
        /// Secondary thumbprint (x509_thumbprint).
        #[arg(long)]
        secondary_thumbprint: Option<String>,
        /// enabled or disabled.
        #[arg(long, default_value = "enabled")]
        status: String,
    },
    /// List devices.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        top: usize,
    },
    /// Show one device.
    Show {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
    },
    /// Enable or disable a device.
    Update {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// enabled or disabled.
        #[arg(long)]
        status: String,
    },
    /// Delete a device (and its twin).
    Delete {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// Etag to match (default: any).
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DeviceTwinCommand {
    /// Show a twin.
    Show {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
    },
    /// Merge desired properties and/or tags into a twin.
    Update {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// Desired properties patch, JSON (`{"telemetryDelay":"2"}`; null deletes).
        #[arg(long)]
        desired: Option<String>,
        /// Tags patch, JSON.
        #[arg(long)]
        tags: Option<String>,
        /// Etag to match (default: any).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Replace a twin's tags and desired properties with a JSON document
    /// (`{"tags":{…},"properties":{"desired":{…}}}`).
    Replace {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// The twin JSON.
        #[arg(long)]
        json: String,
        /// Etag to match (default: any).
        #[arg(long)]
        etag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum C2dCommand {
    /// Queue a message for a device (delivered when it is connected and subscribed).
    Send {
        /// Device id.
        #[arg(long, short = 'd')]
        device_id: String,
        /// Message body.
        #[arg(long)]
        data: String,
        /// Application properties, `key=value` (repeatable).
        #[arg(long = "prop", value_name = "KEY=VALUE")]
        props: Vec<String>,
        /// Message id (default: generated).
        #[arg(long)]
        message_id: Option<String>,
        /// Correlation id.
        #[arg(long)]
        correlation_id: Option<String>,
        /// Feedback requested: none, positive, negative or full.
        #[arg(long)]
        ack: Option<String>,
        /// Seconds until the message expires (default 3600).
        #[arg(long)]
        expiry: Option<u64>,
    },
}

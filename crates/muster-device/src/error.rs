//! The one error type of the device client.
//!
//! Every message is one line that says what failed in this layer; the cause (an I/O error, a
//! rustls or certificate error) rides in [`std::error::Error::source`].

use std::path::PathBuf;
use std::time::Duration;

use muster_mqtt::ConnectReturnCode;

/// What went wrong while provisioning or talking to the hub.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A certificate, key or trust file could not be read.
    #[error("cannot read {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or private key is unusable (bad PEM, wrong password, key does not match).
    #[error("{context} is unusable")]
    Certificate {
        /// Which input ("client certificate", "trust bundle", a file name, ...).
        context: String,
        /// The cause.
        #[source]
        source: muster_pki::Error,
    },
    /// The options given to a client are inconsistent or incomplete.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// A shared access key is unusable (not base64).
    #[error("the shared access key is unusable")]
    Key(#[from] muster_auth::sas::SasError),
    /// rustls refused the TLS configuration.
    #[error("rustls refused the TLS configuration")]
    TlsConfig(#[from] rustls::Error),
    /// The TCP connection could not be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (untrusted server certificate, name mismatch, ...).
    #[error("TLS handshake with {host} failed")]
    Tls {
        /// The server's host name.
        host: String,
        /// The cause (wraps the rustls error).
        #[source]
        source: std::io::Error,
    },
    /// Reading from or writing to an established connection failed.
    #[error("connection error")]
    Io(#[from] std::io::Error),
    /// The server broke MQTT or answered something this client cannot understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The MQTT server refused the connection in its CONNACK.
    #[error("connection refused by the server: {} (CONNACK {})", refusal(*code), code.as_u8())]
    Refused {
        /// The CONNACK return code.
        code: ConnectReturnCode,
    },
    /// The provisioning service refused or failed the registration.
    #[error("provisioning refused: {error_code} {message}")]
    Provisioning {
        /// The HTTP-like status of the answer (401, 404, ...; 200 for a `failed` registration).
        status: u16,
        /// Azure's numeric error code (`401002`, `400209`, ...); `status × 1000` when the
        /// service sent none.
        error_code: u32,
        /// The service's message.
        message: String,
    },
    /// The hub answered a twin request with a non-2xx status.
    #[error("{operation} refused by the hub: status {status}{}: {message}", code_text(*error_code))]
    Hub {
        /// What was asked ("twin GET", "reported properties PATCH").
        operation: &'static str,
        /// The status in the response topic.
        status: u16,
        /// The `errorCode` of the JSON body, if any.
        error_code: Option<u32>,
        /// The `message` of the JSON body (or the body itself).
        message: String,
    },
    /// An HTTPS request to the provisioning service failed before an answer arrived.
    #[error("HTTPS request to {url} failed")]
    Http {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// Something did not finish in time.
    #[error("{what} timed out after {}", seconds(*after))]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The limit.
        after: Duration,
    },
    /// The hub connection is down and being re-established; twin requests fail fast meanwhile.
    #[error("not connected to the hub (reconnecting)")]
    NotConnected,
    /// The connection was lost while a request was outstanding.
    #[error("connection lost: {0}")]
    Disconnected(String),
    /// The client was closed (by [`crate::hub::HubClient::close`], or it gave up reconnecting).
    #[error("the client is closed")]
    Closed,
    /// A telemetry message is larger than the hub accepts.
    #[error("message too large: {size} bytes, the limit is {max}")]
    MessageTooLarge {
        /// The body's size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed (connection trouble, timeouts,
    /// throttling), as opposed to a refusal that will repeat.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Io(_)
            | Self::Timeout { .. }
            | Self::NotConnected
            | Self::Disconnected(_)
            | Self::Http { .. } => true,
            Self::Refused { code } => *code == ConnectReturnCode::ServerUnavailable,
            Self::Provisioning { status, .. } | Self::Hub { status, .. } => {
                *status == 429 || *status >= 500
            }
            _ => false,
        }
    }
}

fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::Accepted => "accepted",
        ConnectReturnCode::UnacceptableProtocolVersion => "unacceptable protocol version",
        ConnectReturnCode::IdentifierRejected => "client identifier rejected",
        ConnectReturnCode::ServerUnavailable => "server unavailable",
        ConnectReturnCode::BadUserNameOrPassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
    }
}

fn code_text(code: Option<u32>) -> String {
    code.map(|c| format!(", error {c}")).unwrap_or_default()
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_codes() {
        let e = Error::Provisioning {
            status: 401,
            error_code: 401_002,
            message: "Unauthorized".into(),
        };
        assert_eq!(e.to_string(), "provisioning refused: 401002 Unauthorized");
        let e = Error::Refused {
            code: ConnectReturnCode::NotAuthorized,
        };
        assert_eq!(
            e.to_string(),
            "connection refused by the server: not authorized (CONNACK 5)"
        );
        let e = Error::Hub {
            operation: "twin GET",
            status: 404,
            error_code: Some(404_001),
            message: "not found".into(),
        };
        assert_eq!(
            e.to_string(),
            "twin GET refused by the hub: status 404, error 404001: not found"
        );
        let e = Error::Timeout {
            what: "provisioning",
            after: Duration::from_millis(1500),
        };
        assert_eq!(e.to_string(), "provisioning timed out after 1.5 s");
        assert!(!e.to_string().contains('\n'));
        assert!(e.is_transient());
        assert!(
            !Error::Provisioning {
                status: 401,
                error_code: 401_002,
                message: String::new()
            }
            .is_transient()
        );
    }
}

//! SASL on the AMQP listener: which mechanism a client chose and what it claimed.
//!
//! No SDK authenticates to the hub *in* SASL except PLAIN (DPS symmetric keys, and the Azure
//! CLI's `{policy}@sas.root.{hub}` login): MSSBCBS (the Python service SDK) and ANONYMOUS
//! announce that a CBS `put-token` follows. fe2o3-amqp's SASL hooks are synchronous, so the
//! acceptor only records the claim; the connection checks it (an async store read) when a link
//! needs it, and refuses there with the protocol's own error.

use std::sync::{Arc, Mutex};

use fe2o3_amqp::acceptor::SaslAcceptor;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::primitives::{Array, Symbol};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
use muster_auth::Secret;
use tracing::warn;

/// What the client offered in SASL.
#[derive(Debug, Clone, Default)]
pub(crate) enum Claim {
    /// No SASL layer, ANONYMOUS or MSSBCBS: credentials come by CBS or TLS.
    #[default]
    None,
    /// PLAIN: a user name and a password (a SAS token).
    Plain {
        /// The authentication id.
        user: String,
        /// The password.
        password: Secret,
    },
}

/// The per-connection acceptor; its clones share one claim.
#[derive(Debug, Clone, Default)]
pub(crate) struct Acceptor {
    claim: Arc<Mutex<Claim>>,
}

impl Acceptor {
    /// The claim made, once SASL is over.
    pub(crate) fn claim(&self) -> Claim {
        self.claim.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn outcome(code: SaslCode) -> SaslServerFrame {
        SaslServerFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        })
    }
}

/// Split PLAIN's `authzid NUL authcid NUL password`.
fn plain(response: &[u8]) -> Option<(String, String)> {
    let mut parts = response.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?;
    let password = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

impl SaslAcceptor for Acceptor {
    fn mechanisms(&self) -> Array<Symbol> {
        Array::from(vec![
            Symbol::from("PLAIN"),
            Symbol::from("MSSBCBS"),
            Symbol::from("ANONYMOUS"),
        ])
    }

    fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
        match init.mechanism.as_str() {
            "ANONYMOUS" | "MSSBCBS" => Self::outcome(SaslCode::Ok),
            "PLAIN" => {
                let response = init.initial_response.as_ref().map(|b| b.as_ref());
                match response.and_then(plain) {
                    Some((user, password)) => {
                        if let Ok(mut claim) = self.claim.lock() {
                            *claim = Claim::Plain {
                                user,
                                password: Secret::new(password),
                            };
                        }
                        Self::outcome(SaslCode::Ok)
                    }
                    None => {
                        warn!("malformed SASL PLAIN response; refusing");
                        Self::outcome(SaslCode::Auth)
                    }
                }
            }
            other => {
                warn!(mechanism = other, "unsupported SASL mechanism; refusing");
                Self::outcome(SaslCode::Auth)
            }
        }
    }

    fn on_response(&mut self, _response: SaslResponse) -> SaslServerFrame {
        // None of the offered mechanisms sends a challenge.
        warn!("unexpected SASL response frame; refusing");
        Self::outcome(SaslCode::Auth)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::plain;

    #[test]
    fn plain_responses() {
        assert_eq!(
            plain(b"\0scope/registrations/d1\0SharedAccessSignature sr=x"),
            Some((
                "scope/registrations/d1".into(),
                "SharedAccessSignature sr=x".into()
            ))
        );
        assert_eq!(plain(b"\0\0pw"), None);
        assert_eq!(plain(b"user-only"), None);
        assert_eq!(plain(b"\0u\0p\0extra"), None);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod open_tests {
    use fe2o3_amqp::types::performatives::Open;
    use fe2o3_amqp::types::primitives::{OrderedMap, Value};
    use serde_amqp::described::Described;
    use serde_amqp::descriptor::Descriptor;

    /// uamqp (the Azure CLI's monitor-events) sends the keys of the Open's `properties` as
    /// strings, not symbols; the vendored codec reads them (vendor/serde_amqp/PATCH.md).
    #[test]
    fn an_open_with_string_keyed_properties_decodes() {
        let mut properties = OrderedMap::new();
        properties.insert(
            Value::String("product".into()),
            Value::String("az.cli.iot.extension".into()),
        );
        let open = Value::Described(Box::new(Described {
            descriptor: Descriptor::Code(0x10),
            value: Value::List(vec![
                Value::String("IoTPlatformCliExtension/0.25.0/x".into()),
                Value::String("localhost".into()),
                Value::Uint(u32::MAX),
                Value::Ushort(u16::MAX),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Map(properties),
            ]),
        }));
        let bytes = serde_amqp::to_vec(&open).unwrap();
        let decoded: Open = serde_amqp::from_slice(&bytes).unwrap();
        let props = decoded.properties.unwrap();
        let (key, value) = props.iter().next().unwrap();
        assert_eq!(key.as_str(), "product");
        assert_eq!(value, &Value::String("az.cli.iot.extension".into()));
    }
}

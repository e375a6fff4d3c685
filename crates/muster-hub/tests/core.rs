//! The hub core without sockets: authentication for every credential kind, authorization,
//! telemetry ingestion, twins reaching a live session, identity changes closing sessions, and
//! direct methods (timeout on a paused clock).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster_auth::Secret;
use muster_auth::sas::{SasError, make_token};
use muster_hub::auth::{AuthError, CaSource, Credential, NoCas};
use muster_hub::methods::{MethodCall, MethodResult};
use muster_hub::presence::Outbound;
use muster_hub::registry::{HubError, Registry};
use muster_hub::telemetry::{IngestError, MAX_TELEMETRY, SystemProperty, Telemetry};
use muster_hub::{Action, Hub, Settlement};
use muster_pki::Certificate;
use muster_store::events::SqliteEventLog;
use muster_store::sqlite::SqliteStore;
use muster_test_support::Pki;
use serde_json::json;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const OTHER_KEY: &str = "HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";

#[derive(Debug)]
struct Cas(Vec<Certificate>);

#[async_trait]
impl CaSource for Cas {
    async fn verified_cas(
        &self,
    ) -> Result<Vec<Certificate>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.0.clone())
    }
}

struct Fixture {
    hub: Hub,
    _dir: tempfile::TempDir,
}

fn hub_with(cas: Arc<dyn CaSource>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::in_memory().unwrap());
    let events = Arc::new(
        SqliteEventLog::open(&dir.path().join("events.db"), Duration::from_secs(3600)).unwrap(),
    );
    let hub = Hub::new(
        Registry::new(store),
        events,
        cas,
        vec!["hub.local".into()],
        vec!["hub.local".into(), "localhost".into()],
    );
    Fixture { hub, _dir: dir }
}

fn as_json(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

fn now() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap()
}

fn token(resource: &str, key: &str, expiry: u64) -> String {
    make_token(resource, &Secret::new(key), None, expiry).unwrap()
}

async fn sas_device(hub: &Hub, id: &str) {
    let body = json!({"deviceId": id, "authentication": {"type": "sas",
        "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY}}});
    hub.put_device("hub.local", id, &body, None).await.unwrap();
}

/// An authenticated identity of an existing SAS device.
async fn authenticated(hub: &Hub, id: &str) -> muster_hub::Identity {
    let t = token(&format!("hub.local/devices/{id}"), KEY, now() + 600);
    hub.authenticate("hub.local", id, None, Credential::Sas(&t))
        .await
        .unwrap()
        .identity
}

/// A new SAS device, authenticated.
async fn sas_identity(hub: &Hub, id: &str) -> muster_hub::Identity {
    sas_device(hub, id).await;
    authenticated(hub, id).await
}

/// Disable a device the way a service does: read it, set `status`, write it back.
async fn disable(hub: &Hub, id: &str) {
    let mut device = as_json(hub.registry().get_device("hub.local", id).await.unwrap());
    device["status"] = json!("disabled");
    hub.put_device("hub.local", id, &device, Some("*"))
        .await
        .unwrap();
}

fn token_error(e: AuthError) -> SasError {
    match e {
        AuthError::Token(e) => e,
        other => panic!("expected a token refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn sas_authentication() {
    let f = hub_with(Arc::new(NoCas));
    sas_device(&f.hub, "d1").await;
    let later = now() + 600;
    let ok = f
        .hub
        .authenticate(
            "hub.local:8883",
            "d1",
            None,
            Credential::Sas(&token("hub.local/devices/d1", KEY, later)),
        )
        .await
        .unwrap();
    assert_eq!(ok.identity.key(), "hub.local/d1");
    assert_eq!(ok.expires, Some(later));

    let auth = |t: String| {
        let hub = &f.hub;
        async move {
            hub.authenticate("hub.local", "d1", None, Credential::Sas(&t))
                .await
        }
    };
    let expired = auth(token("hub.local/devices/d1", KEY, now() - 1)).await;
    assert!(matches!(
        token_error(expired.unwrap_err()),
        SasError::Expired { .. }
    ));
    let other_device = auth(token("hub.local/devices/d2", KEY, later)).await;
    assert!(matches!(
        token_error(other_device.unwrap_err()),
        SasError::WrongResource { .. }
    ));
    let other_host = auth(token("elsewhere.example/devices/d1", KEY, later)).await;
    assert!(matches!(
        token_error(other_host.unwrap_err()),
        SasError::WrongResource { .. }
    ));
    let wrong_key = auth(token("hub.local/devices/d1", OTHER_KEY, later)).await;
    assert!(matches!(
        token_error(wrong_key.unwrap_err()),
        SasError::BadSignature
    ));
    let garbage = auth("SharedAccessSignature nonsense".into()).await;
    assert!(matches!(
        token_error(garbage.unwrap_err()),
        SasError::Malformed(_)
    ));

    let unknown = f
        .hub
        .authenticate(
            "hub.local",
            "nobody",
            None,
            Credential::Sas(&token("hub.local/devices/nobody", KEY, later)),
        )
        .await;
    assert!(matches!(unknown, Err(AuthError::UnknownDevice(_))));
    let invalid = f
        .hub
        .authenticate("hub.local", "bad id", None, Credential::Sas("x"))
        .await;
    assert!(matches!(invalid, Err(AuthError::InvalidId(_))));

    // A disabled device is refused before its credentials are looked at.
    disable(&f.hub, "d1").await;
    let disabled = auth(token("hub.local/devices/d1", KEY, later)).await;
    assert!(matches!(disabled, Err(AuthError::Disabled(_))));
}

#[tokio::test]
async fn module_tokens_name_the_module() {
    let f = hub_with(Arc::new(NoCas));
    sas_device(&f.hub, "gw").await;
    let module = f
        .hub
        .registry()
        .put_module("hub.local", "gw", "m1", &json!({}), None)
        .await
        .unwrap();
    let key = as_json(module)["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let later = now() + 600;
    let ok = f
        .hub
        .authenticate(
            "hub.local",
            "gw",
            Some("m1"),
            Credential::Sas(&token("hub.local/devices/gw/modules/m1", &key, later)),
        )
        .await
        .unwrap();
    assert_eq!(ok.identity.id(), "gw/m1");
    let device_token = f
        .hub
        .authenticate(
            "hub.local",
            "gw",
            Some("m1"),
            Credential::Sas(&token("hub.local/devices/gw", KEY, later)),
        )
        .await;
    assert!(matches!(
        device_token,
        Err(AuthError::Token(SasError::WrongResource { .. }))
    ));
    let missing = f
        .hub
        .authenticate(
            "hub.local",
            "gw",
            Some("m2"),
            Credential::Sas(&token("hub.local/devices/gw/modules/m2", &key, later)),
        )
        .await;
    assert!(matches!(missing, Err(AuthError::UnknownModule(_))));
}

fn chain(pki: &Pki, leaf_der: &[u8]) -> Vec<Certificate> {
    vec![
        Certificate::from_der(leaf_der).unwrap(),
        Certificate::from_der(&pki.intermediate.cert.der).unwrap(),
    ]
}

#[tokio::test]
async fn self_signed_devices_are_pinned_by_thumbprint() {
    let f = hub_with(Arc::new(NoCas));
    let pki = Pki::new();
    let leaf = Certificate::from_der(&pki.leaf.der).unwrap();
    let body = json!({"deviceId": "device-1", "authentication": {"type": "selfSigned",
        "x509Thumbprint": {"primaryThumbprint": leaf.sha256_thumbprint()}}});
    f.hub
        .put_device("hub.local", "device-1", &body, None)
        .await
        .unwrap();
    let presented = chain(&pki, &pki.leaf.der);
    let ok = f
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&presented))
        .await
        .unwrap();
    assert_eq!(ok.expires, None);
    let wrong = chain(&pki, &pki.wrong_leaf.der);
    let refused = f
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&wrong))
        .await;
    assert!(matches!(refused, Err(AuthError::Thumbprint)));
    let none = f
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&[]))
        .await;
    assert!(matches!(none, Err(AuthError::NoCredential)));
    let sas = f
        .hub
        .authenticate(
            "hub.local",
            "device-1",
            None,
            Credential::Sas("SharedAccessSignature sr=a&sig=b&se=1"),
        )
        .await;
    assert!(matches!(sas, Err(AuthError::WrongMechanism { .. })));

    // An expired certificate is refused even when its thumbprint is pinned.
    let expired = Certificate::from_der(&pki.expired_leaf.der).unwrap();
    let body = json!({"deviceId": "device-1", "authentication": {"type": "selfSigned",
        "x509Thumbprint": {"primaryThumbprint": expired.sha1_thumbprint()}}});
    f.hub
        .put_device("hub.local", "device-1", &body, Some("*"))
        .await
        .unwrap();
    let presented = chain(&pki, &pki.expired_leaf.der);
    let refused = f
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&presented))
        .await;
    assert!(matches!(refused, Err(AuthError::Validity)));
}

#[tokio::test]
async fn certificate_authority_devices_chain_to_a_verified_ca() {
    let pki = Pki::new();
    let root = Certificate::from_der(&pki.root.cert.der).unwrap();
    let f = hub_with(Arc::new(Cas(vec![root])));
    let body =
        |id: &str| json!({"deviceId": id, "authentication": {"type": "certificateAuthority"}});
    for id in ["device-1", "other", "device-expired"] {
        f.hub
            .put_device("hub.local", id, &body(id), None)
            .await
            .unwrap();
    }
    let presented = chain(&pki, &pki.leaf.der);
    f.hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&presented))
        .await
        .unwrap();
    let cn = f
        .hub
        .authenticate("hub.local", "other", None, Credential::X509(&presented))
        .await;
    assert!(matches!(cn, Err(AuthError::CommonName(_))));
    let expired = chain(&pki, &pki.expired_leaf.der);
    let refused = f
        .hub
        .authenticate(
            "hub.local",
            "device-expired",
            None,
            Credential::X509(&expired),
        )
        .await;
    assert!(matches!(refused, Err(AuthError::Chain(_))), "{refused:?}");
    let forged = vec![
        Certificate::from_der(&pki.wrong_leaf.der).unwrap(),
        Certificate::from_der(&pki.wrong_intermediate.cert.der).unwrap(),
    ];
    let refused = f
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&forged))
        .await;
    assert!(matches!(refused, Err(AuthError::Chain(_))), "{refused:?}");

    // Without a verified CA nothing chains.
    let g = hub_with(Arc::new(NoCas));
    g.hub
        .put_device("hub.local", "device-1", &body("device-1"), None)
        .await
        .unwrap();
    let refused = g
        .hub
        .authenticate("hub.local", "device-1", None, Credential::X509(&presented))
        .await;
    let e = refused.unwrap_err();
    assert!(matches!(e, AuthError::Chain(_)));
    let report = muster_types::report(&e);
    assert!(
        report.starts_with("the client certificate chain does not lead to a verified CA: "),
        "{report}"
    );
}

#[tokio::test]
async fn telemetry_is_stored_with_the_hub_properties() {
    let f = hub_with(Arc::new(NoCas));
    let me = sas_identity(&f.hub, "d1").await;
    assert!(me.authorize(Action::SendTelemetry(me.target())).is_ok());
    let message = |body: Vec<u8>| Telemetry {
        system: vec![(SystemProperty::MessageId, "m1".into())],
        properties: vec![("temperatureAlert".into(), "false".into())],
        body,
    };
    f.hub
        .ingest(
            &me,
            vec![message(b"{\"t\":1}".to_vec()), message(b"2".to_vec())],
        )
        .await
        .unwrap();
    let too_large = f
        .hub
        .ingest(
            &me,
            vec![message(b"ok".to_vec()), message(vec![0; MAX_TELEMETRY + 1])],
        )
        .await;
    assert!(matches!(too_large, Err(IngestError::TooLarge { .. })));
    let stored = f.hub.events().read("hub.local", 0, None, 10).await.unwrap();
    assert_eq!(stored.len(), 2, "nothing of a refused batch is stored");
    let e = &stored[0].event;
    assert_eq!(e.device_id, "d1");
    assert!(
        e.system_properties
            .contains(&("message-id".into(), "m1".into()))
    );
    assert!(
        e.system_properties
            .contains(&("iothub-connection-device-id".into(), "d1".into()))
    );
}

#[tokio::test]
async fn live_sessions_hear_of_twin_changes_mail_and_removal() {
    let f = hub_with(Arc::new(NoCas));
    let me = sas_identity(&f.hub, "d1").await;
    let mut session = f.hub.connect(&me).await;
    assert_eq!(
        as_json(
            f.hub
                .registry()
                .get_device("hub.local", "d1")
                .await
                .unwrap()
        )["connectionState"],
        "Connected"
    );
    f.hub
        .update_twin(
            "hub.local",
            "d1",
            &json!({"properties": {"desired": {"telemetryDelay": "2"}}}),
            None,
            false,
        )
        .await
        .unwrap();
    match session.rx.recv().await.unwrap() {
        Outbound::DesiredPatch { version, patch } => {
            assert_eq!(version, 2);
            assert_eq!(patch["telemetryDelay"], "2");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        f.hub.report(&me, b"{\"telemetryDelay\":2}").await.unwrap(),
        2
    );
    assert!(matches!(
        f.hub.report(&me, b"not json").await,
        Err(HubError::InvalidInput(_))
    ));
    assert_eq!(
        f.hub.device_twin(&me).await.unwrap()["reported"]["telemetryDelay"],
        2
    );

    let message = muster_hub::c2d::C2dMessage {
        message_id: "c1".into(),
        correlation_id: None,
        ack: None,
        expiry_unix: i64::try_from(now()).unwrap() + 60,
        properties: vec![],
        body: b"hi".to_vec(),
    };
    f.hub.send_c2d("hub.local", "d1", &message).await.unwrap();
    assert_eq!(session.rx.recv().await.unwrap(), Outbound::Mail);
    let got = f
        .hub
        .receive_c2d(&me, 10, Duration::from_secs(60))
        .await
        .unwrap();
    f.hub
        .settle_c2d(&me, &got[0].lock_token, Settlement::Complete)
        .await
        .unwrap();

    // Disabling the device ends its session; the disconnect is recorded.
    disable(&f.hub, "d1").await;
    assert!(session.kicked.is_cancelled());
    f.hub.disconnect(&me, session.generation).await;
    assert_eq!(
        as_json(
            f.hub
                .registry()
                .get_device("hub.local", "d1")
                .await
                .unwrap()
        )["connectionState"],
        "Disconnected"
    );
}

#[tokio::test]
async fn a_newer_session_takes_over() {
    let f = hub_with(Arc::new(NoCas));
    let me = sas_identity(&f.hub, "d1").await;
    let first = f.hub.connect(&me).await;
    let second = f.hub.connect(&me).await;
    assert!(first.kicked.is_cancelled());
    f.hub.disconnect(&me, first.generation).await;
    assert_eq!(
        as_json(
            f.hub
                .registry()
                .get_device("hub.local", "d1")
                .await
                .unwrap()
        )["connectionState"],
        "Connected",
        "the first session's end leaves the newer one's state"
    );
    drop(second);
}

#[tokio::test]
async fn direct_methods_time_out_on_a_paused_clock() {
    let f = Arc::new(hub_with(Arc::new(NoCas)));
    sas_device(&f.hub, "d1").await;
    let call = |timeout: u64| {
        MethodCall::from_request(&json!({"methodName": "reboot", "payload": {"in": 1},
            "responseTimeoutInSeconds": timeout}))
        .unwrap()
    };
    let offline = f.hub.invoke_method("hub.local", "d1", call(5)).await;
    assert!(matches!(offline, Err(HubError::DeviceNotOnline(_))));
    let unknown = f.hub.invoke_method("hub.local", "nobody", call(5)).await;
    assert!(matches!(unknown, Err(HubError::DeviceNotFound(_))));

    let me = authenticated(&f.hub, "d1").await;
    let mut session = f.hub.connect(&me).await;

    // Answered.
    let g = Arc::clone(&f);
    let pending =
        tokio::spawn(async move { g.hub.invoke_method("hub.local", "d1", call(30)).await });
    let Outbound::MethodRequest { rid, name, payload } = session.rx.recv().await.unwrap() else {
        panic!("expected a method request")
    };
    assert_eq!(name, "reboot");
    assert_eq!(payload, br#"{"in":1}"#);
    assert!(
        f.hub
            .complete_method(&me, &rid, MethodResult::from_device(201, b"{\"ok\":true}"))
    );
    let answer = pending.await.unwrap().unwrap();
    assert_eq!(answer.status, 201);
    assert_eq!(answer.payload, json!({"ok": true}));

    // Not answered: the call times out after its own timeout, in virtual time.
    tokio::time::pause();
    let g = Arc::clone(&f);
    let began = tokio::time::Instant::now();
    let pending =
        tokio::spawn(async move { g.hub.invoke_method("hub.local", "d1", call(7)).await });
    let Outbound::MethodRequest { rid, .. } = session.rx.recv().await.unwrap() else {
        panic!("expected a method request")
    };
    let result = pending.await.unwrap();
    assert!(
        matches!(result, Err(HubError::GatewayTimeout(_))),
        "{result:?}"
    );
    assert!(began.elapsed() >= Duration::from_secs(7));
    assert!(
        !f.hub
            .complete_method(&me, &rid, MethodResult::from_device(200, b"")),
        "too late"
    );
}

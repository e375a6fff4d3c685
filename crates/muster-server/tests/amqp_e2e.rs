//! The AMQP listener with a real AMQP client (fe2o3-amqp's client side) and raw bytes: CBS
//! tokens good and bad, telemetry that reaches the event stream, links to another device's
//! address refused with `amqp:unauthorized-access`, and garbage of every kind — a wrong
//! protocol header, garbage after the header, a frame over the negotiated size, a silent
//! peer, a WebSocket upgrade for an unknown subprotocol — closing only that connection.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use std::time::Duration;

use common::{Mqtt, TestServer};
use fe2o3_amqp::types::messaging::{AmqpValue, Body, Message, MessageId, Properties};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PLAIN_HEADER: &[u8; 8] = b"AMQP\x00\x01\x00\x00";

async fn tls(server: &TestServer) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    Mqtt::tls(server.running.amqp_addr, &server.ca_pem(), None).await
}

/// Read until the server closes; what it sent.
async fn read_to_close(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server did not close the connection");
    out
}

/// A put-token request on `$cbs`; the status code of the answer.
async fn put_token(
    sender: &mut Sender,
    receiver: &mut Receiver,
    audience: &str,
    token: &str,
) -> Value {
    let message = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("req-1".into())),
            reply_to: Some("cbs".into()),
            ..Properties::default()
        })
        .application_properties(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert("operation", SimpleValue::String("put-token".into()))
                .insert(
                    "type",
                    SimpleValue::String("servicebus.windows.net:sastoken".into()),
                )
                .insert("name", SimpleValue::String(audience.into()))
                .build(),
        )
        .body(Body::<Value>::Value(AmqpValue(Value::String(token.into()))))
        .build();
    sender.send(message).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), receiver.recv::<Body<Value>>())
        .await
        .expect("a CBS answer")
        .unwrap();
    receiver.accept(&reply).await.unwrap();
    let m = reply.message();
    assert_eq!(
        m.properties.as_ref().unwrap().correlation_id,
        Some(MessageId::String("req-1".into())),
        "the answer correlates with the request"
    );
    let status = m
        .application_properties
        .as_ref()
        .unwrap()
        .0
        .iter()
        .find(|(k, _)| k.as_str() == "status-code")
        .map(|(_, v)| v.clone())
        .expect("a status-code");
    match status {
        SimpleValue::Int(n) => Value::Int(n),
        other => panic!("status-code must be an AMQP int, not {other:?}"),
    }
}

/// A plain-AMQP connection with one session and the `$cbs` link pair.
async fn cbs_session(
    server: &TestServer,
    container: &str,
) -> (
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
    Sender,
    Receiver,
) {
    let mut connection = Connection::builder()
        .container_id(container)
        .hostname("localhost")
        .open_with_stream(tls(server).await)
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let cbs_out = Sender::attach(&mut session, "cbs-out", "$cbs")
        .await
        .unwrap();
    let cbs_in = Receiver::attach(&mut session, "cbs-in", "$cbs")
        .await
        .unwrap();
    (connection, session, cbs_out, cbs_in)
}

#[tokio::test]
async fn cbs_tokens_authorize_devices_and_foreign_addresses_are_refused() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let token = hub.sas_device("amqp-1").await;
    hub.sas_device("amqp-2").await;
    let stream = tls(&server).await;
    let mut connection = Connection::builder()
        .container_id("test")
        .hostname("localhost")
        .open_with_stream(stream)
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    let mut cbs_out = Sender::attach(&mut session, "cbs-out", "$cbs")
        .await
        .unwrap();
    let mut cbs_in = Receiver::attach(&mut session, "cbs-in", "$cbs")
        .await
        .unwrap();

    // A token whose signature is wrong: 401, and the connection stays usable.
    let forged = format!("{}x", token.trim_end_matches('='));
    let status = put_token(
        &mut cbs_out,
        &mut cbs_in,
        "localhost/devices/amqp-1",
        &forged,
    )
    .await;
    assert_eq!(status, Value::Int(401));
    let status = put_token(
        &mut cbs_out,
        &mut cbs_in,
        "localhost/devices/amqp-1",
        "garbage",
    )
    .await;
    assert_eq!(status, Value::Int(401));
    // Without a token, the device's links are refused.
    let mut early = Sender::attach(&mut session, "early", "/devices/amqp-1/messages/events")
        .await
        .unwrap();
    let refused = early
        .send(Message::builder().data(b"x".to_vec()).build())
        .await;
    assert!(refused.is_err(), "telemetry without a token: {refused:?}");

    let status = put_token(
        &mut cbs_out,
        &mut cbs_in,
        "localhost/devices/amqp-1",
        &token,
    )
    .await;
    assert_eq!(status, Value::Int(200));
    let mut events = Sender::attach(&mut session, "events", "/devices/amqp-1/messages/events")
        .await
        .unwrap();
    let outcome = events
        .send(
            Message::builder()
                .application_properties(
                    fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                        .insert("temperatureAlert", SimpleValue::String("true".into()))
                        .build(),
                )
                .data(b"{\"t\":21}".to_vec())
                .build(),
        )
        .await
        .unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    let stored = hub.read_events("amqp-1", 1).await;
    assert_eq!(stored[0]["properties"]["temperatureAlert"], "true");
    assert_eq!(
        stored[0]["systemProperties"]["iothub-connection-device-id"],
        "amqp-1"
    );

    // The token for amqp-1 does not open amqp-2's mailbox.
    let mut foreign = Receiver::attach(&mut session, "c2d", "/devices/amqp-2/messages/devicebound")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), foreign.recv::<Body<Value>>())
        .await
        .expect("the link is closed at once")
        .unwrap_err();
    assert!(format!("{err:?}").contains("UnauthorizedAccess"), "{err:?}");
    // Unknown addresses: not found.
    let mut nowhere = Receiver::attach(&mut session, "x", "/secrets")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), nowhere.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:?}").contains("NotFound"), "{err:?}");
    // And the connection still carries telemetry.
    let outcome = events
        .send(Message::builder().data(b"2".to_vec()).build())
        .await
        .unwrap();
    assert!(outcome.is_accepted());
    session.end().await.unwrap();
    connection.close().await.unwrap();
}

#[tokio::test]
async fn garbage_closes_only_its_own_connection() {
    let server = TestServer::start_with(|c| {
        c.limits.connect_timeout = Duration::from_secs(1);
    })
    .await;
    // Not an AMQP header: the server answers its own header and closes.
    let mut s = tls(&server).await;
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let answer = read_to_close(&mut s).await;
    assert_eq!(answer, PLAIN_HEADER);

    // A valid header, then garbage instead of an Open frame.
    let mut s = tls(&server).await;
    s.write_all(PLAIN_HEADER).await.unwrap();
    s.write_all(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 1, 2, 3, 4])
        .await
        .unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(answer.starts_with(PLAIN_HEADER), "{answer:?}");

    // A frame far above the negotiated 64 KiB.
    let mut s = tls(&server).await;
    s.write_all(PLAIN_HEADER).await.unwrap();
    let mut huge = (16 * 1024 * 1024u32).to_be_bytes().to_vec();
    huge.extend_from_slice(&[2, 0, 0, 0]);
    huge.extend(std::iter::repeat_n(0u8, 64 * 1024));
    let _ = s.write_all(&huge).await;
    read_to_close(&mut s).await;

    // A bad SASL exchange: PLAIN without the NUL separators.
    let mut s = tls(&server).await;
    s.write_all(b"AMQP\x03\x01\x00\x00").await.unwrap();
    let mut mechanisms = vec![0u8; 8];
    s.read_exact(&mut mechanisms).await.unwrap();
    assert_eq!(&mechanisms, b"AMQP\x03\x01\x00\x00");
    // sasl-init (0x41): mechanism "PLAIN", initial-response "no-separators".
    let init = [
        &[0x00, 0x53, 0x41, 0xc0, 0x17, 0x02, 0xa3, 0x05][..],
        b"PLAIN",
        &[0xa0, 0x0d],
        b"no-separators",
    ]
    .concat();
    let mut frame = u32::try_from(8 + init.len())
        .unwrap()
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(&[2, 1, 0, 0]);
    frame.extend_from_slice(&init);
    s.write_all(&frame).await.unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(!answer.is_empty(), "a SASL outcome before the close");

    // A silent peer is dropped after the connect deadline.
    let mut s = tls(&server).await;
    let started = std::time::Instant::now();
    read_to_close(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(5));

    // The server still serves a good client.
    let hub = server.hub_rest();
    let token = hub.sas_device("after").await;
    let (mut connection, _session, mut cbs_out, mut cbs_in) = cbs_session(&server, "good").await;
    let status = put_token(&mut cbs_out, &mut cbs_in, "localhost/devices/after", &token).await;
    assert_eq!(status, Value::Int(200));
    connection.close().await.unwrap();
}

#[tokio::test]
async fn websocket_upgrades_for_unknown_subprotocols_are_refused() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let upgrade = |protocol: &'static str| {
        hub.client
            .get(format!("{}/$iothub/websocket", hub.base))
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-protocol", protocol)
            .send()
    };
    let r = upgrade("stomp, wamp").await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("mqtt or AMQPWSB10"));
    // A plain GET on the tunnel path is not an upgrade.
    let r = hub
        .client
        .get(format!("{}/$iothub/websocket", hub.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// The Azure CLI's login: SASL PLAIN as `iothubowner@sas.root.localhost` with `password`.
async fn cli_login(
    server: &TestServer,
    container: &str,
    password: String,
) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    Connection::builder()
        .container_id(container)
        .hostname("localhost")
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: "iothubowner@sas.root.localhost".into(),
            password,
        })
        .open_with_stream(tls(server).await)
        .await
        .unwrap()
}

/// A ten-minute `iothubowner` token for the hub `localhost`.
fn owner_token(server: &TestServer) -> String {
    let cs = server.running.info["hubConnectionString"].as_str().unwrap();
    let key = cs.split("SharedAccessKey=").nth(1).unwrap().to_owned();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    muster_auth::sas::make_token(
        "localhost",
        &muster_auth::Secret::new(key),
        Some("iothubowner"),
        exp,
    )
    .unwrap()
}

#[tokio::test]
async fn a_service_login_sends_c2d_and_reads_feedback_and_modules_send_telemetry() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let device_token = hub.sas_device("fb-dev").await;
    // The Azure CLI's login: SASL PLAIN as {policy}@sas.root.{hub}, a service token as password.
    let mut service = cli_login(&server, "cli", owner_token(&server)).await;
    let mut session = Session::begin(&mut service).await.unwrap();
    let mut feedback = Receiver::attach(
        &mut session,
        "fb",
        "amqps://localhost/messages/servicebound/feedback",
    )
    .await
    .unwrap();
    let mut c2d = Sender::attach(
        &mut session,
        "c2d",
        "amqps://localhost/messages/devicebound",
    )
    .await
    .unwrap();
    let message = Message::builder()
        .properties(Properties {
            message_id: Some(MessageId::String("cli-1".into())),
            to: Some("/devices/fb-dev/messages/devicebound".into()),
            ..Properties::default()
        })
        .application_properties(
            fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                .insert("iothub-ack", SimpleValue::String("full".into()))
                .build(),
        )
        .data(b"hello device".to_vec())
        .build();
    let outcome = c2d.send(message).await.unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    // A message for a device that does not exist is rejected.
    let lost = Message::builder()
        .properties(Properties {
            to: Some("/devices/nobody/messages/devicebound".into()),
            ..Properties::default()
        })
        .data(b"x".to_vec())
        .build();
    let outcome = c2d.send(lost).await.unwrap();
    assert!(!outcome.is_accepted(), "{outcome:?}");

    // The device completes it over the HTTPS device API; the feedback record follows.
    let r = hub
        .client
        .get(format!("{}/devices/fb-dev/messages/devicebound", hub.base))
        .header("authorization", &device_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let lock = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let done = hub
        .client
        .delete(format!(
            "{}/devices/fb-dev/messages/devicebound/{lock}",
            hub.base
        ))
        .header("authorization", &device_token)
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 204);
    let record = tokio::time::timeout(Duration::from_secs(10), feedback.recv::<Body<Value>>())
        .await
        .expect("a feedback record")
        .unwrap();
    feedback.accept(&record).await.unwrap();
    let body = match &record.message().body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.to_vec()).collect::<Vec<u8>>(),
        other => panic!("feedback must be a Data body, not {other:?}"),
    };
    let records: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(records[0]["originalMessageId"], "cli-1", "{records}");
    assert_eq!(records[0]["statusCode"], "Success");
    assert_eq!(records[0]["deviceId"], "fb-dev");
    service.close().await.unwrap();

    // A wrong service password: the C2D link is refused.
    let forged = "SharedAccessSignature sr=localhost&sig=x&se=99999999999&skn=iothubowner";
    let mut bad = cli_login(&server, "cli-bad", forged.into()).await;
    let mut session = Session::begin(&mut bad).await.unwrap();
    let mut c2d = Sender::attach(&mut session, "c2d", "/messages/devicebound")
        .await
        .unwrap();
    let refused = c2d
        .send(Message::builder().data(b"x".to_vec()).build())
        .await;
    assert!(refused.is_err(), "{refused:?}");

    // A module authenticates with its own token and its telemetry names it.
    hub.ok(
        reqwest::Method::PUT,
        "/devices/fb-dev/modules/filter",
        Some(serde_json::json!({"deviceId": "fb-dev", "moduleId": "filter"})),
        &[],
    )
    .await;
    let module = hub
        .ok(
            reqwest::Method::GET,
            "/devices/fb-dev/modules/filter",
            None,
            &[],
        )
        .await;
    let module_key = module["authentication"]["symmetricKey"]["primaryKey"]
        .as_str()
        .unwrap();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let module_token = muster_auth::sas::make_token(
        "localhost/devices/fb-dev/modules/filter",
        &muster_auth::Secret::new(module_key),
        None,
        exp,
    )
    .unwrap();
    let (mut connection, mut session, mut cbs_out, mut cbs_in) =
        cbs_session(&server, "module").await;
    let status = put_token(
        &mut cbs_out,
        &mut cbs_in,
        "localhost/devices/fb-dev/modules/filter",
        &module_token,
    )
    .await;
    assert_eq!(status, Value::Int(200));
    let mut events = Sender::attach(
        &mut session,
        "events",
        "/devices/fb-dev/modules/filter/messages/events",
    )
    .await
    .unwrap();
    let outcome = events
        .send(Message::builder().data(b"from a module".to_vec()).build())
        .await
        .unwrap();
    assert!(outcome.is_accepted());
    let stored = hub.read_events("fb-dev", 1).await;
    assert_eq!(
        stored[0]["systemProperties"]["iothub-connection-module-id"], "filter",
        "{stored:?}"
    );
    // The module's token does not open the device's own mailbox.
    let mut mailbox = Receiver::attach(&mut session, "c2d", "/devices/fb-dev/messages/devicebound")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), mailbox.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:?}").contains("UnauthorizedAccess"), "{err:?}");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_takes_its_answers_does_not_stall_the_server() {
    let server = TestServer::start().await;
    let mut connection = Connection::builder()
        .container_id("deaf")
        .hostname("localhost")
        .open_with_stream(tls(&server).await)
        .await
        .unwrap();
    let mut session = Session::begin(&mut connection).await.unwrap();
    // Only the request side of $cbs: the answers have nowhere to go.
    let mut cbs_out = Sender::attach(&mut session, "cbs-out", "$cbs")
        .await
        .unwrap();
    let request = || {
        Message::builder()
            .application_properties(
                fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                    .insert("operation", SimpleValue::String("put-token".into()))
                    .insert("name", SimpleValue::String("localhost/devices/x".into()))
                    .build(),
            )
            .body(Body::<Value>::Value(AmqpValue(Value::String(
                "junk".into(),
            ))))
            .build()
    };
    let all = async {
        for _ in 0..200 {
            let outcome = cbs_out.send(request()).await.unwrap();
            assert!(outcome.is_accepted());
        }
    };
    tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("every request is taken, answered or not");
    connection.close().await.unwrap();
}

#[tokio::test]
async fn a_dotnet_telemetry_batch_becomes_one_event_per_message() {
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    use fe2o3_amqp::types::messaging::{Batch, Data};
    use fe2o3_amqp::types::primitives::Binary;
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let token = hub.sas_device("batcher").await;
    let (mut connection, mut session, mut cbs_out, mut cbs_in) =
        cbs_session(&server, "dotnet").await;
    let status = put_token(
        &mut cbs_out,
        &mut cbs_in,
        "localhost/devices/batcher",
        &token,
    )
    .await;
    assert_eq!(status, Value::Int(200));
    let mut events = Sender::attach(
        &mut session,
        "TelemetrySenderLink",
        "amqps://localhost:5671/devices/batcher/messages/events",
    )
    .await
    .unwrap();
    let inner = |n: u32| {
        let m = Message::builder()
            .application_properties(
                fe2o3_amqp::types::messaging::ApplicationProperties::builder()
                    .insert("n", SimpleValue::String(n.to_string()))
                    .build(),
            )
            .data(format!("reading {n}").into_bytes())
            .build();
        Data(Binary::from(serde_amqp::to_vec(&Serializable(m)).unwrap()))
    };
    let batch = Message::builder()
        .body(Body::<Value>::Data(Batch::new(vec![inner(1), inner(2)])))
        .build();
    let sendable = fe2o3_amqp::link::delivery::Sendable::builder()
        .message(batch)
        .message_format(0x8001_3700)
        .build();
    let outcome = events.send(sendable).await.unwrap();
    assert!(outcome.is_accepted(), "{outcome:?}");
    let stored = hub.read_events("batcher", 2).await;
    assert_eq!(stored[0]["body"], "reading 1", "{stored:?}");
    assert_eq!(stored[1]["body"], "reading 2");
    assert_eq!(stored[1]["properties"]["n"], "2");
    connection.close().await.unwrap();
}

/// The Azure CLI's `monitor-events` starts at the hub's own `messages/events/$management` and
/// follows the `amqp:link:redirect` to the Event Hubs-compatible endpoint; without a service
/// login the attach is refused.
#[tokio::test]
async fn the_hub_events_address_redirects_to_the_event_hubs_endpoint() {
    let server = TestServer::start().await;
    // No login: unauthorized.
    let (_c, mut session, _o, _i) = cbs_session(&server, "anonymous").await;
    let mut link = Receiver::attach(
        &mut session,
        "m",
        "amqps://localhost/messages/events/$management",
    )
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), link.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:?}").contains("UnauthorizedAccess"), "{err:?}");

    // With the CLI's SASL PLAIN login: a redirect naming host, port and address.
    let mut cli = cli_login(&server, "cli", owner_token(&server)).await;
    let mut session = Session::begin(&mut cli).await.unwrap();
    let mut link = Receiver::attach(
        &mut session,
        "m",
        "amqps://localhost/messages/events/$management",
    )
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), link.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("Redirect"), "{text}");
    assert!(
        text.contains("amqps://localhost/localhost/$management"),
        "{text}"
    );
    assert!(
        text.contains(&server.running.amqp_addr.port().to_string()),
        "the redirect names the AMQP port: {text}"
    );
}

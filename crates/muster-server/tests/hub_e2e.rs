//! The hub's device endpoint over real TLS: a provisioned device connects with its
//! certificate, reads its twin, reports properties and receives desired patches; SAS devices;
//! refusals; topic isolation; takeover by a second connection; deletion closes the session.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use common::{Mqtt, ServerFixture as _, TestServer, dps_username};
use muster_mqtt::{ConnectReturnCode, Packet, QoS, SubAckReturnCode};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

const HUB_USER: &str = "localhost/device-1/?api-version=2021-04-12&DeviceClientType=muster-tests";

async fn provisioned(server: &TestServer, pki: &Pki) -> String {
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/lab",
        Some(json!({"attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
                    "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}}})),
        &[],
    )
    .await;
    let chain = format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&server.id_scope(), "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (_, _, polled) = dev.dps_register("device-1", Value::Null).await;
    assert_eq!(polled.unwrap().1["status"], "assigned");
    chain
}

#[tokio::test]
async fn policies_have_iot_hub_rights() {
    let server = TestServer::start().await;
    let owner = server.hub_rest();
    owner
        .ok(
            Method::PUT,
            "/devices/d1",
            Some(json!({"deviceId": "d1"})),
            &[],
        )
        .await;
    let read = server.policy_rest("registryRead");
    let service = server.policy_rest("service");
    let write = server.policy_rest("registryReadWrite");
    let query = json!({"query": "SELECT * FROM devices"});
    let status = |r: (u16, reqwest::header::HeaderMap, Value)| r.0;
    // RegistryRead reads and queries, and writes nothing.
    assert_eq!(
        status(read.send(Method::GET, "/devices/d1", None, &[]).await),
        200
    );
    assert_eq!(
        status(
            read.send(Method::POST, "/devices/query", Some(query.clone()), &[])
                .await
        ),
        200
    );
    assert_eq!(
        status(
            read.send(
                Method::PUT,
                "/devices/d2",
                Some(json!({"deviceId": "d2"})),
                &[]
            )
            .await
        ),
        401
    );
    // ServiceConnect updates twins and sends cloud-to-device messages, but not identities.
    assert_eq!(
        status(
            service
                .send(
                    Method::PATCH,
                    "/twins/d1",
                    Some(json!({"tags": {"a": 1}})),
                    &[]
                )
                .await
        ),
        200
    );
    assert_eq!(service.send_c2d("d1", b"hello", &[]).await, 204);
    assert_eq!(
        status(service.send(Method::DELETE, "/devices/d1", None, &[]).await),
        401
    );
    // RegistryWrite manages identities, and sends nothing to devices.
    assert_eq!(
        status(
            write
                .send(
                    Method::PUT,
                    "/devices/d2",
                    Some(json!({"deviceId": "d2"})),
                    &[]
                )
                .await
        ),
        200
    );
    assert_eq!(write.send_c2d("d1", b"hello", &[]).await, 401);
}

async fn twin_request(dev: &mut Mqtt, topic: &str, body: &[u8], id: u16) -> muster_mqtt::Publish {
    dev.publish(topic, body, id).await;
    dev.next_publish().await
}

#[tokio::test]
async fn provisioned_device_uses_its_twin() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;
    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    assert!(!dev.connack.session_present);
    assert_eq!(
        dev.subscribe("$iothub/twin/res/#").await,
        vec![SubAckReturnCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        dev.subscribe("$iothub/twin/PATCH/properties/desired/#")
            .await,
        vec![SubAckReturnCode::Success(QoS::AtLeastOnce)]
    );

    // GET: the enrollment's initial twin, without a `properties` wrapper.
    let reply = twin_request(&mut dev, "$iothub/twin/GET/?$rid=1", b" ", 2).await;
    assert_eq!(reply.topic, "$iothub/twin/res/200/?$rid=1");
    let twin: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(twin["desired"]["telemetryDelay"], "1");
    assert_eq!(twin["desired"]["$version"], 1);

    // Reported patch: 204 with the new reported version.
    let reply = twin_request(
        &mut dev,
        "$iothub/twin/PATCH/properties/reported/?$rid=2",
        br#"{"telemetryDelay": 1}"#,
        3,
    )
    .await;
    assert_eq!(reply.topic, "$iothub/twin/res/204/?$rid=2&$version=2");
    assert!(reply.payload.is_empty());
    // A bad patch: a non-2xx status and a JSON body with errorCode (what the Node SDK reads).
    let reply = twin_request(
        &mut dev,
        "$iothub/twin/PATCH/properties/reported/?$rid=3",
        br#"{"$bad": 1}"#,
        4,
    )
    .await;
    assert!(
        reply.topic.starts_with("$iothub/twin/res/400/?$rid=3"),
        "{}",
        reply.topic
    );
    let err: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(err["errorCode"].as_u64().is_some() && err["message"].is_string());

    // The operator changes the desired property: the device is told, with $version.
    let rest = server.hub_rest();
    let twin = rest
        .ok(
            Method::PATCH,
            "/twins/device-1",
            Some(json!({"properties": {"desired": {"telemetryDelay": "2"}}})),
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(
        twin["properties"]["reported"]["telemetryDelay"], 1,
        "the service sees the reported value"
    );
    let patch = dev.next_publish().await;
    assert_eq!(
        patch.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    let body: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(body, json!({"telemetryDelay": "2", "$version": 2}));

    // A live stream from `latest` receives what arrives after it opened.
    let live_rest = server.hub_rest();
    let live = tokio::spawn(async move { live_rest.read_events_from("latest", None, 1).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    dev.publish(
        "devices/device-1/messages/events/alert=1",
        br#"{"live":true}"#,
        20,
    )
    .await;
    assert!(matches!(dev.recv().await, Some(Packet::PubAck(20))));
    let got = live.await.unwrap();
    assert_eq!(got[0]["body"]["live"], true);
    assert_eq!(got[0]["properties"]["alert"], "1");

    // Topic isolation: another device's topics are refused.
    assert_eq!(
        dev.subscribe("devices/device-2/messages/devicebound/#")
            .await,
        vec![SubAckReturnCode::Failure]
    );
    dev.publish("devices/device-2/messages/events/", b"{}", 9)
        .await;
    assert!(
        dev.recv().await.is_none(),
        "publishing as another device closes the connection"
    );
}

#[tokio::test]
async fn sessions_refusals_takeover_and_deletion() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;

    // Wrong certificate, unknown device, mismatched client id.
    let other = pki.intermediate.leaf("device-1");
    let other_chain = format!("{}{}", other.pem, pki.intermediate.cert.pem);
    let dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&other_chain, &other.key_pem)),
        )
        .await;
    assert_eq!(
        dev.connack.code,
        ConnectReturnCode::NotAuthorized,
        "thumbprint pinning"
    );
    let dev = server
        .mqtt(
            "ghost",
            "localhost/ghost/?api-version=2021-04-12",
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::NotAuthorized);
    let dev = server
        .mqtt("someone", HUB_USER, None, Some((&chain, &pki.leaf.key_pem)))
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::IdentifierRejected);

    // Persistent session: subscriptions survive a reconnect (the Python SDK never re-subscribes).
    let mut first = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    first
        .subscribe("$iothub/twin/PATCH/properties/desired/#")
        .await;
    let mut second = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert!(second.connack.session_present);
    assert!(
        first.recv().await.is_none(),
        "a second connection closes the first"
    );
    let rest = server.hub_rest();
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "3"}}})),
        &[],
    )
    .await;
    let patch = second.next_publish().await;
    assert!(
        patch
            .topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{}",
        patch.topic
    );

    // Telemetry: PUBACK once durable, then visible in the event stream with its properties.
    let topic = "devices/device-1/messages/events/%24.mid=m-1&%24.ct=application%2Fjson&%24.ce=utf-8&temperatureAlert=true&sp%20ace=a%2Fb";
    second.publish(topic, br#"{"temperature":31.5}"#, 7).await;
    assert!(matches!(second.recv().await, Some(Packet::PubAck(7))));
    second
        .publish("devices/device-1/messages/events/", &[0xff, 0x00, 0x80], 8)
        .await;
    assert!(matches!(second.recv().await, Some(Packet::PubAck(8))));
    let events = rest.read_events_from("earliest", None, 2).await;
    assert_eq!(events[0]["deviceId"], "device-1");
    assert_eq!(events[0]["body"]["temperature"], 31.5);
    assert_eq!(
        events[0]["properties"],
        json!({"temperatureAlert": "true", "sp ace": "a/b"})
    );
    assert_eq!(events[0]["systemProperties"]["message-id"], "m-1");
    assert_eq!(
        events[0]["systemProperties"]["content-type"],
        "application/json"
    );
    assert_eq!(
        events[0]["systemProperties"]["iothub-connection-device-id"],
        "device-1"
    );
    assert_eq!(events[1]["bodyEncoding"], "base64");
    assert_eq!(
        events[1]["sequenceNumber"].as_u64().unwrap(),
        events[0]["sequenceNumber"].as_u64().unwrap() + 1
    );
    // Oversized telemetry (over 256 KB) closes the connection without an acknowledgement.
    second
        .publish(
            "devices/device-1/messages/events/",
            &vec![b'x'; 256 * 1024 + 1],
            9,
        )
        .await;
    assert!(second.recv().await.is_none());

    // Deleting the device closes its connection and refuses it afterwards.
    let mut third = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(third.connack.code, ConnectReturnCode::Accepted);
    let (status, _, _) = rest
        .send(
            Method::DELETE,
            "/devices/device-1",
            None,
            &[("if-match", "*")],
        )
        .await;
    assert_eq!(status, 204);
    assert!(third.recv().await.is_none(), "deletion closes the session");
    let dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn sas_devices_authenticate_with_their_keys() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    let device = rest.ok(Method::PUT, "/devices/sas-1", Some(json!({"deviceId": "sas-1", "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})), &[]).await;
    let key = muster_auth::Secret::new(
        device["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap(),
    );
    let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3600;
    let user = "localhost/sas-1/?api-version=2019-10-01";
    let token = muster_auth::sas::make_token("localhost/devices/sas-1", &key, None, exp).unwrap();
    let mut dev = server.mqtt("sas-1", user, Some(&token), None).await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    dev.subscribe("$iothub/twin/res/#").await;
    let reply = twin_request(&mut dev, "$iothub/twin/GET/?$rid=x", b" ", 1).await;
    assert_eq!(reply.topic, "$iothub/twin/res/200/?$rid=x");
    for (token, why) in [
        (
            muster_auth::sas::make_token(
                "localhost/devices/sas-1",
                &muster_auth::Secret::new("AAAAAAAAAAAAAAAAAAAAAA=="),
                None,
                exp,
            )
            .unwrap(),
            "wrong key",
        ),
        (
            muster_auth::sas::make_token("localhost/devices/sas-1", &key, None, 10).unwrap(),
            "expired",
        ),
        (
            muster_auth::sas::make_token("localhost/devices/other", &key, None, exp).unwrap(),
            "other device",
        ),
    ] {
        let dev = server.mqtt("sas-1", user, Some(&token), None).await;
        assert_eq!(dev.connack.code, ConnectReturnCode::NotAuthorized, "{why}");
    }
    // A token that expires while connected ends the session.
    let short = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 2;
    let token = muster_auth::sas::make_token("localhost/devices/sas-1", &key, None, short).unwrap();
    let mut dev = server.mqtt("sas-1", user, Some(&token), None).await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    assert!(dev.recv().await.is_none(), "disconnected at token expiry");
    // Disabling the device refuses it.
    let mut d = rest.ok(Method::GET, "/devices/sas-1", None, &[]).await;
    d["status"] = json!("disabled");
    rest.ok(Method::PUT, "/devices/sas-1", Some(d), &[("if-match", "*")])
        .await;
    let token = muster_auth::sas::make_token("localhost/devices/sas-1", &key, None, exp).unwrap();
    let dev = server.mqtt("sas-1", user, Some(&token), None).await;
    assert_eq!(dev.connack.code, ConnectReturnCode::NotAuthorized);
}

#[tokio::test]
async fn direct_methods_reach_the_device_and_return_its_answer() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;
    let rest = server.hub_rest();
    // Not connected: 404 DeviceNotOnline.
    let (status, _, body) = rest
        .send(
            Method::POST,
            "/twins/device-1/methods",
            Some(json!({"methodName": "reboot", "payload": {}})),
            &[],
        )
        .await;
    assert_eq!(status, 404);
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:DeviceNotOnline;"),
        "{body}"
    );

    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    // Connected but not taking methods (never subscribed): 404 at once, not a timeout.
    let began = std::time::Instant::now();
    let (status, _, body) = rest
        .send(
            Method::POST,
            "/twins/device-1/methods",
            Some(json!({"methodName": "reboot", "responseTimeoutInSeconds": 30})),
            &[],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(began.elapsed() < std::time::Duration::from_secs(10));
    dev.subscribe("$iothub/methods/POST/#").await;
    let caller = tokio::spawn(async move {
        rest.send(Method::POST, "/twins/device-1/methods", Some(json!({"methodName": "setDelay", "payload": {"seconds": 2}, "responseTimeoutInSeconds": 10})), &[]).await
    });
    let request = dev.next_publish().await;
    assert!(
        request
            .topic
            .starts_with("$iothub/methods/POST/setDelay/?$rid="),
        "{}",
        request.topic
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
    let payload: Value = serde_json::from_slice(&request.payload).unwrap();
    assert_eq!(payload["seconds"], 2);
    dev.publish(
        &format!("$iothub/methods/res/200/?$rid={rid}"),
        br#"{"applied":2}"#,
        5,
    )
    .await;
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": 200, "payload": {"applied": 2}}));

    // A device that never answers: 504 after responseTimeoutInSeconds.
    let rest = server.hub_rest();
    let (status, _, body) = rest
        .send(
            Method::POST,
            "/twins/device-1/methods",
            Some(json!({"methodName": "slow", "responseTimeoutInSeconds": 5})),
            &[],
        )
        .await;
    assert_eq!(status, 504, "{body}");
    let (status, _, _) = rest
        .send(
            Method::POST,
            "/twins/device-1/methods",
            Some(json!({"methodName": "x", "responseTimeoutInSeconds": 500})),
            &[],
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn cloud_to_device_messages_are_queued_delivered_and_redelivered() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;
    let rest = server.hub_rest();
    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    dev.subscribe("devices/device-1/messages/devicebound/#")
        .await;

    // Online: delivered at QoS 1 with system and application properties in the topic.
    assert_eq!(
        rest.send_c2d(
            "device-1",
            b"reboot please",
            &[
                ("iothub-messageid", "c2d-1"),
                ("iothub-ack", "full"),
                ("iothub-app-priority", "high")
            ]
        )
        .await,
        204
    );
    let m = dev.next_publish().await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert!(
        m.topic
            .starts_with("devices/device-1/messages/devicebound/"),
        "{}",
        m.topic
    );
    let bag = muster_mqtt::topic::parse_property_bag(
        m.topic
            .trim_start_matches("devices/device-1/messages/devicebound/"),
    );
    assert!(
        bag.contains(&("$.mid".to_owned(), "c2d-1".to_owned())),
        "{bag:?}"
    );
    assert!(bag.contains(&("iothub-ack".to_owned(), "full".to_owned())));
    assert!(bag.contains(&("priority".to_owned(), "high".to_owned())));
    assert_eq!(&m.payload[..], b"reboot please");
    dev.send(&Packet::PubAck(m.packet_id.unwrap())).await;

    // Offline: queued; not acknowledged: redelivered after a reconnect (persistent session,
    // no new SUBSCRIBE, as the Python SDK behaves).
    drop(dev);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        rest.send_c2d("device-1", b"while you were away", &[]).await,
        204
    );
    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert!(dev.connack.session_present);
    let m = dev.next_publish().await;
    assert_eq!(&m.payload[..], b"while you were away");
    drop(dev); // no PUBACK
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let m = dev.next_publish().await;
    assert_eq!(
        &m.payload[..],
        b"while you were away",
        "redelivered until acknowledged"
    );
    dev.send(&Packet::PubAck(m.packet_id.unwrap())).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(dev);

    // Limits: 64 KB per message, 50 pending per device, unknown devices.
    assert_eq!(
        rest.send_c2d("device-1", &vec![b'x'; 64 * 1024 + 1], &[])
            .await,
        400
    );
    assert_eq!(rest.send_c2d("ghost", b"x", &[]).await, 404);
    for _ in 0..50 {
        assert_eq!(rest.send_c2d("device-1", b"x", &[]).await, 204);
    }
    assert_eq!(rest.send_c2d("device-1", b"one too many", &[]).await, 403);
}

#[tokio::test]
async fn connection_state_follows_the_device() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;
    let rest = server.hub_rest();
    let state = |d: Value| d["connectionState"].as_str().unwrap().to_owned();
    let before = rest.ok(Method::GET, "/devices/device-1", None, &[]).await;
    assert_eq!(state(before.clone()), "Disconnected");
    let mut dev = server
        .mqtt(
            "device-1",
            HUB_USER,
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let device = rest.ok(Method::GET, "/devices/device-1", None, &[]).await;
    assert_eq!(state(device.clone()), "Connected");
    assert_ne!(device["lastActivityTime"], "0001-01-01T00:00:00Z");
    dev.send(&Packet::Disconnect).await;
    let mut last = String::new();
    for _ in 0..50 {
        last = state(rest.ok(Method::GET, "/devices/device-1", None, &[]).await);
        if last == "Disconnected" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(last, "Disconnected");
    // Connecting and disconnecting do not change the identity's etag (as in IoT Hub), so the
    // service pattern read → change status → PUT with If-Match still succeeds.
    let after = rest.ok(Method::GET, "/devices/device-1", None, &[]).await;
    assert_eq!(after["etag"], before["etag"]);
    let mut disabled = before.clone();
    disabled["status"] = json!("disabled");
    let etag = format!("\"{}\"", before["etag"].as_str().unwrap());
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/devices/device-1",
            Some(disabled),
            &[("if-match", &etag)],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "disabled");
    assert_eq!(body["connectionState"], "Disconnected");
}

#[tokio::test]
async fn queries_filter_count_and_page() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    for (id, site) in [("a1", "lab"), ("a2", "lab"), ("a3", "home"), ("a4", "lab")] {
        rest.ok(
            Method::PUT,
            &format!("/devices/{id}"),
            Some(json!({"deviceId": id})),
            &[],
        )
        .await;
        rest.ok(
            Method::PATCH,
            &format!("/twins/{id}"),
            Some(json!({"tags": {"site": site}})),
            &[],
        )
        .await;
    }
    let q = |text: &str| json!({"query": text});
    let (status, headers, body) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q("SELECT * FROM devices WHERE tags.site = 'lab'")),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ms-item-type"], "twin");
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a2", "a4"]);
    let (_, _, body) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q(
                "SELECT COUNT() AS numberOfDevices FROM devices WHERE status = 'enabled'",
            )),
            &[],
        )
        .await;
    assert_eq!(body, json!([{"numberOfDevices": 4}]));
    // Paging: two per page, continuation omitted on the last page.
    let (_, headers, page1) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q("SELECT * FROM devices")),
            &[("x-ms-max-item-count", "2")],
        )
        .await;
    assert_eq!(page1.as_array().unwrap().len(), 2);
    let cont = headers["x-ms-continuation"].to_str().unwrap().to_owned();
    let (_, headers, page2) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q("SELECT * FROM devices")),
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
        )
        .await;
    assert_eq!(
        page2
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["deviceId"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a3", "a4"]
    );
    assert!(headers.get("x-ms-continuation").is_none());
    // GROUP BY: one row per group, as the portal's "devices by site" tile asks.
    let (status, _, body) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q(
                "SELECT tags.site, COUNT() AS numberOfDevices FROM devices GROUP BY tags.site",
            )),
            &[],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!([{"site": "home", "numberOfDevices": 1}, {"site": "lab", "numberOfDevices": 3}])
    );
    let (_, _, body) = rest
        .send(
            Method::POST,
            "/devices/query",
            Some(q(
                "SELECT deviceId, tags.site AS place FROM devices WHERE deviceId = 'a3'",
            )),
            &[],
        )
        .await;
    assert_eq!(body, json!([{"deviceId": "a3", "place": "home"}]));
    for bad in [
        "SELECT * FROM modules",
        "SELECT deviceId, COUNT() FROM devices GROUP BY tags.site",
    ] {
        let (status, _, body) = rest
            .send(Method::POST, "/devices/query", Some(q(bad)), &[])
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn modules_have_identities_twins_telemetry_and_methods() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    // A module needs its device.
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/devices/gw/modules/sensor",
            Some(json!({"moduleId": "sensor"})),
            &[],
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:DeviceNotFound;")
    );
    rest.ok(
        Method::PUT,
        "/devices/gw",
        Some(json!({"deviceId": "gw"})),
        &[],
    )
    .await;
    let module = rest
        .ok(
            Method::PUT,
            "/devices/gw/modules/sensor",
            Some(json!({"deviceId": "gw", "moduleId": "sensor", "managedBy": "ops"})),
            &[],
        )
        .await;
    assert_eq!(module["moduleId"], "sensor");
    assert_eq!(module["managedBy"], "ops");
    assert_eq!(module["connectionState"], "Disconnected");
    let key = muster_auth::Secret::new(
        module["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap(),
    );
    let (status, _, body) = rest
        .send(
            Method::PUT,
            "/devices/gw/modules/sensor",
            Some(json!({"moduleId": "sensor"})),
            &[],
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:ModuleAlreadyExistsOnDevice;")
    );
    let list = rest.ok(Method::GET, "/devices/gw/modules", None, &[]).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Modules are not devices: the device list and queries count only devices.
    let devices = rest.ok(Method::GET, "/devices", None, &[]).await;
    assert_eq!(devices.as_array().unwrap().len(), 1);

    // The module connects with its own SAS key: username host/device/module, client id
    // device/module.
    let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3600;
    let user = "localhost/gw/sensor/?api-version=2021-04-12";
    let device_token =
        muster_auth::sas::make_token("localhost/devices/gw", &key, None, exp).unwrap();
    let refused = server
        .mqtt("gw/sensor", user, Some(&device_token), None)
        .await;
    assert_eq!(
        refused.connack.code,
        ConnectReturnCode::NotAuthorized,
        "a token for the device is not one for the module"
    );
    let token =
        muster_auth::sas::make_token("localhost/devices/gw/modules/sensor", &key, None, exp)
            .unwrap();
    let wrong_client = server.mqtt("gw", user, Some(&token), None).await;
    assert_eq!(
        wrong_client.connack.code,
        ConnectReturnCode::IdentifierRejected
    );
    let mut m = server.mqtt("gw/sensor", user, Some(&token), None).await;
    assert_eq!(m.connack.code, ConnectReturnCode::Accepted);
    assert_eq!(
        m.subscribe("devices/gw/messages/devicebound/#").await,
        [SubAckReturnCode::Failure],
        "modules get no cloud-to-device messages"
    );
    m.subscribe("$iothub/twin/res/#").await;
    m.subscribe("$iothub/twin/PATCH/properties/desired/#").await;
    m.subscribe("$iothub/methods/POST/#").await;
    let reply = twin_request(
        &mut m,
        "$iothub/twin/PATCH/properties/reported/?$rid=1",
        br#"{"firmware":"1.2"}"#,
        1,
    )
    .await;
    assert_eq!(reply.topic, "$iothub/twin/res/204/?$rid=1&$version=2");
    let twin = rest
        .ok(Method::GET, "/twins/gw/modules/sensor", None, &[])
        .await;
    assert_eq!(twin["moduleId"], "sensor");
    assert_eq!(twin["properties"]["reported"]["firmware"], "1.2");
    let device_twin = rest.ok(Method::GET, "/twins/gw", None, &[]).await;
    assert!(
        device_twin["properties"]["reported"]
            .get("firmware")
            .is_none(),
        "the module's twin is its own"
    );
    rest.ok(
        Method::PATCH,
        "/twins/gw/modules/sensor",
        Some(json!({"properties": {"desired": {"interval": 5}}})),
        &[],
    )
    .await;
    let patch = m.next_publish().await;
    assert!(
        patch
            .topic
            .starts_with("$iothub/twin/PATCH/properties/desired/")
    );
    let patch: Value = serde_json::from_slice(&patch.payload).unwrap();
    assert_eq!(patch["interval"], 5);

    // Telemetry carries the module id.
    m.publish(
        "devices/gw/modules/sensor/messages/events/kind=env",
        b"{\"t\":1}",
        7,
    )
    .await;
    assert!(matches!(m.recv().await, Some(Packet::PubAck(7))));
    let events = rest.read_events_from("earliest", None, 1).await;
    assert_eq!(events[0]["deviceId"], "gw");
    assert_eq!(events[0]["moduleId"], "sensor");
    assert_eq!(events[0]["properties"]["kind"], "env");
    assert_eq!(
        events[0]["systemProperties"]["iothub-connection-module-id"],
        "sensor"
    );

    // A direct method on the module reaches the module's connection.
    let caller = {
        let rest = server.hub_rest();
        tokio::spawn(async move {
            rest.send(
                Method::POST,
                "/twins/gw/modules/sensor/methods",
                Some(json!({"methodName": "ping", "payload": {"n": 1}, "responseTimeoutInSeconds": 10})),
                &[],
            )
            .await
        })
    };
    let request = m.next_publish().await;
    assert!(
        request
            .topic
            .starts_with("$iothub/methods/POST/ping/?$rid="),
        "{}",
        request.topic
    );
    let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
    m.publish(
        &format!("$iothub/methods/res/200/?$rid={rid}"),
        br#"{"pong":1}"#,
        8,
    )
    .await;
    let (status, _, body) = caller.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"status": 200, "payload": {"pong": 1}}));
    assert!(matches!(m.recv().await, Some(Packet::PubAck(8))));

    // Publishing as the device (not the module) closes the connection.
    m.publish("devices/gw/messages/events/", b"x", 9).await;
    assert!(m.recv().await.is_none());

    // Deleting the device deletes its modules.
    rest.ok(Method::DELETE, "/devices/gw", None, &[]).await;
    rest.ok(
        Method::PUT,
        "/devices/gw",
        Some(json!({"deviceId": "gw"})),
        &[],
    )
    .await;
    let (status, _, _) = rest
        .send(Method::GET, "/devices/gw/modules/sensor", None, &[])
        .await;
    assert_eq!(status, 404);
    let (status, _, body) = rest
        .send(Method::DELETE, "/devices/gw/modules/sensor", None, &[])
        .await;
    assert_eq!(status, 404);
    assert!(
        body["Message"]
            .as_str()
            .unwrap()
            .starts_with("ErrorCode:ModuleNotFound;")
    );
}

#[tokio::test]
async fn persistent_sessions_survive_a_restart() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    let chain = provisioned(&server, &pki).await;
    let identity = Some((chain.as_str(), pki.leaf.key_pem.as_str()));
    let mut dev = server.mqtt("device-1", HUB_USER, None, identity).await;
    assert!(!dev.connack.session_present);
    dev.subscribe("$iothub/twin/PATCH/properties/desired/#")
        .await;
    dev.subscribe("devices/device-1/messages/devicebound/#")
        .await;
    drop(dev);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, "127.0.0.1".parse().unwrap(), 0).await;
    let rest = server.hub_rest();
    // Queued while the device is away.
    assert_eq!(rest.send_c2d("device-1", b"while away", &[]).await, 204);
    let mut dev = server.mqtt("device-1", HUB_USER, None, identity).await;
    assert!(
        dev.connack.session_present,
        "the session outlived the restart"
    );
    // No SUBSCRIBE this time: the saved subscriptions deliver the message and the patch.
    let c2d = dev.next_publish().await;
    assert_eq!(&c2d.payload[..], b"while away");
    dev.send(&Packet::PubAck(c2d.packet_id.unwrap())).await;
    rest.ok(
        Method::PATCH,
        "/twins/device-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "3"}}})),
        &[],
    )
    .await;
    let patch = dev.next_publish().await;
    assert!(
        patch
            .topic
            .starts_with("$iothub/twin/PATCH/properties/desired/"),
        "{}",
        patch.topic
    );
    // CleanSession=1 throws the saved state away.
    drop(dev);
    let clean = Mqtt::connect_opts(
        server.running.mqtt_addr,
        &server.ca_pem(),
        "device-1",
        HUB_USER,
        None,
        identity,
        true,
    )
    .await;
    assert_eq!(clean.connack.code, ConnectReturnCode::Accepted);
    assert!(!clean.connack.session_present);
    drop(clean);
    let dev = server.mqtt("device-1", HUB_USER, None, identity).await;
    assert!(!dev.connack.session_present, "the clean session dropped it");
}

#[tokio::test]
async fn errors_outside_the_handlers_have_azure_shapes() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let dps = server.dps_rest();
    let tracking = |body: &Value| {
        body["ExceptionMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("Tracking ID:") && m.contains("-TimeStamp:"))
    };
    let hub_code = |body: &Value, code: &str| {
        body["Message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("ErrorCode:{code};")))
    };
    // 404 on a hub path, in IoT Hub's shape.
    let (status, _, body) = hub.send(Method::GET, "/nothing/here", None, &[]).await;
    assert_eq!(status, 404);
    assert!(hub_code(&body, "NotFound") && tracking(&body), "{body}");
    // 404 on a DPS path, in DPS's shape.
    let (status, _, body) = dps
        .send(Method::GET, "/enrollmentGroups/a/b/c", None, &[])
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["errorCode"], 404_000, "{body}");
    assert!(
        body["trackingId"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    // Unknown paths are authenticated like the others.
    let (status, _, _) = hub
        .client
        .get(format!("{}/nothing/here", hub.base))
        .send()
        .await
        .map(|r| (r.status().as_u16(), (), ()))
        .unwrap();
    assert_eq!(status, 401);
    // 405: a route without that method.
    let (status, headers, body) = hub
        .send(Method::DELETE, "/statistics/devices", None, &[])
        .await;
    assert_eq!(status, 405);
    assert!(
        hub_code(&body, "MethodNotAllowed") && tracking(&body),
        "{body}"
    );
    assert!(headers.contains_key("allow"));
    // 413: a body over the limit.
    let big = json!({"deviceId": "d", "tags": {"x": "y".repeat(2 << 20)}});
    let (status, _, body) = hub.send(Method::PUT, "/twins/d", Some(big), &[]).await;
    assert_eq!(status, 413);
    assert!(
        hub_code(&body, "RequestEntityTooLarge") && tracking(&body),
        "{body}"
    );
    // 415: a body no handler takes.
    let resp = dps
        .client
        .put(format!("{}/enrollmentGroups/g", dps.base))
        .header("authorization", dps.token())
        .header("content-type", "application/xml")
        .body("<group/>")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorCode"], 415_000, "{body}");
    // The message says nothing about internals.
    let (_, _, body) = hub.send(Method::GET, "/nothing/here", None, &[]).await;
    let text = body.to_string();
    assert!(!text.contains("axum") && !text.contains("rust"), "{text}");
}

#[tokio::test]
async fn c2d_count_purge_and_device_etag_as_the_azure_cli_reads_them() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    rest.ok(
        Method::PUT,
        "/devices/d1",
        Some(json!({"deviceId": "d1"})),
        &[],
    )
    .await;
    for body in [&b"one"[..], b"two"] {
        assert_eq!(rest.send_c2d("d1", body, &[]).await, 204);
    }
    // `az iot hub device-identity show` sees the queue.
    let device = rest.ok(Method::GET, "/devices/d1", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 2);
    let listed = rest.ok(Method::GET, "/devices", None, &[]).await;
    assert_eq!(listed[0]["cloudToDeviceMessageCount"], 2);
    // `az iot hub device-twin show`: the twin names the identity's etag.
    let twin = rest.ok(Method::GET, "/twins/d1", None, &[]).await;
    assert_eq!(twin["deviceEtag"], device["etag"]);
    assert_eq!(twin["cloudToDeviceMessageCount"], 2);
    // `az iot device c2d-message purge` (ServiceConnect may purge; RegistryRead may not).
    let (status, _, _) = server
        .policy_rest("registryRead")
        .send(Method::DELETE, "/devices/d1/commands", None, &[])
        .await;
    assert_eq!(status, 401);
    let purged = server
        .policy_rest("service")
        .ok(Method::DELETE, "/devices/d1/commands", None, &[])
        .await;
    assert_eq!(purged, json!({"totalMessagesPurged": 2, "deviceId": "d1"}));
    let device = rest.ok(Method::GET, "/devices/d1", None, &[]).await;
    assert_eq!(device["cloudToDeviceMessageCount"], 0);
    let (status, _, body) = rest
        .send(Method::DELETE, "/devices/ghost/commands", None, &[])
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn symmetric_keys_are_renewed_in_bulk_as_the_azure_cli_asks() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    let before = rest
        .ok(
            Method::PUT,
            "/devices/d1",
            Some(json!({"deviceId": "d1"})),
            &[],
        )
        .await;
    rest.ok(
        Method::PUT,
        "/devices/gw",
        Some(json!({"deviceId": "gw"})),
        &[],
    )
    .await;
    let module_before = rest
        .ok(
            Method::PUT,
            "/devices/gw/modules/m",
            Some(json!({"moduleId": "m"})),
            &[],
        )
        .await;
    rest.ok(
        Method::PUT,
        "/devices/x1",
        Some(
            json!({"deviceId": "x1", "authentication": {"type": "selfSigned",
            "x509Thumbprint": {"primaryThumbprint": "A".repeat(40)}}}),
        ),
        &[],
    )
    .await;
    // `az iot hub device-identity renew-key --kt primary`, as the extension sends it.
    let request = json!({"policyKey": "primaryKey", "devices": [
        {"id": "d1"}, {"id": "gw", "moduleId": "m"}, {"id": "x1"}, {"id": "ghost"}]});
    let (status, _, body) = rest
        .send(Method::POST, "/devices/keys/regenerate", Some(request), &[])
        .await;
    assert_eq!(status, 207, "{body}");
    assert_eq!(body["policyKey"], "primaryKey");
    let rotated = body["rotatedKeys"].as_array().unwrap();
    assert_eq!(rotated.len(), 2, "{body}");
    let key = |v: &Value, k: &str| v["authentication"]["symmetricKey"][k].clone();
    let d1 = rotated.iter().find(|r| r["id"] == "d1").unwrap();
    assert_ne!(d1["primaryKey"], key(&before, "primaryKey"));
    assert_eq!(d1["secondaryKey"], key(&before, "secondaryKey"));
    let m = rotated.iter().find(|r| r["moduleId"] == "m").unwrap();
    assert_ne!(m["primaryKey"], key(&module_before, "primaryKey"));
    let after = rest.ok(Method::GET, "/devices/d1", None, &[]).await;
    assert_eq!(key(&after, "primaryKey"), d1["primaryKey"]);
    let errors = body["errors"].as_array().unwrap();
    let code = |id: &str| {
        errors
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["errorCode"].clone())
    };
    assert_eq!(code("x1"), Some(json!("ArgumentInvalid")));
    assert_eq!(code("ghost"), Some(json!("DeviceNotFound")));
    // Both keys, every identity renewed: 200.
    let request = json!({"policyKey": "both", "devices": [{"id": "d1"}]});
    let (status, _, body) = rest
        .send(Method::POST, "/devices/keys/regenerate", Some(request), &[])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(
        body["rotatedKeys"][0]["secondaryKey"],
        key(&before, "secondaryKey")
    );
    // Only policies that may write the registry.
    let (status, _, _) = server
        .policy_rest("service")
        .send(
            Method::POST,
            "/devices/keys/regenerate",
            Some(json!({"policyKey": "both", "devices": [{"id": "d1"}]})),
            &[],
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn module_twins_are_queried_from_devices_modules() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    for d in ["gw1", "gw2", "plain"] {
        rest.ok(
            Method::PUT,
            &format!("/devices/{d}"),
            Some(json!({"deviceId": d})),
            &[],
        )
        .await;
    }
    for (d, m, kind) in [
        ("gw1", "temp", "sensor"),
        ("gw1", "relay", "actuator"),
        ("gw2", "temp", "sensor"),
    ] {
        rest.ok(
            Method::PUT,
            &format!("/devices/{d}/modules/{m}"),
            Some(json!({"moduleId": m})),
            &[],
        )
        .await;
        rest.ok(
            Method::PATCH,
            &format!("/twins/{d}/modules/{m}"),
            Some(json!({"tags": {"kind": kind}})),
            &[],
        )
        .await;
    }
    let query = |q: &str, headers: Vec<(&'static str, String)>| {
        let rest = rest.clone();
        let body = json!({"query": q});
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            rest.send(Method::POST, "/devices/query", Some(body), &h)
                .await
        }
    };
    // `az iot hub query -q "select * from devices.modules where …"`: module twins as rows.
    let (status, _, rows) = query(
        "SELECT * FROM devices.modules WHERE tags.kind = 'sensor'",
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    let rows = rows.as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["moduleId"] == "temp"));
    assert_eq!(rows[0]["deviceId"], "gw1");
    assert_eq!(rows[1]["deviceId"], "gw2");
    // Projections and counts over modules; devices stay devices.
    let (_, _, rows) = query("SELECT deviceId, moduleId FROM devices.modules", vec![]).await;
    assert_eq!(rows.as_array().unwrap().len(), 3);
    assert_eq!(rows[0], json!({"deviceId": "gw1", "moduleId": "relay"}));
    let (_, _, rows) = query("SELECT COUNT() AS n FROM devices.modules", vec![]).await;
    assert_eq!(rows, json!([{"n": 3}]));
    let (_, _, rows) = query("SELECT COUNT() AS n FROM devices", vec![]).await;
    assert_eq!(rows, json!([{"n": 3}]));
    // Paging: the continuation names the module.
    let (_, headers, first) = query(
        "SELECT * FROM devices.modules",
        vec![("x-ms-max-item-count", "2".into())],
    )
    .await;
    assert_eq!(first.as_array().unwrap().len(), 2);
    let cont = headers["x-ms-continuation"].to_str().unwrap().to_owned();
    let (_, headers, rest_rows) = query(
        "SELECT * FROM devices.modules",
        vec![
            ("x-ms-max-item-count", "2".into()),
            ("x-ms-continuation", cont),
        ],
    )
    .await;
    assert_eq!(rest_rows.as_array().unwrap().len(), 1);
    assert_eq!(rest_rows[0]["deviceId"], "gw2");
    assert!(headers.get("x-ms-continuation").is_none());
    let (status, _, _) = query("SELECT * FROM devices.jobs", vec![]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn the_https_device_api_sends_telemetry_and_settles_c2d() {
    let server = TestServer::start().await;
    let hub = server.hub_rest();
    let token = hub.sas_device("http-dev").await;
    let post = |path: &str, body: &'static [u8], content_type: Option<&str>| {
        let mut req = hub
            .client
            .post(format!("{}{path}", hub.base))
            .header("authorization", &token)
            .body(body);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        req
    };
    // One message with properties in headers, then a batch.
    let r = post("/devices/http-dev/messages/events", b"single", None)
        .header("iothub-app-temperatureAlert", "true")
        .header("iothub-messageid", "m-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let batch =
        br#"[{"body":"Zmlyc3Q=","properties":{"iothub-app-kind":"a"}},{"body":"c2Vjb25k"}]"#;
    let r = post(
        "/devices/http-dev/messages/events",
        batch,
        Some("application/vnd.microsoft.iothub.json"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let events = hub.read_events("http-dev", 3).await;
    let bodies: Vec<_> = events.iter().map(|e| e["body"].clone()).collect();
    assert_eq!(
        bodies,
        [json!("single"), json!("first"), json!("second")],
        "{events:?}"
    );
    assert_eq!(events[0]["properties"]["temperaturealert"], "true");
    assert_eq!(events[0]["systemProperties"]["message-id"], "m-1");
    assert_eq!(events[1]["properties"]["kind"], "a");
    // A batch that is not JSON (the SDK concatenates strings): 400, nothing stored.
    let r = post(
        "/devices/http-dev/messages/events",
        br#"[{"body":"eA==","properties":{"iothub-app-q":"a"b"}}]"#,
        Some("application/vnd.microsoft.iothub.json"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    // Another device's path, or no credential: 401.
    let r = post("/devices/other/messages/events", b"x", None)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = hub
        .client
        .post(format!("{}/devices/http-dev/messages/events", hub.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // C2D: empty mailbox 204; a message with its lock as the quoted ETag; abandon gives it
    // back; complete removes it; a lost lock is 412.
    let receive = || {
        hub.client
            .get(format!(
                "{}/devices/http-dev/messages/devicebound",
                hub.base
            ))
            .header("authorization", &token)
            .send()
    };
    assert_eq!(receive().await.unwrap().status(), 204);
    assert_eq!(
        hub.send_c2d("http-dev", b"hi", &[("iothub-app-priority", "high")])
            .await,
        204
    );
    let r = receive().await.unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(r.headers()["iothub-app-priority"], "high");
    let lock = etag.trim_matches('"').to_owned();
    assert_eq!(r.text().await.unwrap(), "hi");
    let r = post(
        &format!("/devices/http-dev/messages/devicebound/{lock}/abandon"),
        b"",
        None,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 204);
    let r = receive().await.unwrap();
    assert_eq!(r.status(), 200, "abandoned messages come back");
    assert_eq!(r.headers()["iothub-deliverycount"], "2");
    let lock2 = r.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let complete = |lock: String| {
        hub.client
            .delete(format!(
                "{}/devices/http-dev/messages/devicebound/{lock}",
                hub.base
            ))
            .header("authorization", &token)
            .header("if-match", lock)
            .send()
    };
    assert_eq!(
        complete(lock.clone()).await.unwrap().status(),
        412,
        "the first lock is gone"
    );
    assert_eq!(complete(lock2).await.unwrap().status(), 204);
    assert_eq!(receive().await.unwrap().status(), 204);
}

//! The provisioning service end to end over real sockets: REST management with SAS, device
//! registration over MQTT (X.509 and SAS) and HTTPS, refusals with Azure's bodies, bad input on
//! the wire, restart.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use common::{Mqtt, ServerFixture as _, TestServer, dps_username};
use muster_mqtt::{ConnectReturnCode, Packet, Publish, QoS, SubAckReturnCode};
use muster_test_support::Pki;
use reqwest::Method;
use serde_json::{Value, json};

async fn lab_group(server: &TestServer, pki: &Pki) {
    let rest = server.rest();
    rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/simulated-devices",
        Some(json!({
            "enrollmentGroupId": "simulated-devices",
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
            "provisioningStatus": "enabled",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
            "allocationPolicy": "hashed",
            "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}},
            "capabilities": {"iotEdge": false}
        })),
        &[],
    )
    .await;
}

fn chain_pem(pki: &Pki) -> String {
    format!("{}{}", pki.leaf.pem, pki.intermediate.cert.pem)
}

#[tokio::test]
async fn x509_device_registers_over_mqtt() {
    // Azure's flow: 202 assigning, then the poll answers.
    let server = TestServer::start_with(|c| c.dps.immediate_result = false).await;
    let pki = Pki::new();
    lab_group(&server, &pki).await;
    let chain = chain_pem(&pki);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&server.id_scope(), "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    let (topic, first, polled) = dev
        .dps_register("device-1", json!({"modelId": "dtmi:lab;1"}))
        .await;
    // `$rid` first, then an integer retry-after.
    assert_eq!(topic, "$dps/registrations/res/202/?$rid=1&retry-after=1");
    assert_eq!(first["status"], "assigning");
    let (topic, state) = polled.unwrap();
    assert_eq!(topic, "$dps/registrations/res/200/?$rid=2");
    assert_eq!(state["status"], "assigned");
    let reg = &state["registrationState"];
    assert_eq!(reg["assignedHub"], "localhost");
    assert_eq!(reg["deviceId"], "device-1");
    assert_eq!(reg["substatus"], "initialAssignment");
    assert_eq!(reg["payload"]["modelId"], "dtmi:lab;1");
    assert!(reg["createdDateTimeUtc"].as_str().unwrap().ends_with('Z'));

    // The registration record is visible to the operator, and queryable by group.
    let rest = server.rest();
    let record = rest
        .ok(Method::GET, "/registrations/device-1", None, &[])
        .await;
    assert_eq!(record["status"], "assigned");
    let (status, headers, list) = rest
        .send(
            Method::POST,
            "/registrations/simulated-devices/query",
            Some(json!({"query": "*"})),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        headers.get("x-ms-continuation").is_none(),
        "no continuation on the last page"
    );
}

#[tokio::test]
async fn refusals_carry_azure_error_bodies() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    lab_group(&server, &pki).await;
    let scope = server.id_scope();

    // CN differs from the registration id.
    let chain = chain_pem(&pki);
    let mut dev = server
        .mqtt(
            "impostor",
            &dps_username(&scope, "impostor"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (topic, body, _) = dev.dps_register("impostor", Value::Null).await;
    assert_eq!(topic, "$dps/registrations/res/401/?$rid=1");
    assert_eq!(body["errorCode"], 401_002);
    assert_eq!(body["message"], "Unauthorized");
    assert!(body["trackingId"].as_str().unwrap().len() >= 32);
    assert!(body["timestampUtc"].is_string());

    // A certificate from another CA with the same names.
    let wrong = format!("{}{}", pki.wrong_leaf.pem, pki.wrong_intermediate.cert.pem);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&wrong, &pki.wrong_leaf.key_pem)),
        )
        .await;
    let (topic, _, _) = dev.dps_register("device-1", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");

    // An expired device certificate.
    let expired = format!("{}{}", pki.expired_leaf.pem, pki.intermediate.cert.pem);
    let mut dev = server
        .mqtt(
            "device-expired",
            &dps_username(&scope, "device-expired"),
            None,
            Some((&expired, &pki.expired_leaf.key_pem)),
        )
        .await;
    let (topic, _, _) = dev.dps_register("device-expired", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");

    // No credentials at all.
    let mut dev = server
        .mqtt("device-1", &dps_username(&scope, "device-1"), None, None)
        .await;
    let (topic, _, _) = dev.dps_register("device-1", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");

    // A body naming another registration id.
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (topic, body, _) = dev.dps_register("device-2", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/400/"), "{topic}");
    assert_eq!(body["errorCode"], 400_004);

    // Disable the group: the device is refused; delete it: still refused.
    let rest = server.rest();
    let mut group = rest
        .ok(
            Method::GET,
            "/enrollmentGroups/simulated-devices",
            None,
            &[],
        )
        .await;
    group["provisioningStatus"] = json!("disabled");
    let etag = format!("\"{}\"", group["etag"].as_str().unwrap());
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/simulated-devices",
        Some(group),
        &[("if-match", &etag)],
    )
    .await;
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (topic, _, _) = dev.dps_register("device-1", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");
    let (status, _, _) = rest
        .send(
            Method::DELETE,
            "/enrollmentGroups/simulated-devices",
            None,
            &[],
        )
        .await;
    assert_eq!(status, 204);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (topic, _, _) = dev.dps_register("device-1", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");

    // An unknown ID scope: the registration is refused with 401002 and a message naming the
    // scope, so the device can say which input to check.
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username("0neFFFFFFFF", "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
    let (topic, body, _) = dev.dps_register("device-1", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");
    assert_eq!(body["errorCode"], 401_002);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown ID scope '0neFFFFFFFF'"),
        "{body}"
    );
}

#[tokio::test]
async fn symmetric_key_device_registers_over_mqtt() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.ok(
        Method::PUT,
        "/enrollmentgroups/sas-group",
        Some(json!({"enrollmentGroupId": "sas-group", "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": "", "secondaryKey": ""}}})),
        &[],
    )
    .await;
    let attestation = rest
        .ok(
            Method::POST,
            "/enrollmentgroups/sas-group/attestationmechanism",
            None,
            &[],
        )
        .await;
    let group_key =
        muster_auth::Secret::new(attestation["symmetricKey"]["primaryKey"].as_str().unwrap());
    let device_key = muster_auth::sas::derive_device_key(&group_key, "sensor-1").unwrap();
    let scope = server.id_scope();
    let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 3600;
    // skn=registration, as the Node SDK sends it.
    let token = muster_auth::sas::make_token(
        &format!("{scope}/registrations/sensor-1"),
        &device_key,
        Some("registration"),
        exp,
    )
    .unwrap();
    let mut dev = server
        .mqtt(
            "sensor-1",
            &dps_username(&scope, "sensor-1"),
            Some(&token),
            None,
        )
        .await;
    let (_, _, polled) = dev.dps_register("sensor-1", Value::Null).await;
    let (_, state) = polled.unwrap();
    assert_eq!(state["status"], "assigned");
    assert_eq!(
        state["registrationState"]["symmetricKey"]["enrollmentGroupId"],
        "sas-group"
    );

    // The same token presented for another registration id is refused.
    let mut dev = server
        .mqtt(
            "sensor-2",
            &dps_username(&scope, "sensor-2"),
            Some(&token),
            None,
        )
        .await;
    let (topic, body, _) = dev.dps_register("sensor-2", Value::Null).await;
    assert!(topic.starts_with("$dps/registrations/res/401/"), "{topic}");
    let text = body.to_string();
    assert!(!text.contains(device_key.expose()) && !text.contains(group_key.expose()));
}

#[tokio::test]
async fn registrations_are_answered_at_once_by_default() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    lab_group(&server, &pki).await;
    let chain = chain_pem(&pki);
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&server.id_scope(), "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (topic, first, _) = dev.dps_register("device-1", Value::Null).await;
    assert_eq!(
        topic, "$dps/registrations/res/200/?$rid=1",
        "one round trip"
    );
    assert_eq!(first["status"], "assigned");
    assert_eq!(first["registrationState"]["deviceId"], "device-1");
    // The operation can still be polled, as SDKs that poll anyway expect.
    let op = first["operationId"].as_str().unwrap().to_owned();
    dev.publish(
        &format!("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId={op}"),
        b" ",
        12,
    )
    .await;
    let polled = dev.next_publish().await;
    assert_eq!(polled.topic, "$dps/registrations/res/200/?$rid=2");
    // Over HTTPS too.
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", chain_pem(&pki), pki.leaf.key_pem).as_bytes())
            .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
        .identity(identity)
        .resolve("localhost", server.running.https_addr)
        .build()
        .unwrap();
    let resp = client
        .put(format!(
            "https://localhost:{}/{}/registrations/device-1/register?api-version=2019-03-31",
            server.running.https_addr.port(),
            server.id_scope()
        ))
        .json(&json!({"registrationId": "device-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "assigned", "{body}");
    assert_eq!(body["registrationState"]["deviceId"], "device-1");
}

#[tokio::test]
async fn x509_device_registers_over_https() {
    let server = TestServer::start_with(|c| c.dps.immediate_result = false).await;
    let pki = Pki::new();
    lab_group(&server, &pki).await;
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", chain_pem(&pki), pki.leaf.key_pem).as_bytes())
            .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
        .identity(identity)
        .resolve("localhost", server.running.https_addr)
        .build()
        .unwrap();
    let base = format!(
        "https://localhost:{}/{}/registrations/device-1",
        server.running.https_addr.port(),
        server.id_scope()
    );
    let resp = client
        .put(format!("{base}/register?api-version=2019-03-31"))
        .json(&json!({"registrationId": "device-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    let op = body["operationId"].as_str().unwrap();
    let resp = client
        .get(format!("{base}/operations/{op}?api-version=2019-03-31"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "assigned");
    assert_eq!(body["registrationState"]["deviceId"], "device-1");
    // An operation id of another device is not readable.
    let resp = client
        .get(format!(
            "https://localhost:{}/{}/registrations/device-2/operations/{op}",
            server.running.https_addr.port(),
            server.id_scope()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn management_calls_are_authenticated() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let url = format!("{}/enrollmentGroups/query", rest.base);
    // No token, a garbage token, a token signed with the wrong key, the wrong policy.
    let unsigned = rest.client.post(&url).send().await.unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);
    let body: Value = unsigned.json().await.unwrap();
    assert_eq!(body["errorCode"], 401_002);
    let garbage = rest
        .client
        .post(&url)
        .header("authorization", "SharedAccessSignature nope")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status().as_u16(), 401);
    let exp = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap() + 60;
    let forged = muster_auth::sas::make_token(
        &rest.host,
        &muster_auth::Secret::new("AAAAAAAAAAAAAAAAAAAAAA=="),
        Some("provisioningserviceowner"),
        exp,
    )
    .unwrap();
    assert_eq!(
        rest.client
            .post(&url)
            .header("authorization", forged)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let wrong_policy = muster_auth::sas::make_token(
        &rest.host,
        &muster_auth::Secret::new(rest.key.clone()),
        Some("iothubowner"),
        exp,
    )
    .unwrap();
    assert_eq!(
        rest.client
            .post(&url)
            .header("authorization", wrong_policy)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let expired = muster_auth::sas::make_token(
        &rest.host,
        &muster_auth::Secret::new(rest.key.clone()),
        Some("provisioningserviceowner"),
        1,
    )
    .unwrap();
    assert_eq!(
        rest.client
            .post(&url)
            .header("authorization", expired)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    // Properly signed: 200 with an empty list.
    let (status, headers, body) = rest
        .send(
            Method::POST,
            "/enrollmentGroups/query",
            Some(json!({"query": "*"})),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]));
    assert_eq!(headers["x-ms-item-type"], "enrollmentGroup");
    // Bad JSON and unknown resources.
    let resp = rest
        .client
        .put(format!("{}/enrollmentGroups/g1", rest.base))
        .header("authorization", rest.token())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.headers()["x-ms-error-code"], "400004");
    let (status, _, body) = rest
        .send(Method::GET, "/enrollmentGroups/missing", None, &[])
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["errorCode"], 404_201);
    // Paging over the REST API.
    for i in 0..3 {
        rest.ok(
            Method::PUT,
            &format!("/enrollmentGroups/g{i}"),
            Some(json!({"attestation": {"type": "symmetricKey"}})),
            &[],
        )
        .await;
    }
    let (_, headers, page1) = rest
        .send(
            Method::POST,
            "/enrollmentgroups/query",
            None,
            &[("x-ms-max-item-count", "2")],
        )
        .await;
    assert_eq!(page1.as_array().unwrap().len(), 2);
    let cont = headers["x-ms-continuation"].to_str().unwrap().to_owned();
    let (_, headers, page2) = rest
        .send(
            Method::POST,
            "/enrollmentgroups/query",
            None,
            &[("x-ms-max-item-count", "2"), ("x-ms-continuation", &cont)],
        )
        .await;
    assert_eq!(page2.as_array().unwrap().len(), 1);
    assert!(headers.get("x-ms-continuation").is_none());
}

#[tokio::test]
async fn bad_mqtt_input_closes_the_connection() {
    let server = TestServer::start().await;
    let scope = server.id_scope();
    let ca = server.ca_pem();

    // Garbage instead of CONNECT (packet type 0 does not exist).
    let mut s = Mqtt::tls(server.running.mqtt_addr, &ca, None).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"\x00\x10garbage garbage!")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut s, &mut buf),
    )
    .await
    .unwrap()
    .unwrap_or(0);
    assert_eq!(n, 0, "garbage gets no answer but a close");

    // An oversized packet is refused from its header alone.
    let mut dev = server
        .mqtt("d", &dps_username(&scope, "d"), None, None)
        .await;
    dev.send_raw(&[0x32, 0xff, 0xff, 0xff, 0x7f]).await;
    assert!(
        dev.recv().await.is_none(),
        "oversized packet closes the connection"
    );

    // A subscription outside the DPS topics is refused in SUBACK.
    let mut dev = server
        .mqtt("d", &dps_username(&scope, "d"), None, None)
        .await;
    assert_eq!(
        dev.subscribe("devices/other/messages/devicebound/#").await,
        vec![SubAckReturnCode::Failure]
    );
    // Publishing outside the DPS topics closes the connection.
    dev.publish("devices/other/messages/events/", b"x", 5).await;
    assert!(matches!(dev.recv().await, Some(Packet::PubAck(5)) | None));
    assert!(dev.recv().await.is_none());

    // QoS 2 closes the connection.
    let mut dev = server
        .mqtt("d", &dps_username(&scope, "d"), None, None)
        .await;
    dev.send(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "$dps/registrations/PUT/iotdps-register/?$rid=1".into(),
        packet_id: Some(1),
        payload: b"{}".to_vec().into(),
    }))
    .await;
    assert!(dev.recv().await.is_none());

    // Invalid JSON in a register request: 400, connection stays usable.
    let mut dev = server
        .mqtt("d", &dps_username(&scope, "d"), None, None)
        .await;
    dev.subscribe("$dps/registrations/res/#").await;
    dev.publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=7",
        b"{oops",
        2,
    )
    .await;
    let reply = dev.next_publish().await;
    assert_eq!(reply.topic, "$dps/registrations/res/400/?$rid=7");
    dev.send(&Packet::PingReq).await;
    assert!(matches!(dev.recv().await, Some(Packet::PingResp)));

    // Hub usernames go to the hub endpoint, which refuses unknown devices.
    let dev = server
        .mqtt("d", "localhost/d/?api-version=2021-04-12", None, None)
        .await;
    assert_eq!(
        dev.connack.code,
        ConnectReturnCode::NotAuthorized,
        "hub endpoint: unknown device"
    );
}

#[tokio::test]
async fn state_survives_a_restart() {
    let server = TestServer::start().await;
    let pki = Pki::new();
    lab_group(&server, &pki).await;
    let chain = chain_pem(&pki);
    let scope = server.id_scope();
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (_, _, polled) = dev.dps_register("device-1", Value::Null).await;
    assert_eq!(polled.unwrap().1["status"], "assigned");
    drop(dev);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, "127.0.0.1".parse().unwrap(), 0).await;
    assert_eq!(server.id_scope(), scope, "the ID scope is kept");
    let rest = server.rest();
    let cert = rest
        .ok(Method::GET, "/certificates/root-ca", None, &[])
        .await;
    assert_eq!(cert["properties"]["isVerified"], true);
    rest.ok(
        Method::GET,
        "/enrollmentGroups/simulated-devices",
        None,
        &[],
    )
    .await;
    let record = rest
        .ok(Method::GET, "/registrations/device-1", None, &[])
        .await;
    assert_eq!(record["assignedHub"], "localhost");
    // And devices still register after the restart.
    let mut dev = server
        .mqtt(
            "device-1",
            &dps_username(&scope, "device-1"),
            None,
            Some((&chain, &pki.leaf.key_pem)),
        )
        .await;
    let (_, _, polled) = dev.dps_register("device-1", Value::Null).await;
    assert_eq!(polled.unwrap().1["status"], "assigned");
}

#[tokio::test]
async fn the_optional_rate_limit_answers_429_with_retry_after() {
    let server = TestServer::start_with(|c| c.dps.rate_limit = 1).await;
    let scope = server.id_scope();
    // A (wrong) SAS token: each request is charged, then fails attestation.
    let token = "SharedAccessSignature sr=x&sig=AAAA&se=1";
    let mut dev = server
        .mqtt("d0", &dps_username(&scope, "d0"), Some(token), None)
        .await;
    dev.subscribe("$dps/registrations/res/#").await;
    let body = br#"{"registrationId":"d0"}"#;
    dev.publish("$dps/registrations/PUT/iotdps-register/?$rid=1", body, 1)
        .await;
    let first = dev.next_publish().await;
    dev.publish("$dps/registrations/PUT/iotdps-register/?$rid=2", body, 2)
        .await;
    let second = dev.next_publish().await;
    // The first passes the limit (and fails attestation); the second, milliseconds later, is throttled.
    assert_eq!(first.topic, "$dps/registrations/res/401/?$rid=1");
    assert_eq!(
        second.topic,
        "$dps/registrations/res/429/?$rid=2&retry-after=1"
    );
    let body: Value = serde_json::from_slice(&second.payload).unwrap();
    assert_eq!(body["errorCode"], 429_001);
}

#[tokio::test]
async fn a_first_packet_that_is_not_connect_is_refused_at_its_first_byte() {
    let server = TestServer::start().await;
    let ca = server.ca_pem();
    // PUBREL announcing 10,497 bytes then 200 bytes of junk (the probe from outside testing),
    // PUBLISH, SUBSCRIBE, PINGREQ and DISCONNECT types: each closed at once, not after the
    // CONNECT timeout.
    let mut junk = vec![0x60, 0x81, 0x51];
    junk.extend(std::iter::repeat_n(0xab, 200));
    let probes: [&[u8]; 5] = [
        &junk,
        &[0x30, 0x7f],
        &[0x82, 0x05, 0x00],
        &[0xc0, 0x00],
        &[0xe0],
    ];
    for probe in probes {
        let mut s = Mqtt::tls(server.running.mqtt_addr, &ca, None).await;
        let began = std::time::Instant::now();
        tokio::io::AsyncWriteExt::write_all(&mut s, probe)
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut s, &mut buf),
        )
        .await
        .expect("the server closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{probe:02x?}: {read:?}");
        assert!(
            began.elapsed() < std::time::Duration::from_secs(1),
            "{probe:02x?} closed after {:?}",
            began.elapsed()
        );
    }
    // The server keeps serving.
    let dev = server
        .mqtt("d", &dps_username(&server.id_scope(), "d"), None, None)
        .await;
    assert_eq!(dev.connack.code, ConnectReturnCode::Accepted);
}

/// Records whether the server asked for a client certificate (and offers none).
#[derive(Debug, Default)]
struct AskedForCertificate(std::sync::atomic::AtomicBool);

impl rustls::client::ResolvesClientCert for AskedForCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<std::sync::Arc<rustls::sign::CertifiedKey>> {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Whether a TLS handshake with `addr` carries a CertificateRequest.
async fn certificate_requested(addr: std::net::SocketAddr, ca_pem: &[u8]) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in muster_pki::read_certificates(ca_pem).unwrap() {
        roots
            .add(rustls::pki_types::CertificateDer::from(c.der().to_vec()))
            .unwrap();
    }
    let asked = std::sync::Arc::new(AskedForCertificate::default());
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(asked.clone());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    asked.0.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn browsers_get_a_port_that_asks_for_no_client_certificate() {
    let server = TestServer::start().await;
    let ca = server.ca_pem();
    // Devices' HTTPS port asks (X.509 registration over HTTPS needs it); the portal's does not,
    // so a browser holding client certificates shows no picker.
    assert!(certificate_requested(server.running.https_addr, &ca).await);
    assert!(!certificate_requested(server.running.portal_addr, &ca).await);
    // The portal port serves the same API.
    let mut rest = server.dps_rest();
    rest.base = format!("https://localhost:{}", server.running.portal_addr.port());
    rest.client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("localhost", server.running.portal_addr)
        .build()
        .unwrap();
    rest.ok(Method::GET, "/certificates", None, &[]).await;
    let url = server.running.info["portalUrl"].as_str().unwrap();
    assert_eq!(
        url,
        format!(
            "https://localhost:{}/portal/",
            server.running.portal_addr.port()
        )
    );
}

//! Three muster servers sharing one PostgreSQL database (`store = postgres://…`), as three
//! nodes of a cluster do: what one node writes the others read, racing registrations of one id
//! on all three yield one device, and twin versions stay exact under writers on every node.
//!
//! PostgreSQL runs beside the tests in CI: `MUSTER_TEST_POSTGRES=postgres://postgres@127.0.0.1/postgres`
//! switches these on (each test makes its own database and drops it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on anything unexpected"
)]

mod common;

use common::{ServerFixture as _, TestServer};
use muster_store_pg::testing::TestDatabase;
use muster_test_support::{Pki, TestCert};
use reqwest::Method;
use serde_json::{Value, json};

async fn three_nodes(db: &TestDatabase) -> Vec<TestServer> {
    // The nodes' warnings reach the test's output (RUST_LOG to see more).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let url = db.url.clone();
        nodes.push(TestServer::start_with(move |c| c.store = url).await);
    }
    nodes
}

async fn stop_all(nodes: Vec<TestServer>, db: TestDatabase) {
    for node in nodes {
        node.stop().await;
    }
    db.drop().await;
}

/// Register `leaf` over HTTPS on `node`; the response's status and body.
async fn register(node: &TestServer, pki: &Pki, leaf: &TestCert, id: &str) -> (u16, Value) {
    let identity = reqwest::Identity::from_pem(
        format!("{}{}{}", leaf.pem, pki.intermediate.cert.pem, leaf.key_pem).as_bytes(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&node.ca_pem()).unwrap())
        .identity(identity)
        .resolve("localhost", node.running.https_addr)
        .build()
        .unwrap();
    let resp = client
        .put(format!(
            "https://localhost:{}/{}/registrations/{id}/register?api-version=2019-03-31",
            node.running.https_addr.port(),
            node.id_scope()
        ))
        .json(&json!({"registrationId": id}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_state_and_race_registrations_to_one_device() {
    let Some(db) = TestDatabase::create("nodes").await else {
        return;
    };
    let nodes = three_nodes(&db).await;
    let pki = Pki::new();

    // One identity: the first node made it, the others took it from the store.
    for node in &nodes[1..] {
        assert_eq!(node.id_scope(), nodes[0].id_scope());
        assert_eq!(node.ca_pem(), nodes[0].ca_pem());
        assert!(
            node.running.admin_password.is_none(),
            "only the first node prints an admin password"
        );
    }
    assert!(nodes[0].running.admin_password.is_some());
    let hash = |n: &TestServer| std::fs::read(n.data_dir().join("portal-admin.hash")).unwrap();
    assert_eq!(hash(&nodes[2]), hash(&nodes[0]));
    assert!(
        !nodes[1].data_dir().join("muster.db").exists(),
        "no SQLite database beside a shared store"
    );
    // Each node's server certificate chains to the shared root, and the policy keys are the
    // same: node 1's connection string and trust bundle work against node 3.
    let node1_cs = nodes[0].running.info["hubConnectionString"]
        .as_str()
        .unwrap();
    let via_node3 = common::Rest::new(node1_cs, &nodes[0].ca_pem(), nodes[2].running.https_addr);
    let (status, _, body) = via_node3.send(Method::GET, "/devices", None, &[]).await;
    assert_eq!(status, 200, "{body}");

    // The CA and the group are made through node 1 and used through nodes 2 and 3.
    let rest = nodes[0].rest();
    rest.upload_verified_ca("root-ca", &pki.root.cert.pem, &pki.root.cert.key_pem)
        .await;
    rest.ok(
        Method::PUT,
        "/enrollmentGroups/lab",
        Some(json!({
            "enrollmentGroupId": "lab",
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "root-ca"}}},
            "provisioningStatus": "enabled",
            "reprovisionPolicy": {"updateHubAssignment": true, "migrateDeviceData": true},
            "initialTwin": {"properties": {"desired": {"telemetryDelay": "1"}}}
        })),
        &[],
    )
    .await;
    let group = nodes[2]
        .rest()
        .ok(Method::GET, "/enrollmentGroups/lab", None, &[])
        .await;
    assert_eq!(
        group["enrollmentGroupId"], "lab",
        "node 3 reads node 1's group"
    );

    // Each id registers on all three nodes at once, three times on each.
    let ids: Vec<String> = (1..=4).map(|n| format!("race-{n}")).collect();
    let leaves: Vec<TestCert> = ids.iter().map(|id| pki.intermediate.leaf(id)).collect();
    let mut attempts = Vec::new();
    for (id, leaf) in ids.iter().zip(&leaves) {
        for node in &nodes {
            for _ in 0..3 {
                attempts.push(register(node, &pki, leaf, id));
            }
        }
    }
    let answers = futures_util::future::join_all(attempts).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "every racing registration succeeds: {body}");
        assert_eq!(body["status"], "assigned", "{body}");
        assert_eq!(body["registrationState"]["assignedHub"], "localhost");
    }

    // One device and one registration record per id, whichever node is asked.
    for node in &nodes {
        let devices = node
            .hub_rest()
            .ok(
                Method::POST,
                "/devices/query",
                Some(json!({"query": "SELECT * FROM devices"})),
                &[],
            )
            .await;
        let mut found: Vec<&str> = devices
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["deviceId"].as_str().unwrap())
            .collect();
        found.sort_unstable();
        assert_eq!(found, ids.iter().map(String::as_str).collect::<Vec<_>>());
        let records = node
            .rest()
            .ok(
                Method::POST,
                "/registrations/lab/query",
                Some(json!({"query": "*"})),
                &[],
            )
            .await;
        assert_eq!(records.as_array().unwrap().len(), ids.len());
    }
    assert_eq!(
        db.scalar("SELECT count(*) FROM documents WHERE collection = 'devices'")
            .await,
        4
    );
    // The initial twin came with the device, once.
    let twin = nodes[1]
        .hub_rest()
        .ok(Method::GET, "/twins/race-1", None, &[])
        .await;
    assert_eq!(twin["properties"]["desired"]["telemetryDelay"], "1");
    stop_all(nodes, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twin_versions_stay_exact_under_writers_on_every_node() {
    const PATCHES_PER_NODE: usize = 20;
    let Some(db) = TestDatabase::create("twins").await else {
        return;
    };
    let nodes = three_nodes(&db).await;
    nodes[0].hub_rest().sas_device("hot").await;
    let before = nodes[0]
        .hub_rest()
        .ok(Method::GET, "/twins/hot", None, &[])
        .await;
    let version_before = before["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();

    // Every node patches its own desired property, concurrently, without If-Match.
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let rest = node.hub_rest();
        writers.push(async move {
            for i in 0..PATCHES_PER_NODE {
                let (status, _, body) = rest
                    .send(
                        Method::PATCH,
                        "/twins/hot",
                        Some(json!({"properties": {"desired": {format!("node{n}"): i}}})),
                        &[],
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
            }
        });
    }
    futures_util::future::join_all(writers).await;

    let after = nodes[2]
        .hub_rest()
        .ok(Method::GET, "/twins/hot", None, &[])
        .await;
    let desired = &after["properties"]["desired"];
    assert_eq!(
        desired["$version"].as_u64().unwrap(),
        version_before + (3 * PATCHES_PER_NODE) as u64,
        "every patch counted once: {desired}"
    );
    for n in 0..3 {
        assert_eq!(desired[format!("node{n}")], PATCHES_PER_NODE - 1);
    }

    // If-Match holds across nodes: node 2 cannot overwrite with the etag node 1 read before.
    let stale = before["etag"].as_str().unwrap();
    let (status, _, _) = nodes[1]
        .hub_rest()
        .send(
            Method::PATCH,
            "/twins/hot",
            Some(json!({"properties": {"desired": {"late": true}}})),
            &[("If-Match", &format!("\"{stale}\""))],
        )
        .await;
    assert_eq!(status, 412);
    let current = after["etag"].as_str().unwrap();
    let (status, _, _) = nodes[1]
        .hub_rest()
        .send(
            Method::PATCH,
            "/twins/hot",
            Some(json!({"properties": {"desired": {"late": true}}})),
            &[("If-Match", &format!("\"{current}\""))],
        )
        .await;
    assert_eq!(status, 200);
    stop_all(nodes, db).await;
}

/// A node whose data directory belongs to another installation is refused, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_data_directory_of_another_installation_is_refused() {
    let Some(db) = TestDatabase::create("foreign").await else {
        return;
    };
    let first = TestServer::start_with({
        let url = db.url.clone();
        move |c| c.store = url
    })
    .await;
    // A single node with its own SQLite store and identity…
    let single = TestServer::start_with(|c| c.store = "sqlite".into()).await;
    let mut config = single.config.clone();
    let dir = single.stop().await;
    // …pointed at the cluster's store.
    config.store.clone_from(&db.url);
    let err = muster_server::start(config).await.unwrap_err();
    let message = format!("{err}");
    assert!(message.contains("belongs to ID scope"), "{message}");
    assert!(message.contains("empty data directory"), "{message}");
    assert!(message.contains(&first.id_scope()), "{message}");
    drop(dir);
    first.stop().await;
    db.drop().await;
}

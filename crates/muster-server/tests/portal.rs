//! The portal's doors, over real HTTPS against a real server: sign-in (admin password, policy
//! keys), the session cookie's attributes, CSRF tokens on every change, policy rights, inert
//! markup, session expiry, sign-in rate limiting, sign-out, and the twin editor's etag
//! conflict. The whole lab in a browser is `crates/muster/tests/portal_browser.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a test fails loudly"
)]

mod common;

use std::time::Duration;

use common::TestServer;
use reqwest::Method;
use reqwest::header::{COOKIE, HeaderMap, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

/// A browser-like client: no redirects followed, one cookie kept.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get(LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    /// The first CSRF token in the page's forms.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }

    /// The value of the hidden input `name`.
    fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker).unwrap() + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }
}

impl Browser {
    fn new(server: &TestServer) -> Self {
        let addr = server.running.portal_addr;
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&server.ca_pem()).unwrap())
            .resolve("localhost", addr)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            client,
            base: format!("https://localhost:{}", addr.port()),
            cookie: None,
        }
    }

    async fn send(&mut self, method: Method, path: &str, form: Option<&[(&str, &str)]>) -> Page {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.cookie {
            req = req.header(COOKIE, c);
        }
        if let Some(form) = form {
            let body = serde_urlencoded::to_string(form).unwrap();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        if let Some(set) = headers.get(SET_COOKIE).map(|v| v.to_str().unwrap()) {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = Some(pair);
        }
        let body = r.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        self.send(Method::GET, path, None).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        self.send(Method::POST, path, Some(form)).await
    }

    async fn sign_in(&mut self, name: &str, secret: &str) -> Page {
        self.post(
            "/portal/signin",
            &[("name", name), ("secret", secret), ("next", "/portal/")],
        )
        .await
    }

    async fn admin(server: &TestServer) -> Self {
        let mut b = Self::new(server);
        let password = server.running.admin_password.clone().unwrap();
        let p = b.sign_in("admin", &password).await;
        assert_eq!(p.status, 303, "{}", p.body);
        b
    }
}

fn policy_key(server: &TestServer, policy: &str) -> String {
    let state: Value =
        serde_json::from_slice(&std::fs::read(server.data_dir().join("state.json")).unwrap())
            .unwrap();
    state["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == policy)
        .unwrap()["primaryKey"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn unauthenticated_requests_get_the_sign_in_page() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    let p = b.get("/portal/devices?q=x").await;
    assert_eq!(p.status, 303);
    assert_eq!(p.location(), "/portal/signin?next=/portal/devices%3Fq%3Dx");
    let p = b.get(p.location()).await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("Sign in to muster"));
    // No framing, no inline script, no sniffing, no caching of pages.
    let csp = p.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "frame-ancestors 'none'",
        "script-src 'self'",
        "default-src 'self'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert_eq!(p.headers["x-frame-options"], "DENY");
    assert_eq!(p.headers["x-content-type-options"], "nosniff");
    assert_eq!(p.headers["cache-control"], "no-store");
    assert!(!p.body.contains("<script>"), "no inline script");
    assert!(
        p.body.contains("value=\"/portal/devices?q=x\""),
        "the page returns there after sign-in"
    );
    for path in [
        "/portal/",
        "/portal/dps",
        "/portal/live",
        "/portal/devices/x",
    ] {
        let p = b.get(path).await;
        assert_eq!(p.status, 303, "{path}");
    }
    // A change without a session is refused with the sign-in form, and nothing changes.
    let p = b.post("/portal/devices", &[("id", "sneaky")]).await;
    assert_eq!(p.status, 401);
    assert!(p.body.contains("Sign in to muster"));
    let (status, _, _) = server
        .hub_rest()
        .send(Method::GET, "/devices/sneaky", None, &[])
        .await;
    assert_eq!(status, 404);
    // Health and readiness answer load balancers without a sign-in.
    let health = b.get("/healthz").await;
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let ready = b.get("/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, r#"{"status":"ready"}"#)
    );
    // The script and stylesheet are public and embedded.
    let js = b.get("/portal/assets/portal.js").await;
    assert_eq!(js.status, 200);
    assert!(
        js.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(b.get("/portal/assets/other.js").await.status, 404);
    // Only a portal path is a place to return to after sign-in.
    let password = server.running.admin_password.clone().unwrap();
    let p = b
        .post(
            "/portal/signin",
            &[
                ("name", "admin"),
                ("secret", &password),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(p.location(), "/portal/");
}

#[tokio::test]
async fn the_cookie_is_strict_and_every_change_needs_the_csrf_token() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    let wrong = b.sign_in("admin", "not-the-password").await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .body
            .contains("The name or the password/key is wrong.")
    );
    assert!(b.cookie.is_none());
    let password = server.running.admin_password.clone().unwrap();
    let p = b.sign_in("admin", &password).await;
    assert_eq!(p.status, 303);
    let cookie = p.headers[SET_COOKIE].to_str().unwrap();
    for attr in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/portal",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    let devices = b.get("/portal/devices").await;
    assert_eq!(devices.status, 200);
    let csrf = devices.csrf();
    // No token, a wrong token: 403 and nothing created.
    let p = b
        .post("/portal/devices", &[("id", "csrf-1"), ("auth", "sas")])
        .await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("CSRF"), "{}", p.body);
    let p = b
        .post(
            "/portal/devices",
            &[("id", "csrf-1"), ("auth", "sas"), ("csrf", "forged")],
        )
        .await;
    assert_eq!(p.status, 403);
    let rest = server.hub_rest();
    assert_eq!(
        rest.send(Method::GET, "/devices/csrf-1", None, &[]).await.0,
        404
    );
    // With the token the device is created, with generated keys.
    let p = b
        .post(
            "/portal/devices",
            &[("id", "csrf-1"), ("auth", "sas"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    assert_eq!(p.location(), "/portal/devices/csrf-1?done=created");
    let d = rest.ok(Method::GET, "/devices/csrf-1", None, &[]).await;
    assert_eq!(d["authentication"]["type"], "sas");
    assert_eq!(
        d["authentication"]["symmetricKey"]["primaryKey"]
            .as_str()
            .unwrap()
            .len(),
        44
    );
    // The same id again is refused inline with IoT Hub's code, not overwritten.
    let p = b
        .post(
            "/portal/devices",
            &[("id", "csrf-1"), ("auth", "sas"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 409);
    assert!(p.body.contains("DeviceAlreadyExists"));
    // Disable, then delete, each through a form.
    let p = b
        .post(
            "/portal/devices/csrf-1/status",
            &[("status", "disabled"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 303);
    let d = rest.ok(Method::GET, "/devices/csrf-1", None, &[]).await;
    assert_eq!(d["status"], "disabled");
    assert_eq!(
        b.post("/portal/devices/csrf-1/delete", &[]).await.status,
        403
    );
    let p = b
        .post("/portal/devices/csrf-1/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(
        rest.send(Method::GET, "/devices/csrf-1", None, &[]).await.0,
        404
    );
}

#[tokio::test]
async fn a_read_only_policy_sees_and_cannot_save() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    rest.ok(
        Method::PUT,
        "/devices/ro-1",
        Some(json!({"deviceId": "ro-1"})),
        &[],
    )
    .await;
    rest.ok(
        Method::PATCH,
        "/twins/ro-1",
        Some(json!({"properties": {"desired": {"telemetryDelay": "1"}}})),
        &[],
    )
    .await;
    let mut b = Browser::new(&server);
    let p = b
        .sign_in("registryRead", &policy_key(&server, "registryRead"))
        .await;
    assert_eq!(p.status, 303);
    let page = b.get("/portal/devices/ro-1").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("telemetryDelay"));
    assert!(page.body.contains("may read the twin but not change it"));
    assert!(
        !page.body.contains("Send Message"),
        "no service forms for a reader"
    );
    assert!(
        !page.body.contains("Primary key"),
        "keys are not shown to a reader"
    );
    let csrf = page.csrf();
    let etag = page.hidden("etag");
    let twin = r#"{"properties":{"desired":{"telemetryDelay":"9"}}}"#;
    let p = b
        .post(
            "/portal/devices/ro-1/twin",
            &[("twin", twin), ("etag", &etag), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 403);
    assert!(p.body.contains("may not change twins"), "{}", p.body);
    let t = rest.ok(Method::GET, "/twins/ro-1", None, &[]).await;
    assert_eq!(t["properties"]["desired"]["telemetryDelay"], "1");
    for (path, form) in [
        (
            "/portal/devices",
            vec![("id", "ro-2"), ("csrf", csrf.as_str())],
        ),
        ("/portal/devices/ro-1/delete", vec![("csrf", csrf.as_str())]),
        (
            "/portal/devices/ro-1/c2d",
            vec![("body", "x"), ("csrf", csrf.as_str())],
        ),
        (
            "/portal/devices/ro-1/method",
            vec![("methodName", "m"), ("csrf", csrf.as_str())],
        ),
    ] {
        assert_eq!(b.post(path, &form).await.status, 403, "{path}");
    }
    assert_eq!(
        rest.send(Method::GET, "/devices/ro-2", None, &[]).await.0,
        404
    );
    assert_eq!(
        rest.send(Method::GET, "/devices/ro-1", None, &[]).await.0,
        200
    );
    // No provisioning rights at all.
    assert_eq!(b.get("/portal/dps").await.status, 403);
    assert_eq!(b.get("/portal/certificates").await.status, 403);
    // And the provisioning policy sees no hub.
    let mut d = Browser::new(&server);
    let p = d
        .sign_in(
            "provisioningserviceowner",
            &policy_key(&server, "provisioningserviceowner"),
        )
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(d.get("/portal/certificates").await.status, 200);
    assert_eq!(d.get("/portal/devices").await.status, 403);
}

#[tokio::test]
async fn markup_in_ids_and_twins_stays_inert() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    let id = "a'b=(1)!";
    let path = "/devices/a'b=(1)!";
    rest.ok(Method::PUT, path, Some(json!({"deviceId": id})), &[])
        .await;
    rest.ok(
        Method::PATCH,
        "/twins/a'b=(1)!",
        Some(json!({
            "tags": {"note": "<script>alert(1)</script>"},
            "properties": {"desired": {"label": "\"><img src=x onerror=alert(2)>"}}
        })),
        &[],
    )
    .await;
    let mut b = Browser::admin(&server).await;
    let list = b.get("/portal/devices").await;
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains("data-device=\"a'b=(1)!\""),
        "{}",
        list.body
    );
    assert!(
        list.body
            .contains("href=\"/portal/devices/a%27b%3D%281%29%21\"")
    );
    let page = b.get("/portal/devices/a%27b%3D%281%29%21").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("<script>alert"));
    assert!(!page.body.contains("<img src=x"));
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(page.body.contains("&lt;img src=x onerror=alert(2)&gt;"));
    // The query box echoes the query as text.
    let q = b
        .get("/portal/devices?q=%3Cscript%3Ealert(3)%3C%2Fscript%3E")
        .await;
    assert_eq!(q.status, 400, "an invalid query is an inline error");
    assert!(!q.body.contains("<script>alert(3)"));
    assert!(q.body.contains("&lt;script&gt;alert(3)"));
    assert!(q.body.contains("role=\"alert\""));
}

#[tokio::test]
async fn the_session_expires_and_sign_out_ends_it() {
    let server = TestServer::start_with(|c| {
        c.portal.session_idle = Duration::from_millis(1500);
    })
    .await;
    let mut b = Browser::admin(&server).await;
    assert_eq!(b.get("/portal/").await.status, 200);
    // A live telemetry stream opened now ends with the session (it does not keep it alive).
    let stream = b
        .client
        .get(format!("{}/portal/live", b.base))
        .header(COOKIE, b.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let ended = tokio::spawn(tokio::time::timeout(
        Duration::from_secs(15),
        stream.bytes(),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(b.get("/portal/").await.status, 200, "use keeps it alive");
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let p = b.get("/portal/").await;
    assert_eq!(p.status, 303, "idle too long");
    assert!(p.location().starts_with("/portal/signin"));
    let body = ended
        .await
        .unwrap()
        .expect("the stream ends soon after its session");
    assert!(body.unwrap().is_empty(), "no events were stored");
    // Sign out: the cookie is cleared and the old session id is dead.
    let mut b = Browser::admin(&server).await;
    let csrf = b.get("/portal/").await.csrf();
    let old = b.cookie.clone();
    let p = b.post("/portal/signout", &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303);
    assert!(
        p.headers[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    b.cookie = old;
    assert_eq!(b.get("/portal/").await.status, 303);
}

#[tokio::test]
async fn sign_in_attempts_are_rate_limited() {
    let server = TestServer::start().await;
    let mut b = Browser::new(&server);
    for _ in 0..5 {
        assert_eq!(b.sign_in("iothubowner", "wrong").await.status, 401);
    }
    // The sixth is refused before any check, even with the right key.
    let p = b
        .sign_in("iothubowner", &policy_key(&server, "iothubowner"))
        .await;
    assert_eq!(p.status, 429);
    assert!(p.body.contains("Too many failed sign-ins"));
    let wait: u64 = p.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
}

#[tokio::test]
async fn the_twin_editor_shows_the_newer_twin_on_a_conflict() {
    let server = TestServer::start().await;
    let rest = server.hub_rest();
    rest.ok(
        Method::PUT,
        "/devices/tw-1",
        Some(json!({"deviceId": "tw-1"})),
        &[],
    )
    .await;
    let mut b = Browser::admin(&server).await;
    let page = b.get("/portal/devices/tw-1").await;
    let csrf = page.csrf();
    let etag = page.hidden("etag");
    // Someone else changes the twin meanwhile.
    rest.ok(
        Method::PATCH,
        "/twins/tw-1",
        Some(json!({"properties": {"desired": {"other": "newer"}}})),
        &[],
    )
    .await;
    let mine = r#"{"tags":{},"properties":{"desired":{"telemetryDelay":"2"}}}"#;
    let p = b
        .post(
            "/portal/devices/tw-1/twin",
            &[("twin", mine), ("etag", &etag), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 412);
    assert!(p.body.contains("The twin changed since you opened it"));
    assert!(p.body.contains("newer"), "the newer twin is in the editor");
    assert!(p.body.contains("Your edit (not saved)"));
    let t = rest.ok(Method::GET, "/twins/tw-1", None, &[]).await;
    assert!(t["properties"]["desired"].get("telemetryDelay").is_none());
    // Saved against the newer etag it goes through, and tags and desired are replaced.
    let etag = p.hidden("etag");
    let p = b
        .post(
            "/portal/devices/tw-1/twin",
            &[("twin", mine), ("etag", &etag), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let t = rest.ok(Method::GET, "/twins/tw-1", None, &[]).await;
    assert_eq!(t["properties"]["desired"]["telemetryDelay"], "2");
    assert!(t["properties"]["desired"].get("other").is_none());
    // Bad JSON is an inline error.
    let p = b
        .post(
            "/portal/devices/tw-1/twin",
            &[("twin", "{oops"), ("etag", &etag), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("not valid JSON"));
    // A message to the device is queued; a method to an offline device fails inline.
    let p = b
        .post(
            "/portal/devices/tw-1/c2d",
            &[
                ("body", "hello"),
                ("properties", "priority=high"),
                ("ack", "full"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(p.status, 303, "{}", p.body);
    let d = rest.ok(Method::GET, "/devices/tw-1", None, &[]).await;
    assert_eq!(d["cloudToDeviceMessageCount"], 1);
    let p = b
        .post(
            "/portal/devices/tw-1/c2d",
            &[
                ("body", "x"),
                ("properties", "no-equals-sign"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(p.status, 400);
    assert!(p.body.contains("is not key=value"));
    let p = b
        .post(
            "/portal/devices/tw-1/method",
            &[
                ("methodName", "reboot"),
                ("payload", "{}"),
                ("responseTimeout", "5"),
                ("connectTimeout", "0"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(p.status, 200);
    assert!(p.body.contains("DeviceNotOnline"), "{}", p.body);
}

#[tokio::test]
async fn the_portal_runs_the_provisioning_steps() {
    let server = TestServer::start().await;
    let root = muster_test_support::TestCa::root("portal-root");
    let mut b = Browser::admin(&server).await;
    let page = b.get("/portal/certificates").await;
    let csrf = page.csrf();
    // The upload form is multipart, as a browser sends a file.
    let upload = |name: &str, pem: String| {
        reqwest::multipart::Form::new()
            .text("csrf", csrf.clone())
            .text("name", name.to_owned())
            .part(
                "file",
                reqwest::multipart::Part::bytes(pem.into_bytes()).file_name("root.pem"),
            )
    };
    let send = |b: &Browser, path: &str, form: reqwest::multipart::Form| {
        b.client
            .post(format!("{}{path}", b.base))
            .header(COOKIE, b.cookie.clone().unwrap())
            .multipart(form)
            .send()
    };
    let r = send(
        &b,
        "/portal/certificates",
        upload("root", root.cert.pem.clone()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    let r = send(
        &b,
        "/portal/certificates",
        upload("bad", "not a certificate".into()),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    let list = b.get("/portal/certificates").await;
    assert!(list.body.contains("Unverified"));
    let p = b
        .post("/portal/certificates/root/code", &[("csrf", &csrf)])
        .await;
    assert_eq!(p.status, 303);
    let detail = b.get("/portal/certificates/root").await;
    let marker = "id=\"verification-code\" readonly value=\"";
    let start = detail.body.find(marker).unwrap() + marker.len();
    let code = &detail.body[start..start + detail.body[start..].find('"').unwrap()];
    let proof = root.leaf(code).pem;
    let form = reqwest::multipart::Form::new()
        .text("csrf", csrf.clone())
        .part(
            "file",
            reqwest::multipart::Part::bytes(proof.into_bytes()).file_name("v.pem"),
        );
    let r = send(&b, "/portal/certificates/root/verify", form)
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(
        b.get("/portal/certificates/root")
            .await
            .body
            .contains(">Verified<")
    );
    // An enrollment group with an invalid initial twin is refused inline; a valid one is saved.
    let group = |twin: &str| {
        reqwest::multipart::Form::new()
            .text("csrf", csrf.clone())
            .text("id", "g1")
            .text("attestation", "certificate")
            .text("certType", "ca")
            .text("primaryCa", "root")
            .text("allocationPolicy", "hashed")
            .text("iotHubs", "localhost")
            .text("reprovision", "reset")
            .text("initialTwin", twin.to_owned())
            .text("status", "enabled")
    };
    let r = send(&b, "/portal/enrollments/groups", group("{nope"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Initial Device Twin State is not valid JSON")
    );
    let r = send(
        &b,
        "/portal/enrollments/groups",
        group(r#"{"properties":{"desired":{"telemetryDelay":"1"}}}"#),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    let g = server
        .dps_rest()
        .ok(Method::GET, "/enrollmentGroups/g1", None, &[])
        .await;
    assert_eq!(g["attestation"]["x509"]["caReferences"]["primary"], "root");
    assert_eq!(
        g["initialTwin"]["properties"]["desired"]["telemetryDelay"],
        "1"
    );
    assert_eq!(g["reprovisionPolicy"]["migrateDeviceData"], false);
    assert_eq!(g["provisioningStatus"], "enabled");
    let edit = b.get("/portal/enrollments/groups/g1").await;
    assert!(edit.body.contains("telemetryDelay"));
    assert!(
        edit.body.contains("readonly"),
        "the group name is fixed once created"
    );
    // An individual enrollment with generated symmetric keys and its own device id.
    let individual = reqwest::multipart::Form::new()
        .text("csrf", csrf.clone())
        .text("id", "reg-1")
        .text("deviceId", "dev-1")
        .text("attestation", "symmetricKey")
        .text("autoKeys", "true")
        .text("allocationPolicy", "static")
        .text("iotHubs", "localhost")
        .text("reprovision", "never")
        .text("initialTwin", "")
        .text("status", "disabled");
    let r = send(&b, "/portal/enrollments/individual", individual)
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let e = server
        .dps_rest()
        .ok(Method::GET, "/enrollments/reg-1", None, &[])
        .await;
    assert_eq!(e["deviceId"], "dev-1");
    assert_eq!(e["attestation"]["type"], "symmetricKey");
    // Keys are shown only by the attestation mechanism call, as Azure does.
    let keys = server
        .dps_rest()
        .ok(
            Method::POST,
            "/enrollments/reg-1/attestationMechanism",
            None,
            &[],
        )
        .await;
    assert_eq!(
        keys["symmetricKey"]["primaryKey"].as_str().unwrap().len(),
        44,
        "{keys}"
    );
    assert_eq!(e["provisioningStatus"], "disabled");
    assert_eq!(e["reprovisionPolicy"]["updateHubAssignment"], false);
    // An X.509 individual enrollment without its certificate is refused inline.
    let missing = reqwest::multipart::Form::new()
        .text("csrf", csrf.clone())
        .text("id", "reg-2")
        .text("attestation", "certificate");
    let r = send(&b, "/portal/enrollments/individual", missing)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Upload the certificate file.")
    );
    let listed = b.get("/portal/enrollments").await;
    assert!(listed.body.contains("reg-1") && listed.body.contains("dev-1"));
    let p = b
        .post("/portal/enrollments/groups/g1/delete", &[("csrf", &csrf)])
        .await;
    assert_eq!(p.status, 303);
    assert_eq!(
        server
            .dps_rest()
            .send(Method::GET, "/enrollmentGroups/g1", None, &[])
            .await
            .0,
        404
    );
}

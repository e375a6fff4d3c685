//! The REST API's OpenAPI 3.1 document, served at `GET /openapi.json` and kept in
//! `docs/openapi.json`.
//!
//! Every operation the HTTPS router serves is one row of [`OPERATIONS`]; the document is built
//! from the rows and the schemas below. A test reads the router's sources and fails when a
//! route and a row disagree (a route without a row, or a row without a route), and another when
//! `docs/openapi.json` is not what this module builds. The portal's HTML pages and the
//! WebSocket tunnels are not part of the REST API and are left out.

use axum::Json;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// No credential (health checks, this document).
    None,
    /// The DPS policy `provisioningserviceowner`.
    Dps,
    /// Any hub policy (RegistryRead).
    HubRead,
    /// `iothubowner` or `registryReadWrite` (RegistryWrite).
    HubWrite,
    /// `iothubowner` or `service` (ServiceConnect).
    HubService,
    /// A device: its client certificate or SAS token (DPS device API, hub device API).
    Device,
    /// Any hub policy, or the DPS policy.
    Metrics,
}

impl Auth {
    fn describe(self) -> &'static str {
        match self {
            Self::None => "No credential.",
            Self::Dps => "Policy: `provisioningserviceowner`.",
            Self::HubRead => {
                "Policies: `iothubowner`, `service`, `registryRead` or `registryReadWrite`."
            }
            Self::HubWrite => "Policies: `iothubowner` or `registryReadWrite`.",
            Self::HubService => "Policies: `iothubowner` or `service`.",
            Self::Device => {
                "The device's client certificate, or its SAS token (`sr={host}/devices/{id}`)."
            }
            Self::Metrics => "Any hub policy, or `provisioningserviceowner`.",
        }
    }

    fn security(self) -> Value {
        match self {
            Self::None => json!([]),
            Self::Device => json!([{"sas": []}, {"clientCertificate": []}]),
            _ => json!([{"sas": []}]),
        }
    }
}

/// One operation of the REST API.
#[derive(Debug, Clone, Copy)]
struct Operation {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    /// Request body schema (a component name, or `bytes` for a raw body).
    body: Option<&'static str>,
    /// Success status and its body schema (a component name, `bytes`, `ndjson`, or none).
    ok: (u16, Option<&'static str>),
    /// Query parameters: name, description.
    query: &'static [(&'static str, &'static str)],
}

#[allow(clippy::too_many_arguments, reason = "one row of the table")]
const fn op(
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    body: Option<&'static str>,
    ok: (u16, Option<&'static str>),
) -> Operation {
    Operation {
        method,
        path,
        id,
        tag,
        summary,
        auth,
        body,
        ok,
        query: &[],
    }
}

const CERTS: &str = "DPS: CA certificates";
const GROUPS: &str = "DPS: enrollment groups";
const ENROLLMENTS: &str = "DPS: individual enrollments";
const RECORDS: &str = "DPS: registration records";
const DPS_DEVICE: &str = "DPS: device registration";
const DEVICES: &str = "Hub: devices and modules";
const TWINS: &str = "Hub: twins and methods";
const MESSAGING: &str = "Hub: messaging";
const ROUTING: &str = "Hub: routing";
const DEVICE_API: &str = "Hub: device API over HTTPS";
const OPS: &str = "Operations";

const TOP: &[(&str, &str)] = &[("top", "Largest number of devices to return (default 1000).")];
const EVENTS: &[(&str, &str)] = &[
    (
        "from",
        "`earliest`, `latest` (default) or a sequence number to start at.",
    ),
    ("deviceId", "Only this device's events."),
];
const REJECT: &[(&str, &str)] = &[(
    "reject",
    "Present: reject the message (dead-letter) instead of completing it.",
)];

/// Every operation of the REST API, in the order the document lists them.
#[rustfmt::skip]
static OPERATIONS: &[Operation] = &[
    // DPS service API.
    op("get", "/certificates", "listCertificates", CERTS, "List the CA certificates", Auth::Dps, None, (200, Some("CertificateList"))),
    op("put", "/certificates/{name}", "putCertificate", CERTS, "Upload or replace a CA certificate (If-Match to replace)", Auth::Dps, Some("CertificateUpload"), (200, Some("Certificate"))),
    op("get", "/certificates/{name}", "getCertificate", CERTS, "Get a CA certificate", Auth::Dps, None, (200, Some("Certificate"))),
    op("delete", "/certificates/{name}", "deleteCertificate", CERTS, "Delete a CA certificate (If-Match required; `*` allowed)", Auth::Dps, None, (204, None)),
    op("post", "/certificates/{name}/generateverificationcode", "generateVerificationCode", CERTS, "Generate the proof-of-possession code", Auth::Dps, None, (200, Some("Certificate"))),
    op("post", "/certificates/{name}/verify", "verifyCertificate", CERTS, "Prove possession with a certificate whose CN is the code, signed by the CA's key", Auth::Dps, Some("VerificationCertificate"), (200, Some("Certificate"))),
    op("post", "/enrollmentgroups/query", "queryEnrollmentGroups", GROUPS, "List enrollment groups (paged with x-ms-max-item-count and x-ms-continuation)", Auth::Dps, Some("QuerySpecification"), (200, Some("EnrollmentGroupList"))),
    op("put", "/enrollmentgroups/{id}", "putEnrollmentGroup", GROUPS, "Create or replace an enrollment group", Auth::Dps, Some("EnrollmentGroup"), (200, Some("EnrollmentGroup"))),
    op("get", "/enrollmentgroups/{id}", "getEnrollmentGroup", GROUPS, "Get an enrollment group", Auth::Dps, None, (200, Some("EnrollmentGroup"))),
    op("delete", "/enrollmentgroups/{id}", "deleteEnrollmentGroup", GROUPS, "Delete an enrollment group (If-Match optional)", Auth::Dps, None, (204, None)),
    op("post", "/enrollmentgroups/{id}/attestationmechanism", "getEnrollmentGroupAttestation", GROUPS, "Get a group's attestation with its keys", Auth::Dps, None, (200, Some("Attestation"))),
    op("post", "/enrollments", "bulkEnrollments", ENROLLMENTS, "Create, update or delete individual enrollments in bulk", Auth::Dps, Some("BulkEnrollmentOperation"), (200, Some("BulkEnrollmentResult"))),
    op("post", "/enrollments/query", "queryEnrollments", ENROLLMENTS, "List individual enrollments (paged)", Auth::Dps, Some("QuerySpecification"), (200, Some("EnrollmentList"))),
    op("put", "/enrollments/{id}", "putEnrollment", ENROLLMENTS, "Create or replace an individual enrollment", Auth::Dps, Some("Enrollment"), (200, Some("Enrollment"))),
    op("get", "/enrollments/{id}", "getEnrollment", ENROLLMENTS, "Get an individual enrollment", Auth::Dps, None, (200, Some("Enrollment"))),
    op("delete", "/enrollments/{id}", "deleteEnrollment", ENROLLMENTS, "Delete an individual enrollment (If-Match optional)", Auth::Dps, None, (204, None)),
    op("post", "/enrollments/{id}/attestationmechanism", "getEnrollmentAttestation", ENROLLMENTS, "Get an enrollment's attestation with its keys", Auth::Dps, None, (200, Some("Attestation"))),
    op("get", "/registrations/{id}", "getRegistration", RECORDS, "Get a device's registration record", Auth::Dps, None, (200, Some("RegistrationState"))),
    op("delete", "/registrations/{id}", "deleteRegistration", RECORDS, "Delete a registration record", Auth::Dps, None, (204, None)),
    op("post", "/registrations/{id}/query", "queryGroupRegistrations", RECORDS, "List the registration records of an enrollment group (paged)", Auth::Dps, Some("QuerySpecification"), (200, Some("RegistrationStateList"))),
    // DPS device API.
    op("put", "/{scope}/registrations/{id}/register", "registerDevice", DPS_DEVICE, "Register a device (X.509 client certificate or SAS token)", Auth::Device, Some("DeviceRegistration"), (200, Some("RegistrationOperation"))),
    op("get", "/{scope}/registrations/{id}/operations/{op}", "getOperationStatus", DPS_DEVICE, "Poll a registration operation", Auth::Device, None, (200, Some("RegistrationOperation"))),
    // Hub service API: identities.
    Operation { query: TOP, ..op("get", "/devices", "listDevices", DEVICES, "List device identities", Auth::HubRead, None, (200, Some("DeviceList"))) },
    Operation { query: TOP, ..op("get", "/devices/", "listDevicesSlash", DEVICES, "List device identities (the Node SDK's path)", Auth::HubRead, None, (200, Some("DeviceList"))) },
    op("post", "/devices/query", "queryTwins", DEVICES, "Query twins in the IoT Hub query language (paged)", Auth::HubRead, Some("TwinQuery"), (200, Some("TwinList"))),
    op("post", "/devices/keys/regenerate", "regenerateKeys", DEVICES, "Renew symmetric keys of devices and modules in bulk", Auth::HubWrite, Some("KeyRegeneration"), (200, Some("KeyRegenerationResult"))),
    op("get", "/devices/{id}", "getDevice", DEVICES, "Get a device identity", Auth::HubRead, None, (200, Some("Device"))),
    op("put", "/devices/{id}", "putDevice", DEVICES, "Create a device identity, or update it with If-Match", Auth::HubWrite, Some("Device"), (200, Some("Device"))),
    op("delete", "/devices/{id}", "deleteDevice", DEVICES, "Delete a device identity (If-Match optional)", Auth::HubWrite, None, (204, None)),
    op("get", "/devices/{id}/modules", "listModules", DEVICES, "List a device's module identities", Auth::HubRead, None, (200, Some("ModuleList"))),
    op("get", "/devices/{id}/modules/{mid}", "getModule", DEVICES, "Get a module identity", Auth::HubRead, None, (200, Some("Module"))),
    op("put", "/devices/{id}/modules/{mid}", "putModule", DEVICES, "Create or update a module identity", Auth::HubWrite, Some("Module"), (200, Some("Module"))),
    op("delete", "/devices/{id}/modules/{mid}", "deleteModule", DEVICES, "Delete a module identity", Auth::HubWrite, None, (204, None)),
    op("get", "/statistics/devices", "getDeviceStatistics", DEVICES, "Device counts", Auth::HubRead, None, (200, Some("RegistryStatistics"))),
    // Twins and methods.
    op("get", "/twins/{id}", "getTwin", TWINS, "Get a device twin", Auth::HubRead, None, (200, Some("Twin"))),
    op("patch", "/twins/{id}", "updateTwin", TWINS, "Merge tags and desired properties into a twin (If-Match optional)", Auth::HubService, Some("Twin"), (200, Some("Twin"))),
    op("put", "/twins/{id}", "replaceTwin", TWINS, "Replace a twin's tags and desired properties", Auth::HubService, Some("Twin"), (200, Some("Twin"))),
    op("get", "/twins/{id}/modules/{mid}", "getModuleTwin", TWINS, "Get a module twin", Auth::HubRead, None, (200, Some("Twin"))),
    op("patch", "/twins/{id}/modules/{mid}", "updateModuleTwin", TWINS, "Merge into a module twin", Auth::HubService, Some("Twin"), (200, Some("Twin"))),
    op("put", "/twins/{id}/modules/{mid}", "replaceModuleTwin", TWINS, "Replace a module twin", Auth::HubService, Some("Twin"), (200, Some("Twin"))),
    op("post", "/twins/{id}/methods", "invokeDeviceMethod", TWINS, "Call a direct method on a connected device and wait for its answer", Auth::HubService, Some("MethodCall"), (200, Some("MethodResult"))),
    op("post", "/twins/{id}/modules/{mid}/methods", "invokeModuleMethod", TWINS, "Call a direct method on a connected module", Auth::HubService, Some("MethodCall"), (200, Some("MethodResult"))),
    // Messaging.
    op("post", "/devices/{id}/messages/devicebound", "sendCloudToDevice", MESSAGING, "Queue a cloud-to-device message (headers: iothub-messageid, iothub-correlationid, iothub-ack, iothub-expiry, iothub-app-{name})", Auth::HubService, Some("bytes"), (204, None)),
    op("delete", "/devices/{id}/commands", "purgeCloudToDevice", MESSAGING, "Remove every message queued for a device", Auth::HubService, None, (200, Some("PurgeResult"))),
    Operation { query: EVENTS, ..op("get", "/messages/events", "streamEvents", MESSAGING, "Stream the built-in event log as newline-delimited JSON, open until the client leaves", Auth::HubRead, None, (200, Some("ndjson"))) },
    op("get", "/eventHubEndpoints/events/consumerGroups", "listConsumerGroups", MESSAGING, "List the built-in endpoint's consumer groups", Auth::HubRead, None, (200, Some("ConsumerGroupList"))),
    op("get", "/eventHubEndpoints/events/consumerGroups/{name}", "getConsumerGroup", MESSAGING, "Get a consumer group", Auth::HubRead, None, (200, Some("ConsumerGroup"))),
    op("put", "/eventHubEndpoints/events/consumerGroups/{name}", "putConsumerGroup", MESSAGING, "Create a consumer group", Auth::HubWrite, None, (200, Some("ConsumerGroup"))),
    op("delete", "/eventHubEndpoints/events/consumerGroups/{name}", "deleteConsumerGroup", MESSAGING, "Delete a consumer group", Auth::HubWrite, None, (204, None)),
    // Routing.
    op("get", "/routing", "getRouting", ROUTING, "The routing configuration: endpoints, routes, enrichments, fallback route", Auth::HubRead, None, (200, Some("Routing"))),
    op("get", "/routing/routes", "listRoutes", ROUTING, "List the routes", Auth::HubRead, None, (200, Some("RouteList"))),
    op("get", "/routing/routes/{name}", "getRoute", ROUTING, "Get a route", Auth::HubRead, None, (200, Some("Route"))),
    op("put", "/routing/routes/{name}", "putRoute", ROUTING, "Create or replace a route", Auth::HubWrite, Some("Route"), (200, Some("Route"))),
    op("delete", "/routing/routes/{name}", "deleteRoute", ROUTING, "Delete a route", Auth::HubWrite, None, (204, None)),
    op("get", "/routing/endpoints", "listEndpoints", ROUTING, "List the custom endpoints", Auth::HubRead, None, (200, Some("EndpointList"))),
    op("get", "/routing/endpoints/{name}", "getEndpoint", ROUTING, "Get a custom endpoint", Auth::HubRead, None, (200, Some("Endpoint"))),
    op("put", "/routing/endpoints/{name}", "putEndpoint", ROUTING, "Create or replace a custom endpoint", Auth::HubWrite, Some("Endpoint"), (200, Some("Endpoint"))),
    op("delete", "/routing/endpoints/{name}", "deleteEndpoint", ROUTING, "Delete a custom endpoint no route uses", Auth::HubWrite, None, (204, None)),
    op("put", "/routing/enrichments/{key}", "putEnrichment", ROUTING, "Create or replace a message enrichment", Auth::HubWrite, Some("Enrichment"), (200, Some("Enrichment"))),
    op("delete", "/routing/enrichments/{key}", "deleteEnrichment", ROUTING, "Delete a message enrichment", Auth::HubWrite, None, (204, None)),
    op("put", "/routing/fallbackRoute", "putFallbackRoute", ROUTING, "Enable or disable the fallback route", Auth::HubWrite, Some("FallbackRoute"), (200, Some("FallbackRoute"))),
    op("post", "/routing/test", "testRoute", ROUTING, "Evaluate a condition or the routes against a sample message", Auth::HubRead, Some("RouteTest"), (200, Some("RouteTestResult"))),
    // The device API over HTTPS.
    op("post", "/devices/{id}/messages/events", "sendDeviceEvent", DEVICE_API, "Send telemetry (one message, or a batch with Content-Type application/vnd.microsoft.iothub.json)", Auth::Device, Some("bytes"), (204, None)),
    op("get", "/devices/{id}/messages/devicebound", "receiveCloudToDevice", DEVICE_API, "Receive the next cloud-to-device message, locked for 60 s (ETag: the lock token); 204 when none waits", Auth::Device, None, (200, Some("bytes"))),
    op("get", "/devices/{id}/messages/deviceBound", "receiveCloudToDeviceCamel", DEVICE_API, "As receiveCloudToDevice (the Node SDK's spelling)", Auth::Device, None, (200, Some("bytes"))),
    Operation { query: REJECT, ..op("delete", "/devices/{id}/messages/devicebound/{lock}", "completeCloudToDevice", DEVICE_API, "Complete (or with ?reject, reject) a received message", Auth::Device, None, (204, None)) },
    Operation { query: REJECT, ..op("delete", "/devices/{id}/messages/deviceBound/{lock}", "completeCloudToDeviceCamel", DEVICE_API, "As completeCloudToDevice (the Node SDK's spelling)", Auth::Device, None, (204, None)) },
    op("post", "/devices/{id}/messages/devicebound/{lock}/abandon", "abandonCloudToDevice", DEVICE_API, "Abandon a received message so it can be received again", Auth::Device, None, (204, None)),
    op("post", "/devices/{id}/messages/deviceBound/{lock}/abandon", "abandonCloudToDeviceCamel", DEVICE_API, "As abandonCloudToDevice (the Node SDK's spelling)", Auth::Device, None, (204, None)),
    // Operations.
    op("get", "/healthz", "healthz", OPS, "Liveness: 200 while the process serves HTTPS", Auth::None, None, (200, Some("Health"))),
    op("get", "/readyz", "readyz", OPS, "Readiness: 200 when the store answers a read, 503 otherwise", Auth::None, None, (200, Some("Health"))),
    op("get", "/metrics", "metrics", OPS, "Prometheus metrics (OpenMetrics text)", Auth::Metrics, None, (200, Some("openmetrics"))),
    op("get", "/openapi.json", "openapi", OPS, "This document", Auth::None, None, (200, Some("json"))),
];

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// A body's media types for a schema name.
fn content(name: &str) -> Value {
    match name {
        "bytes" => {
            json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
        }
        "ndjson" => json!({"application/x-ndjson": {"schema": schema_ref("Event")}}),
        "openmetrics" => json!({"application/openmetrics-text": {"schema": {"type": "string"}}}),
        "json" => json!({"application/json": {"schema": {"type": "object"}}}),
        other => json!({"application/json": {"schema": schema_ref(other)}}),
    }
}

fn operation(o: &Operation) -> Value {
    let mut params: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    for (name, description) in o.query {
        params.push(json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}}));
    }
    if o.auth != Auth::None {
        params.push(json!({"$ref": "#/components/parameters/apiVersion"}));
    }
    let mut responses = Map::new();
    let mut ok = json!({"description": "Success"});
    if let (Some(name), Some(r)) = (o.ok.1, ok.as_object_mut()) {
        r.insert("content".into(), content(name));
    }
    responses.insert(o.ok.0.to_string(), ok);
    if o.auth != Auth::None {
        responses.insert(
            "401".into(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    if o.path.contains('{') {
        responses.insert(
            "404".into(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    if o.body.is_some() {
        responses.insert(
            "400".into(),
            json!({"$ref": "#/components/responses/Error"}),
        );
    }
    let mut v = json!({
        "operationId": o.id,
        "tags": [o.tag],
        "summary": o.summary,
        "description": o.auth.describe(),
        "security": o.auth.security(),
        "parameters": params,
        "responses": responses,
    });
    if let (Some(body), Some(m)) = (o.body, v.as_object_mut()) {
        m.insert(
            "requestBody".into(),
            json!({"required": body != "QuerySpecification", "content": content(body)}),
        );
    }
    v
}

#[allow(
    clippy::needless_pass_by_value,
    reason = "called with json! temporaries"
)]
fn object(properties: Value) -> Value {
    json!({"type": "object", "properties": properties, "additionalProperties": true})
}

fn list_of(name: &str) -> Value {
    json!({"type": "array", "items": schema_ref(name)})
}

fn schemas() -> Value {
    let s = |t: &str| json!({"type": t});
    let string = s("string");
    let int = s("integer");
    let boolean = s("boolean");
    let any = json!({});
    let status = json!({"type": "string", "enum": ["enabled", "disabled"]});
    let mut m = Map::new();
    m.insert("DpsError".into(), object(json!({"errorCode": int, "trackingId": string, "message": string, "timestampUtc": string})));
    m.insert("HubError".into(), object(json!({"Message": {"type": "string", "description": "ErrorCode:{code};{message}"}, "ExceptionMessage": string})));
    m.insert("CertificateUpload".into(), object(json!({"properties": object(json!({"certificate": {"type": "string", "description": "PEM or base64 DER of a CA certificate"}, "isVerified": boolean})), "certificate": string})));
    m.insert("Certificate".into(), object(json!({"id": string, "name": string, "type": string, "etag": string,
            "properties": object(json!({"certificate": string, "subject": string, "thumbprint": string, "sha256Thumbprint": string, "isVerified": boolean, "expiry": string, "created": string, "updated": string, "verificationCode": string}))})));
    m.insert(
        "CertificateList".into(),
        object(json!({"value": list_of("Certificate")})),
    );
    m.insert("VerificationCertificate".into(), object(json!({"certificate": {"type": "string", "description": "PEM or base64 DER; CN = the verification code, signed by the CA's key"}})));
    m.insert(
        "QuerySpecification".into(),
        object(json!({"query": string})),
    );
    m.insert("X509Attestation".into(), object(json!({"caReferences": object(json!({"primary": string, "secondary": string})), "signingCertificates": any, "clientCertificates": any})));
    m.insert(
        "SymmetricKeyAttestation".into(),
        object(json!({"primaryKey": string, "secondaryKey": string})),
    );
    m.insert("Attestation".into(), object(json!({"type": {"type": "string", "enum": ["x509", "symmetricKey"]}, "x509": schema_ref("X509Attestation"), "symmetricKey": schema_ref("SymmetricKeyAttestation")})));
    m.insert(
        "InitialTwin".into(),
        object(json!({"tags": s("object"), "properties": object(json!({"desired": s("object")}))})),
    );
    m.insert("EnrollmentGroup".into(), object(json!({"enrollmentGroupId": string, "attestation": schema_ref("Attestation"), "provisioningStatus": status,
            "allocationPolicy": {"type": "string", "enum": ["hashed", "geoLatency", "static", "custom"]}, "iotHubs": {"type": "array", "items": string},
            "iotHubHostName": string, "reprovisionPolicy": object(json!({"updateHubAssignment": boolean, "migrateDeviceData": boolean})),
            "customAllocationDefinition": object(json!({"webhookUrl": string, "apiVersion": string})),
            "initialTwin": schema_ref("InitialTwin"), "capabilities": object(json!({"iotEdge": boolean})), "etag": string, "createdDateTimeUtc": string, "lastUpdatedDateTimeUtc": string})));
    m.insert("EnrollmentGroupList".into(), list_of("EnrollmentGroup"));
    m.insert("Enrollment".into(), object(json!({"registrationId": string, "deviceId": string, "attestation": schema_ref("Attestation"), "provisioningStatus": status,
            "allocationPolicy": string, "iotHubs": {"type": "array", "items": string}, "initialTwin": schema_ref("InitialTwin"),
            "registrationState": schema_ref("RegistrationState"), "etag": string})));
    m.insert("EnrollmentList".into(), list_of("Enrollment"));
    m.insert("BulkEnrollmentOperation".into(), object(json!({"mode": {"type": "string", "enum": ["create", "update", "updateIfMatchETag", "delete"]}, "enrollments": list_of("Enrollment")})));
    m.insert("BulkEnrollmentResult".into(), object(json!({"isSuccessful": boolean, "errors": {"type": "array", "items": object(json!({"registrationId": string, "errorCode": int, "errorStatus": string}))}})));
    m.insert("RegistrationState".into(), object(json!({"registrationId": string, "deviceId": string, "assignedHub": string, "status": {"type": "string", "enum": ["unassigned", "assigning", "assigned", "failed", "disabled"]},
            "substatus": string, "errorCode": int, "errorMessage": string, "createdDateTimeUtc": string, "lastUpdatedDateTimeUtc": string, "etag": string, "payload": any})));
    m.insert("RegistrationStateList".into(), list_of("RegistrationState"));
    m.insert(
        "DeviceRegistration".into(),
        object(json!({"registrationId": string, "payload": any})),
    );
    m.insert("RegistrationOperation".into(), object(json!({"operationId": string, "status": string, "registrationState": schema_ref("RegistrationState")})));
    m.insert("Device".into(), object(json!({"deviceId": string, "generationId": string, "etag": string, "status": status, "statusReason": string,
            "connectionState": {"type": "string", "enum": ["Connected", "Disconnected"]}, "connectionStateUpdatedTime": string, "statusUpdatedTime": string,
            "lastActivityTime": string, "cloudToDeviceMessageCount": int,
            "authentication": object(json!({"type": {"type": "string", "enum": ["sas", "selfSigned", "certificateAuthority", "none"]},
                "symmetricKey": schema_ref("SymmetricKeyAttestation"), "x509Thumbprint": object(json!({"primaryThumbprint": string, "secondaryThumbprint": string}))})),
            "capabilities": object(json!({"iotEdge": boolean}))})));
    m.insert("DeviceList".into(), list_of("Device"));
    m.insert("Module".into(), object(json!({"deviceId": string, "moduleId": string, "generationId": string, "etag": string, "connectionState": string, "authentication": any, "managedBy": string})));
    m.insert("ModuleList".into(), list_of("Module"));
    m.insert(
        "RegistryStatistics".into(),
        object(
            json!({"totalDeviceCount": int, "enabledDeviceCount": int, "disabledDeviceCount": int}),
        ),
    );
    m.insert("Twin".into(), object(json!({"deviceId": string, "moduleId": string, "etag": string, "version": int, "status": string, "tags": s("object"),
            "properties": object(json!({"desired": s("object"), "reported": s("object")}))})));
    m.insert("TwinList".into(), list_of("Twin"));
    m.insert("TwinQuery".into(), object(json!({"query": {"type": "string", "description": "e.g. SELECT * FROM devices WHERE properties.reported.telemetryDelay = '2'"}})));
    m.insert("KeyRegeneration".into(), object(json!({"policyKey": {"type": "string", "enum": ["primaryKey", "secondaryKey", "both"]}, "devices": {"type": "array", "items": object(json!({"id": string, "moduleId": string}))}})));
    m.insert("KeyRegenerationResult".into(), object(json!({"policyKey": string, "rotatedKeys": {"type": "array", "items": s("object")}, "errors": {"type": "array", "items": s("object")}})));
    m.insert("MethodCall".into(), object(json!({"methodName": string, "payload": any, "responseTimeoutInSeconds": int, "connectTimeoutInSeconds": int})));
    m.insert(
        "MethodResult".into(),
        object(json!({"status": int, "payload": any})),
    );
    m.insert(
        "PurgeResult".into(),
        object(json!({"deviceId": string, "totalMessagesPurged": int})),
    );
    m.insert("Event".into(), object(json!({"sequenceNumber": int, "enqueuedTimeUtc": string, "deviceId": string, "moduleId": string, "properties": s("object"), "systemProperties": s("object"), "body": any, "bodyEncoding": string})));
    m.insert(
        "ConsumerGroup".into(),
        object(json!({"name": string, "properties": s("object")})),
    );
    m.insert(
        "ConsumerGroupList".into(),
        object(json!({"value": list_of("ConsumerGroup")})),
    );
    m.insert("Route".into(), object(json!({"name": string, "source": string, "condition": string, "endpointNames": {"type": "array", "items": string}, "isEnabled": boolean})));
    m.insert("RouteList".into(), list_of("Route"));
    m.insert(
        "Endpoint".into(),
        object(json!({"name": string, "type": string, "url": string})),
    );
    m.insert("EndpointList".into(), list_of("Endpoint"));
    m.insert("Enrichment".into(), object(json!({"key": string, "value": string, "endpointNames": {"type": "array", "items": string}})));
    m.insert("FallbackRoute".into(), object(json!({"name": string, "source": string, "condition": string, "endpointNames": {"type": "array", "items": string}, "isEnabled": boolean})));
    m.insert("Routing".into(), object(json!({"endpoints": s("object"), "routes": list_of("Route"), "enrichments": list_of("Enrichment"), "fallbackRoute": schema_ref("FallbackRoute")})));
    m.insert("RouteTest".into(), object(json!({"route": schema_ref("Route"), "message": object(json!({"body": string, "appProperties": s("object"), "systemProperties": s("object")})), "twin": s("object")})));
    m.insert(
        "RouteTestResult".into(),
        object(json!({"result": string, "routes": s("array")})),
    );
    m.insert("Health".into(), object(json!({"status": string})));
    Value::Object(m)
}

/// The OpenAPI document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for o in OPERATIONS {
        let entry = paths.entry(o.path).or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            m.insert(o.method.to_owned(), operation(o));
        }
    }
    let mut tags: Vec<&str> = Vec::new();
    for o in OPERATIONS {
        if !tags.contains(&o.tag) {
            tags.push(o.tag);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "muster REST API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The management API of muster's provisioning service and IoT hub, in the shapes of Azure's DPS and IoT Hub service APIs, plus the device APIs over HTTPS. Collection segments (enrollmentGroups, enrollments, registrations, certificates, devices, twins) and actions are matched case-insensitively; ids are kept as given. Every call accepts any api-version. See docs/wire-protocol.md.",
            "license": {"name": "MIT OR Apache-2.0"},
        },
        "servers": [{"url": "https://localhost:8443", "description": "muster serve's defaults (the portal port 8444 serves the same API)"}],
        "tags": tags.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "sas": {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "SharedAccessSignature sr={host}&sig={signature}&se={expiry}&skn={policy}: a policy's token for management calls, a device's (no skn) for the device APIs"},
                "clientCertificate": {"type": "mutualTLS", "description": "The device's X.509 certificate chain in the TLS handshake"},
            },
            "parameters": {
                "apiVersion": {"name": "api-version", "in": "query", "required": false, "schema": {"type": "string"}, "description": "Accepted and ignored (any value)."},
            },
            "responses": {
                "Error": {"description": "An error in Azure's shape: DPS paths answer DpsError (and x-ms-error-code), hub paths HubError (and iothub-errorcode)",
                    "content": {"application/json": {"schema": {"oneOf": [schema_ref("DpsError"), schema_ref("HubError")]}}}},
            },
            "schemas": schemas(),
        },
    })
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> axum::response::Response {
    Json(document()).into_response()
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The REST router's sources: every `.route(…)` there is read by [`routes`].
    const SOURCES: [&str; 6] = [
        include_str!("mod.rs"),
        include_str!("dps_service.rs"),
        include_str!("dps_device.rs"),
        include_str!("hub_service.rs"),
        include_str!("events.rs"),
        include_str!("routing.rs"),
    ];

    /// (method, path) of every route the sources register, without the portal's pages and
    /// the WebSocket tunnels (`crate::websocket::PATHS`, registered in a loop).
    fn routes() -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for source in SOURCES {
            let text: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
            let mut rest = text.as_str();
            while let Some(at) = rest.find(".route(") {
                rest = &rest[at + ".route(".len()..];
                let Some(path) = rest.trim_start().strip_prefix('"') else {
                    continue;
                };
                let Some(end) = path.find('"') else { continue };
                let route = &path[..end];
                // The method router: up to the call's closing parenthesis.
                let mut depth = 1usize;
                let mut close = path.len();
                for (i, c) in path[end..].char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                close = end + i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let methods = &path[end..close];
                for m in ["get", "put", "post", "delete", "patch"] {
                    let called = methods.match_indices(&format!("{m}(")).any(|(i, _)| {
                        i == 0
                            || !methods[..i]
                                .chars()
                                .last()
                                .is_some_and(|c| c.is_alphanumeric() || c == '_')
                    });
                    if called && !route.starts_with("/portal") {
                        out.insert((m.to_owned(), route.to_owned()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let served = routes();
        assert!(
            served.len() > 60,
            "the route scan found too little: {served:?}"
        );
        let documented: BTreeSet<(String, String)> = OPERATIONS
            .iter()
            .map(|o| (o.method.to_owned(), o.path.to_owned()))
            .collect();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from rest/openapi.rs OPERATIONS: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "OPERATIONS rows with no route: {unserved:?}"
        );
    }

    #[test]
    fn the_document_is_consistent() {
        let doc = document();
        let ids: Vec<&str> = OPERATIONS.iter().map(|o| o.id).collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "operation ids repeat");
        // Every $ref resolves.
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"#/").skip(1) {
            let pointer = format!("/{}", &part[..part.find('"').unwrap()]);
            assert!(
                doc.pointer(&pointer).is_some(),
                "{pointer} does not resolve"
            );
        }
        assert_eq!(doc["openapi"], "3.1.0");
    }

    /// `docs/openapi.json` is what the code builds; `MUSTER_UPDATE_OPENAPI=1 cargo test -p
    /// muster-server openapi` rewrites it.
    #[test]
    fn docs_openapi_json_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
        let built = format!("{}\n", serde_json::to_string_pretty(&document()).unwrap());
        if std::env::var_os("MUSTER_UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &built).unwrap();
        }
        let kept = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            kept == built,
            "docs/openapi.json is out of date: run `MUSTER_UPDATE_OPENAPI=1 cargo test -p muster-server openapi`"
        );
    }
}

#!/usr/bin/env node
'use strict';
// Provision one device with the official, unmodified Azure IoT Node DPS SDK
// (azure-iot-provisioning-device + -mqtt / -http / -amqp transport + X509Security
// or SymmetricKeySecurityClient). Prints exactly one JSON line; see harness.js.

const crypto = require('crypto');
const fs = require('fs');
const harness = require('./harness');

const TRANSPORTS = ['mqtt', 'mqtt-ws', 'amqp', 'amqp-ws', 'http'];

const USAGE = `usage: provision.js --transport mqtt|mqtt-ws|amqp|amqp-ws|http --host HOST --id-scope SCOPE
                    --registration-id ID
                    (--cert FILE --key FILE [--pass-phrase P] | --symmetric-key K | --group-key G)
                    [--payload JSON] [--timeout SECONDS] [--verbose]

  --transport   mqtt: Mqtt, mqtt-ws: MqttWs (azure-iot-provisioning-device-mqtt);
                amqp: Amqp, amqp-ws: AmqpWs (azure-iot-provisioning-device-amqp);
                http: Http (azure-iot-provisioning-device-http).
  --host        DPS host. MQTT: "host" (port 8883) or "host:port".
                AMQP: "host" (port 5671) or "host:port"; symmetric keys use SASL PLAIN.
                HTTP and both WebSocket transports: always port 443 (WebSockets:
                wss://host:443/$iothub/websocket), "host:port" is NOT supported.
  --cert/--key  X.509 device certificate (chain) and key, PEM (X509Security).
  --symmetric-key  device key (base64) for SymmetricKeySecurityClient.
  --group-key   enrollment-group key (base64); the device key is derived as
                base64(HMAC-SHA256(base64decode(G), registrationId)).
  --payload     JSON value passed to setProvisioningPayload().
  --timeout     overall deadline in seconds (default 60).
Server CA: the DPS transports have no "ca" option; trust the server with
NODE_EXTRA_CA_CERTS=<data-dir>/tls/ca.pem.
`;

function deriveDeviceKey(groupKey, registrationId) {
  return crypto.createHmac('sha256', Buffer.from(groupKey, 'base64'))
    .update(registrationId, 'utf8')
    .digest('base64');
}

function main() {
  const a = harness.parseArgs({
    transport: { type: 'string', default: 'mqtt' },
    host: { type: 'string' },
    'id-scope': { type: 'string' },
    'registration-id': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'pass-phrase': { type: 'string' },
    'symmetric-key': { type: 'string' },
    'group-key': { type: 'string' },
    payload: { type: 'string' },
  }, USAGE);

  for (const f of ['host', 'id-scope', 'registration-id']) {
    if (!a[f]) harness.usage(USAGE, '--' + f + ' is required');
  }
  if (!TRANSPORTS.includes(a.transport)) harness.usage(USAGE, '--transport must be one of ' + TRANSPORTS.join(', '));
  const x509 = a.cert !== undefined || a.key !== undefined;
  const nKinds = [x509, a['symmetric-key'] !== undefined, a['group-key'] !== undefined].filter(Boolean).length;
  if (nKinds !== 1) harness.usage(USAGE, 'give exactly one of --cert/--key, --symmetric-key, --group-key');
  if (x509 && (!a.cert || !a.key)) harness.usage(USAGE, '--cert and --key go together');
  let payload;
  if (a.payload !== undefined) {
    try { payload = JSON.parse(a.payload); } catch (e) { harness.usage(USAGE, '--payload is not JSON: ' + e.message); }
  }

  harness.run(a.timeout, async () => {
    // SDK modules are loaded only now (after --verbose set DEBUG).
    const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
    const Transport = {
      mqtt: () => require('azure-iot-provisioning-device-mqtt').Mqtt,
      'mqtt-ws': () => require('azure-iot-provisioning-device-mqtt').MqttWs,
      amqp: () => require('azure-iot-provisioning-device-amqp').Amqp,
      'amqp-ws': () => require('azure-iot-provisioning-device-amqp').AmqpWs,
      http: () => require('azure-iot-provisioning-device-http').Http,
    }[a.transport]();

    const regId = a['registration-id'];
    let security;
    if (x509) {
      const { X509Security } = require('azure-iot-security-x509');
      const cert = { cert: fs.readFileSync(a.cert, 'utf8'), key: fs.readFileSync(a.key, 'utf8') };
      if (a['pass-phrase'] !== undefined) cert.passphrase = a['pass-phrase'];
      security = new X509Security(regId, cert);
    } else {
      const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
      const key = a['group-key'] !== undefined ? deriveDeviceKey(a['group-key'], regId) : a['symmetric-key'];
      security = new SymmetricKeySecurityClient(regId, key);
    }

    const client = ProvisioningDeviceClient.create(a.host, a['id-scope'], new Transport(), security);
    if (payload !== undefined) client.setProvisioningPayload(payload);
    // register() resolves with result.registrationState.
    const st = await client.register();
    return {
      status: st.status === undefined ? null : st.status,
      deviceId: st.deviceId === undefined ? null : st.deviceId,
      assignedHub: st.assignedHub === undefined ? null : st.assignedHub,
      substatus: st.substatus === undefined ? null : st.substatus,
      registrationId: st.registrationId === undefined ? null : st.registrationId,
      transport: a.transport,
      payload: st.payload === undefined ? null : st.payload,
    };
  }, (e) => harness.errorJson(e, { transport: a.transport }));
}

main();

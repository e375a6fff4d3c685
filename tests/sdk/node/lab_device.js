#!/usr/bin/env node
'use strict';
// The seed lab's device with the official, unmodified Node SDKs, on any transport: register
// with DPS using an X.509 certificate, connect to the assigned hub with the same
// certificate, read `telemetryDelay` from the twin, send telemetry (with a `temperatureAlert`
// property) every `telemetryDelay` seconds, and on a desired change adopt the new delay and
// report it back. Runs until --duration is over or the hub closes the connection.
// Prints exactly one JSON line on stdout (see harness.js):
//   {"ok":true, "transport", "deviceId", "assignedHub", "initialDelay",
//    "sent":[{"at":ms,"delay":"1"},...], "desired":[{"at":ms,"telemetryDelay":"2"}],
//    "reported":[{"at":ms,"telemetryDelay":"2"}], "disconnected":{"at":ms,"error":..}|null}
// {"ready":true} goes to stderr once telemetry runs.

const fs = require('fs');
const harness = require('./harness');

const USAGE = `usage: lab_device.js --host HOST --id-scope SCOPE --registration-id ID --cert FILE --key FILE
                     [--transport amqp|amqp-ws|mqtt|mqtt-ws] [--hub-port N] [--duration S] [--timeout S]

  --host        DPS host (the global device endpoint); the hub host comes back from DPS.
  --hub-port    append :N to the assigned hub (AMQP and MQTT only: the WebSocket transports
                always dial 443).
  --duration    how long to send telemetry (default 20 s).
Trust comes from NODE_EXTRA_CA_CERTS.
`;

function transports(name) {
  switch (name) {
    case 'amqp':
      return [require('azure-iot-provisioning-device-amqp').Amqp, require('azure-iot-device-amqp').Amqp];
    case 'amqp-ws':
      return [require('azure-iot-provisioning-device-amqp').AmqpWs, require('azure-iot-device-amqp').AmqpWs];
    case 'mqtt':
      return [require('azure-iot-provisioning-device-mqtt').Mqtt, require('azure-iot-device-mqtt').Mqtt];
    case 'mqtt-ws':
      return [require('azure-iot-provisioning-device-mqtt').MqttWs, require('azure-iot-device-mqtt').MqttWs];
    default:
      return null;
  }
}

function main() {
  const a = harness.parseArgs({
    host: { type: 'string' },
    'id-scope': { type: 'string' },
    'registration-id': { type: 'string' },
    cert: { type: 'string' },
    key: { type: 'string' },
    transport: { type: 'string', default: 'amqp' },
    'hub-port': { type: 'string' },
    duration: { type: 'string', default: '20' },
    timeout: { type: 'string', default: '60' },
  }, USAGE);
  for (const k of ['host', 'id-scope', 'registration-id', 'cert', 'key']) {
    if (!a[k]) harness.usage(USAGE, '--' + k + ' is required');
  }
  if (!transports(a.transport)) harness.usage(USAGE, 'unknown --transport ' + a.transport);
  const duration = Number(a.duration);
  if (!Number.isFinite(duration) || duration <= 0) harness.usage(USAGE, '--duration must be positive');
  const cert = fs.readFileSync(a.cert, 'utf8');
  const key = fs.readFileSync(a.key, 'utf8');
  const start = Date.now();
  const at = () => Date.now() - start;
  const out = { transport: a.transport, sent: [], desired: [], reported: [], disconnected: null };

  harness.run(a.timeout, async () => {
    const [DpsTransport, HubTransport] = transports(a.transport);
    const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
    const { X509Security } = require('azure-iot-security-x509');
    const { Client, Message } = require('azure-iot-device');

    const security = new X509Security(a['registration-id'], { cert, key });
    const dps = ProvisioningDeviceClient.create(a.host, a['id-scope'], new DpsTransport(), security);
    const reg = await dps.register();
    out.deviceId = reg.deviceId;
    out.assignedHub = reg.assignedHub;
    const hubHost = a['hub-port'] ? reg.assignedHub + ':' + a['hub-port'] : reg.assignedHub;
    const cs = 'HostName=' + hubHost + ';DeviceId=' + reg.deviceId + ';x509=true';
    const client = Client.fromConnectionString(cs, HubTransport);
    await client.setOptions({ cert, key });

    let finish;
    const finished = new Promise((res) => { finish = res; });
    client.on('error', (e) => { out.disconnected = { at: at(), error: harness.errorJson(e) }; finish(); });
    client.on('disconnect', (e) => { out.disconnected = { at: at(), error: e ? String(e.message || e) : 'disconnect' }; finish(); });
    await client.open();
    const twin = await client.getTwin();
    let delay = String(twin.properties.desired.telemetryDelay || '1');
    out.initialDelay = delay;
    twin.on('properties.desired', (patch) => {
      if (patch.telemetryDelay === undefined) return;
      out.desired.push({ at: at(), telemetryDelay: String(patch.telemetryDelay) });
      delay = String(patch.telemetryDelay);
      twin.properties.reported.update({ telemetryDelay: delay }, (err) => {
        if (!err) out.reported.push({ at: at(), telemetryDelay: delay });
      });
    });
    process.stderr.write(JSON.stringify({ ready: true, deviceId: reg.deviceId, initialDelay: delay }) + '\n');

    let n = 0;
    const send = async () => {
      while (out.disconnected === null && at() < duration * 1000) {
        const m = new Message(JSON.stringify({ deviceId: reg.deviceId, temperature: 20 + (n % 15), n }));
        m.properties.add('temperatureAlert', n % 15 > 10 ? 'true' : 'false');
        n += 1;
        try {
          await client.sendEvent(m);
          out.sent.push({ at: at(), delay });
        } catch (e) {
          out.disconnected = { at: at(), error: String(e && e.message) };
          break;
        }
        await new Promise((res) => setTimeout(res, Number(delay) * 1000));
      }
      finish();
    };
    send();
    await finished;
    try { await client.close(); } catch (_) { /* already closed */ }
    return Object.assign({ ok: true }, out);
  });
}

main();

#!/usr/bin/env node
'use strict';
// IoT Hub device scenario with the official, unmodified azure-iot-device +
// azure-iot-device-mqtt SDK (Client.fromConnectionString(cs, Mqtt)):
//   open -> getTwin -> reported update -> listen for desired patches, the
//   "reboot" direct method and C2D messages -> send one telemetry message ->
//   {"ready":true} on stderr -> wait until a desired patch with $version >= 2,
//   a C2D message and one method call have all arrived -> close.
// Something outside (a test, the muster CLI) has to drive the second half.
// Prints exactly one JSON line on stdout; see harness.js and README.md.

const fs = require('fs');
const harness = require('./harness');

const USAGE = `usage: hub_device.js --connection-string CS [--ca FILE] [--timeout SECONDS] [--verbose]

  --connection-string  HostName=<host>;DeviceId=<id>;SharedAccessKey=<key>
                       MQTT over TLS: mqtts://<host>, port 8883, or HostName=<host>:<port>.
  --ca                 PEM file passed to client.setOptions({ca}) (the server CA).
                       Without it, trust comes from NODE_EXTRA_CA_CERTS only.
  --timeout            overall deadline in seconds (default 30).
Once listening, prints {"ready":true} on STDERR. Then it waits for a desired-property
patch with $version >= 2, one C2D message and one "reboot" method call.
`;

// Margin for close() and the result line after the scenario deadline.
const CLOSE_GRACE_S = 5;

function propsToObject(props) {
  const out = {};
  const list = props && Array.isArray(props.propertyList) ? props.propertyList : [];
  for (const p of list) out[p.key] = p.value;
  return out;
}

function dataText(d) {
  if (d === undefined || d === null) return null;
  if (Buffer.isBuffer(d)) return d.toString('utf8');
  return typeof d === 'string' ? d : JSON.stringify(d);
}

function main() {
  const a = harness.parseArgs({
    'connection-string': { type: 'string' },
    ca: { type: 'string' },
    timeout: { type: 'string', default: '30' },
  }, USAGE);
  if (!a['connection-string']) harness.usage(USAGE, '--connection-string is required');
  let ca;
  if (a.ca !== undefined) {
    try { ca = fs.readFileSync(a.ca, 'utf8'); } catch (e) { harness.usage(USAGE, '--ca: ' + e.message); }
  }

  const out = { desired: null, patch: null, c2d: null, methodCalled: false };
  let step = 'init';

  // The wait has its own deadline (so a timeout reports what did arrive);
  // harness.run's timer is only a backstop for a hanging close().
  harness.run(a.timeout + CLOSE_GRACE_S, async () => {
    const { Client, Message } = require('azure-iot-device');
    const { Mqtt } = require('azure-iot-device-mqtt');

    let rejectWait;
    let resolveWait;
    const waitDone = new Promise((res, rej) => { resolveWait = res; rejectWait = rej; });
    waitDone.catch(() => {}); // handled when awaited
    const check = () => {
      if (out.patch && out.c2d && out.methodCalled) resolveWait();
    };
    const deadline = setTimeout(() => {
      const missing = [];
      if (!out.patch) missing.push('desired patch ($version >= 2)');
      if (!out.c2d) missing.push('C2D message');
      if (!out.methodCalled) missing.push('method call');
      const e = new Error('no result within ' + a.timeout + 's (step ' + step + ')' +
        (step === 'wait' ? '; missing: ' + missing.join(', ') : ''));
      e.name = 'Timeout';
      rejectWait(e);
    }, Math.round(a.timeout * 1000));
    // Run a step, or fail with the deadline / an async SDK error, whichever comes first.
    const race = (p) => Promise.race([p, waitDone.then(() => new Promise(() => {}))]);

    step = 'create';
    const client = Client.fromConnectionString(a['connection-string'], Mqtt);
    client.on('error', (e) => rejectWait(e));

    if (ca !== undefined) {
      step = 'setOptions';
      await race(client.setOptions({ ca: ca }));
    }

    step = 'open';
    await race(client.open());

    step = 'getTwin';
    const twin = await race(client.getTwin());
    out.desired = JSON.parse(JSON.stringify(twin.properties.desired));
    twin.on('error', (e) => rejectWait(e));

    step = 'reportedUpdate';
    await race(new Promise((res, rej) => {
      twin.properties.reported.update({ telemetryDelay: 1 }, (err) => (err ? rej(err) : res()));
    }));

    step = 'subscribe';
    // The first listener makes the twin subscribe to desired patches. Right after
    // it is added the SDK emits the whole (current) desired object once; patches
    // arrive as separate objects carrying their own $version.
    twin.on('properties.desired', (p) => {
      if (!p || p === twin.properties.desired || out.patch) return;
      if (typeof p.$version === 'number' && p.$version >= 2) {
        out.patch = JSON.parse(JSON.stringify(p));
        check();
      }
    });
    client.onDeviceMethod('reboot', (req, res) => {
      out.methodRequest = { methodName: req.methodName, payload: req.payload === undefined ? null : req.payload };
      res.send(200, { rebooted: true }, (err) => {
        if (err) return rejectWait(err);
        out.methodCalled = true;
        check();
      });
    });
    client.on('message', (msg) => {
      if (!out.c2d) {
        out.c2d = {
          data: dataText(msg.data),
          properties: propsToObject(msg.properties),
          messageId: msg.messageId === undefined ? null : msg.messageId,
        };
      }
      client.complete(msg, (err) => {
        if (err) return rejectWait(err);
        check();
      });
    });

    // MQTT keeps order on one connection: the SUBSCRIBEs above are written
    // before this PUBLISH, so its PUBACK means the server has seen them.
    step = 'sendEvent';
    const m = new Message(JSON.stringify({ temperature: 30.5 }));
    m.properties.add('temperatureAlert', 'true');
    await race(client.sendEvent(m));
    out.sent = true;

    step = 'wait';
    process.stderr.write(JSON.stringify({ ready: true }) + '\n');
    await waitDone;
    clearTimeout(deadline);

    step = 'close';
    await client.close();
    return out;
  }, (e) => harness.errorJson(e, { step: step, done: out }));
}

main();

#!/usr/bin/env node
'use strict';
// IoT Hub device scenario with the official, unmodified azure-iot-device SDK and
// one of its transports (Client.fromConnectionString(cs, Transport)):
//   mqtt     Mqtt    (azure-iot-device-mqtt)   mqtt-ws  MqttWs
//   amqp     Amqp    (azure-iot-device-amqp)   amqp-ws  AmqpWs
//   http     Http    (azure-iot-device-http)
// mqtt/mqtt-ws/amqp/amqp-ws:
//   open -> getTwin -> reported update -> listen for desired patches, the
//   "reboot" direct method and C2D messages -> send one telemetry message ->
//   {"ready":true} on stderr -> wait until a desired patch with $version >= 2,
//   a C2D message and one method call have all arrived -> close.
// http (the SDK has no twin and no methods over HTTPS):
//   open -> send one telemetry message -> poll C2D -> {"ready":true} on stderr
//   -> wait for one C2D message -> close.
// Something outside (a test, the muster CLI) has to drive the second half.
// Prints exactly one JSON line on stdout; see harness.js and README.md.

const fs = require('fs');
const harness = require('./harness');

const TRANSPORTS = ['mqtt', 'mqtt-ws', 'amqp', 'amqp-ws', 'http'];

const USAGE = `usage: hub_device.js --connection-string CS [--transport mqtt|mqtt-ws|amqp|amqp-ws|http]
                     [--cert FILE --key FILE [--pass-phrase P]] [--ca FILE]
                     [--reject-c2d] [--timeout SECONDS] [--verbose]

  --connection-string  HostName=<host>;DeviceId=<id>;SharedAccessKey=<key>
                       or, with --cert/--key, HostName=<host>;DeviceId=<id>;x509=true
  --transport          default mqtt. Ports: mqtt mqtts://<host> (8883, or HostName=<host>:<port>);
                       amqp amqps://<host> (5671, or HostName=<host>:<port>);
                       mqtt-ws/amqp-ws wss://<host>:443/$iothub/websocket (HostName must not
                       carry a port); http https://<host> (443 only).
  --cert/--key         X.509 device certificate (chain) and key, PEM; passed with --ca in one
                       client.setOptions({cert, key, passphrase, ca}).
  --ca                 PEM file passed to client.setOptions({ca}) (the server CA).
                       Without it, trust comes from NODE_EXTRA_CA_CERTS only.
  --reject-c2d         reject the first C2D message instead of completing it (amqp, amqp-ws,
                       http; MQTT cannot reject).
  --timeout            overall deadline in seconds (default 30).
Once listening, prints {"ready":true} on STDERR. Then it waits for a desired-property
patch with $version >= 2, one C2D message and one "reboot" method call (http: one C2D
message only).
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

// Same split as azure-iot-common's ConnectionString.parse (';' then the first '=').
function parseConnectionString(cs) {
  const out = {};
  for (const part of cs.split(';')) {
    const i = part.indexOf('=');
    if (i > 0) out[part.slice(0, i)] = part.slice(i + 1);
  }
  return out;
}

function loadTransport(name) {
  switch (name) {
    case 'mqtt': return require('azure-iot-device-mqtt').Mqtt;
    case 'mqtt-ws': return require('azure-iot-device-mqtt').MqttWs;
    case 'amqp': return require('azure-iot-device-amqp').Amqp;
    case 'amqp-ws': return require('azure-iot-device-amqp').AmqpWs;
    case 'http': return require('azure-iot-device-http').Http;
    default: throw new Error('unknown transport ' + name);
  }
}

function readFileOrUsage(flag, file) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    return harness.usage(USAGE, flag + ': ' + e.message);
  }
}

function main() {
  const a = harness.parseArgs({
    'connection-string': { type: 'string' },
    transport: { type: 'string', default: 'mqtt' },
    cert: { type: 'string' },
    key: { type: 'string' },
    'pass-phrase': { type: 'string' },
    ca: { type: 'string' },
    'reject-c2d': { type: 'boolean' },
    timeout: { type: 'string', default: '30' },
  }, USAGE);
  if (!a['connection-string']) harness.usage(USAGE, '--connection-string is required');
  const transport = a.transport;
  if (!TRANSPORTS.includes(transport)) harness.usage(USAGE, '--transport must be one of ' + TRANSPORTS.join(', '));
  const isMqtt = transport === 'mqtt' || transport === 'mqtt-ws';
  const isHttp = transport === 'http';
  const rejectC2d = !!a['reject-c2d'];
  if (rejectC2d && isMqtt) harness.usage(USAGE, '--reject-c2d: the MQTT transports cannot reject messages');

  const x509 = a.cert !== undefined || a.key !== undefined;
  if (x509 && (!a.cert || !a.key)) harness.usage(USAGE, '--cert and --key go together');
  if (!x509 && a['pass-phrase'] !== undefined) harness.usage(USAGE, '--pass-phrase needs --cert/--key');
  const cs = parseConnectionString(a['connection-string']);
  const csX509 = String(cs.x509).toLowerCase() === 'true';
  if (x509 && (!csX509 || cs.SharedAccessKey !== undefined || cs.SharedAccessSignature !== undefined)) {
    harness.usage(USAGE, '--cert/--key need a connection string with x509=true and no SharedAccessKey');
  }
  if (!x509 && csX509) harness.usage(USAGE, 'an x509=true connection string needs --cert and --key');

  const ca = a.ca !== undefined ? readFileOrUsage('--ca', a.ca) : undefined;
  let x509Options;
  if (x509) {
    x509Options = { cert: readFileOrUsage('--cert', a.cert), key: readFileOrUsage('--key', a.key) };
    if (a['pass-phrase'] !== undefined) x509Options.passphrase = a['pass-phrase'];
  }

  // mqtt keeps today's result shape exactly; other transports add "transport" and
  // "c2dSettlement"; http has no twin/method fields.
  const out = isHttp ? { c2d: null } : { desired: null, patch: null, c2d: null, methodCalled: false };
  let step = 'init';

  // The wait has its own deadline (so a timeout reports what did arrive);
  // harness.run's timer is only a backstop for a hanging close().
  harness.run(a.timeout + CLOSE_GRACE_S, async () => {
    const { Client, Message } = require('azure-iot-device');
    const Transport = loadTransport(transport);

    let rejectWait;
    let resolveWait;
    const waitDone = new Promise((res, rej) => { resolveWait = res; rejectWait = rej; });
    waitDone.catch(() => {}); // handled when awaited
    const check = () => {
      if (out.c2d && out.c2dSettled !== false && (isHttp || (out.patch && out.methodCalled))) resolveWait();
    };
    const deadline = setTimeout(() => {
      const missing = [];
      if (!isHttp && !out.patch) missing.push('desired patch ($version >= 2)');
      if (!out.c2d) missing.push('C2D message');
      if (!isHttp && !out.methodCalled) missing.push('method call');
      const e = new Error('no result within ' + a.timeout + 's (step ' + step + ')' +
        (step === 'wait' ? '; missing: ' + missing.join(', ') : ''));
      e.name = 'Timeout';
      rejectWait(e);
    }, Math.round(a.timeout * 1000));
    // Run a step, or fail with the deadline / an async SDK error, whichever comes first.
    const race = (p) => Promise.race([p, waitDone.then(() => new Promise(() => {}))]);

    // Completion of the subscriptions the SDK starts by itself when a listener is added
    // (C2D, methods, desired properties). Wrapping the SDK's own calls changes nothing
    // on the wire; it only lets "ready" wait until the links/subscriptions are up.
    // Over MQTT they are always done before the telemetry PUBACK; over AMQP the
    // C2D/method/twin links attach concurrently with the telemetry link.
    const enabled = {};
    const track = (name, obj, method) => {
      let settle;
      enabled[name] = new Promise((res, rej) => { settle = (err) => (err ? rej(err) : res()); });
      enabled[name].catch(() => {});
      const orig = obj[method].bind(obj);
      obj[method] = (cb) => orig((err, ...rest) => {
        settle(err);
        if (cb) cb(err, ...rest);
      });
    };

    step = 'create';
    const client = Client.fromConnectionString(a['connection-string'], Transport);
    client.on('error', (e) => rejectWait(e));

    let options;
    if (x509Options) options = Object.assign({}, x509Options, ca !== undefined ? { ca: ca } : {});
    else if (ca !== undefined) options = { ca: ca };
    if (isHttp && options) {
      // azure-iot-device-http's setOptions only calls back when the options carry a
      // receive policy; this one equals the transport's default (poll every 1 s, drain).
      options.http = { receivePolicy: { interval: 1, drain: true } };
    }
    if (options !== undefined) {
      step = 'setOptions';
      await race(client.setOptions(options));
    }

    step = 'open';
    await race(client.open());

    let twin;
    if (!isHttp) {
      step = 'getTwin';
      twin = await race(client.getTwin());
      out.desired = JSON.parse(JSON.stringify(twin.properties.desired));
      twin.on('error', (e) => rejectWait(e));

      step = 'reportedUpdate';
      await race(new Promise((res, rej) => {
        twin.properties.reported.update({ telemetryDelay: 1 }, (err) => (err ? rej(err) : res()));
      }));
    }

    const onMessage = (msg) => {
      const first = !out.c2d;
      if (first) {
        const properties = propsToObject(msg.properties);
        out.c2d = {
          data: dataText(msg.data),
          properties: properties,
          messageId: msg.messageId === undefined ? null : msg.messageId,
        };
        if (isHttp) {
          // The HTTP transport keeps each header's full name as the property key
          // (iothub-app-priority); "properties" strips the prefix like the other transports.
          const stripped = {};
          for (const k of Object.keys(properties)) stripped[k.replace(/^iothub-app-/i, '')] = properties[k];
          out.c2d.properties = stripped;
          out.c2d.rawProperties = properties;
        }
        if (!isMqtt) out.c2dSettled = false;
      }
      const reject = first && rejectC2d;
      const settle = reject ? client.reject.bind(client) : client.complete.bind(client);
      settle(msg, (err) => {
        if (err) return rejectWait(err);
        if (first && !isMqtt) {
          out.c2dSettled = true;
          out.c2dSettlement = reject ? 'rejected' : 'completed';
        }
        check();
      });
    };

    if (!isHttp) {
      step = 'subscribe';
      track('c2d', client, '_enableC2D');
      track('methods', client, '_enableMethods');
      track('desired', twin, 'enableTwinDesiredPropertiesUpdates');
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
      client.on('message', onMessage);
    }

    // MQTT keeps order on one connection: the SUBSCRIBEs above are written
    // before this PUBLISH, so its PUBACK means the server has seen them.
    step = 'sendEvent';
    const m = new Message(JSON.stringify({ temperature: 30.5 }));
    m.properties.add('temperatureAlert', 'true');
    await race(client.sendEvent(m));
    out.sent = true;

    if (isHttp) {
      // Starts polling GET /devices/{id}/messages/devicebound every second.
      step = 'subscribe';
      track('c2d', client, '_enableC2D');
      client.on('message', onMessage);
    }

    step = 'subscribe';
    await race(Promise.all(Object.values(enabled)));

    step = 'wait';
    process.stderr.write(JSON.stringify({ ready: true }) + '\n');
    await waitDone;
    clearTimeout(deadline);

    step = 'close';
    await client.close();
    const res = Object.assign({}, out);
    delete res.c2dSettled;
    if (transport !== 'mqtt') res.transport = transport;
    if (isHttp) res.unsupported = ['twin', 'methods'];
    return res;
  }, (e) => {
    const done = Object.assign({}, out);
    delete done.c2dSettled;
    const extra = { step: step, done: done };
    if (transport !== 'mqtt') extra.transport = transport;
    return harness.errorJson(e, extra);
  });
}

main();

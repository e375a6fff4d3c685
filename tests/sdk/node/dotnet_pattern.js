#!/usr/bin/env node
'use strict';
// Replays, with a raw rhea 1.0.24 client, the AMQP pattern of the .NET device SDK
// (Microsoft.Azure.Devices.Client 1.42.x on Microsoft.Azure.Amqp 2.6.9,
// TransportType.Amqp with a SAS token), which cannot run here. See
// /work/shared/spec/azure-amqp-wire.md §2, §3, §4 and §6. In order:
//   TLS to host:port, plain AMQP header (no SASL), open (GUID container-id,
//   hostname, max-frame 65536, idle-time-out 120000)
//   -> device session -> separate CBS session: duplex sender/receiver on $cbs,
//      put-token (message-id "request1", reply-to = the receiver's GUID target,
//      type azure-devices.net:sastoken, name {host}/devices/{id}, expiration)
//   -> TelemetrySenderLink on amqps://{host}:{port}/devices/{id}/messages/events,
//      one Data message with a 16-byte GUID tag, must be Accepted
//   -> TwinReceiverLink + TwinSenderLink on .../devices/{id}/twin, bodiless PUT
//      (not awaited, as .NET does before its first GET) and bodiless GET
//      (correlation-id "Get{guid}"), the GET answer must carry int status 200 and
//      the twin JSON in a Data section
//   -> TelemetryReceiverLink on .../devices/{id}/messages/deviceBound
//      (rcv-settle-mode second, credit 50), {"ready":true} on stderr, then
//      --expect-c2d messages: each delivery tag must be 16 bytes (.NET does
//      new Guid(tag)); each is accepted and, in mode second, must be settled by
//      the server.
// The token comes ready-made (--sas-token); this script signs nothing.
// Prints exactly one JSON line on stdout; see harness.js and README.md.

const crypto = require('crypto');
const fs = require('fs');
const net = require('net');
const harness = require('./harness');

const USAGE = `usage: dotnet_pattern.js --host HOST [--port 5671] --device-id ID --sas-token TOKEN
                         [--ca FILE] [--expect-c2d N] [--timeout SECONDS] [--verbose]

  --host         server host: TCP/TLS target, TLS SNI (DNS names only), AMQP open
                 hostname, CBS audience {host}/devices/{id} and link addresses
                 amqps://{host}:{port}/devices/{id}/...
  --port         default 5671 (the .NET SDK cannot use another one).
  --device-id    device id (URL-encoded in addresses and the audience like
                 System.Net.WebUtility.UrlEncode).
  --sas-token    "SharedAccessSignature sr=..&sig=..&se=.." for the device; put on
                 $cbs as is; its se gives the "expiration" property.
  --ca           PEM file with the server CA (else NODE_EXTRA_CA_CERTS / system store).
  --expect-c2d   number of C2D messages to wait for after {"ready":true} (default 0).
  --timeout      overall deadline in seconds (default 30).
  --verbose      rhea's debug output on stderr (DEBUG=rhea*).
`;

const CLOSE_GRACE_S = 5;
const CLIENT_VERSION = 'Microsoft.Azure.Devices.Client/1.42.3 (muster dotnet_pattern.js replay)';
const API_VERSION = '2020-09-30';
const TOKEN_TYPE = 'azure-devices.net:sastoken';

const guid = () => crypto.randomUUID();
const guidN = () => guid().replace(/-/g, '');
const guidTag = () => Buffer.from(guidN(), 'hex'); // 16 bytes, like Guid.ToByteArray()

// System.Net.WebUtility.UrlEncode: unreserved [A-Za-z0-9-_.!*()], space -> '+',
// everything else %XX (upper case) of the UTF-8 bytes.
function netUrlEncode(s) {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    if (/[A-Za-z0-9\-_.!*()]/.test(c)) out += c;
    else if (c === ' ') out += '+';
    else out += '%' + b.toString(16).toUpperCase().padStart(2, '0');
  }
  return out;
}

// rhea's type names -> AMQP type names (SmallInt -> int, Uint0 -> uint, Str8 -> string, ...).
function amqpTypeName(n) {
  if (/^Str/.test(n)) return 'string';
  if (/^Sym/.test(n)) return 'symbol';
  if (/^Vbin/.test(n)) return 'binary';
  if (/^Map/.test(n)) return 'map';
  if (/^List/.test(n)) return 'list';
  if (/^Array/.test(n)) return 'array';
  if (n === 'True' || n === 'False' || n === 'Boolean') return 'boolean';
  return n.replace(/^Small/, '').replace(/0$/, '').toLowerCase();
}

// rhea decodes values to plain JS (an AMQP int, uint and long are all numbers), but
// .NET casts status-code to int and reads twin "status" as int, so the wire types
// matter. Re-read each received message's sections to keep them.
const wireTypes = new WeakMap();
function sectionTypes(types, buffer) {
  const info = { properties: {}, applicationProperties: {}, messageAnnotations: {}, body: null };
  const reader = new types.Reader(buffer);
  while (reader.remaining()) {
    const s = reader.read();
    const code = s.descriptor ? Number(s.descriptor.value) : NaN;
    if (code === 0x72 || code === 0x74) {
      const into = code === 0x72 ? info.messageAnnotations : info.applicationProperties;
      const v = Array.isArray(s.value) ? s.value : [];
      for (let i = 0; i + 1 < v.length; i += 2) into[String(v[i].value)] = amqpTypeName(v[i + 1].type.name);
    } else if (code === 0x73) {
      const v = Array.isArray(s.value) ? s.value : [];
      if (v[0]) info.properties.message_id = amqpTypeName(v[0].type.name);
      if (v[5]) info.properties.correlation_id = amqpTypeName(v[5].type.name);
    } else if (code === 0x75 || code === 0x76 || code === 0x77) {
      if (info.body === null) info.body = { 0x75: 'data', 0x76: 'amqp-sequence', 0x77: 'amqp-value' }[code];
    }
  }
  return info;
}
function installTypeCapture(rhea) {
  const mod = rhea.message; // the module object rhea's session.js calls decode() on
  const orig = mod.decode;
  mod.decode = function (buffer) {
    const msg = orig.apply(this, arguments);
    try { wireTypes.set(msg, sectionTypes(rhea.types, buffer)); } catch (_) { /* keep rhea's result */ }
    return msg;
  };
}
const typesOf = (msg) => wireTypes.get(msg) || { properties: {}, applicationProperties: {}, messageAnnotations: {}, body: null };

// A message with no body section at all (.NET AmqpMessage.Create()): rhea's
// wrap_body lets a body object contribute its own sections; this one adds none.
const NO_BODY = { collect_sections() {} };

function bodyBuffer(msg) {
  const b = msg.body;
  if (b && b.typecode === 0x75) return Buffer.isBuffer(b.content) ? b.content : Buffer.concat(b.content);
  if (Buffer.isBuffer(b)) return b;
  if (typeof b === 'string') return Buffer.from(b, 'utf8');
  return null;
}

function idText(rhea, id) {
  if (id === undefined || id === null) return null;
  if (Buffer.isBuffer(id)) return id.length === 16 ? rhea.uuid_to_string(id) : id.toString('hex');
  return String(id);
}

function amqpError(label, errobj, fallback) {
  const cond = errobj && errobj.condition ? errobj.condition : null;
  const desc = errobj && errobj.description ? errobj.description : null;
  const e = new Error(label + ': ' + (cond || fallback || 'closed') + (desc ? ' (' + desc + ')' : ''));
  e.name = 'AmqpError';
  if (cond) e.amqpError = { condition: cond, description: desc, info: errobj.info === undefined ? null : errobj.info };
  return e;
}

function main() {
  const userDebug = process.env.DEBUG;
  const a = harness.parseArgs({
    host: { type: 'string' },
    port: { type: 'string', default: '5671' },
    'device-id': { type: 'string' },
    'sas-token': { type: 'string' },
    ca: { type: 'string' },
    'expect-c2d': { type: 'string', default: '0' },
    timeout: { type: 'string', default: '30' },
  }, USAGE);
  if (a.verbose && !userDebug) process.env.DEBUG = 'rhea*';
  for (const f of ['host', 'device-id', 'sas-token']) if (!a[f]) harness.usage(USAGE, '--' + f + ' is required');
  const port = Number(a.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) harness.usage(USAGE, '--port must be a TCP port');
  const expectC2d = Number(a['expect-c2d']);
  if (!Number.isInteger(expectC2d) || expectC2d < 0) harness.usage(USAGE, '--expect-c2d must be a non-negative integer');
  const token = a['sas-token'];
  const se = /(?:^|[\s&?])se=(\d+)/.exec(token);
  if (!/^SharedAccessSignature /.test(token) || !se) {
    harness.usage(USAGE, '--sas-token must be "SharedAccessSignature sr=..&sig=..&se=<epoch seconds>"');
  }
  let ca;
  if (a.ca !== undefined) {
    try { ca = fs.readFileSync(a.ca); } catch (e) { harness.usage(USAGE, '--ca: ' + e.message); }
  }

  const host = a.host;
  const deviceId = a['device-id'];
  const encId = netUrlEncode(deviceId);
  const base = 'amqps://' + (net.isIPv6(host) ? '[' + host + ']' : host) + ':' + port;
  const addr = {
    telemetry: base + '/devices/' + encId + '/messages/events',
    twin: base + '/devices/' + encId + '/twin',
    c2d: base + '/devices/' + encId + '/messages/deviceBound',
  };
  const audience = host + '/devices/' + encId;
  const containerId = guidN();

  const out = {
    host: host,
    port: port,
    deviceId: deviceId,
    connection: { containerId: containerId, remoteContainerId: null, remoteIdleTimeOut: null, remoteMaxFrameSize: null },
    cbs: { audience: audience, statusCode: null, statusCodeType: null, statusDescription: null, correlationId: null, correlationIdType: null },
    telemetry: { address: addr.telemetry, outcome: null, tagLength: null },
    twin: { address: addr.twin, putStatus: null, putStatusType: null, status: null, statusType: null, correlationIdMatches: null, bodySection: null, body: null, desiredPushes: 0 },
    c2d: { address: addr.c2d, expected: expectC2d, rcvSettleMode: null, tagLengths: [], messages: [] },
    errors: [],
  };
  let step = 'init';
  let closing = false;

  harness.run(a.timeout + CLOSE_GRACE_S, async () => {
    const rhea = require('rhea');
    installTypeCapture(rhea);
    const T = rhea.types;

    let fail;
    const failed = new Promise((_, rej) => { fail = rej; });
    failed.catch(() => {});
    const deadline = setTimeout(() => {
      const e = new Error('no result within ' + a.timeout + 's (step ' + step + ')' +
        (step === 'c2d' ? '; C2D messages done ' + out.c2d.messages.filter((m) => m.done).length + ' of ' + expectC2d : ''));
      e.name = 'Timeout';
      fail(e);
    }, Math.round(a.timeout * 1000));
    // Wait for p, or fail with the deadline / an AMQP error, whichever comes first.
    const race = (p) => Promise.race([p, failed]);

    const container = rhea.create_container({ id: containerId });
    container.on('error', (e) => fail(e instanceof Error ? e : amqpError('container', e)));

    step = 'connect';
    const conn = container.connect({
      host: host,
      port: port,
      transport: 'tls',
      // SNI only for DNS names (an IP literal in SNI is not allowed, RFC 6066).
      servername: net.isIP(host) ? '' : host,
      ca: ca,
      reconnect: false,
      container_id: containerId,
      hostname: host,
      max_frame_size: 65536,
      idle_time_out: 120000,
      // No username/sasl_mechanisms: rhea then writes the plain AMQP header, no SASL.
    });
    const unexpected = (what) => (ctx) => {
      if (closing) return;
      const obj = ctx.sender || ctx.receiver || ctx.session || ctx.connection;
      const label = ctx.sender ? 'link ' + ctx.sender.name : ctx.receiver ? 'link ' + ctx.receiver.name :
        ctx.session ? 'session' : 'connection';
      fail(amqpError(label + ' ' + what, (obj && obj.error) || ctx.error, what));
    };
    for (const ev of ['connection_error', 'connection_close', 'session_error', 'session_close',
      'sender_error', 'sender_close', 'receiver_error', 'receiver_close']) {
      conn.on(ev, unexpected(ev));
    }
    conn.on('disconnected', (ctx) => {
      if (closing) return;
      const e = ctx.error instanceof Error ? ctx.error : amqpError('connection', ctx.error, 'disconnected');
      e.message = 'disconnected: ' + e.message;
      fail(e);
    });
    // Each wait only needs the "open" event: errors and closes reach conn's handlers.
    const opened = (obj, ev) => new Promise((res) => obj.once(ev, res));

    await race(opened(conn, 'connection_open'));
    out.connection.remoteContainerId = conn.container_id === undefined ? null : conn.container_id;
    out.connection.remoteIdleTimeOut = conn.idle_time_out === undefined ? null : conn.idle_time_out;
    out.connection.remoteMaxFrameSize = conn.max_frame_size === undefined ? null : conn.max_frame_size;

    const checkAttach = (link, label, serverSends) => {
      const r = link.remote.attach || {};
      if (r.source === undefined || r.source === null) out.errors.push(label + ': attach reply has no source');
      if (r.target === undefined || r.target === null) out.errors.push(label + ': attach reply has no target');
      if (serverSends && (r.initial_delivery_count === undefined || r.initial_delivery_count === null)) {
        out.errors.push(label + ': attach reply has no initial-delivery-count');
      }
    };
    const linkProps = (extra) => Object.assign({
      'com.microsoft:client-version': CLIENT_VERSION,
    }, extra || {}, { 'com.microsoft:api-version': API_VERSION });

    // 1. Device session first (AmqpUnit), then the CBS session (AmqpCbsLink).
    step = 'deviceSession';
    const deviceSession = conn.create_session();
    deviceSession.begin();
    await race(opened(deviceSession, 'session_open'));

    step = 'cbsSession';
    const cbsSession = conn.create_session();
    cbsSession.begin();
    await race(opened(cbsSession, 'session_open'));

    // RequestResponseAmqpLink("cbs", session, "$cbs", {com.microsoft:timeout}): both
    // links SettleOnSend (snd-settle-mode settled), receiver credit 50, reply address
    // = a GUID ("N") that is also the receiver's target.
    step = 'cbsAttach';
    const replyTo = guidN();
    const cbsProps = { 'com.microsoft:timeout': T.wrap_uint(60000) };
    const cbsSender = cbsSession.attach_sender({
      name: 'duplex1:2:3:sender',
      source: {},
      target: { address: '$cbs' },
      snd_settle_mode: 1,
      properties: cbsProps,
    });
    const cbsReceiver = cbsSession.attach_receiver({
      name: 'duplex1:2:3:receiver',
      source: { address: '$cbs' },
      target: { address: replyTo },
      snd_settle_mode: 1,
      credit_window: 50,
      autoaccept: true,
      properties: cbsProps,
    });
    await race(Promise.all([opened(cbsSender, 'sender_open'), opened(cbsReceiver, 'receiver_open')]));
    checkAttach(cbsSender, '$cbs sender', false);
    checkAttach(cbsReceiver, '$cbs receiver', true);

    step = 'putToken';
    const cbsReply = new Promise((res) => {
      cbsReceiver.on('message', (ctx) => {
        const m = ctx.message;
        // Microsoft.Azure.Amqp matches the reply by correlation-id == message-id
        // (same AMQP type); anything else is dropped.
        if (m.correlation_id === 'request1' && typesOf(m).properties.correlation_id === 'string') res(m);
        else out.cbs.unmatchedReplies = (out.cbs.unmatchedReplies || 0) + 1;
      });
    });
    cbsSender.send({
      message_id: 'request1',
      reply_to: replyTo,
      application_properties: {
        operation: 'put-token',
        type: TOKEN_TYPE,
        name: audience,
        expiration: new Date(Number(se[1]) * 1000),
      },
      body: token, // amqp-value string
    }, Buffer.alloc(0)); // AmqpConstants.EmptyBinary: SendMessageNoWait uses an empty tag
    const reply = await race(cbsReply);
    {
      const t = typesOf(reply);
      const ap = reply.application_properties || {};
      out.cbs.correlationId = reply.correlation_id;
      out.cbs.correlationIdType = t.properties.correlation_id || null;
      out.cbs.statusCode = ap['status-code'] === undefined ? null : ap['status-code'];
      out.cbs.statusCodeType = t.applicationProperties['status-code'] || null;
      out.cbs.statusDescription = ap['status-description'] === undefined ? null : ap['status-description'];
      const descType = t.applicationProperties['status-description'];
      if (out.cbs.statusCodeType !== 'int') {
        out.errors.push('$cbs reply: status-code is ' + (out.cbs.statusCodeType || 'missing') + ', .NET casts it to int');
      }
      if (descType !== undefined && descType !== 'string' && descType !== 'null') {
        out.errors.push('$cbs reply: status-description is ' + descType + ', .NET casts it to string');
      }
      if (out.cbs.statusCode !== 200 && out.cbs.statusCode !== 202) {
        const e = new Error('put-token refused: status-code ' + out.cbs.statusCode + ' ' + (out.cbs.statusDescription || ''));
        e.name = 'PutTokenError';
        throw e;
      }
    }

    // 2. Telemetry on the device session.
    step = 'telemetryAttach';
    const telemetry = deviceSession.attach_sender({
      name: 'TelemetrySenderLink',
      target: { address: addr.telemetry },
      source: { address: deviceId },
      properties: linkProps(),
    });
    await race(opened(telemetry, 'sender_open'));
    checkAttach(telemetry, 'telemetry sender', false);

    step = 'telemetry';
    const tTag = guidTag();
    out.telemetry.tagLength = tTag.length;
    const outcome = new Promise((res) => {
      let delivery;
      const done = (name) => (ctx) => {
        if (ctx.delivery !== delivery) return;
        const err = ctx.delivery.remote_state && ctx.delivery.remote_state.error;
        res({ outcome: name, error: err ? { condition: err.condition || null, description: err.description || null } : null });
      };
      for (const ev of ['accepted', 'rejected', 'released', 'modified']) telemetry.on(ev, done(ev));
      telemetry.on('settled', (ctx) => {
        if (ctx.delivery === delivery && !(ctx.delivery.remote_state && ctx.delivery.remote_state.constructor.composite_type)) {
          res({ outcome: 'settled-without-outcome', error: null });
        }
      });
      delivery = telemetry.send({
        body: rhea.message.data_section(Buffer.from(JSON.stringify({ temperature: 30.5 }), 'utf8')),
        application_properties: { temperatureAlert: 'true' },
      }, tTag);
    });
    const tr = await race(outcome);
    out.telemetry.outcome = tr.outcome;
    if (tr.error) out.telemetry.error = tr.error;
    if (tr.outcome !== 'accepted') out.errors.push('telemetry: outcome ' + tr.outcome + ', .NET throws unless Accepted');

    // 3. Twin: receiver and sender on the device session, both settled/first, one
    //    channel-correlation-id. GetTwinAsync sends the desired-properties PUT first
    //    (without awaiting its answer), then the GET.
    step = 'twinAttach';
    const twinChannel = 'twin:' + guid();
    const twinReceiver = deviceSession.attach_receiver({
      name: 'TwinReceiverLink',
      source: { address: addr.twin },
      target: { address: deviceId },
      snd_settle_mode: 1,
      rcv_settle_mode: 0,
      credit_window: 50,
      autoaccept: true,
      properties: linkProps({ 'com.microsoft:channel-correlation-id': twinChannel }),
    });
    const twinSender = deviceSession.attach_sender({
      name: 'TwinSenderLink',
      target: { address: addr.twin },
      source: { address: deviceId },
      snd_settle_mode: 1,
      rcv_settle_mode: 0,
      properties: linkProps({ 'com.microsoft:channel-correlation-id': twinChannel }),
    });
    await race(Promise.all([opened(twinReceiver, 'receiver_open'), opened(twinSender, 'sender_open')]));
    checkAttach(twinReceiver, 'twin receiver', true);
    checkAttach(twinSender, 'twin sender', false);

    step = 'twin';
    const putId = 'Put' + guid();
    const getId = 'Get' + guid();
    const twinGet = new Promise((res) => {
      twinReceiver.on('message', (ctx) => {
        const m = ctx.message;
        const t = typesOf(m);
        const ann = m.message_annotations || {};
        const corr = m.correlation_id === undefined || m.correlation_id === null ? null : m.correlation_id;
        if (corr === null) {
          out.twin.desiredPushes += 1; // desired-properties push
        } else if (corr === putId) {
          out.twin.putStatus = ann.status === undefined ? null : ann.status;
          out.twin.putStatusType = t.messageAnnotations.status || null;
        } else if (corr === getId) {
          res({ m: m, t: t });
        } else {
          out.twin.unmatchedResponses = (out.twin.unmatchedResponses || 0) + 1;
        }
      });
    });
    twinSender.send({
      correlation_id: putId,
      message_annotations: { operation: 'PUT', resource: '/notifications/twin/properties/desired', version: null },
      body: NO_BODY,
    }, guidTag());
    twinSender.send({
      correlation_id: getId,
      message_annotations: { operation: 'GET' },
      body: NO_BODY,
    }, guidTag());
    const got = await race(twinGet);
    {
      const ann = got.m.message_annotations || {};
      out.twin.status = ann.status === undefined ? null : ann.status;
      out.twin.statusType = got.t.messageAnnotations.status || null;
      out.twin.correlationIdMatches = got.t.properties.correlation_id === 'string';
      out.twin.bodySection = got.t.body;
      const buf = bodyBuffer(got.m);
      const text = buf === null ? null : buf.toString('utf8');
      try { out.twin.body = text === null ? null : JSON.parse(text); } catch (_) { out.twin.body = text; }
      if (out.twin.statusType !== 'int') out.errors.push('twin GET: status annotation is ' + (out.twin.statusType || 'missing') + ', must be int');
      if (out.twin.status !== 200) out.errors.push('twin GET: status ' + out.twin.status + ', expected 200');
      if (!out.twin.correlationIdMatches) out.errors.push('twin GET: correlation-id not echoed as a string');
      if (out.twin.bodySection !== 'data') out.errors.push('twin GET: body is ' + (out.twin.bodySection || 'missing') + ', must be a Data section');
      const b = out.twin.body;
      if (!b || typeof b !== 'object' || typeof b.desired !== 'object' || typeof b.reported !== 'object') {
        out.errors.push('twin GET: body is not {"desired":{..},"reported":{..}}');
      }
    }

    // 4. C2D: TelemetryReceiverLink, rcv-settle-mode second, prefetch 50.
    step = 'c2dAttach';
    const c2d = deviceSession.attach_receiver({
      name: 'TelemetryReceiverLink',
      source: { address: addr.c2d },
      target: { address: deviceId },
      rcv_settle_mode: 1,
      credit_window: 50,
      autoaccept: false,
      properties: linkProps(),
    });
    await race(opened(c2d, 'receiver_open'));
    checkAttach(c2d, 'C2D receiver', true);
    const remoteMode = c2d.remote.attach ? c2d.remote.attach.rcv_settle_mode : undefined;
    out.c2d.rcvSettleMode = remoteMode === undefined || remoteMode === null ? null : remoteMode;
    // Microsoft.Azure.Amqp takes the settle mode from the peer's attach: with
    // "second" the disposition goes unsettled and waits for the server to settle.
    const secondMode = remoteMode === 1;

    step = 'c2d';
    process.stderr.write(JSON.stringify({ ready: true }) + '\n');
    const c2dDone = new Promise((res) => {
      const check = () => {
        if (out.c2d.messages.filter((m) => m.done).length >= expectC2d) res();
      };
      const byDelivery = new Map();
      c2d.on('message', (ctx) => {
        const m = ctx.message;
        const tag = ctx.delivery.tag;
        const tagLength = Buffer.isBuffer(tag) ? tag.length : null;
        out.c2d.tagLengths.push(tagLength);
        const entry = {
          tagLength: tagLength,
          tag: Buffer.isBuffer(tag) ? tag.toString('hex') : null,
          messageId: idText(rhea, m.message_id),
          to: m.to === undefined ? null : m.to,
          data: (() => { const b = bodyBuffer(m); return b === null ? null : b.toString('utf8'); })(),
          properties: m.application_properties || {},
          preSettled: !!ctx.delivery.remote_settled,
          settledByServer: null,
          done: false,
        };
        out.c2d.messages.push(entry);
        if (tagLength !== 16) out.errors.push('C2D: delivery tag of ' + tagLength + ' bytes, .NET needs 16 (new Guid(tag))');
        byDelivery.set(ctx.delivery, entry);
        if (entry.preSettled || !secondMode) {
          ctx.delivery.update(true, rhea.message.accepted().described());
          entry.done = true;
        } else {
          ctx.delivery.update(false, rhea.message.accepted().described());
          entry.settledByServer = false;
        }
        check();
      });
      c2d.on('settled', (ctx) => {
        const entry = byDelivery.get(ctx.delivery);
        if (!entry || entry.done) return;
        entry.settledByServer = true;
        entry.done = true;
        ctx.delivery.settled = true;
        check();
      });
      check();
    });
    await race(c2dDone);
    clearTimeout(deadline);

    step = 'close';
    closing = true;
    await Promise.race([
      new Promise((res) => { conn.once('connection_close', res); conn.once('disconnected', res); conn.close(); }),
      new Promise((res) => setTimeout(res, 2000)),
    ]);
    step = 'checks';
    if (out.errors.length) {
      const e = new Error(out.errors.join('; '));
      e.name = 'ScenarioError';
      throw e;
    }
    return out;
  }, (e) => {
    const j = harness.errorJson(e, { step: step });
    const res = Object.assign(j, out);
    if (!(e && e.name === 'ScenarioError')) res.errors = out.errors.concat([harness.errMessage(e)]);
    return res;
  });
}

main();

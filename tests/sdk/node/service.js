#!/usr/bin/env node
'use strict';
// Two service-side scenarios with the official, unmodified service SDKs:
//
// --mode groups (default): scripted enrollment-group lifecycle with
// azure-iot-provisioning-service (ProvisioningServiceClient):
//   create -> get -> update (disable, with etag) -> [stale-etag update]
//   -> [attestation mechanism] -> query (paged) -> delete -> get (must fail)
//
// --mode c2d: one cloud-to-device message with azure-iothub's Client
// (Client.fromConnectionString(cs[, AmqpWs])):
//   open -> getFeedbackReceiver -> send(deviceId, message with ack) ->
//   {"sent":true,..} on stderr -> wait for a feedback batch that mentions the
//   message id -> close. A device (hub_device.js, dotnet_pattern.js, ...) has to
//   complete or reject the message meanwhile.
// Prints exactly one JSON line; see harness.js and README.md.

const crypto = require('crypto');
const harness = require('./harness');

const USAGE = `usage: service.js [--mode groups] --connection-string CS --group-id ID
                  (--ca-name NAME | --symmetric-key) [--page-size N]
                  [--timeout SECONDS] [--verbose]
       service.js --mode c2d --connection-string CS --device-id ID
                  [--transport amqp|amqp-ws] [--message-id ID] [--data TEXT]
                  [--prop KEY=VALUE ...] [--ack full|positive|negative]
                  [--timeout SECONDS] [--verbose]

--mode groups (DPS enrollment groups, azure-iot-provisioning-service):
  --connection-string  HostName=<host>;SharedAccessKeyName=..;SharedAccessKey=..
                       The SDK always uses HTTPS port 443 ("host:port" is NOT supported).
  --group-id           enrollment group id to create, then delete.
  --ca-name            X.509 group: attestation.x509.caReferences.primary = NAME
                       (a verified DPS CA certificate).
  --symmetric-key      symmetric-key group (empty keys sent; server generates them).
  --page-size          x-ms-max-item-count for the query (default 1, exercises paging).
--mode c2d (IoT Hub cloud-to-device message + feedback, azure-iothub Client):
  --connection-string  hub service policy: HostName=<host>;SharedAccessKeyName=..;SharedAccessKey=..
                       amqp: amqps://<host> (5671, or HostName=<host>:<port>);
                       amqp-ws: wss://<host>:443/$iothub/websocket (no port in HostName).
  --device-id          target device.
  --transport          amqp (default, the SDK's Amqp) or amqp-ws (AmqpWs).
  --message-id         default: a random UUID (the SDK sends UUID-shaped ids as AMQP uuid).
  --data               message body (default "hello").
  --prop               application property, repeatable (default priority=high).
  --ack                iothub-ack (default full).
  The whole run, feedback wait included, is bounded by --timeout (default 60).
Server CA: trust it with NODE_EXTRA_CA_CERTS=<data-dir>/tls/ca.pem (no "ca" option).
`;

const MAX_PAGES = 1000;

function brief(g) {
  const att = g && g.attestation ? g.attestation : {};
  const out = {
    enrollmentGroupId: g ? g.enrollmentGroupId : null,
    etag: g ? (g.etag === undefined ? null : g.etag) : null,
    provisioningStatus: g ? (g.provisioningStatus === undefined ? null : g.provisioningStatus) : null,
    attestationType: att.type === undefined ? null : att.type,
  };
  if (att.x509) out.caReference = att.x509.caReferences ? att.x509.caReferences.primary : null;
  if (att.symmetricKey) {
    out.keysGenerated = !!(att.symmetricKey.primaryKey && att.symmetricKey.secondaryKey);
  }
  return out;
}

function stepError(step, e, done) {
  return harness.errorJson(e, { step: step, done: done });
}

function main() {
  const a = harness.parseArgs({
    mode: { type: 'string', default: 'groups' },
    'connection-string': { type: 'string' },
    'group-id': { type: 'string' },
    'ca-name': { type: 'string' },
    'symmetric-key': { type: 'boolean' },
    'page-size': { type: 'string' },
    'device-id': { type: 'string' },
    transport: { type: 'string' },
    'message-id': { type: 'string' },
    data: { type: 'string' },
    prop: { type: 'string', multiple: true },
    ack: { type: 'string' },
  }, USAGE);
  if (!a['connection-string']) harness.usage(USAGE, '--connection-string is required');
  const only = (mode, flags) => {
    for (const f of flags) if (a[f] !== undefined) harness.usage(USAGE, '--' + f + ' is only for --mode ' + mode);
  };
  if (a.mode === 'c2d') {
    only('groups', ['group-id', 'ca-name', 'symmetric-key', 'page-size']);
    return c2dMain(a);
  }
  if (a.mode !== 'groups') harness.usage(USAGE, '--mode must be groups or c2d');
  only('c2d', ['device-id', 'transport', 'message-id', 'data', 'prop', 'ack']);
  if (a['page-size'] === undefined) a['page-size'] = '1';
  if (!a['group-id']) harness.usage(USAGE, '--group-id is required');
  if (!!a['ca-name'] === !!a['symmetric-key']) harness.usage(USAGE, 'give exactly one of --ca-name, --symmetric-key');
  const pageSize = Number(a['page-size']);
  if (!Number.isInteger(pageSize) || pageSize < 1) harness.usage(USAGE, '--page-size must be a positive integer');

  const id = a['group-id'];
  const out = {};
  let step = 'init';
  // Steps completed so far go into "done" on failure.
  const fail = (why, extra) => {
    const e = new Error(why);
    e.name = 'ScenarioError';
    throw Object.assign(e, { scenario: true, extra: extra || {} });
  };

  harness.run(a.timeout, async () => {
    const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
    const client = ProvisioningServiceClient.fromConnectionString(a['connection-string']);

    // 1. create
    step = 'create';
    const attestation = a['symmetric-key']
      ? { type: 'symmetricKey', symmetricKey: { primaryKey: '', secondaryKey: '' } }
      : { type: 'x509', x509: { caReferences: { primary: a['ca-name'] } } };
    const created = (await client.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: id,
      attestation: attestation,
      provisioningStatus: 'enabled',
    })).responseBody;
    out.created = brief(created);
    if (!created || created.enrollmentGroupId !== id) fail('create returned a different enrollmentGroupId', { got: created });
    if (!created.etag) fail('create returned no etag');

    // 2. get
    step = 'get';
    const got = (await client.getEnrollmentGroup(id)).responseBody;
    out.got = brief(got);
    if (!got || got.enrollmentGroupId !== id) fail('get returned a different enrollmentGroupId', { got: got });

    // 3. update: the object read back, with its etag (sent as If-Match), disabled.
    step = 'update';
    const upd = Object.assign({}, got, { provisioningStatus: 'disabled' });
    const updated = (await client.createOrUpdateEnrollmentGroup(upd)).responseBody;
    out.updated = brief(updated);
    if (!updated || updated.provisioningStatus !== 'disabled') fail('update did not return provisioningStatus=disabled', { got: updated });
    out.etagChanged = updated.etag !== got.etag;

    // 3b. (informational) stale etag: If-Match with the pre-update etag.
    step = 'staleEtagUpdate';
    try {
      await client.createOrUpdateEnrollmentGroup(Object.assign({}, got, { provisioningStatus: 'enabled' }));
      out.staleEtagUpdate = 'accepted';
      // put it back to disabled so later steps see a consistent state
      const cur = (await client.getEnrollmentGroup(id)).responseBody;
      await client.createOrUpdateEnrollmentGroup(Object.assign({}, cur, { provisioningStatus: 'disabled' }));
    } catch (e) {
      out.staleEtagUpdate = harness.errName(e);
      out.staleEtagStatus = harness.transportStatus(e);
    }

    // 3c. (informational) POST /enrollmentgroups/{id}/attestationmechanism
    step = 'attestationMechanism';
    try {
      const am = (await client.getEnrollmentGroupAttestationMechanism(id)).responseBody;
      out.attestationMechanism = am && am.type !== undefined ? am.type : null;
    } catch (e) {
      out.attestationMechanism = harness.errName(e);
      out.attestationMechanismStatus = harness.transportStatus(e);
    }

    // 4. query, paged until hasMoreResults is false
    step = 'query';
    const q = client.createEnrollmentGroupQuery({ query: '*' }, pageSize);
    let n = 0;
    let pages = 0;
    let found = false;
    while (q.hasMoreResults) {
      if (++pages > MAX_PAGES) fail('query did not finish after ' + MAX_PAGES + ' pages');
      // NOTE: the token is passed explicitly. In azure-iot-provisioning-service
      // 1.11.2 (dist/query.js) the promise form `q.next()` with no argument
      // overwrites the stored token with `undefined`, so it never sends
      // x-ms-continuation and re-reads page 1 forever (SDK bug, not muster's).
      // `q.next(token)` and the callback form `q.next(cb)` page correctly.
      const sent = q.continuationToken;
      const items = (await q.next(sent)).responseBody;
      if (q.hasMoreResults && sent && q.continuationToken === sent) {
        fail('server returned the same x-ms-continuation it was sent', { continuation: sent });
      }
      if (!Array.isArray(items)) fail('query page is not a JSON array', { got: items });
      if (items.length > pageSize) fail('query page has ' + items.length + ' items > page size ' + pageSize);
      n += items.length;
      for (const it of items) if (it && it.enrollmentGroupId === id) found = true;
    }
    out.queried = n;
    out.pages = pages;
    out.foundInQuery = found;
    if (!found) fail('group ' + id + ' missing from query results');

    // 5. delete
    step = 'delete';
    await client.deleteEnrollmentGroup(id);
    out.deleted = true;

    // 6. get after delete must fail
    step = 'getAfterDelete';
    let after;
    try {
      after = (await client.getEnrollmentGroup(id)).responseBody;
    } catch (e) {
      out.getAfterDelete = harness.errName(e);
      out.getAfterDeleteStatus = harness.transportStatus(e);
    }
    if (out.getAfterDelete === undefined) fail('get after delete succeeded', { got: brief(after) });
    return out;
  }, (e) => {
    const j = stepError(step, e, out);
    if (e && e.scenario) Object.assign(j, e.extra);
    return j;
  });
}

function parseProps(list) {
  const props = [];
  for (const p of list) {
    const i = p.indexOf('=');
    if (i <= 0) harness.usage(USAGE, '--prop must be KEY=VALUE, got ' + JSON.stringify(p));
    props.push([p.slice(0, i), p.slice(i + 1)]);
  }
  return props;
}

function bufferText(d) {
  if (d === undefined || d === null) return null;
  if (Buffer.isBuffer(d)) return d.toString('utf8');
  return typeof d === 'string' ? d : JSON.stringify(d);
}

function c2dMain(a) {
  if (!a['device-id']) harness.usage(USAGE, '--device-id is required');
  const transport = a.transport === undefined ? 'amqp' : a.transport;
  if (transport !== 'amqp' && transport !== 'amqp-ws') harness.usage(USAGE, '--transport must be amqp or amqp-ws');
  const ack = a.ack === undefined ? 'full' : a.ack;
  if (!['full', 'positive', 'negative'].includes(ack)) harness.usage(USAGE, '--ack must be full, positive or negative');
  const props = parseProps(a.prop === undefined ? ['priority=high'] : a.prop);
  const messageId = a['message-id'] !== undefined ? a['message-id'] : crypto.randomUUID();
  if (!messageId) harness.usage(USAGE, '--message-id must not be empty');
  const deviceId = a['device-id'];
  const data = a.data === undefined ? 'hello' : a.data;

  const out = {
    mode: 'c2d',
    transport: transport,
    deviceId: deviceId,
    messageId: messageId,
    ack: ack,
    sent: false,
    feedbackBatches: 0,
  };
  let step = 'init';
  // The feedback wait has its own deadline (so a timeout reports what did
  // arrive); harness.run's timer is only a backstop for a hanging close().
  const CLOSE_GRACE_S = 5;

  harness.run(a.timeout + CLOSE_GRACE_S, async () => {
    const { Client, AmqpWs } = require('azure-iothub');
    // azure-iothub exports no Message; the Client checks constructor.name === 'Message'
    // and this is the class its own AMQP code reads.
    const { Message } = require('azure-iothub/dist/common-core/message');

    let resolveFeedback;
    let rejectFeedback;
    const feedback = new Promise((res, rej) => { resolveFeedback = res; rejectFeedback = rej; });
    feedback.catch(() => {});
    const deadline = setTimeout(() => {
      const e = new Error('no result within ' + a.timeout + 's (step ' + step + ')' +
        (step === 'waitFeedback' ? '; no feedback record with originalMessageId ' + messageId : ''));
      e.name = 'Timeout';
      rejectFeedback(e);
    }, Math.round(a.timeout * 1000));
    const race = (p) => Promise.race([p, feedback.then(() => new Promise(() => {}))]);

    step = 'create';
    // No transport argument = the SDK default (Amqp), exactly as an application would.
    const client = transport === 'amqp-ws'
      ? Client.fromConnectionString(a['connection-string'], AmqpWs)
      : Client.fromConnectionString(a['connection-string']);
    client.on('error', (e) => rejectFeedback(e));

    step = 'open';
    await race(client.open());

    step = 'getFeedbackReceiver';
    const receiver = (await race(client.getFeedbackReceiver())).result;
    receiver.on('error', (e) => rejectFeedback(e));
    receiver.on('message', (msg) => {
      // The SDK's receiver accepts every feedback message by itself (autoSettleMessages).
      out.feedbackBatches += 1;
      const text = bufferText(msg.data);
      let records;
      try {
        records = JSON.parse(text);
      } catch (_) {
        out.unparsedFeedback = (out.unparsedFeedback || []).concat([text]);
        return;
      }
      if (!Array.isArray(records)) {
        out.unparsedFeedback = (out.unparsedFeedback || []).concat([text]);
        return;
      }
      const record = records.find((r) => r && r.originalMessageId === messageId);
      if (record && !out.record) {
        out.feedback = records;
        out.record = record;
        out.feedbackContentType = msg.contentType === undefined ? null : msg.contentType;
        resolveFeedback();
      }
    });

    step = 'send';
    const m = new Message(data);
    m.messageId = messageId;
    m.ack = ack;
    for (const [k, v] of props) m.properties.add(k, v);
    await race(client.send(deviceId, m));
    out.sent = true;
    process.stderr.write(JSON.stringify({ sent: true, messageId: messageId }) + '\n');

    step = 'waitFeedback';
    await feedback;
    clearTimeout(deadline);

    step = 'close';
    await client.close();
    return out;
  }, (e) => harness.errorJson(e, { step: step, done: out }));
}

main();

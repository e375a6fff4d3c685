#!/usr/bin/env node
'use strict';
// Scripted device-identity lifecycle with the official, unmodified
// azure-iothub SDK (Registry.fromConnectionString):
//   create -> get -> list -> getTwin -> twin.update (desired) -> delete
//   -> get (must fail with DeviceNotFoundError)
// Prints exactly one JSON line; see harness.js and README.md.

const harness = require('./harness');

const USAGE = `usage: registry.js --connection-string CS [--device-id ID] [--timeout SECONDS] [--verbose]

  --connection-string  HostName=<host>;SharedAccessKeyName=..;SharedAccessKey=..
                       The SDK always uses HTTPS port 443 ("host:port" is NOT supported).
  --device-id          device to create, then delete (default node-reg-1).
  --timeout            overall deadline in seconds (default 30).
Server CA: trust it with NODE_EXTRA_CA_CERTS=<data-dir>/tls/ca.pem.
`;

const DESIRED = { telemetryDelay: '3' };

function briefDevice(d) {
  if (!d) return null;
  const auth = d.authentication || {};
  const sym = auth.symmetricKey || {};
  return {
    deviceId: d.deviceId === undefined ? null : d.deviceId,
    etag: d.etag === undefined ? null : d.etag,
    status: d.status === undefined ? null : d.status,
    authType: auth.type === undefined ? null : auth.type,
    keysGenerated: !!(sym.primaryKey && sym.secondaryKey),
  };
}

function briefTwin(t) {
  if (!t) return null;
  const p = t.properties || {};
  let desired = p.desired === undefined ? null : p.desired;
  if (desired && typeof desired === 'object') {
    desired = Object.assign({}, desired);
    delete desired.$metadata;
  }
  return {
    deviceId: t.deviceId === undefined ? null : t.deviceId,
    etag: t.etag === undefined ? null : t.etag,
    desired: desired,
    reportedVersion: p.reported && p.reported.$version !== undefined ? p.reported.$version : null,
  };
}

function main() {
  const a = harness.parseArgs({
    'connection-string': { type: 'string' },
    'device-id': { type: 'string', default: 'node-reg-1' },
    timeout: { type: 'string', default: '30' },
  }, USAGE);
  if (!a['connection-string']) harness.usage(USAGE, '--connection-string is required');

  const id = a['device-id'];
  const out = {};
  let step = 'init';
  const fail = (why, extra) => {
    const e = new Error(why);
    e.name = 'ScenarioError';
    throw Object.assign(e, { scenario: true, extra: extra || {} });
  };

  harness.run(a.timeout, async () => {
    const { Registry } = require('azure-iothub');
    const registry = Registry.fromConnectionString(a['connection-string']);

    // 1. create (server generates the SAS keys)
    step = 'create';
    const created = (await registry.create({ deviceId: id })).responseBody;
    out.created = briefDevice(created);
    if (!created || created.deviceId !== id) fail('create returned a different deviceId', { got: created });
    if (!out.created.keysGenerated) fail('create returned no symmetric keys', { got: out.created });

    // 2. get
    step = 'get';
    const got = (await registry.get(id)).responseBody;
    out.got = briefDevice(got);
    if (!got || got.deviceId !== id) fail('get returned a different deviceId', { got: got });

    // 3. list
    step = 'list';
    const list = (await registry.list()).responseBody;
    if (!Array.isArray(list)) fail('list did not return a JSON array', { got: list });
    out.listed = list.length;
    out.foundInList = list.some((d) => d && d.deviceId === id);
    if (!out.foundInList) fail('device ' + id + ' missing from list');

    // 4. getTwin: a Twin object bound to the registry
    step = 'getTwin';
    const twin = (await registry.getTwin(id)).responseBody;
    out.twin = briefTwin(twin);
    if (!twin || twin.deviceId !== id) fail('getTwin returned a different deviceId', { got: out.twin });
    if (typeof twin.update !== 'function') fail('getTwin did not resolve to a Twin object');

    // 5. twin.update -> PATCH /twins/{id} with If-Match: <twin etag>
    step = 'updateTwin';
    const before = twin.etag;
    // NOTE: Twin.update resolves {result: <the same Twin, refreshed>, message},
    // unlike the Registry methods ({responseBody, httpResponse}).
    const updated = (await twin.update({ properties: { desired: DESIRED } })).result;
    out.updated = briefTwin(updated);
    const d = updated && updated.properties ? updated.properties.desired : null;
    if (!d || d.telemetryDelay !== DESIRED.telemetryDelay) fail('updated twin lacks desired.telemetryDelay="3"', { got: out.updated });
    out.etagChanged = updated.etag !== before;

    // 6. delete
    step = 'delete';
    await registry.delete(id);
    out.deleted = true;

    // 7. get after delete must fail with DeviceNotFoundError
    step = 'getAfterDelete';
    let after;
    try {
      after = (await registry.get(id)).responseBody;
    } catch (e) {
      out.getAfterDelete = harness.errName(e);
      out.getAfterDeleteStatus = harness.transportStatus(e);
    }
    if (out.getAfterDelete === undefined) fail('get after delete succeeded', { got: briefDevice(after) });
    if (out.getAfterDelete !== 'DeviceNotFoundError') fail('get after delete failed with ' + out.getAfterDelete + ', not DeviceNotFoundError');
    return out;
  }, (e) => {
    const j = harness.errorJson(e, { step: step, done: out });
    if (e && e.scenario) Object.assign(j, e.extra);
    return j;
  });
}

main();

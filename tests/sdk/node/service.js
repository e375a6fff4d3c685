#!/usr/bin/env node
'use strict';
// Scripted enrollment-group lifecycle with the official, unmodified
// azure-iot-provisioning-service SDK (ProvisioningServiceClient):
//   create -> get -> update (disable, with etag) -> [stale-etag update]
//   -> [attestation mechanism] -> query (paged) -> delete -> get (must fail)
// Prints exactly one JSON line; see harness.js and README.md.

const harness = require('./harness');

const USAGE = `usage: service.js --connection-string CS --group-id ID
                  (--ca-name NAME | --symmetric-key) [--page-size N]
                  [--timeout SECONDS] [--verbose]

  --connection-string  HostName=<host>;SharedAccessKeyName=..;SharedAccessKey=..
                       The SDK always uses HTTPS port 443 ("host:port" is NOT supported).
  --group-id           enrollment group id to create, then delete.
  --ca-name            X.509 group: attestation.x509.caReferences.primary = NAME
                       (a verified DPS CA certificate).
  --symmetric-key      symmetric-key group (empty keys sent; server generates them).
  --page-size          x-ms-max-item-count for the query (default 1, exercises paging).
Server CA: trust it with NODE_EXTRA_CA_CERTS=<data-dir>/tls/ca.pem.
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
    'connection-string': { type: 'string' },
    'group-id': { type: 'string' },
    'ca-name': { type: 'string' },
    'symmetric-key': { type: 'boolean' },
    'page-size': { type: 'string', default: '1' },
  }, USAGE);
  if (!a['connection-string']) harness.usage(USAGE, '--connection-string is required');
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

main();

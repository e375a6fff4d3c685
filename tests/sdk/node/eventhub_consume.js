'use strict';
// Read muster's built-in endpoint with the official, unmodified @azure/event-hubs
// EventHubConsumerClient, from the eventHubsConnectionString that `muster info --json` prints.
// Trust the server's CA with NODE_EXTRA_CA_CERTS (the SDK has no option for it).
//
//   --properties        print the hub's and every partition's properties
//   --count N           receive until N events arrived (every partition, or --partition)
//   --start S           earliest | latest | seq:N | offset:X | time:MS
//   --inclusive         the start position itself is included (seq and offset)
//   --owner-level E     an epoch receiver
//   --hold SECONDS      keep the subscription this long after the count was reached
//
// One JSON line: {"ok":true,"events":[...],"errors":[...]} or {"ok":false,...}; each error
// carries the SDK's code (e.g. ReceiverDisconnectedError, MessagingEntityNotFoundError).
const h = require('./harness');

const USAGE = 'usage: node eventhub_consume.js --connection-string CS [--consumer-group G] [--partition P]\n' +
  '  [--start earliest|latest|seq:N|offset:X|time:MS] [--inclusive] [--owner-level E] [--count N]\n' +
  '  [--hold S] [--properties] [--timeout S]\n';

const a = h.parseArgs({
  'connection-string': { type: 'string' },
  'consumer-group': { type: 'string', default: '$Default' },
  partition: { type: 'string' },
  start: { type: 'string', default: 'earliest' },
  inclusive: { type: 'boolean', default: false },
  'owner-level': { type: 'string' },
  count: { type: 'string', default: '1' },
  hold: { type: 'string', default: '0' },
  properties: { type: 'boolean', default: false },
  'stop-on-error': { type: 'boolean', default: false },
  timeout: { type: 'string', default: '30' },
}, USAGE);
if (!a['connection-string']) h.usage(USAGE, '--connection-string is required');

const { EventHubConsumerClient, earliestEventPosition, latestEventPosition } = require('@azure/event-hubs');

function position(start, inclusive) {
  if (start === 'earliest') return earliestEventPosition;
  if (start === 'latest') return latestEventPosition;
  const [kind, value] = [start.slice(0, start.indexOf(':')), start.slice(start.indexOf(':') + 1)];
  if (kind === 'seq') return { sequenceNumber: Number(value), isInclusive: inclusive };
  if (kind === 'offset') return { offset: value, isInclusive: inclusive };
  if (kind === 'time') return { enqueuedOn: new Date(Number(value)) };
  h.usage(USAGE, 'unknown start ' + start);
  return null;
}

function plain(v) {
  if (v instanceof Date) return v.getTime();
  if (Buffer.isBuffer(v)) return v.toString('utf8');
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) out[k] = plain(x);
    return out;
  }
  return v;
}

h.run(Number(a.timeout) + 15, async () => {
  const client = new EventHubConsumerClient(a['consumer-group'], a['connection-string']);
  if (a.properties) {
    const hub = await client.getEventHubProperties();
    const partitions = {};
    for (const id of hub.partitionIds) partitions[id] = plain(await client.getPartitionProperties(id));
    await client.close();
    return { properties: { hub: plain(hub), partitions } };
  }
  const events = [];
  const errors = [];
  const want = Number(a.count);
  let resolveDone;
  const done = new Promise((r) => { resolveDone = r; });
  const handlers = {
    processEvents: async (batch, context) => {
      for (const e of batch) {
        events.push({
          partition: context.partitionId,
          sequenceNumber: e.sequenceNumber,
          offset: e.offset,
          enqueuedTime: e.enqueuedTimeUtc.getTime(),
          body: typeof e.body === 'string' || Buffer.isBuffer(e.body) ? plain(e.body) : JSON.stringify(e.body),
          properties: plain(e.properties || {}),
          systemProperties: plain(e.systemProperties || {}),
          messageId: e.messageId === undefined ? null : e.messageId,
          contentType: e.contentType === undefined ? null : e.contentType,
        });
      }
      if (events.length >= want) resolveDone();
    },
    processError: async (err, context) => {
      errors.push({ partition: context ? context.partitionId : null, error: err.name, code: err.code || null, message: err.message });
      if (a['stop-on-error']) resolveDone();
    },
  };
  const options = { startPosition: position(a.start, a.inclusive), maxBatchSize: 50, maxWaitTimeInSeconds: 1 };
  if (a['owner-level'] !== undefined) options.ownerLevel = Number(a['owner-level']);
  const subscription = a.partition !== undefined
    ? client.subscribe(a.partition, handlers, options)
    : client.subscribe(handlers, options);
  await Promise.race([done, new Promise((r) => setTimeout(r, Number(a.timeout) * 1000))]);
  if (Number(a.hold) > 0) await new Promise((r) => setTimeout(r, Number(a.hold) * 1000));
  await subscription.close();
  await client.close();
  if (events.length < want && !a['stop-on-error']) {
    return Promise.reject(Object.assign(new Error(events.length + ' of ' + want + ' events in ' + a.timeout + ' s; errors: ' + JSON.stringify(errors)), { name: 'Timeout' }));
  }
  return { events, errors };
});

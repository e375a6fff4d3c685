'use strict';
// Benchmark helper: read every partition from the start until --count events arrived; print the
// rate. One JSON line: {"ok":true,"received":N,"seconds":S,"ratePerSec":R}.
const h = require('./harness');
const a = h.parseArgs({
  'connection-string': { type: 'string' },
  count: { type: 'string', default: '100000' },
  timeout: { type: 'string', default: '300' },
}, 'usage: node eventhub_count.js --connection-string CS --count N\n');
const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
h.run(Number(a.timeout), async () => {
  const client = new EventHubConsumerClient('$Default', a['connection-string']);
  const want = Number(a.count);
  let received = 0;
  let first = 0;
  let done;
  const finished = new Promise((r) => { done = r; });
  const sub = client.subscribe({
    processEvents: async (batch) => {
      if (!first && batch.length) first = Date.now();
      received += batch.length;
      if (received >= want) done();
    },
    processError: async () => {},
  }, { startPosition: earliestEventPosition, maxBatchSize: 1000, maxWaitTimeInSeconds: 1 });
  await finished;
  const seconds = (Date.now() - first) / 1000;
  await sub.close();
  await client.close();
  return { received, seconds, ratePerSec: received / seconds };
});

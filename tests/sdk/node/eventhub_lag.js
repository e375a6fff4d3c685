'use strict';
// Benchmark helper (bench/eventhubs.sh): one @azure/event-hubs consumer reads every partition
// from the latest position for --seconds, and once a second compares what it has received with
// what the partitions hold (getPartitionProperties), so the lag is measured, not guessed.
// Trust the server's CA with NODE_EXTRA_CA_CERTS.
//
// One JSON line: {"ok":true,"received":N,"ratePerSec":…,"maxLag":…,"finalLag":…,"lagSamples":[…]}
const h = require('./harness');

const USAGE = 'usage: node eventhub_lag.js --connection-string CS --seconds S [--drain S]\n';
const a = h.parseArgs({
  'connection-string': { type: 'string' },
  seconds: { type: 'string', default: '30' },
  drain: { type: 'string', default: '5' },
  timeout: { type: 'string', default: '600' },
}, USAGE);
if (!a['connection-string']) h.usage(USAGE, '--connection-string is required');

const { EventHubConsumerClient, latestEventPosition } = require('@azure/event-hubs');

h.run(Number(a.timeout), async () => {
  const client = new EventHubConsumerClient('$Default', a['connection-string']);
  const ids = await client.getPartitionIds();
  const last = {};
  let received = 0;
  const subscription = client.subscribe({
    processEvents: async (batch, context) => {
      received += batch.length;
      if (batch.length) last[context.partitionId] = batch[batch.length - 1].sequenceNumber;
    },
    processError: async () => {},
  }, { startPosition: latestEventPosition, maxBatchSize: 300, maxWaitTimeInSeconds: 1 });
  // What each partition held when we began: the lag counts only events after it.
  const base = {};
  for (const id of ids) base[id] = (await client.getPartitionProperties(id)).lastEnqueuedSequenceNumber;
  const lag = async () => {
    let total = 0;
    for (const id of ids) {
      const p = await client.getPartitionProperties(id);
      const seen = last[id] !== undefined ? last[id] : base[id];
      total += Math.max(0, p.lastEnqueuedSequenceNumber - seen);
    }
    return total;
  };
  const samples = [];
  const began = Date.now();
  while (Date.now() - began < Number(a.seconds) * 1000) {
    await new Promise((r) => setTimeout(r, 1000));
    samples.push(await lag());
  }
  const readSeconds = (Date.now() - began) / 1000;
  const receivedDuring = received;
  // The producers have stopped by now: how long until the consumer has everything?
  const drainStart = Date.now();
  let finalLag = await lag();
  while (finalLag > 0 && Date.now() - drainStart < Number(a.drain) * 1000) {
    await new Promise((r) => setTimeout(r, 200));
    finalLag = await lag();
  }
  const drainMs = Date.now() - drainStart;
  await subscription.close();
  await client.close();
  return {
    received,
    ratePerSec: receivedDuring / readSeconds,
    maxLag: Math.max(0, ...samples),
    finalLag,
    drainMs,
    lagSamples: samples,
  };
});

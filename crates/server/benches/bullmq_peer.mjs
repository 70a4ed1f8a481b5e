// The BullMQ 5 side of the queue bench (crates/server/benches/queue.rs), our own driver of
// BullMQ's public API. The bench copies this file next to its own `npm install` of `bullmq@5`
// (under the cargo target directory) and runs it with Node:
//
//   node bullmq_peer.mjs --redis redis://127.0.0.1:PORT/ --queue NAME --warmup 0.5 --measure 3
//       [--prefix P] [--in-flight 64] [--workers 4] [--concurrency 100] [--backlog 20000]
//       [--remove-on-complete]
//
// The same flow as the bench's Tollgate phases: `in-flight` loops each keep one `Queue.add` in
// flight (pausing while more than `backlog` jobs are added and not completed), `workers`
// `Worker`s with `concurrency` each, a rate limiter no job reaches, and a processor that does
// nothing. Completed jobs are kept (BullMQ's default) unless `--remove-on-complete` is given,
// which adds every job with `removeOnComplete: true`.
//
// It talks to the bench over stdout, one JSON object a line: `{"event":"measuring"}` when the
// measured window starts (after the warm-up), then `{"event":"done", "completed", "added",
// "secs", "cpu_secs"}` when it ends (jobs completed and added within the window, its length,
// and this process's CPU seconds over it); then it stops and exits.

import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, Worker } from 'bullmq';

const { values: opt } = parseArgs({
  options: {
    redis: { type: 'string' },
    queue: { type: 'string' },
    prefix: { type: 'string', default: 'bull' },
    warmup: { type: 'string', default: '0.5' },
    measure: { type: 'string', default: '3' },
    'in-flight': { type: 'string', default: '64' },
    workers: { type: 'string', default: '4' },
    concurrency: { type: 'string', default: '100' },
    backlog: { type: 'string', default: '20000' },
    'remove-on-complete': { type: 'boolean', default: false },
  },
});
if (!opt.redis || !opt.queue) {
  console.error('usage: node bullmq_peer.mjs --redis URL --queue NAME [--warmup S] [--measure S] ...');
  process.exit(2);
}

const url = new URL(opt.redis);
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  username: url.username ? decodeURIComponent(url.username) : undefined,
  password: url.password ? decodeURIComponent(url.password) : undefined,
  db: Number(url.pathname.slice(1) || 0),
};
const common = { connection, prefix: opt.prefix };
const inFlight = Number(opt['in-flight']);
const backlog = Number(opt.backlog);
const jobOptions = opt['remove-on-complete'] ? { removeOnComplete: true } : {};

const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

let added = 0;
let completed = 0;
let stop = false;

const queue = new Queue(opt.queue, common);
const workers = [];
for (let i = 0; i < Number(opt.workers); i++) {
  const worker = new Worker(opt.queue, async () => {}, {
    ...common,
    autorun: false,
    concurrency: Number(opt.concurrency),
    // A limit no job reaches, so that every job passes the limiter's check.
    limiter: { max: 100_000_000, duration: 1000 },
  });
  worker.on('completed', () => {
    completed += 1;
  });
  worker.on('error', (e) => console.error(`worker ${i}: ${e?.stack ?? e}`));
  workers.push(worker);
}
await queue.waitUntilReady();
await Promise.all(workers.map((w) => w.waitUntilReady()));

const running = workers.map((w) => w.run());
const producers = Array.from({ length: inFlight }, async () => {
  while (!stop) {
    if (added - completed > backlog) {
      await sleep(1);
      continue;
    }
    await queue.add('bench', { n: 1 }, jobOptions);
    added += 1;
  }
});

await sleep(Number(opt.warmup) * 1000);
const c0 = completed;
const a0 = added;
const cpu0 = process.cpuUsage();
const t0 = performance.now();
emit({ event: 'measuring' });
await sleep(Number(opt.measure) * 1000);
const c1 = completed;
const a1 = added;
const secs = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
emit({
  event: 'done',
  completed: c1 - c0,
  added: a1 - a0,
  secs,
  cpu_secs: (cpu.user + cpu.system) / 1e6,
});

// Stop: the producers finish their add, the workers close without waiting for active jobs.
stop = true;
const closed = (async () => {
  await Promise.all(producers);
  await Promise.all(workers.map((w) => w.close(true)));
  await Promise.all(running);
  await queue.close();
})();
await Promise.race([closed, sleep(5000)]);
process.exit(0);

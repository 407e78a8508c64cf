// First per-fault overhead numbers of the FaultHandler modes against the C
// reference of scripts/loop-overhead.c, in the same run. The latency is what
// the faulting thread sees (native toucher thread, timed around each touch).
// Usage: node scripts/loop-overhead.js [pages] [runs]
'use strict';
require('./usage').answerHelp(__filename);
const { execFileSync } = require('node:child_process');
const { join } = require('node:path');
const { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require('../dist/lib/index.js');

const pages = Number(process.argv[2] ?? 4096);
const runs = Number(process.argv[3] ?? 3);
const exe = join(__dirname, '..', 'build', 'loop-overhead');
execFileSync('cc', ['-O2', '-pthread', '-o', exe, join(__dirname, 'loop-overhead.c')]);

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((sorted.length * p) / 100))];
function summary(latencyNs) {
  const us = Float64Array.from(latencyNs, (n) => n / 1000).sort();
  return { p50: +pct(us, 50).toFixed(2), p90: +pct(us, 90).toFixed(2), p99: +pct(us, 99).toFixed(2) };
}

async function measure(mode, present) {
  const mem = Memfd.create(pages * PAGE_SIZE, { allocate: true });
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  const guest = mem.map();
  const page = Buffer.alloc(PAGE_SIZE, 1);
  const handler = new FaultHandler(uffd, { memfd: mem, mode, fetch: (f) => void mem.write(f.offset, page) });
  handler.attach(guest);
  if (present) handler.present.mark(0, pages * PAGE_SIZE);
  handler.start();
  const report = await touchPages(guest, Array.from({ length: pages }, (_, i) => i));
  await handler.stop();
  const stats = handler.stats();
  uffd.close();
  mem.close();
  return { ...summary(report.latencyNs), handlerP50: stats.latencyUs.p50 };
}

async function main() {
  const rows = {};
  const add = (name, r) => (rows[name] ??= []).push(r);
  for (let run = 0; run < runs; run++) {
    add('C reference (poll+read+CONTINUE thread)', JSON.parse(execFileSync(exe, [String(pages)], { encoding: 'utf8' })));
    add('event-loop, page present (no fetch)', await measure('event-loop', true));
    add('event-loop, sync fetch (memfd.write)', await measure('event-loop', false));
    add('native, page present (no JS)', await measure('native', true));
    add('native, sync fetch in JS', await measure('native', false));
  }
  for (const [name, list] of Object.entries(rows)) {
    const med = (k) => list.map((r) => r[k]).sort((a, b) => a - b)[Math.floor(list.length / 2)];
    console.log(`${name.padEnd(42)} toucher p50 ${String(med('p50')).padStart(7)} µs  p90 ${String(med('p90')).padStart(7)} µs  p99 ${String(med('p99')).padStart(8)} µs`);
  }
}
main().catch((err) => {
  console.error(err);
  process.exit(1);
});

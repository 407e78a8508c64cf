#!/usr/bin/env node
// Soak: resolves a large number of real MINOR faults through each way of
// serving them, and checks that descriptors, threads and RSS do not grow.
//
//   node scripts/soak.js [--faults N] [--pages P] [--modes raw,event-loop,native]
//                        [--rss-bound-mib M] [--remove-events] [--json]
//
// Each round a native toucher thread reads the first byte of every page of a
// registered view (P faults, bytes checked), then MADV_DONTNEED on the view
// drops the PTEs while the pages stay in the memfd's page cache, so the next
// round faults MINOR again at the cost of one madvise. The uffd is opened
// without eventRemove, so the madvise raises no event. With --remove-events
// it is opened with eventRemove (native mode only: from the event-loop the
// madvise would wait forever for its own REMOVE to be read, which the library
// refuses with ERR_UFFD_WOULD_DEADLOCK); each REMOVE then clears the present
// bits and every page is fetched again.
//
// Modes: `raw` reads with readEvents() and resolves with continue() from
// JavaScript; `event-loop` and `native` are FaultHandler's two modes.
// Measured after a warm-up round and again at the end (after a GC when
// --expose-gc is on): open descriptors, threads (/proc/self/task), RSS.
// Bounds: descriptors and threads must come back exactly (during the run and
// after teardown); RSS may grow by at
// most --rss-bound-mib (default 32 MiB) per mode. Exit status 1 if any is broken.
'use strict';
require('./usage').answerHelp(__filename);
const { readdirSync, readFileSync } = require('node:fs');
const { join } = require('node:path');

const lib = require(join(__dirname, '..', 'dist', 'lib', 'index.js'));
const { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = lib;

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const flag = (name) => args.includes(`--${name}`);
const totalFaults = Number(opt('faults', '1000000'));
const pages = Number(opt('pages', '1024'));
const modes = opt('modes', 'raw,event-loop,native').split(',');
const rssBoundMiB = Number(opt('rss-bound-mib', '32'));
const removeEvents = flag('remove-events');
const asJson = flag('json');

const fdCount = () => readdirSync('/proc/self/fd').length;
const threadCount = () => readdirSync('/proc/self/task').length;
const rssKiB = () => Number(/^VmRSS:\s+(\d+)/m.exec(readFileSync('/proc/self/status', 'utf8'))[1]);
const snapshot = () => {
  if (global.gc) global.gc();
  return { fds: fdCount(), threads: threadCount(), rssKiB: rssKiB() };
};
const log = (...a) => { if (!asJson) console.log(...a); };

function fill(mem) {
  for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, Buffer.alloc(1, (p % 251) + 1));
}
const expectedChecksum = (() => {
  let sum = 0;
  for (let p = 0; p < pages; p++) sum += (p % 251) + 1;
  return sum;
})();
const allPages = Uint32Array.from({ length: pages }, (_, i) => i);

/** One mode: returns the faults resolved and the measurements. */
async function soak(mode) {
  const pre = snapshot();
  const mem = Memfd.create(pages * PAGE_SIZE, { name: `soak-${mode}` });
  fill(mem);
  const view = mem.map();
  const features = ['minorShmem', 'threadId', ...(removeEvents ? ['eventRemove'] : [])];
  const uffd = Userfaultfd.open({ features });
  let handler;
  let rawFaults = 0;
  let serving = false;
  if (mode === 'raw') {
    uffd.register(view, { minor: true });
  } else {
    handler = new FaultHandler(uffd, {
      memfd: mem,
      mode,
      // Only reached when a REMOVE event cleared the present bits.
      fetch: (fault) => void mem.write(fault.offset, Buffer.alloc(1, ((fault.offset / PAGE_SIZE) % 251) + 1)),
    });
    handler.present.mark(0, pages * PAGE_SIZE);
    handler.attach(view).start();
  }

  async function round() {
    const touched = touchPages(view, allPages);
    if (mode === 'raw') {
      let done = false;
      touched.then(() => (done = true), () => (done = true));
      serving = true;
      while (!done) {
        for (const ev of uffd.readEvents()) {
          if (ev.type !== 'pagefault') continue;
          rawFaults++;
          uffd.continue(ev.address, PAGE_SIZE);
        }
        await new Promise((r) => setImmediate(r));
      }
      serving = false;
    }
    const report = await touched;
    if (report.checksum !== expectedChecksum) throw new Error(`${mode}: checksum ${report.checksum}, expected ${expectedChecksum}`);
    view.advise('dontneed');
  }

  const faultsSoFar = () => (mode === 'raw' ? rawFaults : handler.stats().resolved);
  await round(); // warm-up: first allocations of every path
  const before = snapshot();
  const t0 = process.hrtime.bigint();
  const rounds = Math.ceil(totalFaults / pages);
  let lastPrint = Date.now();
  for (let i = 0; i < rounds; i++) {
    await round();
    if (!asJson && Date.now() - lastPrint > 5000) {
      lastPrint = Date.now();
      log(`  ${mode}: ${faultsSoFar()} faults, rss ${(rssKiB() / 1024).toFixed(1)} MiB, fds ${fdCount()}, threads ${threadCount()}`);
    }
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const after = snapshot();
  const faults = faultsSoFar();
  const stats = handler ? handler.stats() : undefined;
  if (handler) await handler.stop();
  uffd.close();
  mem.close();
  void serving;
  // Threads of a stopped native resolver are joined; the kernel reaps them a moment later.
  for (let i = 0; i < 50 && threadCount() > pre.threads; i++) await new Promise((r) => setTimeout(r, 20));
  const post = snapshot();
  return {
    teardown: { fds: post.fds - pre.fds, threads: post.threads - pre.threads },
    mode,
    removeEvents,
    faults,
    seconds: Number(seconds.toFixed(1)),
    faultsPerSecond: Math.round(faults / seconds),
    before,
    after,
    growth: { fds: after.fds - before.fds, threads: after.threads - before.threads, rssKiB: after.rssKiB - before.rssKiB },
    p50us: stats?.latencyUs.p50,
    p99us: stats?.latencyUs.p99,
    nativeResolved: stats?.nativeResolved,
    fetched: stats?.fetched,
    removeEventsSeen: stats?.events.remove,
  };
}

(async () => {
  log(`soak: ${totalFaults} faults per mode over ${pages} pages (${modes.join(', ')})${removeEvents ? ', eventRemove on' : ''}; bounds: fds +0, threads +0, RSS +${rssBoundMiB} MiB`);
  const results = [];
  let ok = true;
  for (const mode of modes) {
    if (removeEvents && mode !== 'native') {
      log(`  ${mode}: skipped with --remove-events (the madvise would wait for its own REMOVE event; the library refuses it)`);
      continue;
    }
    const r = await soak(mode);
    const pass = r.faults >= totalFaults && r.growth.fds <= 0 && r.growth.threads <= 0 && r.growth.rssKiB <= rssBoundMiB * 1024
      && r.teardown.fds <= 0 && r.teardown.threads <= 0;
    ok &&= pass;
    results.push({ ...r, pass });
    log(`  ${mode}: ${r.faults} faults in ${r.seconds} s (${r.faultsPerSecond}/s); fds ${r.before.fds}->${r.after.fds}, threads ${r.before.threads}->${r.after.threads}, RSS ${(r.before.rssKiB / 1024).toFixed(1)}->${(r.after.rssKiB / 1024).toFixed(1)} MiB; after teardown fds ${r.teardown.fds >= 0 ? '+' : ''}${r.teardown.fds}, threads ${r.teardown.threads >= 0 ? '+' : ''}${r.teardown.threads} ${pass ? 'PASS' : 'FAIL'}`);
  }
  if (asJson) console.log(JSON.stringify(results, null, 2));
  process.exitCode = ok ? 0 : 1;
})().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

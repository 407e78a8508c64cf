import { spawnSync } from 'node:child_process';
import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { distEntry, fixture, itWith, scaled } from '../helpers';
import { cleanupAfterEach, delay, expectPages, pageContent, pageContentModule, rng, settledStats, shuffled } from './util';

const { open, handlers } = cleanupAfterEach();

function setup(pages: number, allocate = true) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'handler-test', allocate });
  open.push(mem);
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId', 'missingShmem'] });
  open.push(uffd);
  return { mem, uffd };
}

describe('FaultHandler, event-loop mode', () => {
  itWith(['minorShmem', 'threadId'], 'native threads fault 2048 pages in random order; async fetches with random delays; every byte checked', async () => {
    const pages = 2048;
    const { mem, uffd } = setup(pages);
    const guest = mem.map();
    const random = rng(7);
    const fetched = new Map<number, number>();
    const handler = new FaultHandler(uffd, {
      memfd: mem,
      concurrency: 16,
      async fetch(fault) {
        fetched.set(fault.page, (fetched.get(fault.page) ?? 0) + 1);
        if (random() < 0.5) await delay(random() * 3);
        mem.write(fault.offset, pageContent(fault.page));
      },
    });
    handlers.push(handler);
    handler.attach(guest).start();
    // Three threads touch every page, each in its own order: most pages fault more than once.
    const reports = await Promise.all([1, 2, 3].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
    const stats = await settledStats(handler);
    expect(new Set(reports.map((r) => r.threadId)).size).toBe(3);
    expect(fetched.size).toBe(pages);
    expect([...fetched.values()].every((n) => n === 1)).toBe(true);
    expect(stats.fetched).toBe(pages);
    expect(stats.resolved).toBe(stats.faults);
    expect(stats.faults).toBeGreaterThanOrEqual(pages);
    expect(stats.duplicatesMerged + stats.alreadyPresent).toBe(stats.faults - pages);
    expect(stats.latencyUs.count).toBe(stats.faults);
    expect(stats.latencyUs.p50).toBeGreaterThan(0);
    expect(stats.errors).toBe(0);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, random));
    expect(handler.present.count()).toBe(pages);
  });

  itWith(['minorShmem', 'threadId'], 'concurrency bounds the fetches in flight; six threads over 200 pages still get every byte', async () => {
    const pages = 200;
    const { mem, uffd } = setup(pages);
    const guest = mem.map();
    let active = 0;
    let peak = 0;
    const handler = new FaultHandler(uffd, {
      memfd: mem,
      concurrency: 3,
      async fetch(f) {
        peak = Math.max(peak, ++active);
        await delay(1);
        mem.write(f.offset, pageContent(f.page));
        active--;
      },
    });
    handlers.push(handler);
    handler.attach(guest).start();
    await Promise.all([1, 2, 3, 4, 5, 6].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
    expect(peak).toBe(3);
    expect(handler.stats().fetched).toBe(pages);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, rng(1)));
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'MISSING|MINOR: holes fault too and are served', async () => {
    const pages = 256;
    const { mem, uffd } = setup(pages, false);
    const guest = mem.map();
    const handler = new FaultHandler(uffd, { memfd: mem, fetch: (f) => void mem.write(f.offset, pageContent(f.page)) });
    handlers.push(handler);
    handler.attach(guest, { missing: true }).start();
    await touchPages(guest, shuffled(pages, rng(3)));
    const stats = await settledStats(handler);
    expect(stats.fetched).toBe(pages);
    expectPages(new Uint8Array(guest.buffer), Array.from({ length: pages }, (_, i) => i));
  });
});

describe('FaultHandler on a worker thread (the main thread touches; run in a child process)', () => {
  const run = (mode: string, ending: string) => {
    const child = spawnSync(process.execPath, [fixture('worker-handler-main.js'), distEntry, pageContentModule, mode, ending], { encoding: 'utf8', timeout: scaled(20_000) });
    expect(child.error).toBeUndefined();
    expect(child.status, child.stderr).toBe(0);
    return JSON.parse(child.stdout.trim());
  };
  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'missingShmem', 'threadId'], `${mode}: serves faults the main thread takes itself, every byte checked`, () => {
      const out = run(mode, 'stop');
      expect(out).toMatchObject({ bad: [], touched: 64, stats: { faults: 64, fetched: 64, resolved: 64 } });
      expect(out.after).toBe(pageContent(40)[0]);
    }, 25_000);
  }
  itWith(['minorShmem', 'missingShmem', 'threadId'], 'a worker running a native-mode handler can be terminated without stop(): env cleanup joins the resolver and closes its uffd', () => {
    const out = run('native', 'terminate');
    expect(out).toMatchObject({ bad: [], touched: 8, exitCode: 1 });
    expect(out.after).toBe(0); // never fetched: the memfd's zeros, no fault left to serve
  }, 25_000);
});

describe('FaultHandler argument and state checks', () => {
  itWith(['minorShmem'], 'rejects views of another memfd, private views, a second start, and a second reader', () => {
    const { mem, uffd } = setup(4);
    const other = Memfd.create(4 * PAGE_SIZE);
    open.push(other);
    const handler = new FaultHandler(uffd, { memfd: mem, fetch() {} });
    handlers.push(handler);
    expect(() => handler.attach(other.map())).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => handler.attach(mem.map({ private: true }))).toThrow(/shared mapping/);
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch: 1 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch() {}, mode: 'threads' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    handler.start();
    expect(() => handler.start()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_HANDLER_STATE' }));
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch() {} }).start()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
  });
});

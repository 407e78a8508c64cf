import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { distEntry, fixture, itWith } from '../helpers';
import { delay, expectPages, pageContent, pageContentModule, rng, shuffled } from './util';

const open: { close(): void }[] = [];
const handlers: FaultHandler[] = [];
afterEach(async () => {
  while (handlers.length) await handlers.pop()!.stop();
  while (open.length) open.pop()!.close();
});

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
    const stats = handler.stats();
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

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'MISSING|MINOR: holes fault too and are served', async () => {
    const pages = 256;
    const { mem, uffd } = setup(pages, false);
    const guest = mem.map();
    const handler = new FaultHandler(uffd, { memfd: mem, fetch: (f) => void mem.write(f.offset, pageContent(f.page)) });
    handlers.push(handler);
    handler.attach(guest, { missing: true }).start();
    await touchPages(guest, shuffled(pages, rng(3)));
    const stats = handler.stats();
    expect(stats.fetched).toBe(pages);
    expectPages(new Uint8Array(guest.buffer), Array.from({ length: pages }, (_, i) => i));
  });
});

describe('FaultHandler on a worker thread', () => {
  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'missingShmem', 'threadId'], `${mode}: serves faults the main thread takes itself, every byte checked`, async () => {
      const pages = 64;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'worker-handler' });
      open.push(mem);
      const guest = mem.map();
      const worker = new Worker(fixture('handler-worker.js'), {
        workerData: { entry: distEntry, util: pageContentModule, fd: mem.fd, address: guest.address, length: guest.length, mode },
      });
      try {
        await new Promise((resolve, reject) => {
          worker.once('message', resolve);
          worker.once('error', reject);
        });
        const order = shuffled(pages, rng(31));
        // This thread faults; the worker's loop fetches and CONTINUEs.
        expectPages(new Uint8Array(guest.buffer), order);
        worker.postMessage('stop');
        const { stats } = await new Promise<{ stats: { faults: number; fetched: number; resolved: number } }>((r) => worker.once('message', r));
        expect(stats).toMatchObject({ faults: pages, fetched: pages, resolved: pages });
      } finally {
        await worker.terminate();
      }
    });
  }
});

// Working-set replay in FaultHandler: pages made present ahead of their
// faults, in runs, while native toucher threads fault at the same time.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages, writeWorkingSet } from '../../lib/index';
import type { WorkingSet } from '../../lib/index';
import { itWith, scaled, waitFor } from '../helpers';
import { cleanupAfterEach, expectPages, pageContent, rng, settledStats, shuffled } from '../handler/util';

const { open, handlers } = cleanupAfterEach();
const dir = mkdtempSync(join(tmpdir(), 'uffd-ws-replay-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function setup(pages: number, features: ('minorShmem' | 'threadId')[] = ['minorShmem', 'threadId']) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'ws-replay', allocate: true });
  open.push(mem);
  const uffd = Userfaultfd.open({ features });
  open.push(uffd);
  return { mem, uffd, guest: mem.map() };
}

/** The image the pages come from: pageContent(p) for page p. */
function image(pages: number): Buffer {
  return Buffer.concat(Array.from({ length: pages }, (_, p) => pageContent(p)));
}

/** A first-touch order made of runs (ascending stretches) in random order, with holes: like a recorded boot. */
function recordedOrder(pages: number, seed: number): number[] {
  const random = rng(seed);
  const starts: number[] = [];
  for (let p = 0; p < pages; p += 32) starts.push(p);
  const order: number[] = [];
  for (const s of shuffled(starts.length, random).map((i) => starts[i])) {
    const len = 8 + Math.floor(random() * 20);
    for (let p = s; p < Math.min(s + len, pages); p++) order.push(p);
  }
  return order;
}

function asSet(pages: readonly number[], total: number): WorkingSet {
  return {
    pageSize: PAGE_SIZE, memorySize: total * PAGE_SIZE, regions: 1,
    entries: pages.map((page, rank) => ({ page, rank, timeUs: rank, write: false, region: 0 })),
  };
}

/** Collects warnings emitted while `fn` runs (and one turn after). */
async function warningsDuring(fn: () => Promise<void>): Promise<{ code?: string; message: string }[]> {
  const seen: { code?: string; message: string }[] = [];
  const listener = (w: Error & { code?: string }) => seen.push({ code: w.code, message: w.message });
  process.on('warning', listener);
  try {
    await fn();
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', listener);
  }
  return seen;
}

describe('working-set replay (FaultHandler)', () => {
  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'threadId'], `${mode}: every byte right after a replay raced by two toucher threads; each page filled once`, async () => {
      const pages = 4096;
      const { mem, uffd, guest } = setup(pages);
      const img = image(pages);
      const order = recordedOrder(pages, 7);
      const inSet = new Set(order);
      const filledBy = new Uint8Array(pages); // 1 read, 2 fetch
      let doubles = 0;
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode,
        fetch(fault) {
          if (filledBy[fault.page]) doubles++;
          filledBy[fault.page] |= 2;
          mem.write(fault.offset, pageContent(fault.page));
        },
        prefetch: {
          pages: order,
          read(offset, length) {
            for (let p = offset / PAGE_SIZE; p < (offset + length) / PAGE_SIZE; p++) {
              if (filledBy[p]) doubles++;
              filledBy[p] |= 1;
            }
            return img.subarray(offset, offset + length);
          },
        },
      });
      handlers.push(handler);
      handler.attach(guest).start();
      // Two threads touch every page (set or not) in their own orders while the replay runs.
      const touched = shuffled(pages, rng(3));
      await Promise.all([touchPages(guest, touched), touchPages(guest, shuffled(pages, rng(4)))]);
      await handler.replayFinished;
      const stats = await settledStats(handler);
      expect(doubles).toBe(0);
      expectPages(new Uint8Array(guest.buffer), touched);
      const replay = stats.workingSet!.replay;
      expect(replay.state).toBe('done');
      expect(replay.planned).toBe(inSet.size);
      expect(replay.prefetched + replay.skipped).toBe(replay.planned);
      // Every page not in the set was a demand fault (one fetch each), and counted as outside the set.
      const outside = pages - inSet.size;
      expect([...filledBy].filter((b, p) => !inSet.has(p) && b === 2)).toHaveLength(outside);
      expect(replay.outsideSet).toBe(outside);
      expect(stats.fetched).toBe(pages - replay.prefetched);
      expect(replay.runs).toBeLessThan(replay.prefetched);
      expect(replay.touched).toBeUndefined();
      expect(stats.resolved).toBe(stats.faults);
    });
  }

  itWith(['minorShmem', 'threadId'], 'demand first: a fault on the last page is served while the replay is held back, and that page is not read again', async () => {
    const pages = 1024;
    const { mem, uffd, guest } = setup(pages);
    const img = image(pages);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const reads: [number, number][] = [];
    let fetchedAt: { page: number; prefetched: number; state: string } | undefined;
    const handler: FaultHandler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native',
      fetch(fault) {
        fetchedAt = { page: fault.page, prefetched: handler.stats().workingSet!.replay.prefetched, state: handler.stats().workingSet!.replay.state };
        mem.write(fault.offset, pageContent(fault.page));
      },
      prefetch: {
        pages: Array.from({ length: pages }, (_, p) => p),
        start: 'now',
        maxRunPages: 16,
        async read(offset, length) {
          reads.push([offset / PAGE_SIZE, length / PAGE_SIZE]);
          // Every run after the first waits until the test lets it go.
          if (reads.length > 1) await gate;
          return img.subarray(offset, offset + length);
        },
      },
    });
    handlers.push(handler);
    handler.attach(guest).start();
    await waitFor(() => reads.length === 2, scaled(5000), 'the second run to start');
    const last = await touchPages(guest, [pages - 1]);
    expect(last.checksum).toBe(pageContent(pages - 1)[0]);
    // Served by the fetch path while the replay had made only its first run present.
    expect(fetchedAt).toEqual({ page: pages - 1, prefetched: 16, state: 'running' });
    const during = handler.stats().workingSet!.replay;
    expect(during.demandFaults).toBe(1);
    release();
    await handler.replayFinished;
    const stats = await settledStats(handler);
    const replay = stats.workingSet!.replay;
    expect(replay).toMatchObject({ state: 'done', planned: pages, prefetched: pages - 1, skipped: 1, demandFaults: 1, outsideSet: 0 });
    expect(reads.some(([first, count]) => first <= pages - 1 && pages - 1 < first + count)).toBe(false);
    expect(stats.fetched).toBe(1);
    // Mapped ahead: touching everything now faults only... nowhere.
    const faultsBefore = stats.faults;
    await touchPages(guest, shuffled(pages, rng(2)));
    expect(handler.stats().faults).toBe(faultsBefore);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, rng(5)));
  });

  itWith(['minorShmem', 'threadId'], 'no double fetch: working-set file replayed through fetch, raced by a reverse toucher; every page fetched exactly once', async () => {
    const pages = 2048;
    const { mem, uffd, guest } = setup(pages);
    const order = recordedOrder(pages, 11);
    const file = join(dir, 'set-nodouble.uffdws');
    writeWorkingSet(file, asSet(order, pages));
    const calls = new Uint16Array(pages);
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native', concurrency: 8,
      async fetch(fault) {
        calls[fault.page]++;
        if (fault.page % 7 === 0) await new Promise((r) => setImmediate(r));
        mem.write(fault.offset, pageContent(fault.page));
      },
      workingSet: { replay: file },
    });
    handlers.push(handler);
    handler.attach(guest).start();
    const reverse = [...order].reverse();
    await Promise.all([touchPages(guest, reverse), touchPages(guest, shuffled(pages, rng(8)))]);
    await handler.replayFinished;
    const stats = await settledStats(handler);
    expect([...calls].every((n) => n === 1)).toBe(true);
    expect(stats.fetched).toBe(pages);
    const replay = stats.workingSet!.replay;
    expect(replay.prefetched + replay.skipped).toBe(new Set(order).size);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, rng(9)));
  });

  itWith(['minorShmem', 'threadId'], 'precision: with mapRuns false the engine counts prefetched pages touched afterwards', async () => {
    const pages = 512;
    for (const mode of ['event-loop', 'native'] as const) {
      const { mem, uffd, guest } = setup(pages);
      const img = image(pages);
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode, fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
        prefetch: { pages: Array.from({ length: 256 }, (_, p) => p), read: (o, l) => img.subarray(o, o + l), start: 'now', mapRuns: false },
      });
      handlers.push(handler);
      handler.attach(guest).start();
      await handler.replayFinished;
      // 100 pages of the set and 50 outside it.
      await touchPages(guest, [...Array.from({ length: 100 }, (_, p) => p * 2), ...Array.from({ length: 50 }, (_, p) => 300 + p)]);
      const stats = await settledStats(handler);
      expect(stats.workingSet!.replay).toMatchObject({ prefetched: 256, touched: 100, untouched: 156, outsideSet: 50 });
      expect(stats.alreadyPresent).toBe(100);
      await handler.stop();
    }
  });

  itWith(['minorShmem'], 'a missing, corrupt or mismatched working set warns (UFFD_WORKING_SET_IGNORED) and the handler serves on demand', async () => {
    const pages = 64;
    const corrupt = join(dir, 'corrupt.uffdws');
    writeFileSync(corrupt, Buffer.from('not a working set at all, just some bytes that are long enough to be read'));
    const cases: [string, string | WorkingSet, RegExp][] = [
      ['missing', join(dir, 'nope.uffdws'), /ERR_WORKING_SET_NOT_FOUND/],
      ['corrupt', corrupt, /ERR_WORKING_SET/],
      ['page size', { ...asSet([1, 2], pages), pageSize: PAGE_SIZE * 4, memorySize: pages * PAGE_SIZE * 4 }, /pages of 16384/],
      ['memory size', asSet([1, 2], pages * 2), /recorded for 524288 bytes/],
    ];
    for (const [name, replay, reason] of cases) {
      const { mem, uffd, guest } = setup(pages, ['minorShmem']);
      let handler!: FaultHandler;
      const warnings = await warningsDuring(async () => {
        handler = new FaultHandler(uffd, { memfd: mem, fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)), workingSet: { replay, start: 'now' } });
      });
      handlers.push(handler);
      expect(warnings, name).toHaveLength(1);
      expect(warnings[0].code, name).toBe('UFFD_WORKING_SET_IGNORED');
      expect(warnings[0].message, name).toMatch(reason);
      handler.attach(guest).start();
      await touchPages(guest, [0, 5, 63]);
      const stats = await settledStats(handler);
      expect(stats.workingSet, name).toBeUndefined();
      expect(stats.fetched, name).toBe(3);
      expectPages(new Uint8Array(guest.buffer), [0, 5, 63]);
    }
  });

  itWith(['minorShmem'], 'a prefetch list with a page outside the memory is a typed error', () => {
    const { mem, uffd } = setup(8, ['minorShmem']);
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch: () => {}, prefetch: { pages: [1, 8] } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch: () => {}, prefetch: { pages: [1] }, workingSet: { replay: 'x' } })).toThrow(/cannot be given with/);
  });

  itWith(['minorShmem'], 'a handler stopped before it started ends its replay too', async () => {
    const { mem, uffd } = setup(8, ['minorShmem']);
    const handler = new FaultHandler(uffd, { memfd: mem, fetch: () => {}, prefetch: { pages: [1, 2, 3], start: 'now', read: () => expect.fail('never read') } });
    await handler.stop();
    await handler.replayFinished;
    expect(handler.stats().workingSet!.replay).toMatchObject({ state: 'stopped', prefetched: 0 });
  });

  itWith(['minorShmem', 'threadId'], 'stop during a replay whose reader never answers is bounded; the joined fault is woken and nothing stays claimed', async () => {
    const pages = 256;
    const { mem, uffd, guest } = setup(pages);
    let reads = 0;
    let aborted = 0;
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native', stopGraceMs: scaled(2000),
      fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
      prefetch: {
        pages: Array.from({ length: pages }, (_, p) => p), start: 'now',
        read(_offset, _length, { signal }) {
          reads++;
          return new Promise<Uint8Array>((_resolve, reject) => signal.addEventListener('abort', () => {
            aborted++;
            reject(signal.reason);
          }));
        },
      },
    });
    handler.attach(guest).start();
    await waitFor(() => reads === 1, scaled(5000), 'the first run');
    // A fault on a page of the run in flight joins it.
    const toucher = touchPages(guest, [3]);
    await waitFor(() => handler.stats().faults === 1, scaled(5000), 'the fault to be read');
    expect(handler.present.inflight.size).toBe(64);
    const t0 = performance.now();
    await handler.stop();
    const stopMs = performance.now() - t0;
    await toucher;
    expect(aborted).toBe(1);
    expect(reads).toBe(1);
    expect(handler.present.inflight.size).toBe(0);
    expect(handler.stats().workingSet!.replay.state).toBe('stopped');
    // The released fault fetched its page in the grace period, or was woken by the release: bounded either way.
    expect(stopMs).toBeLessThan(scaled(2000) + 1000);
    await handler.stop();
  });
});

import { fstatSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, PresentPages, Userfaultfd, touchPages } from '../../lib/index';
import { MmWorker } from '../core/support';
import type { RemoveEvent, UffdEvent } from '../../lib/index';
import { distEntry, fixture, itWith, waitFor } from '../helpers';
import { cleanupAfterEach, expectMemfdPages, expectPages, pageContent, pageContentModule, rng, settledStats, shuffled } from './util';

const { open, handlers } = cleanupAfterEach();

const EVENTS = ['minorShmem', 'missingShmem', 'threadId', 'eventRemove', 'eventUnmap', 'eventRemap', 'eventFork'] as const;

for (const mode of ['event-loop', 'native'] as const) {
  describe(`FaultHandler non-cooperative events (${mode})`, () => {
    itWith([...EVENTS], 'MADV_REMOVE storms during faults: freed pages are fetched again, every byte checked; the view\'s munmap drops it', async () => {
      const pages = 512;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'storm' });
      const uffd = Userfaultfd.open({ features: [...EVENTS] });
      open.push(mem, uffd);
      const fetches = new Map<number, number>();
      const removes: RemoveEvent[] = [];
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode,
        fetch(f) {
          fetches.set(f.page, (fetches.get(f.page) ?? 0) + 1);
          mem.write(f.offset, pageContent(f.page));
        },
        onEvent: (ev) => void (ev.type === 'remove' && removes.push(ev)),
      });
      handlers.push(handler);
      // Holes must fault (MADV_REMOVE makes holes), so MISSING|MINOR.
      const worker = new Worker(fixture('storm-worker.js'), { workerData: { entry: distEntry, util: pageContentModule, fd: mem.fd } });
      try {
        const view = await new Promise<{ address: number; length: number }>((resolve) => worker.once('message', resolve));
        handler.attach({ ...view, offset: 0 }, { missing: true }).start();
        const result = new Promise<{ type: string; advised: number; bad: number[]; message?: string }>((resolve, reject) => {
          worker.on('message', resolve);
          worker.once('error', reject);
        });
        worker.postMessage({ rounds: 3, advice: 'remove', seed: mode === 'native' ? 21 : 22 });
        const out = await result;
        expect(out.message).toBeUndefined();
        expect(out.bad).toEqual([]);
        expect(out.advised).toBeGreaterThan(0);
        await waitFor(() => handler.stats().events.unmap === 1, 5000, 'the UNMAP event');
        const stats = await settledStats(handler);
        expect(stats.events.remove).toBe(out.advised);
        console.log(`${mode}: ${out.advised} REMOVEs, ${stats.faults} faults, ${stats.fetched} fetches, ${stats.retriedAfterEvents} CONTINUEs retried after EAGAIN`);
        expect(removes).toHaveLength(out.advised);
        expect(fetches.size).toBe(pages);
        // Pages freed by a REMOVE were fetched again.
        expect(stats.fetched).toBeGreaterThan(pages);
        expect(stats.resolved + stats.untracked).toBe(stats.faults);
        // Each REMOVE named a page-aligned part of the view.
        for (const ev of removes) {
          expect(ev.end).toBeGreaterThan(ev.start);
          expect([ev.start % PAGE_SIZE, ev.end % PAGE_SIZE, ev.start >= view.address, ev.end <= view.address + view.length]).toEqual([0, 0, true, true]);
        }
        // The worker's last pass read every page through the view after the
        // storm: each is present again, and the memfd holds its bytes.
        expectMemfdPages(mem, Array.from({ length: pages }, (_, p) => p));
        expect(handler.present.count()).toBe(pages);
        expect(stats.errors).toBe(0);
      } finally {
        await worker.terminate();
      }
    }, 60_000);

    itWith([...EVENTS], 'freed pages are holes now: MADV_REMOVE punches the memfd and the next fault fetches again, bytes right; MADV_DONTNEED keeps the page (no fetch)', async () => {
      const pages = 4;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'holes' });
      const uffd = Userfaultfd.open({ features: [...EVENTS] });
      open.push(mem, uffd);
      const present = new PresentPages(pages * PAGE_SIZE, PAGE_SIZE);
      const fetches: number[] = [];
      const removes: RemoveEvent[] = [];
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode, present,
        fetch(f) {
          fetches.push(f.page);
          mem.write(f.offset, pageContent(f.page));
        },
        onEvent: (ev) => void (ev.type === 'remove' && removes.push(ev)),
      });
      handlers.push(handler);
      expect(handler.present).toBe(present);
      const w = new MmWorker(mem.fd);
      open.push({ close: () => void w.close() });
      const view = await w.call<{ address: number; length: number }>('map', {});
      handler.attach({ ...view, offset: 0 }, { missing: true }).start();
      const ends = (p: number) => [pageContent(p)[0], pageContent(p)[PAGE_SIZE - 1]];
      const all = [0, 1, 2, 3];
      expect((await w.call('touch', { pages: all })).seen).toEqual(all.flatMap(ends));
      expect([...fetches].sort()).toEqual(all);
      expect(present.count()).toBe(pages);
      const blocks = () => fstatSync(mem.fd).blocks;
      const full = blocks();

      // MADV_REMOVE frees page 1: the memfd has a hole there (fewer blocks, zeros).
      await w.call('advise', { advice: 'remove', offset: PAGE_SIZE, length: PAGE_SIZE });
      await waitFor(() => removes.length === 1, 5000, 'the first REMOVE');
      expect(removes[0]).toEqual({ type: 'remove', start: view.address + PAGE_SIZE, end: view.address + 2 * PAGE_SIZE });
      expect(blocks()).toBe(full - PAGE_SIZE / 512);
      expect(mem.read(PAGE_SIZE, PAGE_SIZE).equals(Buffer.alloc(PAGE_SIZE))).toBe(true);
      // MADV_DONTNEED on page 2 only drops the mapping: no hole.
      await w.call('advise', { advice: 'dontneed', offset: 2 * PAGE_SIZE, length: PAGE_SIZE });
      await waitFor(() => removes.length === 2, 5000, 'the second REMOVE');
      expect(blocks()).toBe(full - PAGE_SIZE / 512);

      // The next touches: page 1 is fetched again (its CONTINUE failed on the
      // hole), page 2 is mapped from the page cache without a fetch.
      expect((await w.call('touch', { pages: [1, 2] })).seen).toEqual([1, 2].flatMap(ends));
      expect([...fetches].sort()).toEqual([0, 1, 1, 2, 3]);
      expect(blocks()).toBe(full);
      expectMemfdPages(mem, all);
      expect(all.map((p) => present.has(p))).toEqual([true, true, true, true]);
      const stats = await settledStats(handler);
      expect(stats).toMatchObject({ fetched: 5, errors: 0, events: { remove: 2 } });
      // Page 2's re-fault needed no fetch; page 1's did (its first try found the hole).
      expect(stats.alreadyPresent).toBe(1);
    });

    itWith([...EVENTS], 'MADV_DONTNEED storms: pages fault MINOR again and are served without a fetch, every byte checked', async () => {
      const pages = 256;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'storm-dontneed', allocate: true });
      const uffd = Userfaultfd.open({ features: [...EVENTS] });
      open.push(mem, uffd);
      const fetches = new Map<number, number>();
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode, mapAhead: 3,
        fetch(f) {
          expect(f.minor, `page ${f.page}: a MINOR fault`).toBe(true);
          fetches.set(f.page, (fetches.get(f.page) ?? 0) + 1);
          mem.write(f.offset, pageContent(f.page));
        },
      });
      handlers.push(handler);
      const worker = new Worker(fixture('storm-worker.js'), { workerData: { entry: distEntry, util: pageContentModule, fd: mem.fd } });
      try {
        const view = await new Promise<{ address: number; length: number }>((resolve) => worker.once('message', resolve));
        handler.attach({ ...view, offset: 0 }).start();
        const result = new Promise<{ advised: number; bad: number[]; message?: string }>((resolve, reject) => {
          worker.on('message', resolve);
          worker.once('error', reject);
        });
        worker.postMessage({ rounds: 2, advice: 'dontneed', seed: 5 });
        const out = await result;
        expect(out.message).toBeUndefined();
        expect(out.bad).toEqual([]);
        await waitFor(() => handler.stats().events.unmap === 1, 5000, 'the UNMAP event');
        const stats = await settledStats(handler);
        expect(stats.events.remove).toBe(out.advised);
        // DONTNEED keeps the page cache: each page was fetched once, ever.
        expect([...fetches.values()].every((n) => n === 1)).toBe(true);
        expect(stats.fetched).toBe(pages);
        // Two rounds of two touchers over every page, and the worker's own
        // check: faults beyond the first fetch of each page are re-faults of
        // dropped pages, answered from the present bitmap (MINOR: this range
        // is registered MINOR only, so the kernel raises nothing else).
        const refaults = stats.faults - stats.fetched - stats.duplicatesMerged;
        console.log(`${mode}: ${out.advised} DONTNEEDs, ${stats.faults} faults, ${refaults} re-faults served without fetch, ${stats.mapAheadPages} read ahead, ${stats.alreadyPresent} alreadyPresent, ${stats.retriedAfterEvents} retried, ${stats.duplicatesMerged} merged`);
        expect(refaults).toBeGreaterThan(0);
        // alreadyPresent counts faults answered from the bitmap, once each
        // (a CONTINUE deferred by EAGAIN counts when its retry answers it):
        // never more than the re-faults. A few re-faults are answered by
        // JavaScript instead, when their page was fetched meanwhile.
        expect(stats.alreadyPresent).toBeGreaterThan(0);
        expect(stats.alreadyPresent).toBeLessThanOrEqual(refaults);
        // The native thread answers most of them; those JavaScript answered count in alreadyPresent only.
        if (mode === 'native') expect(stats.nativeResolved).toBeGreaterThan(0);
        expect(stats.nativeResolved).toBeLessThanOrEqual(mode === 'native' ? stats.alreadyPresent : 0);
        expect(stats.resolved + stats.untracked).toBe(stats.faults);
        expect(stats.errors).toBe(0);
        expectMemfdPages(mem, Array.from({ length: pages }, (_, p) => p));
      } finally {
        await worker.terminate();
      }
    }, 60_000);
  });
}

describe('REMAP events', () => {
  itWith([...EVENTS], 'native mode: mremap moves a served view during a storm; the region follows, the grown part is attached, every byte checked', async () => {
    const pages = 64;
    const mem = Memfd.create(2 * pages * PAGE_SIZE, { name: 'remap', allocate: true });
    const uffd = Userfaultfd.open({ features: [...EVENTS] });
    open.push(mem, uffd);
    const remaps: unknown[] = [];
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native',
      fetch: (f) => void mem.write(f.offset, pageContent(f.page)),
      onEvent: (ev) => void (ev.type === 'remap' && remaps.push(ev)),
    });
    handlers.push(handler);
    const view = mem.map({ length: pages * PAGE_SIZE });
    handler.attach(view).start();
    await touchPages(view, shuffled(pages / 2, rng(1))); // half of it is mapped before the move
    // The native thread reads the REMAP, so this (the loop) thread may mremap.
    const moved = view.remap(2 * pages * PAGE_SIZE);
    expect(remaps).toEqual([]); // delivered to JavaScript after this turn of the loop
    // mremap grew the VMA, and the registration with it; the kernel's REMAP
    // only names the old length, so the new part is attached explicitly.
    handler.attach({ address: moved.address + pages * PAGE_SIZE, length: pages * PAGE_SIZE, offset: pages * PAGE_SIZE }, { register: false });
    await Promise.all([2, 3].map((s) => touchPages(moved, shuffled(2 * pages, rng(s)))));
    await waitFor(() => remaps.length === 1, 5000, 'the REMAP event');
    expect(remaps).toEqual([{ type: 'remap', from: view.address, to: moved.address, length: pages * PAGE_SIZE }]);
    const stats = await settledStats(handler);
    expect(stats.events).toMatchObject({ remap: 1, unmap: 1 });
    expect(stats.untracked).toBe(0);
    expect(stats.fetched).toBe(2 * pages);
    expectPages(new Uint8Array(moved.buffer), shuffled(2 * pages, rng(4)));
  });
});

describe('Userfaultfd.events()', () => {
  itWith(['minorShmem', 'threadId', 'eventRemove'], 'yields faults and events as they come, and ends on abort', async () => {
    const mem = Memfd.create(8 * PAGE_SIZE, { name: 'events', allocate: true });
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId', 'eventRemove'] });
    open.push(mem, uffd);
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    for (let p = 0; p < 8; p++) mem.write(p * PAGE_SIZE, pageContent(p));
    const ac = new AbortController();
    const seen: UffdEvent[] = [];
    const touched = touchPages(guest, [6, 2, 4]);
    for await (const ev of uffd.events({ signal: ac.signal })) {
      seen.push(ev);
      if (ev.type === 'pagefault') uffd.continue(ev.address, PAGE_SIZE);
      if (seen.length === 3) ac.abort();
    }
    const report = await touched;
    expect(seen.map((e) => e.type === 'pagefault' && (e.address - guest.address) / PAGE_SIZE)).toEqual([6, 2, 4]);
    expect(seen.every((e) => e.type === 'pagefault' && e.threadId === report.threadId)).toBe(true);
    expectPages(new Uint8Array(guest.buffer), [6, 2, 4]);
    // The reader was released: another can claim the uffd now.
    const again = uffd.events();
    // next() runs the generator up to its wait for readability: it holds the reader now.
    const first = again.next();
    expect(() => uffd.claimReader('another')).toThrow(expect.objectContaining({ code: 'ERR_UFFD_BUSY' }));
    uffd.close(); // ends the iterator
    expect(await first).toEqual({ done: true, value: undefined });
  });

  itWith(['minorShmem'], 'an aborted signal is refused up front, and a second reader is refused while one runs', async () => {
    const uffd = Userfaultfd.open({ features: ['minorShmem'] });
    open.push(uffd);
    const aborted = AbortSignal.abort();
    await expect(uffd.events({ signal: aborted }).next()).rejects.toMatchObject({ name: 'AbortError' });
    // Refused before claiming the reader: another reader may start.
    const ac = new AbortController();
    const reader = uffd.events({ signal: ac.signal });
    const pending = reader.next();
    ac.abort();
    expect(await pending).toEqual({ done: true, value: undefined });
    const mem = Memfd.create(PAGE_SIZE, { allocate: true });
    open.push(mem);
    const handler = new FaultHandler(uffd, { memfd: mem, fetch() {} }).start();
    handlers.push(handler);
    await expect(uffd.events().next()).rejects.toMatchObject({ code: 'ERR_UFFD_BUSY' });
  });
});

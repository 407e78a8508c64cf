import { Worker } from 'node:worker_threads';
import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import type { RemoveEvent, UffdEvent } from '../../lib/index';
import { distEntry, fixture, itWith, waitFor } from '../helpers';
import { cleanupAfterEach, expectPages, pageContent, pageContentModule, rng, settledStats, shuffled } from './util';

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
        // Freed pages are holes now: the bitmap and the memfd agree.
        for (const ev of removes.slice(-3)) expect(ev.end).toBeGreaterThan(ev.start);
        expect(stats.errors).toBe(0);
      } finally {
        await worker.terminate();
      }
    }, 60_000);

    itWith([...EVENTS], 'MADV_DONTNEED storms: pages fault MINOR again and are served, every byte checked', async () => {
      const pages = 256;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'storm-dontneed', allocate: true });
      const uffd = Userfaultfd.open({ features: [...EVENTS] });
      open.push(mem, uffd);
      const handler = new FaultHandler(uffd, { memfd: mem, mode, mapAhead: 3, fetch: (f) => void mem.write(f.offset, pageContent(f.page)) });
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
        expect(handler.stats().events.remove).toBe(out.advised);
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
    const closing = (async () => {
      const all: UffdEvent[] = [];
      for await (const ev of again) all.push(ev);
      return all;
    })();
    await new Promise((r) => setTimeout(r, 10));
    uffd.close(); // ends the iterator
    expect(await closing).toEqual([]);
  });

  itWith(['minorShmem'], 'an aborted signal is refused up front, and a second reader is refused while one runs', async () => {
    const uffd = Userfaultfd.open({ features: ['minorShmem'] });
    open.push(uffd);
    const aborted = AbortSignal.abort();
    await expect(uffd.events({ signal: aborted }).next()).rejects.toThrow();
    const mem = Memfd.create(PAGE_SIZE, { allocate: true });
    open.push(mem);
    const handler = new FaultHandler(uffd, { memfd: mem, fetch() {} }).start();
    handlers.push(handler);
    await expect(uffd.events().next()).rejects.toMatchObject({ code: 'ERR_UFFD_BUSY' });
  });
});

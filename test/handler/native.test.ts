import { readdirSync } from 'node:fs';

import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { TIME_SCALE, itWith, waitFor } from '../helpers';
import { cleanupAfterEach, delay, expectPages, pageContent, rng, settledStats, shuffled } from './util';

const { open, handlers } = cleanupAfterEach();

function setup(pages: number) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'native-test', allocate: true });
  open.push(mem);
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  open.push(uffd);
  return { mem, uffd, guest: mem.map() };
}

describe('FaultHandler, native mode', () => {
  itWith(['minorShmem', 'threadId'], 'every page present: the native thread resolves all faults, fetch is never called', async () => {
    const pages = 1024;
    const { mem, uffd, guest } = setup(pages);
    for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, pageContent(p));
    let calls = 0;
    const handler = new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => void calls++ });
    handlers.push(handler);
    handler.attach(guest).present.mark(0, pages * PAGE_SIZE);
    handler.start();
    await Promise.all([1, 2].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
    const stats = await settledStats(handler);
    expect(calls).toBe(0);
    expect(stats.fetched).toBe(0);
    expect(stats.faults).toBeGreaterThanOrEqual(pages);
    expect(stats.nativeResolved).toBe(stats.faults);
    expect(stats.resolved).toBe(stats.faults);
    expect(stats.alreadyPresent).toBe(stats.faults);
    expect(stats.latencyUs.count).toBe(stats.faults);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, rng(9)));
  });

  itWith(['minorShmem', 'threadId'], 'half present: absent pages go to the JavaScript fetch (one per page), the rest stay native', async () => {
    const pages = 1024;
    const { mem, uffd, guest } = setup(pages);
    for (let p = 0; p < pages; p += 2) {
      mem.write(p * PAGE_SIZE, pageContent(p));
    }
    const random = rng(5);
    const fetched = new Map<number, number>();
    const handler = new FaultHandler(uffd, {
      memfd: mem,
      mode: 'native',
      concurrency: 8,
      async fetch(fault) {
        expect(fault.page % 2).toBe(1);
        fetched.set(fault.page, (fetched.get(fault.page) ?? 0) + 1);
        if (random() < 0.3) await delay(random() * 2);
        mem.write(fault.offset, pageContent(fault.page));
      },
    });
    handlers.push(handler);
    handler.attach(guest);
    for (let p = 0; p < pages; p += 2) handler.present.mark(p * PAGE_SIZE, PAGE_SIZE);
    handler.start();
    await Promise.all([11, 12, 13].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
    const stats = await settledStats(handler);
    expect(fetched.size).toBe(pages / 2);
    expect([...fetched.values()].every((n) => n === 1)).toBe(true);
    expect(stats.fetched).toBe(pages / 2);
    expect(stats.nativeResolved).toBeGreaterThanOrEqual(pages / 2);
    expect(stats.resolved).toBe(stats.faults);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, random));
  });

  itWith(['minorShmem', 'threadId'], 'read-ahead: sequential touches of present pages map 8 pages per CONTINUE', async () => {
    const pages = 512;
    for (const mode of ['event-loop', 'native'] as const) {
      const { mem, uffd, guest } = setup(pages);
      for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, pageContent(p));
      const handler = new FaultHandler(uffd, { memfd: mem, mode, mapAhead: 7, fetch: () => expect.fail('no fetch expected') });
      handlers.push(handler);
      handler.attach(guest).present.mark(0, pages * PAGE_SIZE);
      handler.start();
      await touchPages(guest, Array.from({ length: pages }, (_, i) => i));
      const stats = await settledStats(handler);
      // A signal can pull a thread out of a blocked fault; it faults again (EEXIST, woken), so >=.
      const why = `${mode}: ${JSON.stringify({ ...stats, latencyUs: undefined })}`;
      expect(stats.faults, why).toBeGreaterThanOrEqual(pages / 8);
      expect(stats.faults - stats.alreadyPresent, why).toBe(0);
      expect(stats.mapAheadPages, why).toBe(pages - pages / 8);
      expectPages(new Uint8Array(guest.buffer), Array.from({ length: pages }, (_, i) => i));
    }
  });

  itWith(['minorShmem', 'threadId'], 'read-ahead in random order: windows that run into mapped pages (partial progress, EEXIST) still map every page', async () => {
    const pages = 1024;
    for (const mode of ['event-loop', 'native'] as const) {
      const { mem, uffd, guest } = setup(pages);
      for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, pageContent(p));
      const handler = new FaultHandler(uffd, { memfd: mem, mode, mapAhead: 15, fetch: () => expect.fail('no fetch expected') });
      handlers.push(handler);
      handler.attach(guest).present.mark(0, pages * PAGE_SIZE);
      handler.start();
      await Promise.all([3, 4].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
      const stats = await settledStats(handler);
      expect(stats.resolved, mode).toBe(stats.faults);
      expect(stats.faults, mode).toBeLessThan(pages);
      expect(stats.mapAheadPages, mode).toBeGreaterThan(0);
      expect(stats.errors, mode).toBe(0);
      expectPages(new Uint8Array(guest.buffer), Array.from({ length: pages }, (_, i) => i));
    }
  });

  const threadCount = (): number => readdirSync('/proc/self/task').length;

  itWith(['minorShmem', 'threadId'], 'several resolver threads, spinning: 4 touchers, half the pages fetched, every byte right; stop joins every thread', async () => {
    const pages = 2048;
    const { mem, uffd, guest } = setup(pages);
    for (let p = 0; p < pages; p += 2) mem.write(p * PAGE_SIZE, pageContent(p));
    const before = threadCount();
    const fetched = new Set<number>();
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native', threads: 3, spinUs: 200,
      fetch(fault) {
        expect(fetched.has(fault.page)).toBe(false);
        fetched.add(fault.page);
        mem.write(fault.offset, pageContent(fault.page));
      },
    });
    handlers.push(handler);
    handler.attach(guest);
    for (let p = 0; p < pages; p += 2) handler.present.mark(p * PAGE_SIZE, PAGE_SIZE);
    handler.start();
    expect(threadCount()).toBe(before + 3);
    await Promise.all([1, 2, 3, 4].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
    const stats = await settledStats(handler);
    expect(fetched.size).toBe(pages / 2);
    expect(stats.resolved).toBe(stats.faults);
    expect(stats.nativeResolved).toBeGreaterThanOrEqual(pages / 2);
    // Spinning burns CPU on the resolver threads, and the engine says how much.
    expect(stats.resolverCpuUs).toBeGreaterThan(0);
    expectPages(new Uint8Array(guest.buffer), shuffled(pages, rng(9)));
    await handler.stop();
    await waitFor(() => threadCount() === before, 5000 * TIME_SCALE, 'the resolver threads to be reaped');
  });
});

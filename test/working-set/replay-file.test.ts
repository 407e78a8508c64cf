// Working-set replay from a local file (prefetch.file): runs copied, marked
// and mapped by native threads while toucher threads fault at the same time,
// and every way the file can let it down.
import { closeSync, openSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { FaultEngine } from '../../lib/engine';
import { native } from '../../lib/native';
import { PresentPages } from '../../lib/present-pages';
import { itWith, scaled } from '../helpers';
import { cleanupAfterEach, expectPages, pageContent, rng, settledStats, shuffled } from '../handler/util';

const { open, handlers } = cleanupAfterEach();
const dir = mkdtempSync(join(tmpdir(), 'uffd-ws-replay-file-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function setup(pages: number) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'ws-replay-file', allocate: true });
  open.push(mem);
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  open.push(uffd);
  return { mem, uffd, guest: mem.map() };
}

/** A memfd holding pageContent(p) at page p, for `pages` pages (fewer than the memory when told). */
function imageMemfd(pages: number): Memfd {
  const image = Memfd.create(pages * PAGE_SIZE, { name: 'ws-replay-image' });
  open.push(image);
  for (let p = 0; p < pages; p++) image.write(p * PAGE_SIZE, pageContent(p));
  return image;
}

/** Scattered single pages and short stretches, in random order. */
function scatteredOrder(pages: number, seed: number): number[] {
  const random = rng(seed);
  const order: number[] = [];
  const seen = new Set<number>();
  while (order.length < pages / 3) {
    const start = Math.floor(random() * pages);
    const len = 1 + Math.floor(random() * 6);
    for (let p = start; p < Math.min(start + len, pages); p++) if (!seen.has(p)) seen.add(p), order.push(p);
  }
  return order;
}

const openFds = (): number => readdirSync('/proc/self/fd').length;

describe('working-set replay from a local file on native threads', () => {
  for (const mode of ['event-loop', 'native'] as const) {
    for (const threads of [1, 3]) {
      itWith(['minorShmem', 'threadId'], `${mode}, ${threads} thread(s): every byte right, raced by two toucher threads; each page filled once`, async () => {
        const pages = 4096;
        const { mem, uffd, guest } = setup(pages);
        const image = imageMemfd(pages);
        const order = scatteredOrder(pages, 5 + threads);
        const fetchedPages = new Uint8Array(pages);
        const handler = new FaultHandler(uffd, {
          memfd: mem, mode,
          fetch(fault) {
            fetchedPages[fault.page]++;
            mem.write(fault.offset, pageContent(fault.page));
          },
          // 'now': batches on threads (claimed) until the touchers' first demand fault, then small ones on the loop thread.
          prefetch: { pages: order, file: { fd: image.fd }, threads, start: threads === 1 ? 'first-fault' : 'now' },
        });
        handlers.push(handler);
        handler.attach(guest).start();
        const touched = shuffled(pages, rng(threads));
        await Promise.all([touchPages(guest, touched), touchPages(guest, shuffled(pages, rng(threads + 10)))]);
        await handler.replayFinished;
        const stats = await settledStats(handler);
        expectPages(new Uint8Array(guest.buffer), touched);
        const replay = stats.workingSet!.replay;
        expect(replay.state).toBe('done');
        expect(replay.planned).toBe(order.length);
        expect(replay.prefetched + replay.skipped).toBe(replay.planned);
        expect(replay.failedRuns).toBe(0);
        // Every page was touched, so filled exactly once: by the replay or by one fetch.
        expect([...fetchedPages].every((n) => n <= 1)).toBe(true);
        expect(stats.fetched + replay.prefetched).toBe(pages);
        expect(stats.resolved).toBe(stats.faults);
      });
    }
  }

  itWith(['minorShmem', 'threadId'], 'replayed before the guest runs: the guest then touches the whole set without one fault', async () => {
    const pages = 2048;
    const { mem, uffd, guest } = setup(pages);
    const image = imageMemfd(pages);
    const order = scatteredOrder(pages, 21);
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native', fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
      prefetch: { pages: order, file: { fd: image.fd }, start: 'now' },
    });
    handlers.push(handler);
    handler.attach(guest).start();
    await handler.replayFinished;
    expect(handler.stats().workingSet!.replay).toMatchObject({ state: 'done', prefetched: order.length, skipped: 0, failedRuns: 0 });
    await touchPages(guest, order);
    expect(handler.stats().faults).toBe(0);
    expectPages(new Uint8Array(guest.buffer), order);
  });

  itWith(['minorShmem', 'threadId'], 'a source shorter than the memory leaves the rest to faults; a source closed by the caller is still read (the handler holds its own duplicate)', async () => {
    const pages = 2048;
    for (const how of ['short', 'closed'] as const) {
      const { mem, uffd, guest } = setup(pages);
      // 'short': the image holds only the first half of the memory.
      const imagePages = how === 'short' ? pages / 2 : pages;
      const path = join(dir, `image-${how}`);
      writeFileSync(path, Buffer.concat(Array.from({ length: imagePages }, (_, p) => pageContent(p))));
      const fd = openSync(path, 'r');
      let fdOpen = true;
      const order = Array.from({ length: pages }, (_, p) => p);
      const handler: FaultHandler = new FaultHandler(uffd, {
        memfd: mem, mode: 'native',
        fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
        // Single-page runs: many batches, so a close lands between two of them.
        prefetch: { pages: order, file: { fd }, start: 'now', maxRunPages: 1 },
      });
      handlers.push(handler);
      handler.attach(guest).start();
      if (how === 'closed') {
        closeSync(fd);
        fdOpen = false;
      }
      await handler.replayFinished;
      if (fdOpen) closeSync(fd);
      const touched = shuffled(pages, rng(31));
      await touchPages(guest, touched);
      const stats = await settledStats(handler);
      expectPages(new Uint8Array(guest.buffer), touched);
      const replay = stats.workingSet!.replay;
      expect(replay.state).toBe('done');
      expect(replay.prefetched + replay.leftToFaults + replay.skipped).toBe(pages);
      expect(stats.fetched).toBe(replay.leftToFaults);
      if (how === 'short') {
        expect(replay.prefetched).toBe(imagePages);
        expect(replay.failedRuns).toBe(pages - imagePages);
      } else {
        expect(replay).toMatchObject({ prefetched: pages, failedRuns: 0 });
      }
      await handler.stop();
    }
  });

  itWith(['minorShmem', 'threadId'], 'a stop while batches run is bounded, cancels what has not begun, and leaves no descriptor behind', async () => {
    const pages = 16384;
    const fdsBefore = openFds();
    const { mem, uffd, guest } = setup(pages);
    const image = Memfd.create(pages * PAGE_SIZE, { name: 'ws-replay-image' });
    open.push(image);
    const handler = new FaultHandler(uffd, {
      memfd: mem, mode: 'native', fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
      prefetch: { pages: shuffled(pages, rng(41)), file: { fd: image.fd }, start: 'now', maxRunPages: 1 },
    });
    handler.attach(guest).start();
    await new Promise((r) => setTimeout(r, 5));
    const t0 = performance.now();
    await handler.stop();
    expect(performance.now() - t0).toBeLessThan(scaled(2000));
    const replay = handler.stats().workingSet!.replay;
    expect(replay.state).toBe('stopped');
    expect(replay.prefetched).toBeLessThan(pages);
    await handler.stop();
    uffd.close();
    guest.unmap();
    mem.close();
    image.close();
    expect(openFds()).toBe(fdsBefore);
  });

  itWith(['minorShmem'], 'bad file options are typed errors at construction', () => {
    const { mem, uffd } = setup(16);
    const base = { memfd: mem, fetch: () => undefined };
    const make = (prefetch: unknown) => new FaultHandler(uffd, { ...base, prefetch } as ConstructorParameters<typeof FaultHandler>[1]);
    expect(() => make({ pages: [0], file: { fd: mem.fd }, read: () => new Uint8Array(PAGE_SIZE) })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => make({ pages: [0], file: { fd: -1 } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => make({ pages: [0], file: 3 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => make({ pages: [0], file: { fd: mem.fd, offset: -4096 } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    for (const threads of [0, native.runFillLayout.maxThreads + 1, 1.5])
      expect(() => make({ pages: [0], file: { fd: mem.fd }, threads })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });
});

describe('the run filler, native side', () => {
  itWith(['minorShmem'], 'its layout is what the TypeScript side reads; it refuses runs past the backing and a control array JavaScript could detach', async () => {
    expect(Object.keys(native.runFillLayout).sort()).toEqual(['cancel', 'maxThreads', 'slots']);
    expect(native.runFillLayout.slots).toBeGreaterThan(native.runFillLayout.cancel);
    const { mem, uffd } = setup(8);
    const present = new PresentPages(mem.size, PAGE_SIZE);
    const engine = new FaultEngine(uffd, { backingFd: mem.fd, pageSize: PAGE_SIZE, fill: 'continue', mapAhead: 0, present });
    const control = new Int32Array(new SharedArrayBuffer(native.runFillLayout.slots * 4));
    await expect(engine.fillRuns(mem.fd, mem.fd, 0, Uint32Array.of(6, 3), 1, true, control)).rejects.toMatchObject({ code: 'EINVAL', syscall: 'copy_file_range' });
    expect(() => engine.fillRuns(mem.fd, mem.fd, 0, Uint32Array.of(0, 1), 1, true, new Int32Array(native.runFillLayout.slots))).toThrow(TypeError);
    expect(() => engine.fillRuns(mem.fd, mem.fd, 0, Uint32Array.of(0, 1, 2), 1, true, control)).toThrow(TypeError);
    // Cancelled before it began: every run reports ECANCELED, nothing is marked.
    Atomics.store(control, native.runFillLayout.cancel, 1);
    const results = await engine.fillRuns(mem.fd, mem.fd, 0, Uint32Array.of(0, 2, 4, 2), 2, false, control);
    expect([...results]).toEqual([-125, -125]);
    expect(present.count()).toBe(0);
    engine.stop();
  });
});

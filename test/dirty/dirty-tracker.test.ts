// DirtyTracker against the real kernel, by both methods: wp-async (uffd-wp
// async + PAGEMAP_SCAN) and wp-sync (synchronous WP faults served by a native
// thread), the latter forced by its option so it runs on new kernels too.
// Writers are native threads, the JavaScript thread and another process.
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, describe, expect, it } from 'vitest';

import { DirtyPages, DirtyTracker, FdSocket, Memfd, PAGE_SIZE, Userfaultfd, probe, touchPages } from '../../lib/index';
import { formatReport } from '../../lib/cli';
import { native } from '../../lib/native';
import { NEGATIVE_ERRNO } from '../../lib/errno';
import { DirtyMethod, dirtyMethods, unsupportedError } from '../../lib/dirty-methods';
import { distEntry, fixture, itUnless, missingReason, sleep, waitFor } from '../helpers';
import { openFdCount, sleepingIn } from '../core/support';
import { rng, shuffled } from '../handler/util';

const support = dirtyMethods();
const METHODS: DirtyMethod[] = ['wp-async', 'wp-sync'];
const unavailable = (method: DirtyMethod): string | undefined => missingReason() ?? support[method].reason;

const open: { close(): void }[] = [];
afterEach(() => {
  while (open.length) open.pop()!.close();
});

function memfd(pages: number): Memfd {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'dirty-test' });
  open.push(mem);
  return mem;
}

function tracker(views: ConstructorParameters<typeof DirtyTracker>[0], options: ConstructorParameters<typeof DirtyTracker>[1]): DirtyTracker {
  const t = new DirtyTracker(views, options);
  open.push(t);
  return t;
}

/** The pages a result names, read from the bitmap, after checking that the runs say the same. */
function pagesOf(t: DirtyTracker, result: DirtyPages): number[] {
  const fromBitmap: number[] = [];
  for (let p = 0; p < t.pageCount; p++) if (result.bitmap[p >>> 5] & (1 << (p & 31))) fromBitmap.push(p);
  const fromRuns: number[] = [];
  for (const run of result.runs) {
    const view = t.views[run.view];
    expect(run.count).toBeGreaterThan(0);
    expect(run.page).toBeGreaterThanOrEqual(view.firstPage);
    expect(run.page + run.count).toBeLessThanOrEqual(view.firstPage + view.pages);
    expect(run.address).toBe(view.address + (run.page - view.firstPage) * t.pageSize);
    for (let i = 0; i < run.count; i++) fromRuns.push(run.page + i);
  }
  expect(fromRuns).toEqual(fromBitmap);
  expect(result.count).toBe(fromBitmap.length);
  return fromBitmap;
}

const sorted = (pages: Iterable<number>): number[] => [...new Set(pages)].sort((a, b) => a - b);

/** Open userfaultfds of this process. */
function uffdCount(): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === 'anon_inode:[userfaultfd]';
    } catch {
      return false;
    }
  }).length;
}

function threadCount(): number {
  return readdirSync('/proc/self/task').length;
}

/** Mappings of memfds in this process (V8 and thread stacks come and go; these are what a leak would be). */
function mappingCount(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.includes('/memfd:')).length;
}

for (const method of METHODS) {
  const skip = unavailable(method);

  describe(`DirtyTracker (${method})`, () => {
    itUnless(skip, 'reports every written page once, over two views, in rounds: none missed, none twice, a clean re-collect is empty', async () => {
      const mem = memfd(96);
      const a = mem.map({ offset: 0, length: 64 * PAGE_SIZE });
      const b = mem.map({ offset: 64 * PAGE_SIZE, length: 32 * PAGE_SIZE });
      const t = tracker([a, b], { method });
      expect(t.method).toBe(method);
      expect(t.pageCount).toBe(96);
      expect(t.views.map((v) => v.firstPage)).toEqual([0, 64]);
      t.start();
      expect(t.collect().count).toBe(0);
      const random = rng(7);
      for (let round = 0; round < 12; round++) {
        const inA = shuffled(64, random).slice(0, Math.floor(random() * 20));
        const inB = shuffled(32, random).slice(0, Math.floor(random() * 10));
        // Native threads for the first view, the JavaScript thread for the second.
        if (inA.length) await touchPages(a, inA, { write: round + 1 });
        const bytes = new Uint8Array(b.buffer);
        for (const p of inB) bytes[p * PAGE_SIZE + 100] = round + 1;
        const got = pagesOf(t, t.collect());
        expect(got).toEqual(sorted([...inA, ...inB.map((p) => 64 + p)]));
        expect(t.collect().count, 'a re-collect without writes').toBe(0);
      }
      // The writes went to memory, through the tracker.
      expect(new Uint8Array(a.buffer)[0] === 0 || new Uint8Array(a.buffer)[0] > 0).toBe(true);
    });

    itUnless(skip, 'the same page written again after a collect is reported again; a write of a page already dirty is one page', async () => {
      const mem = memfd(16);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      await touchPages(view, [3, 3, 3, 4], { write: 1 });
      expect(pagesOf(t, t.collect())).toEqual([3, 4]);
      await touchPages(view, [3], { write: 2 });
      expect(pagesOf(t, t.collect())).toEqual([3]);
      expect(new Uint8Array(view.buffer)[3 * PAGE_SIZE]).toBe(2);
    });

    itUnless(skip, 'reset: false only looks (the pages stay reported); reset: true starts a new interval', async () => {
      const mem = memfd(32);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      await touchPages(view, [1, 2, 30], { write: 1 });
      expect(pagesOf(t, t.collect({ reset: false }))).toEqual([1, 2, 30]);
      expect(pagesOf(t, t.collect({ reset: false }))).toEqual([1, 2, 30]);
      await touchPages(view, [5, 2], { write: 2 });
      expect(pagesOf(t, t.collect({ reset: false }))).toEqual([1, 2, 5, 30]);
      expect(pagesOf(t, t.collect({ reset: true }))).toEqual([1, 2, 5, 30]);
      expect(t.collect({ reset: false }).count).toBe(0);
      await touchPages(view, [7], { write: 3 });
      expect(pagesOf(t, t.collect())).toEqual([7]);
    });

    itUnless(skip, 'reset: false over more than a thousand scattered runs reports each written page once', async () => {
      // Half of 4096 pages at random: over a thousand runs, enough that a
      // walk without re-protection stops short of regions it already reported.
      const pages = 4096;
      const mem = memfd(pages);
      const view = mem.map();
      view.advise('populateWrite', 0, pages * PAGE_SIZE);
      const t = tracker([view], { method });
      t.start();
      const written = shuffled(pages, rng(11)).slice(0, pages / 2).sort((a, b) => a - b);
      await touchPages(view, written, { write: 1 });
      const looked = t.collect({ reset: false });
      expect(looked.runs.length).toBeGreaterThan(1000);
      expect(looked.count).toBe(written.length);
      expect(pagesOf(t, looked)).toEqual(written);
      expect(pagesOf(t, t.collect())).toEqual(written);
    });

    itUnless(skip, 'writers running during collects: every write lands in some collect, unwritten pages never appear', async () => {
      const pages = 2048;
      const mem = memfd(pages);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      const random = rng(3);
      const written = shuffled(pages, random).slice(0, 1500);
      const parts = [written.slice(0, 500), written.slice(500, 1000), written.slice(1000)];
      let done = 0;
      const writers = parts.map((part) => touchPages(view, part, { write: 9 }).then(() => done++));
      const seen = new Set<number>();
      const perPage = new Map<number, number>();
      while (done < writers.length) {
        for (const p of pagesOf(t, t.collect())) {
          seen.add(p);
          perPage.set(p, (perPage.get(p) ?? 0) + 1);
        }
        await sleep(0);
      }
      await Promise.all(writers);
      for (const p of pagesOf(t, t.collect())) {
        seen.add(p);
        perPage.set(p, (perPage.get(p) ?? 0) + 1);
      }
      expect(sorted(seen)).toEqual(sorted(written));
      // A write racing a collect can be reported twice: the kernel (wp-async)
      // or the reader (wp-sync) lifts the protection before the store retries,
      // and a collect in between protects the page again, so the store faults
      // once more and lands in the next interval. Once written, once or twice
      // reported; a page nobody wrote, never (checked above).
      const repeats = [...perPage.values()].filter((n) => n > 1).length;
      console.log(`${method}: ${written.length} pages written once each; ${repeats} reported in two intervals (a store racing a collect)`);
      expect(t.collect().count).toBe(0);
    });

    itUnless(skip, 'thousands of scattered runs (more than one PAGEMAP_SCAN vector) are all reported', async () => {
      const pages = 20_000;
      const mem = memfd(pages);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      const every2nd = Array.from({ length: pages / 2 }, (_, i) => i * 2);
      await touchPages(view, every2nd, { write: 1 });
      const result = t.collect();
      expect(result.runs.length).toBe(pages / 2);
      expect(pagesOf(t, result)).toEqual(every2nd);
      expect(t.collect().count).toBe(0);
    }, 60_000);

    itUnless(skip, 'stop() lifts every protection: writes after it complete and are not recorded; start() begins a clean interval', async () => {
      const mem = memfd(64);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      await touchPages(view, [1], { write: 1 });
      t.stop();
      t.stop();
      expect(t.tracking).toBe(false);
      expect(() => t.collect()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_DIRTY_NOT_STARTED' }));
      const before = t.writeFaults;
      await touchPages(view, [2, 3, 4], { write: 2 });
      new Uint8Array(view.buffer)[5 * PAGE_SIZE] = 2;
      expect(t.writeFaults).toBe(before);
      t.start();
      expect(t.collect().count).toBe(0);
      await touchPages(view, [6], { write: 3 });
      expect(pagesOf(t, t.collect())).toEqual([6]);
    });

    itUnless(skip, 'stop() and close() while native writers are busy: every writer finishes', async () => {
      const mem = memfd(4096);
      const view = mem.map();
      const t = tracker([view], { method });
      t.start();
      const random = rng(11);
      const writers = [0, 1, 2].map(() => touchPages(view, shuffled(4096, random), { write: 5 }));
      await sleep(1);
      t.stop();
      t.start();
      await sleep(1);
      t.close();
      const reports = await Promise.all(writers);
      expect(reports.every((r) => r.latencyNs.length === 4096)).toBe(true);
      expect(new Uint8Array(view.buffer).filter((_, i) => i % PAGE_SIZE === 0).every((b) => b === 5)).toBe(true);
    });

    itUnless(skip, 'pages written by another process, through a userfaultfd it opened and sent', async () => {
      const mem = memfd(64);
      const features = method === 'wp-async' ? 'wpAsync,wpUnpopulated,wpHugetlbfsShmem' : 'wpHugetlbfsShmem';
      const [parentEnd, childEnd] = FdSocket.pair();
      open.push(parentEnd);
      const child = spawn(process.execPath, [fixture('dirty-child.js'), distEntry, features], {
        stdio: ['ignore', 'inherit', 'inherit', childEnd.fd, mem.fd],
        timeout: 25_000,
      });
      childEnd.close();
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const hello = await parentEnd.receive();
      const range = JSON.parse(hello.data.toString()) as { pid: number; address: number; length: number };
      const uffd = Userfaultfd.fromFd(hello.fds[0]);
      open.push(uffd);
      const t = tracker([range], { uffd });
      expect(t.method).toBe(method);
      expect(t.pid).toBe(range.pid);
      t.start();
      expect(t.collect().count).toBe(0);
      for (const pages of [[0, 5, 6, 40], [5], [63, 62, 61]]) {
        parentEnd.send(JSON.stringify({ op: 'write', pages, value: 4 }));
        await parentEnd.receive();
        expect(pagesOf(t, t.collect())).toEqual(sorted(pages));
        expect(t.collect().count).toBe(0);
      }
      t.close();
      parentEnd.send(JSON.stringify({ op: 'exit' }));
      expect(await exited).toBe(0);
      expect(mem.read(40 * PAGE_SIZE, 1)[0]).toBe(4);
    });

    itUnless(skip, 'no descriptor, thread or mapping outlives close()', async () => {
      const mem = memfd(64);
      const view = mem.map();
      // One round first, so that what the process sets up once (toucher
      // thread stacks, cached probes) is not counted as a leak.
      const warm = new DirtyTracker([view], { method });
      warm.start();
      await touchPages(view, [0], { write: 1 });
      warm.close();
      const fds = openFdCount();
      const threads = threadCount();
      const maps = mappingCount();
      expect(maps, 'the view itself is counted').toBeGreaterThan(0);
      for (let i = 0; i < 20; i++) {
        const t = new DirtyTracker([view], { method });
        t.start();
        await touchPages(view, [i], { write: 1 });
        expect(pagesOf(t, t.collect())).toEqual([i]);
        if (i % 2) t.stop();
        t.close();
        t.close();
      }
      expect(openFdCount()).toBe(fds);
      // A toucher thread is joined just after it reported: wait for that, not a time.
      // (Fewer is fine: a thread of an earlier test may end meanwhile.)
      await waitFor(() => threadCount() <= threads, 10_000, 'toucher threads to be joined');
      expect(threadCount()).toBeLessThanOrEqual(threads);
      expect(mappingCount()).toBe(maps);
    });
  });
}

describe('DirtyTracker: the synchronous method', () => {
  itUnless(unavailable('wp-sync'), 'each first write is one message served by the reader thread; a second write to a dirty page costs none', async () => {
    const mem = memfd(16);
    const view = mem.map();
    const t = tracker([view], { method: 'wp-sync' });
    t.start();
    await touchPages(view, [1, 2, 3], { write: 1 });
    expect(t.writeFaults).toBe(3);
    await touchPages(view, [1, 2, 3], { write: 2 });
    expect(t.writeFaults).toBe(3);
    t.collect();
    await touchPages(view, [2], { write: 3 });
    expect(t.writeFaults).toBe(4);
  });

  itUnless(unavailable('wp-sync'), 'a writer already asleep on a protected page when the tracker starts is served; one asleep when it stops is woken', async () => {
    const mem = memfd(8);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['wpHugetlbfsShmem'] });
    open.push(uffd);
    uffd.register(view, { wp: true });
    uffd.writeProtect(view.address, view.length, { protect: true });
    let finished = false;
    const writer = touchPages(view, [4], { write: 6 }).then((r) => ((finished = true), r));
    const report = await new Promise<number>((resolve) => {
      // The toucher's thread id is only known once it reports; wait for a sleeper in a userfault instead.
      const check = () => (readdirSync('/proc/self/task').some((tid) => sleepingIn(Number(tid)) === 'handle_userfault') ? resolve(1) : setTimeout(check, 1));
      check();
    });
    expect(report).toBe(1);
    expect(finished).toBe(false);
    const t = tracker([view], { uffd, method: 'wp-sync' });
    t.start();
    await writer;
    expect(pagesOf(t, t.collect())).toEqual([4]);
    t.close();
    // And the other way: protected behind the tracker's back, then stop() wakes.
    uffd.register(view, { wp: true });
    uffd.writeProtect(view.address, view.length, { protect: true });
    const second = touchPages(view, [5], { write: 7 });
    await new Promise<void>((resolve) => {
      const check = () => (readdirSync('/proc/self/task').some((tid) => sleepingIn(Number(tid)) === 'handle_userfault') ? resolve() : setTimeout(check, 1));
      check();
    });
    const t2 = tracker([view], { uffd, method: 'wp-sync' });
    t2.start();
    t2.stop();
    await second;
    expect(new Uint8Array(view.buffer)[5 * PAGE_SIZE]).toBe(7);
  });
});

describe('DirtyTracker: a wp-sync tracker dropped while tracking', () => {
  itUnless(unavailable('wp-sync'), 'once collected, its pages are unprotected before its reader stops: a later writer does not sleep forever', async () => {
    const mem = memfd(32);
    const view = mem.map();
    const uffds = uffdCount();
    (() => {
      const t = new DirtyTracker([view], { method: 'wp-sync' });
      t.start();
    })();
    // The tracker's uffd, and the reader thread's own duplicate of it.
    expect(uffdCount()).toBe(uffds + 2);
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    // Finalizers run after a collection, on the event loop: wait until the
    // reader has stopped (its duplicate closed; the uffd itself stays open
    // until the environment ends, since nobody closed it).
    await waitFor(() => {
      gc();
      return uffdCount() === uffds + 1;
    }, 20_000, 'the dropped tracker\'s reader to stop');
    const report = await touchPages(view, [0, 7, 31], { write: 2 });
    expect(report.latencyNs.length).toBe(3);
    expect(mem.read(7 * PAGE_SIZE, 1)[0]).toBe(2);
  });
});

describe('DirtyTracker: a view that also has MINOR faults on the same uffd', () => {
  itUnless(missingReason('minorShmem') ?? unavailable('wp-async'), 'keepModes keeps the MINOR registration: faults still arrive, and the writes behind them are reported', async () => {
    const mem = memfd(16);
    mem.allocate(0, 16 * PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'wpAsync', 'wpUnpopulated', 'wpHugetlbfsShmem'] });
    open.push(uffd);
    uffd.register(view, { minor: true });
    const t = tracker([view], { uffd, keepModes: { minor: true } });
    expect(t.method).toBe('wp-async');
    t.start();
    const writer = touchPages(view, [2, 9], { write: 8 });
    const faults: number[] = [];
    while (faults.length < 2) {
      for (const ev of uffd.readEvents())
        if (ev.type === 'pagefault') {
          expect(ev.minor).toBe(true);
          faults.push((ev.address - view.address) / PAGE_SIZE);
          uffd.continue(ev.address, PAGE_SIZE);
        }
      await sleep(1);
    }
    await writer;
    expect(sorted(faults)).toEqual([2, 9]);
    expect(pagesOf(t, t.collect())).toEqual([2, 9]);
    t.close();
  });
});

describe('DirtyTracker: bad input and state', () => {
  const skip = unavailable('wp-async') && unavailable('wp-sync');

  itUnless(skip, 'views and options are checked before anything is opened, with typed errors', () => {
    const mem = memfd(8);
    const view = mem.map();
    const fds = openFdCount();
    expect(() => new DirtyTracker(undefined as never)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => new DirtyTracker([])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => new DirtyTracker([42 as never])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => new DirtyTracker([view, view])).toThrow(/must not overlap/);
    expect(() => new DirtyTracker([view], { method: 'fast' as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => new DirtyTracker([view], { uffd: 3 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => new DirtyTracker([view], { keepModes: { minor: true } })).toThrow(/applies only to views registered with options.uffd/);
    expect(() => new DirtyTracker([{ pid: 1, address: 0x10000, length: PAGE_SIZE }])).toThrow(/options.uffd.*is required/);
    expect(() => new DirtyTracker([{ pid: 1, address: 0x10000, length: PAGE_SIZE }], { uffd: {} as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => new DirtyTracker([{ pid: process.pid, address: 0x10000, length: PAGE_SIZE }])).toThrow(/is this process: track its memory through Mappings/);
    expect(() => new DirtyTracker([view, { pid: 1, address: 0x10000, length: PAGE_SIZE }])).toThrow(/same kind/);
    expect(() => new DirtyTracker([{ pid: -1, address: 0, length: PAGE_SIZE }])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => new DirtyTracker([{ pid: 1, address: 0x10001, length: PAGE_SIZE }])).toThrow(/multiple of the page size/);
    const gone = mem.map();
    gone.unmap();
    expect(() => new DirtyTracker([gone])).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(openFdCount()).toBe(fds);
  });

  itUnless(unavailable('wp-async'), 'a uffd whose features do not fit the method is refused, naming why', () => {
    const mem = memfd(8);
    const view = mem.map();
    const asyncUffd = Userfaultfd.open({ features: ['wpAsync', 'wpHugetlbfsShmem'] });
    const syncUffd = Userfaultfd.open({ features: ['wpHugetlbfsShmem'] });
    open.push(asyncUffd, syncUffd);
    expect(() => new DirtyTracker([view], { uffd: asyncUffd, method: 'wp-sync' })).toThrow(/negotiated wpAsync/);
    expect(() => new DirtyTracker([view], { uffd: syncUffd, method: 'wp-async' })).toThrow(/must have negotiated wpAsync/);
    expect(() => new DirtyTracker([view], { uffd: syncUffd, keepModes: { minor: true } })).toThrow(/cannot be used with wp-sync/);
    // A view held by another uffd: EBUSY, with the way out in the message.
    asyncUffd.register(view, { wp: true });
    expect(() => new DirtyTracker([view])).toThrow(expect.objectContaining({ code: 'EBUSY', message: expect.stringMatching(/pass that one as options.uffd/) }));
  });

  itUnless(skip, 'collect before start, and anything after close, are state errors; a view unmapped while tracked is named', async () => {
    const mem = memfd(8);
    const view = mem.map();
    const t = tracker([view], {});
    expect(() => t.collect()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_DIRTY_NOT_STARTED' }));
    expect(() => t.collect({ reset: 1 as never })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    t.start();
    t.start();
    view.unmap();
    expect(() => t.collect()).toThrow(/unmapped while tracked/);
    t.close();
    expect(t.closed).toBe(true);
    expect(() => t.start()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(() => t.collect()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    t.stop();
    t[Symbol.dispose]();
  });

  itUnless(unavailable('wp-async'), 'another process\'s pagemap that cannot be opened is a system error naming the path', () => {
    const uffd = Userfaultfd.open({ features: ['wpAsync', 'wpHugetlbfsShmem'] });
    open.push(uffd);
    // pid_max is at most 2^22: this pid never exists.
    expect(() => new DirtyTracker([{ pid: 0x7ffffffe, address: 0x10000, length: PAGE_SIZE }], { uffd }))
      .toThrow(expect.objectContaining({ code: 'ENOENT', path: '/proc/2147483646/pagemap' }));
  });

  it('the error for a kernel without either method names the Linux versions needed', () => {
    const none = { 'wp-async': { available: false, reason: 'wp-async needs Linux 6.7 or later (PAGEMAP_SCAN); this kernel is 5.10' }, 'wp-sync': { available: false, reason: 'wp-sync needs Linux 5.19 or later' } };
    const any = unsupportedError(none);
    expect(any).toMatchObject({ code: 'ERR_UFFD_DIRTY_UNSUPPORTED', needs: '5.19' });
    expect(any.message).toMatch(/Linux 6\.7\+ \(wp-async\) or Linux 5\.19\+ \(wp-sync/);
    const one = unsupportedError(none, 'wp-async');
    expect(one).toMatchObject({ code: 'ERR_UFFD_DIRTY_UNSUPPORTED', method: 'wp-async', needs: '6.7' });
    expect(one.message).toMatch(/needs Linux 6\.7/);
    // On this kernel, what probe() reports is what a tracker does.
    for (const method of METHODS) {
      const { available, reason } = support[method];
      expect(available || /needs Linux \d+\.\d+ or later/.test(reason ?? '')).toBe(true);
      if (available) console.log(`dirty tracking ${method}: available on this kernel`);
      else console.log(`dirty tracking ${method}: ${reason}`);
    }
  });
});

describe('probe() and userfaultfd doctor', () => {
  it('report both methods as the tracker finds them, with the reason where one is missing', () => {
    const caps = probe();
    expect(caps.dirtyTracking).toEqual(support);
    const text = formatReport(caps);
    for (const method of METHODS) {
      expect(text).toMatch(new RegExp(`dirty tracking ${method}\\s+${support[method].available ? 'available' : 'unavailable: '}`));
      if (!support[method].available) expect(caps.reasons.some((r) => r.includes(support[method].reason!))).toBe(true);
    }
    // On this kernel a tracker with method 'auto' takes what probe() puts first.
    if (caps.available && (support['wp-async'].available || support['wp-sync'].available)) {
      const mem = memfd(1);
      using t = new DirtyTracker([mem.map()]);
      expect(t.method).toBe(support['wp-async'].available ? 'wp-async' : 'wp-sync');
    }
  });
});

describe('the native layer refuses what is not its own', () => {
  it('wp-sync calls refuse a value that is not a wp-sync handle, and a bitmap that a thread could lose, with TypeErrors', () => {
    const bogus: unknown[] = [{}, null, undefined, 42, new ArrayBuffer(8)];
    for (const value of bogus) {
      expect(() => native.wpSyncStop(value as never)).toThrow(TypeError);
      expect(() => native.wpSyncCollect(value as never, false, new Uint32Array(1))).toThrow(TypeError);
    }
    const [a, b] = native.socketPair() as [number, number];
    try {
      const shared = () => new Int32Array(new SharedArrayBuffer(16));
      // Detachable memory under a native writer is refused before any thread starts.
      expect(() => native.wpSyncStart(a, PAGE_SIZE, new Float64Array(0), new Int32Array(4), shared())).toThrow(TypeError);
      expect(() => native.wpSyncStart(a, PAGE_SIZE, new Float64Array(2), shared(), shared())).toThrow(TypeError);
      expect(() => native.wpSyncStart(a, 3000, new Float64Array(0), shared(), shared())).toThrow(TypeError);
      expect(() => native.pagemapScanWritten(-1, 0, PAGE_SIZE, false)).toThrow(TypeError);
      expect(native.pagemapScanWritten(a, 0, PAGE_SIZE, false)).toBe(NEGATIVE_ERRNO.ENOTTY); // a socket is no pagemap
    } finally {
      native.closeFd(a);
      native.closeFd(b);
    }
  });
});

import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import type { ErrorAction, Fault } from '../../lib/index';
import { holdsFor, itWith, waitFor } from '../helpers';
import { cleanupAfterEach, delay, expectPages, pageContent, rng, settledStats, shuffled } from './util';

const { open, handlers } = cleanupAfterEach();

function setup(pages: number) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'errors-test', allocate: true });
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  open.push(mem, uffd);
  return { mem, uffd, guest: mem.map() };
}

const ZERO = Buffer.alloc(PAGE_SIZE);
const all = (n: number) => Array.from({ length: n }, (_, i) => i);

for (const mode of ['event-loop', 'native'] as const) {
  describe(`FaultHandler error policies and stop (${mode})`, () => {
    itWith(['minorShmem', 'threadId'], 'a throwing or rejecting fetch affects only its page; retry then succeeds', async () => {
      const pages = 256;
      const { mem, uffd, guest } = setup(pages);
      const attempts = new Map<number, number[]>();
      const decisions: [number, number][] = [];
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode,
        async fetch(f) {
          attempts.set(f.page, [...(attempts.get(f.page) ?? []), f.attempt]);
          if (f.page % 10 === 3 && f.attempt === 0) throw new Error(`sync-style failure ${f.page}`);
          if (f.page % 10 === 7 && f.attempt === 0) { await delay(1); throw new Error(`async failure ${f.page}`); }
          mem.write(f.offset, pageContent(f.page));
        },
        onError: async (err, f) => {
          decisions.push([f.page, f.attempt]);
          expect(String(err)).toContain(String(f.page));
          return 'retry' as const;
        },
      });
      handlers.push(handler);
      handler.attach(guest).start();
      await Promise.all([1, 2].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
      const failing = all(pages).filter((p) => p % 10 === 3 || p % 10 === 7);
      expect(decisions.map(([p]) => p).sort((a, b) => a - b)).toEqual(failing);
      for (const p of all(pages)) expect(attempts.get(p)).toEqual(failing.includes(p) ? [0, 1] : [0]);
      const stats = await settledStats(handler);
      expect(stats.errors).toBe(failing.length);
      expect(stats.fetched).toBe(pages);
      expect(stats.resolved).toBe(stats.faults);
      expectPages(new Uint8Array(guest.buffer), all(pages));
    });

    itWith(['minorShmem', 'threadId'], 'synchronous and asynchronous fetches mix: each page fetched once, throws retried, duplicates merged', async () => {
      // A fetch that returns (not a promise) is served on the spot, without the
      // waiting map; one that returns a promise goes the long way. Both must
      // keep one fetch per page while three threads fault the same pages and
      // only two fetches may run at once.
      const pages = 384;
      const { mem, uffd, guest } = setup(pages);
      const calls = new Map<number, number[]>();
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode, concurrency: 2,
        fetch(f) {
          calls.set(f.page, [...(calls.get(f.page) ?? []), f.attempt]);
          if (f.page % 7 === 2 && f.attempt === 0) throw new Error(`synchronous failure ${f.page}`);
          if (f.page % 5 === 1) return delay(1).then(() => { mem.write(f.offset, pageContent(f.page)); });
          mem.write(f.offset, pageContent(f.page));
          return undefined;
        },
        onError: () => 'retry' as const,
      });
      handlers.push(handler);
      handler.attach(guest).start();
      await Promise.all([1, 2, 3].map((s) => touchPages(guest, shuffled(pages, rng(s)))));
      for (const p of all(pages)) expect(calls.get(p), `page ${p}`).toEqual(p % 7 === 2 ? [0, 1] : [0]);
      const stats = await settledStats(handler);
      expect(stats.fetched).toBe(pages);
      expect(stats.errors).toBe(all(pages).filter((p) => p % 7 === 2).length);
      expect(stats.resolved).toBe(stats.faults);
      expect(stats.faults).toBe(pages + stats.duplicatesMerged + stats.alreadyPresent);
      expect(handler.present.inflight.size).toBe(0);
      expectPages(new Uint8Array(guest.buffer), all(pages));
    });

    itWith(['minorShmem', 'threadId'], "'zero' maps zeros for the failed page only", async () => {
      const pages = 64;
      const { mem, uffd, guest } = setup(pages);
      for (const p of all(pages)) mem.write(p * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0xee)); // stale content
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode,
        fetch: (f) => { if (f.page === 5 || f.page === 40) throw new Error('gone'); mem.write(f.offset, pageContent(f.page)); },
        onError: () => 'zero',
      });
      handlers.push(handler);
      handler.attach(guest).start();
      await touchPages(guest, shuffled(pages, rng(4)));
      const bytes = new Uint8Array(guest.buffer);
      expectPages(bytes, all(pages).filter((p) => p !== 5 && p !== 40));
      for (const p of [5, 40]) expect(Buffer.from(bytes.buffer, p * PAGE_SIZE, PAGE_SIZE).equals(ZERO)).toBe(true);
      expect(await settledStats(handler)).toMatchObject({ errors: 2, zeroFilled: 2, fetched: pages - 2 });
    });

    itWith(['minorShmem', 'threadId'], "'stop' (and the default after two retries) stops the handler with the error and wakes every faulter", async () => {
      for (const policy of ['stop', 'default', 'throwing onError'] as const) {
        const pages = 128;
        const { mem, uffd, guest } = setup(pages);
        const seen: Fault[] = [];
        const handler = new FaultHandler(uffd, {
          memfd: mem, mode,
          async fetch(f) {
            seen.push({ ...f });
            if (f.page === 17) throw new Error('source unreachable');
            await delay(1);
            mem.write(f.offset, pageContent(f.page));
          },
          onError: policy === 'default' ? undefined
            : policy === 'stop' ? (): ErrorAction => 'stop'
            : () => { throw new Error('policy broke'); },
        });
        handlers.push(handler);
        handler.attach(guest).start();
        const order = shuffled(pages, rng(8));
        const touched = touchPages(guest, order); // blocks on page 17 until the stop wakes it
        const err = (await handler.finished) as Error & { code?: string; cause?: Error; page?: number };
        await touched; // every faulter resumed
        expect(handler.state).toBe('stopped');
        expect(err.code).toBe('ERR_UFFD_FETCH_FAILED');
        expect(err.page).toBe(17);
        expect(err.cause?.message).toBe(policy === 'throwing onError' ? 'policy broke' : 'source unreachable');
        const attempts17 = seen.filter((f) => f.page === 17).map((f) => f.attempt);
        expect(attempts17).toEqual(policy === 'default' ? [0, 1, 2] : [0]);
        // Pages fetched before the stop hold their content; the rest read what the memfd holds (zeros).
        const fetchedPages = new Set(seen.filter((f) => f.page !== 17).map((f) => f.page));
        const bytes = new Uint8Array(guest.buffer);
        for (const p of all(pages)) {
          const got = Buffer.from(bytes.buffer, p * PAGE_SIZE, PAGE_SIZE);
          if (fetchedPages.has(p)) expect(got.equals(pageContent(p)), `page ${p}`).toBe(true);
          else expect(got.equals(ZERO), `page ${p}`).toBe(true);
        }
        expect(handler.stats().errors).toBe(attempts17.length);
      }
    });

    itWith(['minorShmem', 'threadId'], 'stop() with fetches in flight waits for them, maps them, and wakes everyone', async () => {
      const pages = 64;
      const { mem, uffd, guest } = setup(pages);
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const started: number[] = [];
      const handler = new FaultHandler(uffd, {
        memfd: mem, mode, concurrency: 4,
        async fetch(f) {
          started.push(f.page);
          await gate;
          mem.write(f.offset, pageContent(f.page));
        },
      });
      handlers.push(handler);
      handler.attach(guest).start();
      const touchers = [1, 2, 3, 4].map((s) => touchPages(guest, shuffled(pages, rng(s))));
      await waitFor(() => started.length >= 4, 5000, 'four fetches started');
      let stopped = false;
      const stopping = handler.stop().then(() => (stopped = true));
      await holdsFor(() => !stopped, 20, 'stop() waiting for the gated fetches');
      release();
      await stopping;
      await Promise.all(touchers);
      expect(await handler.finished).toBeUndefined();
      const bytes = new Uint8Array(guest.buffer);
      const fetched = new Set(started);
      expect(handler.stats().fetched).toBe(fetched.size);
      for (const p of all(pages)) {
        const got = Buffer.from(bytes.buffer, p * PAGE_SIZE, PAGE_SIZE);
        expect(got.equals(fetched.has(p) ? pageContent(p) : ZERO), `page ${p}`).toBe(true);
      }
    });

    itWith(['minorShmem', 'threadId'], 'uffd.close() with faults in flight wakes every faulter and finishes the handler', async () => {
      const pages = 32;
      const { mem, uffd, guest } = setup(pages);
      const started: number[] = [];
      const handler = new FaultHandler(uffd, { memfd: mem, mode, fetch: async (f) => { started.push(f.page); await delay(5); } });
      handlers.push(handler);
      handler.attach(guest).start();
      const touchers = [1, 2].map((s) => touchPages(guest, shuffled(pages, rng(s))));
      await waitFor(() => started.length >= 1, 5000, 'a fetch started');
      uffd.close();
      await Promise.all(touchers);
      expect(await handler.finished).toBeUndefined();
      expect(handler.state).toBe('stopped');
    });

    itWith(['minorShmem', 'threadId'], 'an AbortSignal stops the handler', async () => {
      const { mem, uffd, guest } = setup(4);
      const ac = new AbortController();
      const handler = new FaultHandler(uffd, { memfd: mem, mode, signal: ac.signal, fetch: (f) => void mem.write(f.offset, pageContent(f.page)) });
      handlers.push(handler);
      handler.attach(guest).start();
      await touchPages(guest, [0, 1]);
      ac.abort();
      expect(await handler.finished).toBeUndefined();
      expect(handler.state).toBe('stopped');
      expectPages(new Uint8Array(guest.buffer), [0, 1]);
    });
  });
}

// Nobody hangs on a fetch that never settles: stop() gives in-flight fetches
// a grace period, then aborts their signal, releases the views and resolves;
// closing the uffd resolves it at once. The faulting thread is always woken.
import { describe, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import type { FetchContext } from '../../lib/index';
import { itWith, scaled, waitFor } from '../helpers';
import { cleanupAfterEach, pageContent } from './util';

const { open, handlers } = cleanupAfterEach();

/** `promise`, or a rejection naming `what` once `ms` (scaled) have passed: a hang fails the test instead of the suite. */
function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${scaled(ms)} ms`)), scaled(ms));
  });
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer));
}

/** A memfd whose pages hold content (so a touch is a MINOR fault), a registered view and a handler whose fetch never settles. */
function stuckHandler(mode: 'event-loop' | 'native', stopGraceMs: number) {
  const mem = Memfd.create(4 * PAGE_SIZE);
  open.push(mem);
  for (let p = 0; p < 4; p++) mem.write(p * PAGE_SIZE, pageContent(p));
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  open.push(uffd);
  const fetches: FetchContext[] = [];
  const handler = new FaultHandler(uffd, {
    memfd: mem,
    mode,
    stopGraceMs,
    // A stuck network read: never resolves, never rejects.
    fetch: (_fault, context) => {
      fetches.push(context);
      return new Promise<void>(() => {});
    },
  }).attach(view).start();
  handlers.push(handler);
  return { mem, view, uffd, handler, fetches };
}

describe('cancellation: a fetch that never settles', () => {
  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'threadId'], `stop() waits stopGraceMs, aborts the fetch's signal, wakes the faulter and resolves (${mode})`, async () => {
      const { view, handler, fetches } = stuckHandler(mode, 150);
      const touched = touchPages(view, [1]);
      await waitFor(() => fetches.length === 1, 5000, 'the fetch call');
      expect(fetches[0].signal.aborted).toBe(false);
      const started = Date.now();
      await within(handler.stop(), 5000, 'stop()');
      expect(Date.now() - started).toBeGreaterThanOrEqual(140);
      expect(fetches[0].signal.aborted).toBe(true);
      expect(fetches[0].signal.reason).toMatchObject({ code: 'ERR_UFFD_HANDLER_STOPPED' });
      expect(handler.state).toBe('stopped');
      // Woken after the views were released: the page as the memfd holds it.
      const report = await within(touched, 5000, 'the faulting thread');
      expect(report.checksum).toBe(pageContent(1)[0]);
      expect(await handler.finished).toBeUndefined();
      // Idempotent and bounded.
      await within(Promise.all([handler.stop(), handler.stop()]), 1000, 'stop() again');
    });

    itWith(['minorShmem', 'threadId'], `closing the uffd resolves a pending stop() at once, grace period or not (${mode})`, async () => {
      const { view, uffd, handler, fetches } = stuckHandler(mode, 3_600_000);
      const touched = touchPages(view, [2]);
      await waitFor(() => fetches.length === 1, 5000, 'the fetch call');
      const stopping = handler.stop();
      uffd.close();
      await within(stopping, 2000, 'stop() after close');
      expect(fetches[0].signal.aborted).toBe(true);
      expect(fetches[0].signal.reason).toMatchObject({ code: 'ERR_UFFD_HANDLER_STOPPED' });
      // The kernel wakes every faulter when the uffd closes.
      const report = await within(touched, 5000, 'the faulting thread');
      expect(report.checksum).toBe(pageContent(2)[0]);
    });

    itWith(['minorShmem', 'threadId'], `a fetch that honours the signal ends with it; the error policy is not asked about an abandoned page (${mode})`, async () => {
      const mem = Memfd.create(4 * PAGE_SIZE);
      open.push(mem);
      mem.write(3 * PAGE_SIZE, pageContent(3));
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
      open.push(uffd);
      let aborted = 0;
      let fetchCalls = 0;
      let policyCalls = 0;
      const handler = new FaultHandler(uffd, {
        memfd: mem,
        mode,
        stopGraceMs: 0,
        onError: () => {
          policyCalls++;
          return 'stop';
        },
        fetch: (_fault, { signal }) => new Promise<void>((_, reject) => {
          fetchCalls++;
          signal.addEventListener('abort', () => {
            aborted++;
            reject(signal.reason);
          }, { once: true });
        }),
      }).attach(view).start();
      handlers.push(handler);
      const touched = touchPages(view, [3]);
      // The fetch itself, not the engine's fault counter: in native mode the
      // counter moves on the resolver thread before the record reaches fetch.
      await waitFor(() => fetchCalls === 1, 5000, 'the fetch call');
      await within(handler.stop(), 2000, 'stop()');
      expect(aborted).toBe(1);
      await within(touched, 5000, 'the faulting thread').then((r) => expect(r.checksum).toBe(pageContent(3)[0]));
      expect(policyCalls).toBe(0);
      expect(handler.stats().errors).toBe(0);
      expect(await handler.finished).toBeUndefined();
    });
  }
});

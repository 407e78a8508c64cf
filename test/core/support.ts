// Plumbing shared by the core tests: memfds with known bytes, a CONTINUE
// server loop, event waiting, and a worker thread that owns its own view of a
// memfd (the thread that touches or reshapes a registered range must never be
// the one that reads the uffd).
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

import { Memfd, PAGE_SIZE, UffdEvent, Userfaultfd } from '../../lib/index';
import { distEntry, fixture, waitFor } from '../helpers';

export type Pagefault = Extract<UffdEvent, { type: 'pagefault' }>;

/** The byte every page `i` of a filled memfd holds. */
export const pageByte = (i: number): number => (i % 250) + 1;

/** Collects closables and closes them in reverse order (for afterEach). */
export class Closer {
  readonly #items: { close(): void }[] = [];
  add<T extends { close(): void }>(item: T): T {
    this.#items.push(item);
    return item;
  }
  closeAll(): void {
    while (this.#items.length) this.#items.pop()!.close();
  }
}

/** A memfd of `pages` pages, page i filled with pageByte(i). */
export function filledMemfd(closer: Closer, pages: number, name = 'core-test'): Memfd {
  const mem = closer.add(Memfd.create(pages * PAGE_SIZE, { name }));
  for (let i = 0; i < pages; i++) mem.write(i * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, pageByte(i)));
  return mem;
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * Reads events until `until` settles, handing each to `onEvent` (default:
 * CONTINUE one page for pagefaults). Returns every event seen.
 */
export async function serve(uffd: Userfaultfd, until: Promise<unknown>, onEvent?: (ev: UffdEvent) => void): Promise<UffdEvent[]> {
  const seen: UffdEvent[] = [];
  let finished = false;
  until.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    for (const ev of uffd.readEvents()) {
      seen.push(ev);
      if (onEvent) onEvent(ev);
      else if (ev.type === 'pagefault') uffd.continue(ev.address, PAGE_SIZE);
    }
    await tick();
  }
  return seen;
}

/** Reads events until at least `count` have arrived (does not resolve anything). */
export async function collect(uffd: Userfaultfd, count: number, ms = 10_000): Promise<UffdEvent[]> {
  const seen: UffdEvent[] = [];
  await waitFor(() => {
    seen.push(...uffd.readEvents());
    return seen.length >= count;
  }, ms, `${count} uffd event(s)`);
  return seen;
}

/** Where the kernel has thread `tid` of this process sleeping (wchan). */
export function sleepingIn(tid: number): string {
  try {
    return readFileSync(`/proc/self/task/${tid}/wchan`, 'utf8');
  } catch {
    return '(gone)';
  }
}

/** Number of open descriptors of this process. */
export function openFdCount(): number {
  return require('node:fs').readdirSync('/proc/self/fd').length;
}

/** A worker thread with its own mapping of a memfd, driven by request/reply. */
export class MmWorker {
  readonly worker: Worker;
  #next = 0;
  readonly #pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();

  constructor(memfdFd: number) {
    this.worker = new Worker(fixture('mm-worker.js'), { workerData: { entry: distEntry, fd: memfdFd } });
    this.worker.on('message', (m: { id: number; ok: boolean; result?: unknown; error?: { code: string; message: string } }) => {
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(Object.assign(new Error(m.error!.message), { code: m.error!.code }));
    });
    this.worker.on('error', (err) => {
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    });
  }

  /** Sends one request; the promise settles with the worker's reply. */
  call<T = any>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, op, ...args });
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

export { PAGE_SIZE };

// The scenarios: how each one sets up its memfd, its handler and its touchers,
// and what it reports. Every latency is measured by the faulting thread around
// its own first touch with the native monotonic clock.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { bench, pageByte, unwrap } from './native';
import { LatencySummary, summarize } from './stats';

export type Mode =
  | 'floor'
  | 'c-reference'
  | 'native-resolver'
  | 'event-loop+native-toucher'
  | 'event-loop+worker-toucher'
  | 'worker-handler+main-toucher';
export type Placement = 'same' | 'diff' | 'unpinned';
export type Order = 'seq' | 'random';
export type PageKind = '4k' | '2m';

export const MODE_LABEL: Record<Mode, string> = {
  floor: 'floor (no uffd)',
  'c-reference': 'C reference',
  'native-resolver': 'native resolver',
  'event-loop+native-toucher': 'event loop, native toucher',
  'event-loop+worker-toucher': 'event loop, worker toucher',
  'worker-handler+main-toucher': 'worker handler, main toucher',
};

export interface Scenario {
  id: string;
  mode: Mode;
  page: PageKind;
  placement: Placement;
  order: Order;
  threads: number;
  pages: number;
}

export interface ScenarioResult extends Scenario {
  pageSize: number;
  handlerCpu: number;
  toucherCpus: number[];
  /** Pages the touchers touched: one fault each. */
  faults: number;
  /** Latency samples the touchers returned. */
  touched: number;
  /** Pagefault messages the handler read (0 for the floor). */
  messages: number;
  /** Messages whose faulter the handler woke (CONTINUE, or EEXIST + WAKE). */
  resolved: number;
  /** Every toucher read the byte the memfd holds for each page. */
  checksumOk: boolean;
  /** touched == faults, checksums right, and resolved >= faults (floor: no handler). */
  allResolved: boolean;
  latency: LatencySummary;
  wallNs: number;
  faultsPerSec: number;
  /** Library modes: the handler's own view, message read to CONTINUE done (FaultHandler.stats().latencyUs), µs. */
  handlerUs?: { p50: number; p99: number };
  note?: string;
}

/** CPUs of the handler and of each toucher for a placement. */
export function placementCpus(placement: Placement, threads: number, cpuCount: number): { handler: number; touchers: number[] } {
  if (placement === 'unpinned') return { handler: -1, touchers: Array(threads).fill(-1) };
  if (placement === 'same') return { handler: 0, touchers: Array(threads).fill(0) };
  const others = Math.max(1, cpuCount - 1);
  return { handler: 0, touchers: Array.from({ length: threads }, (_, t) => 1 + (t % others)) };
}

function finish(s: Scenario, pageSize: number, cpus: { handler: number; touchers: number[] }, orders: Uint32Array[],
  latencies: ArrayLike<number>[], checksum: number, messages: number, resolved: number, wallNs: number, note?: string): ScenarioResult {
  const faults = orders.reduce((n, o) => n + o.length, 0);
  const expected = orders.reduce((sum, o) => sum + o.reduce((a, p) => a + pageByte(p), 0), 0);
  const touched = latencies.reduce((n, l) => n + l.length, 0);
  const checksumOk = checksum === expected;
  const handled = s.mode === 'floor' || resolved >= faults;
  return {
    ...s, pageSize, handlerCpu: cpus.handler, toucherCpus: cpus.touchers, faults, touched, messages, resolved, checksumOk,
    allResolved: touched === faults && checksumOk && handled,
    latency: summarize(latencies), wallNs, faultsPerSec: wallNs > 0 ? faults / (wallNs / 1e9) : 0, note,
  };
}

/** A memfd with every page in the page cache, each starting with pageByte(i). */
function filledMemfd(pages: number, huge: boolean): Memfd {
  const mem = Memfd.create(pages * pageSizeFor(huge), { name: 'uffd-bench', hugetlb: huge });
  const filler = mem.map();
  const bytes = new Uint8Array(filler.buffer);
  for (let i = 0; i < pages; i++) bytes[i * mem.pageSize] = pageByte(i);
  // Unmapped again: the next view of the file has no PTEs and faults MINOR.
  filler.unmap();
  return mem;
}

const HUGE_PAGE = 2 * 1024 * 1024;
const pageSizeFor = (huge: boolean) => (huge ? HUGE_PAGE : PAGE_SIZE);

const taskIds = (): Set<number> => new Set(readdirSync('/proc/self/task').map(Number));

const failFetch = (): never => {
  throw new Error('benchmark pages are all present: fetch must never be called');
};

const WORKER = join(__dirname, 'worker.js');

function startWorker(data: object): Worker {
  return new Worker(WORKER, { workerData: data });
}

function nextMessage<T>(worker: Worker): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    worker.once('error', onError);
    worker.once('message', (m: T) => {
      worker.off('error', onError);
      resolve(m);
    });
  });
}

export async function runScenario(s: Scenario, orders: Uint32Array[], cpuCount: number): Promise<ScenarioResult> {
  const huge = s.page === '2m';
  const pageSize = pageSizeFor(huge);
  const cpus = placementCpus(s.placement, s.threads, cpuCount);

  if (s.mode === 'floor') {
    const r = unwrap(bench.floor(pageSize, s.pages, huge, orders[0], cpus.touchers[0]));
    return finish(s, pageSize, cpus, orders, [r.latencyNs], r.checksum, 0, 0, r.wallNs);
  }
  if (s.mode === 'c-reference') {
    const r = unwrap(bench.cReference(pageSize, s.pages, huge, orders, cpus.handler, cpus.touchers));
    const note = r.error ? `handler saw errno ${-r.error}` : undefined;
    return finish(s, pageSize, cpus, orders, r.latencyNs, r.checksum, r.messages, r.resolved + r.existed, r.wallNs, note);
  }

  const mem = filledMemfd(s.pages, huge);
  try {
    if (s.mode === 'worker-handler+main-toucher') return await workerHandler(s, mem, orders, cpus, pageSize);
    const uffd = Userfaultfd.open({ features: [huge ? 'minorHugetlbfs' : 'minorShmem', 'threadId'] });
    try {
      if (s.mode === 'event-loop+worker-toucher') return await workerToucher(s, mem, uffd, orders, cpus, pageSize);
      return await nativeTouchers(s, mem, uffd, orders, cpus, pageSize);
    } finally {
      uffd.close();
    }
  } finally {
    mem.close();
  }
}

/** Native resolver, or the event loop of this thread, against native toucher threads. */
async function nativeTouchers(s: Scenario, mem: Memfd, uffd: Userfaultfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] }, pageSize: number): Promise<ScenarioResult> {
  const view = mem.map();
  view.advise('random');
  const handler = new FaultHandler(uffd, { memfd: mem, fetch: failFetch, mode: s.mode === 'native-resolver' ? 'native' : 'event-loop' });
  handler.attach(view);
  handler.present.mark(0, mem.size);
  let note: string | undefined;
  try {
    if (s.mode === 'native-resolver') {
      const before = taskIds();
      handler.start();
      // The resolver is the thread start() created: give it the handler's CPU.
      const fresh = [...taskIds()].filter((t) => !before.has(t));
      if (fresh.length !== 1) note = `found ${fresh.length} new threads after start(); resolver placement not set`;
      else if (cpus.handler >= 0) bench.pinThread(fresh[0], cpus.handler);
    } else {
      bench.pinSelf(cpus.handler);
      handler.start();
    }
    const t0 = process.hrtime.bigint();
    const reports = await Promise.all(orders.map((order, t) => touchPages(view, order, cpus.touchers[t] >= 0 ? { cpu: cpus.touchers[t] } : {})));
    const wall = Number(process.hrtime.bigint() - t0);
    // The resolver counts a fault after its CONTINUE has already woken the
    // toucher: read the counters once the thread has been joined.
    await handler.stop();
    const stats = handler.stats();
    if (stats.errors) note = `${stats.errors} fetch errors`;
    return { ...finish(s, pageSize, cpus, orders, reports.map((r) => r.latencyNs), reports.reduce((a, r) => a + r.checksum, 0), stats.faults, stats.resolved, wall, note),
      handlerUs: { p50: stats.latencyUs.p50, p99: stats.latencyUs.p99 } };
  } finally {
    bench.pinSelf(-1);
    await handler.stop();
    view.unmap();
  }
}

interface TouchDone {
  latencyNs: Float64Array;
  checksum: number;
  wallNs: number;
}

/** Handler on this thread's event loop; a worker maps the memfd and touches its pages. */
async function workerToucher(s: Scenario, mem: Memfd, uffd: Userfaultfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] }, pageSize: number): Promise<ScenarioResult> {
  const worker = startWorker({ role: 'toucher', fd: mem.fd, hugePageSize: mem.hugetlb ? mem.pageSize : undefined });
  const handler = new FaultHandler(uffd, { memfd: mem, fetch: failFetch, mode: 'event-loop' });
  try {
    const view = await nextMessage<{ address: number; length: number }>(worker);
    handler.attach({ address: view.address, length: view.length, offset: 0 });
    handler.present.mark(0, mem.size);
    bench.pinSelf(cpus.handler);
    handler.start();
    const done = nextMessage<TouchDone>(worker);
    worker.postMessage({ order: orders[0], cpu: cpus.touchers[0] });
    const r = await done;
    await handler.stop();
    const stats = handler.stats();
    return { ...finish(s, pageSize, cpus, orders, [r.latencyNs], r.checksum, stats.faults, stats.resolved, r.wallNs),
      handlerUs: { p50: stats.latencyUs.p50, p99: stats.latencyUs.p99 } };
  } finally {
    bench.pinSelf(-1);
    await handler.stop();
    await worker.terminate();
  }
}

/** Handler inside a worker_thread; this (main) thread touches its own view. */
async function workerHandler(s: Scenario, mem: Memfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] }, pageSize: number): Promise<ScenarioResult> {
  const view = mem.map();
  view.advise('random');
  const worker = startWorker({
    role: 'handler', fd: mem.fd, hugePageSize: mem.hugetlb ? mem.pageSize : undefined,
    address: view.address, length: view.length, cpu: cpus.handler,
  });
  try {
    const ready = await nextMessage<{ ready: true } | { error: string }>(worker);
    if ('error' in ready) throw new Error(`worker handler: ${ready.error}`);
    bench.pinSelf(cpus.touchers[0]);
    const t0 = process.hrtime.bigint();
    // Blocks this thread in each fault until the worker's loop resolves it.
    const r = bench.touchHere(view.buffer, pageSize, orders[0]);
    const wall = Number(process.hrtime.bigint() - t0);
    bench.pinSelf(-1);
    const stopped = nextMessage<{ faults: number; resolved: number; errors: number; p50: number; p99: number }>(worker);
    worker.postMessage('stop');
    const stats = await stopped;
    return { ...finish(s, pageSize, cpus, orders, [r.latencyNs], r.checksum, stats.faults, stats.resolved, wall, stats.errors ? `${stats.errors} fetch errors` : undefined),
      handlerUs: { p50: stats.p50, p99: stats.p99 } };
  } finally {
    bench.pinSelf(-1);
    await worker.terminate();
    view.unmap();
  }
}

export interface BulkRow {
  id: string;
  page: PageKind;
  method: 'continue' | 'populate-read' | 'populate-read+random';
  by: 'C' | 'library';
  pageSize: number;
  pages: number;
  bytes: number;
  reps: number;
  medianNs: number;
  /** Fastest repetition: the one the other jobs on the machine disturbed least. */
  bestNs: number;
  /** Rates of the fastest repetition. */
  pagesPerSec: number;
  gibPerSec: number;
  /** Rate of the median repetition. */
  medianPagesPerSec: number;
  checksOk: boolean;
}

const median = (values: ArrayLike<number>): number => {
  const sorted = Array.from(values).sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
};

function bulkRow(page: PageKind, method: BulkRow['method'], by: BulkRow['by'], pageSize: number, pages: number, ns: ArrayLike<number>, checksOk: boolean): BulkRow {
  const med = median(ns);
  const best = Math.min(...Array.from(ns));
  const bytes = pages * pageSize;
  return {
    id: `${page}/bulk/${method}/${by}`, page, method, by, pageSize, pages, bytes, reps: ns.length, medianNs: med, bestNs: best,
    pagesPerSec: pages / (best / 1e9), gibPerSec: bytes / 2 ** 30 / (best / 1e9), medianPagesPerSec: pages / (med / 1e9), checksOk,
  };
}

/** One CONTINUE over the whole range vs MADV_POPULATE_READ, in C and through the library. */
export function runBulk(page: PageKind, pages: number, reps: number): BulkRow[] {
  const huge = page === '2m';
  const pageSize = pageSizeFor(huge);
  const c = unwrap(bench.cBulk(pageSize, pages, huge, reps));
  const rows = [
    bulkRow(page, 'continue', 'C', pageSize, pages, c.continueNs, c.checksOk),
    bulkRow(page, 'populate-read', 'C', pageSize, pages, c.populateNs, c.checksOk),
    bulkRow(page, 'populate-read+random', 'C', pageSize, pages, c.populateRandomNs, c.checksOk),
  ];
  const mem = filledMemfd(pages, huge);
  const expected = Array.from({ length: pages }, (_, i) => pageByte(i)).reduce((a, b) => a + b, 0);
  const firstBytes = (buffer: ArrayBuffer) => {
    const bytes = new Uint8Array(buffer);
    let sum = 0;
    for (let i = 0; i < pages; i++) sum += bytes[i * pageSize];
    return sum;
  };
  const cont: number[] = [];
  const pop: number[] = [];
  let ok = true;
  try {
    for (let r = 0; r < reps; r++) {
      const uffd = Userfaultfd.open({ features: [huge ? 'minorHugetlbfs' : 'minorShmem'] });
      const view = mem.map();
      try {
        uffd.register(view, { minor: true });
        const t0 = process.hrtime.bigint();
        const mapped = uffd.continue(view.address, view.length);
        cont.push(Number(process.hrtime.bigint() - t0));
        // All mapped by the CONTINUE: this reads without one fault.
        ok = ok && mapped === view.length && firstBytes(view.buffer) === expected;
      } finally {
        view.unmap();
        uffd.close();
      }
      const plain = mem.map();
      try {
        const t0 = process.hrtime.bigint();
        plain.advise('populateRead');
        pop.push(Number(process.hrtime.bigint() - t0));
        ok = ok && firstBytes(plain.buffer) === expected;
      } finally {
        plain.unmap();
      }
    }
  } finally {
    mem.close();
  }
  rows.push(bulkRow(page, 'continue', 'library', pageSize, pages, cont, ok), bulkRow(page, 'populate-read', 'library', pageSize, pages, pop, ok));
  return rows;
}

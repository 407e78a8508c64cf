// The scenarios: how each row sets up its handler and its touchers, one
// repetition at a time. Rows come in cells (page kind, placement, order,
// touchers, handler threads); a cell's rows are measured interleaved, round
// after round (reference, library row, floor, …, in an order rotated every
// round) on the same memfd pages with the same page orders, so that every
// library repetition has a reference repetition measured next to it. Every
// latency is measured by the faulting thread around its own first touch,
// with the benchmark's one toucher and clock (native/bench, TimedTouches).
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { type GcCounts, GcWatch } from './gc-watch';
import { bench, pageByte, unwrap } from './native';

export type Mode =
  | 'floor'
  | 'floor+fault-around'
  | 'c-reference'
  | 'c-reference+spin'
  | 'native-resolver'
  | 'native-resolver+spin'
  | 'native-resolver+map-ahead'
  | 'event-loop+native-toucher'
  | 'event-loop+worker-toucher'
  | 'worker-handler+main-toucher';
export type Placement = 'same' | 'diff' | 'unpinned';
export type Order = 'seq' | 'random';
export type PageKind = '4k' | '2m';

export const MODE_LABEL: Record<Mode, string> = {
  floor: 'floor (no uffd)',
  'floor+fault-around': 'floor, fault-around on',
  'c-reference': 'C reference',
  'c-reference+spin': 'C reference, spinning',
  'native-resolver': 'native resolver',
  'native-resolver+spin': 'native resolver, spinning',
  'native-resolver+map-ahead': 'native resolver, mapAhead',
  'event-loop+native-toucher': 'event loop, native toucher',
  'event-loop+worker-toucher': 'event loop, worker toucher',
  'worker-handler+main-toucher': 'worker handler, main toucher',
};

/** Microseconds a spinning handler keeps polling after its last fault. */
export const SPIN_US = 50;
/** Pages a mapAhead row maps per fault (the faulting page included). */
export const MAP_AHEAD = 64;

/** Library options that may not exist yet in lib/ (issue 12: spinUs, threads). */
export interface LibraryCaps {
  spinUs: boolean;
  threads: boolean;
}

/** A set of rows measured interleaved: same pages, orders and placement. */
export interface Cell {
  id: string;
  kind: 'latency' | 'scan';
  page: PageKind;
  placement: Placement;
  order: Order;
  /** Touching threads. */
  threads: number;
  /** Handler threads: the C reference's on one uffd, the native resolver's `threads`. */
  handlers: number;
  /** Pages per repetition (all touchers together). */
  pages: number;
  modes: Mode[];
  /** What every ratio of the cell divides by. */
  reference: Mode;
}

/** One repetition of one row. */
export interface Rep {
  latencyNs: Float64Array[];
  /** CPU of each toucher after each touch (sched_getcpu). */
  touchCpus: Int32Array[];
  /** Fraction of the faults whose toucher ran on the CPU of the handler that resolved them (null: no handler). */
  colocated: number | null;
  /** The handler thread's CPU moved during the repetition (its fraction is then against the CPU it ended on). */
  handlerMoved?: boolean;
  wallNs: number;
  faults: number;
  touched: number;
  messages: number;
  resolved: number;
  checksumOk: boolean;
  /** CPU time the handler thread(s) used over the repetition, ns (null: not known). */
  handlerCpuNs: number | null;
  /** Library rows: message read to CONTINUE done (FaultHandler.stats().latencyUs), µs. */
  handlerUs?: { p50: number; p99: number };
  /** Event-loop rows: garbage collections of the handler's isolate during the repetition. */
  gc?: GcCounts;
  note?: string;
}

const HUGE_PAGE = 2 * 1024 * 1024;
export const pageSizeFor = (huge: boolean) => (huge ? HUGE_PAGE : PAGE_SIZE);

/** CPUs of the handler and of each toucher for a placement. */
export function placementCpus(placement: Placement, threads: number, cpuCount: number): { handler: number; touchers: number[] } {
  if (placement === 'unpinned') return { handler: -1, touchers: Array(threads).fill(-1) };
  if (placement === 'same') return { handler: 0, touchers: Array(threads).fill(0) };
  const others = Math.max(1, cpuCount - 1);
  return { handler: 0, touchers: Array.from({ length: threads }, (_, t) => 1 + (t % others)) };
}

/** A memfd with every page in the page cache, each starting with pageByte(i). */
export function filledMemfd(pages: number, huge: boolean): Memfd {
  const mem = Memfd.create(pages * pageSizeFor(huge), { name: 'uffd-bench', hugetlb: huge });
  const filler = mem.map();
  const bytes = new Uint8Array(filler.buffer);
  for (let i = 0; i < pages; i++) bytes[i * mem.pageSize] = pageByte(i);
  // Unmapped again: the next view of the file has no PTEs and faults MINOR.
  filler.unmap();
  return mem;
}

const taskIds = (): Set<number> => new Set(readdirSync('/proc/self/task').map(Number));

/** What /proc says of one of this process's threads: last CPU (stat field 39) and CPU time (schedstat), or null once gone. */
export function threadState(tid: number): { cpu: number; cpuNs: number } | null {
  try {
    const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces: field 3 onwards.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpuNs = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
    return { cpu: Number(fields[39 - 3]), cpuNs };
  } catch {
    return null;
  }
}

/** Handler threads watched over a repetition: where they ran and the CPU time they used. */
class HandlerWatch {
  readonly #before: ({ cpu: number; cpuNs: number } | null)[];
  constructor(readonly tids: number[]) {
    this.#before = tids.map(threadState);
  }
  end(): { cpus: number[]; moved: boolean; cpuNs: number | null } {
    const after = this.tids.map(threadState);
    let cpuNs = 0;
    let known = after.length > 0;
    let moved = false;
    after.forEach((a, i) => {
      const b = this.#before[i];
      if (!a || !b) known = false;
      else {
        cpuNs += a.cpuNs - b.cpuNs;
        if (a.cpu !== b.cpu) moved = true;
      }
    });
    return { cpus: after.map((a) => (a ? a.cpu : -1)), moved, cpuNs: known ? cpuNs : null };
  }
}

/** Fraction of touches that ran on the CPU of the handler that served them. */
export function colocatedFraction(orders: Uint32Array[], touchCpus: Int32Array[], handlerCpuOf: (page: number) => number): number {
  let same = 0;
  let all = 0;
  orders.forEach((order, t) => {
    for (let i = 0; i < order.length; i++) {
      all++;
      if (touchCpus[t][i] === handlerCpuOf(order[i])) same++;
    }
  });
  return all ? same / all : 0;
}

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

/**
 * Which of the native resolver's newer options (issue 12) this library has.
 * FaultHandler ignores options it does not know, but refuses the ones it
 * knows for mode 'native' only when given in event-loop mode: that refusal
 * is the feature check.
 */
export function probeLibrary(): LibraryCaps {
  const mem = filledMemfd(1, false);
  try {
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    try {
      const refused = (option: string) => {
        try {
          new FaultHandler(uffd, { memfd: mem, fetch: failFetch, mode: 'event-loop', [option]: 1 } as ConstructorParameters<typeof FaultHandler>[1]);
          return false;
        } catch {
          return true;
        }
      };
      return { spinUs: refused('spinUs'), threads: refused('threads') };
    } finally {
      uffd.close();
    }
  } finally {
    mem.close();
  }
}

const expectedSum = (orders: Uint32Array[]) => orders.reduce((sum, o) => sum + o.reduce((a, p) => a + pageByte(p), 0), 0);

function rep(orders: Uint32Array[], r: {
  latencyNs: Float64Array[]; touchCpus: Int32Array[]; checksum: number; wallNs: number; messages: number; resolved: number;
  colocated: number | null; handlerCpuNs: number | null; handlerMoved?: boolean; handlerUs?: { p50: number; p99: number }; gc?: GcCounts; note?: string;
}, needsHandler: boolean): Rep {
  const faults = orders.reduce((n, o) => n + o.length, 0);
  const touched = r.latencyNs.reduce((n, l) => n + l.length, 0);
  return {
    latencyNs: r.latencyNs, touchCpus: r.touchCpus, colocated: r.colocated, ...(r.handlerMoved ? { handlerMoved: true } : {}),
    wallNs: r.wallNs, faults, touched, messages: r.messages, resolved: needsHandler ? r.resolved : faults,
    checksumOk: r.checksum === expectedSum(orders), handlerCpuNs: r.handlerCpuNs,
    ...(r.handlerUs ? { handlerUs: r.handlerUs } : {}), ...(r.gc ? { gc: r.gc } : {}), ...(r.note ? { note: r.note } : {}),
  };
}

/** One repetition of `mode` in `cell`, on `mem` (filled, every page present). */
export async function runRep(mode: Mode, cell: Cell, mem: Memfd, orders: Uint32Array[], cpuCount: number, caps: LibraryCaps): Promise<Rep> {
  const huge = cell.page === '2m';
  const pageSize = pageSizeFor(huge);
  const pages = mem.size / pageSize;
  const cpus = placementCpus(cell.placement, cell.threads, cpuCount);

  if (mode === 'floor' || mode === 'floor+fault-around') {
    const r = unwrap(bench.floor(pageSize, pages, huge, orders[0], cpus.touchers[0], { fd: mem.fd, faultAround: mode === 'floor' ? 0 : 1 }));
    return rep(orders, { ...r, messages: 0, resolved: 0, colocated: null, handlerCpuNs: null }, false);
  }
  if (mode === 'c-reference' || mode === 'c-reference+spin') {
    const r = unwrap(bench.cReference(pageSize, pages, huge, orders, cpus.handler, cpus.touchers,
      { fd: mem.fd, spinUs: mode === 'c-reference+spin' ? SPIN_US : 0, handlers: cell.handlers }));
    return rep(orders, {
      ...r, resolved: r.resolved + r.existed, colocated: colocatedFraction(orders, r.touchCpus, (p) => r.handlerCpuByPage[p]),
      note: r.error ? `handler saw errno ${-r.error}` : undefined,
    }, true);
  }
  if (mode === 'worker-handler+main-toucher') return workerHandler(mem, orders, cpus, pageSize);
  const uffd = Userfaultfd.open({ features: [huge ? 'minorHugetlbfs' : 'minorShmem', 'threadId'] });
  try {
    if (mode === 'event-loop+worker-toucher') return await workerToucher(mem, uffd, orders, cpus, pageSize);
    return await nativeTouchers(mode, cell, mem, uffd, orders, cpus, pageSize, caps);
  } finally {
    uffd.close();
  }
}

/** Native resolver, or the event loop of this thread, against native toucher threads. */
async function nativeTouchers(mode: Mode, cell: Cell, mem: Memfd, uffd: Userfaultfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] },
  pageSize: number, caps: LibraryCaps): Promise<Rep> {
  const view = mem.map();
  view.advise('random');
  const isNative = mode.startsWith('native-resolver');
  // spinUs and threads: passed only where the library has them (it ignores unknown options).
  const extra: Record<string, number> = {};
  if (mode === 'native-resolver+spin' && caps.spinUs) extra.spinUs = SPIN_US;
  if (isNative && cell.handlers > 1 && caps.threads) extra.threads = cell.handlers;
  const handler = new FaultHandler(uffd, {
    memfd: mem, fetch: failFetch, mode: isNative ? 'native' : 'event-loop', mapAhead: mode === 'native-resolver+map-ahead' ? MAP_AHEAD - 1 : 0, ...extra,
  } as ConstructorParameters<typeof FaultHandler>[1]);
  handler.attach(view);
  handler.present.mark(0, mem.size);
  const notes: string[] = [];
  try {
    let tids: number[];
    if (isNative) {
      const before = taskIds();
      handler.start();
      // The resolver threads are the ones start() created: give them the handler's CPU.
      tids = [...taskIds()].filter((t) => !before.has(t));
      if (tids.length !== (extra.threads ?? 1)) notes.push(`found ${tids.length} new threads after start()`);
      if (cpus.handler >= 0) for (const t of tids) bench.pinThread(t, cpus.handler);
    } else {
      bench.pinSelf(cpus.handler);
      tids = [process.pid];
      handler.start();
    }
    const watch = new HandlerWatch(tids);
    const gcWatch = isNative ? undefined : new GcWatch();
    const r = await bench.touch(view.buffer, pageSize, orders, cpus.touchers);
    const h = watch.end();
    const gc = gcWatch?.end();
    // The resolver counts a fault after its CONTINUE has already woken the
    // toucher: read the counters once the thread has been joined.
    await handler.stop();
    const stats = handler.stats();
    if (stats.errors) notes.push(`${stats.errors} fetch errors`);
    // mapAhead: one message maps many pages; every touch is still served.
    const resolved = stats.resolved + stats.mapAheadPages;
    return rep(orders, {
      ...r, messages: stats.faults, resolved, colocated: colocatedFraction(orders, r.touchCpus, () => h.cpus[0]), handlerMoved: h.moved,
      handlerCpuNs: h.cpuNs, handlerUs: { p50: stats.latencyUs.p50, p99: stats.latencyUs.p99 }, gc, note: notes.join('; ') || undefined,
    }, true);
  } finally {
    bench.pinSelf(-1);
    await handler.stop();
    view.unmap();
  }
}

interface TouchDone {
  latencyNs: Float64Array;
  touchCpus: Int32Array;
  checksum: number;
  wallNs: number;
}

/** Handler on this thread's event loop; a worker maps the memfd and touches its pages. */
async function workerToucher(mem: Memfd, uffd: Userfaultfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] }, pageSize: number): Promise<Rep> {
  const worker = startWorker({ role: 'toucher', fd: mem.fd, hugePageSize: mem.hugetlb ? mem.pageSize : undefined });
  const handler = new FaultHandler(uffd, { memfd: mem, fetch: failFetch, mode: 'event-loop' });
  try {
    const view = await nextMessage<{ address: number; length: number }>(worker);
    handler.attach({ address: view.address, length: view.length, offset: 0 });
    handler.present.mark(0, mem.size);
    bench.pinSelf(cpus.handler);
    handler.start();
    const done = nextMessage<TouchDone>(worker);
    const watch = new HandlerWatch([process.pid]);
    const gcWatch = new GcWatch();
    worker.postMessage({ order: orders[0], cpu: cpus.touchers[0] });
    const r = await done;
    const h = watch.end();
    const gc = gcWatch.end();
    await handler.stop();
    const stats = handler.stats();
    return rep(orders, {
      latencyNs: [r.latencyNs], touchCpus: [r.touchCpus], checksum: r.checksum, wallNs: r.wallNs, messages: stats.faults, resolved: stats.resolved,
      colocated: colocatedFraction(orders, [r.touchCpus], () => h.cpus[0]), handlerMoved: h.moved, handlerCpuNs: h.cpuNs,
      handlerUs: { p50: stats.latencyUs.p50, p99: stats.latencyUs.p99 }, gc,
    }, true);
  } finally {
    bench.pinSelf(-1);
    await handler.stop();
    await worker.terminate();
  }
}

/** Handler inside a worker_thread; this (main) thread touches its own view. */
async function workerHandler(mem: Memfd, orders: Uint32Array[], cpus: { handler: number; touchers: number[] }, pageSize: number): Promise<Rep> {
  const view = mem.map();
  view.advise('random');
  const worker = startWorker({
    role: 'handler', fd: mem.fd, hugePageSize: mem.hugetlb ? mem.pageSize : undefined,
    address: view.address, length: view.length, cpu: cpus.handler,
  });
  try {
    const ready = await nextMessage<{ ready: true; tid: number } | { error: string }>(worker);
    if ('error' in ready) throw new Error(`worker handler: ${ready.error}`);
    bench.pinSelf(cpus.touchers[0]);
    const watch = new HandlerWatch([ready.tid]);
    // Blocks this thread in each fault until the worker's loop resolves it.
    const r = bench.touchHere(view.buffer, pageSize, orders[0]);
    const h = watch.end();
    bench.pinSelf(-1);
    const stopped = nextMessage<{ faults: number; resolved: number; errors: number; p50: number; p99: number; gc: GcCounts }>(worker);
    worker.postMessage('stop');
    const stats = await stopped;
    return rep(orders, {
      latencyNs: [r.latencyNs], touchCpus: [r.touchCpus], checksum: r.checksum, wallNs: r.wallNs, messages: stats.faults, resolved: stats.resolved,
      colocated: colocatedFraction(orders, [r.touchCpus], () => h.cpus[0]), handlerMoved: h.moved, handlerCpuNs: h.cpuNs,
      handlerUs: { p50: stats.p50, p99: stats.p99 }, gc: stats.gc, note: stats.errors ? `${stats.errors} fetch errors` : undefined,
    }, true);
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
  /** Every repetition, ns, in the order measured (POPULATE_READ and CONTINUE interleaved). */
  ns: number[];
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
    pagesPerSec: pages / (best / 1e9), gibPerSec: bytes / 2 ** 30 / (best / 1e9), medianPagesPerSec: pages / (med / 1e9), checksOk, ns: Array.from(ns),
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

// Working-set replay: makes a recorded set of pages present ahead of the
// faults, in first-touch order, one contiguous run at a time, while demand
// faults always go first.
//
// The loop runs on the event loop: runs whose content comes back at once go
// back to back for a slice of at most 1 ms, then a turn (setImmediate); an
// asynchronous run yields at once. Why not a
// native thread: the content of a page comes from JavaScript in every case
// but a local image (a fetch callback, a user reader, the network of a
// migration), and each run is one read, one pwrite and one CONTINUE (or one
// COPY), a few microseconds per page. A turn of the event loop reads the
// uffd (poll phase) before the next slice (check phase), so every fault
// already waiting is read, and its fetch started, within one slice: demand
// goes first without any lock between the two. In native mode
// the resolver thread maps present pages without JavaScript at all, so a
// fault on a page the replay already made present never waits for a run.
//
// No double fetch: an asynchronous run claims its pages in the present map's
// in-flight table (the one the fetch queue consults) while it waits for them,
// so a fault on a page being prefetched joins the run instead of fetching it
// again (a synchronous run is present before any fault can be read); a run
// skips every page that is present or in flight for a demand fetch.
import { trace } from '../debug';
import { argValueError, argRangeError } from '../errors';
import type { PresentPages } from '../present-pages';
import * as v from '../validate';
import { native } from '../native';
import { readWorkingSet } from './format';

/** When a replay starts. */
export type ReplayStart = 'first-fault' | 'now';

/** The part of a working set replay reads (a {@link WorkingSet} has it). */
export interface ReplaySet {
  pageSize: number;
  memorySize: number;
  /** First-touch order. */
  entries: readonly { readonly page: number }[];
}

/** Reads `length` bytes of content at byte `offset` of the memory (a whole run at once). */
export type RunReader = (offset: number, length: number, context: { readonly signal: AbortSignal }) => Uint8Array | Promise<Uint8Array>;

/** Longest stretch of back-to-back synchronous runs before the event loop reads the uffd again, ms. */
const REPLAY_SLICE_MS = 1;
/**
 * A native batch's size: a fault on one of its pages waits for the whole
 * batch (a few ms at a few µs per page), one on any other page does not.
 */
const BATCH_PAGES = 512;
const BATCH_RUNS = 256;
/**
 * Once the guest faults (it runs beside the replay), batches shrink to this
 * and may be filled on the JavaScript thread itself: the CPUs are the
 * guest's then. Measured: full batches on two threads beside a running
 * guest made a wrong recording cost 1.6 times the on-demand restore.
 */
const BUSY_BATCH_PAGES = 32;

/** A prefetch source built by the caller: the pages, and optionally a bulk reader for their content. */
export interface PrefetchSource {
  /** Page indexes (byte offset / page size), first-touch order. Pages outside the memory are an error. */
  pages: readonly number[];
  /** Content of a run of pages; without it (and without `file`) the handler's `fetch` is called for each page of the run. */
  read?: RunReader;
  /**
   * The content is in a local file (a snapshot image, a memfd): page N's
   * bytes are at `offset` + N × page size of file descriptor `fd`. The
   * replay then copies, marks and maps runs on native threads
   * (`threads`), file to memory in the kernel, while the JavaScript thread
   * keeps serving demand faults: the fastest replay. Not with `read`. The
   * handler reads from its own duplicate of the descriptor, closed when the
   * replay ends: yours may be closed as soon as the handler is built. Pages
   * the file does not hold are left to their faults.
   */
  file?: { fd: number; offset?: number };
  /** Native threads that copy runs from `file` (default 2, at most 16). */
  threads?: number;
  /** `'first-fault'` (default): the replay starts with the first fault. `'now'`: at start. */
  start?: ReplayStart;
  /**
   * Map each run into every view as soon as it is present (default true), so
   * its pages never fault. false: the pages are only made present, and their
   * first touch is a minor fault mapped by the engine, which counts it
   * ({@link ReplayStats.touched}): the way to measure a set's precision.
   */
  mapRuns?: boolean;
  /** Longest run, in pages (a run is read, written and mapped at once). Default 64. */
  maxRunPages?: number;
}

/** The replay half of the `workingSet` option. */
export interface WorkingSetReplayOptions {
  /**
   * A working-set file (or a set already read). A file that is missing or
   * corrupt, or a set whose page size or memory size is not the server's,
   * emits a warning (code `UFFD_WORKING_SET_IGNORED`) and the server serves
   * on demand only.
   */
  replay?: string | ReplaySet;
  /** See {@link PrefetchSource.start}. */
  start?: ReplayStart;
}

/** Counters of a replay. */
export interface ReplayStats {
  /** `'waiting'` (for the first fault), `'running'`, `'done'` (every page of the set visited), `'stopped'`. */
  state: 'waiting' | 'running' | 'done' | 'stopped';
  /** Distinct pages of the set. */
  planned: number;
  /** Pages the replay made present. */
  prefetched: number;
  /** Pages of the set found present or being fetched on demand when the replay came to them. */
  skipped: number;
  /** Runs made present (each one read, one write, one map). */
  runs: number;
  /** Runs whose content could not be had: their pages were left to demand. */
  failedRuns: number;
  /**
   * Pages of runs the replay planned but did not make present (a failed
   * run, or an event such as a balloon's REMOVE pending while the run was
   * copied): left to their faults. `prefetched + skipped + leftToFaults` is
   * `planned` once the replay is done.
   */
  leftToFaults: number;
  /**
   * Prefetched pages touched afterwards, counted by the engine at their
   * first (minor) fault. Undefined while runs are mapped ahead
   * (`mapRuns`, the default): a mapped page no longer faults, and nothing
   * userspace can read per page tells a touched page from an untouched one.
   */
  touched: number | undefined;
  /** `prefetched - touched`: pages the replay brought that were never used (so far). Undefined as `touched`. */
  untouched: number | undefined;
  /** Faults that needed a fetch while the replay was running (the replay did not get there first). */
  demandFaults: number;
  /** Of those and of every later one: faults on pages outside the set (what the set missed). */
  outsideSet: number;
  /** Milliseconds from the replay's start to its end (so far, while running). */
  durationMs: number;
}

/** Warning code of a working set that cannot be replayed. */
export const WORKING_SET_IGNORED = 'UFFD_WORKING_SET_IGNORED';

/** @internal Emits the warning that a set is ignored and says why. */
export function warnIgnored(what: string, reason: string): void {
  process.emitWarning(`userfaultfd: working set ${what} ignored, serving on demand only: ${reason}`, { code: WORKING_SET_IGNORED });
}

/**
 * @internal The pages of a set to replay, or undefined (after a warning) when
 * the set cannot be had or does not fit: it never throws, so a bad set only
 * costs speed.
 */
export function loadReplayPages(spec: string | ReplaySet, expect: { pageSize: number; memorySize: number }): number[] | undefined {
  const what = typeof spec === 'string' ? spec : '(given)';
  let set: ReplaySet;
  try {
    set = typeof spec === 'string' ? readWorkingSet(spec) : spec;
    if (typeof set !== 'object' || set === null || !Array.isArray(set.entries)) throw new Error('it has no entries list');
  } catch (err) {
    warnIgnored(what, `${(err as { code?: string }).code ?? 'error'}: ${(err as Error).message}`);
    return undefined;
  }
  if (set.pageSize !== expect.pageSize || set.memorySize !== expect.memorySize) {
    warnIgnored(what, `it was recorded for ${set.memorySize} bytes in pages of ${set.pageSize}, this memory is ${expect.memorySize} bytes in pages of ${expect.pageSize}`);
    return undefined;
  }
  const pageCount = expect.memorySize / expect.pageSize;
  const pages: number[] = [];
  for (const e of set.entries) {
    const page = e?.page;
    if (!Number.isSafeInteger(page) || page < 0 || page >= pageCount) {
      warnIgnored(what, `entry ${JSON.stringify(page)} is not a page of this memory (0 to ${pageCount - 1})`);
      return undefined;
    }
    pages.push(page);
  }
  return pages;
}

/** @internal A session's replay: the set (file or given) and when it starts. */
export interface SessionReplay {
  set: string | ReplaySet;
  start: ReplayStart;
}

/** @internal Checks the replay half of a session's workingSet option (the set itself is read per session, and only warns). */
export function sessionReplay(name: string, ws: Partial<WorkingSetReplayOptions>, startFallback: ReplayStart = 'first-fault'): SessionReplay | undefined {
  if (ws.replay === undefined) return undefined;
  if (typeof ws.replay !== 'string' && (typeof ws.replay !== 'object' || ws.replay === null))
    throw argValueError(`${name}.replay`, 'must be a working-set file path or a working set', ws.replay);
  return { set: ws.replay, start: v.oneOf(`${name}.start`, ws.start, ['first-fault', 'now'] as const, startFallback) };
}

/** @internal Checks a caller's prefetch source (bad input is an error, unlike a bad file). */
export function checkPrefetchSource(name: string, value: unknown, pageCount: number): Required<Omit<PrefetchSource, 'read' | 'file'>> & { read?: RunReader; file?: { fd: number; offset: number } } {
  const o = v.options<PrefetchSource>(name, value);
  if (!Array.isArray(o.pages)) throw argValueError(`${name}.pages`, 'must be an array of page indexes', o.pages);
  for (const p of o.pages)
    if (!Number.isSafeInteger(p) || p < 0 || p >= pageCount) throw argRangeError(`${name}.pages`, `page indexes from 0 to ${pageCount - 1}`, p);
  if (o.read !== undefined && o.file !== undefined) throw argValueError(`${name}.file`, 'cannot be given with read', o.file);
  let file: { fd: number; offset: number } | undefined;
  if (o.file !== undefined) {
    const f = v.options<{ fd: number; offset?: number }>(`${name}.file`, o.file);
    file = { fd: v.fd(`${name}.file.fd`, f.fd), offset: v.integer(`${name}.file.offset`, f.offset ?? 0, 0, Number.MAX_SAFE_INTEGER) };
  }
  return {
    pages: o.pages,
    read: o.read === undefined ? undefined : (v.func(`${name}.read`, o.read) as RunReader),
    ...(file ? { file } : {}),
    threads: v.integer(`${name}.threads`, o.threads ?? 2, 1, native.runFillLayout.maxThreads),
    start: v.oneOf(`${name}.start`, o.start, ['first-fault', 'now'] as const, 'first-fault'),
    mapRuns: v.boolean(`${name}.mapRuns`, o.mapRuns, true),
    maxRunPages: v.integer(`${name}.maxRunPages`, o.maxRunPages ?? 64, 1, 1 << 16),
  };
}

/** What a server does to make a run of pages present. */
export interface RunFiller {
  /**
   * Makes pages [first, first + count) present: content in place, present
   * bits set, mapped (or copied) into the views; returns how many it made
   * present. May be async; `signal` aborts when the replay stops, after
   * which nothing may be written.
   */
  fill(first: number, count: number, signal: AbortSignal): number | Promise<number>;
  /** The page is present, or being fetched on demand: the replay leaves it. */
  taken(page: number): boolean;
  /**
   * Fills many runs at once off the JavaScript thread ([first, count] pairs),
   * resolving with the pages made present per run or -errno. When given, the
   * replay goes batch by batch instead of run by run (`fill` is not called).
   */
  fillBatch?(runs: Uint32Array, signal: AbortSignal, busy: boolean): Promise<Float64Array>;
}

/**
 * @internal The replay loop shared by the servers: plans runs in first-touch
 * order, in slices of the event loop's time, and keeps the counters.
 */
export class Replayer {
  readonly #order: number[];
  readonly #inSet: Uint8Array;
  readonly #filler: RunFiller;
  readonly #maxRun: number;
  readonly #controller = new AbortController();
  /** Next index in #order to consider. */
  #next = 0;
  #state: ReplayStats['state'] = 'waiting';
  #startedAt = 0;
  #endedAt = 0;
  #timer: NodeJS.Immediate | undefined;
  #counts = { prefetched: 0, skipped: 0, runs: 0, failedRuns: 0, leftToFaults: 0, demandFaults: 0, outsideSet: 0 };
  /** Set by the server when the engine counts touches: the count so far. */
  touchedCount: (() => number) | undefined;
  /** Resolves when the replay is done or stopped. */
  readonly finished: Promise<void>;
  #resolveFinished!: () => void;

  constructor(pages: readonly number[], pageCount: number, filler: RunFiller, maxRunPages = 64) {
    this.#inSet = new Uint8Array(pageCount);
    this.#order = [];
    for (const p of pages) {
      if (this.#inSet[p]) continue;
      this.#inSet[p] = 1;
      this.#order.push(p);
    }
    this.#filler = filler;
    this.#maxRun = maxRunPages;
    this.finished = new Promise((resolve) => (this.#resolveFinished = resolve));
  }

  get running(): boolean {
    return this.#state === 'running';
  }

  /** The set holds `page`. */
  has(page: number): boolean {
    return this.#inSet[page] !== 0;
  }

  /** Starts (once; later calls do nothing). */
  start(): void {
    if (this.#state !== 'waiting') return;
    this.#state = 'running';
    this.#startedAt = performance.now();
    trace('working set replay: %d pages', this.#order.length);
    this.#schedule();
  }

  /** A fault that needs a fetch, on `page`. */
  noteDemand(page: number): void {
    if (this.#state === 'running') this.#counts.demandFaults++;
    if (!this.#inSet[page]) this.#counts.outsideSet++;
  }

  /** Stops: no run starts after this, a run in flight is aborted. Idempotent. */
  stop(): void {
    if (this.#state === 'done' || this.#state === 'stopped') return;
    if (this.#timer) clearImmediate(this.#timer);
    this.#timer = undefined;
    this.#controller.abort(new Error('working set replay stopped'));
    this.#end('stopped');
  }

  stats(): ReplayStats {
    const touched = this.touchedCount?.();
    const end = this.#endedAt || (this.#startedAt ? performance.now() : 0);
    return {
      state: this.#state,
      planned: this.#order.length,
      ...this.#counts,
      touched,
      untouched: touched === undefined ? undefined : this.#counts.prefetched - touched,
      durationMs: this.#startedAt ? end - this.#startedAt : 0,
    };
  }

  #end(state: 'done' | 'stopped'): void {
    this.#state = state;
    this.#endedAt = performance.now();
    trace('working set replay %s: %d prefetched, %d skipped, %d demand faults', state, this.#counts.prefetched, this.#counts.skipped, this.#counts.demandFaults);
    this.#resolveFinished();
  }

  #schedule(): void {
    // setImmediate runs after the poll phase: faults already readable are read (and their fetches started) first.
    this.#timer = setImmediate(() => {
      this.#timer = undefined;
      this.#step();
    });
  }

  /** Plans the next run: from the next page of the set not taken, forward over pages of the set not taken. */
  #plan(): [number, number] | undefined {
    const order = this.#order;
    while (this.#next < order.length) {
      const first = order[this.#next++];
      // Set pages are 1 until a run takes them (2): a later run does not count them again.
      if (this.#inSet[first] === 2) continue;
      if (this.#filler.taken(first)) {
        this.#counts.skipped++;
        continue;
      }
      let end = first + 1;
      while (end - first < this.#maxRun && end < this.#inSet.length && this.#inSet[end] === 1 && !this.#filler.taken(end)) end++;
      this.#inSet.fill(2, first, end);
      return [first, end - first];
    }
    return undefined;
  }

  #step(): void {
    if (this.#filler.fillBatch) return this.#stepBatch(this.#filler.fillBatch.bind(this.#filler));
    // Runs filled synchronously (content at hand) go on back to back for one
    // slice of the loop's time, then the loop reads the uffd again: a demand
    // fault waits at most one slice behind the replay, and the replay does
    // not pay a loop turn per run.
    const sliceEnd = performance.now() + REPLAY_SLICE_MS;
    for (;;) {
      if (this.#state !== 'running') return;
      const run = this.#plan();
      if (run === undefined) return this.#end('done');
      const [first, count] = run;
      let result: number | Promise<number>;
      try {
        result = this.#filler.fill(first, count, this.#controller.signal);
      } catch (err) {
        return this.#failed(first, count, err);
      }
      if (typeof result !== 'number') {
        result.then((n) => this.#filled(count, n), (err: unknown) => this.#failed(first, count, err));
        return;
      }
      this.#count(count, result);
      if (performance.now() >= sliceEnd) return this.#schedule();
    }
  }

  /**
   * Batches: filled by native threads (the JavaScript thread only plans and
   * claims, and stays free to serve demand faults meanwhile), or by one
   * native call on this thread (a batch of about a millisecond's work).
   */
  #stepBatch(fillBatch: NonNullable<RunFiller['fillBatch']>): void {
    if (this.#state !== 'running') return;
    const runs: number[] = [];
    let pages = 0;
    const busy = this.#counts.demandFaults > 0;
    const maxPages = busy ? BUSY_BATCH_PAGES : BATCH_PAGES;
    while (runs.length < 2 * BATCH_RUNS && pages < maxPages) {
      const run = this.#plan();
      if (run === undefined) break;
      runs.push(run[0], run[1]);
      pages += run[1];
    }
    if (runs.length === 0) return this.#end('done');
    const batch = Uint32Array.from(runs);
    const settle = (results: Float64Array | undefined, err?: unknown): void => {
      if (this.#state !== 'running') return;
      for (let i = 0; i < batch.length / 2; i++) {
        const r = results ? results[i] : -1;
        if (r >= 0) this.#count(batch[2 * i + 1], r);
        else this.#failedRun(batch[2 * i], batch[2 * i + 1], err ?? `errno ${-r}`);
      }
      // A turn of the loop between batches, as between slices: a batch filled
      // on this thread must not keep the uffd from being read.
      this.#schedule();
    };
    let pending: Promise<Float64Array>;
    try {
      pending = fillBatch(batch, this.#controller.signal, busy);
    } catch (err) {
      settle(undefined, err);
      return;
    }
    pending.then((results) => settle(results), (err: unknown) => settle(undefined, err));
  }

  #count(count: number, pages: number): void {
    this.#counts.runs++;
    this.#counts.prefetched += pages;
    this.#counts.leftToFaults += count - pages;
  }

  #filled(count: number, pages: number): void {
    if (this.#state !== 'running') return;
    this.#count(count, pages);
    this.#schedule();
  }

  #failed(first: number, count: number, err: unknown): void {
    if (this.#state !== 'running') return;
    this.#failedRun(first, count, err);
    this.#schedule();
  }

  #failedRun(first: number, count: number, err: unknown): void {
    // Those pages are left to demand; the faults that joined the run fetch them themselves.
    this.#counts.failedRuns++;
    this.#counts.leftToFaults += count;
    trace('working set replay: run %d+%d failed: %s', first, count, err);
  }
}

/**
 * @internal A run's claim in the present map's in-flight table: a fault on
 * one of its pages joins it (the fetch queue awaits it) instead of fetching.
 */
export function claimRun(present: PresentPages, first: number, count: number): { settle(ok: boolean): void } {
  let settled = false;
  let resolve!: () => void;
  let reject!: (err: Error) => void;
  const claim = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  claim.catch(() => {});
  for (let p = first; p < first + count; p++) present.inflight.set(p, claim);
  return {
    settle(ok: boolean): void {
      if (settled) return;
      settled = true;
      for (let p = first; p < first + count; p++) if (present.inflight.get(p) === claim) present.inflight.delete(p);
      if (ok) resolve();
      else reject(new Error('working set run not filled'));
    },
  };
}

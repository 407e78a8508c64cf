// Records the first touch of each page as a server of faults sees it. It
// sits on the fault path, so a record is a bit test and a few typed-array
// stores: the arrays grow by doubling (never per fault) up to their
// capacity, fixed at construction.
import { performance } from 'node:perf_hooks';

import { argRangeError, argValueError, closedError } from '../errors';
import * as v from '../validate';
import { WorkingSet, WorkingSetEntry, writeWorkingSet } from './format';

/** When a recording stops by itself. Rules combine: the first to hold stops it. */
export interface WorkingSetStopRules {
  /** Stop this many milliseconds after the recorder was created. */
  budgetMs?: number;
  /** Stop after this many pages were recorded (first touches; a page's later faults do not count). */
  maxFaults?: number;
  /**
   * Stop once the guest has settled: fewer than `rate` first touches per
   * second over the last `forMs` milliseconds. The window opens at the
   * first recorded touch, so a guest that has not started yet does not
   * count as settled.
   */
  settled?: { rate: number; forMs: number };
}

/** Options of {@link WorkingSetRecorder}. */
export interface WorkingSetRecorderOptions extends WorkingSetStopRules {
  /** Bytes per page: the granularity of the page indexes given to {@link WorkingSetRecorder.record}. */
  pageSize: number;
  /** Bytes of memory the page indexes cover (a multiple of `pageSize`). */
  memorySize: number;
  /** Memory regions of the guest (each record's `region` is below it). Default 1. */
  regions?: number;
  /** Stops the recording (reason `'stopped'`) when aborted. */
  signal?: AbortSignal;
}

/** Why a recording stopped. */
export type WorkingSetStopReason = 'budget' | 'max-faults' | 'settled' | 'full' | 'stopped' | 'closed';

/** What {@link WorkingSetRecorder.record} takes besides the page. */
export interface TouchKind {
  /** The first touch was a write. Default false. */
  write?: boolean;
  /** The memory region of the page. Default 0. */
  region?: number;
}

const INITIAL_CAPACITY = 4096;
const MAX_U32 = 0xffffffff;
const FLAG_WRITE = 1;

/**
 * Records which pages a guest touches first, in order, for a later restore
 * to bring them in ahead of its faults (see docs/working-set.md). A server of
 * faults calls {@link record} for every fault on an absent page; the first
 * touch of each page is kept with its rank and time. Stops by the rules
 * given ({@link WorkingSetStopRules}), by {@link stop}, or on close; {@link done}
 * settles then, whatever happens.
 */
export class WorkingSetRecorder implements Disposable {
  readonly pageSize: number;
  readonly memorySize: number;
  readonly regions: number;
  /** Settles with the reason once recording has stopped. Never rejects. */
  readonly done: Promise<WorkingSetStopReason>;

  readonly #pageCount: number;
  readonly #capacity: number;
  readonly #maxFaults: number;
  readonly #budgetUs: number;
  readonly #settledRate: number;
  readonly #settledForUs: number;
  /** One bit per page: recorded already. */
  #seen: Uint32Array;
  #pages: Uint32Array;
  #times: Uint32Array;
  #regions: Uint16Array;
  #flags: Uint8Array;
  #count = 0;
  readonly #startMs: number;
  #stopReason: WorkingSetStopReason | undefined;
  #closed = false;
  #resolveDone!: (reason: WorkingSetStopReason) => void;
  #budgetTimer: NodeJS.Timeout | undefined;
  #settledTimer: NodeJS.Timeout | undefined;
  readonly #signal?: AbortSignal;

  constructor(options: WorkingSetRecorderOptions) {
    const opts = v.options<WorkingSetRecorderOptions>('options', options);
    this.pageSize = v.integer('options.pageSize', opts.pageSize, 1, 2 ** 30);
    if ((this.pageSize & (this.pageSize - 1)) !== 0) throw argValueError('options.pageSize', 'must be a power of two', this.pageSize);
    this.memorySize = v.pageLength('options.memorySize', opts.memorySize, this.pageSize);
    this.#pageCount = this.memorySize / this.pageSize;
    if (this.#pageCount > MAX_U32) throw argRangeError('options.memorySize', `at most 2^32 - 1 pages of ${this.pageSize} bytes`, this.memorySize);
    this.regions = v.integer('options.regions', opts.regions ?? 1, 1, 0xffff);
    this.#maxFaults = opts.maxFaults === undefined ? Infinity : v.integer('options.maxFaults', opts.maxFaults, 1);
    this.#budgetUs = opts.budgetMs === undefined ? Infinity : v.integer('options.budgetMs', opts.budgetMs, 1, 2 ** 31 - 1) * 1000;
    if (opts.settled !== undefined) {
      const s = v.options<{ rate: number; forMs: number }>('options.settled', opts.settled);
      if (typeof s.rate !== 'number' || !(s.rate > 0) || !Number.isFinite(s.rate)) throw argRangeError('options.settled.rate', 'a positive number of faults per second', s.rate);
      this.#settledRate = s.rate;
      this.#settledForUs = v.integer('options.settled.forMs', s.forMs, 1, 2 ** 31 - 1) * 1000;
    } else {
      this.#settledRate = 0;
      this.#settledForUs = 0;
    }
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', opts.signal);
    this.#capacity = Math.min(this.#pageCount, this.#maxFaults);
    const initial = Math.min(this.#capacity, INITIAL_CAPACITY);
    this.#seen = new Uint32Array(Math.ceil(this.#pageCount / 32));
    this.#pages = new Uint32Array(initial);
    this.#times = new Uint32Array(initial);
    this.#regions = new Uint16Array(initial);
    this.#flags = new Uint8Array(initial);
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    this.#startMs = performance.now();
    // The timers never keep a process alive: a recording is not a reason to run.
    if (this.#budgetUs !== Infinity) this.#budgetTimer = setTimeout(() => this.#stop('budget'), this.#budgetUs / 1000).unref();
    if (this.#settledForUs > 0) {
      const every = Math.max(5, Math.min(100, this.#settledForUs / 4000));
      this.#settledTimer = setInterval(() => this.#checkSettled(this.#nowUs()), every).unref();
    }
    this.#signal = opts.signal;
    if (this.#signal?.aborted) this.#stop('stopped');
    else this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /**
   * Records a touch of `page` (page index in memory, below
   * `memorySize / pageSize`). Only the first touch of a page is kept; later
   * ones, and any after recording stopped, are ignored. Returns true when
   * this call recorded the page.
   */
  record(page: number, kind?: TouchKind): boolean {
    return this.recordFault(page, kind?.write === true, kind?.region ?? 0);
  }

  /**
   * @internal The fault path's form of {@link record}: no object to build,
   * and the time the fault was read (`performance.now()` milliseconds, from
   * the fault engine's clock) when the server has it: reading a clock costs
   * more than the rest of a record.
   */
  recordFault(page: number, write: boolean, region: number, atMs = -1): boolean {
    if (!(page >= 0 && page < this.#pageCount && page === Math.floor(page)))
      throw argRangeError('page', `an integer >= 0 and < ${this.#pageCount}`, page);
    if (!(region >= 0 && region < this.regions && region === Math.floor(region)))
      throw argRangeError('region', `an integer >= 0 and < ${this.regions}`, region);
    if (this.#stopReason !== undefined) return false;
    const word = page >>> 5;
    const bit = 1 << (page & 31);
    if ((this.#seen[word] & bit) !== 0) return false;
    const nowUs = atMs >= 0 ? (atMs - this.#startMs) * 1000 : this.#nowUs();
    if (nowUs >= this.#budgetUs) {
      this.#stop('budget');
      return false;
    }
    this.#seen[word] |= bit;
    const i = this.#count;
    if (i === this.#pages.length) this.#grow();
    this.#pages[i] = page;
    this.#times[i] = nowUs <= 0 ? 0 : nowUs >= MAX_U32 ? MAX_U32 : Math.round(nowUs);
    this.#regions[i] = region;
    this.#flags[i] = write ? FLAG_WRITE : 0;
    this.#count = i + 1;
    if (this.#count >= this.#maxFaults) this.#stop('max-faults');
    else if (this.#count >= this.#capacity) this.#stop('full');
    return true;
  }

  /** True while touches are being recorded. */
  get recording(): boolean {
    return this.#stopReason === undefined;
  }

  /** Why recording stopped, once it has. */
  get stopReason(): WorkingSetStopReason | undefined {
    return this.#stopReason;
  }

  /** Pages recorded so far. */
  get size(): number {
    return this.#count;
  }

  /** True when `page` was recorded. */
  has(page: number): boolean {
    return page >= 0 && page < this.#pageCount && (this.#seen[page >>> 5] & (1 << (page & 31))) !== 0;
  }

  /** The recording so far as a {@link WorkingSet} (a copy). */
  workingSet(): WorkingSet {
    if (this.#closed) throw closedError('WorkingSetRecorder');
    const entries: WorkingSetEntry[] = new Array(this.#count);
    for (let i = 0; i < this.#count; i++)
      entries[i] = { page: this.#pages[i], rank: i, timeUs: this.#times[i], write: this.#flags[i] === FLAG_WRITE, region: this.#regions[i] };
    return { pageSize: this.pageSize, memorySize: this.memorySize, regions: this.regions, runs: 1, entries };
  }

  /** Writes the recording so far to `file` (atomically; see {@link writeWorkingSet}). ERR_UFFD_CLOSED after {@link close}. */
  save(file: string): void {
    writeWorkingSet(file, this.workingSet());
  }

  /** Stops recording (reason `'stopped'`); what was recorded stays. Idempotent. */
  stop(): void {
    this.#stop('stopped');
  }

  /** Stops recording (reason `'closed'` unless it had stopped) and frees the recording. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#stop('closed');
    this.#closed = true;
    this.#count = 0;
    this.#seen = new Uint32Array(0);
    this.#pages = new Uint32Array(0);
    this.#times = new Uint32Array(0);
    this.#regions = new Uint16Array(0);
    this.#flags = new Uint8Array(0);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  readonly #onAbort = (): void => this.#stop('stopped');

  #nowUs(): number {
    return (performance.now() - this.#startMs) * 1000;
  }

  #grow(): void {
    const size = Math.min(this.#capacity, this.#pages.length * 2);
    const grow = <T extends Uint32Array | Uint16Array | Uint8Array>(old: T, make: (n: number) => T): T => {
      const next = make(size);
      next.set(old);
      return next;
    };
    this.#pages = grow(this.#pages, (n) => new Uint32Array(n));
    this.#times = grow(this.#times, (n) => new Uint32Array(n));
    this.#regions = grow(this.#regions, (n) => new Uint16Array(n));
    this.#flags = grow(this.#flags, (n) => new Uint8Array(n));
  }

  /** Settled: the window of the last `forMs`, inside the time since the first touch, held fewer touches than the rate allows. */
  #checkSettled(nowUs: number): void {
    if (this.#stopReason !== undefined || this.#count === 0) return;
    const windowStart = nowUs - this.#settledForUs;
    if (windowStart < this.#times[0]) return;
    // Times are in read order, near enough sorted (batches from several
    // reader threads interleave by microseconds): count back from the newest.
    let inWindow = 0;
    for (let i = this.#count - 1; i >= 0 && this.#times[i] > windowStart; i--) inWindow++;
    if (inWindow < (this.#settledRate * this.#settledForUs) / 1e6) this.#stop('settled');
  }

  #stop(reason: WorkingSetStopReason): void {
    if (this.#stopReason !== undefined) return;
    this.#stopReason = reason;
    if (this.#budgetTimer) clearTimeout(this.#budgetTimer);
    if (this.#settledTimer) clearInterval(this.#settledTimer);
    this.#budgetTimer = this.#settledTimer = undefined;
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#resolveDone(reason);
  }
}

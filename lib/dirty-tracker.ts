// DirtyTracker: which pages of some views were written since the last look.
// Two kernel mechanisms do it (see docs/dirty-tracking.md): uffd-wp in async
// mode plus PAGEMAP_SCAN (6.7+), where a first write costs no message and one
// ioctl reports and re-protects; and synchronous uffd-wp faults (5.19+ for
// shared memory), where a native thread hears each first write, marks it and
// lets the writer go on.
import { argTypeError, argValueError, check, closedError, stateError, UffdError } from './errors';
import { DirtyMethod, dirtyMethods, unsupportedError } from './dirty-methods';
import { FeatureName } from './constants';
import { trace } from './debug';
import { Mapping, PAGE_SIZE } from './memfd';
import { WpSyncHandle, native } from './native';
import { Userfaultfd } from './userfaultfd';
import * as v from './validate';

export type { DirtyMethod } from './dirty-methods';

/** A range of another process's memory, tracked through a userfaultfd that process opened. */
export interface RemoteRange {
  /** The process whose memory this is. Reading its pagemap needs ptrace-read access to it. */
  readonly pid: number;
  readonly address: number | bigint;
  readonly length: number;
}

/** What a tracker watches: this process's Mappings of a memfd, or ranges of another process. */
export type DirtyView = Mapping | RemoteRange;

/** Options of {@link DirtyTracker}. */
export interface DirtyTrackerOptions {
  /**
   * `'auto'` (default): `'wp-async'` where the kernel has it (6.7+), else
   * `'wp-sync'` (5.19+ for shared memory). Naming a method forces it; a
   * method the kernel lacks is an `ERR_UFFD_DIRTY_UNSUPPORTED` error naming
   * the Linux version it needs.
   */
  method?: 'auto' | DirtyMethod;
  /**
   * The userfaultfd to register the views with. Required for views of
   * another process (a uffd registers ranges of the process that opened it:
   * pass one that process opened and sent over a socket). Optional for this
   * process's Mappings, which by default get a uffd of the tracker's own;
   * pass one when the views are already registered with it (a range belongs
   * to one uffd at a time) and say which modes they have in `keepModes`.
   * With `'wp-async'` it must have negotiated `wpAsync`; with `'wp-sync'` it
   * must not, and the tracker becomes its only reader.
   */
  uffd?: Userfaultfd;
  /**
   * Modes the views are already registered with on `options.uffd`, kept when
   * the tracker adds write-protect (wp-async only: wp-sync reads the uffd and
   * cannot serve MISSING or MINOR faults). The write-protect registration then
   * stays after close() (unprotected), since only an unregister can drop it.
   */
  keepModes?: { minor?: boolean; missing?: boolean };
}

/** Options of {@link DirtyTracker.collect}. */
export interface CollectOptions {
  /**
   * Start a new interval (default true): the reported pages are protected
   * again, so the next collect reports only pages written after this one.
   * False only looks: the next collect reports these pages again.
   */
  reset?: boolean;
}

/** A run of consecutive written pages inside one view. */
export interface DirtyRun {
  /** Index of the view in {@link DirtyTracker.views}. */
  view: number;
  /** First page, as an index into the tracker's page space (views back to back, in order). */
  page: number;
  /** Pages in the run. */
  count: number;
  /** Address of the first page, in the view's process. */
  address: number;
}

/** The pages written in one interval. */
export interface DirtyPages {
  /** Bit `p % 32` of word `p >>> 5` is set when page `p` (tracker page space) was written. */
  bitmap: Uint32Array;
  /** Pages written. */
  count: number;
  /** The same pages as runs, in address order within each view, views in order. */
  runs: DirtyRun[];
}

/** One tracked view as the tracker keeps it. */
export interface TrackedView {
  readonly address: number;
  readonly length: number;
  /** Index of the view's first page in the tracker's page space. */
  readonly firstPage: number;
  readonly pages: number;
  /** The Mapping, for views of this process. */
  readonly mapping?: Mapping;
}

interface SyncReader {
  handle: WpSyncHandle;
  words: Int32Array;
  status: Int32Array;
  release: () => void;
}

const STATUS = native.wpSyncStatusLayout;

/**
 * Tracks which pages of its views are written. {@link start} write-protects
 * every page; each {@link collect} returns the pages written since the last
 * one (or since start) and, by default, protects them again; {@link stop}
 * lifts all protection (no writer is ever left asleep); {@link close} also
 * releases the uffd and descriptors.
 *
 * Only writes through the tracked views' page tables count: a write to the
 * same memfd through another mapping or pwrite(2) is not seen.
 *
 * ```ts
 * using tracker = new DirtyTracker([view]);
 * tracker.start();
 * // ... writers run ...
 * const { runs } = tracker.collect();
 * ```
 */
export class DirtyTracker implements Disposable {
  /** The method in use. */
  readonly method: DirtyMethod;
  readonly pageSize: number;
  /** The process whose memory is tracked. */
  readonly pid: number;
  /** Pages over all views. */
  readonly pageCount: number;
  readonly #views: TrackedView[];
  readonly #uffd: Userfaultfd;
  readonly #ownsUffd: boolean;
  readonly #keptModes: boolean;
  #pagemapFd = -1;
  #sync: SyncReader | undefined;
  #tracking = false;
  #closed = false;

  /**
   * Registers `views` write-protect with a userfaultfd (its own, or
   * `options.uffd`) and chooses the method. Nothing is protected until {@link start}.
   */
  constructor(views: readonly DirtyView[], options?: DirtyTrackerOptions) {
    const opts = v.options<DirtyTrackerOptions>('options', options);
    const list = checkViews(views);
    const remote = !(list[0] instanceof Mapping);
    this.pid = remote ? (list[0] as RemoteRange).pid : process.pid;
    this.pageSize = remote ? PAGE_SIZE : (list[0] as Mapping).pageSize;
    let firstPage = 0;
    this.#views = list.map((view, i) => {
      if (remote !== !(view instanceof Mapping)) throw argValueError(`views[${i}]`, 'must be of the same kind as views[0] (all Mappings of this process, or all ranges of one other process)', view);
      const entry = trackedView(view, i, this.pageSize, this.pid, firstPage);
      firstPage += entry.pages;
      return entry;
    });
    this.pageCount = firstPage;
    checkOverlap(this.#views);

    const wanted = v.oneOf('options.method', opts.method, ['auto', 'wp-async', 'wp-sync'] as const, 'auto');
    if (opts.uffd !== undefined && !(opts.uffd instanceof Userfaultfd)) throw argTypeError('options.uffd', 'a Userfaultfd', opts.uffd);
    const given = opts.uffd;
    if (given?.closed) throw closedError('options.uffd');
    const keep = v.options<{ minor?: boolean; missing?: boolean }>('options.keepModes', opts.keepModes);
    const keepMinor = v.boolean('options.keepModes.minor', keep.minor, false);
    const keepMissing = v.boolean('options.keepModes.missing', keep.missing, false);
    this.#keptModes = keepMinor || keepMissing;
    if (this.#keptModes && !given) throw argValueError('options.keepModes', 'applies only to views registered with options.uffd', opts.keepModes);
    if (remote && !given)
      throw argValueError('options.uffd', `is required for views of another process (pid ${this.pid}): pass a userfaultfd that process opened, received over a socket`, opts.uffd);
    this.method = chooseMethod(wanted, given, this.#keptModes);

    let uffd: Userfaultfd | undefined;
    try {
      uffd = given ?? openOwnUffd(this.method);
      if (this.method === 'wp-async') {
        this.#pagemapFd = check(native.pagemapOpen(remote ? this.pid : 0), 'open', {
          path: `/proc/${remote ? this.pid : 'self'}/pagemap`,
          hint: remote ? 'reading another process\'s pagemap needs ptrace-read access to it (same user and ptrace_scope, or CAP_SYS_PTRACE)' : undefined,
        });
      }
      for (const view of this.#views) {
        try {
          uffd.register(view.mapping ?? view, { wp: true, minor: keepMinor, missing: keepMissing });
        } catch (err) {
          if ((err as UffdError).code === 'EBUSY' && !given)
            (err as Error).message += ': the view is registered with another userfaultfd; pass that one as options.uffd (with keepModes)';
          throw err;
        }
      }
    } catch (err) {
      if (this.#pagemapFd >= 0) native.closeFd(this.#pagemapFd);
      this.#pagemapFd = -1;
      if (uffd && !given) uffd.close();
      throw err;
    }
    this.#uffd = uffd;
    this.#ownsUffd = !given;
    trace('dirty tracker: %d views, %d pages, %s, uffd %d', this.#views.length, this.pageCount, this.method, uffd.fd);
  }

  /** The views, with where each starts in the tracker's page space. */
  get views(): readonly TrackedView[] {
    return this.#views;
  }

  /** True between {@link start} and {@link stop}. */
  get tracking(): boolean {
    return this.#tracking;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Write faults the wp-sync reader has served (0 with wp-async, whose first writes send no message). */
  get writeFaults(): number {
    return this.#sync ? Atomics.load(this.#sync.status, STATUS.faults) >>> 0 : 0;
  }

  /** Write-protects every page of every view: from now on each first write to a page is recorded. No-op while tracking. */
  start(): void {
    this.#assertOpen();
    if (this.#tracking) return;
    if (this.method === 'wp-sync') this.#startReader();
    try {
      for (const view of this.#views) {
        this.#assertLive(view);
        this.#uffd.writeProtect(view.address, view.length, { protect: true });
      }
    } catch (err) {
      this.#unprotectAll();
      this.#stopReader();
      throw err;
    }
    this.#tracking = true;
  }

  /**
   * The pages written since the last collect (since {@link start} for the
   * first), as a bitmap and as runs. Every write that happened before this
   * call returned is in this result or a later one; with `reset` (default), a
   * page appears again only after another write to it.
   */
  collect(options?: CollectOptions): DirtyPages {
    this.#assertOpen();
    const reset = v.boolean('options.reset', v.options<CollectOptions>('options', options).reset, true);
    if (!this.#tracking) throw stateError('ERR_UFFD_DIRTY_NOT_STARTED', 'DirtyTracker.collect(): call start() first (or again after stop())');
    for (const view of this.#views) this.#assertLive(view);
    return this.method === 'wp-async' ? this.#collectAsync(reset) : this.#collectSync(reset);
  }

  /**
   * Lifts the protection of every page (which wakes any writer waiting on
   * it) and, with wp-sync, stops and joins the reader thread. Writes are no
   * longer recorded; {@link start} begins again. Idempotent.
   */
  stop(): void {
    if (!this.#tracking) return;
    this.#tracking = false;
    try {
      this.#unprotectAll();
    } finally {
      this.#stopReader();
    }
  }

  /**
   * Stops, then releases the registration (closes the tracker's own uffd, or
   * unregisters the views from `options.uffd` unless `keepModes` kept other
   * modes there) and the pagemap descriptor. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    try {
      this.stop();
    } finally {
      this.#closed = true;
      if (this.#pagemapFd >= 0) native.closeFd(this.#pagemapFd);
      this.#pagemapFd = -1;
      if (this.#ownsUffd) this.#uffd.close();
      else if (!this.#keptModes && !this.#uffd.closed)
        for (const view of this.#views) if (!view.mapping?.closed) this.#uffd.unregister(view);
      trace('dirty tracker closed');
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #collectAsync(reset: boolean): DirtyPages {
    const bitmap = new Uint32Array(Math.ceil(this.pageCount / 32));
    const runs: DirtyRun[] = [];
    let count = 0;
    this.#views.forEach((view, index) => {
      const found = native.pagemapScanWritten(this.#pagemapFd, view.address, view.address + view.length, reset);
      if (typeof found === 'number')
        throw new UffdError(found, 'ioctl', {
          operation: 'PAGEMAP_SCAN', address: view.address, length: view.length,
          hint: found === -1 ? 'the range is not registered write-protect async (EPERM)' : undefined,
        });
      for (let i = 0; i < found.length; i += 2) {
        const page = view.firstPage + (found[i] - view.address) / this.pageSize;
        const pages = (found[i + 1] - found[i]) / this.pageSize;
        setBits(bitmap, page, pages);
        runs.push({ view: index, page, count: pages, address: found[i] });
        count += pages;
      }
    });
    return { bitmap, count, runs };
  }

  #collectSync(reset: boolean): DirtyPages {
    const sync = this.#sync!;
    const failure = Atomics.load(sync.status, STATUS.failure);
    if (failure !== 0)
      throw new UffdError(-failure, 'read', { fd: this.#uffd.fd, hint: 'the wp-sync reader thread failed; writes may be unrecorded: stop() and start() again' });
    const bitmap = new Uint32Array(sync.words.length);
    check(native.wpSyncCollect(sync.handle, reset, bitmap), 'ioctl', { operation: 'UFFDIO_WRITEPROTECT', fd: this.#uffd.fd, hint: 'protecting the collected pages again' });
    const runs = runsOf(bitmap, this.#views, this.pageSize);
    let count = 0;
    for (const run of runs) count += run.count;
    return { bitmap, count, runs };
  }

  #startReader(): void {
    const release = this.#uffd.claimReader('DirtyTracker (wp-sync)');
    const words = new Int32Array(new SharedArrayBuffer(Math.max(1, Math.ceil(this.pageCount / 32)) * 4));
    const status = new Int32Array(new SharedArrayBuffer(STATUS.slots * 4));
    const regions = new Float64Array(this.#views.flatMap((view) => [view.address, view.length, view.firstPage]));
    const handle = native.wpSyncStart(this.#uffd.fd, this.pageSize, regions, words, status);
    if (typeof handle === 'number') {
      release();
      throw new UffdError(handle, 'eventfd', { hint: 'starting the wp-sync reader thread' });
    }
    this.#sync = { handle, words, status, release };
  }

  #stopReader(): void {
    const sync = this.#sync;
    if (!sync) return;
    this.#sync = undefined;
    native.wpSyncStop(sync.handle);
    sync.release();
  }

  #unprotectAll(): void {
    if (this.#uffd.closed) return;
    let first: unknown;
    for (const view of this.#views) {
      if (view.mapping?.closed) continue;
      try {
        // Clearing the protection also wakes whoever waits on it.
        this.#uffd.writeProtect(view.address, view.length, { protect: false });
      } catch (err) {
        first ??= err;
      }
    }
    if (first) throw first;
  }

  #assertLive(view: TrackedView): void {
    if (view.mapping?.closed) throw stateError('ERR_UFFD_CLOSED', `DirtyTracker: the view at 0x${view.address.toString(16)} was unmapped while tracked`);
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError('DirtyTracker');
  }
}

/** @internal */
export function checkViews(views: unknown): DirtyView[] {
  if (!Array.isArray(views)) throw argTypeError('views', 'an array of Mappings or { pid, address, length } ranges', views);
  if (views.length === 0) throw argValueError('views', 'must name at least one view', views);
  return views as DirtyView[];
}

/** @internal */
export function trackedView(view: DirtyView, i: number, pageSize: number, pid: number, firstPage: number): TrackedView {
  const name = `views[${i}]`;
  if (view instanceof Mapping) {
    if (view.closed) throw stateError('ERR_UFFD_CLOSED', `${name}: the mapping is unmapped`);
    if (view.pageSize !== pageSize) throw argValueError(name, `must have the page size of views[0] (${pageSize})`, view);
    return { address: view.address, length: view.length, firstPage, pages: view.length / pageSize, mapping: view };
  }
  if (view === null || typeof view !== 'object') throw argTypeError(name, 'a Mapping or { pid, address, length }', view);
  const viewPid = v.integer(`${name}.pid`, (view as RemoteRange).pid, 1, 0x7fffffff);
  if (viewPid !== pid) throw argValueError(`${name}.pid`, `must be the pid of views[0] (${pid}): one tracker follows one process`, viewPid);
  if (viewPid === process.pid) throw argValueError(`${name}.pid`, 'is this process: track its memory through Mappings', viewPid);
  const r = v.range(name, view, pageSize);
  return { address: r.address, length: r.length, firstPage, pages: r.length / pageSize };
}

/** @internal */
export function checkOverlap(views: readonly TrackedView[]): void {
  const sorted = [...views].sort((a, b) => a.address - b.address);
  for (let i = 1; i < sorted.length; i++)
    if (sorted[i].address < sorted[i - 1].address + sorted[i - 1].length)
      throw argValueError('views', `must not overlap (0x${sorted[i].address.toString(16)} is in two views)`, views);
}

function chooseMethod(wanted: 'auto' | DirtyMethod, given: Userfaultfd | undefined, keptModes: boolean): DirtyMethod {
  const support = dirtyMethods();
  let method: DirtyMethod;
  if (given) {
    const async = given.has('wpAsync');
    if (wanted === 'wp-async' && !async) throw argValueError('options.uffd', 'must have negotiated wpAsync for method \'wp-async\'', given.fd);
    if (wanted === 'wp-sync' && async) throw argValueError('options.uffd', 'negotiated wpAsync, so its write faults never reach a reader: open one without it for method \'wp-sync\'', given.fd);
    method = async ? 'wp-async' : 'wp-sync';
  } else if (wanted === 'auto') {
    if (support['wp-async'].available) method = 'wp-async';
    else if (support['wp-sync'].available) method = 'wp-sync';
    else throw unsupportedError(support);
  } else method = wanted;
  if (!support[method].available) throw unsupportedError(support, method);
  if (method === 'wp-sync' && keptModes)
    throw argValueError('options.keepModes', 'cannot be used with wp-sync: the tracker reads the uffd and cannot serve MISSING or MINOR faults', true);
  return method;
}

/** @internal */
export function openOwnUffd(method: DirtyMethod): Userfaultfd {
  // wpUnpopulated is left out of wp-sync: it would make unpopulated anonymous
  // pages fault while no reader runs. Kernel-mode writes (read(2) into a
  // tracked page) fault too in wp-sync, and a user-mode-only uffd would fail
  // them with EFAULT: take all modes where allowed.
  const features: FeatureName[] = method === 'wp-async' ? ['wpAsync', 'wpUnpopulated', 'wpHugetlbfsShmem'] : ['wpHugetlbfsShmem'];
  if (method === 'wp-async') return Userfaultfd.open({ features, deadlockWatchdogMs: 0 });
  try {
    return Userfaultfd.open({ features, userModeOnly: false, deadlockWatchdogMs: 0 });
  } catch {
    return Userfaultfd.open({ features, deadlockWatchdogMs: 0 });
  }
}

function setBits(bitmap: Uint32Array, first: number, count: number): void {
  let p = first;
  const end = first + count;
  while (p < end && (p & 31) !== 0) bitmap[p >>> 5] |= 1 << (p & 31), p++;
  while (p + 32 <= end) bitmap[p >>> 5] = 0xffffffff, p += 32;
  while (p < end) bitmap[p >>> 5] |= 1 << (p & 31), p++;
}

function runsOf(bitmap: Uint32Array, views: readonly TrackedView[], pageSize: number): DirtyRun[] {
  const runs: DirtyRun[] = [];
  views.forEach((view, index) => {
    const end = view.firstPage + view.pages;
    let p = view.firstPage;
    while (p < end) {
      const word = bitmap[p >>> 5];
      if (word === 0 && (p & 31) === 0) {
        p += 32;
        continue;
      }
      if ((word & (1 << (p & 31))) === 0) {
        p++;
        continue;
      }
      const start = p;
      while (p < end && (bitmap[p >>> 5] & (1 << (p & 31))) !== 0) p++;
      runs.push({ view: index, page: start, count: p - start, address: view.address + (start - view.firstPage) * pageSize });
    }
  });
  return runs;
}


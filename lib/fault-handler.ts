// The fault-handling loop: read faults, make the page present (the user's
// fetch policy), CONTINUE, wake. Two engines share this one model:
//  - event-loop mode: a uv_poll on this environment's loop reads messages in
//    batches into a reusable buffer and everything runs on the JS thread;
//  - native mode: a native thread reads the uffd and CONTINUEs pages the
//    present bitmap already marks, and hands only absent pages to JavaScript.
import { build as buildHistogram, Histogram } from 'hdr-histogram-js';

import { EVENT } from './constants';
import { trace } from './debug';
import { UffdError, argValueError, fetchError, stateError } from './errors';
import { MessageBuffer } from './events';
import { Mapping, Memfd } from './memfd';
import { PollerHandle, ResolverHandle, native } from './native';
import { PresentPages } from './present-pages';
import { Userfaultfd, UffdEvent, startPoller } from './userfaultfd';
import * as v from './validate';

const EEXIST = -17;
const EAGAIN = -11;
const ESRCH = -3;
const EFAULT = -14;
const EINVAL = -22;
const ENOENT = -2;

/** One page that needs content, as the fetch policy sees it. */
export interface Fault {
  /** Faulting address (page-aligned) in the faulting process. */
  readonly address: number;
  /** Byte offset of the page in the memfd: where `fetch` must put its content. */
  readonly offset: number;
  /** Page index in the memfd (`offset / pageSize`). */
  readonly page: number;
  /** The first fault on this page was a write. */
  readonly write: boolean;
  /** MINOR fault (the page-cache page exists, possibly stale); false for a MISSING fault on a hole. */
  readonly minor: boolean;
  /** Faulting thread id (0 unless the uffd negotiated `threadId`). */
  readonly threadId: number;
  /** 0 for the first call, then 1, 2, ... when the error policy said `retry`. */
  readonly attempt: number;
}

/** What to do with a page whose fetch threw or rejected. */
export type ErrorAction = 'retry' | 'zero-fill' | 'poison' | 'stop';

/** What the native resolver does when the JavaScript thread itself faults on an absent page. */
export type LoopThreadFaultAction = 'abort' | 'map-as-is';

/** Options of {@link FaultHandler}. */
export interface FaultHandlerOptions {
  /** The memfd whose views are attached; fetched content goes into its page cache. */
  memfd: Memfd;
  /**
   * Makes the content of `fault.offset` present in the memfd's page cache,
   * typically `memfd.write(fault.offset, bytes)`. Called once per page however
   * many threads fault it; may be async. After it settles the page is marked
   * present and every faulter on it is woken by one CONTINUE per view.
   */
  fetch: (fault: Fault) => void | Promise<void>;
  /** Fetches in flight at once; further pages wait in FIFO order. Default 64. */
  concurrency?: number;
  /** Also map up to this many following pages that are already present, in the same CONTINUE. Default 0. */
  readAhead?: number;
  /** `'event-loop'` (default) or `'native'` (a native resolver thread; needs the `threadId` feature). */
  mode?: 'event-loop' | 'native';
  /**
   * Decides the fate of a page whose fetch failed (only that page is
   * affected): `'retry'` calls fetch again, `'zero-fill'` writes zeros then
   * CONTINUEs, `'poison'` makes the faulter's access raise SIGBUS (needs
   * UFFDIO_POISON, Linux 6.6+), `'stop'` stops the handler with the error
   * (see {@link FaultHandler.finished}). May be async. A throwing onError
   * counts as `'stop'`. Default: retry twice, then stop.
   */
  onError?: (error: unknown, fault: Fault) => ErrorAction | Promise<ErrorAction>;
  /**
   * Native mode: the JavaScript thread of this environment touched an absent
   * page. JavaScript cannot run until the fault is resolved, so fetch can never
   * be called. `'abort'` (default) prints the address and the rule to stderr and
   * aborts the process; `'map-as-is'` maps whatever the page cache holds (zeros
   * for a hole) and reports it afterwards through `loopThreadFaults` in
   * {@link FaultHandler.stats} and `onLoopThreadFault`'s companion event.
   */
  onLoopThreadFault?: LoopThreadFaultAction;
  /** Called after a non-cooperative event (remove, unmap, remap) has been applied to the handler's state. */
  onEvent?: (event: Exclude<UffdEvent, { type: 'pagefault' | 'fork' }>) => void;
  /**
   * The faulting process forked (needs `eventFork`). `child` is the child's
   * userfaultfd; attach a FaultHandler to it (it shares this memfd). Without
   * this callback the child's uffd is closed, so the child's pages fault as
   * ordinary pages.
   */
  onFork?: (child: Userfaultfd) => void;
  /** Native mode: the JavaScript thread faulted and `onLoopThreadFault` was `'map-as-is'`. */
  onLoopThreadFaultMapped?: (info: { address: number; offset: number }) => void;
  /** Stops the handler (as {@link FaultHandler.stop}) when aborted. */
  signal?: AbortSignal;
  /** Share the present bitmap (and in-flight fetches) with other handlers of views of the same memfd. */
  present?: PresentPages;
}

/** Options of {@link FaultHandler.attach}. */
export interface AttachOptions {
  /**
   * Also register MISSING, so that holes (pages never written to the memfd)
   * fault too: the post-copy set-up. Default false (MINOR only: holes read as
   * zeros without any fault).
   */
  missing?: boolean;
  /** Register the range with the uffd. Default true; false when the range was registered already (by a child process, say). */
  register?: boolean;
}

/** A view of the memfd in the faulting process, for {@link FaultHandler.attach} when there is no Mapping object (another process's view). */
export interface ViewRange {
  /** Start address in the faulting process. */
  address: number;
  length: number;
  /** Offset of the first byte in the memfd. */
  offset: number;
}

/** Latency percentiles, in microseconds, from fault read to CONTINUE done. */
export interface LatencyStats {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** Counters of a {@link FaultHandler}. */
export interface FaultHandlerStats {
  /** Pagefault messages read. */
  faults: number;
  /** Messages whose faulting thread was woken with its page mapped. */
  resolved: number;
  /** Successful fetch calls (at most one per page in flight). */
  fetched: number;
  /** Messages that joined a fetch already in flight for their page. */
  duplicatesMerged: number;
  /** Messages resolved without fetch because the page was marked present. */
  alreadyPresent: number;
  /** Extra pages mapped by read-ahead in the same CONTINUE. */
  readAheadPages: number;
  /** Fetch failures (each retry counts). */
  errors: number;
  /** Pages zero-filled / poisoned by the error policy. */
  zeroFilled: number;
  poisoned: number;
  /** Native mode: faults resolved by the native thread without JavaScript. */
  nativeResolved: number;
  /** Native mode: JavaScript-thread faults mapped as-is. */
  loopThreadFaults: number;
  /** Non-cooperative events seen. */
  events: { remove: number; unmap: number; remap: number; fork: number };
  /** Faults on ranges the handler no longer tracks (woken, left to fault again). */
  untracked: number;
  latencyUs: LatencyStats;
}

interface Region {
  address: number;
  length: number;
  offset: number;
}

/** Pending work for one memfd page: the messages waiting on it. */
interface Pending {
  fault: { -readonly [K in keyof Fault]: Fault[K] };
  /** Per message: faulting address and read time (performance.now()). */
  addresses: number[];
  times: number[];
  flags: number;
}

type State = 'idle' | 'running' | 'stopping' | 'stopped';

const defaultOnError = (_error: unknown, fault: Fault): ErrorAction => (fault.attempt < 2 ? 'retry' : 'stop');

/**
 * Serves the faults of one {@link Userfaultfd} over views of one {@link Memfd}.
 *
 * ```
 *  toucher thread        kernel                  FaultHandler                 fetch policy
 *  touch page ──► MINOR fault, sleeps ──► message ──► batch read ──► present? ──no──► fetch(fault)
 *                                                          │ yes                         │ memfd.write
 *  resumes ◄──────── wake ◄──────── UFFDIO_CONTINUE ◄──────┴──────── mark present ◄──────┘
 * ```
 *
 * One fetch and one CONTINUE per page however many threads fault it; EEXIST
 * (someone else mapped it) counts as resolved and is followed by a WAKE.
 */
export class FaultHandler implements AsyncDisposable {
  readonly uffd: Userfaultfd;
  readonly memfd: Memfd;
  /** The present-page bitmap this handler consults and updates. */
  readonly present: PresentPages;
  readonly mode: 'event-loop' | 'native';
  /**
   * Settles when the handler has stopped: with undefined after {@link stop}
   * or the uffd's close, or with the error that stopped it (error policy
   * `'stop'`, a failed read). Never rejects.
   */
  readonly finished: Promise<Error | undefined>;

  readonly #fetch: (fault: Fault) => void | Promise<void>;
  readonly #onError: (error: unknown, fault: Fault) => ErrorAction | Promise<ErrorAction>;
  readonly #onEvent?: FaultHandlerOptions['onEvent'];
  readonly #onFork?: FaultHandlerOptions['onFork'];
  readonly #onLoopThreadFaultMapped?: FaultHandlerOptions['onLoopThreadFaultMapped'];
  readonly #loopThreadAction: LoopThreadFaultAction;
  readonly #concurrency: number;
  readonly #readAhead: number;
  readonly #pageSize: number;
  readonly #fd: number;
  readonly #signal?: AbortSignal;

  #regions: Region[] = [];
  #state: State = 'idle';
  #uffdClosed = false;
  readonly #messages = new MessageBuffer(128);
  #poller: PollerHandle | undefined;
  #resolver: ResolverHandle | undefined;
  #releaseReader: (() => void) | undefined;
  #forgetClose: (() => void) | undefined;
  #stopping: Promise<void> | undefined;
  #resolveFinished!: (err: Error | undefined) => void;
  #error: Error | undefined;

  readonly #waiting = new Map<number, Pending>();
  readonly #queue: Pending[] = [];
  #active = 0;
  #idle: (() => void) | undefined;
  /** Faults whose CONTINUE met EAGAIN (an event is unread): [address, flags, tid, time] each. */
  #deferred: number[] = [];
  #retryTimer: NodeJS.Immediate | undefined;
  #zeroPage: Uint8Array | undefined;

  readonly #histogram: Histogram = buildHistogram({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 2 });
  readonly #counts = {
    faults: 0, resolved: 0, fetched: 0, duplicatesMerged: 0, alreadyPresent: 0, readAheadPages: 0, errors: 0,
    zeroFilled: 0, poisoned: 0, loopThreadFaults: 0, untracked: 0, remove: 0, unmap: 0, remap: 0, fork: 0,
  };

  constructor(uffd: Userfaultfd, options: FaultHandlerOptions) {
    if (!(uffd instanceof Userfaultfd)) throw argValueError('uffd', 'must be a Userfaultfd', uffd);
    const opts = v.options<FaultHandlerOptions>('options', options);
    if (!(opts.memfd instanceof Memfd)) throw argValueError('options.memfd', 'must be a Memfd', opts.memfd);
    this.uffd = uffd;
    this.memfd = opts.memfd;
    this.#fd = uffd.fd;
    this.#pageSize = opts.memfd.pageSize;
    this.#fetch = v.func('options.fetch', opts.fetch) as (fault: Fault) => void | Promise<void>;
    this.#onError = opts.onError === undefined ? defaultOnError : (v.func('options.onError', opts.onError) as typeof defaultOnError);
    this.#onEvent = opts.onEvent === undefined ? undefined : (v.func('options.onEvent', opts.onEvent) as FaultHandlerOptions['onEvent']);
    this.#onFork = opts.onFork === undefined ? undefined : (v.func('options.onFork', opts.onFork) as FaultHandlerOptions['onFork']);
    this.#onLoopThreadFaultMapped = opts.onLoopThreadFaultMapped === undefined ? undefined
      : (v.func('options.onLoopThreadFaultMapped', opts.onLoopThreadFaultMapped) as FaultHandlerOptions['onLoopThreadFaultMapped']);
    this.#concurrency = v.integer('options.concurrency', opts.concurrency ?? 64, 1, 1 << 20);
    this.#readAhead = v.integer('options.readAhead', opts.readAhead ?? 0, 0, 1024);
    this.mode = v.oneOf('options.mode', opts.mode, ['event-loop', 'native'] as const, 'event-loop');
    this.#loopThreadAction = v.oneOf('options.onLoopThreadFault', opts.onLoopThreadFault, ['abort', 'map-as-is'] as const, 'abort');
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', opts.signal);
    this.#signal = opts.signal;
    if (opts.present !== undefined) {
      if (!(opts.present instanceof PresentPages)) throw argValueError('options.present', 'must be a PresentPages', opts.present);
      if (opts.present.pageSize !== this.#pageSize) throw argValueError('options.present', `must have the memfd's page size (${this.#pageSize})`, opts.present.pageSize);
      this.present = opts.present;
    } else {
      this.present = new PresentPages(this.memfd.size, this.#pageSize);
    }
    if (this.mode === 'native' && !uffd.has('threadId'))
      throw stateError('ERR_UFFD_FEATURE_REQUIRED', "mode 'native' needs a Userfaultfd opened with the 'threadId' feature (the deadlock guard compares faulting thread ids)");
    this.finished = new Promise((resolve) => (this.#resolveFinished = resolve));
  }

  /**
   * Serves faults on a view of the memfd: a {@link Mapping} of it in this
   * process, or a {@link ViewRange} in the faulting process (a child that
   * sent its uffd). Registers the range MINOR (MISSING|MINOR with
   * `missing: true`) unless `register: false`. May be called before or after
   * {@link start}.
   */
  attach(view: Mapping | ViewRange, options?: AttachOptions): this {
    this.#assertUsable();
    const opts = v.options<AttachOptions>('options', options);
    let region: Region;
    if (view instanceof Mapping) {
      if (view.memfd.fd !== this.memfd.fd) throw argValueError('view', 'must be a mapping of the handler\'s memfd', view);
      if (view.private) throw argValueError('view', 'must be a shared mapping (a private one copies pages on write, outside the memfd)', view);
      region = { address: view.address, length: view.length, offset: view.offset };
    } else {
      const o = v.options<ViewRange>('view', view);
      const r = v.range('view', o, this.#pageSize);
      region = { ...r, offset: v.aligned('view.offset', v.integer('view.offset', o.offset), this.#pageSize) };
    }
    if (region.offset + region.length > this.present.pageCount * this.#pageSize)
      throw argValueError('view', 'reaches beyond the memfd size the present map was made for', region);
    if (v.boolean('options.register', opts.register, true))
      this.uffd.register(region, { minor: true, missing: v.boolean('options.missing', opts.missing, false) });
    this.#regions.push(region);
    this.#syncRegions();
    trace('handler uffd %d: attached 0x%s+%d at memfd offset %d', this.#fd, region.address.toString(16), region.length, region.offset);
    return this;
  }

  /**
   * Marks pages of the memfd present (content written in the background, a
   * push): faults on them are resolved without calling fetch.
   */
  markPresent(offset: number, length: number): void {
    this.present.mark(offset, length);
  }

  /** Starts serving: claims the uffd's events and begins reading them. */
  start(): this {
    if (this.#state !== 'idle') throw stateError('ERR_UFFD_HANDLER_STATE', `FaultHandler cannot start: it is ${this.#state}`);
    if (this.uffd.closed) throw stateError('ERR_UFFD_CLOSED', 'FaultHandler cannot start: the Userfaultfd is closed');
    this.#signal?.throwIfAborted();
    this.#releaseReader = this.uffd.claimReader(`FaultHandler (${this.mode})`);
    try {
      if (this.mode === 'native') this.#startNative();
      else this.#poller = startPoller(this.#fd, this.#messages.buffer, (count) => this.#onReadable(count));
    } catch (err) {
      this.#releaseReader();
      throw err;
    }
    this.#state = 'running';
    // The kernel wakes every faulter when the fd closes; stop before it is closed.
    this.#forgetClose = this.uffd.onClose(() => {
      this.#uffdClosed = true;
      void this.#shutdown(undefined);
    });
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    trace('handler uffd %d: started (%s, concurrency %d, read-ahead %d)', this.#fd, this.mode, this.#concurrency, this.#readAhead);
    return this;
  }

  /**
   * Stops reading faults, lets the fetches already started (and, unless the
   * handler is stopping on an error, the pages already queued) finish and
   * be mapped, then unregisters the attached views and wakes them, so every
   * thread blocked in a fault resumes (pages never fetched then show what
   * the memfd holds). Idempotent; resolves when done.
   */
  stop(): Promise<void> {
    return this.#shutdown(undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** Counters and latency percentiles (microseconds, from fault read to CONTINUE done). */
  stats(): FaultHandlerStats {
    const c = this.#counts;
    const histogram = this.#histogram;
    let nativeResolved = 0;
    let nativeAlreadyPresent = 0;
    let nativeReadAhead = 0;
    let nativeFaults = 0;
    let merged: Histogram = histogram;
    const nativeStats = this.#resolver ? native.resolverStats(this.#resolver) : this.#lastNativeStats;
    if (nativeStats) {
      // [faults, resolved, alreadyPresent, readAheadPages, loopThreadFaults, then bucket counts...]
      nativeFaults = nativeStats[0];
      nativeResolved = nativeStats[1];
      nativeAlreadyPresent = nativeStats[2];
      nativeReadAhead = nativeStats[3];
      merged = buildHistogram({ lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 2 });
      merged.add(histogram);
      for (let b = 0; b < NATIVE_BUCKETS; b++) {
        const n = nativeStats[5 + b];
        if (n > 0) merged.recordValueWithCount(nativeBucketValue(b), n);
      }
    }
    const total = merged.totalCount;
    return {
      faults: c.faults + nativeFaults,
      resolved: c.resolved + nativeResolved,
      fetched: c.fetched,
      duplicatesMerged: c.duplicatesMerged,
      alreadyPresent: c.alreadyPresent + nativeAlreadyPresent,
      readAheadPages: c.readAheadPages + nativeReadAhead,
      errors: c.errors,
      zeroFilled: c.zeroFilled,
      poisoned: c.poisoned,
      nativeResolved,
      loopThreadFaults: c.loopThreadFaults + (nativeStats ? nativeStats[4] : 0),
      events: { remove: c.remove, unmap: c.unmap, remap: c.remap, fork: c.fork },
      untracked: c.untracked,
      latencyUs: {
        count: total,
        min: total ? merged.minNonZeroValue : 0,
        mean: total ? merged.mean : 0,
        p50: total ? merged.getValueAtPercentile(50) : 0,
        p90: total ? merged.getValueAtPercentile(90) : 0,
        p99: total ? merged.getValueAtPercentile(99) : 0,
        p999: total ? merged.getValueAtPercentile(99.9) : 0,
        max: total ? merged.maxValue : 0,
      },
    };
  }

  /** `'idle'` before start, `'running'`, `'stopping'` while draining, `'stopped'`. */
  get state(): State {
    return this.#state;
  }

  // ---- reading ---------------------------------------------------------------

  readonly #onAbort = (): void => {
    void this.stop();
  };

  #onReadable(count: number): void {
    if (this.#state !== 'running' && this.#state !== 'stopping') return;
    if (count < 0) {
      void this.#shutdown(new UffdError(count, 'read', { fd: this.#fd }));
      return;
    }
    this.#processBatch(count);
    if (this.#deferred.length) this.#drainDeferred();
  }

  /** Events first (a REMOVE read with a fault must apply before the fault is served), then faults. */
  #processBatch(count: number): void {
    const m = this.#messages;
    let faults = 0;
    for (let i = 0; i < count; i++) {
      if (m.kind(i) === EVENT.pagefault) faults++;
      else this.#applyEvent(m.decode(i, (fd) => this.uffd.adoptForkChild(fd)));
    }
    if (faults === 0) return;
    const now = performance.now();
    for (let i = 0; i < count; i++) {
      if (m.kind(i) !== EVENT.pagefault) continue;
      this.#counts.faults++;
      this.#onFault(m.u64(i, 16), m.u32(i, 8), m.u32(i, 24), now);
    }
  }

  #drainDeferred(): void {
    for (let round = 0; round < 8 && this.#deferred.length; round++) {
      if (this.mode === 'event-loop' && !this.#uffdClosed && this.#state !== 'stopped') {
        // The EAGAIN said an event is unread: read it (and whatever came with it) now.
        const n = native.uffdRead(this.#fd, this.#messages.buffer);
        if (n < 0) {
          void this.#shutdown(new UffdError(n, 'read', { fd: this.#fd }));
          return;
        }
        if (n > 0) this.#processBatch(n);
      }
      const list = this.#deferred;
      this.#deferred = [];
      for (let i = 0; i < list.length; i += 4) this.#onFault(list[i], list[i + 1], list[i + 2], list[i + 3]);
    }
    if (this.#deferred.length && !this.#retryTimer)
      this.#retryTimer = setImmediate(() => {
        this.#retryTimer = undefined;
        this.#drainDeferred();
      });
  }

  #defer(address: number, flags: number, tid: number, time: number): void {
    this.#deferred.push(address, flags, tid, time);
  }

  // ---- serving ---------------------------------------------------------------

  #regionOf(address: number): Region | undefined {
    const regions = this.#regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i];
      if (address >= r.address && address < r.address + r.length) return r;
    }
    return undefined;
  }

  #onFault(address: number, flags: number, tid: number, time: number): void {
    if (this.#uffdClosed) return;
    const ps = this.#pageSize;
    address -= address % ps;
    const region = this.#regionOf(address);
    if (region === undefined) {
      // Unmapped or moved since the fault was raised: wake it; if the range is
      // still registered somewhere the thread faults again with a fresh address.
      this.#counts.untracked++;
      native.uffdWake(this.#fd, address, ps);
      trace('handler uffd %d: fault at untracked 0x%s woken', this.#fd, address.toString(16));
      return;
    }
    const offset = region.offset + (address - region.address);
    const page = offset / ps;
    if (this.present.has(page)) {
      const r = this.#map(address, region, page);
      if (r >= 0 || r === ESRCH) {
        this.#counts.alreadyPresent++;
        this.#resolved(time);
        return;
      }
      if (r === EAGAIN) return this.#defer(address, flags, tid, time);
      if (r === EFAULT || r === EINVAL) {
        // Marked present but the page is gone (punched, truncated): fetch again.
        this.present.clearPage(page);
      } else {
        this.#ioctlFailed(r, address);
        return;
      }
    }
    const pending = this.#waiting.get(page);
    if (pending !== undefined) {
      this.#counts.duplicatesMerged++;
      pending.addresses.push(address);
      pending.times.push(time);
      return;
    }
    const fresh: Pending = {
      fault: { address, offset, page, write: (flags & 1) !== 0, minor: (flags & 4) !== 0, threadId: tid, attempt: 0 },
      addresses: [address],
      times: [time],
      flags,
    };
    this.#waiting.set(page, fresh);
    const shared = this.present.inflight.get(page);
    if (shared !== undefined) {
      // Another handler over the same memfd is fetching this page.
      this.#active++;
      shared.then(() => this.#fetched(fresh, false), () => {
        this.#active--;
        this.#enqueue(fresh);
      });
      return;
    }
    this.#enqueue(fresh);
  }

  #enqueue(p: Pending): void {
    if (this.#active < this.#concurrency) this.#startFetch(p);
    else this.#queue.push(p);
  }

  #pump(): void {
    while (this.#active < this.#concurrency && this.#queue.length) this.#startFetch(this.#queue.shift()!);
    if (this.#active === 0 && this.#idle) this.#idle();
  }

  #startFetch(p: Pending): void {
    this.#active++;
    const fetching = (async () => this.#fetch(p.fault))();
    const settled = fetching.then(() => undefined);
    this.present.inflight.set(p.fault.page, settled);
    settled.catch(() => {});
    fetching.then(
      () => {
        if (this.present.inflight.get(p.fault.page) === settled) this.present.inflight.delete(p.fault.page);
        this.#counts.fetched++;
        this.#fetched(p, true);
      },
      (err: unknown) => {
        if (this.present.inflight.get(p.fault.page) === settled) this.present.inflight.delete(p.fault.page);
        void this.#fetchFailed(p, err);
      },
    );
  }

  /** The page's content is in the page cache: mark it and map it for every waiting message. */
  #fetched(p: Pending, mark: boolean): void {
    this.#active--;
    if (mark) this.present.markPage(p.fault.page);
    this.#mapWaiters(p);
    this.#pump();
  }

  #mapWaiters(p: Pending): void {
    this.#waiting.delete(p.fault.page);
    if (this.#uffdClosed) return;
    const { addresses, times } = p;
    let lastAddress = -1;
    let lastResult = 0;
    for (let i = 0; i < addresses.length; i++) {
      const address = addresses[i];
      // Messages for the same view share one CONTINUE; a different view of the page needs its own.
      if (address !== lastAddress && addresses.indexOf(address) === i) {
        const region = this.#regionOf(address);
        lastResult = region === undefined ? ENOENT : this.#map(address, region, p.fault.page);
        lastAddress = address;
      } else if (address !== lastAddress) {
        lastResult = 0;
      }
      if (lastResult >= 0 || lastResult === ESRCH) this.#resolved(times[i]);
      else if (lastResult === EAGAIN) this.#defer(address, p.flags, p.fault.threadId, times[i]);
      else if (lastResult === ENOENT) {
        this.#counts.untracked++;
        native.uffdWake(this.#fd, address, this.#pageSize);
      } else if (lastResult === EFAULT || lastResult === EINVAL) {
        // The page vanished between fetch and CONTINUE (punched or truncated):
        // clear it and let the message fault through the normal path again.
        this.present.clearPage(p.fault.page);
        this.#defer(address, p.flags, p.fault.threadId, times[i]);
      } else this.#ioctlFailed(lastResult, address);
    }
    if (this.#deferred.length) this.#drainDeferred();
  }

  /**
   * CONTINUE at `address`, extended over following present pages of the same
   * view when read-ahead is on. Returns >= 0 when the faulting page is mapped
   * (by us or, EEXIST, by someone else: then woken), or its -errno.
   */
  #map(address: number, region: Region, page: number): number {
    const ps = this.#pageSize;
    const fd = this.#fd;
    let end = address + ps;
    if (this.#readAhead > 0) {
      const limit = Math.min(region.address + region.length, address + (this.#readAhead + 1) * ps);
      let next = page + 1;
      while (end < limit && this.present.has(next)) {
        end += ps;
        next++;
      }
    }
    let at = address;
    while (at < end) {
      const r = native.uffdContinue(fd, at, end - at, 0);
      if (r >= 0) {
        at = end;
        break;
      }
      const done = native.scratch[0];
      if (done > 0) {
        // Partial progress: only the prefix is mapped and woken; go on with the rest.
        at += done;
        continue;
      }
      if (r === EEXIST) {
        // EEXIST proves the page is mapped, not that its faulter was woken.
        native.uffdWake(fd, at, ps);
        at += ps;
        continue;
      }
      if (at === address) return r;
      break; // a read-ahead page failed: it will fault on its own if ever touched
    }
    const extra = (at - address) / ps - 1;
    if (extra > 0) this.#counts.readAheadPages += extra;
    return 0;
  }

  #resolved(time: number): void {
    this.#counts.resolved++;
    const us = (performance.now() - time) * 1000;
    this.#histogram.recordValue(us < 1 ? 1 : us > 60_000_000 ? 60_000_000 : Math.round(us));
  }

  #ioctlFailed(result: number, address: number): void {
    // Not a policy error: the kernel refused to map a page that should be
    // mappable. Wake the faulter (it faults again) and stop loudly.
    native.uffdWake(this.#fd, address, this.#pageSize);
    void this.#shutdown(this.uffd.ioctlError(result, 'UFFDIO_CONTINUE', address, this.#pageSize));
  }

  async #fetchFailed(p: Pending, error: unknown): Promise<void> {
    this.#counts.errors++;
    const fault = p.fault;
    trace('handler uffd %d: fetch of page %d failed (attempt %d): %s', this.#fd, fault.page, fault.attempt, error);
    let action: ErrorAction;
    try {
      action = await this.#onError(error, fault);
      if (action !== 'retry' && action !== 'zero-fill' && action !== 'poison' && action !== 'stop')
        throw argValueError('onError result', "must be 'retry', 'zero-fill', 'poison' or 'stop'", action);
    } catch (policyError) {
      action = 'stop';
      error = policyError;
    }
    if (this.#error !== undefined && action !== 'stop') action = 'stop';
    switch (action) {
      case 'retry':
        this.#active--;
        fault.attempt++;
        this.#startFetch(p);
        return;
      case 'zero-fill':
        try {
          this.#zeroPage ??= new Uint8Array(this.#pageSize);
          this.memfd.write(fault.offset, this.#zeroPage);
        } catch (err) {
          this.#active--;
          void this.#shutdown(fetchError(err, fault.page, fault.offset, fault.address));
          this.#pump();
          return;
        }
        this.#counts.zeroFilled++;
        this.#fetched(p, true);
        return;
      case 'poison':
        this.#active--;
        this.#waiting.delete(fault.page);
        if (!this.#uffdClosed)
          for (const address of new Set(p.addresses)) {
            const r = native.uffdPoison(this.#fd, address, this.#pageSize, 0);
            if (r < 0 && r !== EEXIST) {
              native.uffdWake(this.#fd, address, this.#pageSize);
              void this.#shutdown(this.uffd.ioctlError(r, 'UFFDIO_POISON', address, this.#pageSize));
            }
          }
        this.#counts.poisoned++;
        this.#pump();
        return;
      default:
        this.#active--;
        // The page stays waiting; shutdown wakes its faulters by unregistering.
        void this.#shutdown(fetchError(error, fault.page, fault.offset, fault.address));
        this.#pump();
    }
  }

  // ---- non-cooperative events ------------------------------------------------

  #applyEvent(event: UffdEvent): void {
    switch (event.type) {
      case 'remove':
        this.#counts.remove++;
        // MADV_REMOVE freed the pages; MADV_DONTNEED kept them. They cannot be
        // told apart, so the content is treated as gone and fetched again.
        this.#forEachOverlap(event.start, event.end, (offset, length) => this.present.clear(offset, length));
        break;
      case 'unmap':
        this.#counts.unmap++;
        this.#cut(event.start, event.end);
        break;
      case 'remap': {
        this.#counts.remap++;
        const moved: Region[] = [];
        this.#forEachOverlap(event.from, event.from + event.length, (offset, length, address) =>
          moved.push({ address: event.to + (address - event.from), length, offset }));
        this.#cut(event.from, event.from + event.length);
        this.#regions.push(...moved);
        this.#syncRegions();
        break;
      }
      case 'fork':
        this.#counts.fork++;
        if (this.#onFork) this.#onFork(event.uffd);
        else {
          trace('handler uffd %d: fork event without onFork: closing the child uffd %d', this.#fd, event.uffd.fd);
          event.uffd.close();
        }
        return;
      default:
        return;
    }
    trace('handler uffd %d: %s event applied', this.#fd, event.type);
    this.#onEvent?.(event);
  }

  #forEachOverlap(start: number, end: number, fn: (offset: number, length: number, address: number) => void): void {
    for (const r of [...this.#regions]) {
      const s = Math.max(start, r.address);
      const e = Math.min(end, r.address + r.length);
      if (s < e) fn(r.offset + (s - r.address), e - s, s);
    }
  }

  #cut(start: number, end: number): void {
    const kept: Region[] = [];
    for (const r of this.#regions) {
      const rEnd = r.address + r.length;
      if (end <= r.address || start >= rEnd) {
        kept.push(r);
        continue;
      }
      if (r.address < start) kept.push({ address: r.address, length: start - r.address, offset: r.offset });
      if (end < rEnd) kept.push({ address: end, length: rEnd - end, offset: r.offset + (end - r.address) });
    }
    this.#regions = kept;
    this.#syncRegions();
  }

  // ---- native mode ------------------------------------------------------------

  #lastNativeStats: Float64Array | undefined;

  #startNative(): void {
    const handle = native.resolverStart(
      this.#fd, this.memfd.fd, this.present.buffer, this.#readAhead, this.#loopThreadAction === 'abort' ? 0 : 1,
      (faults: Float64Array, count: number, events: number[]) => this.#onNativeBatch(faults, count, events),
    );
    if (typeof handle === 'number') throw new UffdError(handle, 'pthread_create', { operation: 'resolver', fd: this.#fd });
    this.#resolver = handle;
    this.#syncRegions();
  }

  /**
   * A batch from the native thread: events it already applied to its own
   * table (code, a, b, c per event; fork carries the child fd), then the faults
   * it could not resolve: address, flags, tid, age in ns, per fault.
   */
  #onNativeBatch(faults: Float64Array, count: number, events: number[]): void {
    if (this.#state !== 'running' && this.#state !== 'stopping') {
      for (let i = 0; i < events.length; i += 4) if (events[i] === EVENT.fork) native.closeFd(events[i + 1]);
      for (let i = 0; i < count; i++) native.uffdWake(this.#fd, faults[i * 4] - (faults[i * 4] % this.#pageSize), this.#pageSize);
      return;
    }
    for (let i = 0; i < events.length; i += 4) {
      const code = events[i];
      if (code === EVENT.remove) this.#applyEvent({ type: 'remove', start: events[i + 1], end: events[i + 2] });
      else if (code === EVENT.unmap) this.#applyEvent({ type: 'unmap', start: events[i + 1], end: events[i + 2] });
      else if (code === EVENT.remap) this.#applyEvent({ type: 'remap', from: events[i + 1], to: events[i + 2], length: events[i + 3] });
      else if (code === EVENT.fork) this.#applyEvent({ type: 'fork', uffd: this.uffd.adoptForkChild(events[i + 1]) });
      else if (code === LOOP_THREAD_MAPPED) {
        const region = this.#regionOf(events[i + 1]);
        const offset = region ? region.offset + (events[i + 1] - region.address) : -1;
        process.emitWarning(`userfaultfd: the event-loop thread faulted on absent page at 0x${events[i + 1].toString(16)} (memfd offset ${offset}); mapped as-is because onLoopThreadFault is 'map-as-is'`,
          { code: 'UFFD_LOOP_THREAD_FAULT' });
        this.#onLoopThreadFaultMapped?.({ address: events[i + 1], offset });
      }
    }
    const now = performance.now();
    for (let i = 0; i < count; i++) {
      this.#counts.faults++;
      const b = i * 4;
      this.#onFault(faults[b], faults[b + 1], faults[b + 2], now - faults[b + 3] / 1e6);
    }
  }

  #syncRegions(): void {
    if (this.#resolver === undefined) return;
    const flat = new Float64Array(this.#regions.length * 3);
    this.#regions.forEach((r, i) => flat.set([r.address, r.length, r.offset], i * 3));
    native.resolverSetRegions(this.#resolver, flat);
  }

  // ---- stopping ----------------------------------------------------------------

  #shutdown(error: Error | undefined): Promise<void> {
    if (this.#stopping) {
      if (error && !this.#error) this.#error = error;
      return this.#stopping;
    }
    if (this.#state === 'idle') {
      this.#state = 'stopped';
      this.#error = error;
      this.#resolveFinished(error);
      return (this.#stopping = Promise.resolve());
    }
    this.#error = error;
    this.#state = 'stopping';
    trace('handler uffd %d: stopping%s', this.#fd, error ? ` on error: ${error.message}` : '');
    this.#signal?.removeEventListener('abort', this.#onAbort);
    if (this.#poller) {
      native.pollerStop(this.#poller);
      this.#poller = undefined;
    }
    if (this.#resolver) {
      this.#lastNativeStats = native.resolverStats(this.#resolver);
      native.resolverStop(this.#resolver);
      this.#resolver = undefined;
    }
    this.#stopping = this.#drain();
    return this.#stopping;
  }

  async #drain(): Promise<void> {
    for (;;) {
      if (this.#error !== undefined) {
        // Not started pages are not fetched; their faulters are woken below.
        this.#queue.length = 0;
      }
      if (this.#active === 0 && this.#queue.length === 0) break;
      await new Promise<void>((resolve) => (this.#idle = resolve));
      this.#idle = undefined;
    }
    if (this.#retryTimer) clearImmediate(this.#retryTimer);
    this.#retryTimer = undefined;
    if (!this.#uffdClosed && !this.uffd.closed) {
      // Give deferred faults a last chance (their event is read by now or never will be).
      const list = this.#deferred;
      this.#deferred = [];
      for (let i = 0; i < list.length; i += 4) this.#onFault(list[i], list[i + 1], list[i + 2], list[i + 3]);
      // Unregister, then wake: UNREGISTER alone leaves MINOR faulters asleep.
      for (const r of this.#regions) {
        native.uffdUnregister(this.#fd, r.address, r.length);
        native.uffdWake(this.#fd, r.address, r.length);
      }
    }
    this.#waiting.clear();
    this.#deferred = [];
    this.#forgetClose?.();
    this.#releaseReader?.();
    this.#state = 'stopped';
    trace('handler uffd %d: stopped (%d faults, %d resolved)', this.#fd, this.#counts.faults, this.#counts.resolved);
    this.#resolveFinished(this.#error);
  }

  #assertUsable(): void {
    if (this.#state === 'stopping' || this.#state === 'stopped') throw stateError('ERR_UFFD_HANDLER_STATE', `FaultHandler is ${this.#state}`);
  }
}

/** Event code the native resolver uses to report a loop-thread fault it mapped as-is. */
const LOOP_THREAD_MAPPED = 0x100;

/** Native latency buckets: 0..1023 µs one bucket per µs, then 64 log2 buckets above. */
const NATIVE_BUCKETS = 1024 + 32;
function nativeBucketValue(b: number): number {
  return b < 1024 ? Math.max(1, b) : Math.min(60_000_000, 1024 * 2 ** (b - 1024) * 1.5);
}

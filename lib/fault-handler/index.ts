// The fault-handling loop as users see it: a policy (fetch, error policy,
// events) on top of the fault engine, which reads the faults, finds the
// present pages and maps them (lib/engine.ts, native/engine.h). This file is
// the table of contents; the fetch queue and the counters have files of their own.
import { EVENT, PAGEFAULT_FLAG } from '../constants';
import { trace } from '../debug';
import { FaultEngine } from '../engine';
import { NEGATIVE_ERRNO } from '../errno';
import { argValueError, check, renamedError, stateError } from '../errors';
import { Mapping, Memfd } from '../memfd';
import { native } from '../native';
import { PresentPages } from '../present-pages';
import { Userfaultfd } from '../userfaultfd';
import * as v from '../validate';
import { handlerRecorder } from '../working-set/options';
import type { WorkingSetRecorder } from '../working-set/recorder';
import { Replayer, RunReader, checkPrefetchSource, claimRun, loadReplayPages } from '../working-set/replay';
import { FetchQueue, Pending } from './fetch-queue';
import { PolicyCounts, handlerStats, newPolicyCounts } from './stats';
import type {
  AttachOptions, ErrorAction, Fault, FaultHandlerOptions, FaultHandlerStats, LoopThreadFaultAction, ViewRange,
} from './types';

export type {
  AttachOptions, ErrorAction, Fault, FaultHandlerOptions, FaultHandlerStats, FetchContext, LatencyStats, LoopThreadFaultAction, ViewRange,
} from './types';

const { EAGAIN, ENOENT } = NEGATIVE_ERRNO;
const KIND = native.engineLayout.kinds;

type State = 'idle' | 'running' | 'stopping' | 'stopped';

const defaultOnError = (_error: unknown, fault: Fault): ErrorAction => (fault.attempt < 2 ? 'retry' : 'stop');

/**
 * Serves the faults of one {@link Userfaultfd} over views of one {@link Memfd}.
 *
 * ```
 *  toucher thread        kernel                  fault engine (native)          fetch policy
 *  touch page ──► MINOR fault, sleeps ──► message ──► batch read ──► present? ──no──► fetch(fault, { signal })
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

  readonly #engine: FaultEngine;
  readonly #queue: FetchQueue;
  readonly #counts: PolicyCounts = newPolicyCounts();
  readonly #onEvent?: FaultHandlerOptions['onEvent'];
  readonly #onFork?: FaultHandlerOptions['onFork'];
  readonly #onLoopThreadFaultMapped?: FaultHandlerOptions['onLoopThreadFaultMapped'];
  readonly #loopThreadAction: LoopThreadFaultAction;
  readonly #mapAhead: number;
  readonly #threads: number;
  readonly #spinUs: number;
  readonly #stopGraceMs: number;
  readonly #pageSize: number;
  readonly #fd: number;
  readonly #signal?: AbortSignal;
  readonly #recorder?: WorkingSetRecorder;
  readonly #replayer?: Replayer;
  /** The native prefetch batch running, if any (settles, never rejects). */
  #batchInFlight: Promise<void> | undefined;
  /** The handler's duplicate of prefetch.file.fd, until the replay is over. */
  #prefetchFd: number | undefined;
  readonly #replayStartsNow: boolean = false;
  readonly #fetch: FaultHandlerOptions['fetch'];

  #state: State = 'idle';
  #uffdClosed = false;
  #forgetClose: (() => void) | undefined;
  #stopping: Promise<void> | undefined;
  #resolveFinished!: (err: Error | undefined) => void;
  #error: Error | undefined;
  #zeroPage: Uint8Array | undefined;
  #watched: Uint32Array | undefined;

  constructor(uffd: Userfaultfd, options: FaultHandlerOptions) {
    if (!(uffd instanceof Userfaultfd)) throw argValueError('uffd', 'must be a Userfaultfd', uffd);
    if (uffd.closed) throw stateError('ERR_UFFD_CLOSED', 'FaultHandler needs an open Userfaultfd: this one is closed');
    const opts = v.options<FaultHandlerOptions>('options', options);
    v.renamed('options', opts, { readAhead: 'mapAhead', onLoopThreadFault: 'loopThreadFault' });
    if (!(opts.memfd instanceof Memfd)) throw argValueError('options.memfd', 'must be a Memfd', opts.memfd);
    this.uffd = uffd;
    this.memfd = opts.memfd;
    this.#fd = uffd.fd;
    this.#pageSize = opts.memfd.pageSize;
    const fetch = v.func('options.fetch', opts.fetch) as FaultHandlerOptions['fetch'];
    const onError = opts.onError === undefined ? defaultOnError : (v.func('options.onError', opts.onError) as typeof defaultOnError);
    this.#onEvent = opts.onEvent === undefined ? undefined : (v.func('options.onEvent', opts.onEvent) as FaultHandlerOptions['onEvent']);
    this.#onFork = opts.onFork === undefined ? undefined : (v.func('options.onFork', opts.onFork) as FaultHandlerOptions['onFork']);
    this.#onLoopThreadFaultMapped = opts.onLoopThreadFaultMapped === undefined ? undefined
      : (v.func('options.onLoopThreadFaultMapped', opts.onLoopThreadFaultMapped) as FaultHandlerOptions['onLoopThreadFaultMapped']);
    const concurrency = v.integer('options.concurrency', opts.concurrency ?? 64, 1, 1 << 20);
    this.#mapAhead = v.integer('options.mapAhead', opts.mapAhead ?? 0, 0, 1024);
    this.#stopGraceMs = v.integer('options.stopGraceMs', opts.stopGraceMs ?? 5000, 0, 3_600_000);
    this.mode = v.oneOf('options.mode', opts.mode, ['event-loop', 'native'] as const, 'event-loop');
    if (this.mode !== 'native')
      for (const name of ['loopThreadFault', 'onLoopThreadFaultMapped', 'spinUs', 'threads'] as const)
        if (opts[name] !== undefined) throw argValueError(`options.${name}`, "applies to mode 'native' only (in event-loop mode the event loop reads the uffd; the deadlock watchdog guards its thread)", opts[name]);
    this.#loopThreadAction = v.oneOf('options.loopThreadFault', opts.loopThreadFault, ['abort', 'map-as-is'] as const, 'abort');
    this.#threads = v.integer('options.threads', opts.threads ?? 1, 1, 64);
    this.#spinUs = v.integer('options.spinUs', opts.spinUs ?? 0, 0, 1_000_000);
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', opts.signal);
    this.#signal = opts.signal;
    if (opts.present !== undefined) {
      if (!(opts.present instanceof PresentPages)) throw argValueError('options.present', 'must be a PresentPages', opts.present);
      if (opts.present.pageSize !== this.#pageSize) throw argValueError('options.present', `must have the memfd's page size (${this.#pageSize})`, opts.present.pageSize);
      this.present = opts.present;
    } else {
      this.present = new PresentPages(this.memfd.size, this.#pageSize);
    }
    this.#recorder = handlerRecorder(opts.workingSet, this.#pageSize, this.present.pageCount * this.#pageSize);
    if (this.mode === 'native' && !uffd.has('threadId'))
      throw stateError('ERR_UFFD_FEATURE_REQUIRED', "mode 'native' needs a Userfaultfd opened with the 'threadId' feature (the deadlock guard compares faulting thread ids)");
    this.#engine = new FaultEngine(uffd, {
      backingFd: this.memfd.fd, pageSize: this.#pageSize, fill: 'continue', mapAhead: this.#mapAhead, present: this.present,
    });
    this.#queue = new FetchQueue(fetch, onError, concurrency, this.present, {
      ready: (p) => this.#mapWaiters(p),
      zeroFill: (p) => {
        this.#zeroPage ??= new Uint8Array(this.#pageSize);
        this.memfd.write(p.fault.offset, this.#zeroPage);
      },
      poison: (p) => this.#poison(p),
      fail: (error) => void this.#shutdown(error),
    }, this.#counts);
    this.finished = new Promise((resolve) => (this.#resolveFinished = resolve));
    this.#fetch = fetch;
    const replay = this.#replayOptions(opts);
    if (replay) {
      const { pages, read, file, threads, mapRuns, maxRunPages } = replay;
      this.#replayStartsNow = replay.start === 'now';
      // A duplicate: the caller closing (and the process reusing) its descriptor cannot change what the replay reads.
      const source = file && { fd: check(native.dupFd(file.fd), 'fcntl', { fd: file.fd, hint: 'duplicating prefetch.file.fd' }), offset: file.offset };
      this.#replayer = new Replayer(pages, this.present.pageCount, {
        taken: (page) => this.present.has(page) || this.present.inflight.has(page),
        fill: (first, count, signal) => this.#prefetchRun(first, count, signal, read, mapRuns),
        ...(source ? { fillBatch: (runs: Uint32Array, signal: AbortSignal, busy: boolean) => this.#prefetchBatch(runs, signal, source, threads, mapRuns, busy) } : {}),
      }, maxRunPages);
      if (source) {
        // Ours until the replay is over and its last batch settled (a stop closes it before it resolves).
        this.#prefetchFd = source.fd;
        void this.#replayer.finished.then(() => this.#batchInFlight).then(() => this.#closePrefetchFd());
      }
      if (!mapRuns) {
        // The engine counts the first fault on each page the replay made present.
        const watched = new Uint32Array(new SharedArrayBuffer(this.present.words.byteLength));
        this.#watched = watched;
        this.#engine.watch(watched);
        this.#replayer.touchedCount = () => this.#engine.stats()[native.engineLayout.stats.watchedTouched];
      }
    }
  }

  /** The replay asked for, if any: `prefetch` is checked like any option, a working-set file only warns. */
  #replayOptions(opts: Partial<FaultHandlerOptions>): ReturnType<typeof checkPrefetchSource> | undefined {
    const pageCount = this.present.pageCount;
    const ws = v.options<NonNullable<FaultHandlerOptions['workingSet']>>('options.workingSet', opts.workingSet);
    if (opts.prefetch !== undefined) {
      if (ws.replay !== undefined) throw argValueError('options.prefetch', 'cannot be given with options.workingSet.replay', opts.prefetch);
      return checkPrefetchSource('options.prefetch', opts.prefetch, pageCount);
    }
    if (ws.replay === undefined) return undefined;
    if (typeof ws.replay !== 'string' && (typeof ws.replay !== 'object' || ws.replay === null))
      throw argValueError('options.workingSet.replay', 'must be a working-set file path or a working set', ws.replay);
    const start = v.oneOf('options.workingSet.start', ws.start, ['first-fault', 'now'] as const, 'first-fault');
    const pages = loadReplayPages(ws.replay, { pageSize: this.#pageSize, memorySize: pageCount * this.#pageSize });
    return pages && { pages, read: undefined, start, threads: 2, mapRuns: true, maxRunPages: 64 };
  }

  /**
   * Makes a batch of runs present from a local file on native threads: claims
   * every run first (a fault on one of its pages waits for the batch), then
   * the threads copy, mark and map; a stop cancels the runs not begun.
   */
  #prefetchBatch(runs: Uint32Array, signal: AbortSignal, file: { fd: number; offset: number }, threads: number, mapRuns: boolean, busy: boolean): Promise<Float64Array> {
    signal.throwIfAborted();
    const watched = this.#watched;
    if (watched) for (let i = 0; i < runs.length; i += 2) for (let p = runs[i]; p < runs[i] + runs[i + 1]; p++) Atomics.or(watched, p >>> 5, 1 << (p & 31));
    // Beside a running guest (faults seen) a small batch goes on this thread:
    // the other CPUs are the guest's, and the runs are present before another
    // fault is read, so nothing waits on a claim.
    if (busy) return Promise.resolve(this.#engine.fillRunsNow(this.memfd.fd, file.fd, file.offset, runs, mapRuns));
    const claims: ReturnType<typeof claimRun>[] = [];
    for (let i = 0; i < runs.length; i += 2) claims.push(claimRun(this.present, runs[i], runs[i + 1]));
    const control = new Int32Array(new SharedArrayBuffer(native.runFillLayout.slots * Int32Array.BYTES_PER_ELEMENT));
    // A stop releases the faults that joined the batch at once (they fetch, or are woken, as the handler stops).
    const cancel = (): void => {
      Atomics.store(control, native.runFillLayout.cancel, 1);
      for (const claim of claims) claim.settle(false);
    };
    signal.addEventListener('abort', cancel, { once: true });
    const batch = this.#engine.fillRuns(this.memfd.fd, file.fd, file.offset, runs, threads, mapRuns, control).then((results) => {
      signal.removeEventListener('abort', cancel);
      claims.forEach((claim, i) => claim.settle(results[i] > 0));
      return results;
    }, (err: unknown) => {
      signal.removeEventListener('abort', cancel);
      for (const claim of claims) claim.settle(false);
      throw err;
    });
    this.#batchInFlight = batch.then(() => undefined, () => undefined);
    return batch;
  }

  /**
   * Makes pages [first, first + count) present ahead of their faults: claims
   * them (a fault on one joins this run), gets the content (one read and one
   * write, or one fetch per page), marks them, maps them with one CONTINUE.
   */
  #prefetchRun(first: number, count: number, signal: AbortSignal, read: RunReader | undefined, mapRuns: boolean): number | Promise<number> {
    const ps = this.#pageSize;
    const offset = first * ps;
    const length = count * ps;
    const present = (): number => {
      const watched = this.#watched;
      if (watched) for (let p = first; p < first + count; p++) Atomics.or(watched, p >>> 5, 1 << (p & 31));
      // Content first, then the bits: the engine maps whatever is marked.
      this.present.mark(offset, length);
      if (mapRuns) {
        const r = this.#engine.mapPresent(offset, length);
        if (r < 0) trace('handler uffd %d: mapping prefetched run %d+%d: errno %d (left to fault)', this.#fd, first, count, -r);
      }
      return count;
    };
    const write = (bytes: Uint8Array): void => {
      signal.throwIfAborted();
      if (!(bytes instanceof Uint8Array) || bytes.byteLength !== length)
        throw argValueError('prefetch.read result', `must be a Uint8Array of ${length} bytes`, bytes);
      this.memfd.write(offset, bytes);
    };
    let pending: Promise<Uint8Array> | undefined;
    if (read) {
      const bytes = read(offset, length, { signal });
      if (!(bytes instanceof Promise)) {
        // Content at hand: written and mapped before any fault on the run can
        // be read here, so nothing needs to claim it in flight.
        write(bytes);
        return present();
      }
      pending = bytes;
    }
    const claim = claimRun(this.present, first, count);
    // A stop releases the faults that joined this run at once (they fetch, or are woken, as the handler stops).
    const release = (): void => claim.settle(false);
    signal.addEventListener('abort', release, { once: true });
    const finish = (): number => {
      signal.removeEventListener('abort', release);
      signal.throwIfAborted();
      const n = present();
      claim.settle(true);
      return n;
    };
    const fail = (err: unknown): never => {
      signal.removeEventListener('abort', release);
      claim.settle(false);
      throw err;
    };
    try {
      if (pending) return pending.then((bytes) => {
        write(bytes);
        return finish();
      }).catch(fail);
      const regions = this.#engine.regions();
      const fetches: Promise<void>[] = [];
      for (let p = first; p < first + count; p++) {
        const at = p * ps;
        const view = regions.find((r) => at >= r.offset && at < r.offset + r.length);
        const fault = { address: view ? view.address + (at - view.offset) : 0, offset: at, page: p, write: false, minor: false, threadId: 0, attempt: 0 };
        fetches.push((async () => this.#fetch(fault, { signal }))());
      }
      return Promise.all(fetches).then(() => {
        this.#counts.fetched += count;
        return finish();
      }).catch(fail);
    } catch (err) {
      return fail(err);
    }
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
    let region: ViewRange;
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
    this.#engine.addRegion(region);
    trace('handler uffd %d: attached 0x%s+%d at memfd offset %d', this.#fd, region.address.toString(16), region.length, region.offset);
    return this;
  }

  /** @deprecated Refused: use `handler.present.mark(offset, length)`. */
  markPresent(_offset: number, _length: number): never {
    throw renamedError('FaultHandler#markPresent()', 'handler.present.mark(offset, length)');
  }

  /**
   * @internal Maps the present pages of memfd range [offset, offset + length)
   * into every attached view now, waking whoever waits on them.
   */
  mapPresent(offset: number, length: number): number {
    return this.#engine.mapPresent(offset, length);
  }

  /** @internal Poisons every page of every view that is not present (touching one raises SIGBUS). */
  poisonAbsent(): number {
    return this.#engine.poisonAbsent();
  }

  /** Starts serving: claims the uffd's events and begins reading them. */
  start(): this {
    if (this.#state !== 'idle') throw stateError('ERR_UFFD_HANDLER_STATE', `FaultHandler cannot start: it is ${this.#state}`);
    if (this.uffd.closed) throw stateError('ERR_UFFD_CLOSED', 'FaultHandler cannot start: the Userfaultfd is closed');
    this.#signal?.throwIfAborted();
    this.#engine.start(this.mode, {
      fault: (address, flags, tid, time, page) => this.#onFault(address, flags, tid, time, page),
      event: (kind, a, b, c) => this.#onEngineEvent(kind, a, b, c),
      failed: (error) => void this.#shutdown(error),
    }, `FaultHandler (${this.mode})`, { loopThreadAction: this.#loopThreadAction, threads: this.#threads, spinUs: this.#spinUs });
    this.#state = 'running';
    // The kernel wakes every faulter when the fd closes; stop before it is closed.
    this.#forgetClose = this.uffd.onClose(() => {
      this.#uffdClosed = true;
      void this.#shutdown(undefined);
    });
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    if (this.#replayStartsNow) this.#replayer?.start();
    trace('handler uffd %d: started (%s, map-ahead %d)', this.#fd, this.mode, this.#mapAhead);
    return this;
  }

  /**
   * Stops reading faults and lets the fetches already started (and, unless
   * the handler is stopping on an error, the pages already queued) finish
   * and be mapped, for at most `stopGraceMs`; then aborts the fetches' signal
   * and stops without them. Unregisters the attached views and wakes them,
   * so every thread blocked in a fault resumes (pages never fetched then
   * show what the memfd holds). If the uffd closes, stops at once.
   * Idempotent; resolves when done, never later than the grace period.
   */
  stop(): Promise<void> {
    return this.#shutdown(undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }

  /** Counters and latency percentiles (microseconds, from fault read to the faulter's wake-up). */
  stats(): FaultHandlerStats {
    const stats = handlerStats(this.#engine.stats(), this.#counts, this.mode === 'native');
    if (this.#replayer) stats.workingSet = { replay: this.#replayer.stats() };
    return stats;
  }

  /** @internal Resolves when the working-set replay is done or stopped (at once without one). */
  get replayFinished(): Promise<void> {
    return this.#replayer?.finished ?? Promise.resolve();
  }

  /** `'idle'` before start, `'running'`, `'stopping'` while draining, `'stopped'`. */
  get state(): State {
    return this.#state;
  }

  readonly #onAbort = (): void => {
    void this.stop();
  };

  #onFault(address: number, flags: number, tid: number, time: number, page: number): void {
    if (this.#state !== 'running') {
      // Read just before stopping: nobody will fetch it, the views are released.
      return;
    }
    // Every fault that reaches here was on an absent page when the engine
    // read it: a first touch (the recorder keeps the first of each page).
    this.#recorder?.recordFault(page, (flags & PAGEFAULT_FLAG.write) !== 0, 0, this.#engine.epochMs + time / 1e6);
    if (this.present.has(page)) {
      // Made present since the engine looked (a fetch finished meanwhile).
      this.#counts.presentOnArrival++;
      this.#serve(address, flags, tid, time);
      return;
    }
    const replayer = this.#replayer;
    if (replayer) {
      replayer.start();
      if (!this.present.inflight.has(page)) replayer.noteDemand(page);
    }
    this.#queue.add(address, flags, tid, time, page, page * this.#pageSize);
  }

  /** The page is in the memfd: map it for every fault waiting on it. */
  #mapWaiters(p: Pending): void {
    if (this.#uffdClosed) return;
    const w = p.waiters;
    for (let i = 0; i < w.length; i += 4) this.#serve(w[i], w[i + 1], w[i + 2], w[i + 3]);
  }

  #serve(address: number, flags: number, tid: number, time: number): void {
    const r = this.#engine.serve(address, flags, tid, time);
    // EAGAIN: deferred by the engine until the pending event is read; ENOENT:
    // outside every view now (unmapped), woken by the engine.
    if (r >= 0 || r === EAGAIN || r === ENOENT) return;
    void this.#shutdown(this.#engine.ioctlError(r, 'UFFDIO_CONTINUE', address));
  }

  #poison(p: Pending): void {
    if (this.#uffdClosed) return;
    const w = p.waiters;
    const done = new Set<number>();
    for (let i = 0; i < w.length; i += 4) {
      const address = w[i] - (w[i] % this.#pageSize);
      if (done.has(address)) continue;
      done.add(address);
      const r = this.#engine.poison(address, this.#pageSize);
      if (r < 0) void this.#shutdown(this.#engine.ioctlError(r, 'UFFDIO_POISON', address));
    }
  }

  #onEngineEvent(kind: number, a: number, b: number, c: number): void {
    switch (kind) {
      case KIND.remove:
        // Shared memory keeps its page cache through MADV_DONTNEED: the pages
        // stay present. MADV_REMOVE frees them; the engine finds that out at
        // the next fault (CONTINUE fails) and asks fetch again.
        this.#counts.remove++;
        return this.#emit({ type: 'remove', start: a, end: b });
      case KIND.unmap:
        this.#counts.unmap++;
        return this.#emit({ type: 'unmap', start: a, end: b });
      case KIND.remap:
        this.#counts.remap++;
        return this.#emit({ type: 'remap', from: a, to: b, length: c });
      case EVENT.fork: {
        this.#counts.fork++;
        const child = this.uffd.adoptForkChild(a);
        if (this.#onFork && this.#state === 'running') this.#onFork(child);
        else {
          trace('handler uffd %d: fork event without onFork: closing the child uffd %d', this.#fd, child.fd);
          child.close();
        }
        return;
      }
      case KIND.loopThreadMapped:
        process.emitWarning(`userfaultfd: the event-loop thread faulted on absent page at 0x${a.toString(16)} (memfd offset ${b}); mapped as-is because onLoopThreadFault is 'map-as-is'`,
          { code: 'UFFD_LOOP_THREAD_FAULT' });
        this.#onLoopThreadFaultMapped?.({ address: a, offset: b });
        return;
      default:
        return;
    }
  }

  #emit(event: Parameters<NonNullable<FaultHandlerOptions['onEvent']>>[0]): void {
    trace('handler uffd %d: %s event applied', this.#fd, event.type);
    this.#onEvent?.(event);
  }

  #shutdown(error: Error | undefined): Promise<void> {
    if (this.#stopping) {
      if (error && !this.#error) this.#error = error;
      if (error) this.#queue.dropQueued();
      if (this.#uffdClosed) this.#queue.abandon(this.#abortReason());
      return this.#stopping;
    }
    if (this.#state === 'idle') {
      this.#state = 'stopped';
      this.#error = error;
      this.#replayer?.stop();
      this.#closePrefetchFd();
      this.#resolveFinished(error);
      return (this.#stopping = Promise.resolve());
    }
    this.#error = error;
    this.#state = 'stopping';
    trace('handler uffd %d: stopping%s', this.#fd, error ? ` on error: ${error.message}` : '');
    this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#replayer?.stop();
    // Joined first (native mode), so no fault is read after this and the last counters are final.
    this.#engine.stop();
    if (error) this.#queue.dropQueued();
    this.#stopping = this.#drain();
    return this.#stopping;
  }

  #closePrefetchFd(): void {
    if (this.#prefetchFd === undefined) return;
    native.closeFd(this.#prefetchFd);
    this.#prefetchFd = undefined;
  }

  #abortReason(): Error {
    return this.#error ?? stateError('ERR_UFFD_HANDLER_STOPPED', this.#uffdClosed ? 'the Userfaultfd was closed' : 'the FaultHandler stopped');
  }

  async #drain(): Promise<void> {
    if (!this.#uffdClosed && !this.#queue.idle) {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.#stopGraceMs)));
      await Promise.race([this.#queue.whenIdle(), grace]);
      clearTimeout(timer);
      if (!this.#queue.idle) trace('handler uffd %d: fetches still running after %d ms: aborted', this.#fd, this.#stopGraceMs);
    }
    // Whatever is still in flight is abandoned: its signal aborts, its late result is ignored.
    this.#queue.abandon(this.#abortReason());
    // A native batch was cancelled with the replay: the runs in progress (a copy and a CONTINUE each) finish first.
    await this.#batchInFlight;
    this.#closePrefetchFd();
    // Unregister, then wake: UNREGISTER alone leaves MINOR faulters asleep.
    if (!this.#uffdClosed && !this.uffd.closed) this.#engine.releaseViews();
    this.#forgetClose?.();
    this.#state = 'stopped';
    trace('handler uffd %d: stopped', this.#fd);
    this.#resolveFinished(this.#error);
  }

  #assertUsable(): void {
    if (this.#state === 'stopping' || this.#state === 'stopped') throw stateError('ERR_UFFD_HANDLER_STATE', `FaultHandler is ${this.#state}`);
  }
}

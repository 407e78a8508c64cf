// @internal The fault engine (native/engine.h) as the policies use it:
// FaultHandler, MigrationDestination (through FaultHandler) and
// FirecrackerSession. The engine owns the region table, the present check
// and every resolving ioctl; this wrapper drives it on the event loop (one
// native call per batch) or on its native thread, and turns its records
// into calls on the policy's sink. No policy issues a resolving ioctl itself.
import { performance } from 'node:perf_hooks';

import { trace } from './debug';
import { NEGATIVE_ERRNO } from './errno';
import { UffdError } from './errors';
import { EngineHandle, native } from './native';
import { Poller } from './poller';
import { PresentPages } from './present-pages';
import type { Userfaultfd } from './userfaultfd';

const { EAGAIN } = NEGATIVE_ERRNO;
const LAYOUT = native.engineLayout;
const KIND = LAYOUT.kinds;
const SIZE = LAYOUT.recordSize;
const IOCTL_NAMES: Record<number, string> = { 2: 'UFFDIO_WAKE', 3: 'UFFDIO_COPY', 4: 'UFFDIO_ZEROPAGE', 7: 'UFFDIO_CONTINUE', 8: 'UFFDIO_POISON' };

/** One view of the backing in the faulting process. */
export interface EngineRegion {
  address: number;
  length: number;
  /** Offset of the view's first byte in the backing (memfd, or snapshot for anonymous memory). */
  offset: number;
  /** The view's page size; default the engine's (the bitmap's granularity), else a multiple of it. */
  pageSize?: number;
}

/** What the engine leaves to the policy. */
export interface EngineSink {
  /**
   * A fault on an absent page: the policy makes it present, then calls
   * serve/copy/zero. `time` is the engine's clock (ns); `page` the bitmap
   * index (backing offset / engine page size); `pageSize` the view's page.
   */
  fault(address: number, flags: number, tid: number, time: number, page: number, pageSize: number): void;
  /** A non-cooperative event the engine has applied to its regions, or a loop-thread fault it mapped as-is. */
  event(kind: number, a: number, b: number, c: number): void;
  /** The engine cannot go on (the uffd failed to read, or the kernel refused to map a page): stop, loudly. */
  failed(error: Error): void;
}

export interface EngineOptions {
  /** The memfd (MINOR memory) or -1 (anonymous memory). */
  backingFd: number;
  pageSize: number;
  /** `'continue'`: pages are made present in a shared backing and mapped by CONTINUE. `'copy'`: the policy hands bytes (COPY/ZEROPAGE). */
  fill: 'continue' | 'copy';
  /** Map up to this many following present pages with the faulting one. */
  mapAhead: number;
  present: PresentPages;
}

export type EngineDriver = 'event-loop' | 'native';

/** How the native driver waits (see native/resolver.h). */
export interface NativeTuning {
  loopThreadAction: 'abort' | 'map-as-is';
  threads: number;
  spinUs: number;
}

export class FaultEngine {
  readonly uffd: Userfaultfd;
  readonly pageSize: number;
  readonly present: PresentPages;
  /**
   * The engine clock's zero on `performance.now()`'s scale: a record's
   * `time` (ns since the engine was made) is `epochMs + time / 1e6` there.
   * Both clocks are CLOCK_MONOTONIC; the error is the creation call's length.
   */
  readonly epochMs: number;
  readonly #handle: EngineHandle;
  readonly #fd: number;
  #sink: EngineSink | undefined;
  #driver: EngineDriver | undefined;
  #poller: Poller | undefined;
  #out: Float64Array | undefined;
  #retry: NodeJS.Timeout | undefined;
  #releaseReader: (() => void) | undefined;
  #stopped = false;

  constructor(uffd: Userfaultfd, options: EngineOptions) {
    this.uffd = uffd;
    this.#fd = uffd.fd;
    this.pageSize = options.pageSize;
    this.present = options.present;
    const fill = options.fill === 'copy' ? LAYOUT.fill.copy : LAYOUT.fill.continue;
    const before = performance.now();
    this.#handle = native.engineCreate(this.#fd, options.backingFd, options.pageSize, fill, options.mapAhead, options.present.words);
    this.epochMs = (before + performance.now()) / 2;
  }

  addRegion(region: EngineRegion): void {
    native.engineAddRegion(this.#handle, region.address, region.length, region.offset, region.pageSize ?? this.pageSize);
  }

  /** The views as the engine knows them now (cut by unmap, moved by remap). */
  regions(): EngineRegion[] {
    const flat = native.engineRegions(this.#handle);
    const out: EngineRegion[] = [];
    for (let i = 0; i < flat.length; i += 4) out.push({ address: flat[i], length: flat[i + 1], offset: flat[i + 2], pageSize: flat[i + 3] });
    return out;
  }

  get running(): boolean {
    return this.#driver !== undefined && !this.#stopped;
  }

  /**
   * Claims the uffd's events and starts serving: on this thread's event loop,
   * or on a native thread (`loopThreadAction`: what to do when this
   * environment's JavaScript thread faults on an absent page).
   */
  start(driver: EngineDriver, sink: EngineSink, who: string, tuning: NativeTuning = { loopThreadAction: 'abort', threads: 1, spinUs: 0 }): void {
    this.#releaseReader = this.uffd.claimReader(who);
    this.#sink = sink;
    try {
      if (driver === 'native') {
        const rc = native.engineStartThread(this.#handle, tuning.loopThreadAction === 'abort' ? 0 : 1, (records, count) => this.#dispatch(records, 0, count), tuning.threads, tuning.spinUs);
        if (rc < 0) throw new UffdError(rc, 'pthread_create', { operation: 'resolver', fd: this.#fd });
        // The native thread reads REMOVE/UNMAP events, so munmap and madvise
        // of registered views from this thread no longer wait forever.
        this.uffd.setReadOnOtherThread(true);
      } else {
        this.#out = new Float64Array(1 + LAYOUT.recordCapacity * SIZE);
        // Read on this thread: if this thread ever blocks in a fault only it serves, say so instead of hanging.
        this.uffd.watchLoopThread(true);
        this.#poller = new Poller(this.#fd, null, (result) => {
          if (result < 0) this.#fail(new UffdError(result, 'poll', { fd: this.#fd }));
          else this.#pump();
        });
      }
    } catch (err) {
      this.#releaseReader();
      this.#releaseReader = undefined;
      throw err;
    }
    this.#driver = driver;
  }

  /** The policy made the page present: map it and wake its faulter. Returns 0 or -errno (EAGAIN: deferred, retried by the engine). */
  serve(address: number, flags: number, tid: number, time: number): number {
    return this.#after(native.engineServe(this.#handle, address, flags, tid, time));
  }

  /** Fills the faulting page with `bytes` (anonymous memory). */
  copy(address: number, flags: number, tid: number, time: number, bytes: Uint8Array): number {
    return this.#after(native.engineCopy(this.#handle, address, flags, tid, time, bytes));
  }

  /** Fills the faulting page with zeros (anonymous memory). */
  zero(address: number, flags: number, tid: number, time: number): number {
    return this.#after(native.engineZero(this.#handle, address, flags, tid, time));
  }

  /** Maps the present pages of backing range [offset, offset + length) into every view. */
  mapPresent(offset: number, length: number): number {
    return native.engineMapPresent(this.#handle, offset, length);
  }

  /** Copy mode: fills backing range [offset, offset + bytes.length) of every view ahead of its faults, without waking anyone (see {@link wake}). Pages copied, or -errno. */
  copyRun(offset: number, bytes: Uint8Array): number {
    return native.engineCopyRun(this.#handle, offset, bytes);
  }

  /**
   * Continue mode: copies the runs ([first page, count] pairs) from file
   * `sourceFd` (backing offset + `sourceOffset`) into the backing `backingFd`,
   * marks them present and maps them (`map`), on `threads` native threads.
   * Resolves with a result per run: pages made present, or -errno. Setting
   * `control[native.runFillLayout.cancel]` skips the runs not begun.
   */
  fillRuns(backingFd: number, sourceFd: number, sourceOffset: number, runs: Uint32Array, threads: number, map: boolean, control: Int32Array): Promise<Float64Array> {
    let done!: (results: Float64Array) => void;
    const filled = new Promise<Float64Array>((resolve) => (done = resolve));
    // Argument errors throw here, at the call; a refusal of the kernel rejects.
    const rc = native.engineFillRuns(this.#handle, backingFd, sourceFd, sourceOffset, runs, threads, map ? 1 : 0, control, done);
    if (rc < 0) return Promise.reject(new UffdError(rc, 'copy_file_range', { fd: sourceFd, hint: `prefetching ${runs.length / 2} runs` }));
    return filled;
  }

  /**
   * Copy mode: {@link copyRun} for each run ([first page, count] pairs), its
   * bytes at the same offset of `image`, in one call. A result per run.
   */
  copyRuns(image: Uint8Array, runs: Uint32Array): Float64Array {
    const r = native.engineCopyRuns(this.#handle, image, runs);
    // Only a backing that is not copy mode answers a number.
    if (typeof r === 'number') return new Float64Array(runs.length / 2).fill(r);
    return r;
  }

  /** {@link fillRuns} on this thread, for a small batch: done when it returns (nothing to claim). */
  fillRunsNow(backingFd: number, sourceFd: number, sourceOffset: number, runs: Uint32Array, map: boolean): Float64Array {
    const r = native.engineFillRunsNow(this.#handle, backingFd, sourceFd, sourceOffset, runs, map ? 1 : 0);
    if (typeof r === 'number') throw new UffdError(r, 'copy_file_range', { fd: sourceFd, hint: `prefetching ${runs.length / 2} runs` });
    return r;
  }

  /** Wakes whoever waits on a fault in [address, address + length). */
  wake(address: number, length: number): number {
    return native.engineWake(this.#handle, address, length);
  }

  /** Counts (stats: watchedTouched) the first fault that finds each page of `words` present, clearing its bit. Once per engine. */
  watch(words: Uint32Array): number {
    return native.engineWatch(this.#handle, words);
  }

  /** Poisons [address, address + length) of a view: touching it raises SIGBUS. */
  poison(address: number, length: number): number {
    return native.enginePoison(this.#handle, address, length);
  }

  /** Poisons every absent page of every view. */
  poisonAbsent(): number {
    return native.enginePoisonAbsent(this.#handle);
  }

  /** Raw counters (indexes in native.engineLayout.stats) followed by the latency buckets. */
  stats(): Float64Array {
    return native.engineStats(this.#handle);
  }

  /** Builds the error for a failed resolving ioctl. */
  ioctlError(result: number, ioctl: string, address: number, hint?: string): UffdError {
    return new UffdError(result, 'ioctl', { operation: ioctl, address, length: this.pageSize, hint });
  }

  /** Stops reading (joins the native thread) and gives the uffd's events back. Idempotent. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#poller?.stop();
    this.#poller = undefined;
    if (this.#retry) clearTimeout(this.#retry);
    this.#retry = undefined;
    if (this.#driver === 'native') {
      native.engineStopThread(this.#handle);
      this.uffd.setReadOnOtherThread(false);
    } else if (this.#driver === 'event-loop') this.uffd.watchLoopThread(false);
    this.#releaseReader?.();
    this.#releaseReader = undefined;
    trace('engine uffd %d: stopped', this.#fd);
  }

  /** Unregisters every view and wakes it: every faulter resumes (as an ordinary fault). */
  releaseViews(): void {
    native.engineReleaseViews(this.#handle);
  }

  #after(result: number): number {
    if (result === EAGAIN && this.#driver === 'event-loop') this.#scheduleRetry();
    return result;
  }

  #scheduleRetry(): void {
    if (this.#retry || this.#stopped) return;
    // A deferred fault waits for the thread that changed the mm to finish its
    // change: retrying at once would spin the loop (the native thread, too,
    // waits a millisecond). New messages still wake the poller at once.
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      this.#pump();
    }, 1);
  }

  #pump(): void {
    if (this.#stopped || this.#out === undefined) return;
    const out = this.#out;
    const count = native.engineRead(this.#handle, out);
    if (count < 0) return this.#fail(new UffdError(count, 'read', { fd: this.#fd }));
    this.#dispatch(out, 1, count);
    // Deferred faults wait for their event's mm change to finish: give it a turn.
    if (out[0] > 0) this.#scheduleRetry();
  }

  #dispatch(records: Float64Array, base: number, count: number): void {
    const sink = this.#sink;
    if (sink === undefined || this.#stopped) return this.#orphan(records, base, count);
    for (let i = 0; i < count; i++) {
      const r = base + i * SIZE;
      const kind = records[r];
      if (kind === KIND.pagefault) sink.fault(records[r + 1], records[r + 2], records[r + 3], records[r + 4], records[r + 5], records[r + 6]);
      else if (kind === KIND.readerFailed) this.#fail(new UffdError(-records[r + 1], 'read', { fd: this.#fd, operation: 'native resolver' }));
      else if (kind === KIND.ioctlFailed)
        this.#fail(this.ioctlError(-records[r + 1], IOCTL_NAMES[records[r + 3]] ?? 'ioctl', records[r + 2]));
      else sink.event(kind, records[r + 1], records[r + 2], records[r + 3]);
    }
  }

  /** Records that arrive after stop: nobody will serve them, so wake them and close forked uffds. */
  #orphan(records: Float64Array, base: number, count: number): void {
    for (let i = 0; i < count; i++) {
      const r = base + i * SIZE;
      if (records[r] === KIND.fork) native.closeFd(records[r + 1]);
      else if (records[r] === KIND.pagefault && !this.uffd.closed) {
        const [address, pageSize] = [records[r + 1], records[r + 6]];
        native.engineWake(this.#handle, address - (address % pageSize), pageSize);
      }
    }
  }

  #fail(error: Error): void {
    if (this.#stopped) return;
    this.#sink?.failed(error);
  }
}

// The raw native module, as native/*.cc exports it. Every syscall wrapper
// returns a number where >= 0 is success and a negative value is -errno;
// side results land in `scratch` (see native/addon_state.h).
import bindings from 'bindings';

/** Result of a wrapped syscall: >= 0 success, < 0 is -errno. */
export type SysResult = number;

export interface TouchReport {
  threadId: number;
  latencyNs: Float64Array;
  checksum: number;
}

export interface WriterReport {
  threadId: number;
  writes: number;
}

export interface NativeBinding {
  /** [0] bytes done by the last progress ioctl, [1] syscall errno, [2] device errno of the last open. */
  scratch: Float64Array;

  closeFd(fd: number): SysResult;
  adoptFd(fd: number): void;
  disownFd(fd: number): void;
  fdFlags(fd: number): SysResult;
  dupFd(fd: number): SysResult;
  gettid(): number;
  pageSize(): number;

  uffdOpen(userModeOnly: number, via: number): SysResult;
  uffdApi(fd: number, features: number): SysResult | [number, bigint];
  uffdRegister(fd: number, start: number, len: number, mode: number): SysResult | bigint;
  uffdUnregister(fd: number, start: number, len: number): SysResult;
  uffdWake(fd: number, start: number, len: number): SysResult;
  uffdContinue(fd: number, start: number, len: number, mode: number): SysResult;
  uffdZeropage(fd: number, start: number, len: number, mode: number): SysResult;
  uffdPoison(fd: number, start: number, len: number, mode: number): SysResult;
  uffdCopy(fd: number, dst: number, src: number, len: number, mode: number): SysResult;
  uffdCopyBuffer(fd: number, dst: number, bytes: ArrayBufferView, mode: number): SysResult;
  uffdWriteProtect(fd: number, start: number, len: number, mode: number): SysResult;
  uffdMove(fd: number, dst: number, src: number, len: number, mode: number): SysResult;
  uffdRead(fd: number, into: ArrayBuffer): SysResult;

  memfdCreate(name: string, hugeShift: number): SysResult;
  fdSize(fd: number): SysResult;
  truncate(fd: number, size: number): SysResult;
  fallocate(fd: number, mode: number, offset: number, length: number): SysResult;
  pwrite(fd: number, bytes: ArrayBufferView, offset: number): SysResult;
  pread(fd: number, into: ArrayBufferView, offset: number): SysResult;
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): SysResult | [number, ArrayBuffer];
  munmap(address: number, buffer: ArrayBuffer): SysResult;
  mremap(address: number, buffer: ArrayBuffer, newLength: number): SysResult | [number, ArrayBuffer];
  madvise(address: number, length: number, advice: number): SysResult;

  pollerStart(fd: number, into: ArrayBuffer | null, onReady: (result: number) => void): SysResult | PollerHandle;
  pollerStop(handle: PollerHandle): void;
  pollerRef(handle: PollerHandle, ref: boolean): void;

  touchStart(
    mapping: ArrayBuffer,
    pageSize: number,
    pages: Uint32Array,
    writeValue: number,
    cpu: number,
    done: (report: TouchReport) => void,
  ): SysResult;

  writerStart(mapping: ArrayBuffer, pageSize: number, params: Float64Array, control: Int32Array, done: (report: WriterReport) => void): SysResult;
  /** Slots and commands of a writer's control array (native/writer.cc). */
  writerControlLayout: { command: number; paused: number; writes: number; slots: number; run: number; pause: number; stop: number };

  /** Names and positions the engine's records, counters and histogram use (native/engine.h). */
  engineLayout: EngineLayout;
  /** A fault engine over uffd `fd` (native/engine.h); `present` is the present-page bitmap over a SharedArrayBuffer. */
  engineCreate(fd: number, backingFd: number, pageSize: number, fill: number, mapAhead: number, present: Uint32Array): EngineHandle;
  engineAddRegion(handle: EngineHandle, address: number, length: number, offset: number, pageSize: number): void;
  /** The views as the engine knows them now (events applied): [address, length, offset, pageSize] * n. */
  engineRegions(handle: EngineHandle): Float64Array;
  /** Reads and serves one batch; writes [pending, ...records] into `out`; returns the record count or -errno. */
  engineRead(handle: EngineHandle, out: Float64Array): SysResult;
  engineServe(handle: EngineHandle, address: number, flags: number, tid: number, time: number): SysResult;
  engineCopy(handle: EngineHandle, address: number, flags: number, tid: number, time: number, bytes: ArrayBufferView): SysResult;
  engineZero(handle: EngineHandle, address: number, flags: number, tid: number, time: number): SysResult;
  engineMapPresent(handle: EngineHandle, offset: number, length: number): SysResult;
  enginePoison(handle: EngineHandle, address: number, length: number): SysResult;
  enginePoisonAbsent(handle: EngineHandle): SysResult;
  /** Copy mode: COPYs whole pages `bytes` at backing `offset` into every view (DONTWAKE: a fault on them is woken when read, or by engineWake). Pages copied or -errno. */
  engineCopyRun(handle: EngineHandle, offset: number, bytes: ArrayBufferView): SysResult;
  /** Copy mode: engineCopyRun for each run [first, count, ...], its bytes at the same offset of `image`. A result per run. */
  engineCopyRuns(handle: EngineHandle, image: ArrayBufferView, runs: Uint32Array): Float64Array | SysResult;
  /**
   * Continue mode, content in a local file (native/run_fill.cc): copies runs [first, count, ...] of
   * pages from `sourceFd` at `sourceOffset` + the run's offset into the backing, marks them present
   * and (map = 1) maps them into every view, on `threads` native threads; `done` gets a result per
   * run (pages made present, or -errno). `control[runFillLayout.cancel] = 1` skips runs not begun.
   */
  engineFillRuns(handle: EngineHandle, backingFd: number, sourceFd: number, sourceOffset: number, runs: Uint32Array, threads: number, map: number, control: Int32Array, done: (results: Float64Array) => void): SysResult;
  /** engineFillRuns on the calling thread, for a small batch: a result per run, or -errno for bad runs. */
  engineFillRunsNow(handle: EngineHandle, backingFd: number, sourceFd: number, sourceOffset: number, runs: Uint32Array, map: number): Float64Array | SysResult;
  /** Slots of a run fill's control array, and its thread limit (native/run_fill.cc). */
  runFillLayout: { cancel: number; slots: number; maxThreads: number };
  /** Pages (a bitmap over a SharedArrayBuffer) whose first fault finding them present is counted (stats.watchedTouched). Once per engine. */
  engineWatch(handle: EngineHandle, words: Uint32Array): SysResult;
  engineWake(handle: EngineHandle, address: number, length: number): SysResult;
  /** Unregisters and wakes every view the engine knows. */
  engineReleaseViews(handle: EngineHandle): void;
  /** [...counters (engineLayout.stats), ...latency buckets]. */
  engineStats(handle: EngineHandle): Float64Array;
  /** Starts the native resolver threads; `loopThreadAction` 0 = abort, 1 = map as-is; `spinUs`: bounded spin after each batch. */
  engineStartThread(handle: EngineHandle, loopThreadAction: number, onRecords: (records: Float64Array, count: number) => void, threads?: number, spinUs?: number): SysResult;
  /** Stops and joins the resolver thread. Idempotent. */
  engineStopThread(handle: EngineHandle): void;

  /** Watches uffd `fd`, read on this environment's JavaScript thread, for the loop-thread deadlock (native/watchdog.cc). */
  watchdogWatch(fd: number, thresholdMs: number): SysResult;
  watchdogUnwatch(fd: number): void;

  /** Opens /proc/<pid>/pagemap (pid 0: this process) read-only, close-on-exec (native/pagemap.cc). */
  pagemapOpen(pid: number): SysResult;
  /**
   * PAGEMAP_SCAN for PAGE_IS_WRITTEN over [start, end): the written runs as
   * [start, end] pairs; with `reprotect` the same walk write-protects them (PM_SCAN_WP_MATCHING).
   */
  pagemapScanWritten(fd: number, start: number, end: number, reprotect: boolean): SysResult | Float64Array;
  /** Slots of the status array a wp-sync reader thread writes (native/wp_sync.cc). */
  wpSyncStatusLayout: { failure: number; faults: number; foreign: number; slots: number };
  /**
   * Starts the synchronous write-protect reader thread on `uffd`: each WP fault sets
   * the page's bit in `bitmap` (regions: [address, length, firstBit] * n) and un-protects the page.
   */
  wpSyncStart(uffd: number, pageSize: number, regions: Float64Array, bitmap: Int32Array, status: Int32Array): SysResult | WpSyncHandle;
  /** Copies the bitmap into `out`; with `reset` zeroes it and protects the pages taken, atomically with respect to the thread. */
  wpSyncCollect(handle: WpSyncHandle, reset: boolean, out: Uint32Array): SysResult;
  /** Stops and joins the reader thread. Idempotent. */
  wpSyncStop(handle: WpSyncHandle): void;

  /** Positions of the stats a live snapshot's completion reports (native/snapshot.cc). */
  snapshotLayout: SnapshotLayout;
  /**
   * Write-protects every region (views registered WP with `uffd`, which must have no
   * other reader), then saves them to `fileFd` at `firstPage * pageSize`: a copier
   * thread in chunks, the wp-sync reader thread for a page a writer faults on first.
   */
  snapshotStart(uffd: number, pageSize: number, regions: Float64Array, fileFd: number, done: (error: number, stats: Float64Array) => void): SysResult | SnapshotHandle;
  /** Cancels (callback: ECANCELED) or releases; lifts every protection and joins both threads. Idempotent. */
  snapshotStop(handle: SnapshotHandle): void;

  /** Test writers: `threads` native threads writing pages in one global order (native/gen_writers.cc). */
  genWritersStart(mapping: ArrayBuffer, pageSize: number, threads: number, stride: number): SysResult | GenWritersHandle;
  /** [writes started, writes completed]. */
  genWritersProgress(handle: GenWritersHandle): [number, number];
  /** Stops and joins the writers; the number of writes completed. Idempotent. */
  genWritersStop(handle: GenWritersHandle): number;

  socketPair(): SysResult | [number, number];
  unixListen(path: string, backlog: number): SysResult;
  unixAccept(fd: number): SysResult;
  unixConnect(path: string): SysResult;
  sendFds(fd: number, bytes: Uint8Array, fds: number[]): SysResult;
  recvFds(fd: number, into: Uint8Array): SysResult | [number, number[], boolean];
  peerCred(fd: number): SysResult | [number, number, number];
  sockWrite(fd: number, bytes: Uint8Array): SysResult;
  sockRead(fd: number, into: Uint8Array): SysResult;
}

/** Opaque handle of a native poller. */
export interface PollerHandle {
  readonly __poller: unique symbol;
}

/** Opaque handle of a fault engine. */
export interface EngineHandle {
  readonly __engine: unique symbol;
}

/** Opaque handle of a wp-sync dirty tracking thread. */
export interface WpSyncHandle {
  readonly __wpSync: unique symbol;
}

/** Opaque handle of a live snapshot. */
export interface SnapshotHandle {
  readonly __snapshot: unique symbol;
}

/** Opaque handle of test generation writers. */
export interface GenWritersHandle {
  readonly __genWriters: unique symbol;
}

export interface SnapshotLayout {
  pages: number; bytes: number; savedByFault: number; writeFaults: number;
  blockedTotalNs: number; blockedMaxNs: number; protectNs: number; copyNs: number; count: number;
}

/** The engine's contract with TypeScript, defined once in native/engine.h and exported at load. */
export interface EngineLayout {
  recordSize: number;
  recordCapacity: number;
  kinds: {
    pagefault: number; fork: number; remap: number; remove: number; unmap: number;
    loopThreadMapped: number; readerFailed: number; ioctlFailed: number; pagesRemoved: number;
  };
  stats: {
    faults: number; resolved: number; alreadyPresent: number; mapAheadPages: number; loopThreadFaults: number;
    deferrals: number; untracked: number; poisoned: number; copied: number; resolverCpuNs: number; watchedTouched: number;
  };
  statCount: number;
  buckets: { linear: number; log: number };
  fill: { continue: number; copy: number };
  errno: {
    ENOENT: number; ESRCH: number; EAGAIN: number; EFAULT: number; EEXIST: number; EINVAL: number; EBUSY: number;
    EPERM: number; ENOMEM: number; EBADF: number; ENOSYS: number; EACCES: number; ENOTTY: number; EPIPE: number;
    EIO: number; ENOSPC: number;
  };
}

export const native: NativeBinding = bindings('userfaultfd');

import { release } from 'node:os';

import {
  CONTINUE_MODE, COPY_MODE, FEATURES, FEATURE_SINCE, FeatureName, IoctlName, MOVE_MODE, POISON_MODE, REGISTER_MODE,
  WRITEPROTECT_MODE, ZEROPAGE_MODE, featureBits, featureNames, ioctlNames,
} from './constants';
import { trace } from './debug';
import { UffdError, argValueError, check, checkValue, closedError, stateError } from './errors';
import { MessageBuffer, UffdEventOf } from './events';
import { Mapping, PAGE_SIZE } from './memfd';
import { NEGATIVE_ERRNO } from './errno';
import { fdinfoFeatures, offeredFeatures, openFd } from './handshake';
import { native } from './native';
import { Poller } from './poller';
import * as guard from './registrations';
import * as v from './validate';

export type UffdEvent = UffdEventOf<Userfaultfd>;
export type { Range } from './validate';
export { offeredFeatures, userModeOnlyUnsupported } from './handshake';

const { EEXIST, EAGAIN } = NEGATIVE_ERRNO;
const DEFAULT_WATCHDOG_MS = 2000;

/**
 * The uffds open in this environment. At process exit Node joins the worker
 * threads before any native cleanup runs, and a worker blocked in a fault on
 * one of these can only leave the kernel once its uffd wakes it: closing them
 * all from the 'exit' event does (the kernel wakes every faulter on close).
 */
const open = new Set<Userfaultfd>();
let closeAtExit = false;
function track(uffd: Userfaultfd): void {
  open.add(uffd);
  if (closeAtExit) return;
  closeAtExit = true;
  process.once('exit', () => {
    for (const u of [...open]) {
      try {
        u.close();
      } catch {
        // Exiting: a descriptor that cannot be closed now is closed by the kernel.
      }
    }
  });
}

/** Options of {@link Userfaultfd.open}. */
export interface OpenOptions {
  /** Features to negotiate in the handshake. Unsupported ones throw `ERR_UFFD_FEATURE_UNSUPPORTED` naming them. */
  features?: readonly FeatureName[];
  /**
   * Handle only faults raised by user-space accesses (UFFD_USER_MODE_ONLY), the
   * default: kernel accesses to registered ranges (read(2) into them, say) fail
   * with EFAULT instead of waiting for this handler. Set false to handle them
   * too; that needs root or CAP_SYS_PTRACE when vm.unprivileged_userfaultfd=0.
   * Kernels before 5.11 know no user-mode-only uffd: there the uffd is opened
   * without it (probe() says so) and also sees kernel-mode faults.
   */
  userModeOnly?: boolean;
  /** How to open: the syscall, then /dev/userfaultfd (`auto`, default), or only one of them. */
  via?: 'auto' | 'syscall' | 'device';
  /**
   * When this uffd is read on the JavaScript thread (an event-loop
   * FaultHandler, `events()`, `readEvents()`) and that very thread blocks in
   * a fault on a range only it serves, the process can never go on. A
   * watchdog thread notices (the event loop stalled this many milliseconds,
   * the thread sleeps in a userfault, messages wait on this uffd), prints the
   * address and the rule, and aborts. Default 2000; 0 turns it off.
   */
  deadlockWatchdogMs?: number;
}

/** Options of {@link Userfaultfd.fromFd}. */
export interface UffdFromFdOptions {
  /** See {@link OpenOptions.deadlockWatchdogMs}. Default 2000; 0 turns it off. */
  deadlockWatchdogMs?: number;
}

/** Register modes; any mix, at least one. */
export interface RegisterModes {
  /** Faults on pages absent from the page cache (resolve with copy/zeropage, or write then continue on shmem). */
  missing?: boolean;
  /** Write-protect faults (resolve with writeProtect). */
  wp?: boolean;
  /** Faults on pages present in the page cache but not mapped here (resolve with continue). */
  minor?: boolean;
}

/** What the kernel allows on a registered range. */
export interface Registration {
  address: number;
  length: number;
  /** The resolving ioctls the kernel accepts on this range. */
  ioctls: IoctlName[];
  /** The raw mask, bit N for ioctl number N. */
  ioctlMask: bigint;
}

/** Options of {@link Userfaultfd.continue}. */
export interface ContinueOptions {
  /** Leave the faulting threads asleep (wake them later with {@link Userfaultfd.wake}). */
  dontWake?: boolean;
  /** Map the pages write-protected (UFFDIO_CONTINUE_MODE_WP, 6.4+; range must be registered wp). */
  writeProtect?: boolean;
  /**
   * What to do when the kernel answers EEXIST (the pages are already mapped:
   * another CONTINUE won the race). `'wake'` (default): wake the range, since
   * EEXIST does not wake anyone, and return 0. `'throw'`: throw the EEXIST error.
   */
  onExists?: 'wake' | 'throw';
}

/** Options of the resolving ioctls that can leave faulters asleep. */
export interface WakeOptions {
  dontWake?: boolean;
}

/**
 * A userfaultfd: a descriptor through which this process is told about page
 * faults in registered ranges and resolves them. Opened close-on-exec and
 * non-blocking, user-mode-only unless asked otherwise.
 *
 * The deadlock rule: the thread that touches a registered page cannot be the
 * one that resolves the fault. Touch from another thread or process, or use
 * the native resolver of {@link FaultHandler}.
 */
export class Userfaultfd implements Disposable {
  readonly #fd: number;
  /** Feature bits negotiated in the handshake. */
  readonly featureMask: number;
  readonly #pageSize = PAGE_SIZE;
  readonly #messages = new MessageBuffer(64);
  #closed = false;
  #reader: string | undefined;
  readonly #closeHooks = new Set<() => void>();
  // Registered Mappings stay reachable while registered: a collected Mapping
  // is unmapped by its finalizer, and an unmapped range silently stops faulting.
  readonly #registeredMappings = new Set<Mapping>();
  readonly #guard: guard.GuardedUffd | undefined;
  readonly #watchdogMs: number;
  #watchers = 0;

  private constructor(fd: number, features: number, watchdogMs: number) {
    this.#fd = fd;
    this.featureMask = features;
    this.#watchdogMs = watchdogMs;
    this.#guard = guard.track(fd, features);
    track(this);
  }

  /** The descriptor (close-on-exec, non-blocking); -1 once closed, as Node's FileHandle does. */
  get fd(): number {
    return this.#closed ? -1 : this.#fd;
  }

  /** Opens a userfaultfd and performs the handshake with the requested features. */
  static open(options?: OpenOptions): Userfaultfd {
    const opts = v.options<OpenOptions>('options', options);
    const requested: readonly FeatureName[] = opts.features ?? [];
    if (!Array.isArray(requested)) throw argValueError('options.features', 'must be an array of feature names', requested);
    for (const name of requested)
      if (typeof name !== 'string' || !Object.prototype.hasOwnProperty.call(FEATURES, name)) throw argValueError('options.features', `contains an unknown feature (known: ${Object.keys(FEATURES).join(', ')})`, name);
    const userModeOnly = v.boolean('options.userModeOnly', opts.userModeOnly, true);
    const via = v.oneOf('options.via', opts.via, ['auto', 'syscall', 'device'] as const, 'auto');
    const watchdogMs = v.integer('options.deadlockWatchdogMs', opts.deadlockWatchdogMs ?? DEFAULT_WATCHDOG_MS, 0, 3_600_000);
    const bits = featureBits(requested);
    const fd = openFd(userModeOnly, via);
    try {
      // An unknown bit makes the kernel fail the handshake and zero the whole
      // answer, which names nothing; check against a probe first.
      const offered = offeredFeatures();
      const missing: FeatureName[] = (requested as FeatureName[]).filter((name) => (offered & FEATURES[name]) === 0);
      if (missing.length) {
        const err = stateError('ERR_UFFD_FEATURE_UNSUPPORTED',
          `This kernel (${release()}) does not offer ${missing.map((m) => `${m} (since ${FEATURE_SINCE[m]})`).join(', ')}`);
        Object.assign(err, { unsupported: missing });
        throw err;
      }
      // The answer's features word lists everything the kernel offers, not
      // what this fd enabled: the handshake succeeded, so `bits` is what holds.
      checkValue(native.uffdApi(fd, bits), 'ioctl', { operation: 'UFFDIO_API', fd });
      const negotiated = bits;
      trace('uffd %d open (%s): features %s', fd, userModeOnly ? 'user-mode only' : 'all modes', featureNames(negotiated).join(',') || 'none');
      return new Userfaultfd(fd, negotiated, watchdogMs);
    } catch (err) {
      native.closeFd(fd);
      throw err;
    }
  }

  /**
   * Wraps a uffd that already went through the handshake: one received over a
   * Unix socket (see `recvFds`) or inherited. The object owns the fd from now
   * on and closes it in {@link close}. Features are read from /proc/self/fdinfo.
   */
  static fromFd(fd: number, options?: UffdFromFdOptions): Userfaultfd {
    v.fd('fd', fd);
    const watchdogMs = v.integer('options.deadlockWatchdogMs', v.options<UffdFromFdOptions>('options', options).deadlockWatchdogMs ?? DEFAULT_WATCHDOG_MS, 0, 3_600_000);
    const features = fdinfoFeatures(fd);
    if (features === undefined)
      throw stateError('ERR_UFFD_NOT_USERFAULTFD', `fd ${fd} is not a userfaultfd that completed its handshake`);
    native.adoptFd(fd);
    return new Userfaultfd(fd, features, watchdogMs);
  }

  /** Negotiated features by name. */
  get features(): FeatureName[] {
    return featureNames(this.featureMask);
  }

  has(feature: FeatureName): boolean {
    return (this.featureMask & FEATURES[feature]) !== 0;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Registers a range (a Mapping, or any `{ address, length }`) in the given
   * modes. Returns the ioctls the kernel allows on it. A range held by another
   * uffd gives EBUSY; registering again with this uffd replaces the modes.
   */
  register(range: v.Range, modes: RegisterModes): Registration {
    this.#assertOpen();
    const r = this.#range('range', range);
    const m = v.options<RegisterModes>('modes', modes);
    const mode = (v.boolean('modes.missing', m.missing, false) ? REGISTER_MODE.missing : 0)
      | (v.boolean('modes.wp', m.wp, false) ? REGISTER_MODE.wp : 0)
      | (v.boolean('modes.minor', m.minor, false) ? REGISTER_MODE.minor : 0);
    if (mode === 0) throw argValueError('modes', 'must enable at least one of missing, wp, minor', modes);
    const mask = checkValue(native.uffdRegister(this.#fd, r.address, r.length, mode), 'ioctl', { operation: 'UFFDIO_REGISTER', ...r });
    guard.addRange(this.#guard, r.address, r.length);
    if (range instanceof Mapping) this.#registeredMappings.add(range);
    trace('uffd %d: registered 0x%s+%d mode %d', this.#fd, r.address.toString(16), r.length, mode);
    return { ...r, ioctls: ioctlNames(mask), ioctlMask: mask };
  }

  /**
   * Unregisters a range, then wakes it: the kernel leaves threads blocked in a
   * MINOR fault asleep on UNREGISTER, and they retry as ordinary faults once woken.
   */
  unregister(range: v.Range): void {
    this.#assertOpen();
    const r = this.#range('range', range);
    check(native.uffdUnregister(this.#fd, r.address, r.length), 'ioctl', { operation: 'UFFDIO_UNREGISTER', ...r });
    guard.removeRange(this.#guard, r.address, r.length);
    for (const mapping of this.#registeredMappings)
      if (mapping.address >= r.address && mapping.address + mapping.length <= r.address + r.length) this.#registeredMappings.delete(mapping);
    check(native.uffdWake(this.#fd, r.address, r.length), 'ioctl', { operation: 'UFFDIO_WAKE', ...r });
  }

  /**
   * UFFDIO_CONTINUE: maps the page-cache pages of [address, address+length)
   * into the faulting view and wakes the faulters. Returns the bytes mapped,
   * or 0 when the pages were already mapped (EEXIST: resolved by someone
   * else; the range has been woken). Other failures throw a {@link UffdError};
   * after partial progress (EAGAIN) its `bytesDone` says how far it got and
   * only that prefix was woken.
   */
  continue(address: number | bigint, length: number, options?: ContinueOptions): number {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    const opts = options === undefined ? undefined : v.options<ContinueOptions>('options', options);
    const dontWake = v.boolean('options.dontWake', opts?.dontWake, false);
    const mode = (dontWake ? CONTINUE_MODE.dontWake : 0)
      | (v.boolean('options.writeProtect', opts?.writeProtect, false) ? CONTINUE_MODE.wp : 0);
    const result = native.uffdContinue(this.#fd, a, len, mode);
    if (result >= 0) return result;
    if (result === EEXIST && v.oneOf('options.onExists', opts?.onExists, ['wake', 'throw'] as const, 'wake') === 'wake') {
      if (!dontWake) this.wake(a, len);
      return 0;
    }
    throw this.#ioctlError(result, 'UFFDIO_CONTINUE', a, len);
  }

  /** UFFDIO_COPY: fills missing pages at `address` with `source`'s bytes (a multiple of the page size). Returns bytes copied. */
  copy(address: number | bigint, source: ArrayBufferView, options?: WakeOptions & { writeProtect?: boolean }): number {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const bytes = v.bytes('source', source);
    v.pageLength('source.byteLength', bytes.byteLength, this.#pageSize);
    const opts = v.options<WakeOptions & { writeProtect?: boolean }>('options', options);
    const mode = (v.boolean('options.dontWake', opts.dontWake, false) ? COPY_MODE.dontWake : 0)
      | (v.boolean('options.writeProtect', opts.writeProtect, false) ? COPY_MODE.wp : 0);
    const result = native.uffdCopyBuffer(this.#fd, a, bytes, mode);
    if (result < 0) throw this.#ioctlError(result, 'UFFDIO_COPY', a, bytes.byteLength);
    return result;
  }

  /** UFFDIO_COPY from memory of this process (a Mapping's address). Returns bytes copied. */
  copyFrom(address: number | bigint, sourceAddress: number | bigint, length: number, options?: WakeOptions): number {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const s = v.pageAddress('sourceAddress', sourceAddress, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    const mode = v.boolean('options.dontWake', v.options<WakeOptions>('options', options).dontWake, false) ? COPY_MODE.dontWake : 0;
    const result = native.uffdCopy(this.#fd, a, s, len, mode);
    if (result < 0) throw this.#ioctlError(result, 'UFFDIO_COPY', a, len);
    return result;
  }

  /** UFFDIO_ZEROPAGE: maps zero pages over a MISSING-registered range. Returns bytes zeroed. */
  zeropage(address: number | bigint, length: number, options?: WakeOptions): number {
    return this.#progressIoctl('UFFDIO_ZEROPAGE', native.uffdZeropage, address, length, ZEROPAGE_MODE.dontWake, options);
  }

  /** UFFDIO_POISON (6.6+): later accesses to the range get SIGBUS. Returns bytes poisoned. */
  poison(address: number | bigint, length: number, options?: WakeOptions): number {
    return this.#progressIoctl('UFFDIO_POISON', native.uffdPoison, address, length, POISON_MODE.dontWake, options);
  }

  /** UFFDIO_WAKE: wakes threads blocked on faults in the range. */
  wake(address: number | bigint, length: number): void {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    check(native.uffdWake(this.#fd, a, len), 'ioctl', { operation: 'UFFDIO_WAKE', address: a, length: len });
  }

  /** UFFDIO_WRITEPROTECT: sets (`protect: true`) or clears write protection; clearing wakes unless `dontWake`. */
  writeProtect(address: number | bigint, length: number, options: { protect: boolean; dontWake?: boolean }): void {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    const opts = v.options<{ protect: boolean; dontWake?: boolean }>('options', options);
    const protect = v.boolean('options.protect', opts.protect, false);
    const mode = (protect ? WRITEPROTECT_MODE.wp : 0) | (v.boolean('options.dontWake', opts.dontWake, false) ? WRITEPROTECT_MODE.dontWake : 0);
    check(native.uffdWriteProtect(this.#fd, a, len, mode), 'ioctl', { operation: 'UFFDIO_WRITEPROTECT', address: a, length: len });
  }

  /** UFFDIO_MOVE (6.8+): moves anonymous pages from `source` to `address`. Returns bytes moved. */
  move(address: number | bigint, source: number | bigint, length: number, options?: WakeOptions & { allowSourceHoles?: boolean }): number {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const s = v.pageAddress('source', source, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    const opts = v.options<WakeOptions & { allowSourceHoles?: boolean }>('options', options);
    const mode = (v.boolean('options.dontWake', opts.dontWake, false) ? MOVE_MODE.dontWake : 0)
      | (v.boolean('options.allowSourceHoles', opts.allowSourceHoles, false) ? MOVE_MODE.allowSrcHoles : 0);
    const result = native.uffdMove(this.#fd, a, s, len, mode);
    if (result < 0) throw this.#ioctlError(result, 'UFFDIO_MOVE', a, len);
    return result;
  }

  /**
   * Reads the pending events without blocking: up to `max` messages in one
   * read(2). Returns an empty array when none are pending. A `fork` event
   * carries a new Userfaultfd that owns the child's descriptor.
   */
  readEvents(max = 64): UffdEvent[] {
    this.#assertOpen();
    v.integer('max', max, 1, 4096);
    // A loop of readEvents() runs on this thread: watched until close.
    if (this.#watchers === 0) this.watchLoopThread(true);
    const messages = max === this.#messages.capacity ? this.#messages : new MessageBuffer(max);
    const count = check(native.uffdRead(this.#fd, messages.buffer), 'read', { fd: this.#fd });
    const events: UffdEvent[] = [];
    for (let i = 0; i < count; i++) events.push(messages.decode(i, (fd) => this.#adoptFork(fd)));
    return events;
  }

  /**
   * The event stream, read on this thread's event loop as the kernel posts
   * messages. Ends when `signal` aborts or the uffd is closed. Only one reader
   * (an iterator or a FaultHandler) may consume a uffd at a time.
   */
  events(options?: { signal?: AbortSignal }): AsyncGenerator<UffdEvent, void, undefined> {
    // Arguments are checked here, not in the generator body, so that a bad
    // call throws at the call site; a closed uffd rejects at the first next().
    const signal = v.options<{ signal?: AbortSignal }>('options', options).signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', signal);
    return this.#eventStream(signal);
  }

  async *#eventStream(signal: AbortSignal | undefined): AsyncGenerator<UffdEvent, void, undefined> {
    this.#assertOpen();
    signal?.throwIfAborted();
    const claimed = this.claimReader('events()');
    this.watchLoopThread(true);
    const release = () => {
      claimed();
      this.watchLoopThread(false);
    };
    const messages = new MessageBuffer(64);
    const queue: UffdEvent[] = [];
    let wake: (() => void) | undefined;
    let failure: Error | undefined;
    let done = false;
    const poller = new Poller(this.#fd, messages.buffer, (result) => {
      if (result < 0) {
        failure = new UffdError(result, 'read', { fd: this.#fd });
        poller.stop();
      } else for (let i = 0; i < result; i++) queue.push(messages.decode(i, (fd) => this.#adoptFork(fd)));
      wake?.();
    });
    // Runs synchronously from close() and abort, so the poller is gone before the fd is.
    const finish = () => {
      done = true;
      poller.stop();
      wake?.();
    };
    this.#closeHooks.add(finish);
    signal?.addEventListener('abort', finish, { once: true });
    try {
      for (;;) {
        while (queue.length) yield queue.shift()!;
        if (failure) throw failure;
        if (done) return;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      poller.stop();
      this.#closeHooks.delete(finish);
      signal?.removeEventListener('abort', finish);
      release();
    }
  }

  /**
   * Closes the descriptor. The kernel wakes every blocked faulter, whose
   * access then retries as an ordinary fault, and drops all registrations.
   * Readers and handlers attached to this uffd stop first. Idempotent.
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    open.delete(this);
    if (this.#watchers > 0) native.watchdogUnwatch(this.#fd);
    this.#watchers = 0;
    for (const hook of [...this.#closeHooks]) hook();
    this.#closeHooks.clear();
    this.#registeredMappings.clear();
    guard.untrack(this.#guard);
    check(native.closeFd(this.#fd), 'close', { fd: this.#fd });
    trace('uffd %d closed', this.#fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * @internal Claims the right to consume events; returns the release
   * function. Readers that share the fd would steal each other's messages.
   */
  claimReader(who: string): () => void {
    if (this.#reader) throw stateError('ERR_UFFD_BUSY', `${who}: this userfaultfd is already read by ${this.#reader}`);
    this.#reader = who;
    return () => {
      if (this.#reader === who) this.#reader = undefined;
    };
  }

  /**
   * @internal A resolver that reads this uffd's events on another thread
   * declares it here, so unmap/madvise of registered ranges may proceed
   * (the kernel's wait for the event to be read will end).
   */
  setReadOnOtherThread(value: boolean): void {
    if (this.#guard) this.#guard.readOnOtherThread = value;
  }

  /**
   * @internal This uffd is (or no longer is) read on this JavaScript thread:
   * the deadlock watchdog looks after it while anyone does.
   */
  watchLoopThread(on: boolean): void {
    if (this.#watchdogMs === 0 || this.#closed) return;
    if (on && this.#watchers++ === 0) check(native.watchdogWatch(this.#fd, this.#watchdogMs), 'watchdog', { fd: this.#fd });
    if (!on && this.#watchers > 0 && --this.#watchers === 0) native.watchdogUnwatch(this.#fd);
  }

  /** @internal Runs `hook` when the uffd closes (before the fd is closed). */
  onClose(hook: () => void): () => void {
    this.#closeHooks.add(hook);
    return () => this.#closeHooks.delete(hook);
  }

  /**
   * @internal Wraps the child uffd of a FORK event read by someone else (the
   * native resolver). The child context inherits this one's features; fdinfo
   * cannot tell (it lists every feature the kernel offers).
   */
  adoptForkChild(fd: number): Userfaultfd {
    return this.#adoptFork(fd);
  }

  /** @internal Builds the error of a failed resolving ioctl, with bytes done. */
  ioctlError(result: number, operation: string, address: number, length: number): UffdError {
    return this.#ioctlError(result, operation, address, length);
  }

  #ioctlError(result: number, operation: string, address: number, length: number): UffdError {
    const bytesDone = native.scratch[0];
    const hint = result === EAGAIN && bytesDone > 0
      ? 'partial progress: retry the rest of the range to learn the real error'
      : result === EAGAIN ? 'read the pending events, then retry' : undefined;
    return new UffdError(result, 'ioctl', { operation, address, length, bytesDone, hint });
  }

  #progressIoctl(operation: string, call: (fd: number, a: number, l: number, m: number) => number, address: number | bigint, length: number, dontWakeBit: number, options?: WakeOptions): number {
    this.#assertOpen();
    const a = v.pageAddress('address', address, this.#pageSize);
    const len = v.pageLength('length', length, this.#pageSize);
    const mode = v.boolean('options.dontWake', v.options<WakeOptions>('options', options).dontWake, false) ? dontWakeBit : 0;
    const result = call(this.#fd, a, len, mode);
    if (result < 0) throw this.#ioctlError(result, operation, a, len);
    return result;
  }

  #adoptFork(fd: number): Userfaultfd {
    native.adoptFd(fd);
    trace('uffd %d: fork event, child uffd %d', this.#fd, fd);
    return new Userfaultfd(fd, this.featureMask, this.#watchdogMs);
  }

  #range(name: string, range: v.Range): { address: number; length: number } {
    if (range && typeof range === 'object' && 'closed' in range && (range as { closed: unknown }).closed === true)
      throw stateError('ERR_UFFD_CLOSED', `${name}: the mapping is unmapped`);
    return v.range(name, range, this.#pageSize);
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError('Userfaultfd');
  }
}

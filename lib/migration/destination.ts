// The destination of a post-copy migration. The guest's memory is a Memfd
// whose guest views are registered MISSING|MINOR on a userfaultfd: a page
// absent from the page cache raises a MISSING fault (never a silent zero
// page, the hole trap of MINOR-only registration), a page present but not
// yet mapped raises a MINOR fault. Pages arrive over TCP and are written
// into the page cache through the memfd (pwrite, or a fill view on
// hugetlbfs), then mapped with UFFDIO_CONTINUE. Faults are served by a
// FaultHandler: its fetch policy asks the source for the page and settles
// when the page has arrived; pages the handler finds present are mapped
// without asking (in native mode by its resolver thread, without JavaScript).
//
// From a live source (protocol 3), pages arrive before the guest may run
// here: pre-copy rounds, and update batches that replace pages the guest
// wrote at the source after they were sent. Until the switch-over the fault
// handler does not run and nothing is mapped, so a replaced page was never
// seen by anyone; a guest that runs too early just waits in its first fault.
// At a hybrid switch-over the pages written since they were sent are marked
// absent again (they were never mapped, so no view holds the stale copy) and
// are fetched like any other missing page. After the switch-over an update is
// a protocol error: only absent pages are ever written again.
//
// A page the guest drops comes back the way the kernel says: MADV_DONTNEED
// on shared memory keeps the page cache, so the page stays present and its
// next fault is a MINOR one mapped without asking the source; MADV_REMOVE
// frees it, the next fault finds it gone (CONTINUE fails), and the page is
// asked for again with a refetch request, which the source always answers.
//
// Why a push can never overwrite a guest write: the guest can only write a
// page once it is mapped in its view, it is mapped only by CONTINUE, and
// CONTINUE is only issued after the page is in the page cache and marked
// present. Every incoming page is written only while it is still absent, and
// all of this runs on one thread, so "absent" cannot change between the
// check and the write.
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';

import { trace } from '../debug';
import { NEGATIVE_ERRNO } from '../errno';
import { argValueError, stateError } from '../errors';
import { Fault, FaultHandler, FaultHandlerStats, FetchContext } from '../fault-handler';
import { Mapping, Memfd } from '../memfd';
import { PresentPages } from '../present-pages';
import { Userfaultfd } from '../userfaultfd';
import * as v from '../validate';
import { SessionWorkingSetOptions, WorkingSetRecordTarget, recordTarget, recorderFor } from '../working-set/options';
import type { WorkingSetRecorder } from '../working-set/recorder';
import { SessionReplay, loadReplayPages, sessionReplay } from '../working-set/replay';
import { RequestedReplay } from '../working-set/requested-replay';
import { CheckedAuth, authError, checkAuth, connect, nonce, proof, proofHolds } from './auth';
import { Frame, FrameDecoder, PROTOCOL_VERSION, encodeAuth, encodeCredit, encodeError, protocolError } from './protocol';
import { PageRequests } from './requests';

import type { DestinationOptions, DestinationStats, FailurePolicy } from './destination-options';

interface View {
  address: number;
  length: number;
  firstPage: number;
  pageCount: number;
}

const { ESRCH } = NEGATIVE_ERRNO;

/**
 * Receives a guest's memory by post-copy while the guest runs. Create with
 * {@link MigrationDestination.connect}; `done` settles when every page is in
 * (or the migration failed, after the failure policy was applied).
 */
export class MigrationDestination implements Disposable {
  /** Resolves with the stats once every page is present; rejects with a coded error on failure. */
  readonly done: Promise<DestinationStats>;
  /**
   * Resolves when the guest may run here: at once for a static image, at the
   * switch-over from a live hybrid or post-copy source, at done after
   * stop-and-copy. Rejects as `done` does when the migration fails first.
   */
  readonly resumable: Promise<void>;
  #resolveResumable!: () => void;
  /** The source is live and the guest may not run here yet. */
  #beforeSwitchover = false;
  /** A stop-and-copy switch-over was announced: updates go on until done. */
  #stopAndCopy = false;
  readonly #uffd: Userfaultfd;
  readonly #memfd: Memfd;
  readonly #views: View[];
  readonly #socket: net.Socket;
  readonly #auth: CheckedAuth;
  /** With a token: the nonce this side sent, until the source proved itself. */
  #challenge: Buffer | undefined;
  readonly #policy: FailurePolicy;
  readonly #mapReceived: boolean;
  readonly #prefetch: number;
  readonly #pushWindow: number;
  readonly #unregisterWhenDone: boolean;
  readonly #pageSize: number;
  #pageCount = 0;
  readonly #handler: FaultHandler;
  /** The handler's present-page bitmap: the one truth about which pages hold their content. */
  readonly #present: PresentPages;
  readonly #requests: PageRequests;
  /** Per page: 1 once it has arrived (a later fault on it means the guest lost it). */
  #received = new Uint8Array(0);
  #receivedCount = 0;
  /** The source said done while refetched pages were still on their way. */
  #doneSeen = false;
  #authenticated = false;
  /** Fetches waiting for their page to arrive, by page. */
  readonly #pending = new Map<number, { since: number; resolve: () => void; reject: (err: Error) => void }>();
  readonly #stats: DestinationStats;
  #started = 0;
  #handlerStarted = false;
  #failure: Error | undefined;
  #settled = false;
  #resolve!: (stats: DestinationStats) => void;
  #reject!: (err: Error) => void;
  readonly #signal?: AbortSignal;
  readonly #onAbort = () => this.#fail(stateError('ERR_MIGRATION_ABORTED', 'migration destination aborted'));
  readonly #recordFile?: string;
  readonly #recorder?: WorkingSetRecorder;
  readonly #replaySpec?: SessionReplay;
  #replay?: RequestedReplay;

  private constructor(opts: Required<Pick<DestinationOptions, 'uffd' | 'memfd'>> & { views: View[]; socket: net.Socket; auth: CheckedAuth; policy: FailurePolicy; mode: 'event-loop' | 'native'; mapReceived: boolean; prefetch: number; pushWindow: number; unregisterWhenDone: boolean; signal?: AbortSignal; record?: WorkingSetRecordTarget; replay?: SessionReplay }) {
    this.#replaySpec = opts.replay;
    this.#uffd = opts.uffd;
    this.#memfd = opts.memfd;
    this.#views = opts.views;
    this.#socket = opts.socket;
    this.#auth = opts.auth;
    this.#policy = opts.policy;
    this.#mapReceived = opts.mapReceived;
    this.#prefetch = opts.prefetch;
    this.#pushWindow = opts.pushWindow;
    this.#unregisterWhenDone = opts.unregisterWhenDone;
    this.#pageSize = opts.memfd.pageSize;
    this.#signal = opts.signal;
    this.#requests = new PageRequests((frame) => this.#socket.write(frame), () => !this.#settled);
    this.#stats = {
      pageCount: 0, pageSize: this.#pageSize, pagesOnDemand: 0, pagesPushed: 0, pagesIgnored: 0, rounds: 0, pagesUpdated: 0, pagesStale: 0, faults: 0, demandFaults: 0,
      faultLatencyMs: [], bytesReceived: 0, durationMs: 0,
    };
    this.done = new Promise<DestinationStats>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {});
    if (opts.record) {
      this.#recordFile = opts.record.file;
      this.#recorder = recorderFor(opts.record, this.#pageSize, opts.memfd.size);
    }
    this.resumable = new Promise<void>((resolve, reject) => {
      this.#resolveResumable = resolve;
      this.done.catch(reject);
    });
    this.resumable.catch(() => {});
    // The views were registered MISSING|MINOR by the guest; the handler only serves them.
    this.#handler = new FaultHandler(opts.uffd, {
      memfd: opts.memfd,
      mode: opts.mode,
      workingSet: { record: this.#recorder },
      fetch: (fault, context) => this.#fetch(fault, context),
      // Fetches fail only once the migration has failed: apply the policy to their pages.
      onError: () => (this.#policy === 'poison' ? 'poison' : 'zero'),
    });
    for (const view of this.#views)
      this.#handler.attach({ address: view.address, length: view.length, offset: view.firstPage * this.#pageSize }, { register: false });
    this.#present = this.#handler.present;
  }

  /**
   * Connects to the source (or adopts a connected socket), checks its hello
   * against the memfd (version, page size, image size), then starts serving
   * faults on the event loop. Resolves once serving has started.
   */
  static async connect(options: DestinationOptions): Promise<MigrationDestination> {
    const opts = v.options<DestinationOptions>('options', options);
    v.renamed('options', opts, { readahead: 'prefetch' });
    if (!(opts.uffd instanceof Userfaultfd)) throw argValueError('options.uffd', 'must be a Userfaultfd', opts.uffd);
    if (!(opts.memfd instanceof Memfd)) throw argValueError('options.memfd', 'must be a Memfd', opts.memfd);
    const pageSize = opts.memfd.pageSize;
    if (!Array.isArray(opts.views) || opts.views.length === 0) throw argValueError('options.views', 'must be a non-empty array of guest views', opts.views);
    const views = opts.views.map((view, i): View => {
      const r = v.range(`options.views[${i}]`, view, pageSize);
      const offset = view instanceof Mapping ? view.offset : v.integer(`options.views[${i}].offset`, view.offset ?? 0);
      v.aligned(`options.views[${i}].offset`, offset, pageSize);
      return { address: r.address, length: r.length, firstPage: offset / pageSize, pageCount: r.length / pageSize };
    });
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', opts.signal);
    opts.signal?.throwIfAborted();
    const ws = v.options<SessionWorkingSetOptions>('options.workingSet', opts.workingSet);
    const record = recordTarget('options.workingSet.record', ws.record);
    const replay = sessionReplay('options.workingSet', ws, 'now');
    const auth = checkAuth(opts);
    let socket = opts.socket;
    if (socket === undefined) {
      const port = v.integer('options.port', opts.port, 1, 65535);
      socket = await connect(opts.host ?? '127.0.0.1', port, auth, opts.signal);
    } else if (!(socket instanceof net.Socket)) throw argValueError('options.socket', 'must be a net.Socket', socket);
    else if (auth.tls) throw argValueError('options.tls', 'applies when the destination connects (host/port); wrap a socket of your own in TLS yourself', 'with options.socket');
    let dest: MigrationDestination;
    try {
      dest = new MigrationDestination({
      uffd: opts.uffd, memfd: opts.memfd, views, socket, auth,
      policy: v.oneOf('options.onFailure', opts.onFailure, ['poison', 'zero'] as const, 'poison'),
      mode: v.oneOf('options.mode', opts.mode, ['event-loop', 'native'] as const, 'event-loop'),
      mapReceived: v.boolean('options.mapReceived', opts.mapReceived, true),
      prefetch: v.integer('options.prefetch', opts.prefetch ?? 0, 0, 4096),
      pushWindow: v.integer('options.pushWindow', opts.pushWindow ?? 4, 1, 1 << 20),
      unregisterWhenDone: v.boolean('options.unregisterWhenDone', opts.unregisterWhenDone, true),
      signal: opts.signal,
      record,
      replay,
      });
    } catch (err) {
      socket.destroy();
      throw err;
    }
    await dest.#start();
    return dest;
  }

  /** Live counters (the same object `done` resolves with). */
  get stats(): DestinationStats {
    this.#refreshReplayStats();
    return this.#stats;
  }

  /** Pages present in the memfd so far. */
  get pagesPresent(): number {
    return this.#present.count();
  }

  /** The fault handler's counters and latency percentiles. */
  faultStats(): FaultHandlerStats {
    return this.#handler.stats();
  }

  /**
   * Before the end: gives up, applies the failure policy and rejects `done`
   * with ERR_MIGRATION_ABORTED. After it (with `unregisterWhenDone: false`):
   * stops serving faults and unregisters the views. Idempotent.
   */
  close(): void {
    if (!this.#settled) this.#fail(stateError('ERR_MIGRATION_ABORTED', 'migration destination closed before the migration finished'));
    else void this.#handler.stop();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #start(): Promise<void> {
    const socket = this.#socket;
    socket.setNoDelay(true);
    let helloSeen = false;
    const decoder = new FrameDecoder(() => this.#pageSize);
    const started = new Promise<void>((resolve, reject) => {
      this.done.catch(reject);
      const onData = (chunk: Buffer) => {
        if (this.#settled) return;
        this.#stats.bytesReceived += chunk.length;
        try {
          for (const frame of decoder.push(chunk)) {
            if (!helloSeen) {
              if (frame.type === 'error') throw stateError(frame.code, `migration destination: the source reported: ${frame.message}`);
              if (this.#authenticate(frame)) continue;
              if (frame.type !== 'hello') throw protocolError('ERR_MIGRATION_BAD_FRAME', `expected a hello frame first, got ${frame.type}`);
              helloSeen = true;
              this.#onHello(frame);
              resolve();
            } else this.#onFrame(frame);
            if (this.#settled) return;
          }
          this.#requests.flush();
        } catch (err) {
          this.#fail(err as Error);
        }
      };
      socket.on('data', onData);
      // OpenSSL's own errors carry the library they came from.
      socket.on('error', (err: NodeJS.ErrnoException & { library?: string }) => this.#fail(this.#auth.tls && err.library === 'SSL routines'
        // TLS 1.3 tells a client its certificate was refused only after the handshake.
        ? authError(`the source refused this destination's TLS certificate: ${err.message} (${err.code})`)
        : stateError('ERR_MIGRATION_CONNECTION_LOST', `migration destination: connection to the source failed: ${err.message}`)));
      socket.on('close', () => this.#fail(this.#auth.tls && this.#stats.bytesReceived === 0
        // A TLS source that refuses the client's certificate just closes (TLS 1.3 checks it after the handshake).
        ? authError("the source closed the TLS connection before its first frame: it refused this destination's certificate")
        : stateError('ERR_MIGRATION_CONNECTION_LOST',
        `migration destination: the source closed the connection with ${this.#pageCount - this.#present.count()} of ${this.#pageCount} pages missing`)));
    });
    this.#signal?.addEventListener('abort', this.#onAbort, { once: true });
    return started;
  }

  /**
   * The token handshake, before the hello. Returns true for a frame it
   * consumed; throws when either side fails to prove it holds the token.
   */
  #authenticate(frame: Frame): boolean {
    const token = this.#auth.token;
    if (frame.type === 'challenge') {
      if (!token) throw authError('the source requires a token (options.token)');
      if (this.#challenge) throw authError('the source sent a second challenge');
      this.#challenge = nonce();
      this.#socket.write(encodeAuth(proof(token, 'destination', frame.nonce), this.#challenge));
      return true;
    }
    if (frame.type === 'proof') {
      if (!token || !this.#challenge) throw authError('the source sent a proof nobody asked for');
      if (!proofHolds(token, 'source', this.#challenge, frame.mac)) throw authError('the source failed authentication (wrong token)');
      this.#challenge = undefined;
      this.#authenticated = true;
      return true;
    }
    if (frame.type === 'hello' && token && !this.#authenticated)
      throw authError('the source did not authenticate (it asked for no token, this destination has one)');
    return false;
  }

  #onHello(hello: Extract<Frame, { type: 'hello' }>): void {
    if (hello.version !== PROTOCOL_VERSION)
      throw protocolError('ERR_MIGRATION_VERSION', `the source speaks version ${hello.version}, this destination version ${PROTOCOL_VERSION}`);
    if (hello.pageSize !== this.#pageSize)
      throw protocolError('ERR_MIGRATION_MISMATCH', `the source's page size is ${hello.pageSize}, the memfd's ${this.#pageSize}`);
    const memfdSize = this.#memfd.size;
    if (hello.pageCount * hello.pageSize > memfdSize)
      throw protocolError('ERR_MIGRATION_MISMATCH', `the image (${hello.imageSize} bytes) does not fit the memfd (${memfdSize} bytes)`);
    for (const view of this.#views)
      if (view.firstPage + view.pageCount > hello.pageCount)
        throw protocolError('ERR_MIGRATION_MISMATCH', `a guest view reaches page ${view.firstPage + view.pageCount}, the image has ${hello.pageCount}`);
    this.#pageCount = hello.pageCount;
    this.#stats.pageCount = hello.pageCount;
    this.#requests.reset(hello.pageCount);
    this.#received = new Uint8Array(hello.pageCount);
    this.#started = performance.now();
    if (hello.live) this.#beforeSwitchover = true;
    else this.#startGuest();
    this.#socket.write(encodeCredit(this.#pushWindow));
    if (this.#replaySpec) {
      const pages = loadReplayPages(this.#replaySpec.set, { pageSize: this.#pageSize, memorySize: this.#memfd.size });
      if (pages) {
        this.#replay = new RequestedReplay(pages, hello.pageCount);
        if (this.#replaySpec.start === 'now') this.#startReplay();
      }
    }
    trace('migration destination: %d pages of %d bytes, %d views%s', hello.pageCount, hello.pageSize, this.#views.length, hello.live ? ', live source' : '');
  }

  /** The guest may run here: serve its faults, map what is present, say so. */
  #startGuest(): void {
    this.#beforeSwitchover = false;
    this.#handler.start();
    this.#handlerStarted = true;
    void this.#handler.finished.then((err) => {
      if (err) this.#fail(stateError('ERR_MIGRATION_FAULT_HANDLER', `migration destination: the fault handler stopped: ${err.message}`));
    });
    if (this.#mapReceived && this.#present.count() > 0) this.#resolveRun(0, this.#pageCount);
    this.#resolveResumable();
  }

  /** The switch-over frame: the guest is paused at the source. */
  #onSwitchover(postcopy: boolean, stale: [number, number][]): void {
    if (!this.#beforeSwitchover || this.#stopAndCopy) throw protocolError('ERR_MIGRATION_BAD_FRAME', 'a switch-over frame from a source that is not live, or a second one');
    if (!postcopy) {
      if (stale.length) throw protocolError('ERR_MIGRATION_BAD_FRAME', 'a stop-and-copy switch-over with stale pages');
      this.#stopAndCopy = true;
      return;
    }
    const ps = this.#pageSize;
    for (const [first, count] of stale) {
      if (count === 0 || first + count > this.#pageCount)
        throw protocolError('ERR_MIGRATION_BAD_FRAME', `stale pages ${first}+${count} outside the image's ${this.#pageCount} pages`);
      // Never mapped (nothing is before the switch-over): clearing the bit is enough for the next touch to fetch.
      this.#present.clear(first * ps, count * ps);
      for (let p = first; p < first + count; p++) {
        if (!this.#received[p]) continue;
        this.#received[p] = 0;
        this.#receivedCount--;
        this.#stats.pagesStale++;
      }
    }
    this.#startGuest();
  }

  /** An update batch: pages written at the source since they were sent replace this side's copy. */
  #onUpdate(first: number, count: number, data: Buffer): void {
    if (!this.#beforeSwitchover)
      throw protocolError('ERR_MIGRATION_BAD_FRAME', `update of pages ${first}+${count} after the guest may run here: a page it may have seen cannot be replaced`);
    const ps = this.#pageSize;
    this.#memfd.write(first * ps, data);
    this.#present.mark(first * ps, count * ps);
    for (let p = first; p < first + count; p++) {
      if (this.#received[p]) this.#stats.pagesUpdated++;
      else {
        this.#received[p] = 1;
        this.#receivedCount++;
        this.#stats.pagesPushed++;
      }
    }
  }

  #onFrame(frame: Frame): void {
    switch (frame.type) {
      case 'batch':
        if (frame.firstPage + frame.pageCount > this.#pageCount)
          throw protocolError('ERR_MIGRATION_BAD_FRAME', `batch of pages ${frame.firstPage}+${frame.pageCount} outside the image's ${this.#pageCount} pages`);
        if (frame.update) this.#onUpdate(frame.firstPage, frame.pageCount, frame.data);
        else this.#onBatch(frame.firstPage, frame.pageCount, frame.data, frame.demand);
        if (!frame.demand) this.#requests.owePushCredit();
        return;
      case 'round':
        if (!this.#beforeSwitchover || this.#stopAndCopy) throw protocolError('ERR_MIGRATION_BAD_FRAME', `round ${frame.round} frame from a source that is not live, or after the switch-over`);
        this.#stats.rounds = frame.round + 1;
        return;
      case 'switchover':
        this.#onSwitchover(frame.postcopy, frame.stale);
        return;
      case 'done':
        if (this.#receivedCount !== this.#pageCount)
          throw protocolError('ERR_MIGRATION_INCOMPLETE', `the source says done after ${frame.pagesSent} pages, but ${this.#pageCount - this.#receivedCount} pages never arrived`);
        if (this.#beforeSwitchover) {
          if (!this.#stopAndCopy) throw protocolError('ERR_MIGRATION_BAD_FRAME', 'a live source said done without a switch-over: its guest may still be running');
          this.#startGuest();
        }
        // Pages lost and asked for again are still on their way: done when they are in.
        if (this.#pending.size > 0) this.#doneSeen = true;
        else this.#complete();
        return;
      case 'error':
        throw stateError(frame.code, `migration destination: the source reported: ${frame.message}`);
      default:
        throw protocolError('ERR_MIGRATION_BAD_FRAME', `a destination does not expect a ${frame.type} frame`);
    }
  }

  /** The fault handler's fetch policy: ask for the page, settle when it is in place (or the handler gives up). */
  #fetch(fault: Fault, context: FetchContext): Promise<void> | void {
    if (this.#failure) throw this.#failure;
    context.signal.throwIfAborted();
    const page = fault.page;
    if (this.#present.has(page)) return;
    this.#stats.demandFaults++;
    if (this.#replay) {
      this.#startReplay();
      this.#replay.noteDemand(page);
    }
    const waiting = new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#pending.delete(page);
        reject(context.signal.reason);
      };
      context.signal.addEventListener('abort', onAbort, { once: true });
      this.#pending.set(page, {
        since: performance.now(),
        resolve: () => {
          context.signal.removeEventListener('abort', onAbort);
          resolve();
        },
        reject: (err) => {
          context.signal.removeEventListener('abort', onAbort);
          reject(err);
        },
      });
    });
    // Received once and lost since (MADV_REMOVE): the source must send it again.
    if (this.#received[page]) this.#requests.refetch(page);
    else this.#requests.demand(page, this.#prefetch, (p) => this.#present.has(p));
    return waiting;
  }

  #onBatch(first: number, count: number, data: Buffer, demand: boolean): void {
    const ps = this.#pageSize;
    const end = first + count;
    let p = first;
    while (p < end) {
      if (this.#present.has(p)) {
        this.#stats.pagesIgnored++;
        p++;
        continue;
      }
      let q = p;
      while (q < end && !this.#present.has(q)) q++;
      this.#memfd.write(p * ps, data.subarray((p - first) * ps, (q - first) * ps));
      // Content first, then the bit: the engine maps whatever is marked.
      this.#present.mark(p * ps, (q - p) * ps);
      for (let r = p; r < q; r++) {
        this.#requests.arrived(r);
        if (!this.#received[r]) {
          this.#received[r] = 1;
          this.#receivedCount++;
        }
      }
      if (demand) this.#stats.pagesOnDemand += q - p;
      else this.#stats.pagesPushed += q - p;
      if (this.#replay) for (let r = p; r < q; r++) this.#replay.arrived(r);
      this.#resolveRun(p, q);
      p = q;
    }
  }

  /** Maps newly present pages [p, q) and wakes whoever waits on them. */
  #resolveRun(p: number, q: number): void {
    const ps = this.#pageSize;
    if (this.#beforeSwitchover) return;
    if (this.#mapReceived) {
      const r = this.#handler.mapPresent(p * ps, (q - p) * ps);
      if (r === ESRCH) throw stateError('ERR_MIGRATION_GUEST_EXITED', 'migration destination: the guest process exited');
    }
    if (this.#pending.size === 0) return;
    const now = performance.now();
    for (let page = p; page < q; page++) {
      const waiting = this.#pending.get(page);
      if (!waiting) continue;
      this.#pending.delete(page);
      this.#stats.faultLatencyMs.push(now - waiting.since);
      waiting.resolve();
    }
    if (this.#doneSeen && this.#pending.size === 0) this.#complete();
  }

  /** Asks the source for the set's runs, first touch first, behind any demand. */
  #startReplay(): void {
    this.#requests.prefetchRuns(this.#replay!.start((page) => this.#present.has(page) || this.#requests.pending(page)));
  }

  #refreshReplayStats(): void {
    if (this.#replay) this.#stats.workingSet = { replay: this.#replay.stats() };
  }

  #complete(): void {
    if (this.#settled) return;
    this.#stats.durationMs = performance.now() - this.#started;
    this.#settle();
    this.#socket.end();
    trace('migration destination: done, %d on demand, %d pushed', this.#stats.pagesOnDemand, this.#stats.pagesPushed);
    void (async () => {
      // Stopping the handler unregisters the views: later touches are plain page faults.
      if (this.#unregisterWhenDone) await this.#handler.stop();
      const handlerStats = this.#handler.stats();
      this.#stats.faults = handlerStats.faults;
      this.#stats.handler = handlerStats;
      const saveError = this.#saveWorkingSet();
      if (saveError) this.#reject(saveError);
      else this.#resolve(this.#stats);
    })();
  }

  #fail(err: Error): void {
    if (this.#settled) return;
    this.#failure = err;
    this.#stats.durationMs = this.#started ? performance.now() - this.#started : 0;
    this.#settle();
    if (!this.#socket.destroyed) this.#socket.end(encodeError((err as { code?: string }).code ?? 'ERR_MIGRATION_DESTINATION', err.message));
    this.#socket.destroy();
    void (async () => {
      const problems: string[] = [];
      // Before the hello nothing was received: every page of every view is absent.
      if (this.#policy === 'poison') {
        const r = this.#handler.poisonAbsent();
        if (r < 0 && r !== ESRCH) problems.push(`poisoning missing pages failed (errno ${-r}); they will read as zeros`);
      }
      // Faulters waiting on a fetch: the handler applies the same policy to their pages.
      for (const waiting of this.#pending.values()) waiting.reject(err);
      this.#pending.clear();
      if (this.#handlerStarted) await this.#handler.stop();
      else {
        for (const view of this.#views) {
          try {
            if (!this.#uffd.closed) this.#uffd.unregister({ address: view.address, length: view.length });
          } catch (e) {
            if ((e as { errno?: number }).errno !== ESRCH) problems.push(`unregistering a guest view failed: ${(e as Error).message}`);
          }
        }
      }
      const saveError = this.#saveWorkingSet();
      if (saveError) problems.push(`the working set was not written: ${saveError.message}`);
      if (problems.length) err.message += `; ${problems.join('; ')}`;
      const handlerStats = this.#handler.stats();
      this.#stats.faults = handlerStats.faults;
      this.#stats.handler = handlerStats;
      Object.assign(err, { policy: this.#policy, pagesMissing: this.#pageCount - this.#present.count() });
      trace('migration destination failed: %s', err.message);
      this.#reject(err);
    })();
  }

  /** Writes the recorded working set; returns the error instead of throwing it. */
  #saveWorkingSet(): Error | undefined {
    const recorder = this.#recorder;
    if (!recorder || this.#recordFile === undefined) return undefined;
    recorder.stop();
    try {
      recorder.save(this.#recordFile);
      trace('migration destination: working set of %d pages written to %s', recorder.size, this.#recordFile);
      return undefined;
    } catch (err) {
      return err as Error;
    } finally {
      recorder.close();
    }
  }

  #settle(): void {
    this.#settled = true;
    this.#replay?.stop();
    this.#refreshReplayStats();
    this.#signal?.removeEventListener('abort', this.#onAbort);
  }
}

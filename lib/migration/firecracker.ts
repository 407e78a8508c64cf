// A page server for Firecracker's userfaultfd snapshot restore. Firecracker
// connects to a Unix socket and sends one message: a JSON array of guest
// memory regions, with the uffd (and, in the guest_memfd flavour, the memory
// fd and a userfault bitmap memfd) attached by SCM_RIGHTS.
//
// One fd: guest memory is anonymous, registered MISSING. A fault is served
// with UFFDIO_COPY of the snapshot bytes; a page the balloon removed (REMOVE
// event) is served with zeros (ZEROPAGE, or a COPY of zeros on hugetlb where
// ZEROPAGE does not exist).
// Three fds: guest memory is the memory fd, registered MINOR. A page is
// populated by writing it into the memory fd (through a mapping on hugetlb,
// which has no pwrite), clearing its bit in the bitmap, then CONTINUE for a
// uffd fault, or a JSON reply for a vCPU fault request sent on the socket.
//
// Firecracker waits forever for a page server that stopped answering, so
// every failure is loud: the session's `finished` rejects, and by default the
// peer is killed (SIGKILL, pid from SO_PEERCRED) rather than left hanging or
// fed zeros.
import { trace } from '../debug';
import { FaultEngine } from '../engine';
import { NEGATIVE_ERRNO } from '../errno';
import { PAGEFAULT_FLAG } from '../constants';
import { argValueError, stateError } from '../errors';
import { FdServer, FdSocket } from '../fd-socket';
import { Mapping, Memfd, PAGE_SIZE } from '../memfd';
import { native } from '../native';
import { PresentPages } from '../present-pages';
import { Userfaultfd } from '../userfaultfd';
import * as v from '../validate';
import { SessionWorkingSetOptions, WorkingSetRecordTarget, recordTarget, recorderFor } from '../working-set/options';
import type { WorkingSetRecorder } from '../working-set/recorder';
import { ReplayStats, Replayer, SessionReplay, loadReplayPages, sessionReplay, warnIgnored } from '../working-set/replay';
import { FirecrackerRegion, jsonEnd, parseFirecrackerRegions } from './firecracker-protocol';
import { ImageSource, PageImage, openImage } from './image';

/** What to do when serving fails. */
export type FirecrackerFailureAction = 'kill-peer' | 'close';

/** Options of {@link FirecrackerPageServer.listen}. */
export interface FirecrackerServerOptions {
  /** The snapshot memory file (a path, a Buffer or a Memfd). */
  snapshot: ImageSource;
  /**
   * On a serving failure: `'kill-peer'` (default) sends SIGKILL to the
   * Firecracker process (it would otherwise wait forever, or run on pages it
   * never got), `'close'` only closes the uffd and socket.
   */
  onFailure?: FirecrackerFailureAction;
  /**
   * Working sets (docs/working-set.md). `record`: each session records the
   * snapshot pages Firecracker faults on, first touch first (page index =
   * snapshot offset / the smallest region page size; region = index in the
   * handshake's region array), and writes them to this file when it ends.
   * The directory must exist.
   * `replay`: each session makes the pages of this recorded set present
   * ahead of their faults, first touch first, in contiguous runs: one
   * write into the memory fd and one CONTINUE per run (three fds), or one
   * COPY per run and one wake (one fd). Faults go first. A set that cannot
   * be read or does not match the session's memory warns and is ignored.
   */
  workingSet?: SessionWorkingSetOptions;
}

/** Counters of one {@link FirecrackerSession}. */
export interface FirecrackerStats {
  faults: number;
  /** Pages filled from the snapshot (COPY, or written into the memory fd). */
  pagesFromSnapshot: number;
  /** Pages served as zeros because the balloon had removed them. */
  zeroPages: number;
  removeEvents: number;
  /** Three-fd mode: vCPU fault requests answered on the socket. */
  faultRequests: number;
  /** Faults whose page was already there (EEXIST): woken. */
  alreadyMapped: number;
  /** With `workingSet.replay`: the replay's counters (its pages are also in `pagesFromSnapshot`). */
  workingSet?: { replay: ReplayStats };
}

const { EAGAIN, ENOENT } = NEGATIVE_ERRNO;
const KIND = native.engineLayout.kinds;
const STAT = native.engineLayout.stats;
/** A Unix socket where Firecracker (configured with a `Uffd` memory backend) connects. */
export class FirecrackerPageServer implements Disposable {
  readonly path: string;
  readonly #server: FdServer;
  readonly #snapshot: ImageSource;
  readonly #onFailure: FirecrackerFailureAction;
  readonly #record?: WorkingSetRecordTarget;
  readonly #replay?: SessionReplay;

  private constructor(server: FdServer, snapshot: ImageSource, onFailure: FirecrackerFailureAction, record?: WorkingSetRecordTarget, replay?: SessionReplay) {
    this.#replay = replay;
    this.#server = server;
    this.path = server.path;
    this.#snapshot = snapshot;
    this.#onFailure = onFailure;
    this.#record = record;
  }

  /** Listens at `path` (the `backend_path` given to Firecracker; must not exist yet). */
  static listen(path: string, options: FirecrackerServerOptions): FirecrackerPageServer {
    const opts = v.options<FirecrackerServerOptions>('options', options);
    if (opts.snapshot === undefined) throw argValueError('options.snapshot', 'is required', opts.snapshot);
    openImage(opts.snapshot).close();
    const onFailure = v.oneOf('options.onFailure', opts.onFailure, ['kill-peer', 'close'] as const, 'kill-peer');
    const ws = v.options<SessionWorkingSetOptions>('options.workingSet', opts.workingSet);
    const record = recordTarget('options.workingSet.record', ws.record);
    const replay = sessionReplay('options.workingSet', ws);
    return new FirecrackerPageServer(FdServer.listen(path), opts.snapshot, onFailure, record, replay);
  }

  /** Accepts the next Firecracker connection, reads its handshake and starts serving it. */
  async accept(options?: { signal?: AbortSignal }): Promise<FirecrackerSession> {
    const socket = await this.#server.accept(options);
    return FirecrackerSession.start(socket, openImage(this.#snapshot), this.#onFailure, options?.signal, this.#record, this.#replay);
  }

  close(): void {
    this.#server.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** One Firecracker process being served. */
export class FirecrackerSession implements Disposable {
  /** Firecracker's pid (SO_PEERCRED). */
  readonly pid: number;
  readonly regions: readonly FirecrackerRegion[];
  /** Firecracker's memory backend: `'uffd'`: one fd, anonymous memory (MISSING). `'guest_memfd'`: three fds, memory fd + userfault bitmap (MINOR). (Was `mode`.) */
  readonly backend: 'uffd' | 'guest_memfd';
  /** Resolves when Firecracker goes away (socket closed or its process exited); rejects when serving failed. */
  readonly finished: Promise<FirecrackerStats>;
  readonly #counts = { pagesFromSnapshot: 0, zeroPages: 0, removeEvents: 0, faultRequests: 0 };

  readonly #socket: FdSocket;
  readonly #uffd: Userfaultfd;
  readonly #image: PageImage;
  readonly #onFailure: FirecrackerFailureAction;
  /** The smallest region page size: the granularity of the per-page state below. */
  readonly #pageSize: number;
  /** Per page of the snapshot (offset / #pageSize): 1 when the balloon removed it (its next fault gets zeros). */
  readonly #removed: Uint8Array;
  /** Which snapshot pages are in guest memory; the engine maps those without asking. */
  readonly #present: PresentPages;
  readonly #engine: FaultEngine;
  readonly #memory?: Memfd;
  readonly #bitmap?: Uint8Array;
  #bitmapView?: Mapping;
  #settled = false;
  #resolve!: (stats: FirecrackerStats) => void;
  #reject!: (err: Error) => void;
  readonly #zeros = new Map<number, Uint8Array>();
  #requestText = '';
  readonly #abort = new AbortController();
  readonly #recordFile?: string;
  readonly #recorder?: WorkingSetRecorder;
  #replayer?: Replayer;
  #replayStartsNow = false;

  private constructor(socket: FdSocket, pid: number, regions: FirecrackerRegion[], uffd: Userfaultfd, image: PageImage, onFailure: FirecrackerFailureAction, memory?: Memfd, bitmapView?: Mapping, record?: WorkingSetRecordTarget) {
    this.#socket = socket;
    this.pid = pid;
    this.regions = regions;
    this.#uffd = uffd;
    this.#image = image;
    this.#onFailure = onFailure;
    this.backend = memory ? 'guest_memfd' : 'uffd';
    const pageSize = Math.min(...regions.map((r) => r.pageSize));
    this.#pageSize = pageSize;
    const pages = Math.max(...regions.map((r) => (r.offset + r.size) / pageSize));
    this.#removed = new Uint8Array(pages);
    this.#present = new PresentPages(pages * pageSize, pageSize);
    if (record) {
      this.#recordFile = record.file;
      this.#recorder = recorderFor(record, pageSize, pages * pageSize, regions.length);
    }
    // Anonymous memory (one fd) is filled by COPY of snapshot bytes; guest_memfd
    // memory (three fds) is written, then mapped by CONTINUE.
    this.#engine = new FaultEngine(uffd, { backingFd: memory ? memory.fd : -1, pageSize, fill: memory ? 'continue' : 'copy', mapAhead: 0, present: this.#present });
    for (const r of regions) this.#engine.addRegion({ address: r.baseHostVirtAddr, length: r.size, offset: r.offset, pageSize: r.pageSize });
    this.#memory = memory;
    this.#bitmapView = bitmapView;
    this.#bitmap = bitmapView ? new Uint8Array(bitmapView.buffer) : undefined;
    this.finished = new Promise<FirecrackerStats>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.finished.catch(() => {});
  }

  /** @internal Reads the handshake from a connected socket and starts serving. */
  static async start(socket: FdSocket, image: PageImage, onFailure: FirecrackerFailureAction, signal?: AbortSignal, record?: WorkingSetRecordTarget, replay?: SessionReplay): Promise<FirecrackerSession> {
    const pid = socket.peerCredentials().pid;
    // Every descriptor received is in exactly one place until the session
    // owns it: `fds` (raw) or one of the objects below. A throw anywhere
    // releases them all; the uffd above all, because Firecracker's vCPUs
    // sleep on it until its last descriptor closes.
    const fds: number[] = [];
    let uffd: Userfaultfd | undefined;
    let memory: Memfd | undefined;
    let bitmapFd: Memfd | undefined;
    let session: FirecrackerSession | undefined;
    let text = '';
    let rest = '';
    try {
      // One sendmsg, but a stream socket may deliver it in pieces: read until
      // the top-level JSON array closes.
      for (;;) {
        const msg = await socket.receive({ maxBytes: 1 << 20, signal });
        fds.push(...msg.fds);
        if (msg.data.length === 0) throw stateError('ERR_FIRECRACKER_HANDSHAKE', `Firecracker (pid ${pid}) closed the socket before sending its regions`);
        text += msg.data.toString('utf8');
        const end = jsonEnd(text);
        if (end < 0) throw stateError('ERR_FIRECRACKER_HANDSHAKE', `the region message is not a JSON array: ${JSON.stringify(text.slice(0, 80))}`);
        if (end > 0) {
          rest = text.slice(end);
          text = text.slice(0, end);
          break;
        }
      }
      const regions = parseFirecrackerRegions(text);
      if (fds.length !== 1 && fds.length !== 3)
        throw stateError('ERR_FIRECRACKER_HANDSHAKE', `expected 1 fd (uffd) or 3 fds (uffd, memory, userfault bitmap), got ${fds.length}`);
      const threeFds = fds.length === 3;
      uffd = Userfaultfd.fromFd(fds[0]);
      fds.shift();
      let bitmapView: Mapping | undefined;
      if (threeFds) {
        const pageSize = regions[0].pageSize;
        if (regions.some((r) => r.pageSize !== pageSize)) throw stateError('ERR_FIRECRACKER_HANDSHAKE', 'three-fd mode needs one page size for every region');
        memory = Memfd.fromFd(fds[0], { owned: true, hugePageSize: pageSize > PAGE_SIZE ? pageSize : undefined });
        fds.shift();
        bitmapFd = Memfd.fromFd(fds[0], { owned: true });
        fds.shift();
        const pages = Math.max(...regions.map((r) => (r.offset + r.size) / pageSize));
        if (bitmapFd.size * 8 < pages) throw stateError('ERR_FIRECRACKER_HANDSHAKE', `the userfault bitmap (${bitmapFd.size} bytes) has fewer bits than the ${pages} pages`);
        bitmapView = bitmapFd.map();
      }
      session = new FirecrackerSession(socket, pid, regions, uffd, image, onFailure, memory, bitmapView, record);
      if (replay) session.#prepareReplay(replay);
      session.#start(rest);
      trace('firecracker pid %d: %d regions, %s backend', pid, regions.length, session.backend);
      return session;
    } catch (err) {
      // Past construction the session owns everything, a started poller and
      // the claimed reader included; before it, each piece is closed here.
      const release = (fn: () => void): void => {
        try {
          fn();
        } catch {
          // Closing what is left matters more than a second error.
        }
      };
      if (session) release(() => session!.#teardown());
      else {
        release(() => bitmapFd?.close());
        release(() => memory?.close());
        release(() => uffd?.close());
        release(() => socket.close());
        release(() => image.close());
      }
      for (const fd of fds) native.closeFd(fd);
      if (onFailure === 'kill-peer') killPeer(pid);
      throw err;
    }
  }

  /** Stops serving and closes the uffd and the socket (Firecracker's faulting threads wake up). */
  close(): void {
    this.#finish();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Counters so far. */
  get stats(): FirecrackerStats {
    const engine = this.#engine.stats();
    const stats: FirecrackerStats = { faults: engine[STAT.faults], alreadyMapped: engine[STAT.alreadyPresent], ...this.#counts };
    if (this.#replayer) stats.workingSet = { replay: this.#replayer.stats() };
    return stats;
  }

  /** @internal Resolves when the working-set replay is done or stopped (at once without one). */
  get replayFinished(): Promise<void> {
    return this.#replayer?.finished ?? Promise.resolve();
  }

  #prepareReplay(replay: SessionReplay): void {
    const ps = this.#pageSize;
    if (this.regions.some((r) => r.pageSize !== ps)) {
      warnIgnored(typeof replay.set === 'string' ? replay.set : '(given)', 'the regions mix page sizes; a set replays over one page size');
      return;
    }
    const pages = loadReplayPages(replay.set, { pageSize: ps, memorySize: this.#present.pageCount * ps });
    if (!pages) return;
    this.#replayStartsNow = replay.start === 'now';
    this.#replayer = new Replayer(pages, this.#present.pageCount, {
      // A page the balloon took stays zeros until the guest touches it.
      taken: (page) => this.#present.has(page) || this.#removed[page] === 1 || !this.regions.some((r) => page * ps >= r.offset && page * ps < r.offset + r.size),
      fill: (first, count) => this.#prefetchRun(first, count),
      ...(!this.#memory && this.#image.memory ? { fillBatch: (runs: Uint32Array) => Promise.resolve(this.#copyRuns(runs, this.#image.memory!)) } : {}),
    });
    // One fd: runs are copied without a wake each; whoever faulted on one
    // meanwhile is woken when its fault is read, and all at once here.
    if (!this.#memory) {
      void this.#replayer.finished.then(() => {
        if (this.#settled) return;
        for (const r of this.regions) this.#engine.wake(r.baseHostVirtAddr, r.size);
      });
    }
  }

  /**
   * One fd, the snapshot in memory: a batch of runs copied in one native
   * call (the runs inside the snapshot; a run past its end goes alone, its
   * tail read as zeros).
   */
  #copyRuns(runs: Uint32Array, memory: Uint8Array): Float64Array {
    const results = new Float64Array(runs.length / 2);
    if (this.#settled) return results;
    const ps = this.#pageSize;
    const inside: number[] = [];
    const at: number[] = [];
    for (let i = 0; i < runs.length; i += 2) {
      if ((runs[i] + runs[i + 1]) * ps <= memory.byteLength) {
        inside.push(runs[i], runs[i + 1]);
        at.push(i / 2);
      } else results[i / 2] = this.#prefetchRun(runs[i], runs[i + 1]);
    }
    if (inside.length === 0) return results;
    const copied = this.#engine.copyRuns(memory, Uint32Array.from(inside));
    copied.forEach((r, k) => {
      if (r < 0) trace('firecracker pid %d: copying prefetched run %d+%d: errno %d (left to fault)', this.pid, inside[2 * k], inside[2 * k + 1], -r);
      const filled = r > 0 ? r : 0;
      this.#counts.pagesFromSnapshot += filled;
      results[at[k]] = filled;
    });
    return results;
  }

  /**
   * Makes snapshot pages [first, first + count) guest memory ahead of their
   * faults: three fds, one write into the memory fd (bitmap bits cleared
   * after the content is in) and one CONTINUE per view; one fd, one COPY
   * (DONTWAKE) per view, and one wake when the replay ends.
   */
  #prefetchRun(first: number, count: number): number {
    if (this.#settled) return 0;
    const ps = this.#pageSize;
    const offset = first * ps;
    const bytes = this.#image.peek(offset, count * ps);
    let filled: number;
    if (this.#memory) {
      this.#memory.write(offset, bytes);
      const bitmap = this.#bitmap!;
      for (let p = first; p < first + count; p++) bitmap[p >> 3] &= ~(1 << (p & 7));
      this.#present.mark(offset, count * ps);
      const r = this.#engine.mapPresent(offset, count * ps);
      if (r < 0) trace('firecracker pid %d: mapping prefetched run %d+%d: errno %d (left to fault)', this.pid, first, count, -r);
      filled = count;
    } else {
      // Pages a fault filled meanwhile are skipped (EEXIST); an unread event leaves the rest to their faults.
      const r = this.#engine.copyRun(offset, bytes);
      filled = r > 0 ? r : 0;
      if (r < 0) trace('firecracker pid %d: copying prefetched run %d+%d: errno %d (left to fault)', this.pid, first, count, -r);
    }
    this.#counts.pagesFromSnapshot += filled;
    return filled;
  }

  #start(rest: string): void {
    this.#engine.start('event-loop', {
      fault: (address, flags, tid, time, page, pageSize) => this.#serve(address, flags, tid, time, page, pageSize),
      event: (kind, a, b) => this.#onEvent(kind, a, b),
      failed: (error) => this.#fail(error),
    }, 'FirecrackerSession');
    if (this.#replayStartsNow) this.#replayer?.start();
    if (rest) this.#onRequestText(rest);
    void this.#readSocket();
  }

  async #readSocket(): Promise<void> {
    try {
      for (;;) {
        const msg = await this.#socket.receive({ signal: this.#abort.signal });
        for (const fd of msg.fds) native.closeFd(fd);
        if (msg.data.length === 0) return this.#finish();
        if (!this.#memory) throw stateError('ERR_FIRECRACKER_PROTOCOL', `Firecracker sent ${msg.data.length} unexpected bytes after the handshake in one-fd mode`);
        this.#onRequestText(msg.data.toString('utf8'));
      }
    } catch (err) {
      if (!this.#settled) this.#fail(err as Error);
    }
  }

  /** Three-fd mode: JSON fault requests, back to back on the stream. */
  #onRequestText(chunk: string): void {
    this.#requestText += chunk;
    for (;;) {
      const text = this.#requestText.trimStart();
      const end = jsonEnd(text);
      if (end < 0) throw stateError('ERR_FIRECRACKER_PROTOCOL', `expected a JSON fault request, got ${JSON.stringify(text.slice(0, 80))}`);
      if (end === 0) {
        this.#requestText = text;
        if (text.length > 1 << 16) throw stateError('ERR_FIRECRACKER_PROTOCOL', 'a fault request longer than 64 KiB');
        return;
      }
      this.#requestText = text.slice(end);
      let req: { vcpu?: unknown; offset?: unknown; flags?: unknown; token?: unknown };
      try {
        req = JSON.parse(text.slice(0, end));
      } catch (err) {
        throw stateError('ERR_FIRECRACKER_PROTOCOL', `bad fault request ${text.slice(0, end)}: ${(err as Error).message}`);
      }
      this.#onFaultRequest(req);
    }
  }

  #onFaultRequest(req: { vcpu?: unknown; offset?: unknown; flags?: unknown; token?: unknown }): void {
    if (typeof req.offset !== 'number' || !Number.isSafeInteger(req.offset) || req.offset < 0)
      throw stateError('ERR_FIRECRACKER_PROTOCOL', `fault request without a valid offset: ${JSON.stringify(req)}`);
    const pageSize = this.#pageSize;
    const offset = req.offset - (req.offset % pageSize);
    if (!this.regions.some((r) => offset >= r.offset && offset < r.offset + r.size))
      throw stateError('ERR_FIRECRACKER_PROTOCOL', `fault request for offset ${req.offset}, outside every region`);
    this.#record(offset / pageSize, false, -1);
    if (this.#replayer && !this.#present.has(offset / pageSize)) {
      this.#replayer.start();
      this.#replayer.noteDemand(offset / pageSize);
    }
    const zero = this.#populate(offset / pageSize);
    this.#counts.faultRequests++;
    const reply = { vcpu: req.vcpu ?? null, offset, len: pageSize, flags: req.flags ?? 0, token: req.token ?? null, zero };
    this.#socket.send(JSON.stringify(reply));
  }

  /** Three-fd mode: makes snapshot page `page` present in the memory fd. Returns true when it was served as zeros. */
  #populate(page: number): boolean {
    const ps = this.#pageSize;
    const memOffset = page * ps;
    const bitmap = this.#bitmap!;
    const unpopulated = (bitmap[page >> 3] & (1 << (page & 7))) !== 0;
    const zero = this.#removed[page] === 1;
    if (zero) {
      this.#memory!.write(memOffset, this.#zeroPage(ps));
      this.#removed[page] = 0;
      this.#counts.zeroPages++;
    } else if (unpopulated) {
      this.#memory!.write(memOffset, this.#image.peek(memOffset, ps));
      this.#counts.pagesFromSnapshot++;
    }
    // The content is in place before either bit says so.
    if (unpopulated || zero) bitmap[page >> 3] &= ~(1 << (page & 7));
    this.#present.markPage(page);
    return zero;
  }

  /** A fault on a page not in guest memory yet: snapshot bytes, or zeros where the balloon took the page. */
  #serve(address: number, flags: number, tid: number, time: number, page: number, ps: number): void {
    if (this.#settled) return;
    this.#record(page, (flags & PAGEFAULT_FLAG.write) !== 0, this.#engine.epochMs + time / 1e6);
    if (this.#replayer) {
      this.#replayer.start();
      this.#replayer.noteDemand(page);
    }
    let result: number;
    let zero = false;
    if (this.#memory) {
      zero = this.#populate(page);
      result = this.#engine.serve(address, flags, tid, time);
    } else {
      zero = this.#removed[page] === 1;
      result = zero ? this.#engine.zero(address, flags, tid, time) : this.#engine.copy(address, flags, tid, time, this.#image.peek(page * this.#pageSize, ps));
      if (result >= 0) {
        this.#removed.fill(0, page, page + ps / this.#pageSize);
        if (zero) this.#counts.zeroPages++;
        else this.#counts.pagesFromSnapshot++;
      }
    }
    // EAGAIN: an event is unread, the engine retries after it; ENOENT: outside
    // every region now (unmapped), woken by the engine.
    if (result >= 0 || result === EAGAIN || result === ENOENT) return;
    const ioctl = this.#memory ? 'UFFDIO_CONTINUE' : zero ? 'UFFDIO_ZEROPAGE' : 'UFFDIO_COPY';
    this.#fail(this.#engine.ioctlError(result, ioctl, address, `serving Firecracker pid ${this.pid}`));
  }

  /** A first touch for the working set: the region is looked up only for a page not recorded yet. */
  #record(page: number, write: boolean, atMs: number): void {
    const recorder = this.#recorder;
    if (!recorder?.recording || recorder.has(page)) return;
    const offset = page * this.#pageSize;
    const region = this.regions.findIndex((r) => offset >= r.offset && offset < r.offset + r.size);
    recorder.recordFault(page, write, region < 0 ? 0 : region, atMs);
  }

  /** Writes the recorded working set; returns the error instead of throwing it. */
  #saveWorkingSet(): Error | undefined {
    const recorder = this.#recorder;
    if (!recorder || this.#recordFile === undefined) return undefined;
    try {
      recorder.save(this.#recordFile);
      trace('firecracker pid %d: working set of %d pages written to %s', this.pid, recorder.size, this.#recordFile);
      return undefined;
    } catch (err) {
      return err as Error;
    } finally {
      recorder.close();
    }
  }

  #onEvent(kind: number, a: number, b: number): void {
    if (kind === KIND.remove) {
      this.#counts.removeEvents++;
      return;
    }
    if (kind !== KIND.pagesRemoved) return;
    // The balloon took these pages: their next access gets zeros.
    const ps = this.#pageSize;
    const first = Math.floor(a / ps);
    const last = Math.ceil((a + b) / ps);
    this.#removed.fill(1, first, last);
    if (this.#bitmap) {
      // The page cache still holds the old bytes: send vCPU accesses back
      // here, and make the next uffd fault come to the policy too.
      this.#present.clear(first * ps, (last - first) * ps);
      for (let p = first; p < last; p++) this.#bitmap[p >> 3] |= 1 << (p & 7);
    }
  }

  #zeroPage(size: number): Uint8Array {
    let zeros = this.#zeros.get(size);
    if (!zeros) this.#zeros.set(size, (zeros = new Uint8Array(size)));
    return zeros;
  }

  #teardown(): void {
    this.#settled = true;
    this.#replayer?.stop();
    this.#recorder?.stop();
    // Stops reading before the uffd is closed (closing it wakes every vCPU).
    this.#engine.stop();
    this.#abort.abort();
    this.#uffd.close();
    this.#socket.close();
    this.#bitmapView?.memfd.close();
    this.#memory?.close();
    this.#image.close();
  }

  #finish(): void {
    if (this.#settled) return;
    this.#teardown();
    trace('firecracker pid %d: session over', this.pid);
    const saveError = this.#saveWorkingSet();
    if (saveError) this.#reject(saveError);
    else this.#resolve(this.stats);
  }

  #fail(err: Error): void {
    if (this.#settled) return;
    if (this.#onFailure === 'kill-peer') {
      killPeer(this.pid);
      err.message += ` (Firecracker pid ${this.pid} was killed: it cannot run without its pages)`;
    }
    this.#teardown();
    const saveError = this.#saveWorkingSet();
    if (saveError) err.message += `; the working set was not written: ${saveError.message}`;
    this.#reject(err);
  }
}

function killPeer(pid: number): void {
  try {
    if (pid > 0 && pid !== process.pid) process.kill(pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}

// The page source of a migration: serves a memory image over TCP, demand
// requests first, everything else pushed in the background in large
// batches. A live source serves a memfd whose guest keeps running: pre-copy
// rounds send what the guest wrote meanwhile (live.ts decides when to stop),
// then the guest is paused and the rest goes by stop-and-copy or post-copy. Each page is sent at most once per connection: a page the
// destination asks for after it was pushed is already on the wire ahead of
// the request's answer (TCP keeps order), so it is not sent twice, unless
// the destination asks again with a refetch request (it lost the page).
import { once } from 'node:events';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';

import { trace } from '../debug';
import { argValueError, stateError } from '../errors';
import * as v from '../validate';
import { Memfd } from '../memfd';
import { DEFAULT_PAGE_SIZE, ImageSource, PageImage, openImage } from './image';
import { CheckedLive, LiveSourceOptions, LiveStats, LiveTracker, checkLive, pauseGuest } from './live';
import { CheckedAuth, MigrationAuth, authError, checkAuth, createServer, nonce, proof, proofHolds } from './auth';
import { Frame, FrameDecoder, PRIORITY, encodeBatch, encodeChallenge, encodeDone, encodeError, encodeHello, encodeProof, encodeRound, encodeSwitchover, protocolError } from './protocol';


/** Options of {@link servePages} and {@link MigrationSource.listen}. */
export interface SourceOptions extends MigrationAuth {
  /**
   * With a `token`: how long a destination has to authenticate before it is
   * dropped, in milliseconds. Default 10000.
   */
  authTimeoutMs?: number;
  /** Page size of the image, as the destination maps it. Default: the system page size. */
  pageSize?: number;
  /** Pages per background batch (each batch is one frame with one CRC). Default 64 (256 KiB of 4 KiB pages). */
  batchPages?: number;
  /** Push pages nobody asked for (post-copy). false serves demand only. Default true. */
  push?: boolean;
  /** Caps the background push at this many bytes per second (demand answers are never held back). Default: no cap. */
  pushBytesPerSecond?: number;
  /** Stops serving: the connection is closed with an error frame. */
  signal?: AbortSignal;
  /**
   * Serve a running guest: the image must be the guest's Memfd. Pre-copy
   * rounds, then a pause and stop-and-copy or post-copy (see
   * {@link LiveSourceOptions}). A live source serves one destination.
   */
  live?: LiveSourceOptions;
}

/** What one served connection did. */
export interface SourceStats {
  pageCount: number;
  /** Pages sent in answer to demand (or prefetch) requests. */
  pagesOnDemand: number;
  /** Pages pushed in the background. */
  pagesPushed: number;
  requestsReceived: number;
  bytesSent: number;
  /** Milliseconds from the connection to its end (the whole migration). */
  durationMs: number;
  /** With `live`: rounds, pages per round, downtime. */
  live?: LiveStats;
}

interface Options {
  auth: CheckedAuth;
  authTimeoutMs: number;
  pageSize: number;
  batchPages: number;
  push: boolean;
  pushBytesPerSecond: number;
  signal?: AbortSignal;
  live?: CheckedLive;
}

function readOptions(options: SourceOptions | undefined): Options {
  const opts = v.options<SourceOptions>('options', options);
  const pageSize = v.integer('options.pageSize', opts.pageSize ?? DEFAULT_PAGE_SIZE, 512, 1 << 30);
  if ((pageSize & (pageSize - 1)) !== 0) throw argValueError('options.pageSize', 'must be a power of two', pageSize);
  const batchPages = v.integer('options.batchPages', opts.batchPages ?? 64, 1, 1024);
  if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw argValueError('options.signal', 'must be an AbortSignal', opts.signal);
  const pushBytesPerSecond = opts.pushBytesPerSecond === undefined ? Infinity : v.integer('options.pushBytesPerSecond', opts.pushBytesPerSecond, 1);
  const auth = checkAuth(opts);
  const authTimeoutMs = v.integer('options.authTimeoutMs', opts.authTimeoutMs ?? 10_000, 1, 3_600_000);
  const live = opts.live === undefined ? undefined : checkLive(opts.live);
  return { auth, authTimeoutMs, pageSize, batchPages, push: v.boolean('options.push', opts.push, true), pushBytesPerSecond, signal: opts.signal, live };
}

/**
 * Serves `image` to the destination at the other end of a connected TCP
 * socket until every page is sent and the destination closes the connection.
 * Resolves with what was sent; rejects on a protocol error, a lost
 * connection before the end, or an abort (the socket is destroyed then).
 */
export async function servePages(socket: net.Socket, image: ImageSource, options?: SourceOptions): Promise<SourceStats> {
  let opts: Options;
  let img: PageImage;
  let tracker: LiveTracker | undefined;
  try {
    opts = readOptions(options);
    if (opts.live && !(image instanceof Memfd)) throw argValueError('image', 'must be the guest\'s Memfd for a live source', image);
    img = openImage(image);
    try {
      if (opts.live && opts.live.mode !== 'postcopy') tracker = new LiveTracker(opts.live, opts.pageSize);
    } catch (err) {
      img.close();
      throw err;
    }
  } catch (err) {
    socket.destroy();
    throw err;
  }
  try {
    return await new SourceConnection(socket, img, opts, tracker).run();
  } finally {
    tracker?.close();
    img.close();
  }
}

class SourceConnection {
  readonly #socket: net.Socket;
  readonly #image: PageImage;
  readonly #opts: Options;
  readonly #pageCount: number;
  readonly #sent: Uint8Array;
  #sentCount = 0;
  #cursor = 0;
  readonly #demand: [number, number][] = [];
  readonly #refetch: [number, number][] = [];
  readonly #prefetch: [number, number][] = [];
  #waitingDrain = false;
  #doneSent = false;
  #timer: NodeJS.Timeout | undefined;
  /** With a token: the nonce sent in the challenge, until the destination proved itself. */
  #challenge: Buffer | undefined;
  /** Push batches the destination still accepts (demand answers need no credit). */
  #credit = 0;
  readonly #stats: SourceStats;
  readonly #started = Date.now();
  /**
   * Live sources only. `rounds`: sending the pages queued for this round;
   * `pausing`: waiting for the guest to stop; `final`: stop-and-copy of the
   * last written pages; `serve`: post-copy (also every static source).
   */
  #phase: 'rounds' | 'pausing' | 'final' | 'serve' = 'serve';
  readonly #tracker: LiveTracker | undefined;
  /** Per page: queued to be sent in this round (or the stop-and-copy). */
  #queued = new Uint8Array(0);
  #queuedCursor = 0;
  #round = 0;
  #roundStarted = 0;
  #lastDirty = Infinity;
  #pausedAt = 0;
  /** The connection's outcome is settled (finish ran). */
  #ended = false;
  #finish: (err?: Error) => void = () => {};

  constructor(socket: net.Socket, image: PageImage, opts: Options, tracker?: LiveTracker) {
    this.#socket = socket;
    this.#image = image;
    this.#opts = opts;
    this.#tracker = tracker;
    this.#pageCount = Math.ceil(image.size / opts.pageSize);
    this.#sent = new Uint8Array(this.#pageCount);
    this.#stats = { pageCount: this.#pageCount, pagesOnDemand: 0, pagesPushed: 0, requestsReceived: 0, bytesSent: 0, durationMs: 0 };
    if (opts.live) {
      this.#stats.live = { mode: opts.live.mode, rounds: 0, pagesPerRound: [], msPerRound: [], pagesAfterPause: 0, pagesStale: 0, downtimeMs: 0 };
      this.#queued = new Uint8Array(this.#pageCount);
    }
  }

  run(): Promise<SourceStats> {
    const socket = this.#socket;
    socket.setNoDelay(true);
    const decoder = new FrameDecoder(() => this.#opts.pageSize);
    return new Promise<SourceStats>((resolve, reject) => {
      let settled = false;
      const finish = (err?: Error) => {
        if (settled) return;
        settled = true;
        this.#ended = true;
        clearTimeout(this.#timer);
        clearTimeout(authTimer);
        this.#opts.signal?.removeEventListener('abort', onAbort);
        this.#stats.durationMs = Date.now() - this.#started;
        if (err) {
          // Paused for a migration that failed: the guest goes on here.
          if (this.#pausedAt) this.#resumeGuest();
          if (!socket.destroyed) socket.end(encodeError((err as { code?: string }).code ?? 'ERR_MIGRATION_SOURCE', err.message));
          socket.destroy();
          reject(err);
        } else resolve(this.#stats);
      };
      this.#finish = finish;
      const onAbort = () => finish(stateError('ERR_MIGRATION_ABORTED', 'migration source aborted'));
      let authTimer: NodeJS.Timeout | undefined;
      if (this.#opts.signal?.aborted) return onAbort();
      this.#opts.signal?.addEventListener('abort', onAbort, { once: true });
      socket.on('data', (chunk: Buffer) => {
        try {
          for (const frame of decoder.push(chunk)) this.#onFrame(frame);
          this.#pump();
        } catch (err) {
          finish(err as Error);
        }
      });
      socket.on('drain', () => {
        this.#waitingDrain = false;
        try {
          this.#pump();
        } catch (err) {
          finish(err as Error);
        }
      });
      socket.on('error', (err) => finish(stateError('ERR_MIGRATION_CONNECTION_LOST', `migration source: connection failed: ${err.message}`)));
      socket.on('close', () => {
        // The destination may hang up as soon as it holds every page, before
        // the done frame left this side's buffer.
        if (this.#doneSent || (!this.#opts.live && this.#sentCount === this.#pageCount)) finish();
        else finish(stateError('ERR_MIGRATION_CONNECTION_LOST', `migration source: destination closed the connection after ${this.#sentCount} of ${this.#pageCount} pages`));
      });
      socket.on('end', () => socket.end());
      if (this.#opts.auth.token) {
        // Nothing of the guest leaves before the destination proved it holds the token.
        this.#challenge = nonce();
        this.#write(encodeChallenge(this.#challenge));
        authTimer = setTimeout(() => finish(authError(`the destination did not authenticate within ${this.#opts.authTimeoutMs} ms`)), this.#opts.authTimeoutMs);
        return;
      }
      this.#hello();
    });
  }

  #hello(): void {
    const live = this.#opts.live;
    this.#write(encodeHello(this.#opts.pageSize, this.#image.size, live !== undefined));
    trace('migration source: serving %d pages of %d bytes%s', this.#pageCount, this.#opts.pageSize, live ? ` live, ${live.mode}` : '');
    if (!live) return;
    if (live.mode === 'postcopy') return this.#switchOver();
    // Protect before the first read: a write after a page was read is seen.
    this.#tracker!.start();
    this.#queued.fill(1);
    this.#beginRound(this.#pageCount);
  }

  #beginRound(pages: number): void {
    this.#phase = 'rounds';
    this.#queuedCursor = 0;
    this.#stats.live!.pagesPerRound.push(pages);
    this.#roundStarted = performance.now();
    this.#write(encodeRound(this.#round, pages));
    trace('migration source: round %d, %d pages', this.#round, pages);
  }

  /** The round's pages are on their way: another round, or the switch-over. */
  #endRound(): void {
    const live = this.#opts.live!;
    const stats = this.#stats.live!;
    stats.rounds = ++this.#round;
    stats.msPerRound.push(performance.now() - this.#roundStarted);
    const dirty = this.#tracker!.collectInto(this.#queued);
    const converged = dirty <= live.stopBelowPages || dirty >= this.#lastDirty;
    this.#lastDirty = dirty;
    if (this.#round >= live.maxRounds || converged) this.#switchOver();
    else this.#beginRound(dirty);
  }

  /** Pauses the guest, then stop-and-copy (pre-copy) or the switch to post-copy. */
  #switchOver(): void {
    const live = this.#opts.live!;
    this.#phase = 'pausing';
    this.#pausedAt = performance.now();
    trace('migration source: pausing the guest (%s)', live.mode);
    pauseGuest(live, () => this.#resumeGuest()).then(() => {
      trace('migration source: guest paused in %d ms', performance.now() - this.#pausedAt);
      // The migration ended while pause() ran: its resume() came too early, so again.
      if (this.#ended) return this.#resumeGuest();
      const stats = this.#stats.live!;
      let last = 0;
      if (this.#tracker) {
        last = this.#tracker.collectInto(this.#queued);
        this.#tracker.close();
      }
      const flushed = (what: string) => (err?: Error | null) => {
        if (err) return;
        stats.downtimeMs = performance.now() - this.#pausedAt;
        trace('migration source: %s flushed, downtime %d ms', what, stats.downtimeMs);
      };
      if (live.mode === 'precopy') {
        let pages = 0;
        for (let p = 0; p < this.#pageCount; p++) pages += this.#queued[p];
        stats.pagesAfterPause = pages;
        this.#write(encodeSwitchover(false, []));
        this.#phase = 'final';
        this.#queuedCursor = 0;
        this.#onDoneFlushed = flushed('done');
      } else {
        // Sent, then written: the destination drops its copy and fetches the page again.
        const stale: [number, number][] = [];
        for (let p = 0; p < this.#pageCount; p++) {
          if (!this.#queued[p]) continue;
          let q = p;
          while (q < this.#pageCount && this.#queued[q]) q++;
          this.#queued.fill(0, p, q);
          stale.push([p, q - p]);
          for (let r = p; r < q; r++) if (this.#sent[r]) this.#sent[r] = 0, this.#sentCount--;
          stats.pagesStale += q - p;
          p = q;
        }
        this.#cursor = 0;
        stats.pagesAfterPause = this.#pageCount - this.#sentCount;
        this.#phase = 'serve';
        this.#write(encodeSwitchover(true, stale), flushed('switchover'));
      }
      trace('migration source: switch-over after %d rounds, %d pages written during the pause check', stats.rounds, last);
      this.#pump();
    }).catch((err: Error) => this.#finish(err));
  }

  #onDoneFlushed: ((err?: Error | null) => void) | undefined;

  /** The user's resume(), whose failure must not stop the failure path. */
  #resumeGuest(): void {
    try {
      this.#opts.live!.resume?.();
    } catch (err) {
      trace('migration source: resume() threw: %s', (err as Error).message);
    }
  }

  #pausing(): boolean {
    return this.#phase === 'pausing';
  }

  #onFrame(frame: Frame): void {
    if (this.#challenge) {
      if (frame.type === 'error') throw stateError(frame.code, `migration source: the destination reported: ${frame.message}`);
      if (frame.type !== 'auth') throw authError(`the destination sent a ${frame.type} frame instead of authenticating`);
      if (!proofHolds(this.#opts.auth.token!, 'destination', this.#challenge, frame.mac))
        throw authError('the destination failed authentication (wrong token)');
      this.#challenge = undefined;
      this.#write(encodeProof(proof(this.#opts.auth.token!, 'source', frame.nonce)));
      trace('migration source: destination authenticated');
      this.#hello();
      return;
    }
    switch (frame.type) {
      case 'request': {
        const { firstPage, pageCount } = frame;
        if (this.#phase !== 'serve')
          throw protocolError('ERR_MIGRATION_BAD_FRAME', `request for pages ${firstPage}+${pageCount} before the switch-over: the guest must not run at the destination yet`);
        if (pageCount === 0 || firstPage + pageCount > this.#pageCount)
          throw protocolError('ERR_MIGRATION_BAD_FRAME', `request for pages ${firstPage}+${pageCount} outside the image's ${this.#pageCount} pages`);
        this.#stats.requestsReceived++;
        if (frame.priority === PRIORITY.refetch) this.#refetch.push([firstPage, pageCount]);
        else (frame.priority === PRIORITY.demand ? this.#demand : this.#prefetch).push([firstPage, pageCount]);
        return;
      }
      case 'credit':
        this.#credit += frame.batches;
        return;
      case 'error':
        throw stateError(frame.code, `migration source: the destination reported: ${frame.message}`);
      default:
        throw protocolError('ERR_MIGRATION_BAD_FRAME', `a source does not expect a ${frame.type} frame`);
    }
  }

  /** Writes as long as the socket takes data: requests first, then the background push. */
  #pump(): void {
    if (this.#challenge || this.#phase === 'pausing') return;
    // Corked: the frames of one pump (many small runs for a replay's scattered
    // pages) leave in one writev, not one send each.
    this.#socket.cork();
    try {
      this.#pumpFrames();
    } finally {
      this.#socket.uncork();
    }
  }

  #pumpFrames(): void {
    // #endRound() may start the pause: the loop condition looks again.
    while (!this.#waitingDrain && !this.#socket.destroyed && !this.#pausing()) {
      if (this.#phase === 'rounds' || this.#phase === 'final') {
        if (this.#sendQueued()) continue;
        if (this.#queuedCursor < this.#pageCount) return;
        if (this.#phase === 'rounds') {
          this.#endRound();
          continue;
        }
        this.#doneSent = true;
        this.#write(encodeDone(this.#sentCount), this.#onDoneFlushed);
        trace('migration source: stop-and-copy done');
        return;
      }
      if (this.#serveRefetch() || this.#serveQueue(this.#demand, true) || this.#serveQueue(this.#prefetch, true)) continue;
      if (this.#sentCount === this.#pageCount) {
        if (!this.#doneSent) {
          this.#doneSent = true;
          this.#write(encodeDone(this.#sentCount));
          trace('migration source: all %d pages sent', this.#sentCount);
        }
        return;
      }
      if (!this.#opts.push || this.#credit === 0 || this.#throttled()) return;
      while (this.#sent[this.#cursor]) this.#cursor++;
      let end = this.#cursor;
      while (end < this.#pageCount && end - this.#cursor < this.#opts.batchPages && !this.#sent[end]) end++;
      this.#sendRun(this.#cursor, end, false);
    }
  }

  /** True (and a wake-up scheduled) when the push is ahead of its byte budget. */
  #throttled(): boolean {
    const rate = this.#opts.pushBytesPerSecond;
    if (rate === Infinity) return false;
    const pushedBytes = this.#stats.pagesPushed * this.#opts.pageSize;
    const aheadMs = (pushedBytes / rate) * 1000 - (Date.now() - this.#started);
    if (aheadMs <= 0) return false;
    if (!this.#timer) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        try {
          this.#pump();
        } catch (err) {
          this.#socket.destroy(err as Error);
        }
      }, Math.ceil(aheadMs));
    }
    return true;
  }

  /** Sends the unsent pages of the first queued request; false when the queue is empty. */
  #serveQueue(queue: [number, number][], demand: boolean): boolean {
    while (queue.length) {
      const [first, count] = queue[0];
      let p = first;
      while (p < first + count && this.#sent[p]) p++;
      if (p === first + count) {
        queue.shift();
        continue;
      }
      let end = p;
      while (end < first + count && end - p < this.#opts.batchPages && !this.#sent[end]) end++;
      this.#sendRun(p, end, demand);
      return true;
    }
    return false;
  }

  /** Sends the first queued refetch (pages the destination lost): sent again, whatever was sent before. */
  #serveRefetch(): boolean {
    const next = this.#refetch.shift();
    if (next === undefined) return false;
    const [first, count] = next;
    const end = Math.min(first + count, first + this.#opts.batchPages);
    if (end < first + count) this.#refetch.unshift([end, first + count - end]);
    let unsent = 0;
    for (let p = first; p < end; p++) if (!this.#sent[p]) unsent++;
    const pages = this.#image.read(first * this.#opts.pageSize, (end - first) * this.#opts.pageSize);
    const [head, body] = encodeBatch(true, first, end - first, pages);
    this.#sent.fill(1, first, end);
    this.#sentCount += unsent;
    this.#stats.pagesOnDemand += end - first;
    this.#write(head);
    this.#write(body);
    return true;
  }

  /** Pushes the next run of queued pages (update batches after round 0); false when none is left or no credit. */
  #sendQueued(): boolean {
    while (this.#queuedCursor < this.#pageCount && !this.#queued[this.#queuedCursor]) this.#queuedCursor++;
    // The stop-and-copy is all downtime: the push cap (there to share the link with a running guest) no longer applies.
    if (this.#queuedCursor === this.#pageCount || this.#credit === 0 || (this.#phase === 'rounds' && this.#throttled())) return false;
    const first = this.#queuedCursor;
    let end = first;
    while (end < this.#pageCount && end - first < this.#opts.batchPages && this.#queued[end]) end++;
    let unsent = 0;
    for (let p = first; p < end; p++) if (!this.#sent[p]) unsent++;
    const update = unsent === 0;
    const pages = this.#image.read(first * this.#opts.pageSize, (end - first) * this.#opts.pageSize);
    const [head, body] = encodeBatch(false, first, end - first, pages, update);
    this.#queued.fill(0, first, end);
    this.#sent.fill(1, first, end);
    this.#sentCount += unsent;
    this.#credit--;
    this.#stats.pagesPushed += end - first;
    this.#queuedCursor = end;
    this.#write(head);
    this.#write(body);
    return true;
  }

  #sendRun(first: number, end: number, demand: boolean): void {
    const count = end - first;
    const pages = this.#image.read(first * this.#opts.pageSize, count * this.#opts.pageSize);
    const [head, body] = encodeBatch(demand, first, count, pages);
    this.#sent.fill(1, first, end);
    if (!demand) this.#credit--;
    this.#sentCount += count;
    if (demand) this.#stats.pagesOnDemand += count;
    else this.#stats.pagesPushed += count;
    this.#write(head);
    this.#write(body);
  }

  #write(bytes: Uint8Array, flushed?: (err?: Error | null) => void): void {
    this.#stats.bytesSent += bytes.byteLength;
    if (!this.#socket.write(bytes, flushed)) this.#waitingDrain = true;
  }
}

/**
 * A TCP server that serves one memory image to every destination that
 * connects (each connection gets every page once).
 */
export class MigrationSource implements Disposable {
  readonly #server: net.Server;
  readonly #served: Promise<SourceStats>[] = [];
  #closed = false;

  private constructor(server: net.Server) {
    this.#server = server;
  }

  /**
   * Listens on `port` (0 picks a free one) and `host`: loopback unless a
   * `host` is given, since whoever completes the protocol gets the guest's
   * memory. Across machines, give a `token`, `tls` (mutual authentication)
   * or both. `onConnection` sees each connection's outcome.
   */
  static async listen(image: ImageSource, options?: SourceOptions & { port?: number; host?: string; onConnection?: (result: Promise<SourceStats>) => void }): Promise<MigrationSource> {
    const opts = v.options<SourceOptions & { port?: number; host?: string; onConnection?: (r: Promise<SourceStats>) => void }>('options', options);
    const checked = readOptions(opts);
    openImage(image).close();
    if (checked.live && !(image instanceof Memfd)) throw argValueError('image', 'must be the guest\'s Memfd for a live source', image);
    const port = v.integer('options.port', opts.port ?? 0, 0, 65535);
    const host = opts.host === undefined ? '127.0.0.1' : v.nonEmptyString('options.host', opts.host);
    let source: MigrationSource | undefined;
    const server = createServer(checked.auth, (socket) => {
      // A running guest migrates once: the first destination gets it.
    if (checked.live) server.close();
    const result = servePages(socket, image, opts);
      result.catch(() => {});
      source!.#served.push(result);
      opts.onConnection?.(result);
    });
    source = new MigrationSource(server);
    server.listen(port, host);
    await once(server, 'listening');
    return source;
  }

  /** The bound address and port. */
  get address(): net.AddressInfo {
    return this.#server.address() as net.AddressInfo;
  }

  /** The outcome of every connection so far. */
  get connections(): readonly Promise<SourceStats>[] {
    return this.#served;
  }

  /** Stops listening (connections being served run to their end). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#server.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}


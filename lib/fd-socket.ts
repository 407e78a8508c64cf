// Unix stream sockets that carry file descriptors (SCM_RIGHTS). A uffd is
// tied to the process that created it, so a page server in another process
// receives it over such a socket; Firecracker's page-server protocol is one.
import { trace } from './debug';
import { fstatSync } from 'node:fs';

import { UffdError, argValueError, check, checkValue, closedError, stateError } from './errors';
import { native } from './native';
import { Poller } from './poller';
import * as v from './validate';

const EAGAIN = -11;

/** A message received with the descriptors that came with it. */
export interface FdMessage {
  data: Buffer;
  /** Received descriptors (close-on-exec). The receiver owns them. */
  fds: number[];
  /** The kernel dropped descriptors because too many were sent at once. */
  truncated: boolean;
}

/** Credentials of the peer process (SO_PEERCRED). */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/**
 * Waits until `fd` is readable. The poller must be gone before the fd is
 * closed (libuv keys watchers by fd number), so the owner keeps a cancel
 * function that its close() calls.
 */
function waitReadable(fd: number, owner: { cancelWait?: () => void }, what: string, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    signal?.throwIfAborted();
    const settle = (err?: unknown) => {
      poller.stop();
      owner.cancelWait = undefined;
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onAbort = () => settle(signal!.reason);
    const poller = new Poller(fd, null, (result) => {
      // EPIPE (peer hung up) is left for the next read to report as end of stream.
      settle(result < 0 && result !== -32 ? new UffdError(result, 'poll', { fd }) : undefined);
    });
    owner.cancelWait = () => settle(closedError(what));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** One end of a connected Unix stream socket, non-blocking and close-on-exec. */
export class FdSocket implements Disposable {
  readonly fd: number;
  #closed = false;
  readonly #waiter: { cancelWait?: () => void } = {};

  /** Wraps (and owns) a connected Unix socket descriptor. */
  constructor(fd: number) {
    this.fd = v.fd('fd', fd);
    // Adopting means closing it later: refuse anything that is not a socket
    // (a mistyped number could otherwise take stdout away from the process).
    let isSocket = false;
    try {
      isSocket = fstatSync(fd).isSocket();
    } catch {
      // EBADF and friends: reported below as not a socket.
    }
    if (!isSocket) throw argValueError('fd', 'must be an open socket descriptor', fd);
    native.adoptFd(fd);
  }

  /** Connects to a listening Unix socket at `path`. */
  static connect(path: string): FdSocket {
    v.nonEmptyString('path', path);
    return new FdSocket(check(native.unixConnect(path), 'connect', { path }));
  }

  /** A connected pair; hand one end's fd to a child process through its stdio. */
  static pair(): [FdSocket, FdSocket] {
    const [a, b] = checkValue(native.socketPair(), 'socketpair');
    return [new FdSocket(a), new FdSocket(b)];
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Sends `data` (at least one byte is always sent) with up to 16 descriptors attached. */
  send(data: Uint8Array | string, fds: readonly number[] = []): void {
    this.#assertOpen();
    const bytes = typeof data === 'string' ? Buffer.from(data) : v.bytes('data', data);
    const list = v.fdList('fds', fds, 16);
    const sent = check(native.sendFds(this.fd, bytes, list), 'sendmsg', { fd: this.fd });
    if (sent < Math.max(1, bytes.byteLength)) this.#sendRest(bytes.subarray(sent));
    trace('socket %d: sent %d bytes with fds [%s]', this.fd, bytes.byteLength, fds.join(','));
  }

  /**
   * Receives the next chunk of bytes (at most `maxBytes`) with any descriptors
   * that came with it. Resolves with empty data at end of stream.
   */
  async receive(options?: { maxBytes?: number; signal?: AbortSignal }): Promise<FdMessage> {
    this.#assertOpen();
    const opts = v.options<{ maxBytes?: number; signal?: AbortSignal }>('options', options);
    const into = Buffer.alloc(v.integer('options.maxBytes', opts.maxBytes ?? 65536, 1, 1 << 26));
    for (;;) {
      this.#assertOpen();
      const result = native.recvFds(this.fd, into);
      if (result !== EAGAIN) {
        const [n, fds, truncated] = checkValue(result, 'recvmsg', { fd: this.fd });
        return { data: into.subarray(0, n), fds, truncated };
      }
      await waitReadable(this.fd, this.#waiter, 'FdSocket', opts.signal);
    }
  }

  /** Reads exactly `length` bytes (descriptors arriving meanwhile are collected too). */
  async receiveExactly(length: number, options?: { signal?: AbortSignal }): Promise<FdMessage> {
    v.integer('length', length, 0, 1 << 26);
    const parts: Buffer[] = [];
    const fds: number[] = [];
    let got = 0;
    while (got < length) {
      const msg = await this.receive({ maxBytes: length - got, signal: options?.signal });
      if (msg.data.length === 0) throw stateError('ERR_UFFD_SOCKET_CLOSED', `peer closed the socket after ${got} of ${length} bytes`);
      parts.push(Buffer.from(msg.data));
      fds.push(...msg.fds);
      got += msg.data.length;
    }
    return { data: Buffer.concat(parts), fds, truncated: false };
  }

  /** The connected peer's pid, uid and gid. */
  peerCredentials(): PeerCredentials {
    this.#assertOpen();
    const [pid, uid, gid] = checkValue(native.peerCred(this.fd), 'getsockopt', { operation: 'SO_PEERCRED', fd: this.fd });
    return { pid, uid, gid };
  }

  /** Stops owning the descriptor without closing it (after handing it to a child, say). */
  release(): number {
    this.#assertOpen();
    this.#waiter.cancelWait?.();
    this.#closed = true;
    native.disownFd(this.fd);
    return this.fd;
  }

  close(): void {
    if (this.#closed) return;
    this.#waiter.cancelWait?.();
    this.#closed = true;
    native.closeFd(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #sendRest(rest: Uint8Array): void {
    // Messages here are small; a full socket buffer is an error worth naming
    // rather than a reason to block the event loop.
    let offset = 0;
    while (offset < rest.byteLength) {
      const n = native.sockWrite(this.fd, rest.subarray(offset));
      if (n < 0) throw new UffdError(n, 'send', { fd: this.fd, hint: 'socket buffer full' });
      offset += n;
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError('FdSocket');
  }
}

/** A listening Unix stream socket that accepts {@link FdSocket}s. */
export class FdServer implements Disposable {
  readonly fd: number;
  readonly path: string;
  #closed = false;
  readonly #waiter: { cancelWait?: () => void } = {};

  private constructor(fd: number, path: string) {
    this.fd = fd;
    this.path = path;
  }

  /** Listens at `path` (which must not exist). */
  static listen(path: string, backlog = 16): FdServer {
    v.nonEmptyString('path', path);
    return new FdServer(check(native.unixListen(path, v.integer('backlog', backlog, 1, 4096)), 'bind', { path }), path);
  }

  /** Waits for the next connection. */
  async accept(options?: { signal?: AbortSignal }): Promise<FdSocket> {
    for (;;) {
      if (this.#closed) throw closedError('FdServer');
      const fd = native.unixAccept(this.fd);
      if (fd >= 0) {
        native.disownFd(fd);
        return new FdSocket(fd);
      }
      if (fd !== EAGAIN) throw new UffdError(fd, 'accept', { path: this.path });
      await waitReadable(this.fd, this.#waiter, 'FdServer', options?.signal);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#waiter.cancelWait?.();
    this.#closed = true;
    native.closeFd(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

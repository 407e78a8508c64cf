// Readiness of a descriptor on this thread's libuv loop (native/poller.cc).
import { UffdError } from './errors';
import { PollerHandle, native } from './native';

/**
 * @internal Readiness of a descriptor on this thread's libuv loop. With a
 * message buffer, each wake-up reads a batch of uffd messages into it and
 * reports the count (or -errno); without one it only reports readiness.
 * `stop()` is idempotent and must run before the descriptor is closed: libuv
 * keys its watchers by fd number, which the kernel reuses.
 */
export class Poller {
  #handle: PollerHandle | undefined;

  constructor(fd: number, into: ArrayBuffer | null, onReady: (result: number) => void) {
    const handle = native.pollerStart(fd, into, onReady);
    if (typeof handle === 'number') throw new UffdError(handle, 'uv_poll_start', { fd });
    this.#handle = handle;
  }

  get active(): boolean {
    return this.#handle !== undefined;
  }

  /** Whether the poller keeps the event loop alive (it does by default). */
  ref(keepAlive: boolean): void {
    if (this.#handle) native.pollerRef(this.#handle, keepAlive);
  }

  stop(): void {
    if (!this.#handle) return;
    native.pollerStop(this.#handle);
    this.#handle = undefined;
  }
}

// The policy half of the fault handler: one fetch per absent page however
// many faults wait on it, at most `concurrency` fetches at once (FIFO after
// that), fetches shared with other handlers of the same memfd, the error
// policy, and cancellation: every fetch gets a signal that aborts when the
// handler gives up on it, and nothing waits on a fetch after that.
import { trace } from '../debug';
import { argValueError, fetchError, renamedError } from '../errors';
import type { PresentPages } from '../present-pages';
import type { PolicyCounts } from './stats';
import type { ErrorAction, Fault, FetchContext } from './types';

/** One absent page and the faults waiting on it. */
export interface Pending {
  fault: { -readonly [K in keyof Fault]: Fault[K] };
  /** Per waiting fault: address, flags, thread id, read time (engine clock): four numbers each. */
  waiters: number[];
}

/** What the handler does once the queue has decided a page's fate. */
export interface QueueHooks {
  /** The page's content is in the memfd (or another handler put it there): map it for its waiters. */
  ready(p: Pending): void;
  /** Zero-fill: write zeros for the page (throws on failure). */
  zeroFill(p: Pending): void;
  /** The error policy chose SIGBUS for the page's faulters. */
  poison(p: Pending): void;
  /** The handler must stop with this error. */
  fail(error: Error): void;
}

export type FetchFn = (fault: Fault, context: FetchContext) => void | Promise<void>;
export type ErrorPolicy = (error: unknown, fault: Fault) => ErrorAction | Promise<ErrorAction>;

export class FetchQueue {
  readonly #fetch: FetchFn;
  readonly #onError: ErrorPolicy;
  readonly #concurrency: number;
  readonly #present: PresentPages;
  readonly #hooks: QueueHooks;
  readonly #counts: PolicyCounts;
  readonly #controller = new AbortController();
  readonly #context: FetchContext = { signal: this.#controller.signal };
  readonly #waiting = new Map<number, Pending>();
  readonly #queue: Pending[] = [];
  #active = 0;
  #idle: (() => void)[] = [];
  /** Set once the handler stops waiting for fetches: late settlements are ignored. */
  #abandoned = false;
  /** Set when the handler stops on an error: no new fetch starts, retries included. */
  #failing = false;

  constructor(fetch: FetchFn, onError: ErrorPolicy, concurrency: number, present: PresentPages, hooks: QueueHooks, counts: PolicyCounts) {
    this.#fetch = fetch;
    this.#onError = onError;
    this.#concurrency = concurrency;
    this.#present = present;
    this.#hooks = hooks;
    this.#counts = counts;
  }

  /** A fault on absent page `page`: joins the page's fetch, or starts (or queues) one. */
  add(address: number, flags: number, tid: number, time: number, page: number, offset: number): void {
    const pending = this.#waiting.get(page);
    if (pending !== undefined) {
      this.#counts.duplicatesMerged++;
      pending.waiters.push(address, flags, tid, time);
      return;
    }
    const fresh: Pending = {
      fault: { address, offset, page, write: (flags & 1) !== 0, minor: (flags & 4) !== 0, threadId: tid, attempt: 0 },
      waiters: [address, flags, tid, time],
    };
    const shared = this.#present.inflight.get(page);
    if (shared === undefined && !this.#failing && this.#active < this.#concurrency) {
      // The common case starts at once, and the page enters the waiting map
      // only if its fetch turns out asynchronous: a synchronous one is done
      // before any other fault on the page can be read.
      this.#start(fresh);
      return;
    }
    this.#waiting.set(page, fresh);
    if (shared !== undefined) {
      // Another handler over the same memfd is fetching this page.
      this.#active++;
      shared.then(
        () => this.#settled(fresh, () => this.#done(fresh)),
        () => this.#settled(fresh, () => {
          this.#active--;
          this.#enqueue(fresh);
        }),
      );
      return;
    }
    this.#enqueue(fresh);
  }

  /** No fetch in flight and none queued. */
  get idle(): boolean {
    return this.#active === 0 && this.#queue.length === 0;
  }

  /** Resolves once {@link idle}. */
  whenIdle(): Promise<void> {
    if (this.idle) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  /** Stopping on an error: pages not started are not fetched (their faulters are woken by the handler). */
  dropQueued(): void {
    this.#failing = true;
    for (const p of this.#queue) this.#waiting.delete(p.fault.page);
    this.#queue.length = 0;
    this.#pumpIdle();
  }

  /** Gives up on every fetch: their signal aborts, and nothing waits for them any more. */
  abandon(reason: Error): void {
    if (this.#abandoned) return;
    this.#abandoned = true;
    this.#failing = true;
    this.#queue.length = 0;
    this.#waiting.clear();
    this.#active = 0;
    this.#controller.abort(reason);
    this.#pumpIdle();
  }

  #enqueue(p: Pending): void {
    if (this.#failing) {
      this.#waiting.delete(p.fault.page);
      this.#pumpIdle();
      return;
    }
    if (this.#active < this.#concurrency) this.#start(p);
    else this.#queue.push(p);
  }

  #pump(): void {
    while (!this.#failing && this.#active < this.#concurrency && this.#queue.length) this.#start(this.#queue.shift()!);
    this.#pumpIdle();
  }

  #pumpIdle(): void {
    if (!this.idle) return;
    const waiters = this.#idle;
    this.#idle = [];
    for (const resolve of waiters) resolve();
  }

  /** Runs `fn` unless the handler has stopped waiting for this page. */
  #settled(p: Pending, fn: () => void): void {
    if (this.#abandoned || this.#waiting.get(p.fault.page) !== p) return;
    fn();
  }

  #start(p: Pending): void {
    this.#active++;
    const page = p.fault.page;
    let result: void | Promise<void>;
    try {
      result = this.#fetch(p.fault, this.#context);
    } catch (err) {
      this.#waiting.set(page, p);
      this.#settled(p, () => void this.#failed(p, err));
      return;
    }
    if (!isThenable(result)) {
      // A synchronous fetch (content already at hand) is served at once: no
      // promise, no closure, nothing for the collector, and no other handler
      // could have looked for it in flight meanwhile.
      if (!this.#abandoned) this.#fetched(p);
      return;
    }
    this.#waiting.set(page, p);
    const settled = Promise.resolve(result).then(() => undefined);
    this.#present.inflight.set(page, settled);
    settled.catch(() => {});
    const forget = () => {
      if (this.#present.inflight.get(page) === settled) this.#present.inflight.delete(page);
    };
    settled.then(
      () => {
        forget();
        this.#settled(p, () => this.#fetched(p));
      },
      (err: unknown) => {
        forget();
        this.#settled(p, () => void this.#failed(p, err));
      },
    );
  }

  #fetched(p: Pending): void {
    this.#counts.fetched++;
    this.#present.markPage(p.fault.page);
    this.#done(p);
  }

  /** The page is present: hand it to the handler, free the slot. */
  #done(p: Pending): void {
    this.#active--;
    this.#waiting.delete(p.fault.page);
    this.#hooks.ready(p);
    this.#pump();
  }

  async #failed(p: Pending, error: unknown): Promise<void> {
    this.#counts.errors++;
    const fault = p.fault;
    trace('handler: fetch of page %d failed (attempt %d): %s', fault.page, fault.attempt, error);
    let action: ErrorAction;
    try {
      action = await this.#onError(error, fault);
      if ((action as string) === 'zero-fill') throw renamedError("onError result 'zero-fill'", "'zero'");
      if (action !== 'retry' && action !== 'zero' && action !== 'poison' && action !== 'stop')
        throw argValueError('onError result', "must be 'retry', 'zero', 'poison' or 'stop'", action);
    } catch (policyError) {
      action = 'stop';
      error = policyError;
    }
    if (this.#abandoned || this.#waiting.get(fault.page) !== p) return;
    if (this.#failing && action !== 'stop') action = 'stop';
    switch (action) {
      case 'retry':
        this.#active--;
        fault.attempt++;
        this.#start(p);
        return;
      case 'zero':
        try {
          this.#hooks.zeroFill(p);
        } catch (err) {
          this.#active--;
          this.#waiting.delete(fault.page);
          this.#hooks.fail(fetchError(err, fault.page, fault.offset, fault.address));
          this.#pump();
          return;
        }
        this.#counts.zeroFilled++;
        this.#present.markPage(fault.page);
        this.#done(p);
        return;
      case 'poison':
        this.#active--;
        this.#waiting.delete(fault.page);
        this.#hooks.poison(p);
        this.#pump();
        return;
      default:
        this.#active--;
        // The page stays unfetched; the handler wakes its faulters as it stops.
        this.#waiting.delete(fault.page);
        this.#hooks.fail(fetchError(error, fault.page, fault.offset, fault.address));
        this.#pump();
    }
  }
}

function isThenable(value: unknown): value is PromiseLike<void> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<void>).then === 'function';
}

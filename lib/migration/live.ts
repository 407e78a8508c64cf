// What a live source needs besides the wire: its options, the dirty tracker
// over the guest's views translated to memfd pages, and a pause that cannot
// hang the migration.
import { DirtyTracker, RemoteRange } from '../dirty-tracker';
import { argTypeError, argValueError, stateError } from '../errors';
import { Mapping } from '../memfd';
import { Userfaultfd } from '../userfaultfd';
import * as v from '../validate';

/** How a live guest moves. */
export type LiveMode = 'precopy' | 'hybrid' | 'postcopy';

/** A range of the guest's process that shows the memfd from `offset`. */
export interface LiveRange extends RemoteRange {
  /** Offset in the memfd of the range's first byte. Default 0. */
  offset?: number;
}

/**
 * A live source: the guest keeps running on the memfd while it is migrated.
 *
 * - `'precopy'`: round 0 sends every page; each next round sends the pages
 *   the guest wrote meanwhile, until a round leaves at most `stopBelowPages`
 *   written pages, the written set stops shrinking, or `maxRounds` rounds
 *   ran. Then `pause()`, the last written pages, done (stop-and-copy); the
 *   guest may run at the destination after done.
 * - `'hybrid'`: the same rounds (by default one), then `pause()` and the
 *   switch-over: the destination drops the pages written since they were
 *   sent, the guest runs there at once, and what it lacks comes by post-copy.
 * - `'postcopy'`: `pause()` at once, then post-copy of every page.
 */
export interface LiveSourceOptions {
  /** Default `'precopy'`. */
  mode?: LiveMode;
  /**
   * Where the guest writes the memfd: Mappings of this process (its threads
   * are the guest), or ranges of the guest's process with their memfd
   * offset. Writes through other mappings, or pwrite(2), are not seen.
   */
  views: readonly (Mapping | LiveRange)[];
  /** For ranges of another process: a userfaultfd that process opened (see DirtyTracker). */
  uffd?: Userfaultfd;
  /** Stops the guest's writes; settles once no write is in flight. */
  pause: () => Promise<void> | void;
  /** Lets the guest go on here when the migration fails after `pause()`. */
  resume?: () => void;
  /** Rounds before the switch-over at the latest. Default 8 (precopy), 1 (hybrid). */
  maxRounds?: number;
  /** Switch over once a round leaves at most this many written pages. Default 64. */
  stopBelowPages?: number;
  /** How long `pause()` may take before the migration fails with ERR_MIGRATION_PAUSE. Default 10000. */
  pauseTimeoutMs?: number;
}

/** What a live source did (in {@link SourceStats}). */
export interface LiveStats {
  mode: LiveMode;
  /** Pre-copy rounds run (round 0 sends every page). */
  rounds: number;
  /** Pages sent in each round. */
  pagesPerRound: number[];
  /** Milliseconds each round took (round 0, every page at full speed, is what stop-and-copy of the whole image would cost). */
  msPerRound: number[];
  /** Stop-and-copy: pages sent while paused. Hybrid and post-copy: pages missing at the destination at the switch-over. */
  pagesAfterPause: number;
  /** Hybrid: pages the destination dropped at the switch-over (sent, then written). */
  pagesStale: number;
  /** Milliseconds from `pause()` to the point the guest may run at the destination (done, or the switch-over frame) leaving this side. */
  downtimeMs: number;
}

/** @internal */
export interface CheckedLive {
  mode: LiveMode;
  views: readonly (Mapping | LiveRange)[];
  offsets: number[];
  uffd?: Userfaultfd;
  pause: () => Promise<void> | void;
  resume?: () => void;
  maxRounds: number;
  stopBelowPages: number;
  pauseTimeoutMs: number;
}

/** @internal */
export function checkLive(value: unknown): CheckedLive {
  const live = v.options<LiveSourceOptions>('options.live', value);
  const mode = v.oneOf('options.live.mode', live.mode, ['precopy', 'hybrid', 'postcopy'] as const, 'precopy');
  if (!Array.isArray(live.views) || live.views.length === 0) throw argValueError('options.live.views', 'must name the views the guest writes through', live.views);
  const offsets = live.views.map((view, i) => (view instanceof Mapping ? view.offset : v.integer(`options.live.views[${i}].offset`, (view as LiveRange).offset ?? 0)));
  if (typeof live.pause !== 'function') throw argTypeError('options.live.pause', 'a function that stops the guest', live.pause);
  if (live.resume !== undefined && typeof live.resume !== 'function') throw argTypeError('options.live.resume', 'a function', live.resume);
  if (live.uffd !== undefined && !(live.uffd instanceof Userfaultfd)) throw argTypeError('options.live.uffd', 'a Userfaultfd', live.uffd);
  return {
    mode, views: live.views, offsets, uffd: live.uffd, pause: live.pause, resume: live.resume,
    maxRounds: v.integer('options.live.maxRounds', live.maxRounds ?? (mode === 'hybrid' ? 1 : 8), 1, 1000),
    stopBelowPages: v.integer('options.live.stopBelowPages', live.stopBelowPages ?? 64),
    pauseTimeoutMs: v.integer('options.live.pauseTimeoutMs', live.pauseTimeoutMs ?? 10_000, 1, 3_600_000),
  };
}

/** @internal A DirtyTracker over the guest's views, reporting memfd pages. */
export class LiveTracker {
  readonly #tracker: DirtyTracker;
  /** Per tracked view: the memfd page of its first page. */
  readonly #firstMemfdPage: number[];

  constructor(live: CheckedLive, pageSize: number) {
    this.#tracker = new DirtyTracker(live.views, live.uffd ? { uffd: live.uffd } : undefined);
    if (this.#tracker.pageSize !== pageSize)
      throw argValueError('options.pageSize', `must be the guest views' page size (${this.#tracker.pageSize})`, pageSize);
    this.#firstMemfdPage = live.offsets.map((offset, i) => {
      v.aligned(`options.live.views[${i}].offset`, offset, pageSize);
      return offset / pageSize;
    });
  }

  start(): void {
    this.#tracker.start();
  }

  /** Marks in `queued` (one byte per memfd page) the pages written since the last call; returns how many were new there. */
  collectInto(queued: Uint8Array): number {
    const views = this.#tracker.views;
    let added = 0;
    for (const run of this.#tracker.collect().runs) {
      const first = this.#firstMemfdPage[run.view] + (run.page - views[run.view].firstPage);
      for (let p = first; p < first + run.count && p < queued.length; p++) if (!queued[p]) queued[p] = 1, added++;
    }
    return added;
  }

  close(): void {
    this.#tracker.close();
  }
}

/**
 * @internal Calls the user's pause; rejects with ERR_MIGRATION_PAUSE when it
 * throws, rejects or outlasts the timeout. A pause that succeeds after the
 * timeout calls `late` (the migration has given up: the guest must go on).
 */
export function pauseGuest(live: CheckedLive, late: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(stateError('ERR_MIGRATION_PAUSE', `migration source: pause() did not settle within ${live.pauseTimeoutMs} ms`));
    }, live.pauseTimeoutMs);
  });
  const paused = (async () => live.pause())().catch((err: Error) => {
    throw Object.assign(stateError('ERR_MIGRATION_PAUSE', `migration source: pause() failed: ${err?.message ?? String(err)}`), { cause: err });
  });
  paused.then(() => timedOut && late(), () => {});
  return Promise.race([paused, timeout]).finally(() => clearTimeout(timer));
}

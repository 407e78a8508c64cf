// What dirty tracking costs, per method the kernel has: protecting all of a
// memfd view, a tracked first write against a write to the same page through
// a mapping no tracker knows (both timed by the writing native thread, in the
// same repetition), and collect at several fractions of the pages dirty, plus
// a clean re-collect. Costs that grow with the view are reported per GiB so
// that a --quick or --smoke run's smaller view reads on the same scale.
import { DirtyMethod, DirtyTracker, Memfd, PAGE_SIZE, touchPages } from '../../lib/index';
import { dirtyMethods } from '../../lib/dirty-methods';
import { Interval, median, medianInterval, pageOrders } from './stats';

export const DIRTY_METHOD_LIST: readonly DirtyMethod[] = ['wp-async', 'wp-sync'];
export const DIRTY_FRACTIONS = [0.001, 0.01, 0.05, 0.5] as const;
const GIB = 2 ** 30;
/** The view and the repetitions per method, per run length (odd repetitions: the median is one of them). */
export const DIRTY_SIZES = {
  smoke: { bytes: 16 * 2 ** 20, reps: 3 },
  quick: { bytes: 256 * 2 ** 20, reps: 7 },
  full: { bytes: GIB, reps: 11 },
} as const;

export interface DirtyCollect {
  fraction: number;
  /** Pages written before each collect. */
  pages: number;
  /** What each repetition's collect reported: always `pages` (a different count fails the run). */
  counts: number[];
  /** collect({ reset: false }): the walk without the re-protection and its TLB flushes. */
  lookMsPerGiB: Interval;
  msPerGiB: Interval;
}

export interface DirtyRow {
  id: string;
  method: DirtyMethod;
  available: boolean;
  /** Why the kernel lacks the method. */
  reason?: string;
  bytes: number;
  reps: number;
  /** Random pages written per repetition to time first writes. */
  writeSample: number;
  protectMsPerGiB?: Interval;
  /** Medians of each repetition's per-page latencies, and their median over the repetitions. */
  trackedFirstWriteNs?: Interval;
  trackedDirtyWriteNs?: Interval;
  untrackedFirstWriteNs?: Interval;
  untrackedWarmWriteNs?: Interval;
  /** Tracked first write over the untracked first write to the same pages, repetition by repetition. */
  firstWriteVsUntracked?: Interval;
  collect?: DirtyCollect[];
  cleanRecollectMsPerGiB?: Interval;
  stopMsPerGiB?: Interval;
}

const elapsedMs = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

/** `count` distinct pages of `pages`, chosen at random (seeded), ascending. */
function randomPages(pages: number, count: number, seed: number): Uint32Array {
  return pageOrders(pages, 1, 'random', seed)[0].subarray(0, count).sort();
}

function countMismatch(method: DirtyMethod, what: string, got: number, wrote: number): Error {
  return new Error(`dirty/${method}: ${what} reported ${got} dirty pages, ${wrote} were written`);
}

/** One method measured over `reps` repetitions on a view of `bytes`; a method the kernel lacks is a row with the reason. */
export async function measureDirty(method: DirtyMethod, bytes: number, reps: number, seed: number): Promise<DirtyRow> {
  const pages = bytes / PAGE_SIZE;
  const writeSample = Math.min(4096, pages / 4);
  const row: DirtyRow = { id: `dirty/${method}`, method, available: false, bytes, reps: 0, writeSample };
  const support = dirtyMethods()[method];
  if (!support.available) return { ...row, reason: support.reason };

  using mem = Memfd.create(bytes, { name: 'bench-dirty', allocate: true });
  using view = mem.map();
  // Every page present, mapped and written once, as in a running guest: the
  // first write after populating costs microseconds of its own here, which is
  // not tracking's cost and must not be counted as it.
  view.advise('populateWrite', 0, bytes);
  await touchPages(view, Uint32Array.from({ length: pages }, (_, i) => i), { write: 1 });

  const perGiB = GIB / bytes;
  const protect: number[] = [];
  const tracked: number[] = [];
  const trackedDirty: number[] = [];
  const untracked: number[] = [];
  const untrackedWarm: number[] = [];
  const clean: number[] = [];
  const stop: number[] = [];
  const collects = DIRTY_FRACTIONS.map((fraction) => ({ fraction, pages: Math.max(1, Math.round(pages * fraction)), counts: [] as number[], look: [] as number[], ms: [] as number[] }));
  for (let rep = 0; rep < reps; rep++) {
    using tracker = new DirtyTracker([view], { method });
    let t0 = process.hrtime.bigint();
    tracker.start();
    protect.push(elapsedMs(t0) * perGiB);

    // The same pages both ways, which goes first alternating repetition by
    // repetition. The untracked side is a fresh mapping of the same memfd:
    // its first write is a minor fault on a page-cache page, then warm.
    const sample = randomPages(pages, writeSample, seed + rep);
    const writeTracked = async () => {
      tracked.push(median((await touchPages(view, sample, { write: 2 })).latencyNs));
      trackedDirty.push(median((await touchPages(view, sample, { write: 3 })).latencyNs));
    };
    const writeUntracked = async () => {
      using fresh = mem.map();
      untracked.push(median((await touchPages(fresh, sample, { write: 4 })).latencyNs));
      untrackedWarm.push(median((await touchPages(fresh, sample, { write: 5 })).latencyNs));
    };
    if (rep % 2) {
      await writeUntracked();
      await writeTracked();
    } else {
      await writeTracked();
      await writeUntracked();
    }
    const sampled = tracker.collect().count;
    if (sampled !== writeSample) throw countMismatch(method, 'collect after the timed writes', sampled, writeSample);

    for (const [i, c] of collects.entries()) {
      await touchPages(view, randomPages(pages, c.pages, seed + 1000 * (i + 1) + rep), { write: 6 });
      t0 = process.hrtime.bigint();
      const looked = tracker.collect({ reset: false }).count;
      c.look.push(elapsedMs(t0) * perGiB);
      t0 = process.hrtime.bigint();
      const got = tracker.collect().count;
      c.ms.push(elapsedMs(t0) * perGiB);
      if (looked !== c.pages) throw countMismatch(method, `collect({ reset: false }) at ${c.fraction * 100}%`, looked, c.pages);
      if (got !== c.pages) throw countMismatch(method, `collect at ${c.fraction * 100}%`, got, c.pages);
      c.counts.push(got);
    }
    t0 = process.hrtime.bigint();
    const leftover = tracker.collect().count;
    clean.push(elapsedMs(t0) * perGiB);
    if (leftover !== 0) throw countMismatch(method, 'a clean re-collect', leftover, 0);
    t0 = process.hrtime.bigint();
    tracker.stop();
    stop.push(elapsedMs(t0) * perGiB);
  }
  return {
    ...row,
    available: true,
    reps,
    protectMsPerGiB: medianInterval(protect),
    trackedFirstWriteNs: medianInterval(tracked),
    trackedDirtyWriteNs: medianInterval(trackedDirty),
    untrackedFirstWriteNs: medianInterval(untracked),
    untrackedWarmWriteNs: medianInterval(untrackedWarm),
    firstWriteVsUntracked: medianInterval(tracked.map((t, i) => t / untracked[i])),
    collect: collects.map((c) => ({ fraction: c.fraction, pages: c.pages, counts: c.counts, lookMsPerGiB: medianInterval(c.look), msPerGiB: medianInterval(c.ms) })),
    cleanRecollectMsPerGiB: medianInterval(clean),
    stopMsPerGiB: medianInterval(stop),
  };
}

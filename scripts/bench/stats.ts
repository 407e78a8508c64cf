// Latency summaries from real histograms (hdr-histogram-js), in nanoseconds.
import { build } from 'hdr-histogram-js';

export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  /** [latencyNs, percentile] points of the CDF, for the charts. */
  cdf: [number, number][];
}

const CDF_PERCENTILES = [
  0, 1, 2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 92.5, 95, 96, 97, 98, 99, 99.5, 99.9, 99.95, 99.99, 100,
];

export function summarize(samples: Iterable<ArrayLike<number>>): LatencySummary {
  // Three significant digits up to 100 s: enough for a fault stuck behind a
  // descheduled handler on a busy VM.
  const histogram = build({ lowestDiscernibleValue: 1, highestTrackableValue: 100_000_000_000, numberOfSignificantValueDigits: 3 });
  for (const list of samples)
    for (let i = 0; i < list.length; i++) histogram.recordValue(Math.max(1, Math.round(list[i])));
  const count = histogram.totalCount;
  const at = (p: number) => (count ? histogram.getValueAtPercentile(p) : 0);
  const summary: LatencySummary = {
    count,
    mean: count ? histogram.mean : 0,
    p50: at(50),
    p90: at(90),
    p99: at(99),
    p999: at(99.9),
    max: count ? histogram.maxValue : 0,
    cdf: CDF_PERCENTILES.map((p) => [p === 0 ? (count ? histogram.minNonZeroValue : 0) : at(p), p]),
  };
  histogram.destroy();
  return summary;
}

/** Deterministic PRNG (mulberry32) so that random page orders repeat run to run. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The page orders of `threads` touchers over `pages` pages: disjoint, each page touched once. */
export function pageOrders(pages: number, threads: number, order: 'seq' | 'random', seed: number): Uint32Array[] {
  const all = Uint32Array.from({ length: pages }, (_, i) => i);
  if (order === 'random') {
    const rand = prng(seed);
    for (let i = all.length - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1));
      [all[i], all[j]] = [all[j], all[i]];
    }
  }
  // Contiguous shares: a sequential toucher stays sequential within its share.
  const per = Math.ceil(pages / threads);
  return Array.from({ length: threads }, (_, t) => all.slice(t * per, Math.min(pages, (t + 1) * per)));
}

// ---------------------------------------------------------------------------
// Intervals and verdicts. Every ratio the benchmark reports comes from
// repetition pairs (the library's row and its reference, measured back to
// back in one process on the same pages and placement); the 95% interval is
// a percentile bootstrap over those pairs, resampled whole, with a fixed seed.

/** A ratio (or other statistic) with its 95% bootstrap interval. */
export interface Interval {
  value: number;
  lo: number;
  hi: number;
  /** Repetition pairs it was computed from. */
  n: number;
}

export type Verdict = 'met' | 'missed' | 'inconclusive';

/** Resamples the bootstrap draws per interval. */
export const BOOTSTRAP_RESAMPLES = 2000;
/** Seed of every bootstrap (printed with the results). */
export const BOOTSTRAP_SEED = 12;

/** Fewer repetition pairs than this give no verdict (inconclusive), whatever the interval says. */
export const MIN_PAIRS = 5;

/** Linear-interpolation quantile (type 7) of an ascending array. */
export function quantileSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

export function median(values: ArrayLike<number>): number {
  return quantileSorted(Float64Array.from(values).sort(), 0.5);
}

/**
 * Percentile bootstrap: `stat` of `n` items (given as the indexes of a
 * resample, with repetition), `resamples` times; the interval is the
 * 2.5th-97.5th percentile of those, the value `stat` of the items themselves.
 */
export function bootstrap(n: number, stat: (indexes: Uint32Array) => number, seed = BOOTSTRAP_SEED, resamples = BOOTSTRAP_RESAMPLES): Interval {
  const all = Uint32Array.from({ length: n }, (_, i) => i);
  const value = stat(all);
  if (n < 2) return { value, lo: value, hi: value, n };
  const rand = prng(seed);
  const draws = new Float64Array(resamples);
  const pick = new Uint32Array(n);
  for (let b = 0; b < resamples; b++) {
    for (let i = 0; i < n; i++) pick[i] = Math.floor(rand() * n);
    draws[b] = stat(pick);
  }
  draws.sort();
  return { value, lo: quantileSorted(draws, 0.025), hi: quantileSorted(draws, 0.975), n };
}

/** The median of per-pair ratios, with its bootstrap interval. */
export function medianInterval(ratios: ArrayLike<number>, seed = BOOTSTRAP_SEED): Interval {
  const values = Float64Array.from(ratios);
  return bootstrap(values.length, (idx) => median(Array.from(idx, (i) => values[i])), seed);
}

/**
 * Upper quantile `q` (nearest rank) of the union of the repetitions listed in
 * `indexes` (with repetition), each repetition sorted ascending. Only the top
 * of each repetition can hold it, so only that is merged: cheap enough to
 * bootstrap p99 and p99.9 over thousands of samples.
 */
export function pooledQuantile(reps: Float64Array[], indexes: ArrayLike<number>, q: number): number {
  let total = 0;
  for (let i = 0; i < indexes.length; i++) total += reps[indexes[i]].length;
  if (total === 0) return NaN;
  const rank = Math.max(1, Math.ceil(q * total)); // 1-based, ascending
  const fromTop = total - rank + 1; // 1-based, descending
  const top: number[] = [];
  for (let i = 0; i < indexes.length; i++) {
    const r = reps[indexes[i]];
    for (let k = r.length - 1; k >= Math.max(0, r.length - fromTop); k--) top.push(r[k]);
  }
  top.sort((a, b) => b - a);
  return top[fromTop - 1];
}

/** Pooled quantile `q` of the library's repetitions over the reference's, pairs resampled whole. */
export function pooledRatioInterval(lib: Float64Array[], ref: Float64Array[], q: number, seed = BOOTSTRAP_SEED): Interval {
  const sortedLib = lib.map((r) => Float64Array.from(r).sort());
  const sortedRef = ref.map((r) => Float64Array.from(r).sort());
  return bootstrap(sortedLib.length, (idx) => pooledQuantile(sortedLib, idx, q) / pooledQuantile(sortedRef, idx, q), seed);
}

/**
 * The verdict on a target `limit` (an upper bound, or a lower one with
 * atLeast): met when the whole interval is on the right side of it, missed
 * when the whole interval is on the wrong side, inconclusive otherwise.
 */
export function verdict(interval: Pick<Interval, 'lo' | 'hi'> & { n?: number }, limit: number, atLeast = false): Verdict {
  // A percentile bootstrap over very few pairs is too narrow to trust.
  if (interval.n !== undefined && interval.n < MIN_PAIRS) return 'inconclusive';
  if (atLeast) return interval.lo >= limit ? 'met' : interval.hi < limit ? 'missed' : 'inconclusive';
  return interval.hi <= limit ? 'met' : interval.lo > limit ? 'missed' : 'inconclusive';
}

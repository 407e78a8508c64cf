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

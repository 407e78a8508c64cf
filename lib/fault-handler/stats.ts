// The handler's counters: the engine's (native/engine.h, read through the
// layout it exports) merged with the policy's own, and latency percentiles
// computed from the engine's histogram buckets.
import { native } from '../native';
import type { FaultHandlerStats, LatencyStats } from './types';

const LAYOUT = native.engineLayout;
const STAT = LAYOUT.stats;
const LINEAR = LAYOUT.buckets.linear;
const BUCKETS = LAYOUT.buckets.linear + LAYOUT.buckets.log;

/** Counters the policy keeps itself (the engine cannot see fetches or events' consumers). */
export interface PolicyCounts {
  fetched: number;
  duplicatesMerged: number;
  /** Faults the engine handed over as absent whose page a fetch made present before the policy looked. */
  presentOnArrival: number;
  errors: number;
  zeroFilled: number;
  remove: number;
  unmap: number;
  remap: number;
  fork: number;
}

export function newPolicyCounts(): PolicyCounts {
  return { fetched: 0, duplicatesMerged: 0, presentOnArrival: 0, errors: 0, zeroFilled: 0, remove: 0, unmap: 0, remap: 0, fork: 0 };
}

/** Lowest latency (µs) bucket `b` holds: one µs per bucket, then powers of two. */
function bucketLow(b: number): number {
  return b < LINEAR ? b : LINEAR * 2 ** (b - LINEAR);
}

/** A representative value for bucket `b`: exact below LINEAR, the middle of a log bucket above. */
function bucketValue(b: number): number {
  return b < LINEAR ? Math.max(1, b) : bucketLow(b) * 1.5;
}

export function latencyFromBuckets(raw: Float64Array, base: number): LatencyStats {
  let count = 0;
  let sum = 0;
  let min = -1;
  let max = 0;
  for (let b = 0; b < BUCKETS; b++) {
    const n = raw[base + b];
    if (n === 0) continue;
    count += n;
    sum += n * bucketValue(b);
    if (min < 0) min = bucketValue(b);
    max = bucketValue(b);
  }
  const at = (percentile: number): number => {
    if (count === 0) return 0;
    const rank = Math.ceil((percentile / 100) * count);
    let seen = 0;
    for (let b = 0; b < BUCKETS; b++) {
      seen += raw[base + b];
      if (seen >= rank) return bucketValue(b);
    }
    return max;
  };
  return {
    count, min: count ? min : 0, mean: count ? sum / count : 0,
    p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max,
  };
}

export function handlerStats(engine: Float64Array, counts: PolicyCounts, nativeMode: boolean): FaultHandlerStats {
  return {
    faults: engine[STAT.faults],
    resolved: engine[STAT.resolved],
    fetched: counts.fetched,
    duplicatesMerged: counts.duplicatesMerged,
    alreadyPresent: engine[STAT.alreadyPresent] + counts.presentOnArrival,
    mapAheadPages: engine[STAT.mapAheadPages],
    errors: counts.errors,
    zeroFilled: counts.zeroFilled,
    poisoned: engine[STAT.poisoned],
    nativeResolved: nativeMode ? engine[STAT.alreadyPresent] : 0,
    loopThreadFaults: engine[STAT.loopThreadFaults],
    resolverCpuUs: engine[STAT.resolverCpuNs] / 1000,
    events: { remove: counts.remove, unmap: counts.unmap, remap: counts.remap, fork: counts.fork },
    untracked: engine[STAT.untracked],
    retriedAfterEvents: engine[STAT.deferrals],
    latencyUs: latencyFromBuckets(engine, LAYOUT.statCount),
  };
}

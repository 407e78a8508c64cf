// The restore benchmark's figures from its rounds: one row per scenario
// (medians over the rounds, and each round's time and faults kept for the
// ratios), the ratios of rows measured in the same round with their 95%
// intervals, and the targets judged on them. Every ratio and target is a
// line of analyse(): a new scenario's comparison is one more line there.
import { Target, makeTarget } from './analysis';
import { EAGER_MODES, NOT_AVAILABLE, RECORDING_OF, RESTORE_LABEL, RestoreEnv, RestoreMode, RestoreRep, prefetchQuality } from './restore';
import { Interval, median, medianInterval } from './stats';

export interface RestoreRow {
  mode: RestoreMode;
  label: string;
  available: boolean;
  reps: number;
  /** Medians over the repetitions. */
  timeMs: number;
  guestMs: number;
  beforeGoMs: number;
  faults: number;
  demandFetches: number;
  prefetched: number;
  bytesMoved: number;
  /** Of the recording this row replays, against the pages the guest touched. */
  precision: number | null;
  recall: number | null;
  digestOk: boolean;
  allResolved: boolean;
  /** Per round, in round order (null: not measured that round). */
  timeNs: (number | null)[];
  faultsByRound: (number | null)[];
  note?: string;
  error?: string;
}

export interface RestoreRatio {
  name: string;
  /** numerator / denominator rows. */
  of: [RestoreMode, RestoreMode];
  metric: 'time' | 'faults';
  interval: Interval | null;
}

export function rowOf(mode: RestoreMode, list: (RestoreRep | null)[], env: RestoreEnv, error: string | undefined): RestoreRow {
  const got = list.filter((r): r is RestoreRep => r !== null);
  const med = (f: (r: RestoreRep) => number) => (got.length ? median(got.map(f)) : 0);
  const rec = RECORDING_OF[mode];
  const recording = rec ? env.recordings.get(rec) : undefined;
  const q = recording ? prefetchQuality(recording.pages, env.trace.order) : EAGER_MODES.includes(mode) ? { precision: env.trace.order.length / env.spec.pages, recall: 1 } : null;
  const notes = [...new Set(got.map((r) => r.note).filter(Boolean))];
  const available = !(error ?? '').startsWith(NOT_AVAILABLE);
  return {
    mode, label: RESTORE_LABEL[mode], available, reps: got.length,
    timeMs: med((r) => r.timeNs) / 1e6, guestMs: med((r) => r.guestNs) / 1e6, beforeGoMs: med((r) => r.beforeGoNs) / 1e6,
    faults: med((r) => r.faults), demandFetches: med((r) => r.demandFetches), prefetched: med((r) => r.prefetched), bytesMoved: med((r) => r.bytesMoved),
    precision: q ? q.precision : null, recall: q ? q.recall : null,
    digestOk: got.length > 0 && got.every((r) => r.digestOk),
    allResolved: got.length > 0 && !error && got.every((r) => r.allResolved),
    timeNs: list.map((r) => (r ? r.timeNs : null)), faultsByRound: list.map((r) => (r ? r.faults : null)),
    ...(notes.length ? { note: notes.join('; ') } : {}), ...(error ? { error } : {}),
  };
}

/** Per-round ratio of two rows (same round: measured back to back), median with its bootstrap interval. */
function pairRatio(rows: RestoreRow[], a: RestoreMode, b: RestoreMode, metric: 'time' | 'faults'): Interval | null {
  const ra = rows.find((r) => r.mode === a);
  const rb = rows.find((r) => r.mode === b);
  if (!ra || !rb || ra.error || rb.error) return null;
  const pick = (r: RestoreRow) => (metric === 'time' ? r.timeNs : r.faultsByRound);
  const xs: number[] = [];
  pick(ra).forEach((v, i) => {
    const w = pick(rb)[i];
    // A denominator of no faults at all: the share is 0 when the numerator has none either.
    if (v !== null && w !== null && w > 0) xs.push(v / w);
  });
  return xs.length ? medianInterval(xs) : null;
}

export function analyse(rows: RestoreRow[]): { ratios: RestoreRatio[]; targets: Target[] } {
  const ratio = (name: string, a: RestoreMode, b: RestoreMode, metric: 'time' | 'faults' = 'time'): RestoreRatio => ({ name, of: [a, b], metric, interval: pairRatio(rows, a, b, metric) });
  const ratios = [
    ratio('on demand over the floor: library on-demand time / no-userfaultfd time', 'on-demand', 'floor'),
    ratio('replay over the floor: library replay time / no-userfaultfd time (matching recording)', 'replay', 'floor'),
    ratio('library replay time / C replay time (matching recording)', 'replay', 'c-replay'),
    ratio('library replay time / C replay time (recording of another run)', 'replay-varying', 'c-replay-varying'),
    ratio('library on-demand time / C on-demand time', 'on-demand', 'c-on-demand'),
    ratio('replay speedup: on-demand time / replay time (matching recording)', 'on-demand', 'replay'),
    ratio('replay speedup: on-demand time / replay time (recording of another run)', 'on-demand', 'replay-varying'),
    ratio('C replay speedup: C on-demand time / C replay time (matching recording)', 'c-on-demand', 'c-replay'),
    ratio('C replay speedup: C on-demand time / C replay time (recording of another run)', 'c-on-demand', 'c-replay-varying'),
    ratio('demand faults left: replay faults / on-demand faults (matching recording)', 'replay', 'on-demand', 'faults'),
    ratio('demand faults left: replay faults / on-demand faults (recording of another run)', 'replay-varying', 'on-demand', 'faults'),
    ratio('replay while the guest runs: on-demand time / replay time (matching recording)', 'on-demand', 'replay-concurrent'),
    ratio('demand faults left: replay while the guest runs / on-demand (matching recording)', 'replay-concurrent', 'on-demand', 'faults'),
    ratio('replay vs eager: eager time / replay time (matching recording)', 'eager', 'replay'),
    ratio('recording overhead: on-demand time with recording / without', 'on-demand+record', 'on-demand'),
    ratio('mismatched recording: replay while the guest runs (another program\'s recording) / on-demand time', 'replay-mismatch', 'on-demand'),
    ratio('one-fd: library replay time / C replay time (matching recording)', 'fc-replay', 'c-fc-replay'),
    ratio('one-fd: library replay time / C replay time (recording of another run)', 'fc-replay-varying', 'c-fc-replay-varying'),
    ratio('one-fd: library on-demand time / C on-demand time', 'fc-on-demand', 'c-fc-on-demand'),
    ratio('one-fd replay speedup: on-demand time / replay time (matching recording)', 'fc-on-demand', 'fc-replay'),
    ratio('one-fd replay speedup: on-demand time / replay time (recording of another run)', 'fc-on-demand', 'fc-replay-varying'),
    ratio('one-fd C replay speedup: C on-demand time / C replay time (matching recording)', 'c-fc-on-demand', 'c-fc-replay'),
    ratio('one-fd demand faults left: replay faults / on-demand faults (matching recording)', 'fc-replay', 'fc-on-demand', 'faults'),
    ratio('one-fd replay vs eager: eager time / replay time (matching recording)', 'fc-eager', 'fc-replay'),
    ratio('one-fd vs memfd: library one-fd on-demand time / library on-demand time', 'fc-on-demand', 'on-demand'),
    ratio('three-fd replay speedup: on-demand time / replay time (matching recording)', 'fc3-on-demand', 'fc3-replay'),
    ratio('three-fd demand faults left: replay faults / on-demand faults (matching recording)', 'fc3-replay', 'fc3-on-demand', 'faults'),
    ratio('three-fd vs memfd: library three-fd on-demand time / library on-demand time', 'fc3-on-demand', 'on-demand'),
    ratio('migration replay speedup: on-demand time / replay time (matching recording)', 'mig-on-demand', 'mig-replay'),
    ratio('migration replay speedup: on-demand time / replay time (recording of another run)', 'mig-on-demand', 'mig-replay-varying'),
    ratio('migration demand faults left: replay faults / on-demand faults (matching recording)', 'mig-replay', 'mig-on-demand', 'faults'),
    ratio('migration vs local image: migration on-demand time / library on-demand time', 'mig-on-demand', 'on-demand'),
  ];
  const find = (a: RestoreMode, b: RestoreMode, metric = 'time') => ratios.find((r) => r.of[0] === a && r.of[1] === b && r.metric === metric)!;
  const check = (r: RestoreRatio) => ({ row: `${r.of[0]}/${r.of[1]}`, interval: r.interval });
  const why = (...modes: RestoreMode[]) => {
    const bad = rows.filter((r) => modes.includes(r.mode) && r.error);
    return bad.length ? bad.map((r) => `${r.mode}: ${r.error}`).join('; ') : undefined;
  };
  const targets = [
    makeTarget('library replay time vs C replay', 1.5, false, [check(find('replay', 'c-replay')), check(find('replay-varying', 'c-replay-varying'))], why('replay', 'replay-varying')),
    makeTarget('replay speedup over on-demand, matching recording', 5, true, [check(find('on-demand', 'replay'))], why('replay', 'on-demand')),
    makeTarget('replay speedup over on-demand, recording of another run (varying part)', 3, true, [check(find('on-demand', 'replay-varying'))], why('replay-varying', 'on-demand')),
    makeTarget('demand faults left by replay, matching recording (cut >= 90%)', 0.1, false, [check(find('replay', 'on-demand', 'faults'))], why('replay', 'on-demand')),
    makeTarget('recording overhead on on-demand restore time', 1.05, false, [check(find('on-demand+record', 'on-demand'))], why('on-demand+record')),
    makeTarget('replay of another program\'s recording (while the guest runs) vs on-demand', 1.1, false, [check(find('replay-mismatch', 'on-demand'))], why('replay-mismatch')),
    makeTarget('replay beats an eager copy of the whole image (the recording holds 12% of its pages)', 1, true,
      [check(find('eager', 'replay')), check(find('fc-eager', 'fc-replay'))], why('eager', 'replay', 'fc-eager', 'fc-replay')),
    makeTarget('one-fd: library replay time vs C replay', 1.5, false, [check(find('fc-replay', 'c-fc-replay')), check(find('fc-replay-varying', 'c-fc-replay-varying'))], why('fc-replay', 'fc-replay-varying')),
    makeTarget('one-fd replay speedup over one-fd on-demand, matching recording', 5, true, [check(find('fc-on-demand', 'fc-replay'))], why('fc-replay', 'fc-on-demand')),
  ];
  return { ratios, targets };
}

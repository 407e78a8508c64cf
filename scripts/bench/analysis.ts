// From repetitions to rows, ratios with intervals, target verdicts and
// comparisons with an earlier run. Pure functions of measured numbers, so
// the test can feed them synthetic samples.
import type { DirtyRow } from './dirty';
import { Cell, MODE_LABEL, Mode, Rep } from './scenarios';
import { Interval, LatencySummary, Verdict, median, medianInterval, pooledRatioInterval, summarize, verdict } from './stats';

/** A row's ratios over a reference row of the same cell, from repetition pairs. */
export interface RowRatios {
  reference: Mode;
  /** Pairs the ratios come from. */
  pairs: number;
  /** Unpinned: pairs left out because the two sides landed on different placements (one co-located, one split). */
  unmatched: number;
  p50: Interval | null;
  p99: Interval | null;
  p999: Interval | null;
  /** Faults per second over the reference's (higher is better). */
  throughput: Interval | null;
  /** Wall time per page touched over the reference's (lower is better). */
  perPage: Interval | null;
}

export interface RowResult {
  id: string;
  cell: string;
  kind: Cell['kind'];
  mode: Mode;
  page: Cell['page'];
  placement: Cell['placement'];
  order: Cell['order'];
  threads: number;
  handlers: number;
  pageSize: number;
  /** Pages touched per repetition. */
  pagesPerRep: number;
  reps: number;
  faults: number;
  touched: number;
  messages: number;
  resolved: number;
  checksumOk: boolean;
  /** Every repetition: touched == faults, checksums right, resolved >= faults. */
  allResolved: boolean;
  /** All repetitions pooled. */
  latency: LatencySummary;
  /** Medians over the repetitions. */
  faultsPerSec: number;
  nsPerPage: number;
  handlerCpuUsPerFault: number | null;
  /** Mean fraction of faults whose toucher shared the CPU of the handler (null: no handler). */
  colocated: number | null;
  /** Repetitions during which the library's handler thread changed CPU. */
  handlerMoved: number;
  handlerUs?: { p50: number; p99: number };
  /** Event-loop rows: collections of the handler's isolate while it served, all repetitions together. */
  handlerGc?: { collections: number; perThousandFaults: number; pauseMs: number; maxPauseMs: number };
  ratios: RowRatios | null;
  /** Spinning rows: against the spinning C reference. */
  vsSpin?: RowRatios | null;
  /** Unpinned rows: p50 ×C over the pairs where both sides were co-located, and where both were split. */
  byColocation?: { colocated: { pairs: number; p50: Interval | null }; split: { pairs: number; p50: Interval | null } };
  /** Wall time of the whole cell (all its rows, every repetition). */
  cellMs?: number;
  note?: string;
  error?: string;
}

export const rowId = (cell: Pick<Cell, 'kind' | 'page' | 'placement' | 'order' | 'threads' | 'handlers'>, mode: Mode): string =>
  `${cell.page}/${cell.kind === 'scan' ? 'scan/' : ''}${mode}/${cell.placement}/${cell.order}/${cell.threads}t${cell.handlers > 1 ? `/${cell.handlers}h` : ''}`;

const p50Of = (r: Rep) => quantile(r.latencyNs, 0.5);
function quantile(lists: Float64Array[], q: number): number {
  const all = new Float64Array(lists.reduce((n, l) => n + l.length, 0));
  let o = 0;
  for (const l of lists) {
    all.set(l, o);
    o += l.length;
  }
  all.sort();
  return all.length ? all[Math.min(all.length - 1, Math.max(0, Math.ceil(q * all.length) - 1))] : NaN;
}
const flat = (r: Rep) => {
  const all = new Float64Array(r.touched);
  let o = 0;
  for (const l of r.latencyNs) {
    all.set(l, o);
    o += l.length;
  }
  return all;
};

/** Co-located (true), split (false), or no handler (null): a repetition's placement as its faults saw it. */
export const placementClass = (r: Rep): boolean | null => (r.colocated === null ? null : r.colocated >= 0.5);

/**
 * Ratios of `lib` over `ref`, repetition i against repetition i (measured
 * in the same round). Pairs whose sides landed on different placements
 * (unpinned: one co-located, the other split) are left out.
 */
export function pairRatios(lib: Rep[], ref: Rep[], reference: Mode, seed?: number): RowRatios {
  const pairs: [Rep, Rep][] = [];
  let unmatched = 0;
  for (let i = 0; i < Math.min(lib.length, ref.length); i++) {
    const a = placementClass(lib[i]);
    const b = placementClass(ref[i]);
    if (a !== null && b !== null && a !== b) unmatched++;
    else pairs.push([lib[i], ref[i]]);
  }
  if (!pairs.length) return { reference, pairs: 0, unmatched, p50: null, p99: null, p999: null, throughput: null, perPage: null };
  const perPair = (f: (l: Rep, r: Rep) => number) => medianInterval(pairs.map(([l, r]) => f(l, r)), seed);
  const libFlat = pairs.map(([l]) => flat(l));
  const refFlat = pairs.map(([, r]) => flat(r));
  return {
    reference,
    pairs: pairs.length,
    unmatched,
    p50: perPair((l, r) => p50Of(l) / p50Of(r)),
    p99: pooledRatioInterval(libFlat, refFlat, 0.99, seed),
    p999: pooledRatioInterval(libFlat, refFlat, 0.999, seed),
    throughput: perPair((l, r) => (l.faults / l.wallNs) / (r.faults / r.wallNs)),
    perPage: perPair((l, r) => (l.wallNs / l.faults) / (r.wallNs / r.faults)),
  };
}

/** The rows of one cell from the repetitions of each of its modes. */
export function cellRows(cell: Cell, pageSize: number, reps: Map<Mode, Rep[]>, errors: Map<Mode, string>, seed?: number): RowResult[] {
  const ref = reps.get(cell.reference) ?? [];
  return cell.modes.map((mode) => {
    const list = reps.get(mode) ?? [];
    const faults = list.reduce((n, r) => n + r.faults, 0);
    const touched = list.reduce((n, r) => n + r.touched, 0);
    const cpu = list.filter((r) => r.handlerCpuNs !== null).map((r) => r.handlerCpuNs! / 1000 / r.faults);
    const colocated = list.filter((r) => r.colocated !== null).map((r) => r.colocated!);
    const notes = [...new Set(list.map((r) => r.note).filter(Boolean))];
    const withHandler = list.filter((r) => r.handlerUs);
    const withGc = list.filter((r) => r.gc);
    const gcFaults = withGc.reduce((n, r) => n + r.faults, 0);
    const row: RowResult = {
      id: rowId(cell, mode), cell: cell.id, kind: cell.kind, mode, page: cell.page, placement: cell.placement, order: cell.order,
      threads: cell.threads, handlers: cell.handlers, pageSize, pagesPerRep: cell.pages, reps: list.length,
      faults, touched, messages: list.reduce((n, r) => n + r.messages, 0), resolved: list.reduce((n, r) => n + r.resolved, 0),
      checksumOk: list.length > 0 && list.every((r) => r.checksumOk),
      allResolved: list.length > 0 && !errors.has(mode) && list.every((r) => r.checksumOk && r.touched === r.faults && r.resolved >= r.faults),
      latency: summarize(list.flatMap((r) => r.latencyNs)),
      faultsPerSec: list.length ? median(list.map((r) => r.faults / (r.wallNs / 1e9))) : 0,
      nsPerPage: list.length ? median(list.map((r) => r.wallNs / r.faults)) : 0,
      handlerCpuUsPerFault: cpu.length ? median(cpu) : null,
      colocated: colocated.length ? colocated.reduce((a, b) => a + b, 0) / colocated.length : null,
      handlerMoved: list.filter((r) => r.handlerMoved).length,
      ...(withHandler.length ? { handlerUs: { p50: median(withHandler.map((r) => r.handlerUs!.p50)), p99: median(withHandler.map((r) => r.handlerUs!.p99)) } } : {}),
      ...(withGc.length ? {
        handlerGc: {
          collections: withGc.reduce((n, r) => n + r.gc!.count, 0),
          perThousandFaults: gcFaults ? (1000 * withGc.reduce((n, r) => n + r.gc!.count, 0)) / gcFaults : 0,
          pauseMs: withGc.reduce((n, r) => n + r.gc!.ms, 0),
          maxPauseMs: Math.max(...withGc.map((r) => r.gc!.maxMs)),
        },
      } : {}),
      ratios: list.length && ref.length ? pairRatios(list, ref, cell.reference, seed) : null,
      ...(notes.length ? { note: notes.join('; ') } : {}),
      ...(errors.has(mode) ? { error: errors.get(mode) } : {}),
    };
    if (mode === 'native-resolver+spin' && reps.has('c-reference+spin'))
      row.vsSpin = pairRatios(list, reps.get('c-reference+spin')!, 'c-reference+spin', seed);
    if (cell.placement === 'unpinned' && mode !== cell.reference && list.length && ref.length && colocated.length) {
      const subset = (co: boolean) => {
        const idx = list.map((_, i) => i).filter((i) => i < ref.length && placementClass(list[i]) === co && placementClass(ref[i]) === co);
        const r = idx.length ? pairRatios(idx.map((i) => list[i]), idx.map((i) => ref[i]), cell.reference, seed) : null;
        return { pairs: idx.length, p50: r ? r.p50 : null };
      };
      row.byColocation = { colocated: subset(true), split: subset(false) };
    }
    return row;
  });
}

// ---------------------------------------------------------------------------
// Targets

export interface TargetCheck {
  row: string;
  /** Repetition pairs behind the interval. */
  n: number;
  value: number;
  lo: number;
  hi: number;
  verdict: Verdict;
}

export interface Target {
  name: string;
  /** e.g. "<= 1.05x", "<= 5 ms/GiB". */
  target: string;
  limit: number;
  atLeast: boolean;
  /** What the limit and the checks are in: "x" (a ratio) or an absolute unit such as "ms/GiB". */
  unit: string;
  /** One per row the target applies to. */
  checks: TargetCheck[];
  /** missed when any check is, met when all are, else inconclusive; null when nothing was measured. */
  verdict: Verdict | null;
  /** Why nothing was measured. */
  reason?: string;
}

export function makeTarget(name: string, limit: number, atLeast: boolean, checks: { row: string; interval: Interval | null }[], reason?: string, unit = 'x'): Target {
  const list: TargetCheck[] = checks.filter((c) => c.interval).map(({ row, interval }) =>
    ({ row, n: interval!.n, value: interval!.value, lo: interval!.lo, hi: interval!.hi, verdict: verdict(interval!, limit, atLeast) }));
  const overall: Verdict | null = !list.length ? null
    : list.some((c) => c.verdict === 'missed') ? 'missed' : list.every((c) => c.verdict === 'met') ? 'met' : 'inconclusive';
  return { name, target: `${atLeast ? '>=' : '<='} ${limit}${unit === 'x' ? 'x' : ` ${unit}`}`, limit, atLeast, unit, checks: list, verdict: overall, ...(list.length ? {} : { reason: reason ?? 'not measured in this run' }) };
}

const EVENT_LOOP: Mode[] = ['event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];

export interface BulkRatio {
  page: string;
  by: string;
  method: string;
  /** POPULATE_READ time over CONTINUE time, repetition by repetition (higher: CONTINUE faster). */
  vsPopulateRead: Interval | null;
}

export function targets(rows: RowResult[], bulk: BulkRatio[], spinAvailable: boolean, dirty: DirtyRow[] = []): Target[] {
  const pick = (f: (r: RowResult) => boolean) => rows.filter((r) => !r.error && f(r));
  const single = (r: RowResult) => r.kind === 'latency' && r.page === '4k' && r.order === 'seq' && r.threads === 1 && r.handlers === 1;
  const native = pick((r) => r.mode === 'native-resolver' && r.kind === 'latency' && r.page === '4k' && r.threads <= 4 && r.handlers === 1 && (r.order === 'seq' || r.placement === 'unpinned'));
  const loop = pick((r) => EVENT_LOOP.includes(r.mode) && single(r));
  const spin = pick((r) => r.mode === 'native-resolver+spin' && single(r) && r.placement === 'diff');
  const scan = pick((r) => r.mode === 'native-resolver+map-ahead');
  const four = pick((r) => r.mode === 'native-resolver' && r.threads === 4);
  const most = Math.max(0, ...four.map((r) => r.handlers));
  const noSpin = spinAvailable ? undefined : 'the library has no spinUs option yet (issue 12, lib/native)';
  const check = (rs: RowResult[], f: (r: RowResult) => Interval | null | undefined) => rs.map((r) => ({ row: r.id, interval: f(r) ?? null }));
  const libBulk = bulk.filter((b) => b.by === 'library' && b.page === '4k' && b.method === 'continue');
  const wpAsync = dirty.filter((d) => d.method === 'wp-async');
  const noWpAsync = wpAsync.find((d) => !d.available)?.reason;
  // Smaller views (--quick, --smoke) are scaled to 1 GiB: the fixed part of a collect makes that an overestimate.
  const dirtyView = dirty.find((d) => d.available)?.bytes;
  const scaled = dirtyView !== undefined && dirtyView !== 2 ** 30 ? `; ${dirtyView / 2 ** 20} MiB view in this run, scaled to 1 GiB` : '';
  return [
    makeTarget('native resolver p50 vs C (4k, every placement, 1-4 touchers)', 1.05, false, check(native, (r) => r.ratios?.p50)),
    makeTarget('native resolver p99 vs C (4k, every placement, 1-4 touchers)', 1.3, false, check(native, (r) => r.ratios?.p99)),
    makeTarget('event-loop p50 vs C (4k, 1 toucher, every mode and placement)', 1.3, false, check(loop, (r) => r.ratios?.p50)),
    makeTarget('event-loop p99 vs C (4k, 1 toucher, every mode and placement)', 2, false, check(loop, (r) => r.ratios?.p99)),
    makeTarget('spinning native resolver p50 vs blocking C (4k, split placement)', 0.6, false, check(spin, (r) => r.ratios?.p50), noSpin),
    makeTarget('spinning native resolver p50 vs spinning C (4k, split placement)', 1.1, false, check(spin, (r) => r.vsSpin?.p50), noSpin),
    makeTarget(`mapAhead sequential scan: cost per page vs the no-uffd floor with fault-around`, 3, false, check(scan, (r) => r.ratios?.perPage)),
    makeTarget(`aggregate faults/s at 4 touchers vs C with the same handler threads (${most || 1})`, 0.9, true, check(four.filter((r) => r.handlers === most), (r) => r.ratios?.throughput)),
    makeTarget('bulk CONTINUE vs MADV_POPULATE_READ throughput (library, 4k)', 0.8, true, libBulk.map((b) => ({ row: `${b.page}/bulk/continue/${b.by}`, interval: b.vsPopulateRead }))),
    makeTarget('dirty tracking: tracked first write vs untracked first write to the same pages (wp-async)', 10, false,
      wpAsync.map((d) => ({ row: d.id, interval: d.firstWriteVsUntracked ?? null })), noWpAsync),
    makeTarget(`dirty tracking: collect of 1 GiB at 5% dirty (wp-async${scaled})`, 5, false,
      wpAsync.map((d) => ({ row: d.id, interval: d.collect?.find((c) => c.fraction === 0.05)?.msPerGiB ?? null })), noWpAsync, 'ms/GiB'),
  ];
}

// ---------------------------------------------------------------------------
// --compare

export interface Delta {
  row: string;
  metric: 'p50' | 'p99' | 'p999' | 'throughput';
  old: Interval;
  now: Interval;
  /** now / old - 1 of the values. */
  change: number;
  /** worse/better: the two intervals do not overlap; else same within noise. */
  call: 'worse' | 'better' | 'within noise';
}

const HIGHER_IS_BETTER = { p50: false, p99: false, p999: false, throughput: true } as const;

/** Row by row, metric by metric: the ratio now against the ratio of an earlier run, with both intervals. */
export function compareRuns(now: { rows: RowResult[] }, old: { rows?: RowResult[] }): Delta[] {
  const before = new Map((old.rows ?? []).map((r) => [r.id, r]));
  const out: Delta[] = [];
  for (const r of now.rows) {
    const o = before.get(r.id);
    if (!o || !r.ratios || !o.ratios) continue;
    for (const metric of ['p50', 'p99', 'p999', 'throughput'] as const) {
      const a = o.ratios[metric];
      const b = r.ratios[metric];
      if (!a || !b) continue;
      const up = b.lo > a.hi;
      const down = b.hi < a.lo;
      const better = HIGHER_IS_BETTER[metric] ? up : down;
      const worse = HIGHER_IS_BETTER[metric] ? down : up;
      out.push({ row: r.id, metric, old: a, now: b, change: b.value / a.value - 1, call: worse ? 'worse' : better ? 'better' : 'within noise' });
    }
  }
  return out;
}

export const modeLabel = (m: Mode) => MODE_LABEL[m];

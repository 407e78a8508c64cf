// `npm run bench:restore`: restoring a snapshot image into a guest process
// on demand, by replaying a recorded working set, and by an eager copy,
// served by the library and by a C reference page server measured
// interleaved with it in the same run: into a memfd view (MINOR, the
// FaultHandler), into anonymous memory (Firecracker's one-fd backend, the
// FirecrackerPageServer), and by post-copy migration over loopback. See
// docs/working-set.md.
//
//   npm run bench:restore -- [--quick | --smoke] [--json FILE] [--markdown [FILE]] [--docs] [--check] [--seed N] [--size MiB] [--reps N]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { PAGE_SIZE, probe } from '../lib/index';
import { readWorkingSet } from '../lib/working-set';
import { Target, makeTarget } from './bench/analysis';
import { bench } from './bench/native';
import { replaceBetweenMarkers, writeFileAtomic } from './bench/output';
import { Machine, Table, interval, machineLine, renderMarkdown, renderText, targetLines } from './bench/report';
import {
  EAGER_MODES, NOT_AVAILABLE, RECORDING_OF, RESTORE_LABEL, RESTORE_MODES, Recording, RecordingName, RestoreEnv, RestoreMode, RestoreRep, prefetchQuality, probeRestoreLibrary, randomImage, runRestore,
} from './bench/restore';
import { startSource } from './bench/restore-migration';
import { TraceSpec, restoreTrace } from './bench/restore-trace';
import { BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, Interval, median, medianInterval } from './bench/stats';

const USAGE = [
  'usage: npm run bench:restore -- [--quick | --smoke] [--json FILE] [--markdown [FILE]] [--docs] [--check] [--seed N] [--size MiB] [--reps N]',
  '  (default)        1 GiB image, 11 interleaved rounds of every scenario',
  '  --quick          256 MiB image, 7 rounds (a few minutes from a fresh clone): a smoke test, not the figures to quote',
  '  --smoke          16 MiB image, 3 rounds: checks that every scenario restores the right bytes (the test runs it)',
  '  --json FILE      every figure, intervals, machine facts and verdicts (rewritten after each round)',
  '  --markdown       print the tables as markdown; --markdown FILE writes them to FILE',
  '  --docs           a default run only: write the tables into docs/working-set.md (## Restore benchmark)',
  '  --check          exit 1 when a target is missed (its whole interval on the wrong side)',
  '  --seed N         seed of the working set (default 1); the run\'s varying part uses N+1',
  '  --size MiB       image size instead of the run length\'s',
  '  --reps N         rounds instead of the run length\'s',
  '',
].join('\n');

const argv = process.argv.slice(2).flatMap((a, i, all) =>
  a === '--markdown' && (all[i + 1] === undefined || all[i + 1].startsWith('-')) ? ['--markdown=-'] : [a]);
let parsed;
try {
  parsed = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      smoke: { type: 'boolean', default: false },
      json: { type: 'string' },
      markdown: { type: 'string' },
      docs: { type: 'boolean', default: false },
      check: { type: 'boolean', default: false },
      seed: { type: 'string', default: '1' },
      size: { type: 'string' },
      reps: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  process.stderr.write(`bench:restore: ${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
const args = parsed.values;
if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

const SIZES = { smoke: { mib: 16, reps: 3 }, quick: { mib: 256, reps: 7 }, full: { mib: 1024, reps: 11 } } as const;
const base = args.smoke ? SIZES.smoke : args.quick ? SIZES.quick : SIZES.full;
const positive = (name: string, text: string | undefined, fallback: number) => {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`bench:restore: --${name} must be a positive integer, got ${text}\n`);
    process.exit(2);
  }
  return n;
};
const imageMiB = positive('size', args.size, base.mib);
const reps = positive('reps', args.reps, base.reps);
const seed = Number(args.seed);
/** Working set and varying part, as shares of the image's pages; touchers = vCPUs. */
const TRACE = { fixed: 0.10, varying: 0.02, touchers: 2 };
const HANDLER_MODE = 'event-loop' as const;

const QUICK_NOTE = 'QUICK RUN = SMOKE TEST, NOT A MEASUREMENT: a smaller image and fewer rounds, on a machine that may be busy; the figures to quote come from a default run (npm run bench:restore).';

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

export interface RestoreReport {
  version: 1;
  kind: 'restore';
  options: { quick: boolean; smoke: boolean; seed: number; reps: number; imageBytes: number; handlerMode: string; bootstrap: { resamples: number; seed: number; level: number } };
  machine: Machine;
  trace: TraceSpec & { touched: number; fixedPages: number; varyingPages: number };
  recordings: { name: RecordingName; program: number; run: number; pages: number; precision: number; recall: number }[];
  rows: RestoreRow[];
  ratios: RestoreRatio[];
  targets: Target[];
  durationMs: number;
  incomplete?: string;
}

const pageSize = PAGE_SIZE;
const imageBytes = imageMiB * 2 ** 20;
const pages = imageBytes / pageSize;
const spec: TraceSpec = { pages, program: seed, run: seed + 1, ...TRACE };
const RECORDING_SPECS: Record<RecordingName, TraceSpec> = {
  match: spec,
  varying: { ...spec, run: seed + 2 },
  mismatch: { ...spec, program: seed + 100 },
};


function rowOf(mode: RestoreMode, list: (RestoreRep | null)[], env: RestoreEnv, error: string | undefined): RestoreRow {
  const got = list.filter((r): r is RestoreRep => r !== null);
  const med = (f: (r: RestoreRep) => number) => (got.length ? median(got.map(f)) : 0);
  const rec = RECORDING_OF[mode];
  const recording = rec ? env.recordings.get(rec) : undefined;
  const q = recording ? prefetchQuality(recording.pages, env.trace.order) : EAGER_MODES.includes(mode) ? { precision: env.trace.order.length / pages, recall: 1 } : null;
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

function analyse(rows: RestoreRow[]): { ratios: RestoreRatio[]; targets: Target[] } {
  const ratio = (name: string, a: RestoreMode, b: RestoreMode, metric: 'time' | 'faults' = 'time'): RestoreRatio => ({ name, of: [a, b], metric, interval: pairRatio(rows, a, b, metric) });
  const ratios = [
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
    makeTarget('one-fd: library replay time vs C replay', 1.5, false, [check(find('fc-replay', 'c-fc-replay')), check(find('fc-replay-varying', 'c-fc-replay-varying'))], why('fc-replay', 'fc-replay-varying')),
    makeTarget('one-fd replay speedup over one-fd on-demand, matching recording', 5, true, [check(find('fc-on-demand', 'fc-replay'))], why('fc-replay', 'fc-on-demand')),
  ];
  return { ratios, targets };
}

const ms = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
const mib = (b: number) => (b / 2 ** 20).toFixed(b < 10 * 2 ** 20 ? 1 : 0);
const pct = (f: number | null) => (f === null ? '' : `${(f * 100).toFixed(f > 0.995 || f < 0.005 ? 0 : 1)}%`);

function scenarioTable(report: RestoreReport): Table {
  const header = ['scenario', 'reps', 'time ms', 'guest ms', 'before go ms', 'faults', 'on-demand copies', 'prefetched', 'MiB moved', 'precision', 'recall', 'bytes', 'resolved'];
  const rows = report.rows.map((r) => (r.error && !r.reps
    ? [r.label, '0', r.available ? `failed: ${r.error}` : r.error, '', '', '', '', '', '', '', '', '', '']
    : [r.label, String(r.reps), ms(r.timeMs), ms(r.guestMs), ms(r.beforeGoMs), r.faults.toFixed(0), r.demandFetches.toFixed(0), r.prefetched.toFixed(0), mib(r.bytesMoved),
      pct(r.precision), pct(r.recall), r.digestOk ? 'right' : 'WRONG', r.allResolved ? 'all' : `NO${r.error ? `: ${r.error}` : ''}`]));
  return { header, rows, align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'l'] };
}

function ratioTable(report: RestoreReport): Table {
  return {
    header: ['ratio', 'median [95%]', 'pairs'],
    rows: report.ratios.map((r) => [r.name, r.interval ? interval(r.interval) : 'n/a', r.interval ? String(r.interval.n) : '']),
    align: ['l', 'r', 'r'],
  };
}

function headerLines(report: RestoreReport): string[] {
  const o = report.options;
  const t = report.trace;
  return [
    ...(report.incomplete ? [`INCOMPLETE RUN (${report.incomplete}).`] : []),
    ...(o.quick || o.smoke ? [QUICK_NOTE] : []),
    `Image: ${mib(o.imageBytes)} MiB of random bytes in a memfd (${o.smoke ? '--smoke' : o.quick ? '--quick' : 'default'} run), ${t.pages} pages of ${report.machine.pageSize} B; `
      + `guest: a process with ${t.touchers} native toucher threads over a MISSING|MINOR view of a fresh memfd, touching ${t.touched} pages `
      + `(working set ${t.fixedPages} pages = ${Math.round(t.fixed * 100)}%, seed ${t.program}; varying part ${t.varyingPages} = ${Math.round(t.varying * 100)}%, seed ${t.run}), every byte of them checked against the image.`,
    'Modes: "library"/"C reference" rows serve that memfd view (MINOR: pwrite + CONTINUE); "one-fd" rows are Firecracker\'s one-fd backend: the guest\'s memory is private anonymous memory registered MISSING, '
      + 'served from the image written to a snapshot file with UFFDIO_COPY by the library\'s FirecrackerPageServer (the guest connects and hands over its uffd as Firecracker does: its time counts from the hand-off) or by the C reference; '
      + '"migration over loopback" rows: a MigrationSource in a process of its own serves the image over TCP on 127.0.0.1 (demand and prefetch requests only, no background push) to a MigrationDestination serving the memfd guest, '
      + 'which resumes once the destination has the source\'s hello; there is no C reference for migration.',
    `Time = page server start to the guest's touchers done (CLOCK_MONOTONIC in both processes); ${o.reps} rounds, every scenario once per round in a rotated order; library handler mode ${o.handlerMode}.`,
    `Recordings (each from a restore of its own trace, on demand, with the library's WorkingSetRecorder): ${report.recordings.map((r) => `${r.name} (program ${r.program}, run ${r.run}: ${r.pages} pages, precision ${pct(r.precision)}, recall ${pct(r.recall)})`).join('; ')}.`,
    `Ratios: median over the rounds of the per-round ratio; [95%] = percentile bootstrap over the rounds (${o.bootstrap.resamples} resamples, seed ${o.bootstrap.seed}). A target is met when its whole interval is on the right side, MISSED when all of it is on the wrong side, otherwise inconclusive.`,
    `Measured on ${machineLine(report.machine)}, ${report.machine.date.slice(0, 10)}, ${(report.durationMs / 1000).toFixed(0)} s.`,
  ];
}

export function restoreText(report: RestoreReport): string {
  return [...headerLines(report), '', renderText(scenarioTable(report)), '', renderText(ratioTable(report)), '', ...targetLines(report)].join('\n');
}

export function restoreMarkdown(report: RestoreReport): string {
  return [...headerLines(report).map((l) => `${l}\n`), renderMarkdown(scenarioTable(report)), '', renderMarkdown(ratioTable(report)), '',
    ...targetLines(report).map((l) => (l.startsWith('    ') ? `  - ${l.trim()}` : `- ${l}`))].join('\n');
}

const repo = join(__dirname, '..', '..');

function writeDocs(report: RestoreReport): void {
  if (report.options.quick || report.options.smoke || report.incomplete || args.size || args.reps) {
    process.stderr.write('--docs: docs/working-set.md left as it is: only a complete default run (no --quick, --smoke, --size, --reps) is written into it\n');
    process.exitCode = 1;
    return;
  }
  if (!replaceBetweenMarkers(join(repo, 'docs/working-set.md'), 'restore-bench', restoreMarkdown(report), 'npm run bench:restore -- --docs'))
    throw new Error('docs/working-set.md lacks the restore-bench markers');
  process.stderr.write('docs: docs/working-set.md\n');
}

async function main(): Promise<void> {
  const started = Date.now();
  const caps = probe();
  if (!caps.available || !caps.features.minorShmem) {
    process.stderr.write(`userfaultfd MINOR mode is not usable here: ${caps.reasons.join('; ') || 'kernel lacks minorShmem'}\n`);
    process.exit(2);
  }
  if (args.quick || args.smoke) process.stderr.write(`${QUICK_NOTE}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'uffd-restore-bench-'));
  process.stderr.write(`bench:restore: ${imageMiB} MiB image, ${reps} rounds\n`);
  const { image, view } = randomImage(imageBytes);
  const imageFile = join(dir, 'snapshot.mem');
  writeFileSync(imageFile, new Uint8Array(view.buffer));
  const source = await startSource(image);
  const trace = restoreTrace(spec);
  const digest = (s: TraceSpec) => bench.pageDigest(view.buffer, pageSize, restoreTrace(s).order);
  const env: RestoreEnv = {
    image, imageView: view, spec, trace, expectedDigest: digest(spec), recordings: new Map(), caps: probeRestoreLibrary(), handlerMode: HANDLER_MODE, dir,
    imageFile, sourcePort: source.port,
  };
  const measured = new Map<RestoreMode, (RestoreRep | null)[]>(RESTORE_MODES.map((m) => [m, []]));
  const errors = new Map<RestoreMode, string>();
  const assemble = (incomplete?: string): RestoreReport => {
    const rows = RESTORE_MODES.map((m) => rowOf(m, measured.get(m)!, env, errors.get(m)));
    const { ratios, targets } = analyse(rows);
    const cpu = cpus()[0];
    return {
      version: 1, kind: 'restore',
      options: { quick: args.quick, smoke: args.smoke, seed, reps, imageBytes, handlerMode: HANDLER_MODE, bootstrap: { resamples: BOOTSTRAP_RESAMPLES, seed: BOOTSTRAP_SEED, level: 0.95 } },
      machine: {
        kernel: release(), cpus: cpus().length, cpuModel: cpu ? cpu.model : 'unknown', pageSize, hugePageSize: 2 * 1024 * 1024,
        hugePages: { available: 0, reason: 'not used' }, node: process.version, loadAverage: loadavg(), date: new Date().toISOString(),
      },
      trace: { ...spec, touched: trace.order.length, fixedPages: trace.fixedPages, varyingPages: trace.varyingPages },
      recordings: [...env.recordings.values()].map((r) => ({ name: r.name, program: r.spec.program, run: r.spec.run, pages: r.pages.length, ...prefetchQuality(r.pages, trace.order) })),
      rows, ratios, targets, durationMs: Date.now() - started, ...(incomplete ? { incomplete } : {}),
    };
  };
  const save = (incomplete?: string) => {
    const report = assemble(incomplete);
    if (args.json) writeFileAtomic(args.json, `${JSON.stringify(report, null, 2)}\n`);
    return report;
  };
  let failure: Error | undefined;
  try {
    // The recordings first: each a restore of its own trace, recorded.
    for (const name of ['match', 'varying', 'mismatch'] as RecordingName[]) {
      const s = RECORDING_SPECS[name];
      const expectedDigest = digest(s);
      const file = join(dir, `${name}.ws`);
      const rep = await runRestore('on-demand', env, { spec: s, expectedDigest, recordTo: file });
      const recording: Recording = { name, spec: s, pages: Uint32Array.from(readWorkingSet(file).entries, (e) => e.page), file };
      if (!rep.allResolved) throw new Error(`recording run ${name} did not restore the right bytes: ${JSON.stringify(rep)}`);
      env.recordings.set(name, recording);
    }
    for (let r = 0; r < reps; r++) {
      const k = r % RESTORE_MODES.length;
      for (const mode of [...RESTORE_MODES.slice(k), ...RESTORE_MODES.slice(0, k)]) {
        if (errors.has(mode)) continue;
        try {
          measured.get(mode)![r] = await runRestore(mode, env);
        } catch (err) {
          errors.set(mode, (err as Error).message);
        }
      }
      for (const list of measured.values()) while (list.length <= r) list.push(null);
      process.stderr.write(`round ${r + 1}/${reps}\n`);
      save(`stopped after ${r + 1} of ${reps} rounds`);
    }
  } catch (err) {
    failure = err as Error;
  } finally {
    source.close();
    view.unmap();
    image.close();
    rmSync(dir, { recursive: true, force: true });
  }
  const report = save(failure && `failed: ${failure.message}`);
  if (args.markdown && args.markdown !== '-') {
    if (!replaceBetweenMarkers(args.markdown, 'restore-bench', restoreMarkdown(report), 'npm run bench:restore -- --docs')) writeFileSync(args.markdown, `${restoreMarkdown(report)}\n`);
  }
  if (args.docs && !failure) writeDocs(report);
  process.stdout.write(`${args.markdown === '-' ? restoreMarkdown(report) : restoreText(report)}\n`);
  if (failure) throw failure;
  const wrong = report.rows.filter((r) => (r.reps > 0 && !r.allResolved) || (r.error && r.available));
  if (wrong.length) {
    for (const r of wrong) process.stderr.write(`did not restore right: ${r.mode}: ${r.error ?? 'bytes or faults wrong'}\n`);
    process.exitCode = 1;
  }
  if (args.check && report.targets.some((t) => t.verdict === 'missed')) process.exitCode = 1;
}

main().catch((err) => {
  process.stderr.write(`bench:restore failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

// The restore benchmark's report: the header that says what was measured
// and how, the scenario and ratio tables, the targets' verdicts, as text or
// markdown (the same for npm run bench:restore and for the restore section
// of npm run bench), and its chart.
import { join } from 'node:path';

import type { Target } from './analysis';
import { replaceBetweenMarkers, writeFileAtomic } from './output';
import { CONFIG, Machine, Table, interval, machineLine, renderMarkdown, renderText, targetLines, toSvg } from './render';
import { RESTORE_GROUP, RecordingName, RestoreMode } from './restore';
import type { RestoreRatio, RestoreRow } from './restore-analysis';
import type { TraceSpec } from './restore-trace';

export type { RestoreRatio, RestoreRow } from './restore-analysis';

export const RESTORE_QUICK_NOTE = 'QUICK RUN = SMOKE TEST, NOT A MEASUREMENT: a smaller image and fewer rounds, on a machine that may be busy; the figures to quote come from a default run (npm run bench:restore).';

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

const ms = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(1));
const mib = (b: number) => (b / 2 ** 20).toFixed(b < 10 * 2 ** 20 ? 1 : 0);
const pct = (f: number | null) => (f === null ? '' : `${(f * 100).toFixed(f > 0.995 || f < 0.005 ? 0 : 1)}%`);

export function scenarioTable(report: RestoreReport): Table {
  const header = ['scenario', 'reps', 'time ms', 'guest ms', 'before go ms', 'faults', 'on-demand copies', 'prefetched', 'MiB moved', 'precision', 'recall', 'bytes', 'resolved'];
  const rows = report.rows.map((r) => (r.error && !r.reps
    ? [r.label, '0', r.available ? `failed: ${r.error}` : r.error, '', '', '', '', '', '', '', '', '', '']
    : [r.label, String(r.reps), ms(r.timeMs), ms(r.guestMs), ms(r.beforeGoMs), r.faults.toFixed(0), r.demandFetches.toFixed(0), r.prefetched.toFixed(0), mib(r.bytesMoved),
      pct(r.precision), pct(r.recall), r.digestOk ? 'right' : 'WRONG', r.allResolved ? 'all' : `NO${r.error ? `: ${r.error}` : ''}`]));
  return { header, rows, align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l', 'l'] };
}

export function ratioTable(report: RestoreReport): Table {
  return {
    header: ['ratio', 'median [95%]', 'pairs'],
    rows: report.ratios.map((r) => [r.name, r.interval ? interval(r.interval) : 'n/a', r.interval ? String(r.interval.n) : '']),
    align: ['l', 'r', 'r'],
  };
}

/** What was measured and how; `caveats: false` leaves out the incomplete and quick-run notes (the benchmark's report says those once for all). */
export function headerLines(report: RestoreReport, caveats = true): string[] {
  const o = report.options;
  const t = report.trace;
  return [
    ...(caveats && report.incomplete ? [`INCOMPLETE RUN (${report.incomplete}).`] : []),
    ...(caveats && (o.quick || o.smoke) ? [RESTORE_QUICK_NOTE] : []),
    `Image: ${mib(o.imageBytes)} MiB of random bytes in a memfd (${o.smoke ? '--smoke' : o.quick ? '--quick' : 'default'} run), ${t.pages} pages of ${report.machine.pageSize} B; `
      + `guest: a process with ${t.touchers} native toucher threads over a MISSING|MINOR view of a fresh memfd, touching ${t.touched} pages `
      + `(working set ${t.fixedPages} pages = ${Math.round(t.fixed * 100)}%, seed ${t.program}; varying part ${t.varyingPages} = ${Math.round(t.varying * 100)}%, seed ${t.run}), every byte of them checked against the image.`,
    'Modes: "library"/"C reference" rows serve that memfd view (MINOR: pwrite + CONTINUE); "one-fd" rows are Firecracker\'s one-fd backend: the guest\'s memory is private anonymous memory registered MISSING, '
      + 'served from the image written to a snapshot file with UFFDIO_COPY by the library\'s FirecrackerPageServer (the guest connects and hands over its uffd as Firecracker does: its time counts from the hand-off) or by the C reference; '
      + '"three-fd" rows are Firecracker\'s guest_memfd backend: the guest\'s memory fd (allocated) registered MINOR and a userfault bitmap, handed over with the uffd to the FirecrackerPageServer, which writes each page into the memory fd, clears its bit and CONTINUEs (library only: the memfd rows\' C reference is the same MINOR restore); '
      + '"migration over loopback" rows: a MigrationSource in a process of its own serves the image over TCP on 127.0.0.1 (demand and prefetch requests only, no background push) to a MigrationDestination serving the memfd guest, '
      + 'which resumes once the destination has the source\'s hello; there is no C reference for migration. '
      + '"floor": no page server and no userfaultfd, the image already in the guest\'s memfd before it starts: its time is the guest\'s touches alone, each first touch an ordinary page fault.',
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

/** Where the documented restore tables live: one text, written by either benchmark. */
const DOCS = { file: 'docs/working-set.md', chart: 'docs/restore-bench.svg', markers: 'restore-bench', by: 'npm run bench:restore -- --docs' };

/** Writes the tables into docs/working-set.md between its restore-bench markers. */
export function writeRestoreTables(report: RestoreReport, repo: string): string {
  if (!replaceBetweenMarkers(join(repo, DOCS.file), DOCS.markers, restoreMarkdown(report), DOCS.by)) throw new Error(`${DOCS.file} lacks the ${DOCS.markers} markers`);
  return DOCS.file;
}

/** The tables, and the chart beside them (docs/restore-bench.svg, the same as --report's restore.svg). */
export async function writeRestoreDocs(report: RestoreReport, repo: string): Promise<string[]> {
  const tables = writeRestoreTables(report, repo);
  writeFileAtomic(join(repo, DOCS.chart), await renderRestoreChart(report));
  return [tables, DOCS.chart];
}

/** --markdown FILE: between the file's restore-bench markers when it has them, else the whole file. */
export function writeRestoreMarkdown(report: RestoreReport, file: string): void {
  if (!replaceBetweenMarkers(file, DOCS.markers, restoreMarkdown(report), DOCS.by)) writeFileAtomic(file, `${restoreMarkdown(report)}\n`);
}

/**
 * A row's bar: who served it (the library, the C reference, nobody for the
 * floor) and its scenario within its kind of guest memory, e.g.
 * "one-fd: replay (matching recording)" for "library one-fd, replay (matching recording)".
 */
function serverAndScenario(row: { mode: RestoreMode; label: string }): { server: string; scenario: string } {
  const cut = row.label.indexOf(', ');
  const what = cut < 0 ? row.label : row.label.slice(cut + 2);
  const server = row.mode === 'floor' ? 'no userfaultfd' : row.mode.startsWith('c-') ? 'C reference' : 'library';
  return { server, scenario: row.mode === 'floor' ? 'floor: image already in place' : `${RESTORE_GROUP[row.mode]}: ${what}` };
}

const SHORT_SERVER: Record<string, string> = { library: 'library', 'C reference': 'C', 'no userfaultfd': 'floor' };

const PHASES = ['before go: prefetch or eager copy', 'guest: touch phase', 'rest: go sent, touchers not yet started'];
const VERDICT_COLOR = { met: '#2a9d45', missed: '#d62728', inconclusive: '#e08a00', 'no target': '#555' };

/**
 * The restore section's chart: per scenario, the time to the workload done
 * split into what the page server did before letting the guest go and the
 * guest's touch phase, the library beside the C reference; under it every
 * time ratio with its 95% interval, the point coloured by its target's
 * verdict and the target drawn on the ratio's line.
 */
export function restoreChartSpec(report: RestoreReport): object {
  const measured = report.rows.filter((r) => r.reps > 0);
  const phases = measured.flatMap((r) => {
    const { server, scenario } = serverAndScenario(r);
    const rest = Math.max(0, r.timeMs - r.beforeGoMs - r.guestMs);
    // The phases are medians of their own, so their sum may pass the median time: the label goes where the bar ends.
    const barEnd = Math.max(r.timeMs, r.beforeGoMs + r.guestMs);
    // Two bands per scenario: the C reference's below; the library's (or the floor's) on top.
    const slot = server === 'C reference' ? 1 : 0;
    return [r.beforeGoMs, r.guestMs, rest].map((ms, i) => ({ server, slot, scenario, phase: PHASES[i], order: i, ms, barEnd, end: `${SHORT_SERVER[server]} ${r.timeMs.toFixed(r.timeMs >= 100 ? 0 : 1)} ms` }));
  });
  const scenarios = [...new Set(phases.map((p) => p.scenario))];
  const targetOf = (r: RestoreRatio) => report.targets.find((t) => t.checks.some((c) => c.row === `${r.of[0]}/${r.of[1]}`));
  const ratios = report.ratios.filter((r) => r.metric === 'time' && r.interval && r.interval.lo > 0).map((r) => {
    const t = targetOf(r);
    const check = t?.checks.find((c) => c.row === `${r.of[0]}/${r.of[1]}`);
    return {
      ratio: t ? `${r.name} (target ${t.target})` : r.name, value: r.interval!.value, lo: r.interval!.lo, hi: r.interval!.hi, n: r.interval!.n,
      verdict: check ? check.verdict : 'no target', ...(t ? { limit: t.limit, target: t.target } : {}),
    };
  });
  const spanned = ratios.flatMap((r) => [r.lo, r.hi, ...(r.limit ? [r.limit] : [])]);
  const domain = [Math.min(1, ...spanned) / 1.2, Math.max(1, ...spanned) * 1.2];
  const verdicts = Object.keys(VERDICT_COLOR).filter((v) => ratios.some((r) => r.verdict === v));
  const y = { field: 'ratio', type: 'nominal', title: null, sort: null, axis: { labelLimit: 1400 } };
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: `Restore: time until the guest's workload is done (${(report.options.imageBytes / 2 ** 20).toFixed(0)} MiB image, ${report.trace.touched} pages touched, ${report.options.reps} rounds)`,
      subtitle: machineLine(report.machine),
    },
    vconcat: [
      {
        title: { text: 'Per scenario (memfd view, one-fd anonymous memory, three-fd guest_memfd, migration over loopback), the library beside the C reference page server: median of each phase over the rounds, labelled with the median time', anchor: 'start', fontSize: 12 },
        data: { values: phases },
        width: 560,
        height: { step: 13 },
        layer: [
          {
            mark: { type: 'bar' },
            encoding: {
              y: { field: 'scenario', type: 'nominal', title: null, sort: scenarios, axis: { labelLimit: 700 } },
              yOffset: { field: 'slot', type: 'ordinal', scale: { domain: [0, 1] } },
              x: { field: 'ms', type: 'quantitative', stack: 'zero', title: 'ms from the page server\'s start to the guest\'s touchers done' },
              color: { field: 'phase', type: 'nominal', sort: PHASES, title: 'phase', scale: { domain: PHASES, range: ['#72b7b2', '#4c78a8', '#d0d0d0'] }, legend: { orient: 'bottom', direction: 'vertical', labelLimit: 800 } },
              order: { field: 'order' },
              tooltip: [{ field: 'server' }, { field: 'scenario' }, { field: 'phase' }, { field: 'ms', format: '.1f' }],
            },
          },
          {
            transform: [{ filter: 'datum.order == 0' }],
            mark: { type: 'text', align: 'left', dx: 4, fontSize: 10 },
            encoding: {
              y: { field: 'scenario', type: 'nominal', sort: scenarios },
              yOffset: { field: 'slot', type: 'ordinal', scale: { domain: [0, 1] } },
              x: { field: 'barEnd', type: 'quantitative' },
              text: { field: 'end' },
            },
          },
        ],
      },
      {
        title: { text: 'Ratios of times measured in the same round: median (dot) and 95% interval (bar), log scale; black tick = the target', anchor: 'start', fontSize: 12 },
        data: { values: ratios },
        width: 560,
        height: { step: 16 },
        layer: [
          { mark: { type: 'rule', color: '#888', strokeDash: [4, 3] }, encoding: { x: { datum: 1, type: 'quantitative' } } },
          {
            mark: { type: 'rule', strokeWidth: 2 },
            encoding: {
              y, x: { field: 'lo', type: 'quantitative', scale: { type: 'log', domain, nice: false }, title: 'ratio (log; 1 = equal)' }, x2: { field: 'hi' },
              color: { field: 'verdict', type: 'nominal', title: 'target verdict', scale: { domain: verdicts, range: verdicts.map((v) => VERDICT_COLOR[v as keyof typeof VERDICT_COLOR]) }, legend: { orient: 'bottom' } },
            },
          },
          {
            mark: { type: 'point', filled: true, size: 40 },
            encoding: {
              y, x: { field: 'value', type: 'quantitative' }, color: { field: 'verdict', type: 'nominal' },
              tooltip: [{ field: 'ratio' }, { field: 'value', format: '.2f' }, { field: 'lo', format: '.2f' }, { field: 'hi', format: '.2f' }, { field: 'n', title: 'pairs' }, { field: 'target' }],
            },
          },
          {
            transform: [{ filter: 'isValid(datum.limit)' }],
            mark: { type: 'tick', color: '#000', thickness: 2, size: 14 },
            encoding: { y, x: { field: 'limit', type: 'quantitative' } },
          },
        ],
      },
    ],
    // Phases and verdicts are two colour scales, each with its own legend.
    resolve: { scale: { color: 'independent' }, legend: { color: 'independent' } },
    config: CONFIG,
  };
}

export function renderRestoreChart(report: RestoreReport): Promise<string> {
  return toSvg(restoreChartSpec(report));
}

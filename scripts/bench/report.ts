// Output of a run: the terminal tables, the markdown tables for the docs,
// the README's ratio table, --compare, and the HTML report with its charts
// rendered to SVG in Node by vega-lite.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { Delta, RowResult, Target } from './analysis';
import { liveTableCells } from '../demo-migrate/live';
import { DIRTY_FRACTIONS, DirtyRow } from './dirty';
import type { MigrationModes } from './migration';
import { CONFIG, Machine, Table, escapeHtml, htmlTable, interval, machineLine, renderMarkdown, renderText, targetLines, toSvg } from './render';
import { RestoreReport, headerLines as restoreHeader, ratioTable as restoreRatioTable, renderRestoreChart, scenarioTable as restoreScenarioTable } from './restore-report';
import { BulkRow, MODE_LABEL } from './scenarios';
import { Interval } from './stats';

export type { Machine, Table } from './render';

export interface BenchReport {
  version: 2;
  options: Record<string, unknown> & { reps?: number; bootstrap?: { resamples: number; seed: number; level: number } };
  /** Library options this run could use (spinUs, threads: issue 12). */
  library: { spinUs: boolean; threads: boolean };
  machine: Machine;
  rows: RowResult[];
  /** vsPopulateRead: POPULATE_READ time over CONTINUE time, repetition by repetition, median with its interval. */
  bulk: (BulkRow & { vsPopulateRead: Interval | null })[];
  /** One row per dirty-tracking method (absent in runs from before it was measured). */
  dirty?: DirtyRow[];
  /** The live-migration demo's three modes side by side, or why they are missing. */
  migration?: MigrationModes | { error: string };
  /** The restore benchmark (npm run bench:restore) run as a section, or why it is missing; its targets are in it. */
  restore?: RestoreReport | { error: string };
  targets: Target[];
  durationMs: number;
  /** Set while the run is under way and when it failed: how far it got. */
  incomplete?: string;
}

/** Said before and after every --quick or --smoke run. */
export const QUICK_NOTE = [
  'QUICK RUN = SMOKE TEST, NOT A MEASUREMENT: 9 interleaved repetition pairs of 300 faults per row (--smoke: 3 of 32),',
  'on a machine that may be busy. Each verdict comes from a 95% interval and says "inconclusive: noise" when the',
  'interval straddles the target; the figures to quote come from a default run: npm run bench.',
].join('\n');

const isQuick = (report: BenchReport): boolean => Boolean(report.options.quick || report.options.smoke);

const us = (ns: number) => (ns / 1000).toFixed(ns < 10_000 ? 2 : 1);
const rate = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0));
const pct = (f: number | null) => (f === null ? '' : `${Math.round(f * 100)}%`);

const PLACEMENT_TEXT: Record<string, string> = {
  same: 'handler and toucher pinned to CPU 0 (co-located)',
  diff: 'handler on CPU 0, touchers on other CPUs (split)',
  unpinned: 'the scheduler decides; "co-loc" is the share of faults whose toucher ran on the handler\'s CPU, and a ratio pairs only repetitions that landed alike (both mostly co-located or both mostly split)',
};

const label = (r: RowResult) => MODE_LABEL[r.mode];
const where = (r: RowResult) => [r.kind === 'scan' ? 'scan' : r.page, r.placement, r.order, String(r.threads), String(r.handlers)];

/** The headline: every ratio with its interval, p50, p99 and p99.9, and the handler's CPU per fault. */
function ratioTable(report: BenchReport): Table {
  const header = ['row', 'page', 'placement', 'order', 'thr', 'hdl', 'pairs', 'co-loc', 'p50 ×ref [95%]', 'p99 ×ref [95%]', 'p99.9 ×ref [95%]', 'faults/s ×ref', 'cpu µs/fault', 'ref'];
  const rows = report.rows.filter((r) => r.error || (r.ratios && r.mode !== r.ratios.reference)).map((r) => r.error
    ? [label(r), ...where(r), '', '', `failed: ${r.error}`, '', '', '', '', '']
    : [label(r), ...where(r), `${r.ratios!.pairs}${r.ratios!.unmatched ? ` (-${r.ratios!.unmatched})` : ''}`, pct(r.colocated),
      interval(r.ratios!.p50), interval(r.ratios!.p99), interval(r.ratios!.p999),
      r.kind === 'scan' ? `${interval(r.ratios!.perPage)} per page` : interval(r.ratios!.throughput),
      r.handlerCpuUsPerFault === null ? '' : r.handlerCpuUsPerFault.toFixed(2), r.ratios!.reference === 'c-reference' ? 'C' : MODE_LABEL[r.ratios!.reference]]);
  return { header, rows, align: ['l', 'l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'l'] };
}

function latencyTable(report: BenchReport): Table {
  const header = ['row', 'page', 'placement', 'order', 'thr', 'hdl', 'reps', 'faults', 'p50 µs', 'p90 µs', 'p99 µs', 'p99.9 µs', 'max µs', 'faults/s', 'ns/page', 'cpu µs/fault', 'co-loc'];
  const rows = report.rows.map((r) => r.error
    ? [label(r), ...where(r), String(r.reps), '-', `failed: ${r.error}`, '', '', '', '', '', '', '', '']
    : [label(r), ...where(r), `${r.reps}x${r.pagesPerRep}`, `${r.resolved >= r.faults ? r.faults : r.resolved}/${r.faults}`,
      us(r.latency.p50), us(r.latency.p90), us(r.latency.p99), us(r.latency.p999), us(r.latency.max), rate(r.faultsPerSec), r.nsPerPage.toFixed(0),
      r.handlerCpuUsPerFault === null ? '' : r.handlerCpuUsPerFault.toFixed(2), pct(r.colocated)]);
  return { header, rows, align: ['l', 'l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] };
}

/** Unpinned rows split by where the faults landed: p50 ×C over co-located pairs and over split pairs. */
function colocationLines(report: BenchReport): string[] {
  return report.rows.filter((r) => r.byColocation).map((r) => {
    const c = r.byColocation!;
    const part = (name: string, v: { pairs: number; p50: Interval | null }) => `${name} ${v.pairs} pairs${v.p50 ? ` p50 ${interval(v.p50)}` : ''}`;
    return `${r.id}: co-loc ${pct(r.colocated)}; ${part('co-located', c.colocated)}; ${part('split', c.split)}`;
  });
}

function bulkTable(report: BenchReport): Table {
  const header = ['bulk', 'by', 'page', 'range', 'reps', 'best ms', 'median ms', 'pages/s', 'GiB/s', '×POPULATE_READ [95%]'];
  const ms = (ns: number) => (ns / 1e6).toFixed(ns < 1e6 ? 3 : 2);
  const rows = report.bulk.map((b) => [b.method, b.by, b.page, `${(b.bytes / 2 ** 20).toFixed(0)} MiB`, String(b.reps), ms(b.bestNs), ms(b.medianNs),
    rate(b.medianPagesPerSec), b.gibPerSec.toFixed(1), interval(b.vsPopulateRead)]);
  return { header, rows, align: ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] };
}

/** A figure with its 95% interval: "152 [140-160]". */
const figure = (i: Interval | undefined, scale = 1) => {
  const f = (v: number) => (v * scale >= 100 ? (v * scale).toFixed(0) : v * scale >= 10 ? (v * scale).toFixed(1) : (v * scale).toFixed(2));
  return i ? `${f(i.value)} [${f(i.lo)}-${f(i.hi)}]` : '';
};

function dirtyTable(report: BenchReport): Table {
  const header = ['dirty tracking', 'view', 'reps', 'protect all ms/GiB', 'tracked 1st write µs', 'untracked 1st write µs', 'tracked ×untracked [95%]',
    ...DIRTY_FRACTIONS.map((f) => `collect ${f * 100}% ms/GiB`), 'look only 5% ms/GiB', 'clean re-collect ms/GiB', 'stop ms/GiB'];
  const rows = (report.dirty ?? []).map((d) => !d.available
    ? [d.method, `${d.bytes / 2 ** 20} MiB`, '0', `not available: ${d.reason}`, ...header.slice(4).map(() => '')]
    : [d.method, `${d.bytes / 2 ** 20} MiB`, String(d.reps), figure(d.protectMsPerGiB), figure(d.trackedFirstWriteNs, 1e-3), figure(d.untrackedFirstWriteNs, 1e-3),
      interval(d.firstWriteVsUntracked), ...DIRTY_FRACTIONS.map((f) => figure(d.collect?.find((c) => c.fraction === f)?.msPerGiB)),
      figure(d.collect?.find((c) => c.fraction === 0.05)?.lookMsPerGiB), figure(d.cleanRecollectMsPerGiB), figure(d.stopMsPerGiB)]);
  return { header, rows, align: ['l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] };
}

/** The live-migration modes (pre-copy, post-copy, hybrid) on one guest workload: the note, the table and the targets' lines. */
function migrationParts(report: BenchReport): { note: string; table: Table | null; lines: string[] } | null {
  const m = report.migration;
  if (!m) return null;
  if ('error' in m) return { note: `Live migration, three modes: failed: ${m.error}`, table: null, lines: [] };
  const { header, rows } = liveTableCells(m.results);
  return {
    note: `Live migration, three modes side by side (npm run demo:migrate -- --modes all): ${m.setting}.`,
    table: { header, rows, align: ['l', 'r', 'r', 'r', 'l', 'r', 'r', 'r'] },
    lines: m.targets,
  };
}

function migrationText(report: BenchReport, table: (t: Table) => string, line: (l: string) => string): string[] {
  const parts = migrationParts(report);
  if (!parts) return [];
  return [parts.note, ...(parts.table ? [table(parts.table)] : []), ...parts.lines.map(line), ''];
}

/** The benchmark's targets and the restore section's, named as such: what the verdict list and --check go by. */
export function allTargets(report: BenchReport): Target[] {
  const r = report.restore;
  return [...report.targets, ...(r && !('error' in r) ? r.targets.map((t) => ({ ...t, name: `restore: ${t.name}` })) : [])];
}

/** The restore section: what was measured, the scenario and ratio tables (its targets are in the list of targets). */
function restoreParts(report: BenchReport): { lines: string[]; tables: Table[] } | null {
  const r = report.restore;
  if (!r) return null;
  const title = 'Restore of a snapshot image into a guest process (npm run bench:restore; docs/working-set.md, Restore benchmark)';
  if ('error' in r) return { lines: [`${title}: failed: ${r.error}`], tables: [] };
  return {
    lines: [`${title}${r.incomplete ? `, INCOMPLETE (${r.incomplete})` : ''}; its targets are listed with the others as "restore: ...".`, ...restoreHeader(r, false)],
    tables: [restoreScenarioTable(r), restoreRatioTable(r)],
  };
}

/** Text: the lines, then each table after a blank line; markdown: a paragraph per line, then the tables. */
function restoreText(report: BenchReport, markdown: boolean): string[] {
  const parts = restoreParts(report);
  if (!parts) return [];
  return markdown
    ? [...parts.lines.map((l) => `${l}\n`), ...parts.tables.flatMap((t) => [renderMarkdown(t), ''])]
    : [...parts.lines, '', ...parts.tables.flatMap((t) => [renderText(t), ''])];
}

function dirtyNote(report: BenchReport): string {
  const d = (report.dirty ?? []).find((r) => r.available);
  return `Dirty tracking: a ${d ? `${d.bytes / 2 ** 20} MiB ` : ''}memfd view, every page present and written once before tracking starts; `
    + `write latencies are the median of ${d?.writeSample ?? '?'} random pages per repetition (timed by the writing native thread), then the median over the repetitions; `
    + 'the untracked write is to the same pages through a fresh mapping no tracker knows, in the same repetition; costs that grow with the view are per GiB of it; [95%] = bootstrap interval over the repetitions.';
}

function statsLine(report: BenchReport): string {
  const b = report.options.bootstrap;
  return `Ratios: median over ${report.options.reps ?? '?'} interleaved repetition pairs (p50, faults/s, per page) or pooled over them (p99, p99.9); `
    + `[95%] = percentile bootstrap over the pairs${b ? ` (${b.resamples} resamples, seed ${b.seed})` : ''}. `
    + 'A target is met when its whole interval is on the right side, MISSED when the whole interval is on the wrong side, otherwise inconclusive (noise).';
}

/** What comes before the tables when the run was quick or did not finish. */
function caveats(report: BenchReport): string[] {
  const lines: string[] = [];
  if (report.incomplete) lines.push(`INCOMPLETE RUN (${report.incomplete}): the rows below are what was measured before that.`);
  if (isQuick(report)) lines.push(QUICK_NOTE);
  return lines.length ? [...lines, ''] : [];
}

function placementLine(): string {
  return `placement: same = ${PLACEMENT_TEXT.same}; diff = ${PLACEMENT_TEXT.diff}; unpinned = ${PLACEMENT_TEXT.unpinned}`;
}

/** Event-loop rows: what the collector did while the handler's loop served, the first suspect for their tails. */
function gcLines(report: BenchReport): string[] {
  const rows = report.rows.filter((r) => r.handlerGc);
  if (!rows.length) return [];
  return [
    'garbage collections of the event-loop handler\'s isolate while it served (a collection pauses the loop):',
    ...rows.map((r) => {
      const g = r.handlerGc!;
      return `    ${r.id}: ${g.collections} in ${r.faults} faults (${g.perThousandFaults.toFixed(2)} per 1000), pause ${g.pauseMs.toFixed(1)} ms in all, longest ${g.maxPauseMs.toFixed(2)} ms; p99.9 ${us(r.latency.p999)} µs`;
    }),
  ];
}

export function textReport(report: BenchReport): string {
  return [
    ...caveats(report),
    machineLine(report.machine),
    placementLine(),
    statsLine(report),
    '',
    renderText(ratioTable(report)),
    '',
    renderText(latencyTable(report)),
    '',
    ...colocationLines(report),
    '',
    ...gcLines(report),
    '',
    renderText(bulkTable(report)),
    '',
    ...(report.dirty?.length ? [dirtyNote(report), renderText(dirtyTable(report)), ''] : []),
    ...migrationText(report, renderText, (l) => l),
    ...restoreText(report, false),
    ...targetLines({ targets: allTargets(report) }),
    ...(isQuick(report) ? ['', QUICK_NOTE] : []),
  ].join('\n');
}

export function markdownReport(report: BenchReport): string {
  const kind = report.options.smoke ? '`--smoke`' : report.options.quick ? '`--quick`' : 'default';
  const quote = (ls: string[]) => ls.map((l) => (l ? `> ${l.replace(/\n/g, '\n> ')}` : l));
  return [
    ...quote(caveats(report)),
    `Measured on ${machineLine(report.machine)}; ${kind} run, ${(report.durationMs / 1000).toFixed(0)} s, ${report.machine.date.slice(0, 10)}.`,
    `Placement: **same** = ${PLACEMENT_TEXT.same}; **diff** = ${PLACEMENT_TEXT.diff}; **unpinned** = ${PLACEMENT_TEXT.unpinned}.`,
    statsLine(report),
    '',
    renderMarkdown(ratioTable(report)),
    '',
    renderMarkdown(latencyTable(report)),
    '',
    ...colocationLines(report).map((l) => `- ${l}`),
    '',
    ...gcLines(report).map((l) => (l.startsWith('    ') ? `  - ${l.trim()}` : `- ${l}`)),
    '',
    renderMarkdown(bulkTable(report)),
    '',
    ...(report.dirty?.length ? [dirtyNote(report), '', renderMarkdown(dirtyTable(report)), ''] : []),
    ...migrationText(report, (t) => `\n${renderMarkdown(t)}\n`, (l) => `- ${l}`),
    ...restoreText(report, true),
    ...targetLines({ targets: allTargets(report) }).map((l) => (l.startsWith('    ') ? `  - ${l.trim()}` : `- ${l}`)),
  ].join('\n');
}

/**
 * The ratios alone, for the README: one row per handler and placement (4 KiB
 * pages, one toucher, sequential), p50, p99 and p99.9 ×C with their 95%
 * intervals, and the targets. Microseconds stay in docs/benchmark.md: they do
 * not carry from machine to machine, the ratios do.
 */
export function ratioSummary(report: BenchReport): string {
  const base = report.rows.filter((r) => r.kind === 'latency' && r.page === '4k' && r.order === 'seq' && r.threads === 1 && r.ratios && r.mode !== r.ratios.reference && r.mode !== 'floor');
  const table: Table = {
    header: ['handler (4 KiB pages, 1 toucher)', 'placement', 'p50 ×C [95%]', 'p99 ×C [95%]', 'p99.9 ×C [95%]'],
    rows: base.map((r) => [label(r), r.placement === 'same' ? 'same CPU' : r.placement === 'diff' ? 'other CPU' : `unpinned (${pct(r.colocated)} co-located)`,
      interval(r.ratios!.p50), interval(r.ratios!.p99), interval(r.ratios!.p999)]),
    align: ['l', 'l', 'r', 'r', 'r'],
  };
  return [
    `${report.options.quick ? '`--quick`' : 'Default'} run of ${report.machine.date.slice(0, 10)}: ${report.machine.cpus} CPUs (${report.machine.cpuModel}), Linux ${report.machine.kernel}, load ${report.machine.loadAverage.map((l) => l.toFixed(1)).join(' ')} during the run. ×C = the library's latency over a C handler's, measured interleaved with it (same run, pages and placement; 1.00x = as fast as C); [95%] = bootstrap interval over ${report.options.reps ?? '?'} repetition pairs.`,
    '',
    renderMarkdown(table),
    '',
    ...targetLines(report).map((l) => (l.startsWith('    ') ? `  - ${l.trim()}` : `- ${l}`)),
  ].join('\n');
}

/** --compare: the rows whose ratios moved beyond noise first, then the count of the rest. */
export function compareText(deltas: Delta[], file: string): string {
  if (!deltas.length) return `compare with ${file}: no row in common`;
  const t: Table = {
    header: ['row', 'metric', 'before [95%]', 'now [95%]', 'change', 'call'],
    rows: deltas.map((d) => [d.row, d.metric === 'p999' ? 'p99.9' : d.metric, interval(d.old), interval(d.now), `${d.change >= 0 ? '+' : ''}${(d.change * 100).toFixed(0)}%`, d.call]),
    align: ['l', 'l', 'r', 'r', 'r', 'l'],
  };
  const moved = deltas.filter((d) => d.call !== 'within noise');
  return [`compare with ${file}: ${moved.filter((d) => d.call === 'worse').length} worse, ${moved.filter((d) => d.call === 'better').length} better, ${deltas.length - moved.length} within noise (worse/better: the two intervals do not overlap)`, renderText(t)].join('\n');
}

const groupKey = (r: RowResult): string =>
  `${r.kind === 'scan' ? 'scan ' : ''}${r.page} ${r.placement} ${r.order} ${r.threads}t${r.handlers > 1 ? ` ${r.handlers}h` : ''}`;

/**
 * The first chart: every library row's ratio to the C reference of its cell
 * (one toucher, 4 KiB and 2 MiB), per mode and placement, the dot the
 * value and the bar its 95% interval; one panel per percentile.
 */
export async function renderRatioChart(report: BenchReport): Promise<string> {
  const values = report.rows.filter((r) => !r.error && r.kind === 'latency' && r.threads === 1 && r.order === 'seq' && r.ratios && r.mode !== r.ratios.reference && r.mode !== 'floor')
    .flatMap((r) => (['p50', 'p99', 'p999'] as const).filter((m) => r.ratios![m]).map((m) => ({
      metric: m === 'p999' ? 'p99.9' : m, row: `${MODE_LABEL[r.mode]} (${r.page})`, placement: r.placement,
      value: r.ratios![m]!.value, lo: r.ratios![m]!.lo, hi: r.ratios![m]!.hi,
    })));
  const placements = ['same', 'diff', 'unpinned'];
  const shared = {
    y: { field: 'row', type: 'nominal', title: null, sort: null, axis: { labelLimit: 320 } },
    yOffset: { field: 'placement', type: 'nominal', sort: placements },
    color: {
      field: 'placement', type: 'nominal', sort: placements, title: 'placement',
      legend: { labelLimit: 300, labelExpr: "datum.label == 'same' ? 'same CPU (co-located)' : datum.label == 'diff' ? 'other CPU (split)' : 'unpinned'" },
    },
  };
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Latency ×C reference, median and 95% interval over interleaved repetition pairs', subtitle: machineLine(report.machine) },
    data: { values },
    facet: { column: { field: 'metric', type: 'nominal', title: null, sort: ['p50', 'p99', 'p99.9'] } },
    spec: {
      width: 260,
      height: { step: 12 },
      layer: [
        {
          mark: { type: 'rule', strokeWidth: 2 },
          encoding: { ...shared, x: { field: 'lo', type: 'quantitative', scale: { type: 'log' }, title: '×C (log; 1 = as fast as C)' }, x2: { field: 'hi' } },
        },
        { mark: { type: 'point', filled: true, size: 30 }, encoding: { ...shared, x: { field: 'value', type: 'quantitative' } } },
        // As fast as C.
        { mark: { type: 'rule', color: '#888', strokeDash: [4, 3] }, encoding: { x: { datum: 1, type: 'quantitative' } } },
      ],
    },
    config: CONFIG,
  };
  return toSvg(spec);
}

/** The CDF chart of every row, one panel per cell, rendered to SVG. */
export async function renderChart(report: BenchReport): Promise<string> {
  const values = report.rows.filter((s) => !s.error).flatMap((s) =>
    s.latency.cdf.map(([ns, p]) => ({ group: groupKey(s), handler: MODE_LABEL[s.mode], us: Math.max(ns, 1) / 1000, percentile: p })));
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Minor-fault latency as the toucher sees it (CDF, all repetitions pooled)', subtitle: machineLine(report.machine) },
    data: { values },
    facet: { field: 'group', type: 'nominal', title: 'page size, placement, order, touching threads', sort: [...new Set(values.map((v) => v.group))] },
    columns: 3,
    spec: {
      width: 300,
      height: 180,
      mark: { type: 'line', interpolate: 'step-after', strokeWidth: 1.5 },
      encoding: {
        x: { field: 'us', type: 'quantitative', scale: { type: 'log' }, title: 'latency per first touch (µs, log)' },
        y: { field: 'percentile', type: 'quantitative', title: 'percentile', scale: { domain: [0, 100] } },
        color: { field: 'handler', type: 'nominal', title: 'handler', sort: Object.values(MODE_LABEL), legend: { labelLimit: 400 } },
      },
    },
    resolve: { scale: { x: 'independent' } },
    config: CONFIG,
  };
  return toSvg(spec);
}

function migrationHtml(report: BenchReport): string {
  const parts = migrationParts(report);
  if (!parts) return '';
  return `<h2>Live migration: pre-copy, post-copy, hybrid</h2>\n<p class="note">${escapeHtml(parts.note)}</p>\n${parts.table ? htmlTable(parts.table) : ''}\n` +
    `<ul>${parts.lines.map((l) => `<li>${escapeHtml(l)}</li>`).join('')}</ul>\n`;
}

function restoreHtml(report: BenchReport, chart: string | null): string {
  const parts = restoreParts(report);
  if (!parts) return '';
  return `<h2>Restore: on demand, working-set replay, eager copy</h2>\n<p class="note">${parts.lines.map(escapeHtml).join('<br>\n')}</p>\n${chart ?? ''}\n${parts.tables.map(htmlTable).join('\n')}\n`;
}

/** Writes DIR/index.html (charts and tables), DIR/ratios.svg, DIR/latency-cdf.svg and, with a restore section, DIR/restore.svg. */
export async function writeHtmlReport(report: BenchReport, dir: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const ratioSvg = await renderRatioChart(report);
  const svg = await renderChart(report);
  const ratioPath = join(dir, 'ratios.svg');
  const svgPath = join(dir, 'latency-cdf.svg');
  writeFileSync(ratioPath, ratioSvg);
  writeFileSync(svgPath, svg);
  const restore = report.restore && !('error' in report.restore) && report.restore.rows.some((r) => r.reps > 0) ? report.restore : null;
  const restoreSvg = restore ? await renderRestoreChart(restore) : null;
  const restorePath = join(dir, 'restore.svg');
  if (restoreSvg) writeFileSync(restorePath, restoreSvg);
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>userfaultfd minor-fault benchmark</title>
<style>
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; font-size: 13px; margin: 12px 0 24px; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 8px; }
th { background: #f3f3f3; text-align: left; }
td.r { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 13px; }
</style></head><body>
<h1>userfaultfd minor-fault benchmark</h1>
${report.incomplete || isQuick(report) ? `<p class="note"><strong>${escapeHtml(caveats(report).join(' '))}</strong></p>\n` : ''}<p class="note">${escapeHtml(machineLine(report.machine))}<br>
${escapeHtml(placementLine())}<br>
Latency is measured by each faulting thread around its first touch of a page (native monotonic clock).<br>
${escapeHtml(statsLine(report))}</p>
<h2>Ratios to the C reference</h2>
${ratioSvg}
<h2>Targets</h2>
<ul>${targetLines({ targets: allTargets(report) }).map((l) => `<li>${escapeHtml(l)}</li>`).join('')}</ul>
<h2>Ratios with intervals</h2>
${htmlTable(ratioTable(report))}
<h2>Latency CDF per cell</h2>
${svg}
<h2>Per-fault latency</h2>
${htmlTable(latencyTable(report))}
<h2>Bulk installation</h2>
${htmlTable(bulkTable(report))}
${report.dirty?.length ? `<h2>Dirty tracking</h2>\n<p class="note">${escapeHtml(dirtyNote(report))}</p>\n${htmlTable(dirtyTable(report))}\n` : ''}${migrationHtml(report)}${restoreHtml(report, restoreSvg)}</body></html>
`;
  const htmlPath = join(dir, 'index.html');
  writeFileSync(htmlPath, html);
  return [htmlPath, ratioPath, svgPath, ...(restoreSvg ? [restorePath] : [])];
}

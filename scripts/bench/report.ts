// Output of a run: the terminal table, the markdown tables for the docs, and
// the HTML report with its CDF chart rendered to SVG in Node by vega-lite.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { BulkRow, MODE_LABEL, ScenarioResult } from './scenarios';

export interface Ratios {
  /** Library / floor scenario p50 and p99 over the C reference of the same page kind, placement, order and threads. */
  p50: number | null;
  p99: number | null;
  /** Faults per second over the C reference's. */
  throughput: number | null;
}

export interface Machine {
  kernel: string;
  cpus: number;
  cpuModel: string;
  pageSize: number;
  hugePageSize: number;
  hugePages: { available: number; reason?: string };
  node: string;
  loadAverage: number[];
  date: string;
}

export interface BenchReport {
  version: 1;
  options: Record<string, unknown>;
  machine: Machine;
  scenarios: (ScenarioResult & { ratios: Ratios; error?: string })[];
  /** vsPopulateRead compares the fastest repetitions; vsPopulateReadMedian the medians. */
  bulk: (BulkRow & { vsPopulateRead: number | null; vsPopulateReadMedian: number | null })[];
  targets: { name: string; value: number | null; target: string; met: boolean | null }[];
  durationMs: number;
  /** Set while the run is under way and when it failed: how far it got. */
  incomplete?: string;
}

/**
 * Said before and after every --quick or --smoke run: users read a quick
 * run's "MISSED" as the library missing its goals.
 */
export const QUICK_NOTE = [
  'QUICK RUN = SMOKE TEST, NOT A MEASUREMENT: 1,000 faults per row (64 with --smoke), each scenario run once,',
  'no repetitions, on a machine that may be busy. Ratios move by tens of percent from one quick run to the next,',
  'so a target marked MISSED here says nothing about the library. Judge the targets on a default run: npm run bench.',
].join('\n');

const isQuick = (report: BenchReport): boolean => Boolean(report.options.quick || report.options.smoke);

export const groupKey = (s: { page: string; placement: string; order: string; threads: number }): string =>
  `${s.page} ${s.placement} ${s.order} ${s.threads}t`;

const us = (ns: number) => (ns / 1000).toFixed(ns < 10_000 ? 2 : 1);
const ratio = (r: number | null) => (r === null ? '' : `${r.toFixed(2)}x`);
const rate = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : n >= 1e3 ? `${(n / 1e3).toFixed(1)}k` : n.toFixed(0));

const PLACEMENT_TEXT: Record<string, string> = {
  same: 'handler and toucher on CPU 0',
  diff: 'handler on CPU 0, touchers on other CPUs',
  unpinned: 'unpinned',
};

interface Table {
  header: string[];
  rows: string[][];
  align: ('l' | 'r')[];
}

function latencyTable(report: BenchReport): Table {
  const header = ['scenario', 'page', 'placement', 'order', 'thr', 'faults', 'p50 µs', 'p90 µs', 'p99 µs', 'p99.9 µs', 'max µs', 'faults/s', 'p50 ×C', 'p99 ×C'];
  const rows = report.scenarios.map((s) => s.error
    ? [MODE_LABEL[s.mode], s.page, s.placement, s.order, String(s.threads), '-', `failed: ${s.error}`, '', '', '', '', '', '', '']
    : [MODE_LABEL[s.mode], s.page, s.placement, s.order, String(s.threads), `${s.resolved || s.touched}/${s.faults}`,
      us(s.latency.p50), us(s.latency.p90), us(s.latency.p99), us(s.latency.p999), us(s.latency.max), rate(s.faultsPerSec),
      ratio(s.ratios.p50), ratio(s.ratios.p99)]);
  return { header, rows, align: ['l', 'l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] };
}

function bulkTable(report: BenchReport): Table {
  const header = ['bulk', 'by', 'page', 'range', 'reps', 'best ms', 'median ms', 'pages/s', 'GiB/s', '×POPULATE_READ', '(median)'];
  const ms = (ns: number) => (ns / 1e6).toFixed(ns < 1e6 ? 3 : 2);
  const rows = report.bulk.map((b) => [b.method, b.by, b.page, `${(b.bytes / 2 ** 20).toFixed(0)} MiB`, String(b.reps), ms(b.bestNs), ms(b.medianNs),
    rate(b.pagesPerSec), b.gibPerSec.toFixed(1), ratio(b.vsPopulateRead), ratio(b.vsPopulateReadMedian ?? null)]);
  return { header, rows, align: ['l', 'l', 'l', 'r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'] };
}

function renderText(t: Table): string {
  const widths = t.header.map((h, i) => Math.max(h.length, ...t.rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (t.align[i] === 'r' ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
  return [line(t.header), widths.map((w) => '-'.repeat(w)).join('  '), ...t.rows.map(line)].join('\n');
}

function renderMarkdown(t: Table): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(t.header), line(t.align.map((a) => (a === 'r' ? '---:' : '---'))), ...t.rows.map(line)].join('\n');
}

function machineLine(m: Machine): string {
  return `Linux ${m.kernel}, ${m.cpus} CPUs (${m.cpuModel}), page ${m.pageSize} B, Node ${m.node}, load ${m.loadAverage.map((l) => l.toFixed(2)).join(' ')}`;
}

function targetLines(report: BenchReport): string[] {
  const verdict = (met: boolean | null) => (met === null ? '' : met ? ' met' : ' MISSED');
  const quick = isQuick(report) ? ' (quick run: not judged, see the note above)' : '';
  return report.targets.map((t) => `${t.name}: ${t.value === null ? 'n/a' : `${t.value.toFixed(2)}x`} (target ${t.target})${verdict(t.met)}${quick}`);
}

/** What comes before the tables when the run was quick or did not finish. */
function caveats(report: BenchReport): string[] {
  const lines: string[] = [];
  if (report.incomplete) lines.push(`INCOMPLETE RUN (${report.incomplete}): the rows below are what was measured before that.`);
  if (isQuick(report)) lines.push(QUICK_NOTE);
  return lines.length ? [...lines, ''] : [];
}

export function textReport(report: BenchReport): string {
  return [
    ...caveats(report),
    machineLine(report.machine),
    `placement: same = ${PLACEMENT_TEXT.same}; diff = ${PLACEMENT_TEXT.diff}; unpinned = ${PLACEMENT_TEXT.unpinned}`,
    '',
    renderText(latencyTable(report)),
    '',
    renderText(bulkTable(report)),
    '',
    ...targetLines(report),
  ].join('\n');
}

export function markdownReport(report: BenchReport): string {
  const kind = report.options.smoke ? '`--smoke`' : report.options.quick ? '`--quick`' : 'default';
  return [
    ...caveats(report).map((l) => (l ? `> ${l.replace(/\n/g, '\n> ')}` : l)),
    `Measured on ${machineLine(report.machine)}; ${kind} run, ${(report.durationMs / 1000).toFixed(0)} s, ${report.machine.date.slice(0, 10)}.`,
    `Placement: **same** = ${PLACEMENT_TEXT.same}; **diff** = ${PLACEMENT_TEXT.diff}; **unpinned** = ${PLACEMENT_TEXT.unpinned}.`,
    '',
    renderMarkdown(latencyTable(report)),
    '',
    renderMarkdown(bulkTable(report)),
    '',
    ...targetLines(report).map((l) => `- ${l}`),
  ].join('\n');
}

/**
 * The ratios alone, for the README: one row per handler, one column per
 * pinned placement (4 KiB pages, one toucher, sequential), p50 and p99 ×C,
 * and the targets. Microseconds stay in docs/benchmark.md: they do not carry
 * from machine to machine, the ratios do.
 */
export function ratioSummary(report: BenchReport): string {
  const placements = ['same', 'diff'].filter((p) => report.scenarios.some((s) => s.placement === p));
  const base = report.scenarios.filter((s) => s.page === '4k' && s.order === 'seq' && s.threads === 1 && s.mode !== 'c-reference' && s.mode !== 'floor');
  const modes = [...new Set(base.map((s) => s.mode))];
  const cell = (mode: string, placement: string) => {
    const s = base.find((r) => r.mode === mode && r.placement === placement);
    return s && s.ratios.p50 !== null ? `${ratio(s.ratios.p50)} / ${ratio(s.ratios.p99)}` : 'n/a';
  };
  const header = ['handler (4 KiB pages, 1 toucher)', ...placements.map((p) => `p50 / p99 ×C, ${p === 'same' ? 'same CPU' : 'other CPU'}`)];
  const table: Table = { header, rows: modes.map((m) => [MODE_LABEL[m as keyof typeof MODE_LABEL], ...placements.map((p) => cell(m, p))]), align: ['l', ...placements.map(() => 'r' as const)] };
  return [
    `${report.options.quick ? '`--quick`' : 'Default'} run of ${report.machine.date.slice(0, 10)}: ${report.machine.cpus} CPUs (${report.machine.cpuModel}), Linux ${report.machine.kernel}, load ${report.machine.loadAverage.map((l) => l.toFixed(1)).join(' ')} during the run. ×C = the library's latency over a C handler's measured in the same run and placement (1.00x = as fast as C); a loaded machine moves the ratios, most of all across CPUs.`,
    '',
    renderMarkdown(table),
    '',
    ...targetLines(report).map((l) => `- ${l}`),
  ].join('\n');
}

// vega and vega-lite ship as ES modules only; a real dynamic import keeps
// tsc's CommonJS output from turning it into require().
const importModule = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<any>;

/** The CDF chart of every scenario, one panel per (page, placement, order, threads), rendered to SVG. */
export async function renderChart(report: BenchReport): Promise<string> {
  const [vega, vegaLite] = await Promise.all([importModule('vega'), importModule('vega-lite')]);
  const values = report.scenarios.filter((s) => !s.error).flatMap((s) =>
    s.latency.cdf.map(([ns, p]) => ({ group: groupKey(s), handler: MODE_LABEL[s.mode], us: Math.max(ns, 1) / 1000, percentile: p })));
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: 'Minor-fault latency as the toucher sees it (CDF)', subtitle: machineLine(report.machine) },
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
    config: { font: 'DejaVu Sans, Helvetica, Arial, sans-serif', background: 'white' },
  };
  const compiled = vegaLite.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg: string = await view.toSVG();
  view.finalize();
  return svg;
}

const escapeHtml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function htmlTable(t: Table): string {
  const head = t.header.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = t.rows.map((r) => `<tr>${r.map((c, i) => `<td class="${t.align[i]}">${escapeHtml(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}

/** Writes DIR/index.html (table + chart) and DIR/latency-cdf.svg. */
export async function writeHtmlReport(report: BenchReport, dir: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const svg = await renderChart(report);
  const svgPath = join(dir, 'latency-cdf.svg');
  writeFileSync(svgPath, svg);
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
${report.incomplete || isQuick(report) ? `<p class="note"><strong>${escapeHtml(caveats(report).join(" "))}</strong></p>\n` : ""}<p class="note">${escapeHtml(machineLine(report.machine))}<br>
Placement: same = ${PLACEMENT_TEXT.same}; diff = ${PLACEMENT_TEXT.diff}; unpinned = ${PLACEMENT_TEXT.unpinned}.
Latency is measured by each faulting thread around its first touch of a page (native monotonic clock).
Ratios (×C) compare with the C reference handler measured in the same run with the same placement.</p>
<h2>Latency CDF per scenario</h2>
${svg}
<h2>Per-fault latency</h2>
${htmlTable(latencyTable(report))}
<h2>Bulk installation</h2>
${htmlTable(bulkTable(report))}
<h2>Targets</h2>
<ul>${targetLines(report).map((l) => `<li>${escapeHtml(l)}</li>`).join('')}</ul>
</body></html>
`;
  const htmlPath = join(dir, 'index.html');
  writeFileSync(htmlPath, html);
  return [htmlPath, svgPath];
}

// What every report of the benchmarks is made of: tables rendered as text,
// markdown or HTML, figures with their intervals, the machine line, the
// targets' verdict lines, and vega-lite charts rendered to SVG in Node.
import type { Target } from './analysis';
import type { Interval } from './stats';

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

export interface Table {
  header: string[];
  rows: string[][];
  align: ('l' | 'r')[];
}

const x = (v: number) => (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2));
export const ratio = (r: number | null | undefined) => (r === null || r === undefined ? '' : `${x(r)}x`);
/** "1.02x [0.98-1.07]": the value and its 95% interval. */
export const interval = (i: Interval | null | undefined) => (!i ? '' : `${x(i.value)}x [${x(i.lo)}-${x(i.hi)}]`);

export function renderText(t: Table): string {
  const widths = t.header.map((h, i) => Math.max(h.length, ...t.rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (t.align[i] === 'r' ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ').trimEnd();
  return [line(t.header), widths.map((w) => '-'.repeat(w)).join('  '), ...t.rows.map(line)].join('\n');
}

export function renderMarkdown(t: Table): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(t.header), line(t.align.map((a) => (a === 'r' ? '---:' : '---'))), ...t.rows.map(line)].join('\n');
}

export function machineLine(m: Machine): string {
  return `Linux ${m.kernel}, ${m.cpus} CPUs (${m.cpuModel}), page ${m.pageSize} B, Node ${m.node}, load ${m.loadAverage.map((l) => l.toFixed(2)).join(' ')}`;
}

const VERDICT_TEXT = { met: 'met', missed: 'MISSED', inconclusive: 'inconclusive: noise' } as const;

export function targetLines(report: { targets: Target[] }): string[] {
  const lines: string[] = [];
  for (const t of report.targets) {
    if (!t.verdict) {
      lines.push(`${t.name} (target ${t.target}): n/a, ${t.reason}`);
      continue;
    }
    // The check that decides: the worst interval for the target.
    // Missed: the check furthest past the target; otherwise the one whose interval reaches furthest.
    const worst = t.verdict === 'missed'
      ? [...t.checks].filter((c) => c.verdict === 'missed').sort((a, b) => (t.atLeast ? a.hi - b.hi : b.lo - a.lo))[0]
      : [...t.checks].sort((a, b) => (t.atLeast ? a.lo - b.lo : b.hi - a.hi))[0];
    const spread = Math.min(...t.checks.map((c) => c.lo));
    const top = Math.max(...t.checks.map((c) => c.hi));
    // Runs from before targets had units are all ratios.
    const unit = !t.unit || t.unit === 'x' ? 'x' : ` ${t.unit}`;
    lines.push(`${t.name} (target ${t.target}): ${VERDICT_TEXT[t.verdict]}; ${t.checks.length} row(s), intervals within ${x(spread)}-${x(top)}${unit}, worst ${worst.row} ${x(worst.value)}${unit} [${x(worst.lo)}-${x(worst.hi)}]${worst.n < 5 ? ` (${worst.n} ${unit === 'x' ? 'pairs' : 'repetitions'}: too few to judge)` : ''}`);
    for (const c of t.checks) if (c.verdict !== 'met' && c.row !== worst.row) lines.push(`    ${VERDICT_TEXT[c.verdict]}: ${c.row} ${x(c.value)}${unit} [${x(c.lo)}-${x(c.hi)}]`);
  }
  return lines;
}

// vega and vega-lite ship as ES modules only; a real dynamic import keeps
// tsc's CommonJS output from turning it into require().
const importModule = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<any>;

export async function toSvg(spec: object): Promise<string> {
  const [vega, vegaLite] = await Promise.all([importModule('vega'), importModule('vega-lite')]);
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  const svg: string = await view.toSVG();
  view.finalize();
  return svg;
}

export const CONFIG = { font: 'DejaVu Sans, Helvetica, Arial, sans-serif', background: 'white' };

export const escapeHtml = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function htmlTable(t: Table): string {
  const head = t.header.map((h) => `<th>${escapeHtml(h)}</th>`).join('');
  const body = t.rows.map((r) => `<tr>${r.map((c, i) => `<td class="${t.align[i]}">${escapeHtml(c)}</td>`).join('')}</tr>`).join('\n');
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${body}\n</tbody></table>`;
}


// `userfaultfd working-set show|merge`: a working-set file as a person reads
// it, and recordings merged into one.
import { WorkingSet, pageRuns, readWorkingSet, writeWorkingSet } from './format';
import { mergeWorkingSets, similarity } from './merge';

export const WORKING_SET_USAGE = `Usage: userfaultfd working-set show FILE [--json]
       userfaultfd working-set merge OUT IN1 IN2 ... [--min-runs K]

  show FILE          what a working-set file holds: sizes, entries, runs, the
                     share of writes, and a picture of page offset against
                     first-touch order
    --json           print it as JSON instead (every entry included)
  merge OUT IN...    keep the pages at least K of the inputs hold (default: all),
                     ordered by mean first-touch rank; write them to OUT and
                     print how alike the inputs are (Jaccard index per pair)
    --min-runs K     keep pages held by at least K inputs
  --help             show this text
`;

const MIB = 1024 * 1024;

function bytes(n: number): string {
  if (n >= 1024 * MIB) return `${(n / (1024 * MIB)).toFixed(2)} GiB`;
  if (n >= MIB) return `${(n / MIB).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Summary numbers of a working set, as `show --json` prints them (without the entries). */
export function summarize(set: WorkingSet): Record<string, number> {
  const entries = set.entries;
  const pageCount = set.memorySize / set.pageSize;
  const writes = entries.filter((e) => e.write).length;
  const runs = pageRuns(entries.map((e) => e.page));
  return {
    pageSize: set.pageSize,
    memorySize: set.memorySize,
    regions: set.regions,
    runs: set.runs ?? 1,
    entryCount: entries.length,
    bytes: entries.length * set.pageSize,
    memoryShare: pageCount === 0 ? 0 : entries.length / pageCount,
    writeShare: entries.length === 0 ? 0 : writes / entries.length,
    durationUs: entries.reduce((max, e) => Math.max(max, e.timeUs), 0),
    contiguousRuns: runs.length,
  };
}

/**
 * Page offset (rows, low addresses at the top) against first-touch rank
 * (columns): each cell shows how many entries fall in it, from ' ' to '#'.
 */
export function scatter(set: WorkingSet, width = 64, height = 16): string[] {
  const n = set.entries.length;
  const pageCount = Math.max(1, set.memorySize / set.pageSize);
  const grid = Array.from({ length: height }, () => new Array<number>(width).fill(0));
  set.entries.forEach((e, i) => {
    const col = Math.min(width - 1, Math.floor((i * width) / Math.max(1, n)));
    const row = Math.min(height - 1, Math.floor((e.page * height) / pageCount));
    grid[row][col]++;
  });
  const most = Math.max(1, ...grid.flat());
  const shades = ' .:+*#';
  const label = (row: number) => bytes(Math.floor((row * pageCount) / height) * set.pageSize).padStart(10);
  const lines = grid.map((cells, row) =>
    `${label(row)} |${cells.map((c) => (c === 0 ? ' ' : shades[Math.max(1, Math.ceil((c / most) * (shades.length - 1)))])).join('')}|`);
  lines.push(`${' '.repeat(10)} +${'-'.repeat(width)}+`);
  lines.push(`${' '.repeat(12)}${'rank 0'.padEnd(width - String(Math.max(0, n - 1)).length - 5)}rank ${Math.max(0, n - 1)}`);
  return lines;
}

/** `show`'s text. */
export function formatShow(file: string, set: WorkingSet): string {
  const s = summarize(set);
  const pct = (x: number) => `${(x * 100).toFixed(1)}%`;
  const lines = [
    `working set  ${file}`,
    `memory       ${bytes(s.memorySize)} in ${s.memorySize / s.pageSize} pages of ${bytes(s.pageSize)}, ${s.regions} region${s.regions === 1 ? '' : 's'}`,
    `entries      ${s.entryCount} pages (${bytes(s.bytes)}, ${pct(s.memoryShare)} of memory), from ${s.runs} run${s.runs === 1 ? '' : 's'}`,
    `writes       ${pct(s.writeShare)} of first touches`,
    `time         last first touch at ${(s.durationUs / 1000).toFixed(1)} ms`,
    `contiguous   ${s.contiguousRuns} runs in touch order${s.contiguousRuns ? `, ${(s.entryCount / s.contiguousRuns).toFixed(1)} pages each on average` : ''}`,
  ];
  if (set.entries.length) {
    lines.push('', 'page offset against first-touch order:');
    lines.push(...scatter(set));
  }
  return `${lines.join('\n')}\n`;
}

function fail(err: unknown): number {
  const e = err as { code?: string; message?: string };
  process.stderr.write(`userfaultfd working-set: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}\n`);
  return 1;
}

function usage(): number {
  process.stderr.write(WORKING_SET_USAGE);
  return 2;
}

/** Runs `working-set ...` (`args` after `working-set`); returns the exit code. */
export function workingSetMain(args: readonly string[]): number {
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(WORKING_SET_USAGE);
    return 0;
  }
  const [command, ...rest] = args;
  if (command === 'show') {
    const json = rest.includes('--json');
    const files = rest.filter((a) => a !== '--json');
    if (files.length !== 1 || files[0].startsWith('-')) return usage();
    try {
      const set = readWorkingSet(files[0]);
      process.stdout.write(json ? `${JSON.stringify({ file: files[0], ...summarize(set), entries: set.entries }, null, 2)}\n` : formatShow(files[0], set));
      return 0;
    } catch (err) {
      return fail(err);
    }
  }
  if (command === 'merge') {
    const files: string[] = [];
    let minRuns: number | undefined;
    for (let i = 0; i < rest.length; i++) {
      const a = rest[i];
      if (a === '--min-runs') {
        const value = rest[++i];
        if (value === undefined || !/^[1-9][0-9]*$/.test(value)) return usage();
        minRuns = Number(value);
      } else if (a.startsWith('--min-runs=')) {
        const value = a.slice('--min-runs='.length);
        if (!/^[1-9][0-9]*$/.test(value)) return usage();
        minRuns = Number(value);
      } else if (a.startsWith('-')) return usage();
      else files.push(a);
    }
    const [out, ...inputs] = files;
    if (out === undefined || inputs.length < 1 || (minRuns !== undefined && minRuns > inputs.length)) return usage();
    try {
      const sets = inputs.map((f) => readWorkingSet(f));
      const merged = mergeWorkingSets(sets, { minRuns });
      const sim = similarity(sets);
      writeWorkingSet(out, merged);
      const lines = ['similarity (Jaccard index of the page sets):'];
      const width = Math.max(...inputs.map((f) => f.length), 4);
      lines.push(`${''.padEnd(width)}  ${inputs.map((_, j) => `#${j + 1}`.padStart(6)).join('')}`);
      inputs.forEach((f, i) => lines.push(`${f.padEnd(width)}  ${sim.matrix[i].map((x) => x.toFixed(3).padStart(6)).join('')}   #${i + 1}`));
      lines.push(`median ${sim.median.toFixed(3)}`);
      lines.push(`merged ${inputs.length} inputs (${merged.runs} runs): ${merged.entries.length} pages held by at least ${minRuns ?? inputs.length}, written to ${out}`);
      process.stdout.write(`${lines.join('\n')}\n`);
      return 0;
    } catch (err) {
      return fail(err);
    }
  }
  return usage();
}

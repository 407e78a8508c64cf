// `npm run bench`: minor-fault latency of every handler mode of the library,
// side by side with the kernel floor and C reference handlers measured
// interleaved with it in the same run. See docs/benchmark.md for what each
// row means and how the intervals and verdicts are computed.
//
//   npm run bench -- [--quick | --smoke] [--json FILE] [--report DIR] [--markdown [FILE]] [--docs] [--compare OLD.json] [--check] ...
import { readFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';

import { SingleBar } from 'cli-progress';

import { PAGE_SIZE, probe } from '../lib/index';
import { BulkRatio, RowResult, cellRows, compareRuns, rowId, targets } from './bench/analysis';
import { COMMON_OPTIONS, parseCommandLine } from './bench/cli';
import { DIRTY_METHOD_LIST, DIRTY_SIZES, DirtyRow, measureDirty } from './bench/dirty';
import { reserveHugePages } from './bench/hugepages';
import { MigrationModes, runMigrationModes } from './bench/migration';
import { writeFileAtomic, writeMarkdown, replaceBetweenMarkers } from './bench/output';
import { BenchReport, QUICK_NOTE, allTargets, compareText, markdownReport, ratioSummary, textReport, writeHtmlReport } from './bench/report';
import { analyse } from './bench/restore-analysis';
import { RestoreReport, writeRestoreDocs } from './bench/restore-report';
import { RESTORE_SIZES, runRestoreBench, wrongRestores } from './bench/restore-run';
import { BulkRow, Cell, LibraryCaps, MAP_AHEAD, Mode, Order, PageKind, Placement, Rep, filledMemfd, pageSizeFor, probeLibrary, runBulk, runRep } from './bench/scenarios';
import { BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, medianInterval, pageOrders } from './bench/stats';

const USAGE = [
  'usage: npm run bench -- [--quick | --smoke] [--json FILE] [--report DIR] [--markdown [FILE]] [--docs] [--compare OLD.json] [--check] [--no-huge] [--seed N] [--only REGEX]',
  '  --quick          9 interleaved repetitions of 300 faults per row (under a minute on 2 CPUs): a smoke test; default 15 of 1000',
  '  --smoke          3 repetitions of 32 faults: checks that every row resolves its faults (the test runs it)',
  '  --json FILE      every figure, intervals, machine facts and verdicts (rewritten after each cell)',
  '  --report DIR     index.html with the ratio chart, the tables and latency CDFs; ratios.svg, latency-cdf.svg, restore.svg',
  '  --markdown       print the tables as markdown instead of text',
  '  --markdown FILE  write them to FILE (only between its bench markers when it has them)',
  '  --docs           a default run only: write the tables into docs/benchmark.md, the ratios into README.md, the restore tables into docs/working-set.md',
  '  --compare FILE   per-row changes of the ratios against an earlier --json FILE, with both intervals',
  '  --check          exit 1 when a target is missed (its whole interval on the wrong side); else only failures do',
  '  --no-huge        skip the 2 MiB hugetlb rows (no vm.nr_hugepages change)',
  '  --seed N         seed of the random page orders (default 1); the bootstrap seed is fixed (printed)',
  '  --only REGEX     run only the rows whose id matches (and their references), e.g. "4k/(c-reference|native-resolver)/same", "bulk", "dirty", "migration", "restore"',
  '  --from FILE      measure nothing: print (and --report, --markdown, --docs, --compare) an earlier --json FILE',
  '',
].join('\n');

const args = parseCommandLine('bench', USAGE, {
  ...COMMON_OPTIONS,
  report: { type: 'string' },
  compare: { type: 'string' },
  'no-huge': { type: 'boolean', default: false },
  only: { type: 'string' },
  from: { type: 'string' },
});

// Sizes per run length: interleaved repetitions per cell, pages per
// repetition (4 KiB rows, 2 MiB rows, per toucher in the scaling rows, the
// sequential scan), and the bulk ranges and their repetitions.
const SIZES = {
  smoke: { reps: 3, small: 32, huge: 2, perToucher: 16, scan: 256, bulkSmall: 1024, bulkHuge: 4, bulkReps: 3 },
  quick: { reps: 9, small: 300, huge: 0, perToucher: 64, scan: 2048, bulkSmall: 16384, bulkHuge: 32, bulkReps: 7 },
  full: { reps: 15, small: 1000, huge: 32, perToucher: 500, scan: 8192, bulkSmall: 65536, bulkHuge: 128, bulkReps: 11 },
} as const;
const size = args.smoke ? SIZES.smoke : args.quick ? SIZES.quick : SIZES.full;
const dirtySize = DIRTY_SIZES[args.smoke ? 'smoke' : args.quick ? 'quick' : 'full'];
// The live-migration demo's guest (MiB) and how long it runs after each migration (s).
const migrationSize = args.smoke ? { mib: 8, after: 0.5 } : args.quick ? { mib: 64, after: 1 } : { mib: 256, after: 3 };
// The restore section: the sizes of npm run bench:restore for the same run length.
const restoreSize = RESTORE_SIZES[args.smoke ? 'smoke' : args.quick ? 'quick' : 'full'];
const seed = Number(args.seed);

const SINGLE_MODES: Mode[] = ['floor', 'c-reference', 'c-reference+spin', 'native-resolver', 'native-resolver+spin',
  'event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];
const SCALING_MODES: Mode[] = ['c-reference', 'native-resolver', 'event-loop+native-toucher'];
// The per-fault rows (C, resolver without mapAhead) are in the latency cells: here only the scan's floors and mapAhead.
const SCAN_MODES: Mode[] = ['floor+fault-around', 'floor', 'native-resolver+map-ahead'];

function plan(cpuCount: number, hugeOk: boolean, caps: LibraryCaps): Cell[] {
  const list: Cell[] = [];
  const only = args.only === undefined ? undefined : new RegExp(args.only);
  const add = (c: Omit<Cell, 'id'>) => {
    const id = rowId(c, c.reference).replace(`/${c.reference}/`, '/');
    // The scaling rows' one-toucher sequential cell is the unpinned placement cell.
    if (list.some((l) => l.id === id)) return;
    const modes = c.modes.filter((m) => !only || only.test(rowId(c, m)));
    if (!modes.length) return;
    if (!modes.includes(c.reference)) modes.unshift(c.reference);
    list.push({ ...c, id, modes });
  };
  const placements: Placement[] = cpuCount > 1 ? ['same', 'diff', 'unpinned'] : ['same', 'unpinned'];
  // spinUs rows only where the library has the option: without it the row would be the plain resolver again.
  const single = SINGLE_MODES.filter((m) => m !== 'native-resolver+spin' || caps.spinUs);
  // 2 MiB latency rows in default and smoke runs (quick keeps its minute for the 4 KiB rows).
  for (const page of (hugeOk && size.huge > 0 ? ['4k', '2m'] : ['4k']) as PageKind[])
    for (const placement of placements)
      add({ kind: 'latency', page, placement, order: 'seq', threads: 1, handlers: 1, pages: page === '2m' ? size.huge : size.small, modes: single, reference: 'c-reference' });
  // Scaling: touchers contend for the handler; random order defeats any
  // locality the page tables or the handler's batching could exploit.
  for (const order of ['seq', 'random'] as Order[])
    for (const threads of [1, 2, 4, 8]) {
      add({ kind: 'latency', page: '4k', placement: 'unpinned', order, threads, handlers: 1, pages: size.perToucher * threads, modes: SCALING_MODES, reference: 'c-reference' });
      // More than one handler thread: C on one uffd, the resolver's `threads` (when the library has it).
      if (threads >= 4 && caps.threads)
        add({ kind: 'latency', page: '4k', placement: 'unpinned', order, threads, handlers: 2, pages: size.perToucher * threads, modes: ['c-reference', 'native-resolver'], reference: 'c-reference' });
    }
  add({ kind: 'scan', page: '4k', placement: 'diff', order: 'seq', threads: 1, handlers: 1, pages: Math.ceil(size.scan / MAP_AHEAD) * MAP_AHEAD, modes: SCAN_MODES, reference: 'floor+fault-around' });
  return list;
}

const repo = join(__dirname, '..', '..');

function readReport(file: string): BenchReport {
  const report = JSON.parse(readFileSync(file, 'utf8')) as BenchReport;
  if (report.version !== 2) throw new Error(`${file}: version ${report.version} JSON (this benchmark reads version 2: interleaved repetitions with intervals)`);
  // The restore section's ratios and verdicts, recomputed from its rounds by today's analysis.
  if (report.restore && !('error' in report.restore)) Object.assign(report.restore, analyse(report.restore.rows));
  return report;
}

/** Everything a finished (or failed) run writes besides the JSON. */
async function publish(report: BenchReport): Promise<void> {
  if (args.report) process.stderr.write(`report: ${(await writeHtmlReport(report, args.report)).join(', ')}\n`);
  if (args.markdown && args.markdown !== '-') {
    writeMarkdown(args.markdown, markdownReport(report));
    process.stderr.write(`markdown: ${args.markdown}\n`);
  }
  if (args.docs) await writeDocs(report);
  process.stdout.write(`${args.markdown === '-' ? markdownReport(report) : textReport(report)}\n`);
  if (args.compare) process.stdout.write(`\n${compareText(compareRuns(report, readReport(args.compare)), args.compare)}\n`);
  const missed = allTargets(report).filter((t) => t.verdict === 'missed');
  if (args.check && missed.length) {
    process.stderr.write(`--check: ${missed.length} target(s) missed: ${missed.map((t) => t.name).join('; ')}\n`);
    process.exitCode = 1;
  }
}

/** The documented figures: only a complete default run on every scenario may stand for them. */
async function writeDocs(report: BenchReport): Promise<void> {
  const o = report.options;
  if (o.quick || o.smoke || o.only !== null || report.incomplete) {
    process.stderr.write('--docs: docs left as they are: only a complete default run (no --quick, --smoke, --only) is written into them\n');
    process.exitCode = 1;
    return;
  }
  for (const [file, name, text] of [['docs/benchmark.md', 'bench', markdownReport(report)], ['README.md', 'bench-ratios', ratioSummary(report)]]) {
    if (!replaceBetweenMarkers(join(repo, file), name, text)) throw new Error(`${file} lacks the ${name} markers`);
    process.stderr.write(`docs: ${file}\n`);
  }
  const restore = report.restore;
  if (restore && !('error' in restore) && !restore.incomplete) process.stderr.write(`docs: ${(await writeRestoreDocs(restore, repo)).join(', ')}\n`);
  else {
    process.stderr.write(`--docs: docs/working-set.md left as it is: the restore section ${restore ? ('error' in restore ? `failed: ${restore.error}` : `is incomplete: ${restore.incomplete}`) : 'was not run'}\n`);
    process.exitCode = 1;
  }
}

function bulkRatios(bulk: BulkRow[]): (BulkRow & { vsPopulateRead: BulkRatio['vsPopulateRead'] })[] {
  return bulk.map((b) => {
    const pop = bulk.find((p) => p.page === b.page && p.by === b.by && p.method === 'populate-read');
    // Repetition r of POPULATE_READ ran right after repetition r of CONTINUE.
    const pairs = pop ? b.ns.map((ns, r) => pop.ns[r] / ns).filter((x) => Number.isFinite(x)) : [];
    return { ...b, vsPopulateRead: pairs.length ? medianInterval(pairs) : null };
  });
}

async function measureCell(cell: Cell, cpuCount: number, caps: LibraryCaps, cellIndex: number, tick: () => void): Promise<RowResult[]> {
  const huge = cell.page === '2m';
  const orders = pageOrders(cell.pages, cell.threads, cell.order, seed + cellIndex);
  const reps = new Map<Mode, Rep[]>(cell.modes.map((m) => [m, []]));
  const errors = new Map<Mode, string>();
  const mem = filledMemfd(cell.pages, huge);
  const t0 = Date.now();
  try {
    for (let r = 0; r < size.reps; r++) {
      // Every round runs each row once, in an order rotated round by round,
      // so no row always runs first (or right after the same one).
      const k = r % cell.modes.length;
      for (const mode of [...cell.modes.slice(k), ...cell.modes.slice(0, k)]) {
        if (errors.has(mode)) continue;
        try {
          reps.get(mode)!.push(await runRep(mode, cell, mem, orders, cpuCount, caps));
        } catch (err) {
          errors.set(mode, (err as Error).message);
        }
      }
      tick();
    }
  } finally {
    mem.close();
  }
  const cellMs = Date.now() - t0;
  return cellRows(cell, pageSizeFor(huge), reps, errors).map((r) => ({ ...r, cellMs }));
}

async function main(): Promise<void> {
  if (args.from) return publish(readReport(args.from));
  const started = Date.now();
  const caps = probe();
  if (!caps.available || !caps.features.minorShmem) {
    process.stderr.write(`userfaultfd MINOR mode is not usable here: ${caps.reasons.join('; ') || 'kernel lacks minorShmem'}\n`);
    process.exit(2);
  }
  if (args.quick || args.smoke) process.stderr.write(`${QUICK_NOTE}\n`);
  const cpuCount = cpus().length;
  const lib = probeLibrary();
  const hugeWanted = !args['no-huge'] && caps.features.minorHugetlbfs;
  // One memfd at a time: the largest of a cell's and the bulk range, plus slack.
  const huge = hugeWanted ? reserveHugePages(Math.max(size.huge, size.bulkHuge) + 4) : { available: 0, reason: args['no-huge'] ? '--no-huge' : 'kernel lacks minorHugetlbfs', restore() {} };
  const hugeOk = hugeWanted && huge.available >= Math.max(size.huge, size.bulkHuge);
  const only = args.only === undefined ? undefined : new RegExp(args.only);
  const cells = plan(cpuCount, hugeOk, lib);
  const bulkPlan = ([['4k', size.bulkSmall], ...(hugeOk ? [['2m', size.bulkHuge]] : [])] as [PageKind, number][])
    .filter(([page]) => !only || only.test(`${page}/bulk`));
  const dirtyPlan = DIRTY_METHOD_LIST.filter((method) => !only || only.test(`dirty/${method}`));
  const migrationWanted = !only || only.test('migration');
  const restoreWanted = !only || only.test('restore');

  const bar = new SingleBar({ stream: process.stderr, format: 'bench [{bar}] {value}/{total} {cell}', hideCursor: true, clearOnComplete: true });
  bar.start(cells.length * size.reps + bulkPlan.length + dirtyPlan.length + (migrationWanted ? 1 : 0) + (restoreWanted ? restoreSize.reps : 0), 0, { cell: '' });
  let done = 0;
  const rows: RowResult[] = [];
  const bulk: BulkRow[] = [];
  const dirty: DirtyRow[] = [];
  let migration: MigrationModes | { error: string } | undefined;
  let restore: RestoreReport | { error: string } | undefined;
  // Rewritten after every cell, so a run that dies later keeps what it measured.
  const save = (incomplete?: string): BenchReport => {
    const report = assemble(rows, bulk, dirty, migration, restore, cpuCount, huge, lib, started, incomplete);
    if (args.json) writeFileAtomic(args.json, `${JSON.stringify(report, null, 2)}\n`);
    return report;
  };
  try {
    let failure: Error | undefined;
    try {
      for (const [i, cell] of cells.entries()) {
        bar.update(done, { cell: cell.id });
        rows.push(...await measureCell(cell, cpuCount, lib, i, () => bar.update(++done, { cell: cell.id })));
        save(`stopped after ${i + 1} of ${cells.length} cells`);
      }
      for (const [j, [page, pages]] of bulkPlan.entries()) {
        bar.update(done, { cell: `${page}/bulk` });
        bulk.push(...runBulk(page, pages, size.bulkReps));
        bar.update(++done, { cell: `${page}/bulk` });
        save(`stopped after ${j + 1} of ${bulkPlan.length} bulk ranges`);
      }
      for (const [k, method] of dirtyPlan.entries()) {
        bar.update(done, { cell: `dirty/${method}` });
        dirty.push(await measureDirty(method, dirtySize.bytes, dirtySize.reps, seed));
        bar.update(++done, { cell: `dirty/${method}` });
        save(`stopped after ${k + 1} of ${dirtyPlan.length} dirty-tracking methods`);
      }
      if (migrationWanted) {
        bar.update(done, { cell: 'migration' });
        // A failed demo is reported in its section; the rows measured so far stand.
        migration = await runMigrationModes(migrationSize.mib, migrationSize.after).catch((err: Error) => ({ error: err.message }));
        bar.update(++done, { cell: 'migration' });
      }
      if (restoreWanted) {
        bar.update(done, { cell: 'restore' });
        // As the migration demo: a failed restore run is reported in its section (with the rounds it measured).
        restore = await runRestoreBench({
          imageMiB: restoreSize.mib, reps: restoreSize.reps, seed, quick: args.quick, smoke: args.smoke,
          onRound: (partial, round) => {
            restore = partial;
            bar.update(++done, { cell: 'restore' });
            save(`stopped after ${round} of ${restoreSize.reps} restore rounds`);
          },
        }).then(({ report }) => report, (err: Error) => ({ error: err.message }));
      }
    } catch (err) {
      failure = err as Error;
    }
    bar.stop();

    const report = save(failure && `failed after ${rows.length} rows and ${bulk.length} bulk rows: ${failure.message}`);
    await publish(report);
    if (failure) throw failure;
    const unresolved = report.rows.filter((s) => !s.allResolved);
    if (unresolved.length) {
      for (const s of unresolved)
        process.stderr.write(`did not resolve all its faults: ${s.id}: faults ${s.faults}, touched ${s.touched}, messages ${s.messages}, resolved ${s.resolved}, checksum ${s.checksumOk ? 'ok' : 'WRONG'}${s.error ? `, error: ${s.error}` : ''}${s.note ? `, ${s.note}` : ''}\n`);
      process.exitCode = 1;
    }
    const restoreWrong = !report.restore ? [] : 'error' in report.restore ? [`failed: ${report.restore.error}`]
      : [...(report.restore.incomplete ? [report.restore.incomplete] : []), ...wrongRestores(report.restore).map((r) => `${r.mode}: ${r.error ?? 'bytes or faults wrong'}`)];
    if (restoreWrong.length) {
      for (const line of restoreWrong) process.stderr.write(`did not restore right: ${line}\n`);
      process.exitCode = 1;
    }
  } finally {
    bar.stop();
    huge.restore();
  }
}

function assemble(rows: RowResult[], bulk: BulkRow[], dirty: DirtyRow[], migration: MigrationModes | { error: string } | undefined, restore: RestoreReport | { error: string } | undefined, cpuCount: number, huge: { available: number; reason?: string }, lib: LibraryCaps, started: number, incomplete?: string): BenchReport {
  const bulkRows = bulkRatios(bulk);
  const cpu = cpus()[0];
  return {
    version: 2,
    options: {
      quick: args.quick, smoke: args.smoke, seed, noHuge: args['no-huge'], only: args.only ?? null, reps: size.reps,
      bootstrap: { resamples: BOOTSTRAP_RESAMPLES, seed: BOOTSTRAP_SEED, level: 0.95 },
    },
    library: lib,
    machine: {
      kernel: release(), cpus: cpuCount, cpuModel: cpu ? cpu.model : 'unknown', pageSize: PAGE_SIZE, hugePageSize: 2 * 1024 * 1024,
      hugePages: { available: huge.available, reason: huge.reason }, node: process.version, loadAverage: loadavg(), date: new Date().toISOString(),
    },
    rows,
    bulk: bulkRows,
    dirty,
    ...(migration ? { migration } : {}),
    ...(restore ? { restore } : {}),
    targets: targets(rows, bulkRows, lib.spinUs, dirty),
    durationMs: Date.now() - started,
    ...(incomplete ? { incomplete } : {}),
  };
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

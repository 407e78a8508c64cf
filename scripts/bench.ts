// `npm run bench`: minor-fault latency of every handler mode of the library,
// side by side with the kernel floor and a C reference handler measured in
// the same run. See docs/benchmark.md for what each row means.
//
//   npm run bench -- [--quick | --smoke] [--json FILE] [--report DIR] [--markdown [FILE]] [--docs] [--no-huge] [--seed N]
import { readFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { SingleBar } from 'cli-progress';

import { PAGE_SIZE, probe } from '../lib/index';
import { reserveHugePages } from './bench/hugepages';
import { writeFileAtomic, writeMarkdown, replaceBetweenMarkers } from './bench/output';
import { BenchReport, QUICK_NOTE, Ratios, markdownReport, ratioSummary, textReport, writeHtmlReport } from './bench/report';
import { BulkRow, Mode, Order, PageKind, Placement, Scenario, ScenarioResult, runBulk, runScenario } from './bench/scenarios';
import { pageOrders, summarize } from './bench/stats';

const USAGE = [
  'usage: npm run bench -- [--quick | --smoke] [--json FILE] [--report DIR] [--markdown [FILE]] [--docs] [--no-huge] [--seed N] [--only REGEX]',
  '  --quick          1000 faults per scenario (under a minute on 2 CPUs): a smoke test, not a measurement; default 10000',
  '  --smoke          64 faults per scenario: checks that every mode resolves its faults',
  '  --json FILE      every figure, machine facts and ratios (rewritten after each scenario)',
  '  --report DIR     index.html with the table and a latency CDF chart, and latency-cdf.svg',
  '  --markdown       print the tables as markdown instead of text',
  '  --markdown FILE  write them to FILE (only between its bench markers when it has them)',
  '  --docs           a default run only: write the tables into docs/benchmark.md and the ratios into README.md',
  '  --no-huge        skip the 2 MiB hugetlb rows (no vm.nr_hugepages change)',
  '  --seed N         seed of the random page orders (default 1)',
  '  --only REGEX     run only the scenarios whose id matches, e.g. "4k/(c-reference|native-resolver)/same"',
  '  --from FILE      measure nothing: print (and --report, --markdown, --docs) the results of an earlier --json FILE',
  '',
].join('\n');

// `--markdown` alone prints to stdout; `--markdown FILE` writes FILE.
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
    report: { type: 'string' },
    markdown: { type: 'string' },
    docs: { type: 'boolean', default: false },
    'no-huge': { type: 'boolean', default: false },
    seed: { type: 'string', default: '1' },
    only: { type: 'string' },
    from: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
    },
  });
} catch (err) {
  process.stderr.write(`bench: ${(err as Error).message}\n\n${USAGE}`);
  process.exit(2);
}
const args = parsed.values;

if (args.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}

// Sizes per run length: faults per latency scenario, huge pages per scenario,
// pages per bulk range and bulk repetitions.
const SIZES = {
  smoke: { small: 64, huge: 4, bulkSmall: 1024, bulkHuge: 4, reps: 2 },
  quick: { small: 1000, huge: 16, bulkSmall: 16384, bulkHuge: 32, reps: 7 },
  full: { small: 10000, huge: 64, bulkSmall: 65536, bulkHuge: 128, reps: 11 },
} as const;
const size = args.smoke ? SIZES.smoke : args.quick ? SIZES.quick : SIZES.full;
const seed = Number(args.seed);

const PLACEMENT_MODES: Mode[] = ['floor', 'c-reference', 'native-resolver', 'event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];
const SCALING_MODES: Mode[] = ['c-reference', 'native-resolver', 'event-loop+native-toucher'];

function plan(cpuCount: number, hugeOk: boolean): Scenario[] {
  const list: Scenario[] = [];
  const seen = new Set<string>();
  const add = (mode: Mode, page: PageKind, placement: Placement, order: Order, threads: number) => {
    const id = `${page}/${mode}/${placement}/${order}/${threads}t`;
    if (seen.has(id)) return;
    seen.add(id);
    list.push({ id, mode, page, placement, order, threads, pages: page === '2m' ? size.huge : size.small });
  };
  const placements: Placement[] = cpuCount > 1 ? ['same', 'diff', 'unpinned'] : ['same', 'unpinned'];
  for (const page of (hugeOk ? ['4k', '2m'] : ['4k']) as PageKind[])
    for (const placement of placements)
      for (const mode of PLACEMENT_MODES) add(mode, page, placement, 'seq', 1);
  // Scaling: touchers contend for one handler; random order defeats any
  // locality the page tables or the handler's batching could exploit.
  for (const order of ['seq', 'random'] as Order[])
    for (const threads of [1, 2, 4])
      for (const mode of SCALING_MODES) add(mode, '4k', 'unpinned', order, threads);
  return list;
}

function ratiosFor(s: ScenarioResult, all: ScenarioResult[]): Ratios {
  const ref = all.find((r) => r.mode === 'c-reference' && r.page === s.page && r.placement === s.placement && r.order === s.order && r.threads === s.threads);
  if (!ref || !ref.latency.count || !s.latency.count) return { p50: null, p99: null, throughput: null };
  return { p50: s.latency.p50 / ref.latency.p50, p99: s.latency.p99 / ref.latency.p99, throughput: s.faultsPerSec / ref.faultsPerSec };
}

function emptyResult(s: Scenario): ScenarioResult {
  return {
    ...s, pageSize: s.page === '2m' ? 2 * 1024 * 1024 : PAGE_SIZE, handlerCpu: -1, toucherCpus: [], faults: s.pages, touched: 0, messages: 0,
    resolved: 0, checksumOk: false, allResolved: false, latency: summarize([]), wallNs: 0, faultsPerSec: 0,
  };
}

const repo = join(__dirname, '..', '..');

/** Everything a finished (or failed) run writes besides the JSON. */
async function publish(report: BenchReport): Promise<void> {
  if (args.report) process.stderr.write(`report: ${(await writeHtmlReport(report, args.report)).join(', ')}\n`);
  if (args.markdown && args.markdown !== '-') {
    writeMarkdown(args.markdown, markdownReport(report));
    process.stderr.write(`markdown: ${args.markdown}\n`);
  }
  if (args.docs) writeDocs(report);
  process.stdout.write(`${args.markdown === '-' ? markdownReport(report) : textReport(report)}\n`);
}

/** The documented figures: only a complete default run on every scenario may stand for them. */
function writeDocs(report: BenchReport): void {
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
}

async function rerender(file: string): Promise<void> {
  await publish(JSON.parse(readFileSync(file, 'utf8')) as BenchReport);
}

async function main(): Promise<void> {
  if (args.from) return rerender(args.from);
  const started = Date.now();
  const caps = probe();
  if (!caps.available || !caps.features.minorShmem) {
    process.stderr.write(`userfaultfd MINOR mode is not usable here: ${caps.reasons.join('; ') || 'kernel lacks minorShmem'}\n`);
    process.exit(2);
  }
  if (args.quick || args.smoke) process.stderr.write(`${QUICK_NOTE}\n`);
  const cpuCount = cpus().length;
  const hugeWanted = !args['no-huge'] && caps.features.minorHugetlbfs;
  // One memfd at a time: the largest of a scenario's and the bulk range, plus slack.
  const huge = hugeWanted ? reserveHugePages(Math.max(size.huge, size.bulkHuge) + 4) : { available: 0, reason: args['no-huge'] ? '--no-huge' : 'kernel lacks minorHugetlbfs', restore() {} };
  const hugeOk = hugeWanted && huge.available >= Math.max(size.huge, size.bulkHuge);
  const only = args.only === undefined ? undefined : new RegExp(args.only);
  const scenarios = plan(cpuCount, hugeOk).filter((s) => !only || only.test(s.id));
  const bulkPlan = ([['4k', size.bulkSmall], ...(hugeOk ? [['2m', size.bulkHuge]] : [])] as [PageKind, number][])
    .filter(([page]) => !only || only.test(`${page}/bulk`));

  const bar = new SingleBar({
    stream: process.stderr,
    format: 'bench [{bar}] {value}/{total} {scenario}',
    hideCursor: true,
    clearOnComplete: true,
  });
  bar.start(scenarios.length + bulkPlan.length, 0, { scenario: '' });
  const results: (ScenarioResult & { error?: string })[] = [];
  const bulk: BulkRow[] = [];
  // Rewritten after every step, so a run that dies later keeps what it measured.
  const save = (incomplete?: string): BenchReport => {
    const report = assemble(results, bulk, cpuCount, huge, started, incomplete);
    if (args.json) writeFileAtomic(args.json, `${JSON.stringify(report, null, 2)}\n`);
    return report;
  };
  try {
    let failure: Error | undefined;
    try {
      for (const [i, s] of scenarios.entries()) {
        bar.update(i, { scenario: s.id });
        const orders = pageOrders(s.pages, s.threads, s.order, seed + i);
        try {
          results.push(await runScenario(s, orders, cpuCount));
        } catch (err) {
          results.push({ ...emptyResult(s), error: (err as Error).message });
        }
        save(`stopped after ${results.length} of ${scenarios.length} scenarios`);
      }
      for (const [j, [page, pages]] of bulkPlan.entries()) {
        bar.update(scenarios.length + j, { scenario: `${page}/bulk` });
        bulk.push(...runBulk(page, pages, size.reps));
        save(`stopped after ${j + 1} of ${bulkPlan.length} bulk ranges`);
      }
      bar.update(scenarios.length + bulkPlan.length, { scenario: 'done' });
    } catch (err) {
      failure = err as Error;
    }
    bar.stop();

    const report = save(failure && `failed after ${results.length} of ${scenarios.length} scenarios and ${bulk.length} bulk rows: ${failure.message}`);
    await publish(report);
    if (failure) throw failure;
    const unresolved = report.scenarios.filter((s) => !s.allResolved);
    if (unresolved.length) {
      for (const s of unresolved)
        process.stderr.write(`did not resolve all its faults: ${s.id}: faults ${s.faults}, touched ${s.touched}, messages ${s.messages}, resolved ${s.resolved}, checksum ${s.checksumOk ? 'ok' : 'WRONG'}${s.error ? `, error: ${s.error}` : ''}${s.note ? `, ${s.note}` : ''}\n`);
      process.exitCode = 1;
    }
  } finally {
    bar.stop();
    huge.restore();
  }
}

function assemble(results: (ScenarioResult & { error?: string })[], bulk: BulkRow[], cpuCount: number, huge: { available: number; reason?: string }, started: number, incomplete?: string): BenchReport {
  const scenarios = results.map((s) => ({ ...s, ratios: ratiosFor(s, results) }));
  const bulkRows = bulk.map((b) => {
    const pop = bulk.find((p) => p.page === b.page && p.by === b.by && p.method === 'populate-read');
    return { ...b, vsPopulateRead: pop ? pop.bestNs / b.bestNs : null, vsPopulateReadMedian: pop ? pop.medianNs / b.medianNs : null };
  });
  // Pinned placements only: unpinned, the scheduler decides per run whether
  // handler and toucher share a CPU, and that alone moves p50 tenfold in a VM.
  const worst = (mode: Mode) => {
    const rs = scenarios.filter((s) => s.mode === mode && s.threads === 1 && s.order === 'seq' && s.page === '4k' && s.placement !== 'unpinned' && s.ratios.p50 !== null).map((s) => s.ratios.p50!);
    return rs.length ? Math.max(...rs) : null;
  };
  const eventLoop = ['event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'] as Mode[];
  const eventLoopWorst = eventLoop.map(worst).filter((r): r is number => r !== null);
  const libBulk = bulkRows.find((b) => b.page === '4k' && b.by === 'library' && b.method === 'continue');
  const target = (name: string, value: number | null, limit: number, atLeast: boolean) =>
    ({ name, value, target: `${atLeast ? '>=' : '<='} ${limit}x`, met: value === null ? null : atLeast ? value >= limit : value <= limit });
  const cpu = cpus()[0];
  return {
    version: 1,
    options: { quick: args.quick, smoke: args.smoke, seed, noHuge: args['no-huge'], only: args.only ?? null },
    machine: {
      kernel: release(), cpus: cpuCount, cpuModel: cpu ? cpu.model : 'unknown', pageSize: PAGE_SIZE, hugePageSize: 2 * 1024 * 1024,
      hugePages: { available: huge.available, reason: huge.reason }, node: process.version, loadAverage: loadavg(), date: new Date().toISOString(),
    },
    scenarios,
    bulk: bulkRows,
    targets: [
      target('native resolver p50 vs C (4k, seq, 1 thread, worst pinned placement)', worst('native-resolver'), 1.1, false),
      target('event-loop handler p50 vs C (4k, seq, 1 thread, worst mode and pinned placement)', eventLoopWorst.length ? Math.max(...eventLoopWorst) : null, 1.5, false),
      target('bulk CONTINUE vs MADV_POPULATE_READ throughput (library, 4k, fastest of the repetitions)', libBulk ? libBulk.vsPopulateRead : null, 0.8, true),
    ],
    durationMs: Date.now() - started,
    ...(incomplete ? { incomplete } : {}),
  };
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

// Runs the benchmark's smallest variant in a child process (a lost wake-up
// there cannot hang the suite) and checks what it reports: the JSON's shape,
// that every scenario resolved every one of its faults with the right bytes,
// and that the report and markdown outputs exist. Never its timings.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { PAGE_SIZE } from '../../lib/index';
import { compareRuns, makeTarget, pairRatios, RowResult } from '../../scripts/bench/analysis';
import type { Rep } from '../../scripts/bench/scenarios';
import { bootstrap, median, medianInterval, pooledQuantile, pooledRatioInterval, prng, verdict } from '../../scripts/bench/stats';
import { itWith, root, waitFor } from '../helpers';
import { expectRestoreReport } from './restore-checks';

const dir = mkdtempSync(join(tmpdir(), 'uffd-bench-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const readHugePages = (): string => readFileSync('/proc/sys/vm/nr_hugepages', 'utf8').trim();

function runBench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'dist/scripts/bench.js'), ...args], { timeout: 270_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const MODES = ['floor', 'c-reference', 'c-reference+spin', 'native-resolver', 'event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];
const INTERVAL = { value: expect.any(Number), lo: expect.any(Number), hi: expect.any(Number), n: expect.any(Number) };

// Synthetic repetitions: `n` latencies around `center` ns (deterministic).
function synthRep(center: number, n: number, seed: number, colocated: number | null = 1): Rep {
  const rand = prng(seed);
  const lat = Float64Array.from({ length: n }, () => center * (0.9 + 0.2 * rand()));
  return { latencyNs: [lat], touchCpus: [new Int32Array(n)], colocated, wallNs: lat.reduce((a, b) => a + b, 0), faults: n, touched: n, messages: n, resolved: n, checksumOk: true, handlerCpuNs: null };
}

describe('bench statistics (pure functions)', () => {
  it('the bootstrap interval holds the value, is reproducible with its seed, and narrows with more pairs', () => {
    const rand = prng(7);
    const few = Array.from({ length: 6 }, () => 1 + 0.2 * (rand() - 0.5));
    const many = Array.from({ length: 60 }, () => 1 + 0.2 * (rand() - 0.5));
    const a = medianInterval(few);
    expect(a).toEqual(medianInterval(few));
    expect(a.lo).toBeLessThanOrEqual(a.value);
    expect(a.hi).toBeGreaterThanOrEqual(a.value);
    expect(a.value).toBe(median(few));
    const b = medianInterval(many);
    expect(b.hi - b.lo).toBeLessThan(a.hi - a.lo);
    // Identical pairs: no spread at all.
    expect(medianInterval([1.2, 1.2, 1.2, 1.2, 1.2])).toEqual({ value: 1.2, lo: 1.2, hi: 1.2, n: 5 });
    // The statistic sees resamples drawn with repetition from the n items.
    const seen = new Set<number>();
    bootstrap(4, (idx) => { idx.forEach((i) => seen.add(i)); return 0; }, 1, 50);
    expect([...seen].sort()).toEqual([0, 1, 2, 3]);
  });

  it('pooledQuantile equals the quantile of the concatenated repetitions, repetitions counted as often as drawn', () => {
    const rand = prng(3);
    const reps = Array.from({ length: 5 }, () => Float64Array.from({ length: 200 }, () => rand() * 1000).sort());
    for (const idx of [[0, 1, 2, 3, 4], [1, 1, 4, 0, 0], [2, 2, 2, 2, 2]])
      for (const q of [0.5, 0.99, 0.999]) {
        const all = Float64Array.from(idx.flatMap((i) => Array.from(reps[i]))).sort();
        expect(pooledQuantile(reps, idx, q), `${idx} ${q}`).toBe(all[Math.ceil(q * all.length) - 1]);
      }
    const same = pooledRatioInterval(reps, reps, 0.99);
    expect(same).toMatchObject({ value: 1, lo: 1, hi: 1 });
  });

  it('verdict: met only when the whole interval is under the target, missed only when it is all over, else inconclusive', () => {
    expect(verdict({ lo: 0.9, hi: 1.04 }, 1.05)).toBe('met');
    expect(verdict({ lo: 1.06, hi: 1.2 }, 1.05)).toBe('missed');
    expect(verdict({ lo: 1.0, hi: 1.1 }, 1.05)).toBe('inconclusive');
    expect(verdict({ lo: 0.95, hi: 1.3 }, 0.9, true)).toBe('met');
    expect(verdict({ lo: 0.5, hi: 0.8 }, 0.9, true)).toBe('missed');
    expect(verdict({ lo: 0.85, hi: 0.95 }, 0.9, true)).toBe('inconclusive');
    // Too few pairs: never a verdict.
    expect(verdict({ lo: 0.9, hi: 1.0, n: 3 }, 1.05)).toBe('inconclusive');
    const t = makeTarget('t', 1.05, false, [{ row: 'a', interval: { value: 1, lo: 0.95, hi: 1.02, n: 9 } }, { row: 'b', interval: { value: 1.1, lo: 1.01, hi: 1.2, n: 9 } }]);
    expect(t.verdict).toBe('inconclusive');
    expect(makeTarget('t', 1.05, false, [{ row: 'a', interval: { value: 1, lo: 0.95, hi: 1.02, n: 9 } }, { row: 'b', interval: { value: 1.3, lo: 1.2, hi: 1.4, n: 9 } }]).verdict).toBe('missed');
    expect(makeTarget('t', 1.05, false, [], 'not here')).toMatchObject({ verdict: null, reason: 'not here' });
    // An absolute target: the checks are in its unit, not a ratio.
    expect(makeTarget('t', 5, false, [{ row: 'a', interval: { value: 3, lo: 2, hi: 4, n: 9 } }], undefined, 'ms/GiB')).toMatchObject({ target: '<= 5 ms/GiB', unit: 'ms/GiB', verdict: 'met' });
  });

  it('synthetic rows: a 1.2x slower library is missed against 1.05x and met against 1.3x; unpinned pairs that landed differently are left out', () => {
    const ref = Array.from({ length: 9 }, (_, i) => synthRep(20_000, 300, i));
    const lib = Array.from({ length: 9 }, (_, i) => synthRep(24_000, 300, 100 + i));
    const r = pairRatios(lib, ref, 'c-reference');
    expect(r).toMatchObject({ pairs: 9, unmatched: 0, p50: INTERVAL, p99: INTERVAL, p999: INTERVAL, throughput: INTERVAL, perPage: INTERVAL });
    expect(r.p50!.value).toBeCloseTo(1.2, 1);
    expect(verdict(r.p50!, 1.05)).toBe('missed');
    expect(verdict(r.p50!, 1.3)).toBe('met');
    const split = lib.map((x, i) => (i < 4 ? { ...x, colocated: 0 } : x));
    expect(pairRatios(split, ref, 'c-reference')).toMatchObject({ pairs: 5, unmatched: 4 });
  });

  it('compareRuns flags a row worse only when the intervals do not overlap', () => {
    const row = (id: string, lo: number, hi: number) => ({ id, ratios: { p50: { value: (lo + hi) / 2, lo, hi, n: 9 }, p99: null, p999: null, throughput: null, perPage: null } }) as unknown as RowResult;
    const d = compareRuns({ rows: [row('a', 1.3, 1.4), row('b', 1.0, 1.1), row('c', 0.7, 0.8)] }, { rows: [row('a', 1.0, 1.1), row('b', 1.05, 1.15), row('c', 1.0, 1.1)] });
    expect(d.map((x) => [x.row, x.call])).toEqual([['a', 'worse'], ['b', 'within noise'], ['c', 'better']]);
  });
});

describe('npm run bench -- --smoke', () => {
  itWith(['minorShmem', 'minorHugetlbfs', 'threadId'], 'reports every scenario with all faults resolved, and restores vm.nr_hugepages', async () => {
    const hugeBefore = readHugePages();
    // Directories that do not exist yet: the run creates them.
    const jsonPath = join(dir, 'not', 'yet', 'out.json');
    const reportDir = join(dir, 'report');
    const run = await runBench(['--smoke', '--json', jsonPath, '--report', reportDir, '--markdown']);
    expect(run.stderr).not.toMatch(/bench failed|did not resolve/);
    expect(run.code).toBe(0);
    expect(readHugePages()).toBe(hugeBefore);

    const report = JSON.parse(readFileSync(jsonPath, 'utf8'));
    expect(report).toMatchObject({
      version: 2,
      options: { smoke: true, reps: expect.any(Number), bootstrap: { resamples: expect.any(Number), seed: expect.any(Number), level: 0.95 } },
      library: { spinUs: expect.any(Boolean), threads: expect.any(Boolean) },
      machine: { kernel: expect.any(String), cpus: expect.any(Number), pageSize: PAGE_SIZE, node: process.version },
    });
    // Huge pages could be reserved here (root, 24 GiB): the 2 MiB rows must exist.
    expect(report.machine.hugePages.available).toBeGreaterThan(0);

    const rows: Record<string, any>[] = report.rows;
    for (const page of ['4k', '2m'])
      for (const mode of MODES) expect(rows.some((s) => s.page === page && s.mode === mode), `${page} ${mode}`).toBe(true);
    expect(new Set(rows.filter((s) => s.mode === 'c-reference').map((s) => s.threads))).toEqual(new Set([1, 2, 4, 8]));
    expect(new Set(rows.map((s) => s.order))).toEqual(new Set(['seq', 'random']));
    expect(new Set(rows.map((s) => s.placement))).toEqual(new Set(['same', 'diff', 'unpinned']));
    expect(rows.some((s) => s.kind === 'scan' && s.mode === 'native-resolver+map-ahead')).toBe(true);
    expect(new Set(rows.map((s) => s.id)).size).toBe(rows.length);

    for (const s of rows) {
      const where = s.id;
      expect(s.error, where).toBeUndefined();
      expect(s.reps, where).toBe(report.options.reps);
      expect(s.faults, where).toBe(s.pagesPerRep * s.reps);
      expect(s.touched, where).toBe(s.faults);
      expect(s.latency.count, where).toBe(s.faults);
      expect(s.checksumOk, where).toBe(true);
      if (s.mode.startsWith('floor')) expect([s.messages, s.colocated], where).toEqual([0, null]);
      else {
        // Each first touch is one MINOR fault the handler read and answered (mapAhead: one message maps many).
        if (s.mode !== 'native-resolver+map-ahead') expect(s.messages, where).toBeGreaterThanOrEqual(s.faults);
        expect(s.resolved, where).toBeGreaterThanOrEqual(s.faults);
        expect(s.colocated, where).toEqual(expect.any(Number));
        if (s.placement === 'same') expect(s.colocated, where).toBe(1);
        if (s.placement === 'diff') expect(s.colocated, where).toBe(0);
        expect(s.handlerCpuUsPerFault, where).toEqual(expect.any(Number));
      }
      expect(s.allResolved, where).toBe(true);
      for (const key of ['p50', 'p90', 'p99', 'p999', 'max']) expect(s.latency[key], `${where} ${key}`).toEqual(expect.any(Number));
      expect(s.latency.cdf.length, where).toBeGreaterThan(2);
      expect(s.ratios, where).toMatchObject({ reference: expect.any(String), pairs: expect.any(Number), unmatched: expect.any(Number) });
      for (const key of ['p50', 'p99', 'p999', 'throughput', 'perPage'])
        if (s.ratios[key] !== null) {
          expect(s.ratios[key], `${where} ${key}`).toMatchObject(INTERVAL);
          expect(s.ratios[key].lo, `${where} ${key}`).toBeLessThanOrEqual(s.ratios[key].hi);
        }
      if (s.mode === s.ratios.reference) expect(s.ratios.p50, where).toMatchObject({ value: 1, lo: 1, hi: 1 });
      // Event-loop handlers: what their isolate's collector did while serving, the first suspect for their tails.
      if (/event-loop|worker-handler/.test(s.mode)) {
        expect(s.handlerGc, where).toMatchObject({ collections: expect.any(Number), perThousandFaults: expect.any(Number), pauseMs: expect.any(Number), maxPauseMs: expect.any(Number) });
        expect(s.handlerGc.maxPauseMs, where).toBeLessThanOrEqual(s.handlerGc.pauseMs);
      } else expect(s.handlerGc, where).toBeUndefined();
      if (s.placement === 'unpinned' && s.mode !== s.ratios.reference && s.colocated !== null) expect(s.byColocation, where).toBeDefined();
    }

    const bulk: Record<string, any>[] = report.bulk;
    for (const page of ['4k', '2m'])
      for (const [method, by] of [['continue', 'C'], ['populate-read', 'C'], ['continue', 'library'], ['populate-read', 'library']])
        expect(bulk.find((b) => b.page === page && b.method === method && b.by === by), `${page} ${method} ${by}`).toMatchObject({ checksOk: true, pagesPerSec: expect.any(Number), vsPopulateRead: INTERVAL });
    // Dirty tracking: one row per method, a method this kernel lacks a row with the reason; every collect found exactly the pages written.
    const dirty: Record<string, any>[] = report.dirty;
    expect(dirty.map((d) => d.method)).toEqual(['wp-async', 'wp-sync']);
    const wellFormed = (i: Record<string, number>, where: string) => {
      expect(i, where).toMatchObject(INTERVAL);
      expect(i.lo, where).toBeLessThanOrEqual(i.value);
      expect(i.value, where).toBeLessThanOrEqual(i.hi);
    };
    for (const d of dirty) {
      if (!d.available) {
        expect(d.reason, d.id).toMatch(/needs Linux/);
        continue;
      }
      expect(d.reps, d.id).toBeGreaterThan(0);
      for (const key of ['protectMsPerGiB', 'trackedFirstWriteNs', 'trackedDirtyWriteNs', 'untrackedFirstWriteNs', 'untrackedWarmWriteNs', 'firstWriteVsUntracked', 'cleanRecollectMsPerGiB', 'stopMsPerGiB'])
        wellFormed(d[key], `${d.id} ${key}`);
      expect(d.collect.map((c: { fraction: number }) => c.fraction), d.id).toEqual([0.001, 0.01, 0.05, 0.5]);
      for (const c of d.collect) {
        const where = `${d.id} ${c.fraction}`;
        expect(c.pages, where).toBe(Math.max(1, Math.round((d.bytes / PAGE_SIZE) * c.fraction)));
        expect(c.counts, where).toEqual(Array(d.reps).fill(c.pages));
        wellFormed(c.msPerGiB, where);
        wellFormed(c.lookMsPerGiB, where);
      }
    }
    const dirtyTargets = report.targets.filter((t: { name: string }) => t.name.startsWith('dirty tracking'));
    expect(dirtyTargets.map((t: { unit: string; limit: number }) => [t.unit, t.limit])).toEqual([['x', 10], ['ms/GiB', 5]]);
    // The smoke run's view is smaller than 1 GiB, and the collect target says it was scaled.
    expect(dirtyTargets[1].name).toMatch(/16 MiB view in this run, scaled to 1 GiB/);
    for (const t of dirtyTargets)
      expect(t.checks.map((c: { row: string }) => c.row), t.name).toEqual(dirty[0].available ? ['dirty/wp-async'] : []);
    // The live-migration demo's three modes, every page verified in each.
    expect(report.migration?.error).toBeUndefined();
    expect(report.migration.results.map((r: { mode: string }) => r.mode)).toEqual(['precopy', 'postcopy', 'hybrid']);
    for (const r of report.migration.results) {
      expect(r.badPages, r.mode).toBe(0);
      expect(r.pages, r.mode).toBe((8 * 1024 * 1024) / PAGE_SIZE);
      expect(r.downtimeMs, r.mode).toBeGreaterThan(0);
    }
    expect(report.migration.targets).toHaveLength(2);
    // The restore benchmark as a section, at bench:restore --smoke's size, every scenario restored right.
    expectRestoreReport(report.restore, { reps: 3, imageBytes: 16 << 20, smoke: true });
    expect(report.targets).toHaveLength(11);
    for (const t of report.targets) {
      expect(t, t.name).toMatchObject({ name: expect.any(String), limit: expect.any(Number), atLeast: expect.any(Boolean) });
      expect([null, 'met', 'missed', 'inconclusive'], t.name).toContain(t.verdict);
      // Three repetition pairs are too few to judge: a smoke run never says met or missed.
      for (const c of t.checks) expect([c.verdict, c.n], `${t.name} ${c.row}`).toEqual(['inconclusive', expect.any(Number)]);
    }

    expect(run.stdout).toMatch(/^\| row \| page \| placement \|/m);
    // A small run must say it is no measurement, before and after the tables.
    expect(run.stderr).toContain('SMOKE TEST, NOT A MEASUREMENT');
    expect(run.stdout).toContain('SMOKE TEST, NOT A MEASUREMENT');
    expect(run.stdout).toMatch(/inconclusive: noise/);
    expect(run.stdout).toMatch(/p50 ×ref \[95%\]/);
    expect(run.stdout).toMatch(/^\| dirty tracking \| view \| reps \|/m);
    expect(run.stdout).toMatch(/^\| scenario \| reps \| time ms \| guest ms \| before go ms \|/m);
    // The restore targets are judged with the others.
    for (const t of report.restore.targets) expect(run.stdout).toContain(`- restore: ${t.name} (target ${t.target})`);
    expect(report.incomplete).toBeUndefined();
    const ratios = readFileSync(join(reportDir, 'ratios.svg'), 'utf8');
    expect(ratios).toMatch(/^<svg[^>]*>/);
    expect(ratios).toContain('native resolver');
    const svg = readFileSync(join(reportDir, 'latency-cdf.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[^>]*>/);
    expect(svg).toContain('C reference');
    const restoreSvg = readFileSync(join(reportDir, 'restore.svg'), 'utf8');
    expect(restoreSvg).toMatch(/^<svg[^>]*>/);
    // Both panels: the phases of each scenario with its time at the bar's end, the ratios with their targets.
    expect(restoreSvg).toContain('before go: prefetch or eager copy');
    expect(restoreSvg).toMatch(/>library \d+(\.\d)? ms</);
    expect(restoreSvg).toMatch(/>C \d+(\.\d)? ms</);
    expect(restoreSvg).toContain('replay speedup: on-demand time / replay time (matching recording) (target &gt;= 5x)');
    const html = readFileSync(join(reportDir, 'index.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).toContain('<table>');
    expect(html).toContain('<h2>Restore: on demand, working-set replay, eager copy</h2>');
  }, 300_000);
});

describe('bench output files', () => {
  itWith(['minorShmem', 'threadId'], 'a run that dies after some scenarios leaves their results in --json, marked incomplete', async () => {
    const jsonPath = join(dir, 'killed', 'deep', 'out.json');
    const child = spawn(process.execPath, [join(root, 'dist/scripts/bench.js'), '--smoke', '--no-huge', '--json', jsonPath], { stdio: 'ignore' });
    const exited = new Promise((r) => child.once('exit', r));
    try {
      await waitFor(() => existsSync(jsonPath), 60_000, 'the first scenario in the JSON');
    } finally {
      // SIGKILL: nothing of the process runs after it, as when a machine dies mid-run.
      child.kill('SIGKILL');
      await exited;
    }
    const partial = JSON.parse(readFileSync(jsonPath, 'utf8'));
    expect(partial.incomplete).toMatch(/^stopped after \d+ of \d+ cells$/);
    expect(partial.rows.length).toBeGreaterThanOrEqual(1);
    for (const s of partial.rows) expect([s.id, s.allResolved]).toEqual([s.id, true]);
  }, 90_000);

  itWith(['minorShmem', 'threadId'], '--markdown FILE replaces only what stands between the bench markers of a file that has them', async () => {
    const jsonPath = join(dir, 'few.json');
    const measured = await runBench(['--smoke', '--no-huge', '--only', '4k/(c-reference|native-resolver)/same', '--json', jsonPath]);
    expect(measured.code).toBe(0);
    // A selection that does not name the restore section leaves it out.
    expect(JSON.parse(readFileSync(jsonPath, 'utf8')).restore).toBeUndefined();
    const doc = join(dir, 'doc.md');
    const before = '# Benchmark\n\nintro\n\n<!-- bench:begin (written by npm run bench; do not edit by hand) -->\nold table\n<!-- bench:end -->\n\noutro\n';
    writeFileSync(doc, before);
    const rendered = await runBench(['--from', jsonPath, '--markdown', doc]);
    expect(rendered.code).toBe(0);
    const after = readFileSync(doc, 'utf8');
    expect(after.startsWith('# Benchmark\n\nintro\n\n<!-- bench:begin')).toBe(true);
    expect(after.endsWith('<!-- bench:end -->\n\noutro\n')).toBe(true);
    expect(after).not.toContain('old table');
    expect(after).toMatch(/^\| native resolver \| 4k \| same \|/m);
    // A file without markers is written whole, in a directory created for it.
    const fresh = join(dir, 'new', 'dir', 'bench.md');
    expect((await runBench(['--from', jsonPath, '--markdown', fresh])).code).toBe(0);
    expect(readFileSync(fresh, 'utf8')).toMatch(/^> QUICK RUN = SMOKE TEST/);
    // --compare against itself: every row within noise; --check exits 1 only on a missed target (none in a smoke run).
    const compared = await runBench(['--from', jsonPath, '--compare', jsonPath, '--check']);
    expect(compared.code).toBe(0);
    expect(compared.stdout).toMatch(/compare with .*: 0 worse, 0 better, \d+ within noise/);
    expect(compared.stdout).toMatch(/4k\/native-resolver\/same\/seq\/1t\s+p50/);
  }, 90_000);
});

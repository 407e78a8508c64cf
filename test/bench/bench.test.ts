// Runs the benchmark's smallest variant in a child process (a lost wake-up
// there cannot hang the suite) and checks what it reports: the JSON's shape,
// that every scenario resolved every one of its faults with the right bytes,
// and that the report and markdown outputs exist. Never its timings.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect } from 'vitest';

import { PAGE_SIZE } from '../../lib/index';
import { itWith, root, waitFor } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-bench-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const readHugePages = (): string => readFileSync('/proc/sys/vm/nr_hugepages', 'utf8').trim();

function runBench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'dist/scripts/bench.js'), ...args], { timeout: 150_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const MODES = ['floor', 'c-reference', 'native-resolver', 'event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];

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
      version: 1,
      options: { smoke: true },
      machine: { kernel: expect.any(String), cpus: expect.any(Number), pageSize: PAGE_SIZE, node: process.version },
    });
    // Huge pages could be reserved here (root, 24 GiB): the 2 MiB rows must exist.
    expect(report.machine.hugePages.available).toBeGreaterThan(0);

    const scenarios: Record<string, any>[] = report.scenarios;
    for (const page of ['4k', '2m'])
      for (const mode of MODES) expect(scenarios.some((s) => s.page === page && s.mode === mode), `${page} ${mode}`).toBe(true);
    expect(new Set(scenarios.filter((s) => s.mode === 'c-reference').map((s) => s.threads))).toEqual(new Set([1, 2, 4]));
    expect(new Set(scenarios.map((s) => s.order))).toEqual(new Set(['seq', 'random']));

    for (const s of scenarios) {
      const where = s.id;
      expect(s.error, where).toBeUndefined();
      expect(s.faults, where).toBe(s.pages);
      expect(s.touched, where).toBe(s.faults);
      expect(s.latency.count, where).toBe(s.faults);
      expect(s.checksumOk, where).toBe(true);
      if (s.mode === 'floor') expect(s.messages, where).toBe(0);
      else {
        // Each first touch is one MINOR fault the handler read and answered.
        expect(s.messages, where).toBeGreaterThanOrEqual(s.faults);
        expect(s.resolved, where).toBeGreaterThanOrEqual(s.faults);
      }
      expect(s.allResolved, where).toBe(true);
      for (const key of ['p50', 'p90', 'p99', 'p999', 'max']) expect(s.latency[key], `${where} ${key}`).toEqual(expect.any(Number));
      expect(s.latency.cdf.length, where).toBeGreaterThan(2);
      expect(Object.keys(s.ratios).sort(), where).toEqual(['p50', 'p99', 'throughput']);
      if (s.mode === 'c-reference') expect(s.ratios.p50, where).toBe(1);
    }

    const bulk: Record<string, any>[] = report.bulk;
    for (const page of ['4k', '2m'])
      for (const [method, by] of [['continue', 'C'], ['populate-read', 'C'], ['continue', 'library'], ['populate-read', 'library']])
        expect(bulk.find((b) => b.page === page && b.method === method && b.by === by), `${page} ${method} ${by}`).toMatchObject({ checksOk: true, pagesPerSec: expect.any(Number) });
    expect(report.targets).toHaveLength(3);

    expect(run.stdout).toMatch(/^\| scenario \| page \| placement \|/m);
    // A small run must say it is no measurement, before and after the tables.
    expect(run.stderr).toContain('SMOKE TEST, NOT A MEASUREMENT');
    expect(run.stdout).toContain('SMOKE TEST, NOT A MEASUREMENT');
    expect(run.stdout).toMatch(/\(quick run: not judged/);
    expect(report.incomplete).toBeUndefined();
    const svg = readFileSync(join(reportDir, 'latency-cdf.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[^>]*>/);
    expect(svg).toContain('C reference');
    const html = readFileSync(join(reportDir, 'index.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).toContain('<table>');
  }, 180_000);
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
    expect(partial.incomplete).toMatch(/^stopped after \d+ of \d+ scenarios$/);
    expect(partial.scenarios.length).toBeGreaterThanOrEqual(1);
    for (const s of partial.scenarios) expect([s.id, s.allResolved]).toEqual([s.id, true]);
  }, 90_000);

  itWith(['minorShmem', 'threadId'], '--markdown FILE replaces only what stands between the bench markers of a file that has them', async () => {
    const jsonPath = join(dir, 'few.json');
    const measured = await runBench(['--smoke', '--no-huge', '--only', '4k/(c-reference|native-resolver)/same', '--json', jsonPath]);
    expect(measured.code).toBe(0);
    const doc = join(dir, 'doc.md');
    const before = '# Benchmark\n\nintro\n\n<!-- bench:begin (written by npm run bench; do not edit by hand) -->\nold table\n<!-- bench:end -->\n\noutro\n';
    writeFileSync(doc, before);
    const rendered = await runBench(['--from', jsonPath, '--markdown', doc]);
    expect(rendered.code).toBe(0);
    const after = readFileSync(doc, 'utf8');
    expect(after.startsWith('# Benchmark\n\nintro\n\n<!-- bench:begin')).toBe(true);
    expect(after.endsWith('<!-- bench:end -->\n\noutro\n')).toBe(true);
    expect(after).not.toContain('old table');
    expect(after).toMatch(/^\| C reference \| 4k \| same \|/m);
    // A file without markers is written whole, in a directory created for it.
    const fresh = join(dir, 'new', 'dir', 'bench.md');
    expect((await runBench(['--from', jsonPath, '--markdown', fresh])).code).toBe(0);
    expect(readFileSync(fresh, 'utf8')).toMatch(/^> QUICK RUN = SMOKE TEST/);
  }, 90_000);
});

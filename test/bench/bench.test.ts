// Runs the benchmark's smallest variant in a child process (a lost wake-up
// there cannot hang the suite) and checks what it reports: the JSON's shape,
// that every scenario resolved every one of its faults, that the touchers'
// checksum (the first byte of every touched page: the bench's own check, not
// a byte-for-byte one; the handler tests do that) is right, and that the
// report and markdown outputs exist. Never its timings.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect } from 'vitest';

import { PAGE_SIZE } from '../../lib/index';
import { itWith, root, scaled } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-bench-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const readHugePages = (): string => readFileSync('/proc/sys/vm/nr_hugepages', 'utf8').trim();

function runBench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'dist/scripts/bench.js'), ...args], { timeout: scaled(150_000), maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const MODES = ['floor', 'c-reference', 'native-resolver', 'event-loop+native-toucher', 'event-loop+worker-toucher', 'worker-handler+main-toucher'];

describe('npm run bench -- --smoke', () => {
  itWith(['minorShmem', 'minorHugetlbfs', 'threadId'], 'reports every scenario with all faults resolved, and restores vm.nr_hugepages', async () => {
    const hugeBefore = readHugePages();
    const jsonPath = join(dir, 'out.json');
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
      expect(s.checksumOk, `${where}: first byte of every page`).toBe(true);
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
    const svg = readFileSync(join(reportDir, 'latency-cdf.svg'), 'utf8');
    expect(svg).toMatch(/^<svg[^>]*>/);
    expect(svg).toContain('C reference');
    const html = readFileSync(join(reportDir, 'index.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).toContain('<table>');
  }, 180_000);
});

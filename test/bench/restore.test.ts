// Runs the restore benchmark at a tiny size in a child process (a fault
// nobody answers there cannot hang the suite) and checks what it reports:
// the JSON's shape, the intervals, and that every scenario restored the
// right bytes and answered every fault. Never its timings.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { prefetchQuality } from '../../scripts/bench/restore';
import { restoreMarkdown, writeRestoreTables } from '../../scripts/bench/restore-report';
import { restoreTrace } from '../../scripts/bench/restore-trace';
import { itWith, root, scaled } from '../helpers';
import { expectRestoreReport } from './restore-checks';

const dir = mkdtempSync(join(tmpdir(), 'uffd-restore-bench-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'dist/scripts/bench-restore.js'), ...args], { timeout: scaled(240_000), maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('restore trace', () => {
  it('is deterministic, touches each page once, and its varying part is disjoint from the working set', () => {
    const spec = { pages: 4096, program: 1, run: 2, fixed: 0.1, varying: 0.02, touchers: 2 };
    const a = restoreTrace(spec);
    expect(a.order).toEqual(restoreTrace(spec).order);
    expect(a.order.length).toBe(a.fixedPages + a.varyingPages);
    expect(a.fixedPages).toBe(410);
    expect(a.varyingPages).toBe(82);
    expect(new Set(a.order).size).toBe(a.order.length);
    expect(Math.max(...a.order)).toBeLessThan(4096);
    expect(a.perToucher.reduce((n, t) => n + t.length, 0)).toBe(a.order.length);
    // Another run: the same working set, another varying part.
    const b = restoreTrace({ ...spec, run: 3 });
    const q = prefetchQuality(b.order, a.order);
    expect(q.precision).toBeGreaterThanOrEqual(410 / 492 - 0.01);
    expect(q.precision).toBeLessThan(1);
    // Another program: mostly other pages.
    expect(prefetchQuality(restoreTrace({ ...spec, program: 101 }).order, a.order).recall).toBeLessThan(0.5);
    expect(prefetchQuality(a.order, a.order)).toEqual({ precision: 1, recall: 1 });
  });
});

describe('npm run bench:restore', () => {
  it('--help prints the usage; a bad option exits 2', async () => {
    const help = await run(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/--quick/);
    const bad = await run(['--size', 'lots']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--size must be a positive integer/);
  });

  itWith(['minorShmem'], '--smoke: every scenario restores the right bytes and answers every fault; the JSON has intervals and verdicts', async () => {
    const json = join(dir, 'restore.json');
    const r = await run(['--smoke', '--size', '8', '--reps', '2', '--json', json]);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(readFileSync(json, 'utf8'));
    expectRestoreReport(report, { reps: 2, imageBytes: 8 << 20, smoke: true });
    expect(r.stdout).toMatch(/QUICK RUN/);
    expect(r.stdout).toMatch(/C reference, on demand/);
    expect(r.stdout).toMatch(/C reference one-fd, on demand/);
    expect(r.stdout).toMatch(/migration over loopback, on demand/);
    // What either benchmark's --docs writes: the markdown between the restore-bench markers, the rest of the page kept.
    const repo = join(dir, 'repo');
    mkdirSync(join(repo, 'docs'), { recursive: true });
    const page = join(repo, 'docs/working-set.md');
    writeFileSync(page, '# Working sets\n\n<!-- restore-bench:begin (written by npm run bench:restore -- --docs; do not edit by hand) -->\nold\n<!-- restore-bench:end -->\n\nafter\n');
    // (The chart beside them is the one bench's --report writes as restore.svg, checked with bench's smoke run.)
    expect(writeRestoreTables(report, repo)).toBe('docs/working-set.md');
    expect(readFileSync(page, 'utf8')).toBe(`# Working sets\n\n<!-- restore-bench:begin (written by npm run bench:restore -- --docs; do not edit by hand) -->\n${restoreMarkdown(report).trimEnd()}\n<!-- restore-bench:end -->\n\nafter\n`);
  }, 300_000);
});

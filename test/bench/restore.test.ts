// Runs the restore benchmark at a tiny size in a child process (a fault
// nobody answers there cannot hang the suite) and checks what it reports:
// the JSON's shape, the intervals, and that every scenario (memfd, one-fd
// and migration rows) restored the right bytes and answered every fault.
// Never its timings.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { RESTORE_MODES, RECORDING_OF, prefetchQuality } from '../../scripts/bench/restore';
import { restoreTrace } from '../../scripts/bench/restore-trace';
import { itWith, root, scaled } from '../helpers';

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
    expect(report).toMatchObject({ version: 1, kind: 'restore', options: { smoke: true, reps: 2, imageBytes: 8 << 20 } });
    expect(report.incomplete).toBeUndefined();
    expect(report.trace.touched).toBe(report.trace.fixedPages + report.trace.varyingPages);
    // The recordings are made by the library's recorder from restores of their own traces.
    expect(report.recordings.map((x: { name: string }) => x.name)).toEqual(['match', 'varying', 'mismatch']);
    const match = report.recordings[0];
    expect(match).toMatchObject({ pages: report.trace.touched, precision: 1, recall: 1 });
    expect(report.rows.map((x: { mode: string }) => x.mode)).toEqual(RESTORE_MODES);
    for (const row of report.rows) {
      if (!row.available) {
        // Only a replay the library does not have may be missing, and it says so.
        expect(RECORDING_OF[row.mode as keyof typeof RECORDING_OF], row.mode).toBeDefined();
        expect(row.mode.startsWith('c-'), row.mode).toBe(false);
        expect(row.error).toMatch(/^not available: /);
        console.log(`${row.mode}: ${row.error}`);
        continue;
      }
      expect(row.error, row.mode).toBeUndefined();
      expect(row.reps, row.mode).toBe(2);
      expect(row.digestOk, row.mode).toBe(true);
      expect(row.allResolved, row.mode).toBe(true);
      expect(row.timeMs, row.mode).toBeGreaterThan(0);
      expect(row.timeNs.every((t: number | null) => typeof t === 'number' && t > 0), row.mode).toBe(true);
    }
    const on = report.rows.find((x: { mode: string }) => x.mode === 'c-on-demand');
    expect(on.faults).toBe(report.trace.touched);
    expect(on.bytesMoved).toBe(report.trace.touched * report.machine.pageSize);
    const cReplay = report.rows.find((x: { mode: string }) => x.mode === 'c-replay');
    expect(cReplay).toMatchObject({ faults: 0, prefetched: report.trace.touched, precision: 1, recall: 1 });
    const row = (mode: string) => report.rows.find((x: { mode: string }) => x.mode === mode);
    const touchedBytes = report.trace.touched * report.machine.pageSize;
    // One-fd (anonymous memory, UFFDIO_COPY): on demand every touch faults
    // once and is copied once; a matching replay copies exactly the touched
    // pages before the guest goes, so no fault is left; eager copies all.
    for (const mode of ['c-fc-on-demand', 'fc-on-demand']) expect(row(mode), mode).toMatchObject({ faults: report.trace.touched, demandFetches: report.trace.touched, bytesMoved: touchedBytes });
    for (const mode of ['c-fc-replay', 'fc-replay']) expect(row(mode), mode).toMatchObject({ faults: 0, demandFetches: 0, prefetched: report.trace.touched, precision: 1, recall: 1 });
    expect(row('fc-eager')).toMatchObject({ faults: 0, prefetched: report.options.imageBytes / report.machine.pageSize, recall: 1 });
    // Migration: every touched page crosses the wire once, and no other (no push; the recordings hold only touched pages).
    expect(row('mig-on-demand')).toMatchObject({ faults: report.trace.touched, demandFetches: report.trace.touched, bytesMoved: touchedBytes });
    expect(row('mig-replay')).toMatchObject({ bytesMoved: touchedBytes, precision: 1, recall: 1 });
    expect(row('mig-replay').demandFetches).toBeLessThan(report.trace.touched);
    for (const ratio of report.ratios) {
      if (!ratio.interval) continue;
      expect(ratio.interval).toEqual({ value: expect.any(Number), lo: expect.any(Number), hi: expect.any(Number), n: 2 });
      expect(ratio.interval.lo).toBeLessThanOrEqual(ratio.interval.value);
      expect(ratio.interval.hi).toBeGreaterThanOrEqual(ratio.interval.value);
    }
    for (const pair of ['on-demand,c-on-demand', 'fc-replay,c-fc-replay', 'fc-on-demand,fc-replay', 'mig-on-demand,mig-replay', 'mig-on-demand,mig-replay-varying'])
      expect(report.ratios.find((x: { of: string[] }) => x.of.join() === pair).interval, pair).not.toBeNull();
    expect(report.targets.length).toBe(8);
    for (const t of report.targets) {
      expect(['met', 'missed', 'inconclusive', null]).toContain(t.verdict);
      // Two rounds are too few pairs for any verdict.
      for (const c of t.checks) expect(c.verdict).toBe('inconclusive');
      if (t.verdict === null) expect(t.reason).toEqual(expect.any(String));
    }
    expect(r.stdout).toMatch(/QUICK RUN/);
    expect(r.stdout).toMatch(/C reference, on demand/);
    expect(r.stdout).toMatch(/C reference one-fd, on demand/);
    expect(r.stdout).toMatch(/migration over loopback, on demand/);
  }, 300_000);
});

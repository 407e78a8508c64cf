// What every restore benchmark report must say, whichever command ran it
// (npm run bench:restore, or npm run bench as its restore section): every
// scenario in order (memfd, one-fd and migration rows), each one the library has restored the right bytes and
// answered every fault, the intervals well formed, and a few rounds never
// judged. Never its timings.
import { expect } from 'vitest';

import { RECORDING_OF, RESTORE_MODES } from '../../scripts/bench/restore';

export function expectRestoreReport(report: any, want: { reps: number; imageBytes: number; smoke: boolean }): void {
  expect(report).toMatchObject({ version: 1, kind: 'restore', options: { smoke: want.smoke, reps: want.reps, imageBytes: want.imageBytes } });
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
    expect(row.reps, row.mode).toBe(want.reps);
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
  // The floor: no userfaultfd, nothing served, every byte still the image's.
  expect(row('floor')).toMatchObject({ faults: 0, demandFetches: 0, prefetched: 0, bytesMoved: 0, digestOk: true, allResolved: true });
  const touchedBytes = report.trace.touched * report.machine.pageSize;
  // One-fd (anonymous memory, UFFDIO_COPY): on demand every touch faults
  // once and is copied once; a matching replay copies exactly the touched
  // pages before the guest goes, so no fault is left; eager copies all.
  for (const mode of ['c-fc-on-demand', 'fc-on-demand']) expect(row(mode), mode).toMatchObject({ faults: report.trace.touched, demandFetches: report.trace.touched, bytesMoved: touchedBytes });
  for (const mode of ['c-fc-replay', 'fc-replay']) expect(row(mode), mode).toMatchObject({ faults: 0, demandFetches: 0, prefetched: report.trace.touched, precision: 1, recall: 1 });
  expect(row('fc-eager')).toMatchObject({ faults: 0, prefetched: report.options.imageBytes / report.machine.pageSize, recall: 1 });
  // Three-fd: on demand every touch faults once and is populated once; a matching replay leaves no fault.
  expect(row('fc3-on-demand')).toMatchObject({ faults: report.trace.touched, demandFetches: report.trace.touched, bytesMoved: touchedBytes });
  expect(row('fc3-replay')).toMatchObject({ faults: 0, demandFetches: 0, prefetched: report.trace.touched, precision: 1, recall: 1 });
  // Migration: every touched page crosses the wire once, and no other (no push; the recordings hold only touched pages).
  expect(row('mig-on-demand')).toMatchObject({ faults: report.trace.touched, demandFetches: report.trace.touched, bytesMoved: touchedBytes });
  expect(row('mig-replay')).toMatchObject({ bytesMoved: touchedBytes, precision: 1, recall: 1 });
  expect(row('mig-replay').demandFetches).toBeLessThan(report.trace.touched);
  for (const ratio of report.ratios) {
    if (!ratio.interval) continue;
    expect(ratio.interval).toEqual({ value: expect.any(Number), lo: expect.any(Number), hi: expect.any(Number), n: want.reps });
    expect(ratio.interval.lo).toBeLessThanOrEqual(ratio.interval.value);
    expect(ratio.interval.hi).toBeGreaterThanOrEqual(ratio.interval.value);
  }
  for (const pair of ['on-demand,floor', 'fc3-on-demand,fc3-replay', 'on-demand,c-on-demand', 'fc-replay,c-fc-replay', 'fc-on-demand,fc-replay', 'mig-on-demand,mig-replay', 'mig-on-demand,mig-replay-varying'])
    expect(report.ratios.find((x: { of: string[] }) => x.of.join() === pair).interval, pair).not.toBeNull();
  expect(report.targets.length).toBe(9);
  for (const t of report.targets) {
    expect(['met', 'missed', 'inconclusive', null]).toContain(t.verdict);
    // Fewer than 5 rounds are too few pairs for any verdict.
    for (const c of t.checks) expect(c.verdict).toBe('inconclusive');
    if (t.verdict === null) expect(t.reason).toEqual(expect.any(String));
  }
}

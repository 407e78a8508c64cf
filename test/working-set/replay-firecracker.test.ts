// Working-set replay in the Firecracker page server, against the stand-in
// (test/fixtures/fc-standin.c): one fd (COPY runs, one wake) and three fds
// (memory fd writes, CONTINUE runs), with balloon pages that must stay zeros.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';

import { FirecrackerPageServer, writeWorkingSet } from '../../lib/index';
import type { WorkingSet } from '../../lib/index';
import { fixture, itWith, scaled } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-ws-fc-'));
const standin = join(dir, 'fc-standin');
let count = 0;
beforeAll(() => execFileSync('cc', ['-O1', '-Wall', '-o', standin, fixture('fc-standin.c')], { stdio: 'inherit' }));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PS = 4096;

/** Regions of 4 KiB pages back to back: the stand-in's layout for a spec like 4k:64,4k:32. */
function regionsFor(spec: string): { offset: number; pages: number }[] {
  let offset = 0;
  return spec.split(',').map((part) => {
    const pages = Number(part.split(':')[1]);
    const r = { offset, pages };
    offset += pages * PS;
    return r;
  });
}

function setFor(spec: string, order: number[]): WorkingSet {
  const total = regionsFor(spec).reduce((n, r) => n + r.pages, 0);
  return { pageSize: PS, memorySize: total * PS, regions: 1, entries: order.map((page, rank) => ({ page, rank, timeUs: rank, write: false, region: 0 })) };
}

async function restore(mode: 1 | 3, spec: string, set: WorkingSet | string, waitMs: number, snapshotAs: 'file' | 'buffer' = 'file') {
  const regions = regionsFor(spec);
  const total = regions.reduce((n, r) => n + r.pages, 0);
  const snapshotPath = join(dir, `snapshot-${count}`);
  writeFileSync(snapshotPath, randomBytes(total * PS));
  const path = join(dir, `fc-${count++}.sock`);
  const warnings: string[] = [];
  const onWarning = (w: Error & { code?: string }) => warnings.push(`${w.code}: ${w.message}`);
  process.on('warning', onWarning);
  try {
    // A Buffer snapshot is memory at hand: one-fd runs are then copied a batch per native call.
    const snapshot = snapshotAs === 'buffer' ? readFileSync(snapshotPath) : snapshotPath;
    using server = FirecrackerPageServer.listen(path, { snapshot, workingSet: { replay: set, start: 'now' } });
    const child = spawn(standin, [path, String(mode), snapshotPath, spec], {
      stdio: ['ignore', 'pipe', 'pipe'], timeout: scaled(20_000), killSignal: 'SIGKILL', env: { ...process.env, FC_STANDIN_WAIT_MS: String(waitMs) },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const exit = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
    const session = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
    await session.replayFinished;
    const replayed = session.stats;
    const code = await exit;
    expect(stderr).toBe('');
    expect(code).toBe(0);
    const stats = await session.finished;
    return { replayed, stats, report: JSON.parse(stdout), warnings };
  } finally {
    process.off('warning', onWarning);
  }
}

describe('working-set replay (Firecracker page server)', () => {
  for (const snapshotAs of ['file', 'buffer'] as const)
  itWith(['eventRemove'], `one fd, snapshot ${snapshotAs === 'file' ? 'file' : 'in memory'}: the set arrives by COPY runs before the guest touches it; ballooned pages still read zeros`, async () => {
    const spec = '4k:64,4k:32';
    // Second region first, then the first one backwards in runs of 8: first-touch order is not address order.
    const order = [...Array.from({ length: 32 }, (_, i) => 64 + i)];
    for (let s = 56; s >= 0; s -= 8) for (let p = s; p < s + 8; p++) order.push(p);
    const { replayed, stats, report } = await restore(1, spec, setFor(spec, order), 1000, snapshotAs);
    const replay = replayed.workingSet!.replay;
    expect(replay).toMatchObject({ state: 'done', planned: 96, prefetched: 96, skipped: 0, demandFaults: 0 });
    // One run for the second region, then one per stretch of 8 (each ends where the previous run began).
    expect(replay.runs).toBe(9);
    expect(report).toMatchObject({ regions: 2, zeroPagesChecked: 2 });
    // The guest touched prefetched pages without a fault; only the ballooned pages faulted (zeros).
    expect(stats.zeroPages).toBe(2);
    expect(stats.faults).toBe(2);
    expect(stats.pagesFromSnapshot).toBe(96);
    expect(stats.workingSet!.replay.state).toBe('done');
  });

  itWith(['minorShmem', 'eventRemove'], 'three fds: runs written into the memory fd and mapped by CONTINUE; vCPU requests find their pages populated', async () => {
    const spec = '4k:48,4k:16';
    const file = join(dir, 'three.uffdws');
    writeWorkingSet(file, setFor(spec, Array.from({ length: 64 }, (_, p) => 63 - p)));
    const { replayed, stats, report } = await restore(3, spec, file, 1000);
    expect(replayed.workingSet!.replay).toMatchObject({ state: 'done', planned: 64, prefetched: 64, demandFaults: 0 });
    // Backwards order: every run is one page (the next page is already taken).
    expect(replayed.workingSet!.replay.runs).toBe(64);
    expect(report).toMatchObject({ regions: 2 });
    // Only the ballooned pages (zeros from then on) faulted; every snapshot page came from the replay.
    expect(stats.faults).toBe(stats.zeroPages - 1);
    expect(stats.pagesFromSnapshot).toBe(64);
  });

  itWith(['eventRemove'], 'one fd (snapshot file or memory) and three fds: a replay raced by the guest from its first touch keeps every byte right', async () => {
    const spec = '4k:64,4k:32';
    const order = Array.from({ length: 96 }, (_, i) => (i * 37) % 96);
    for (const [mode, snapshotAs] of [[1, 'file'], [1, 'buffer'], [3, 'file']] as const) {
      for (let round = 0; round < 3; round++) {
        const { replayed, stats } = await restore(mode, spec, setFor(spec, order), 0, snapshotAs);
        const replay = replayed.workingSet!.replay;
        // The stand-in checks the bytes (exit 0). Every page of the set is accounted for once.
        if (replay.state === 'done') expect(replay.prefetched + replay.skipped + replay.leftToFaults).toBe(96);
        expect(stats.pagesFromSnapshot).toBeLessThanOrEqual(96);
      }
    }
  });

  itWith(['eventRemove'], 'one fd: a set for another memory size warns and the session serves on demand', async () => {
    const spec = '4k:16';
    const { stats, warnings } = await restore(1, spec, { ...setFor(spec, [0, 1, 2]), memorySize: 32 * PS }, 0);
    expect(warnings).toEqual([expect.stringMatching(/^UFFD_WORKING_SET_IGNORED: .*recorded for 131072 bytes/)]);
    expect(stats.workingSet).toBeUndefined();
    expect(stats.faults).toBeGreaterThan(0);
  });
});

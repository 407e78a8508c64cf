import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { FeatureName, FirecrackerPageServer, FirecrackerSession, parseFirecrackerRegions } from '../../lib/index';
import { distEntry, fixture, itUnless, itWith, missingReason, scaled } from '../helpers';

const HUGE = 2 * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'uffd-fc-'));
const standin = join(dir, 'fc-standin');
let socketCount = 0;

// 2 MiB regions need reserved huge pages: reserve them for this file and put
// the old value back afterwards; if the kernel cannot give them, those tests
// skip and say why.
const HUGE_PAGES_NEEDED = 12;
const hugePagesBefore = Number(readFileSync('/proc/sys/vm/nr_hugepages', 'utf8'));
let hugeReason: string | undefined;
let hugeAdded = false;
try {
  writeFileSync('/proc/sys/vm/nr_hugepages', String(hugePagesBefore + HUGE_PAGES_NEEDED));
  hugeAdded = true;
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
  if (free < HUGE_PAGES_NEEDED) hugeReason = `only ${free} free 2 MiB huge pages after asking for ${HUGE_PAGES_NEEDED} more`;
} catch (err) {
  hugeReason = `cannot reserve huge pages (vm.nr_hugepages): ${(err as Error).message}`;
}

/** Like itWith, and also skipped (with the reason printed) when no huge pages could be reserved. */
function itWithHuge(features: FeatureName[], name: string, fn: () => unknown): void {
  itUnless(hugeReason ?? missingReason(...features), name, fn);
}

beforeAll(() => {
  execFileSync('cc', ['-O1', '-Wall', '-o', standin, fixture('fc-standin.c')], { stdio: 'inherit' });
});
afterAll(() => {
  // Give back what this file added rather than writing the old value: other
  // suites on the machine may have changed the pool meanwhile.
  try {
    if (hugeAdded) {
      const now = Number(readFileSync('/proc/sys/vm/nr_hugepages', 'utf8'));
      writeFileSync('/proc/sys/vm/nr_hugepages', String(Math.max(hugePagesBefore, now - HUGE_PAGES_NEEDED)));
    }
  } catch {
    // nothing to give back
  }
  rmSync(dir, { recursive: true, force: true });
});

/** The snapshot layout the stand-in uses: regions back to back, each aligned to its page size. */
function snapshotFor(spec: string): Buffer {
  let offset = 0;
  for (const part of spec.split(',')) {
    const [unit, count] = part.split(':');
    const ps = unit === '2m' ? HUGE : 4096;
    offset = Math.ceil(offset / ps) * ps + ps * Number(count);
  }
  return randomBytes(offset);
}

function runStandin(args: string[]): { exit: Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>; pid: number } {
  const child = spawn(standin, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: scaled(20_000), killSignal: 'SIGKILL' });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exit = new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  return { exit, pid: child.pid! };
}

async function restore(mode: 1 | 3, spec: string, legacy = false) {
  const snapshot = snapshotFor(spec);
  const snapshotPath = join(dir, `snapshot-${socketCount}`);
  writeFileSync(snapshotPath, snapshot);
  const path = join(dir, `fc-${socketCount++}.sock`);
  using server = FirecrackerPageServer.listen(path, { snapshot: snapshotPath });
  const child = runStandin([path, String(mode), snapshotPath, spec, ...(legacy ? ['legacy'] : [])]);
  const session = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
  expect(session).toBeInstanceOf(FirecrackerSession);
  expect(session.pid).toBe(child.pid);
  expect(session.backend).toBe(mode === 1 ? 'uffd' : 'guest_memfd');
  const result = await child.exit;
  expect(result.stderr).toBe('');
  expect(result).toMatchObject({ code: 0, signal: null });
  const stats = await session.finished;
  // The session's live counters are the final ones once it has finished; close() after the end changes nothing.
  expect(session.stats).toEqual(stats);
  session.close();
  expect(session.stats).toEqual(stats);
  const report = JSON.parse(result.stdout);
  return { session, stats, report };
}

describe('Firecracker page server', () => {
  it('parses regions with page_size, and page_size_kib carrying bytes (or KiB)', () => {
    const regions = parseFirecrackerRegions(JSON.stringify([
      { base_host_virt_addr: 0x7f0000000000, size: 8192, offset: 0, page_size: 4096 },
      { base_host_virt_addr: 0x7f0000200000, size: HUGE, offset: HUGE, page_size_kib: HUGE },
      { base_host_virt_addr: 0x7f0000600000, size: HUGE, offset: 2 * HUGE, page_size_kib: 2048 },
    ]));
    expect(regions.map((r) => r.pageSize)).toEqual([4096, HUGE, HUGE]);
    expect(regions[1]).toEqual({ baseHostVirtAddr: 0x7f0000200000, size: HUGE, offset: HUGE, pageSize: HUGE });
    expect(() => parseFirecrackerRegions('[{"base_host_virt_addr":4096,"size":4096,"offset":0}]')).toThrow(/neither page_size nor page_size_kib/);
    expect(() => parseFirecrackerRegions('[{"base_host_virt_addr":4096,"size":100,"offset":0,"page_size":4096}]')).toThrow(/not aligned/);
    expect(() => parseFirecrackerRegions('[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096},{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]')).toThrow(/overlap/);
    expect(() => parseFirecrackerRegions('{}')).toThrow(/non-empty JSON array/);
  });

  itWith(['eventRemove'], 'one fd: several 4 KiB regions served by COPY, ballooned pages come back as zeros', async () => {
    const { session, stats, report } = await restore(1, '4k:16,4k:8,4k:3');
    expect(session.regions).toHaveLength(3);
    expect(report).toMatchObject({ regions: 3, zeroPagesChecked: 3, vcpuRequests: 0 });
    expect(report.pagesChecked).toBe(3 * 4 + 3 - 1);
    expect(stats.removeEvents).toBe(3);
    expect(stats.zeroPages).toBe(3);
    expect(stats.pagesFromSnapshot).toBeGreaterThanOrEqual(report.pagesChecked - 3);
  });

  itWith(['eventRemove'], 'one fd: the older page_size_kib field', async () => {
    const { session, report } = await restore(1, '4k:4,4k:2', true);
    expect(session.regions.map((r) => r.pageSize)).toEqual([4096, 4096]);
    expect(report.zeroPagesChecked).toBe(2);
  });

  itWithHuge(['eventRemove', 'missingHugetlbfs'], 'one fd: 4 KiB and 2 MiB hugetlb regions; hugetlb zeros by COPY (no ZEROPAGE there)', async () => {
    const { session, stats, report } = await restore(1, '4k:16,2m:2,4k:8');
    expect(session.regions.map((r) => r.pageSize)).toEqual([4096, HUGE, 4096]);
    expect(report.zeroPagesChecked).toBe(3);
    expect(stats.zeroPages).toBe(3);
  });

  itWith(['eventRemove', 'minorShmem'], 'three fds: MINOR faults and vCPU fault requests, bitmap bits cleared, balloon zeros', async () => {
    const { session, stats, report } = await restore(3, '4k:16,4k:8,4k:4');
    expect(session.backend).toBe('guest_memfd');
    expect(report.vcpuRequests).toBe(4);
    expect(stats.faultRequests).toBe(4);
    expect(stats.removeEvents).toBe(4);
    expect(report.zeroPagesChecked).toBe(4);
  });

  itWithHuge(['eventRemove', 'minorHugetlbfs'], 'three fds on 2 MiB hugetlb memory (written through a mapping)', async () => {
    const { stats, report } = await restore(3, '2m:3,2m:2');
    expect(report.vcpuRequests).toBe(3);
    expect(stats.zeroPages).toBeGreaterThanOrEqual(3);
  });

  it('a bad handshake fails loudly: clear error, and the peer is killed rather than left waiting', async () => {
    const path = join(dir, `fc-${socketCount++}.sock`);
    const snapshot = Buffer.alloc(4096);
    using server = FirecrackerPageServer.listen(path, { snapshot });
    // A peer that sends regions but no fd, then waits (as Firecracker would).
    const child = spawn(process.execPath, ['-e', `
      const { FdSocket } = require(${JSON.stringify(distEntry)});
      const s = FdSocket.connect(${JSON.stringify(path)});
      s.send(JSON.stringify([{ base_host_virt_addr: 4096, size: 4096, offset: 0, page_size: 4096 }]));
      setInterval(() => {}, 1000);
    `], { stdio: 'inherit', timeout: scaled(20_000) });
    const exit = new Promise<string | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    await expect(server.accept({ signal: AbortSignal.timeout(scaled(10_000)) })).rejects.toMatchObject({
      code: 'ERR_FIRECRACKER_HANDSHAKE', message: expect.stringMatching(/expected 1 fd \(uffd\) or 3 fds .* got 0/),
    });
    expect(await exit).toBe('SIGKILL');
  });

  it("onFailure: 'close' fails the same handshake without killing the peer: it sees its socket closed", async () => {
    const path = join(dir, `fc-${socketCount++}.sock`);
    using server = FirecrackerPageServer.listen(path, { snapshot: Buffer.alloc(4096), onFailure: 'close' });
    // The peer reports whether its socket was closed, then exits by itself.
    const child = spawn(process.execPath, ['-e', `
      const { FdSocket } = require(${JSON.stringify(distEntry)});
      const s = FdSocket.connect(${JSON.stringify(path)});
      s.send(JSON.stringify([{ base_host_virt_addr: 4096, size: 4096, offset: 0, page_size: 4096 }]));
      s.receive().then((m) => { process.stdout.write(m.data.length === 0 ? 'closed' : 'data'); process.exit(0); });
    `], { stdio: ['ignore', 'pipe', 'inherit'], timeout: scaled(20_000) });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exit = new Promise<[number | null, string | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])));
    await expect(server.accept({ signal: AbortSignal.timeout(scaled(10_000)) })).rejects.toMatchObject({
      code: 'ERR_FIRECRACKER_HANDSHAKE', message: expect.not.stringContaining('was killed'),
    });
    expect(await exit).toEqual([0, null]);
    expect(out).toBe('closed');
  });
});

// Recording through the servers of faults: a Firecracker stand-in restoring
// from a snapshot, and a post-copy migration destination over loopback.
import { ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import {
  FdServer, FirecrackerPageServer, Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd, ReceivedGuestMemory, readWorkingSet, receiveGuestMemory,
} from '../../lib/index';
import { distEntry, fixture, itWith, scaled } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-wset-servers-'));
const standin = join(dir, 'fc-standin');
let n = 0;
const cleanups: (() => void)[] = [];
beforeAll(() => {
  execFileSync('cc', ['-O1', '-Wall', '-o', standin, fixture('fc-standin.c')], { stdio: 'inherit' });
});
afterEach(() => {
  while (cleanups.length) {
    try {
      cleanups.pop()!();
    } catch {
      // best effort
    }
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** What the stand-in touches first, per region of `spec` (4 KiB pages): its first, second, middle and last page. */
function standinOrder(counts: number[], vcpuFirst: boolean): { page: number; region: number }[] {
  const out: { page: number; region: number }[] = [];
  let base = 0;
  counts.forEach((count, region) => {
    const pages = [...new Set([0, 1, count >> 1, count - 1])].filter((p) => p < count);
    // Three fds: the last checked page is asked for by a vCPU request before the others are touched.
    const order = vcpuFirst ? [pages.at(-1)!, ...pages.slice(0, -1)] : pages;
    for (const p of order) out.push({ page: base + p, region });
    base += count;
  });
  // Three fds, at the end: a vCPU asks for region 0's third page, never touched before.
  if (vcpuFirst) out.push({ page: counts[0] > 2 ? 2 : 0, region: 0 });
  return out;
}

describe('recording a working set', () => {
  for (const mode of [1, 3] as const)
  itWith(mode === 1 ? ['eventRemove'] : ['eventRemove', 'minorShmem'], `Firecracker (${mode === 1 ? 'one fd' : 'three fds'}): the session writes the pages in first-touch order when it ends`, async () => {
    const counts = [16, 8, 3];
    const spec = counts.map((c) => `4k:${c}`).join(',');
    const snapshotPath = join(dir, `snapshot-${n}`);
    writeFileSync(snapshotPath, randomBytes(counts.reduce((a, b) => a + b) * PAGE_SIZE));
    const record = join(dir, `fc-${n}.wset`);
    const path = join(dir, `fc-${n++}.sock`);
    using server = FirecrackerPageServer.listen(path, { snapshot: snapshotPath, workingSet: { record } });
    const child = spawn(standin, [path, String(mode), snapshotPath, spec], { stdio: ['ignore', 'pipe', 'inherit'], timeout: scaled(20_000), killSignal: 'SIGKILL' });
    const exit = new Promise<number | null>((resolve) => child.once('close', resolve));
    const session = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
    expect(await exit).toBe(0);
    await session.finished;
    const set = readWorkingSet(record);
    expect(set).toMatchObject({ pageSize: PAGE_SIZE, memorySize: 27 * PAGE_SIZE, regions: 3, runs: 1 });
    const expected = standinOrder(counts, mode === 3);
    expect(set.entries.map((e) => ({ page: e.page, region: e.region }))).toEqual(expected);
    // The stand-in reads every page before it writes one.
    expect(set.entries.every((e) => !e.write)).toBe(true);
  });

  itWith(['eventRemove'], 'Firecracker: a recording that cannot be written rejects the session, after serving it', async () => {
    const spec = '4k:4';
    const snapshotPath = join(dir, `snapshot-${n}`);
    writeFileSync(snapshotPath, randomBytes(4 * PAGE_SIZE));
    const gone = mkdtempSync(join(dir, 'gone-'));
    const path = join(dir, `fc-${n++}.sock`);
    using server = FirecrackerPageServer.listen(path, { snapshot: snapshotPath, workingSet: { record: join(gone, 'x.wset') } });
    rmSync(gone, { recursive: true });
    const child = spawn(standin, [path, '1', snapshotPath, spec], { stdio: ['ignore', 'pipe', 'inherit'], timeout: scaled(20_000), killSignal: 'SIGKILL' });
    const exit = new Promise<number | null>((resolve) => child.once('close', resolve));
    const session = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
    expect(await exit).toBe(0);
    await expect(session.finished).rejects.toThrow(expect.objectContaining({ code: 'ERR_WORKING_SET_NO_DIR' }));
  });

  it('Firecracker: a record file in a directory that does not exist is refused at listen', () => {
    expect(() => FirecrackerPageServer.listen(join(dir, `x-${n++}.sock`), { snapshot: Buffer.alloc(PAGE_SIZE), workingSet: { record: join(dir, 'nowhere', 'x.wset') } }))
      .toThrow(expect.objectContaining({ code: 'ERR_WORKING_SET_NO_DIR' }));
    // So is a bad stop rule: found at a session's start, it would cost that session.
    expect(() => FirecrackerPageServer.listen(join(dir, `x-${n++}.sock`), { snapshot: Buffer.alloc(PAGE_SIZE), workingSet: { record: { file: join(dir, 'x.wset'), budgetMs: -1 } } }))
      .toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });

  for (const mode of ['event-loop', 'native'] as const)
  itWith(['minorShmem', 'missingShmem', 'threadId'], `migration destination (${mode}): records demand faults with their write kind, written when the migration ends`, async () => {
    const pages = 32;
    const image = randomBytes(pages * PAGE_SIZE);
    const sockPath = join(dir, `guest-${n}.sock`);
    const record = join(dir, `dest-${n++}.wset`);
    const server = FdServer.listen(sockPath);
    cleanups.push(() => server.close());
    const child: ChildProcess = fork(fixture('migrate-guest.js'), [distEntry, sockPath, String(pages)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    cleanups.push(() => child.kill('SIGKILL'));
    const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const sock = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
    const memory: ReceivedGuestMemory = await receiveGuestMemory(sock, { signal: AbortSignal.timeout(scaled(10_000)) });
    sock.close();
    cleanups.push(() => memory.uffd.close());
    cleanups.push(() => memory.memfd.close());
    const ask = (msg: object, reply: string) => new Promise<void>((resolve) => {
      const onMessage = (m: { type: string }) => {
        if (m.type !== reply) return;
        child.off('message', onMessage);
        resolve();
      };
      child.on('message', onMessage);
      child.send(msg);
    });
    // No push: every page comes because the guest touched it.
    const source = await MigrationSource.listen(image, { host: '127.0.0.1', push: false });
    cleanups.push(() => source.close());
    const { uffd, memfd, views } = memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port: source.address.port, mode, workingSet: { record } });
    const read = [7, 3, 20];
    const write = [9, 2, 3];
    await ask({ type: 'touch', read, write }, 'touched');
    expect(existsSync(record)).toBe(false);
    const rest = [...Array(pages).keys()].filter((p) => !read.includes(p) && !write.includes(p));
    await ask({ type: 'touch', read: rest, write: [] }, 'touched');
    await dest.done;
    const set = readWorkingSet(record);
    expect(set).toMatchObject({ pageSize: PAGE_SIZE, memorySize: pages * PAGE_SIZE, regions: 1 });
    // Page 3 was read before it was written: its first touch is a read.
    expect(set.entries.map((e) => [e.page, e.write])).toEqual([...[7, 3, 20, 9, 2].map((p) => [p, write.includes(p) && !read.includes(p)]), ...rest.map((p) => [p, false])]);
    child.send({ type: 'exit' });
    expect(await exit).toBe(0);
  });

  it('migration destination: a record file in a directory that does not exist is refused before connecting', async () => {
    using memfd = Memfd.create(4 * PAGE_SIZE);
    using uffd = Userfaultfd.open();
    const view = memfd.map();
    cleanups.push(() => view.unmap());
    // No port either: the record target is checked first, so nothing was tried on the network.
    await expect(MigrationDestination.connect({ uffd, memfd, views: [view], workingSet: { record: join(dir, 'nowhere', 'x.wset') } }))
      .rejects.toThrow(expect.objectContaining({ code: 'ERR_WORKING_SET_NO_DIR' }));
  });
});

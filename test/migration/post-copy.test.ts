import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import {
  FdSocket, MigrationDestination, MigrationSource, Memfd, PAGE_SIZE, Userfaultfd, crc32, receiveGuestMemory,
} from '../../lib/index';
import { Frame, PRIORITY, PROTOCOL_VERSION, encodeBatch, encodeCredit, encodeDone, encodeHello, encodeRequest, FrameDecoder, FRAME_HEADER } from '../../lib/migration/protocol';
import { itWith, scaled, sleepingIn, waitFor } from '../helpers';
import { startGuest } from './guest';

const cleanups: (() => void)[] = [];
afterEach(() => {
  while (cleanups.length) {
    try {
      cleanups.pop()!();
    } catch {
      // best effort
    }
  }
});

/** The CRC a page must have: the image's bytes, with the guest's stamp where it wrote. */
function expectedSums(image: Buffer, written: Set<number>): number[] {
  const sums: number[] = [];
  for (let p = 0; p < image.length / PAGE_SIZE; p++) {
    const page = Buffer.from(image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
    if (written.has(p)) {
      page.writeUInt32LE(0xfeedf00d, 0);
      page.writeUInt32LE(p, 4);
    }
    sums.push(crc32(page));
  }
  return sums;
}

/** A hand-written source: lets a test send exactly the frames it wants. */
async function fakeSource(onConnection: (socket: net.Socket) => void): Promise<number> {
  const server = net.createServer(onConnection);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  cleanups.push(() => server.close());
  return (server.address() as net.AddressInfo).port;
}

function batch(image: Buffer, first: number, count: number, demand = false): Buffer {
  const [head, body] = encodeBatch(demand, first, count, image.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
  return Buffer.concat([head, body]);
}

/** Collects request frames the destination sends to a fake source. */
function onRequests(socket: net.Socket, fn: (first: number, count: number) => void): void {
  const decoder = new FrameDecoder(() => PAGE_SIZE);
  socket.on('data', (chunk) => {
    for (const f of decoder.push(chunk)) if (f.type === 'request') fn(f.firstPage, f.pageCount);
  });
  socket.on('error', () => {});
}

describe('post-copy migration over TCP', () => {
  for (const mode of ['event-loop', 'native'] as const)
  itWith(['minorShmem', 'missingShmem', 'threadId'], `migrates every page while the guest reads and writes; written pages survive (${mode} fault handler)`, async () => {
    const pages = 512;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    // A throttled push (about 1.5 s for the image) keeps most pages absent
    // while the guest works. How many of its faults the push beats is a
    // race, so only what holds either way is checked; the on-demand path is
    // checked without a push by the tests below.
    const source = await MigrationSource.listen(image, { host: '127.0.0.1', batchPages: 16, pushBytesPerSecond: Math.round((pages * PAGE_SIZE) / 1.5) });
    cleanups.push(() => source.close());
    const { uffd, memfd, views } = guest.memory;
    const read = [511, 200, 3, 77];
    const write = [510, 5, 300, 3, 301];
    // The guest touches before the destination exists: its first fault is
    // pending (the guest's thread sleeps in handle_userfault) when it starts.
    const touching = guest.ask<{ seen: number[] }>({ type: 'touch', read, write }, 'touched');
    await waitFor(() => sleepingIn(guest.child.pid!, guest.child.pid!) === 'handle_userfault', 10_000, 'the guest blocked in its first fault');
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port: source.address.port, mode });
    const touched = await touching;
    expect(touched.seen).toEqual(read.map((p) => image[p * PAGE_SIZE + 100]));
    const stats = await dest.done;
    const sourceStats = await source.connections[0];
    console.log(`${mode}: ${stats.pagesOnDemand} pages on demand, ${stats.pagesPushed} pushed, ${stats.faults} faults, ${stats.demandFaults} demand faults`);
    // Every page arrived exactly once, by one way or the other.
    expect(stats.pagesOnDemand + stats.pagesPushed).toBe(pages);
    expect(stats.pagesIgnored).toBe(0);
    // Nine touched pages at most could have been asked for: the rest were pushed.
    expect(stats.pagesOnDemand).toBeLessThanOrEqual(new Set([...read, ...write]).size);
    expect(stats.pagesPushed).toBeGreaterThanOrEqual(pages - 9);
    // The pending fault was read and resolved, whichever way its page came.
    expect(stats.faults).toBeGreaterThanOrEqual(1);
    expect(stats.faultLatencyMs.length).toBe(stats.demandFaults);
    expect(sourceStats.pagesOnDemand + sourceStats.pagesPushed).toBe(pages);
    expect(stats.handler).toMatchObject({ fetched: stats.demandFaults, errors: 0, poisoned: 0 });
    expect(stats.handler!.resolved).toBe(stats.faults);
    // Writes after the migration land in the same memfd with no userfaultfd involved.
    await guest.ask({ type: 'touch', read: [], write: [100] }, 'touched');
    const { sums } = await guest.ask<{ sums: number[] }>({ type: 'checksums' }, 'checksums');
    expect(sums).toEqual(expectedSums(image, new Set([...write, 100])));
    expect(crc32(memfd.read(5 * PAGE_SIZE, PAGE_SIZE))).toBe(sums[5]);
    guest.child.send({ type: 'exit' });
    expect(await guest.exit).toEqual({ code: 0, signal: null });
  });

  for (const mode of ['event-loop', 'native'] as const)
  for (const advice of ['dontneed', 'remove'] as const)
  itWith(['minorShmem', 'missingShmem', 'threadId', 'eventRemove'], `a guest that drops served pages (MADV_${advice.toUpperCase()}) and touches them again is answered (${mode} fault handler)`, async () => {
    const pages = 16;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    // No push: every page arrives because the guest asked for it.
    const source = await MigrationSource.listen(image, { host: '127.0.0.1', push: false });
    cleanups.push(() => source.close());
    const { uffd, memfd, views } = guest.memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port: source.address.port, mode });
    const dropped = [5, 6, 7];
    const first = await guest.ask<{ seen: number[] }>({ type: 'touch', read: dropped, write: [] }, 'touched');
    expect(first.seen).toEqual(dropped.map((p) => image[p * PAGE_SIZE + 100]));
    expect(dest.stats.demandFaults).toBe(3);
    await guest.ask({ type: 'drop', pages: dropped, advice }, 'dropped');
    // MADV_DONTNEED leaves the shared page cache alone; MADV_REMOVE frees the pages.
    for (const p of dropped)
      expect(memfd.read(p * PAGE_SIZE, PAGE_SIZE)).toEqual(advice === 'dontneed' ? image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE) : Buffer.alloc(PAGE_SIZE));
    const again = await guest.ask<{ seen: number[] }>({ type: 'touch', read: dropped, write: [] }, 'touched');
    expect(again.seen).toEqual(dropped.map((p) => image[p * PAGE_SIZE + 100]));
    // Kept pages are mapped from the page cache without asking; freed ones are asked for again.
    expect(dest.stats.demandFaults).toBe(advice === 'dontneed' ? 3 : 6);
    expect(dest.faultStats().events.remove).toBe(3);
    // The rest, so the migration completes; then every byte is the image's.
    const rest = [...Array(pages).keys()].filter((p) => !dropped.includes(p));
    await guest.ask({ type: 'touch', read: rest, write: [] }, 'touched');
    const stats = await dest.done;
    expect(stats.pagesOnDemand).toBe(advice === 'dontneed' ? pages : pages + 3);
    const { sums } = await guest.ask<{ sums: number[] }>({ type: 'checksums' }, 'checksums');
    expect(sums).toEqual(expectedSums(image, new Set()));
    guest.child.send({ type: 'exit' });
    expect(await guest.exit).toEqual({ code: 0, signal: null });
  });

  itWith(['minorShmem', 'missingShmem'], 'a source that re-sends every page cannot overwrite what the guest wrote', async () => {
    const pages = 64;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    let socketToGuestSource: net.Socket | undefined;
    const port = await fakeSource((socket) => {
      socketToGuestSource = socket;
      socket.write(encodeHello(PAGE_SIZE, image.length));
      onRequests(socket, (first, count) => socket.write(batch(image, first, count, true)));
    });
    const { uffd, memfd, views } = guest.memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port });
    const write = [0, 13, 63];
    await guest.ask({ type: 'touch', read: [7], write }, 'touched');
    // Now a careless push of the whole image, pages the guest wrote included.
    socketToGuestSource!.write(batch(image, 0, pages));
    socketToGuestSource!.write(encodeDone(pages));
    const stats = await dest.done;
    expect(stats.pagesIgnored).toBe(stats.pagesOnDemand);
    expect(stats.pagesOnDemand).toBe(4);
    const { sums } = await guest.ask<{ sums: number[] }>({ type: 'checksums' }, 'checksums');
    expect(sums).toEqual(expectedSums(image, new Set(write)));
    guest.child.send({ type: 'exit' });
    expect((await guest.exit).code).toBe(0);
  });

  itWith(['minorShmem', 'missingShmem', 'poison'], 'a source that disconnects mid-way: clear error, the blocked guest gets SIGBUS (poison policy)', async () => {
    const pages = 32;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    const port = await fakeSource((socket) => {
      socket.write(encodeHello(PAGE_SIZE, image.length));
      socket.write(batch(image, 0, 8));
      // The guest is now blocked on the requested page: hang up instead of answering.
      onRequests(socket, () => socket.destroy());
    });
    const { uffd, memfd, views } = guest.memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port });
    guest.child.send({ type: 'touch', read: [1, 20], write: [] });
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_CONNECTION_LOST', policy: 'poison', pagesMissing: 24 });
    await expect(dest.done).rejects.toThrow(/source closed the connection with 24 of 32 pages missing/);
    expect(await guest.exit).toEqual({ code: null, signal: 'SIGBUS' });
    // Received pages are in the memfd; the rest are holes.
    expect(memfd.read(PAGE_SIZE, PAGE_SIZE)).toEqual(image.subarray(PAGE_SIZE, 2 * PAGE_SIZE));
    expect(memfd.read(20 * PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE));
  });

  itWith(['minorShmem', 'missingShmem'], 'with the zero policy a lost source wakes the guest, which reads zeros for missing pages', async () => {
    const pages = 16;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    const port = await fakeSource((socket) => {
      socket.write(encodeHello(PAGE_SIZE, image.length));
      socket.write(batch(image, 0, 4));
      onRequests(socket, () => socket.destroy());
    });
    const { uffd, memfd, views } = guest.memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port, onFailure: 'zero' });
    const touched = guest.ask<{ seen: number[] }>({ type: 'touch', read: [9, 2], write: [] }, 'touched');
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_CONNECTION_LOST', policy: 'zero' });
    expect((await touched).seen).toEqual([0, image[2 * PAGE_SIZE + 100]]);
    guest.child.send({ type: 'exit' });
    expect((await guest.exit).code).toBe(0);
  });

  itWith(['minorShmem', 'missingShmem', 'poison'], 'a batch with a bad checksum is rejected and the waiting guest is not left hanging', async () => {
    const pages = 16;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    const port = await fakeSource((socket) => {
      socket.write(encodeHello(PAGE_SIZE, image.length));
      onRequests(socket, (first, count) => {
        const frame = batch(image, first, count, true);
        frame[FRAME_HEADER + 12 + 5] ^= 0x40;
        socket.write(frame);
      });
    });
    const { uffd, memfd, views } = guest.memory;
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port });
    guest.child.send({ type: 'touch', read: [6], write: [] });
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_BAD_CHECKSUM' });
    await expect(dest.done).rejects.toThrow(/batch of pages 6\+1 has CRC-32 0x[0-9a-f]+, frame says 0x[0-9a-f]+/);
    expect(await guest.exit).toEqual({ code: null, signal: 'SIGBUS' });
    expect(memfd.read(6 * PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE));
  });

  itWith(['minorShmem', 'missingShmem'], 'bad frames: unknown type, wrong version, oversized length, wrong page size', async () => {
    const mem = Memfd.create(4 * PAGE_SIZE);
    cleanups.push(() => mem.close());
    const cases: [string, Buffer, string][] = [];
    const unknown = encodeHello(PAGE_SIZE, 4 * PAGE_SIZE);
    const unknownType = Buffer.from(encodeDone(0));
    unknownType[4] = 42;
    cases.push(['unknown type', Buffer.concat([unknown, unknownType]), 'ERR_MIGRATION_BAD_FRAME']);
    for (const version of [1, PROTOCOL_VERSION + 1]) {
      // 1: a source from before refetch requests existed.
      const other = encodeHello(PAGE_SIZE, 4 * PAGE_SIZE);
      other.writeUInt32LE(version, FRAME_HEADER);
      cases.push([`version ${version}`, other, 'ERR_MIGRATION_VERSION']);
    }
    const huge = Buffer.alloc(FRAME_HEADER);
    huge.writeUInt32LE(0xffffffff, 0);
    huge[4] = 3;
    cases.push(['oversized', Buffer.concat([encodeHello(PAGE_SIZE, 4 * PAGE_SIZE), huge]), 'ERR_MIGRATION_BAD_FRAME']);
    cases.push(['page size', encodeHello(PAGE_SIZE * 2, 4 * PAGE_SIZE), 'ERR_MIGRATION_MISMATCH']);
    cases.push(['batch first', batch(Buffer.alloc(4 * PAGE_SIZE, 1), 0, 1), 'ERR_MIGRATION_BAD_FRAME']);
    for (const [name, bytes, code] of cases) {
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
      cleanups.push(() => uffd.close());
      const view = mem.map();
      uffd.register(view, { missing: true, minor: true });
      const port = await fakeSource((socket) => {
        socket.on('error', () => {});
        socket.write(bytes);
      });
      let err: Error & { code?: string };
      try {
        const dest = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port, onFailure: 'zero' });
        err = await dest.done.then(() => new Error('resolved'), (e) => e);
      } catch (e) {
        err = e as Error;
      }
      expect(err, name).toMatchObject({ code });
      expect(err.message, name).toMatch(/^migration protocol: /);
      // Unregistered on failure: touching a page now is an ordinary fault.
      expect(new Uint8Array(view.buffer)[0], name).toBe(0);
      view.unmap();
    }
  });

  it('the source pushes only within the credit the destination grants; demand answers need none', async () => {
    const pages = 64;
    const image = randomBytes(pages * PAGE_SIZE);
    const source = await MigrationSource.listen(image, { host: '127.0.0.1', batchPages: 4 });
    cleanups.push(() => source.close());
    const socket = net.connect({ host: '127.0.0.1', port: source.address.port });
    cleanups.push(() => socket.destroy());
    const decoder = new FrameDecoder(() => PAGE_SIZE);
    const frames: Frame[] = [];
    let wake = () => {};
    socket.on('data', (chunk) => {
      frames.push(...decoder.push(chunk));
      wake();
    });
    const until = (n: number) => new Promise<void>((resolve) => {
      wake = () => frames.length >= n && resolve();
      wake();
    });
    await until(1);
    expect(frames[0]).toMatchObject({ type: 'hello', version: PROTOCOL_VERSION, pageSize: PAGE_SIZE, imageSize: image.length, pageCount: pages });
    socket.write(encodeCredit(2));
    socket.write(encodeRequest(PRIORITY.demand, 40, 1));
    await until(4);
    const describe = (f: Frame) => (f.type === 'batch' ? `${f.demand ? 'demand' : 'push'} ${f.firstPage}+${f.pageCount}` : f.type);
    // With credit for two batches: two pushes and the demand answer (in either order), nothing more.
    expect(frames.slice(1).map(describe).sort()).toEqual(['demand 40+1', 'push 0+4', 'push 4+4']);
    socket.write(encodeCredit(1));
    await until(5);
    expect(describe(frames[4])).toBe('push 8+4');
    const demandFrame = frames.find((f) => f.type === 'batch' && f.demand) as Extract<Frame, { type: 'batch' }>;
    expect(demandFrame.data).toEqual(image.subarray(40 * PAGE_SIZE, 41 * PAGE_SIZE));
    expect(frames.length).toBe(5);
  });

  itWith(['minorShmem'], 'guest memory handoff: fds and metadata arrive together; anything else is refused', async () => {
    const [a, b] = FdSocket.pair();
    cleanups.push(() => a.close(), () => b.close());
    const mem = Memfd.create(8 * PAGE_SIZE);
    cleanups.push(() => mem.close());
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem'] });
    cleanups.push(() => uffd.close());
    uffd.register(view, { minor: true });
    mem.write(3 * PAGE_SIZE, Buffer.from('handoff'));
    const { sendGuestMemory } = await import('../../lib/index');
    sendGuestMemory(a, uffd, mem, { views: [{ address: view.address, length: view.length, offset: 0 }], meta: { vm: 'x' } });
    const got = await receiveGuestMemory(b, { signal: AbortSignal.timeout(scaled(5000)) });
    cleanups.push(() => got.uffd.close(), () => got.memfd.close());
    expect(got).toMatchObject({ views: [{ address: view.address, length: view.length, offset: 0 }], meta: { vm: 'x' }, peer: { pid: process.pid } });
    // fdinfo shows what was negotiated (UFFDIO_API itself answers with everything the kernel offers).
    expect(got.uffd.features).toEqual(['minorShmem']);
    expect(got.memfd.size).toBe(8 * PAGE_SIZE);
    expect(got.memfd.read(3 * PAGE_SIZE, 7).toString()).toBe('handoff');
    // The received uffd resolves faults of the sender's registration.
    expect(got.uffd.continue(view.address + 3 * PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(Buffer.from(view.buffer, 3 * PAGE_SIZE, 7).toString()).toBe('handoff');
    // A message that is not a handoff.
    const junk = Buffer.alloc(4 + 2);
    junk.writeUInt32LE(2, 0);
    junk.write('{}', 4);
    a.send(junk);
    await expect(receiveGuestMemory(b, { signal: AbortSignal.timeout(scaled(5000)) })).rejects.toMatchObject({ code: 'ERR_UFFD_HANDOFF' });
  });

  itWith(['minorShmem', 'missingShmem'], 'serves an image from a file and from a Memfd, not only a Buffer', async () => {
    const pages = 40;
    const image = randomBytes(pages * PAGE_SIZE - 100);
    const dir = mkdtempSync(join(tmpdir(), 'uffd-image-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'memory.img');
    writeFileSync(file, image);
    const memImage = Memfd.create(pages * PAGE_SIZE);
    cleanups.push(() => memImage.close());
    memImage.write(0, image);
    for (const [what, source] of [['file', file], ['memfd', memImage]] as const) {
      const server = await MigrationSource.listen(source, { host: '127.0.0.1', batchPages: 8 });
      cleanups.push(() => server.close());
      const mem = Memfd.create(pages * PAGE_SIZE);
      cleanups.push(() => mem.close());
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
      cleanups.push(() => uffd.close());
      const view = mem.map();
      uffd.register(view, { missing: true, minor: true });
      const dest = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: server.address.port });
      const stats = await dest.done;
      expect(stats.pagesPushed, what).toBe(pages);
      // A short last page is padded with zeros.
      // (Buffer.equals: a deep equal over 160 KB is slow in the test runner.)
      expect(mem.read(0, image.length).equals(image), what).toBe(true);
      expect(mem.read(image.length, 100), what).toEqual(Buffer.alloc(100));
      // Unregistered when done: reading the view here raises no fault.
      expect(Buffer.from(view.buffer, 0, 64), what).toEqual(image.subarray(0, 64));
    }
  });
});

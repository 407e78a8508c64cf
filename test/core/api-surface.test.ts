// Public API that no other test exercised for its effect: the exported
// constants, small accessors (Userfaultfd#has, Mapping#contains), the
// PresentPages bitmap, FdSocket's success paths (receiveExactly, release,
// peerCredentials), FdMessage.truncated, servePages, and the sigbus,
// exactAddress and wpAsync features beyond their negotiation. Each test
// checks what the call does, not only that it exists.
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';

import * as api from '../../lib/index';
import { FaultHandler, FdServer, FdSocket, IOCTLS, Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, PROTOCOL_VERSION, PresentPages, Userfaultfd, servePages, touchPages } from '../../lib/index';
import type { FdMessage } from '../../lib/index';
import { distEntry, itUnless, itWith, scaled } from '../helpers';
import { Closer, MmWorker, Pagefault, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

describe('exported constants', () => {
  itWith(['minorShmem', 'missingShmem'], 'IOCTLS numbers the bits of a registration\'s ioctl mask', () => {
    expect(IOCTLS).toMatchObject({ register: 0, unregister: 1, wake: 2, copy: 3, zeropage: 4, continue: 7, api: 63 });
    const mem = closer.add(Memfd.create(PAGE_SIZE, { allocate: true }));
    const view = mem.map();
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] }));
    const reg = uffd.register(view, { minor: true, missing: true });
    // Every name the library reports is the bit IOCTLS gives it, and no other bit is set.
    let mask = 0n;
    for (const name of reg.ioctls) {
      expect((reg.ioctlMask >> BigInt(IOCTLS[name])) & 1n, name).toBe(1n);
      mask |= 1n << BigInt(IOCTLS[name]);
    }
    expect(mask).toBe(reg.ioctlMask);
    expect(reg.ioctls).toEqual(expect.arrayContaining(['wake', 'copy', 'zeropage', 'continue']));
  });

  it('PROTOCOL_VERSION is what a source says in its hello (version 3: live sources)', async () => {
    expect(PROTOCOL_VERSION).toBe(3);
    const image = Buffer.alloc(2 * PAGE_SIZE, 7);
    const server = net.createServer((socket) => void servePages(socket, image).catch(() => {}));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
      const [first] = (await once(socket, 'data')) as [Buffer];
      socket.destroy();
      const { FrameDecoder } = await import('../../lib/migration/protocol');
      const [hello] = new FrameDecoder(() => PAGE_SIZE).push(first);
      expect(hello).toMatchObject({ type: 'hello', version: PROTOCOL_VERSION, pageCount: 2, live: false });
    } finally {
      server.close();
    }
  });

  it('every runtime export is a defined value', () => {
    for (const [name, value] of Object.entries(api)) expect(value, name).toBeDefined();
  });
});

describe('servePages', () => {
  itWith(['minorShmem', 'missingShmem', 'threadId'], 'serves an image over a socket the caller accepted: a destination gets every byte', async () => {
    const pages = 8;
    const image = Buffer.alloc(pages * PAGE_SIZE);
    for (let p = 0; p < pages; p++) image.fill(pageByte(p), p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
    let served: Promise<api.SourceStats> | undefined;
    const server = net.createServer((socket) => (served = servePages(socket, image, { batchPages: 2 })));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const memfd = closer.add(Memfd.create(pages * PAGE_SIZE, { name: 'serve-pages' }));
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] }));
    const w = new MmWorker(memfd.fd);
    closer.add({ close: () => void w.close() });
    try {
      const view = await w.call<{ address: number; length: number }>('map', {});
      uffd.register(view, { minor: true, missing: true });
      const dest = await MigrationDestination.connect({ uffd, memfd, views: [view], port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
      const touched = await w.call<{ seen: number[] }>('touch', { pages: [6, 1] });
      expect(touched.seen).toEqual([pageByte(6), pageByte(6), pageByte(1), pageByte(1)]);
      const stats = await dest.done;
      expect(stats.pagesOnDemand + stats.pagesPushed).toBe(pages);
      expect(memfd.read(0, pages * PAGE_SIZE).equals(image)).toBe(true);
      const sourceStats = await served!;
      expect(sourceStats.pagesOnDemand + sourceStats.pagesPushed).toBe(pages);
      // The handler's counters stay readable after the end, and close() after it is harmless.
      expect(dest.faultStats().errors).toBe(0);
      dest.close();
      dest.close();
    } finally {
      server.close();
    }
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'MigrationDestination#close before the end rejects done with ERR_MIGRATION_ABORTED and stops serving', async () => {
    const pages = 4;
    // A source that says hello and then nothing: the migration cannot end by itself.
    const server = net.createServer((socket) => void servePages(socket, Buffer.alloc(pages * PAGE_SIZE, 1), { push: false }).catch(() => {}));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const memfd = closer.add(Memfd.create(pages * PAGE_SIZE, { name: 'dest-close' }));
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] }));
    const view = memfd.map();
    uffd.register(view, { minor: true, missing: true });
    try {
      const dest = await MigrationDestination.connect({ uffd, memfd, views: [view], port: (server.address() as net.AddressInfo).port, host: '127.0.0.1' });
      const done = dest.done.then(() => undefined, (err) => err);
      dest.close();
      expect(await done).toMatchObject({ code: 'ERR_MIGRATION_ABORTED' });
      dest.close(); // idempotent
      expect(dest.faultStats()).toMatchObject({ faults: 0, fetched: 0 });
    } finally {
      server.close();
    }
  });
});

describe('small accessors', () => {
  itWith(['minorShmem'], 'Userfaultfd#has answers from the negotiated features only', () => {
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    expect(uffd.has('minorShmem')).toBe(true);
    expect(uffd.has('eventRemove')).toBe(false);
    expect(uffd.has('threadId')).toBe(false);
    for (const f of Object.keys(api.FEATURES) as api.FeatureName[]) expect(uffd.has(f), f).toBe(uffd.features.includes(f));
  });

  it('Mapping#contains: inside, the edges, straddling, outside, and nothing once unmapped', () => {
    const mem = closer.add(Memfd.create(4 * PAGE_SIZE));
    const view = mem.map({ offset: PAGE_SIZE, length: 2 * PAGE_SIZE });
    const { address, length } = view;
    expect(view.contains(address)).toBe(true);
    expect(view.contains(address, length)).toBe(true);
    expect(view.contains(address + length - 1)).toBe(true);
    expect(view.contains(address + length)).toBe(false);
    expect(view.contains(address - 1)).toBe(false);
    expect(view.contains(address + PAGE_SIZE, length)).toBe(false);
    expect(view.contains(address - PAGE_SIZE, 2 * PAGE_SIZE)).toBe(false);
    view.unmap();
    expect(view.contains(address)).toBe(false);
  });
});

describe('PresentPages', () => {
  it('mark/clear by byte range, markPage/clearPage by index, has and count agree', () => {
    const present = new PresentPages(70 * PAGE_SIZE, PAGE_SIZE);
    expect([present.pageCount, present.pageSize, present.count()]).toEqual([70, PAGE_SIZE, 0]);
    // A partial page counts as the whole page.
    expect(present.mark(PAGE_SIZE + 1, PAGE_SIZE)).toBe(2);
    expect([present.has(0), present.has(1), present.has(2), present.has(3)]).toEqual([false, true, true, false]);
    expect(present.mark(PAGE_SIZE, 2 * PAGE_SIZE)).toBe(0); // already present
    // Across a 32-bit word boundary.
    expect(present.mark(30 * PAGE_SIZE, 5 * PAGE_SIZE)).toBe(5);
    expect(present.count()).toBe(7);
    present.clear(31 * PAGE_SIZE, 2 * PAGE_SIZE);
    expect([30, 31, 32, 33, 34].map((p) => present.has(p))).toEqual([true, false, false, true, true]);
    present.markPage(69);
    present.markPage(69);
    expect(present.has(69)).toBe(true);
    present.clearPage(1);
    expect(present.has(1)).toBe(false);
    expect(present.count()).toBe(5);
    // The bitmap is shared memory the native engine reads.
    expect(present.words.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(() => present.mark(69 * PAGE_SIZE, 2 * PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });

  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'threadId'], `a page marked present is mapped without a fetch, a cleared one is fetched (${mode})`, async () => {
      const mem = filledMemfd(closer, 4);
      const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId'] }));
      const present = new PresentPages(4 * PAGE_SIZE, PAGE_SIZE);
      present.mark(0, 2 * PAGE_SIZE);
      present.clearPage(1);
      present.markPage(3);
      const fetched: number[] = [];
      const handler = new FaultHandler(uffd, { memfd: mem, mode, present, fetch: (f) => void fetched.push(f.page) });
      const view = mem.map();
      handler.attach(view).start();
      try {
        const report = await touchPages(view, [0, 1, 2, 3]);
        expect(report.checksum).toBe([0, 1, 2, 3].reduce((a, p) => a + pageByte(p), 0));
        expect(fetched.sort()).toEqual([1, 2]);
        expect(present.count()).toBe(4);
      } finally {
        await handler.stop();
      }
    });
  }
});

describe('FdSocket success paths', () => {
  it('receiveExactly collects a message sent in parts, with its descriptors', async () => {
    const [a, b] = FdSocket.pair();
    closer.add(a);
    closer.add(b);
    const mem = closer.add(Memfd.create(PAGE_SIZE));
    a.send('hello ', [mem.fd]);
    const pending = b.receiveExactly(11);
    a.send('world');
    const msg = await pending;
    expect(msg.data.toString()).toBe('hello world');
    expect(msg.truncated).toBe(false);
    expect(msg.fds).toHaveLength(1);
    expect(readlinkSync(`/proc/self/fd/${msg.fds[0]}`)).toBe(readlinkSync(`/proc/self/fd/${mem.fd}`));
    closeSync(msg.fds[0]);
    expect((await (async () => { a.send(''); return b.receiveExactly(0); })()).data.length).toBe(0);
  });

  it('peerCredentials names this process at both ends of a pair, and the connecting child across a Unix socket', async () => {
    const [a, b] = FdSocket.pair();
    closer.add(a);
    closer.add(b);
    expect(a.peerCredentials()).toEqual({ pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
    const dir = mkdtempSync(join(tmpdir(), 'uffd-cred-'));
    const path = join(dir, 'cred.sock');
    const server = closer.add(FdServer.listen(path));
    closer.add({ close: () => rmSync(dir, { recursive: true, force: true }) });
    const child = spawn(process.execPath, ['-e', `
      const { FdSocket } = require(${JSON.stringify(distEntry)});
      const s = FdSocket.connect(${JSON.stringify(path)});
      s.receive().then(() => process.exit(0));
    `], { stdio: 'inherit' });
    const exited = once(child, 'exit');
    const accepted = closer.add(await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) }));
    expect(accepted.peerCredentials()).toEqual({ pid: child.pid, uid: process.getuid!(), gid: process.getgid!() });
    accepted.send('bye');
    expect(await exited).toEqual([0, null]);
  });

  it('release hands the descriptor over without closing it; the socket object is closed', async () => {
    const [a, b] = FdSocket.pair();
    closer.add(b);
    const fd = a.release();
    expect(fd).toBe(a.fd);
    expect(a.closed).toBe(true);
    expect(() => a.send('x')).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    // Still open: a new owner can use it.
    const owner = closer.add(new FdSocket(fd));
    owner.send('still open');
    expect((await b.receive()).data.toString()).toBe('still open');
  });

  // The foreign sender is python (socket.send_fds, 3.9+): a minimal userland (the VM matrix's arm64 guests) has none.
  const noPython = spawnSync('python3', ['-c', 'import socket; socket.send_fds'], { stdio: 'ignore' }).status === 0
    ? undefined : 'python3 with socket.send_fds (3.9+) is not installed: no foreign sender of 20 descriptors';
  itUnless(noPython, 'FdMessage.truncated: more descriptors than a receive takes are dropped, and it says so', async () => {
    // The library sends at most 16; a foreign sender (python) sends 20.
    const [mine, theirs] = FdSocket.pair();
    closer.add(mine);
    const child = spawn('python3', ['-c', `
import os, socket
s = socket.socket(fileno=3)
fds = [os.open('/dev/null', os.O_RDONLY) for _ in range(20)]
socket.send_fds(s, [b'many'], fds)
`], { stdio: ['ignore', 'inherit', 'inherit', theirs.fd] });
    theirs.close();
    const exit = once(child, 'exit');
    const msg: FdMessage = await mine.receive();
    expect(await exit).toEqual([0, null]);
    expect(msg.data.toString()).toBe('many');
    expect(msg.truncated).toBe(true);
    expect(msg.fds.length).toBeLessThan(20);
    for (const fd of msg.fds) {
      expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe('/dev/null');
      closeSync(fd);
    }
  });
});

describe('features beyond negotiation', () => {
  itWith(['sigbus', 'missingShmem'], 'sigbus: a MISSING fault is a SIGBUS for the faulter instead of a message to a handler', () => {
    const script = `
      const { Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const mem = Memfd.create(PAGE_SIZE);
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ['sigbus', 'missingShmem'] });
      uffd.register(view, { missing: true });
      process.stdout.write('registered;');
      new Uint8Array(view.buffer)[0];
      process.stdout.write('survived');
    `;
    const r = require('node:child_process').spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(15_000), killSignal: 'SIGKILL' });
    expect(r.error).toBeUndefined();
    expect([r.stdout, r.signal]).toEqual(['registered;', 'SIGBUS']);
  });

  itWith(['exactAddress', 'minorShmem', 'threadId'], 'exactAddress: the fault address keeps its offset in the page; without it, page-aligned', async () => {
    for (const exact of [true, false]) {
      const mem = filledMemfd(closer, 2);
      const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId', ...(exact ? ['exactAddress' as const] : [])] }));
      const w = new MmWorker(mem.fd);
      closer.add({ close: () => void w.close() });
      const view = await w.call<{ address: number; length: number }>('map', {});
      uffd.register(view, { minor: true });
      // touch reads the first byte, then the last byte of the page.
      const touched = w.call('touch', { pages: [1] });
      const events = (await serve(uffd, touched)) as Pagefault[];
      expect(events).toHaveLength(1);
      expect(events[0].address).toBe(view.address + PAGE_SIZE); // offset 0 of the page either way
      expect(events[0].minor).toBe(true);
      // A write at an offset within the page: the address says where, when exact.
      const mem2 = filledMemfd(closer, 1);
      const uffd2 = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId', ...(exact ? ['exactAddress' as const] : [])] }));
      const w2 = new MmWorker(mem2.fd);
      closer.add({ close: () => void w2.close() });
      const v2 = await w2.call<{ address: number; length: number }>('map', {});
      uffd2.register(v2, { minor: true });
      const t2 = w2.call('touchAt', { offset: 123 });
      const ev2 = (await serve(uffd2, t2, (ev) => {
        if (ev.type === 'pagefault') uffd2.continue(ev.address - (ev.address % PAGE_SIZE), PAGE_SIZE);
      })) as Pagefault[];
      expect(ev2.map((e) => e.address)).toEqual([exact ? v2.address + 123 : v2.address]);
      expect((await t2).byte).toBe(pageByte(0));
    }
  });

  itWith(['wpAsync', 'wpHugetlbfsShmem', 'threadId'], 'wpAsync: a write to a write-protected page is resolved by the kernel, no message', async () => {
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['wpAsync', 'wpHugetlbfsShmem', 'threadId'] }));
    const w = new MmWorker(mem.fd);
    closer.add({ close: () => void w.close() });
    const view = await w.call<{ address: number; length: number }>('map', {});
    // Mapped first (the write-protect bit lives in the page table entry).
    await w.call('touch', { pages: [0, 1] });
    uffd.register(view, { wp: true });
    uffd.writeProtect(view.address, view.length, { protect: true });
    const wrote = await w.call<{ seen: number[] }>('touch', { pages: [0], write: 0x99 });
    expect(wrote.seen).toEqual([0x99, pageByte(0)]);
    expect(uffd.readEvents()).toEqual([]);
    expect(mem.read(0, 1)[0]).toBe(0x99);
  });

  itWith(['wpHugetlbfsShmem', 'threadId'], 'without wpAsync the same write is a WP fault, resolved by clearing the protection', async () => {
    const mem = filledMemfd(closer, 1);
    const uffd = closer.add(Userfaultfd.open({ features: ['wpHugetlbfsShmem', 'threadId'] }));
    const w = new MmWorker(mem.fd);
    closer.add({ close: () => void w.close() });
    const view = await w.call<{ address: number; length: number }>('map', {});
    await w.call('touch', { pages: [0] });
    uffd.register(view, { wp: true });
    uffd.writeProtect(view.address, view.length, { protect: true });
    const wrote = w.call<{ seen: number[] }>('touch', { pages: [0], write: 0x55 });
    const events = (await serve(uffd, wrote, (ev) => {
      if (ev.type === 'pagefault') uffd.writeProtect(ev.address, PAGE_SIZE, { protect: false });
    })) as Pagefault[];
    expect(events.map((e) => [e.type, e.address, e.write, e.wp])).toEqual([['pagefault', view.address, true, true]]);
    expect((await wrote).seen).toEqual([0x55, pageByte(0)]);
  });
});

describe('explicit resource management', () => {
  itWith(['minorShmem', 'threadId'], 'using and await using close sockets, servers and sources, and stop handlers, at the end of the block', async () => {
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId'] }));
    const dir = mkdtempSync(join(tmpdir(), 'uffd-dispose-'));
    closer.add({ close: () => rmSync(dir, { recursive: true, force: true }) });
    const path = join(dir, 'dispose.sock');
    let sockets: FdSocket[] = [];
    let server: FdServer | undefined;
    let source: MigrationSource | undefined;
    let handler: FaultHandler | undefined;
    let port = 0;
    {
      const [first, second] = FdSocket.pair();
      using a = first;
      using b2 = second;
      using srv = FdServer.listen(path);
      using src = await MigrationSource.listen(Buffer.alloc(PAGE_SIZE), { host: '127.0.0.1' });
      const view = mem.map(); // unmapped by mem's close
      await using h = new FaultHandler(uffd, { memfd: mem, fetch: () => {} }).attach(view).start();
      h.present.mark(0, 2 * PAGE_SIZE);
      expect((await touchPages(view, [1])).checksum).toBe(pageByte(1));
      expect(h.state).toBe('running');
      [sockets, server, source, handler, port] = [[a, b2], srv, src, h, src.address.port];
    }
    expect(sockets.map((s) => s.closed)).toEqual([true, true]);
    await expect(server!.accept()).rejects.toMatchObject({ code: 'ERR_UFFD_CLOSED' });
    expect(handler!.state).toBe('stopped');
    // The source no longer listens: a connection is refused.
    const refused = net.connect(port, '127.0.0.1');
    const [err] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
    expect(err.code).toBe('ECONNREFUSED');
    expect(source).toBeDefined();
  });
});

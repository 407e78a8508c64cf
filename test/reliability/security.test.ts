// Security properties: no descriptor the library creates or receives leaks
// into a child process (close-on-exec everywhere), the default uffd handles
// user-mode faults only (a kernel access to a registered, unresolved page
// fails with EFAULT instead of waiting for a handler), and native code only
// touches memory inside mappings the library made.
import { spawn, spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { FaultHandler, FdServer, FdSocket, Memfd, PAGE_SIZE, UffdError, Userfaultfd, touchPages } from '../../lib/index';
import type { UffdEvent } from '../../lib/index';
import { native } from '../../lib/native';
import { distEntry, itWith, scaled } from '../helpers';
import { openFds } from './support';

const FD_CLOEXEC = 1;

/** Targets of the descriptors a freshly spawned child holds. */
function childFds(): string[] {
  const child = spawnSync(process.execPath, ['-e', `
    const fs = require('fs');
    const out = [];
    for (const n of fs.readdirSync('/proc/self/fd')) { try { out.push(fs.readlinkSync('/proc/self/fd/' + n)); } catch {} }
    process.stdout.write(JSON.stringify(out));
  `], { encoding: 'utf8', timeout: scaled(10_000) });
  expect(child.status, child.stderr).toBe(0);
  return JSON.parse(child.stdout);
}

describe('security', () => {
  itWith(['minorShmem', 'threadId'], 'every descriptor the library creates or receives is close-on-exec and absent from a spawned child', async () => {
    const before = openFds();
    const path = join(tmpdir(), `uffd-sec-${process.pid}.sock`);
    rmSync(path, { force: true });
    const mem = Memfd.create(4 * PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    const handler = new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => {} }).attach(view).start();
    const [a, b] = FdSocket.pair();
    const server = FdServer.listen(path);
    const client = FdSocket.connect(path);
    const accepted = await server.accept();
    // A received descriptor: the memfd and the uffd sent over the socket.
    a.send('fds', [mem.fd, uffd.fd]);
    const received = await b.receive();
    expect(received.fds).toHaveLength(2);
    const ours = [...openFds()].filter(([fd, target]) => before.get(fd) !== target);
    // uffd, memfd, socket pair, listener, client, accepted, two received, the resolver's eventfd
    expect(ours.length).toBeGreaterThanOrEqual(10);
    for (const [fd] of ours) {
      const flags = native.fdFlags(Number(fd));
      expect(flags, `fd ${fd}`).toBeGreaterThanOrEqual(0);
      expect(Math.floor(flags / 2 ** 32) & FD_CLOEXEC, `fd ${fd} (${ours.find(([f]) => f === fd)![1]}) is close-on-exec`).toBe(FD_CLOEXEC);
    }
    const inChild = childFds();
    // Sockets and memfds have unique targets; anon inodes (eventfd, userfaultfd) do not, so they are told apart by name only.
    for (const [, target] of ours) if (!target.startsWith('anon_inode:')) expect(inChild, `child holds ${target}`).not.toContain(target);
    expect(inChild.some((t) => t.includes('userfaultfd') || t.includes('/memfd:'))).toBe(false);
    await handler.stop();
    for (const fd of received.fds) native.closeFd(fd);
    for (const s of [a, b, client, accepted, server]) s.close();
    uffd.close();
    mem.close();
    rmSync(path, { force: true });
  });

  // read(2) into a registered page is an access by the kernel. With the
  // default user-mode-only uffd it must fail at once with EFAULT; if it were
  // delivered as a fault, the JavaScript thread (the only reader) would wait
  // forever, so it runs in a child with a hard kill.
  itWith(['minorShmem'], 'the default uffd is user-mode-only: read(2) into a registered, unresolved page gets EFAULT', () => {
    const file = join(tmpdir(), `uffd-sec-${process.pid}.txt`);
    writeFileSync(file, 'kernel-mode access');
    const script = `
      const fs = require('fs');
      const { Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const mem = Memfd.create(PAGE_SIZE, { allocate: true });
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem'] });
      uffd.register(view, { minor: true });
      const fd = fs.openSync(${JSON.stringify(file)}, 'r');
      let result;
      try { result = { read: fs.readSync(fd, new Uint8Array(view.buffer), 0, 18, 0) }; }
      catch (e) { result = { code: e.code }; }
      // The page is still unmapped in the view: no message was queued for it.
      result.events = uffd.readEvents().length;
      process.stdout.write(JSON.stringify(result));
    `;
    try {
      const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(10_000), killSignal: 'SIGKILL' });
      expect(child.signal, child.stderr).toBeNull();
      expect(JSON.parse(child.stdout)).toEqual({ code: 'EFAULT', events: 0 });
    } finally {
      rmSync(file, { force: true });
    }
  }, 20_000);

  itWith(['minorShmem', 'threadId'], 'with userModeOnly: false the same kernel access is a fault, served by a native handler', () => {
    const file = join(tmpdir(), `uffd-sec2-${process.pid}.txt`);
    writeFileSync(file, 'kernel-mode access');
    const script = `
      const fs = require('fs');
      const { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const mem = Memfd.create(PAGE_SIZE, { allocate: true });
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'], userModeOnly: false });
      const handler = new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => {} }).attach(view).start();
      handler.present.mark(0, PAGE_SIZE);
      const fd = fs.openSync(${JSON.stringify(file)}, 'r');
      const n = fs.readSync(fd, new Uint8Array(view.buffer), 0, 18, 0);
      // The resolver counts a fault after its CONTINUE has already woken this
      // thread: read the counters once the handler has stopped.
      handler.stop().then(() => {
        const stats = handler.stats();
        process.stdout.write(JSON.stringify({ n, text: mem.read(0, n).toString(), faults: stats.faults }));
        uffd.close();
        mem.close();
      });
    `;
    try {
      const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(10_000), killSignal: 'SIGKILL' });
      expect(child.signal, child.stderr).toBeNull();
      const out = JSON.parse(child.stdout);
      expect(out, child.stderr).toEqual({ n: 18, text: 'kernel-mode access', faults: 1 });
    } finally {
      rmSync(file, { force: true });
    }
  }, 20_000);

  it('native entry points refuse memory the library did not map', () => {
    const heap = new ArrayBuffer(PAGE_SIZE);
    // The toucher: a plain ArrayBuffer is not a mapping.
    expect(native.touchStart(heap, PAGE_SIZE, new Uint32Array([0]), -1, -1, () => {})).toBe(-14);
    // madvise: an address outside every mapping, and a range running past one.
    const mem = Memfd.create(2 * PAGE_SIZE);
    const view = mem.map({ length: PAGE_SIZE });
    expect(native.madvise(PAGE_SIZE, PAGE_SIZE, 4)).toBe(-14);
    expect(native.madvise(view.address, 2 * PAGE_SIZE, 4)).toBe(-14);
    expect(native.madvise(view.address + PAGE_SIZE, PAGE_SIZE, 4)).toBe(-14);
    expect(native.madvise(view.address, PAGE_SIZE, 0)).toBe(0);
    // munmap: only a mapping's own start address, once.
    expect(native.munmap(view.address + PAGE_SIZE, heap)).toBe(-22);
    view.unmap();
    expect(native.munmap(view.address, view.buffer)).toBe(-22);
    expect(native.madvise(view.address, PAGE_SIZE, 0)).toBe(-14);
    // The toucher on a detached (unmapped) mapping buffer.
    expect(native.touchStart(view.buffer, PAGE_SIZE, new Uint32Array([0]), -1, -1, () => {})).toBe(-14);
    mem.close();
  });

  itWith(['minorShmem', 'threadId'], 'a received uffd of another process cannot reach this process: its ioctls act on the sender\'s memory only', async () => {
    // A uffd is bound to the mm that opened it. The child registers a view of
    // a memfd we share, sends its uffd and waits; this process has a view of
    // its own, registered MINOR with its own uffd.
    const shared = Memfd.create(2 * PAGE_SIZE, { name: 'sec-shared' });
    shared.write(0, Buffer.alloc(PAGE_SIZE, 0x42));
    const script = `
      const { FdSocket, Memfd, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const view = Memfd.fromFd(3).map();
      const uffd = Userfaultfd.open({ features: ['minorShmem'] });
      uffd.register(view, { minor: true });
      const sock = new FdSocket(4);
      sock.send(JSON.stringify({ address: view.address }), [uffd.fd]);
      // Told to, reads page 0 (mapped by the parent's CONTINUE, so no fault) and reports it.
      sock.receive().then(() => { sock.send(String(new Uint8Array(view.buffer)[0])); process.exit(0); });
      setInterval(() => {}, 1000);
    `;
    const [mine, theirs] = FdSocket.pair();
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit', shared.fd, theirs.fd] });
    theirs.close();
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const killer = setTimeout(() => child.kill('SIGKILL'), scaled(20_000));
    const mem = Memfd.create(PAGE_SIZE, { name: 'sec-own' });
    mem.write(0, Buffer.alloc(PAGE_SIZE, 0x17));
    const view = mem.map();
    const own = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    let foreign: Userfaultfd | undefined;
    try {
      own.register(view, { minor: true });
      const msg = await mine.receive();
      const theirAddress = (JSON.parse(msg.data.toString()) as { address: number }).address;
      foreign = Userfaultfd.fromFd(msg.fds[0]);
      // Registering our view: the child's mm has no such VMA (or another one
      // at that address, never ours): EINVAL, typed.
      let err: unknown;
      try {
        foreign.register(view, { minor: true });
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(UffdError);
      expect(err).toMatchObject({ code: 'EINVAL', syscall: 'ioctl', operation: 'UFFDIO_REGISTER' });
      // CONTINUE at our address finds no range of the child registered there.
      if (theirAddress !== view.address) {
        expect(() => foreign!.continue(view.address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ENOENT', operation: 'UFFDIO_CONTINUE' }));
      }
      // Our page was not mapped by any of that: touching it still faults on our own uffd, MINOR.
      const touched = touchPages(view, [0]);
      const faults = await new Promise<UffdEvent[]>((resolve) => {
        const poll = setInterval(() => {
          const evs = own.readEvents();
          if (evs.length) {
            clearInterval(poll);
            resolve(evs);
          }
        }, 1);
      });
      expect(faults).toMatchObject([{ type: 'pagefault', address: view.address, minor: true }]);
      expect(own.continue(view.address, PAGE_SIZE)).toBe(PAGE_SIZE);
      expect((await touched).checksum).toBe(0x17);
      // The same uffd does act on the sender's memory: page 0 of the child's view.
      expect(foreign.continue(theirAddress, PAGE_SIZE)).toBe(PAGE_SIZE);
      mine.send('read');
      expect((await mine.receive()).data.toString()).toBe(String(0x42));
    } finally {
      clearTimeout(killer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      foreign?.close();
      own.close();
      mine.close();
      view.unmap();
      mem.close();
      shared.close();
    }
  }, 20_000);
});


// Faults (docs/kernel-behaviour.md, "Faults"): MINOR faults from a worker thread
// and from a child process, flags, thread ids, EEXIST, the hole trap and
// MISSING|MINOR registration.
import { spawn } from 'node:child_process';
import { afterEach, describe, expect } from 'vitest';

import { FdSocket, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { distEntry, fixture, itWith } from '../helpers';
import { Closer, MmWorker, Pagefault, collect, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

function openUffd(): Userfaultfd {
  return closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId'] }));
}

describe('MINOR faults', () => {
  itWith(['minorShmem', 'threadId'], 'from a child process that sends its own uffd over a socketpair', async () => {
    const mem = filledMemfd(closer, 8);
    const [mine, theirs] = FdSocket.pair();
    closer.add(mine);
    const pages = [6, 0, 3];
    const child = spawn(process.execPath, [fixture('child-faulter.js'), distEntry, JSON.stringify(pages)], {
      stdio: ['ignore', 'pipe', 'inherit', theirs.fd, mem.fd],
    });
    theirs.close();
    let stdout = '';
    child.stdout!.on('data', (d) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    try {
      const hello = await mine.receive();
      expect(hello.fds).toHaveLength(1);
      const info = JSON.parse(hello.data.toString());
      const uffd = closer.add(Userfaultfd.fromFd(hello.fds[0]));
      expect(uffd.features).toEqual(['threadId', 'minorShmem']);
      const events = (await serve(uffd, exited)) as Pagefault[];
      expect(await exited).toBe(0);
      expect(JSON.parse(stdout).seen).toEqual(pages.flatMap((p) => [pageByte(p), pageByte(p)]));
      expect(events.map((e) => (e.address - info.address) / PAGE_SIZE)).toEqual(pages);
      // The child's main thread faulted: its thread id is its pid.
      for (const e of events) expect(e).toMatchObject({ minor: true, write: false, flags: 4, threadId: info.pid });
      // The registered process is gone: resolving ioctls now answer ESRCH.
      expect(() => uffd.continue(info.address + PAGE_SIZE, PAGE_SIZE)).toThrow(
        expect.objectContaining({ code: 'ESRCH', operation: 'UFFDIO_CONTINUE' }),
      );
    } finally {
      child.kill('SIGKILL');
    }
  });

  itWith(['minorShmem', 'threadId'], 'a write from a worker thread reports MINOR|WRITE and its thread id; the write lands in the memfd', async () => {
    const mem = filledMemfd(closer, 4);
    const uffd = openUffd();
    const w = new MmWorker(mem.fd);
    closer.add({ close: () => void w.close() });
    const view = await w.call('map');
    uffd.register(view, { minor: true });
    const touched = w.call('touch', { pages: [3, 1], write: 0xee });
    const events = (await serve(uffd, touched)) as Pagefault[];
    const result = await touched;
    expect(result.seen).toEqual([0xee, pageByte(3), 0xee, pageByte(1)]);
    expect(events.map((e) => [(e.address - view.address) / PAGE_SIZE, e.flags, e.write, e.minor, e.wp, e.threadId]))
      .toEqual([[3, 5, true, true, false, view.tid], [1, 5, true, true, false, view.tid]]);
    expect(mem.read(3 * PAGE_SIZE, 2)).toEqual(Buffer.from([0xee, pageByte(3)]));
  });

  itWith(['minorShmem', 'threadId'], 'two threads faulting one page give two messages; the second CONTINUE is EEXIST and both resume', async () => {
    const mem = filledMemfd(closer, 4);
    const uffd = openUffd();
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    const a = touchPages(guest, [2]);
    const b = touchPages(guest, [2]);
    const events = (await collect(uffd, 2)) as Pagefault[];
    expect(events.map((e) => e.address)).toEqual([guest.address + 2 * PAGE_SIZE, guest.address + 2 * PAGE_SIZE]);
    expect(new Set(events.map((e) => e.threadId)).size).toBe(2);
    expect(uffd.continue(events[0].address, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(() => uffd.continue(events[1].address, PAGE_SIZE, { onExists: 'throw' })).toThrow(expect.objectContaining({ code: 'EEXIST', errno: -17 }));
    expect(uffd.continue(events[1].address, PAGE_SIZE)).toBe(0);
    const [ra, rb] = await Promise.all([a, b]);
    expect([ra.checksum, rb.checksum]).toEqual([pageByte(2), pageByte(2)]);
    expect(new Set([ra.threadId, rb.threadId])).toEqual(new Set(events.map((e) => e.threadId)));
  });

  itWith(['minorShmem'], 'pages of a fallocated, never written range fault MINOR and CONTINUE maps zeros', async () => {
    const mem = closer.add(Memfd.create(4 * PAGE_SIZE, { name: 'allocated', allocate: true }));
    const uffd = openUffd();
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    const touched = touchPages(guest, [1, 2]);
    const events = (await serve(uffd, touched)) as Pagefault[];
    expect(events.map((e) => [(e.address - guest.address) / PAGE_SIZE, e.minor])).toEqual([[1, true], [2, true]]);
    expect((await touched).checksum).toBe(0);
    expect(new Uint8Array(guest.buffer, PAGE_SIZE, 2 * PAGE_SIZE).every((b) => b === 0)).toBe(true);
  });
});

describe('the event stream', () => {
  itWith(['minorShmem', 'threadId'], 'events() yields faults as the kernel posts them, one reader at a time, and ends on abort', async () => {
    const mem = filledMemfd(closer, 8);
    const uffd = openUffd();
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    const touched = touchPages(guest, [4, 6]);
    const controller = new AbortController();
    const pages: number[] = [];
    const stream = uffd.events({ signal: controller.signal });
    for await (const ev of stream) {
      if (ev.type !== 'pagefault') continue;
      pages.push((ev.address - guest.address) / PAGE_SIZE);
      uffd.continue(ev.address, PAGE_SIZE);
      // While the stream reads, a second reader is refused.
      await expect(uffd.events().next()).rejects.toMatchObject({ code: 'ERR_UFFD_BUSY' });
      if (pages.length === 2) controller.abort();
    }
    expect(pages).toEqual([4, 6]);
    expect((await touched).checksum).toBe(pageByte(4) + pageByte(6));
    // The reader was released when the stream ended.
    expect(uffd.readEvents()).toEqual([]);
    // close() ends a waiting stream; a stream started after close() fails.
    const pending = uffd.events().next();
    uffd.close();
    expect(await pending).toEqual({ done: true, value: undefined });
    await expect(uffd.events().next()).rejects.toMatchObject({ code: 'ERR_UFFD_CLOSED' });
  });
});

describe('holes', () => {
  itWith(['minorShmem'], 'the hole trap: a MINOR-only range over a hole raises no fault and reads zeros', async () => {
    const mem = closer.add(Memfd.create(4 * PAGE_SIZE, { name: 'holes' }));
    mem.write(0, Buffer.alloc(PAGE_SIZE, 7));
    const uffd = openUffd();
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    // Pages 1..3 are holes: the native toucher runs through without any message.
    const report = await touchPages(guest, [1, 2, 3], { write: 9 });
    expect(report.latencyNs).toHaveLength(3);
    expect(uffd.readEvents()).toEqual([]);
    // The kernel allocated zeroed pages in the memfd and the writes went there.
    expect(mem.read(PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.concat([Buffer.from([9]), Buffer.alloc(PAGE_SIZE - 1)]));
    // Page 0 (present in the page cache) still faults MINOR.
    const touched = touchPages(guest, [0]);
    const events = await serve(uffd, touched);
    expect(events).toHaveLength(1);
    expect((await touched).checksum).toBe(7);
  });

  itWith(['minorShmem', 'missingShmem'], 'MISSING|MINOR: a hole faults MISSING, resolved by writing the page through the memfd then CONTINUE', async () => {
    const mem = closer.add(Memfd.create(4 * PAGE_SIZE, { name: 'missing-minor' }));
    mem.write(0, Buffer.alloc(PAGE_SIZE, 0x11));
    mem.write(2 * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0x33));
    const uffd = openUffd();
    const guest = mem.map();
    const reg = uffd.register(guest, { missing: true, minor: true });
    expect(reg.ioctls).toEqual(expect.arrayContaining(['continue', 'copy', 'zeropage', 'wake']));
    const touched = touchPages(guest, [0, 1, 2, 3]);
    const events = (await serve(uffd, touched, (ev) => {
      if (ev.type !== 'pagefault') return;
      const offset = ev.address - guest.address;
      // A MISSING fault: nothing in the page cache yet. Supply the page, then map it.
      if (!ev.minor) mem.write(offset, Buffer.alloc(PAGE_SIZE, 0xa0 + offset / PAGE_SIZE));
      uffd.continue(ev.address, PAGE_SIZE);
    })) as Pagefault[];
    expect(events.map((e) => [(e.address - guest.address) / PAGE_SIZE, e.minor, e.flags])).toEqual([
      [0, true, 4], [1, false, 0], [2, true, 4], [3, false, 0],
    ]);
    expect((await touched).checksum).toBe(0x11 + 0xa1 + 0x33 + 0xa3);
    const bytes = new Uint8Array(guest.buffer);
    expect([bytes[PAGE_SIZE + PAGE_SIZE - 1], bytes[4 * PAGE_SIZE - 1]]).toEqual([0xa1, 0xa3]);
  });
});

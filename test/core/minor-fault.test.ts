import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';

import { Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { distEntry, fixture, itWith, waitFor } from '../helpers';

const open: { close(): void }[] = [];
afterEach(() => {
  while (open.length) open.pop()!.close();
});

function setup(pages: number) {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'minor-test' });
  open.push(mem);
  for (let i = 0; i < pages; i++) mem.write(i * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, (i % 250) + 1));
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  open.push(uffd);
  return { mem, uffd };
}

/** Resolves every MINOR fault with CONTINUE until `until` settles; returns the events seen. */
async function serve(uffd: Userfaultfd, until: Promise<unknown>) {
  const seen: Extract<ReturnType<Userfaultfd['readEvents']>[number], { type: 'pagefault' }>[] = [];
  let finished = false;
  until.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    for (const ev of uffd.readEvents()) {
      if (ev.type !== 'pagefault') continue;
      seen.push(ev);
      uffd.continue(ev.address, PAGE_SIZE);
    }
    await new Promise((r) => setImmediate(r));
  }
  return seen;
}

describe('MINOR faults resolved by CONTINUE', () => {
  itWith(['minorShmem', 'threadId'], 'from a native thread: bytes, read flags and thread id', async () => {
    const { mem, uffd } = setup(8);
    const guest = mem.map();
    const reg = uffd.register(guest, { minor: true });
    expect(reg.ioctls).toContain('continue');
    const touched = touchPages(guest, [0, 3, 7]);
    const events = await serve(uffd, touched);
    const report = await touched;
    expect(report.checksum).toBe(1 + 4 + 8);
    expect(events.map((e) => (e.address - guest.address) / PAGE_SIZE)).toEqual([0, 3, 7]);
    for (const e of events) {
      expect(e).toMatchObject({ minor: true, write: false, wp: false, flags: 4, threadId: report.threadId });
    }
    const bytes = new Uint8Array(guest.buffer);
    expect(bytes[7 * PAGE_SIZE + PAGE_SIZE - 1]).toBe(8);
  });

  itWith(['minorShmem', 'threadId'], 'a write fault reports MINOR|WRITE and the write lands in the memfd', async () => {
    const { mem, uffd } = setup(4);
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    const touched = touchPages(guest, [2], { write: 0xab });
    const events = await serve(uffd, touched);
    await touched;
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ write: true, minor: true, flags: 5 });
    expect(mem.read(2 * PAGE_SIZE, 2)).toEqual(Buffer.from([0xab, 3]));
  });

  itWith(['minorShmem', 'threadId'], 'from a worker thread that maps the same memfd', async () => {
    const { mem, uffd } = setup(16);
    const worker = new Worker(fixture('touch-worker.js'), { workerData: { entry: distEntry, fd: mem.fd } });
    try {
      const mapped = await new Promise<{ address: number; length: number }>((resolve) => worker.once('message', resolve));
      uffd.register(mapped, { minor: true });
      const done = new Promise<{ seen: number[]; tid: string }>((resolve, reject) => {
        worker.on('message', (m) => m.type === 'done' && resolve(m));
        worker.once('error', reject);
      });
      const pages = [5, 1, 15, 9];
      worker.postMessage({ pages });
      const events = await serve(uffd, done);
      const result = await done;
      expect(result.seen).toEqual(pages.flatMap((p) => [p + 1, p + 1]));
      expect(events.map((e) => (e.address - mapped.address) / PAGE_SIZE)).toEqual(pages);
      expect(new Set(events.map((e) => e.threadId))).toEqual(new Set([Number(result.tid)]));
    } finally {
      await worker.terminate();
    }
  });

  itWith(['minorShmem'], 'a second CONTINUE on a mapped page is EEXIST, reported as already resolved', async () => {
    const { mem, uffd } = setup(2);
    const guest = mem.map();
    uffd.register(guest, { minor: true });
    expect(uffd.continue(guest.address, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(uffd.continue(guest.address, PAGE_SIZE)).toBe(0);
    expect(() => uffd.continue(guest.address, PAGE_SIZE, { onExists: 'throw' })).toThrow(
      expect.objectContaining({ code: 'EEXIST', errno: -17, syscall: 'ioctl', operation: 'UFFDIO_CONTINUE', address: guest.address }),
    );
    // Mapped by CONTINUE without any fault: reading it now raises nothing.
    expect(new Uint8Array(guest.buffer)[0]).toBe(1);
    expect(uffd.readEvents()).toEqual([]);
  });

  it('waitFor helper bounds its wait', async () => {
    await expect(waitFor(() => false, 20, 'never')).rejects.toThrow(/timed out/);
  });
});

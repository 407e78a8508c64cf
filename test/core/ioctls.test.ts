// The other resolving ioctls, each for real: COPY, ZEROPAGE, WRITEPROTECT
// (and CONTINUE_MODE_WP), POISON, MOVE.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, describe, expect } from 'vitest';

import { Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { native } from '../../lib/native';
import { caps, itWith, root, scaled } from '../helpers';
import { Closer, Pagefault, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

const MAP_PRIVATE_ANONYMOUS = 0x22;

describe('COPY and ZEROPAGE on a MISSING-registered memfd', () => {
  itWith(['missingShmem'], 'COPY fills a hole with bytes, ZEROPAGE with zeros; both land in the page cache', async () => {
    const mem = closer.add(Memfd.create(4 * PAGE_SIZE, { name: 'copy' }));
    const uffd = closer.add(Userfaultfd.open({ features: ['missingShmem'] }));
    const guest = mem.map();
    const reg = uffd.register(guest, { missing: true });
    expect(reg.ioctls).toEqual(expect.arrayContaining(['wake', 'copy', 'zeropage']));
    expect(reg.ioctls.includes('move')).toBe(caps.features.move);
    expect(reg.ioctls.includes('poison')).toBe(caps.features.poison);
    expect(reg.ioctls).not.toContain('continue');
    const touched = touchPages(guest, [1, 2]);
    const events = (await serve(uffd, touched, (ev) => {
      if (ev.type !== 'pagefault') return;
      const page = (ev.address - guest.address) / PAGE_SIZE;
      if (page === 1) expect(uffd.copy(ev.address, Buffer.alloc(PAGE_SIZE, 0x5c))).toBe(PAGE_SIZE);
      else expect(uffd.zeropage(ev.address, PAGE_SIZE)).toBe(PAGE_SIZE);
    })) as Pagefault[];
    expect(events.map((e) => [e.flags, e.minor])).toEqual([[0, false], [0, false]]);
    expect((await touched).checksum).toBe(0x5c);
    expect(mem.read(PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE, 0x5c));
    expect(mem.read(2 * PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE));
    // Already present: COPY and ZEROPAGE are EEXIST.
    expect(() => uffd.copy(guest.address + PAGE_SIZE, Buffer.alloc(PAGE_SIZE))).toThrow(expect.objectContaining({ code: 'EEXIST', operation: 'UFFDIO_COPY' }));
    expect(() => uffd.zeropage(guest.address + 2 * PAGE_SIZE, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'EEXIST', operation: 'UFFDIO_ZEROPAGE' }));
    // copyFrom: COPY from another mapping of this process.
    const source = filledMemfd(closer, 1).map();
    expect(uffd.copyFrom(guest.address + 3 * PAGE_SIZE, source.address, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(mem.read(3 * PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE, pageByte(0)));
  });
});

describe('write protection', () => {
  itWith(['minorShmem', 'wpHugetlbfsShmem', 'pagefaultFlagWp', 'threadId'], 'WRITEPROTECT: a write to a protected page is a WP fault, cleared by un-protecting', async () => {
    const mem = filledMemfd(closer, 4);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'wpHugetlbfsShmem', 'pagefaultFlagWp', 'threadId'] }));
    const guest = mem.map();
    const reg = uffd.register(guest, { minor: true, wp: true });
    expect(reg.ioctls).toContain('writeProtect');
    expect(uffd.continue(guest.address + 2 * PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);
    uffd.writeProtect(guest.address + 2 * PAGE_SIZE, PAGE_SIZE, { protect: true });
    // Reading a protected page is fine (this thread, no fault).
    expect(new Uint8Array(guest.buffer)[2 * PAGE_SIZE]).toBe(pageByte(2));
    const touched = touchPages(guest, [2], { write: 0x77 });
    const events = (await serve(uffd, touched, (ev) => {
      if (ev.type === 'pagefault' && ev.wp) uffd.writeProtect(ev.address, PAGE_SIZE, { protect: false });
    })) as Pagefault[];
    await touched;
    expect(events.map((e) => [e.flags, e.write, e.wp, e.minor])).toEqual([[3, true, true, false]]);
    expect(mem.read(2 * PAGE_SIZE, 2)).toEqual(Buffer.from([0x77, pageByte(2)]));
  });

  // UFFDIO_CONTINUE_MODE_WP came with 6.4 and no feature bit announces it;
  // wpUnpopulated arrived in the same release and stands in for it.
  itWith(['minorShmem', 'wpHugetlbfsShmem', 'pagefaultFlagWp', 'wpUnpopulated'], 'CONTINUE_MODE_WP maps the page write-protected: the write then raises a WP fault', async () => {
    const mem = filledMemfd(closer, 4);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'wpHugetlbfsShmem', 'pagefaultFlagWp'] }));
    const guest = mem.map();
    uffd.register(guest, { minor: true, wp: true });
    const touched = touchPages(guest, [1], { write: 0x42 });
    const events = (await serve(uffd, touched, (ev) => {
      if (ev.type !== 'pagefault') return;
      if (ev.minor) uffd.continue(ev.address, PAGE_SIZE, { writeProtect: true });
      else uffd.writeProtect(ev.address, PAGE_SIZE, { protect: false });
    })) as Pagefault[];
    await touched;
    expect(events.map((e) => [e.flags, e.minor, e.wp])).toEqual([[5, true, false], [3, false, true]]);
    expect(mem.read(PAGE_SIZE, 2)).toEqual(Buffer.from([0x42, pageByte(1)]));
  });
});

describe('POISON', () => {
  itWith(['minorShmem', 'poison'], 'a poisoned page kills its reader with SIGBUS (in a child process)', () => {
    const script = `
      const { Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const mem = Memfd.create(8 * PAGE_SIZE);
      mem.write(0, Buffer.alloc(mem.size, 9));
      const guest = mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'poison'] });
      uffd.register(guest, { minor: true });
      const page = mem.pageSize;
      process.stdout.write('poisoned ' + uffd.poison(guest.address + page, page) + ';');
      try { uffd.poison(guest.address + page, page); } catch (e) { process.stdout.write(e.code + ';'); }
      uffd.continue(guest.address, page);
      process.stdout.write('page0 ' + new Uint8Array(guest.buffer)[0] + ';');
      process.stdout.write('page1 ' + new Uint8Array(guest.buffer)[page] + ';');`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(10_000) });
    expect(r.stdout).toBe(`poisoned ${PAGE_SIZE};EEXIST;page0 9;`);
    expect(r.signal).toBe('SIGBUS');
  });
});

describe('MOVE', () => {
  itWith(['move', 'threadId'], 'moves an anonymous page into a MISSING fault; the source becomes empty', async () => {
    const uffd = closer.add(Userfaultfd.open({ features: ['move', 'threadId'] }));
    const [src, srcBuf] = native.mmap(-1, 0, 2 * PAGE_SIZE, 3, MAP_PRIVATE_ANONYMOUS) as [number, ArrayBuffer];
    const [dst, dstBuf] = native.mmap(-1, 0, 2 * PAGE_SIZE, 3, MAP_PRIVATE_ANONYMOUS) as [number, ArrayBuffer];
    closer.add({ close: () => { native.munmap(src, srcBuf); native.munmap(dst, dstBuf); } });
    new Uint8Array(srcBuf).fill(0x6d, 0, PAGE_SIZE);
    const reg = uffd.register({ address: dst, length: 2 * PAGE_SIZE }, { missing: true });
    expect(reg.ioctls).toContain('move');
    const report = new Promise<{ checksum: number }>((resolve) => native.touchStart(dstBuf, PAGE_SIZE, Uint32Array.of(0), -1, -1, resolve));
    const events = (await serve(uffd, report, (ev) => {
      if (ev.type === 'pagefault') expect(uffd.move(ev.address, src, PAGE_SIZE)).toBe(PAGE_SIZE);
    })) as Pagefault[];
    expect(events.map((e) => [e.address, e.flags])).toEqual([[dst, 0]]);
    expect((await report).checksum).toBe(0x6d);
    expect(new Uint8Array(dstBuf, 0, PAGE_SIZE).every((b) => b === 0x6d)).toBe(true);
    // The source page is gone: moving it again finds nothing (ENOENT); with
    // allowSourceHoles the hole is skipped and counted as done.
    expect(() => uffd.move(dst + PAGE_SIZE, src, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ENOENT', operation: 'UFFDIO_MOVE' }));
    expect(uffd.move(dst + PAGE_SIZE, src, PAGE_SIZE, { allowSourceHoles: true })).toBe(PAGE_SIZE);
    // Reading the source now maps the shared zero page there.
    expect(new Uint8Array(srcBuf, 0, PAGE_SIZE).every((b) => b === 0)).toBe(true);
  });

  itWith(['move', 'minorShmem'], 'memfd mappings are not anonymous: MOVE between them is EINVAL although REGISTER lists it', () => {
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['move', 'minorShmem'] }));
    const guest = mem.map({ length: PAGE_SIZE });
    const source = mem.map({ offset: PAGE_SIZE, length: PAGE_SIZE, private: true });
    new Uint8Array(source.buffer)[0] = 1;
    expect(uffd.register(guest, { minor: true }).ioctls).toContain('move');
    expect(() => uffd.move(guest.address, source.address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  });
});

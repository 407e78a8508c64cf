// Memfd views (docs/kernel-behaviour.md, "MAP_PRIVATE and huge pages"): private
// mappings, detaching on unmap and close, finalizers that must not unmap
// twice, and hugetlb memfds of the default huge page size (2 MiB on x86-64
// and 4 KiB-page arm64, 32 MiB with 16 KiB pages).
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { caps, itWith, root, scaled } from '../helpers';
import { Closer, Pagefault, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

describe('MAP_PRIVATE', () => {
  itWith(['minorShmem'], 'CONTINUE installs the page-cache page read-only; a later write copies it privately without a message', async () => {
    const mem = filledMemfd(closer, 4);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    const guest = mem.map({ private: true });
    expect(guest.private).toBe(true);
    uffd.register(guest, { minor: true });
    const read = touchPages(guest, [1]);
    const readFaults = (await serve(uffd, read)) as Pagefault[];
    expect(readFaults.map((e) => e.flags)).toEqual([4]);
    expect((await read).checksum).toBe(pageByte(1));
    // The write after CONTINUE raises no message: the kernel copies the page.
    const write = touchPages(guest, [1], { write: 0xcd });
    expect(await serve(uffd, write)).toEqual([]);
    await write;
    // A write as first touch: one MINOR|WRITE message, then the silent copy.
    const writeFirst = touchPages(guest, [2], { write: 0xce });
    expect(((await serve(uffd, writeFirst)) as Pagefault[]).map((e) => e.flags)).toEqual([5]);
    await writeFirst;
    const bytes = new Uint8Array(guest.buffer);
    expect([bytes[PAGE_SIZE], bytes[PAGE_SIZE + 1], bytes[2 * PAGE_SIZE], bytes[2 * PAGE_SIZE + 1]]).toEqual([0xcd, pageByte(1), 0xce, pageByte(2)]);
    // The memfd never saw the private writes.
    expect(mem.read(PAGE_SIZE, 1)[0]).toBe(pageByte(1));
    expect(mem.read(2 * PAGE_SIZE, 1)[0]).toBe(pageByte(2));
    // A shared view of the same memfd agrees with the memfd, not with the private copy.
    expect(new Uint8Array(mem.map().buffer)[PAGE_SIZE]).toBe(pageByte(1));
  });
});

describe('detaching', () => {
  it('unmap detaches the buffer and every view over it: byteLength 0, reads undefined, writes ignored', () => {
    const mem = filledMemfd(closer, 2);
    const view = mem.map();
    const bytes = new Uint8Array(view.buffer);
    const words = new Uint32Array(view.buffer, PAGE_SIZE);
    expect(bytes[0]).toBe(pageByte(0));
    view.unmap();
    expect(view.closed).toBe(true);
    expect(view.buffer.byteLength).toBe(0);
    expect(bytes.length).toBe(0);
    expect(words.length).toBe(0);
    expect(bytes[0]).toBeUndefined();
    bytes[0] = 1;
    expect(bytes[0]).toBeUndefined();
    expect(() => new Uint8Array(view.buffer, 0, 1)).toThrow(TypeError);
    view.unmap(); // idempotent
    expect(mem.mappings).toEqual([]);
    expect(() => view.advise('dontneed')).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
  });

  it('Memfd.close unmaps and detaches every view made through it', () => {
    const mem = filledMemfd(closer, 4, 'close-test');
    const views = [mem.map(), mem.map({ offset: PAGE_SIZE, length: PAGE_SIZE }), mem.map({ private: true })];
    const arrays = views.map((v) => new Uint8Array(v.buffer));
    expect(arrays.map((a) => a[0])).toEqual([pageByte(0), pageByte(1), pageByte(0)]);
    mem.close();
    expect(views.map((v) => [v.closed, v.buffer.byteLength])).toEqual([[true, 0], [true, 0], [true, 0]]);
    expect(arrays.map((a) => [a.length, a[0]])).toEqual([[0, undefined], [0, undefined], [0, undefined]]);
    expect(readFileSync('/proc/self/maps', 'utf8')).not.toContain('memfd:close-test');
  });

  it('a finalizer running after an explicit unmap does not unmap again (gc in a child)', () => {
    // If a collected buffer's finalizer unmapped its range a second time, it
    // would tear down whatever the kernel placed there since: the new views
    // would then crash this child with SIGSEGV instead of reading their bytes.
    const script = `
      const { Memfd, PAGE_SIZE } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const size = 16 * PAGE_SIZE;
      const mem = Memfd.create(size);
      mem.write(0, Buffer.alloc(size, 0x5a));
      const count = () => require('fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('memfd:')).length;
      const tick = () => new Promise((r) => setImmediate(r));
      (async () => {
        for (let round = 0; round < 50; round++) {
          // A Memfd dropped without close(): its views are reclaimed by their
          // finalizers, except the half unmapped explicitly.
          (() => {
            const dropped = Memfd.fromFd(mem.fd);
            for (let i = 0; i < 20; i++) { const v = dropped.map(); if (i % 2) v.unmap(); }
          })();
          globalThis.gc();
          await tick();
          // New views, possibly where old ones were: a second munmap would hit them.
          const fresh = [mem.map(), mem.map()];
          globalThis.gc();
          await tick();
          for (const v of fresh) if (new Uint8Array(v.buffer)[size - 1] !== 0x5a) throw new Error('bad bytes');
          for (const v of fresh) v.unmap();
        }
        for (let i = 0; i < 5; i++) { globalThis.gc(); await tick(); }
        process.stdout.write('left ' + count());
      })();`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: scaled(20_000) });
    expect(r.signal).toBeNull();
    expect(r.stdout).toBe('left 0');
    expect(r.status).toBe(0);
  });

  it('a registered Mapping stays mapped while registered, even when the caller drops it (gc in a child)', () => {
    // Were it collected, its finalizer would unmap the range and the
    // registration would silently stop faulting.
    const script = `
      const { Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const uffd = Userfaultfd.open();
      const mapped = () => require('fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('memfd:pinned-view')).length;
      const tick = () => new Promise((r) => setImmediate(r));
      // Neither the view nor its Memfd is kept by this script.
      const { address, length } = uffd.register(Memfd.create(4 * PAGE_SIZE, { name: 'pinned-view' }).map(), { missing: true });
      (async () => {
        for (let i = 0; i < 5; i++) { globalThis.gc(); await tick(); }
        const whileRegistered = mapped();
        uffd.unregister({ address, length });
        for (let i = 0; i < 5; i++) { globalThis.gc(); await tick(); }
        process.stdout.write(whileRegistered + ' ' + mapped());
      })();`;
    const r = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', timeout: scaled(20_000) });
    expect(r.stderr).toBe('');
    // Mapped while registered; after unregister nothing holds it and its finalizer unmaps it.
    expect(r.stdout).toBe('1 0');
  });
});

const HUGE = caps.hugePages.size || 2 * 1024 * 1024;
const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
let hugeAdded = 0;
let hugeReason: string | undefined;

function freeHugePages(): number {
  return Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
}

describe('hugetlb memfd of the default huge page size', () => {
  beforeAll(() => {
    const need = 4;
    try {
      if (freeHugePages() < need) {
        writeFileSync(NR_HUGEPAGES, String(Number(readFileSync(NR_HUGEPAGES, 'utf8')) + need));
        hugeAdded = need;
      }
      if (freeHugePages() < need) hugeReason = `could reserve only ${freeHugePages()} of ${need} huge pages`;
    } catch (err) {
      hugeReason = `cannot reserve huge pages (${(err as Error).message})`;
    }
    if (hugeReason) console.log(`skipping hugetlb tests: ${hugeReason}`);
  });
  afterAll(() => {
    closer.closeAll();
    // Give back only what this file added (others may have reserved some meanwhile).
    if (hugeAdded) writeFileSync(NR_HUGEPAGES, String(Math.max(0, Number(readFileSync(NR_HUGEPAGES, 'utf8')) - hugeAdded)));
  });

  itWith(['minorHugetlbfs'], 'write through the internal mapping, MINOR fault per huge page, CONTINUE in whole huge pages', async (ctx) => {
    if (hugeReason) return ctx.skip();
    const mem = closer.add(Memfd.create(2 * HUGE, { name: 'huge', hugetlb: true }));
    expect([mem.hugetlb, mem.pageSize, mem.size]).toEqual([true, HUGE, 2 * HUGE]);
    // hugetlbfs has no pwrite: write() goes through an internal shared view.
    const pattern = Buffer.alloc(HUGE, 0);
    for (let i = 0; i < HUGE; i += PAGE_SIZE) pattern[i] = (i / PAGE_SIZE) % 251;
    expect(mem.write(HUGE, pattern)).toBe(HUGE);
    expect(mem.read(HUGE, HUGE).equals(pattern)).toBe(true);
    mem.write(0, Buffer.alloc(HUGE, 0x21));
    const uffd = closer.add(Userfaultfd.open({ features: ['minorHugetlbfs', 'threadId'] }));
    const guest = mem.map();
    expect(guest.address % HUGE).toBe(0);
    // A hugetlb range must be registered in whole huge pages.
    expect(() => uffd.register({ address: guest.address, length: PAGE_SIZE }, { minor: true })).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    const reg = uffd.register(guest, { minor: true });
    // No ZEROPAGE on hugetlb: WAKE, COPY, CONTINUE (0x8c), plus POISON where offered (0x18c).
    expect(reg.ioctlMask).toBe(0x8cn | (caps.features.poison ? 0x100n : 0n));
    expect(reg.ioctls).toEqual(['wake', 'copy', 'continue', ...(caps.features.poison ? ['poison'] : [])]);
    const touched = touchPages(guest, [1, 0]);
    const events = (await serve(uffd, touched, (ev) => {
      if (ev.type !== 'pagefault') return;
      // A base-page CONTINUE is refused on a huge page; a whole one maps it.
      expect(() => uffd.continue(ev.address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
      expect(uffd.continue(ev.address, HUGE)).toBe(HUGE);
      expect(uffd.continue(ev.address, HUGE)).toBe(0);
      expect(() => uffd.continue(ev.address, HUGE, { onExists: 'throw' })).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    })) as Pagefault[];
    expect(events.map((e) => [(e.address - guest.address) / HUGE, e.minor])).toEqual([[1, true], [0, true]]);
    expect((await touched).checksum).toBe(0 + 0x21);
    const bytes = new Uint8Array(guest.buffer);
    expect(Buffer.from(bytes.subarray(HUGE, 2 * HUGE)).equals(pattern)).toBe(true);
    expect(() => mem.write(2 * HUGE - 1, Buffer.alloc(2))).toThrow(expect.objectContaining({ code: 'EINVAL' }));
  }, 30_000);
});

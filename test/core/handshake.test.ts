// Opening and the handshake (kernel-semantics.md, "Opening and the handshake"
// and "Feature bits"): both ways in, the flags every uffd gets, the features
// this kernel offers, and what happens when one is missing.
import { execFileSync } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { FEATURES, FeatureName, Memfd, PAGE_SIZE, Userfaultfd, probe } from '../../lib/index';
import { native } from '../../lib/native';
import { caps, itWith, root } from '../helpers';
import { Closer, MmWorker, Pagefault, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;

function fdFlags(fd: number): { cloexec: boolean; nonblock: boolean } {
  const v = native.fdFlags(fd);
  expect(v).toBeGreaterThanOrEqual(0);
  const fdflags = Math.floor(v / 2 ** 32);
  const flflags = v % 2 ** 32;
  return { cloexec: (fdflags & FD_CLOEXEC) !== 0, nonblock: (flflags & O_NONBLOCK) !== 0 };
}

/** The `API:` line of /proc/self/fdinfo: [api, features, ioctls]. */
function fdinfoApi(fd: number): number[] | undefined {
  const m = /^API:\s*([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return m ? m.slice(1).map((x) => parseInt(x, 16)) : undefined;
}

describe('opening', () => {
  for (const via of ['syscall', 'device', 'auto'] as const) {
    it(`via ${via}: O_CLOEXEC|O_NONBLOCK, handshaken with the requested features`, () => {
      const uffd = closer.add(Userfaultfd.open({ via, features: ['minorShmem', 'threadId'] }));
      expect(fdFlags(uffd.fd)).toEqual({ cloexec: true, nonblock: true });
      expect(uffd.features).toEqual(['threadId', 'minorShmem']);
      expect(uffd.featureMask).toBe(FEATURES.threadId | FEATURES.minorShmem);
      // fdinfo shows the fd's own features plus the kernel's "initialized" bit 31.
      expect(fdinfoApi(uffd.fd)?.[1]).toBe(uffd.featureMask + 0x80000000);
    });
  }

  it('opt-out of user-mode-only gives the same flags', () => {
    const uffd = closer.add(Userfaultfd.open({ userModeOnly: false }));
    expect(fdFlags(uffd.fd)).toEqual({ cloexec: true, nonblock: true });
  });

  it('the raw syscall accepts only O_CLOEXEC, O_NONBLOCK and USER_MODE_ONLY; the handshake runs once', () => {
    const fd = native.uffdOpen(1, 1);
    expect(fd).toBeGreaterThanOrEqual(0);
    try {
      // Before the handshake every ioctl and read() is EINVAL.
      expect(native.uffdWake(fd, 0x10000, PAGE_SIZE)).toBe(-22);
      expect(native.uffdRead(fd, new ArrayBuffer(32))).toBe(-22);
      expect(fdinfoApi(fd)?.[1]).toBe(0);
      // Not handshaken yet: fromFd refuses it.
      expect(() => Userfaultfd.fromFd(fd)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_NOT_USERFAULTFD' }));
      // An unknown feature bit fails the handshake...
      expect(native.uffdApi(fd, 2 ** 40)).toBe(-22);
      // ...and the fd can still handshake after that refusal.
      const answer = native.uffdApi(fd, 0);
      expect(Array.isArray(answer)).toBe(true);
      const [offered, ioctls] = answer as [number, bigint];
      // The answer lists what the kernel offers, whatever was requested.
      expect(offered).toBe(caps.featureMask);
      expect(fdinfoApi(fd)?.[1]).toBe(0x80000000);
      // API, REGISTER, UNREGISTER are the fd-level ioctls.
      expect(ioctls & ((1n << 63n) | 1n | 2n)).toBe((1n << 63n) | 1n | 2n);
      // A second UFFDIO_API on the same fd: EINVAL.
      expect(native.uffdApi(fd, 0)).toBe(-22);
      // With none pending, a non-blocking read is EAGAIN (reported as 0 messages).
      expect(native.uffdRead(fd, new ArrayBuffer(32))).toBe(0);
    } finally {
      native.closeFd(fd);
    }
  });

  it('every feature this library names is offered here and negotiates on its own', () => {
    for (const name of Object.keys(FEATURES) as FeatureName[]) {
      if (!caps.features[name]) continue;
      using uffd = Userfaultfd.open({ features: [name] });
      expect(uffd.features).toEqual([name]);
    }
    // This machine is the reference host: all of them are offered.
    expect(Object.values(caps.features).every(Boolean)).toBe(true);
  });

  it('an unknown feature name is refused before any syscall', () => {
    expect(() => Userfaultfd.open({ features: ['teleport' as FeatureName] })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', name: 'TypeError' }),
    );
    expect(() => Userfaultfd.open({ via: 'magic' as 'auto' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => Userfaultfd.open({ userModeOnly: 1 as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it('a feature the kernel does not offer is named in the error (answer of a 6.1 kernel, in a child)', () => {
    // This kernel offers every feature, so the refusal path is driven by
    // replaying the features word Debian's 6.1 kernel answers (0x1fff, see
    // kernel-semantics.md); the uffd itself is real.
    const script = `
      const { native } = require(${JSON.stringify(join(root, 'dist/lib/native.js'))});
      const real = native.uffdApi;
      native.uffdApi = (fd, features) => {
        const r = real(fd, features);
        return features === 0 && Array.isArray(r) ? [r[0] & 0x1fff, r[1]] : r;
      };
      const { Userfaultfd } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const before = require('fs').readdirSync('/proc/self/fd').length;
      try { Userfaultfd.open({ features: ['minorShmem', 'move', 'poison'] }); console.log('opened'); }
      catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, unsupported: e.unsupported,
        leaked: require('fs').readdirSync('/proc/self/fd').length - before })); }`;
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 10_000 }));
    expect(out.code).toBe('ERR_UFFD_FEATURE_UNSUPPORTED');
    expect(out.unsupported).toEqual(['move', 'poison']);
    expect(out.message).toMatch(/does not offer move \(since 6\.8\), poison \(since 6\.6\)/);
    expect(out.message).not.toMatch(/minorShmem/);
    expect(out.leaked).toBe(0);
  });

  it('probe() agrees with a real handshake and explains what it cannot do', () => {
    const p = probe();
    expect(p.available).toBe(true);
    expect(p.pageSize).toBe(PAGE_SIZE);
    expect(p.pageSize).toBe(native.pageSize());
    expect(p.kernel).toBe(require('node:os').release());
    expect(p.open.syscall.ok && p.open.device.ok && p.open.device.present && p.open.allModes.ok).toBe(true);
    using uffd = Userfaultfd.open();
    const fd = native.uffdOpen(1, 0);
    const [offered] = native.uffdApi(fd, 0) as [number, bigint];
    native.closeFd(fd);
    expect(p.featureMask).toBe(offered);
    expect(uffd.featureMask).toBe(0);
    // MINOR on shmem: WAKE, COPY, ZEROPAGE, MOVE, CONTINUE, POISON (0x1bc on 6.18).
    expect(p.minorShmemIoctls).toEqual(['wake', 'copy', 'zeropage', 'move', 'continue', 'poison']);
    expect(p.unprivilegedUserfaultfd).toBe(Number(readFileSync('/proc/sys/vm/unprivileged_userfaultfd', 'utf8')));
    const hugeTotal = Number(/HugePages_Total:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))![1]);
    expect(p.hugePages.total).toBe(hugeTotal);
    expect(p.reasons.some((r) => /vm\.nr_hugepages/.test(r))).toBe(hugeTotal === 0);
  });
});

describe('user-mode-only', () => {
  let dir: string;
  afterEach(() => dir && rmSync(dir, { recursive: true, force: true }));

  itWith(['minorShmem'], 'by default a kernel access to a registered page fails with EFAULT instead of faulting', async () => {
    dir = mkdtempSync(join(tmpdir(), 'uffd-'));
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    const worker = closer.add({ close: () => void w.close() });
    const w = new MmWorker(mem.fd);
    const view = await w.call('map');
    uffd.register(view, { minor: true });
    await expect(w.call('writeFromView', { path: join(dir, 'out'), page: 1 })).rejects.toMatchObject({ code: 'EFAULT' });
    expect(uffd.readEvents()).toEqual([]);
    // A user-space touch of the same page still faults, and is served.
    const touched = w.call('touch', { pages: [1] });
    const events = await serve(uffd, touched);
    expect((await touched).seen).toEqual([pageByte(1), pageByte(1)]);
    expect(events).toHaveLength(1);
    worker.close();
  });

  itWith(['minorShmem', 'threadId'], 'opted out, the kernel access waits for the handler and then succeeds', async () => {
    dir = mkdtempSync(join(tmpdir(), 'uffd-'));
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId'], userModeOnly: false }));
    const w = new MmWorker(mem.fd);
    closer.add({ close: () => void w.close() });
    const view = await w.call('map');
    uffd.register(view, { minor: true });
    const wrote = w.call('writeFromView', { path: join(dir, 'out'), page: 1 });
    const events = (await serve(uffd, wrote)) as Pagefault[];
    expect(await wrote).toEqual({ written: PAGE_SIZE });
    expect(events).toHaveLength(1);
    // The kernel reads the page for write(2): a MINOR read fault on the worker's thread.
    expect(events[0]).toMatchObject({ type: 'pagefault', address: view.address + PAGE_SIZE, minor: true, write: false, threadId: view.tid });
    expect(readFileSync(join(dir, 'out'))).toEqual(Buffer.alloc(PAGE_SIZE, pageByte(1)));
  });
});

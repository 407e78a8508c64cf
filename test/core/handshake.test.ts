// Opening and the handshake (docs/kernel-behaviour.md, "Opening and the handshake"
// and "Feature bits"): both ways in, the flags every uffd gets, the features
// this kernel offers, and what happens when one is missing.
import { existsSync, readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { FEATURES, FeatureName, PAGE_SIZE, Userfaultfd, probe } from '../../lib/index';
import { native } from '../../lib/native';
import { caps, itWith } from '../helpers';
import { Closer, MmWorker, Pagefault, filledMemfd, pageByte, serve } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

const FD_CLOEXEC = 1;
const O_NONBLOCK = 0o4000;

function readdirFdCount(): number {
  return require('node:fs').readdirSync('/proc/self/fd').length;
}

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
  // The features asked for: those of the pair the kernel offers (5.10 has no minorShmem).
  const wanted = (['threadId', 'minorShmem'] as FeatureName[]).filter((f) => caps.features[f]);
  for (const via of ['syscall', 'device', 'auto'] as const) {
    it(`via ${via}: O_CLOEXEC|O_NONBLOCK, handshaken with the requested features`, () => {
      if (via === 'device' && !existsSync('/dev/userfaultfd')) {
        // Before 6.1 there is no device node: the error names the path.
        expect(() => Userfaultfd.open({ via })).toThrow(expect.objectContaining({ code: 'ENOENT', path: '/dev/userfaultfd' }));
        return;
      }
      const uffd = closer.add(Userfaultfd.open({ via, features: wanted }));
      expect(fdFlags(uffd.fd)).toEqual({ cloexec: true, nonblock: true });
      expect(uffd.features).toEqual(wanted);
      expect(uffd.featureMask).toBe(wanted.reduce((bits, f) => bits | FEATURES[f], 0));
      // fdinfo shows the fd's own features (plus, since 5.17, the kernel's "initialized" bit 31).
      expect(fdinfoApi(uffd.fd)![1] & 0x7fffffff).toBe(uffd.featureMask);
    });
  }

  it('opt-out of user-mode-only gives the same flags', () => {
    const uffd = closer.add(Userfaultfd.open({ userModeOnly: false }));
    expect(fdFlags(uffd.fd)).toEqual({ cloexec: true, nonblock: true });
  });

  it('the raw syscall accepts only O_CLOEXEC, O_NONBLOCK and USER_MODE_ONLY; the handshake runs once', () => {
    // USER_MODE_ONLY exists since 5.11; older kernels refuse it (probe() says so).
    const fd = native.uffdOpen(caps.open.syscall.ok ? 1 : 0, 1);
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
      expect(fdinfoApi(fd)![1] & 0x7fffffff).toBe(0);
      // A handshaken uffd is accepted by fromFd (with or without the kernel's bit 31).
      const adopted = Userfaultfd.fromFd(native.dupFd(fd));
      expect(adopted.featureMask).toBe(0);
      adopted.close();
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

  it('every feature this library names negotiates on its own where offered and is refused by name where not', () => {
    for (const name of Object.keys(FEATURES) as FeatureName[]) {
      if (caps.features[name]) {
        using uffd = Userfaultfd.open({ features: [name] });
        expect(uffd.features).toEqual([name]);
      } else {
        expect(() => Userfaultfd.open({ features: [name] })).toThrow(
          expect.objectContaining({ code: 'ERR_UFFD_FEATURE_UNSUPPORTED', unsupported: [name] }),
        );
      }
    }
  });

  it('an unknown feature name is refused before any syscall', () => {
    expect(() => Userfaultfd.open({ features: ['teleport' as FeatureName] })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', name: 'TypeError' }),
    );
    expect(() => Userfaultfd.open({ via: 'magic' as 'auto' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => Userfaultfd.open({ userModeOnly: 1 as unknown as boolean })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });

  it('asking for every feature opens where all are offered, else names exactly the missing ones, leaking nothing', () => {
    const all = Object.keys(FEATURES) as FeatureName[];
    const missing = all.filter((name) => !caps.features[name]);
    const before = readdirFdCount();
    if (missing.length === 0) {
      using uffd = Userfaultfd.open({ features: all });
      expect(uffd.features).toEqual(all);
    } else {
      // Older kernels (the VM matrix): the refusal is the kernel's own.
      expect(() => Userfaultfd.open({ features: all })).toThrow(
        expect.objectContaining({ code: 'ERR_UFFD_FEATURE_UNSUPPORTED', unsupported: missing, message: expect.stringContaining(`does not offer ${missing[0]} (since `) }),
      );
    }
    expect(readdirFdCount()).toBe(before);
  });

  it('probe() agrees with a real handshake and explains what it cannot do', () => {
    const p = probe();
    expect(p.available).toBe(true);
    expect(p.pageSize).toBe(PAGE_SIZE);
    expect(p.pageSize).toBe(native.pageSize());
    expect(p.kernel).toBe(require('node:os').release());
    expect(p.open.device.present).toBe(existsSync('/dev/userfaultfd'));
    // This suite runs as root: kernel-mode opening works everywhere; user-mode-only
    // from 5.11 on (older kernels say why in reasons), the device from 6.1 on.
    expect(p.open.allModes.ok).toBe(true);
    expect(p.open.syscall.ok).toBe(!p.reasons.some((r) => /UFFD_USER_MODE_ONLY is not known/.test(r)));
    if (p.open.device.present) expect(p.open.device.ok).toBe(true);
    using uffd = Userfaultfd.open();
    const fd = native.uffdOpen(p.open.syscall.ok ? 1 : 0, 0);
    const [offered] = native.uffdApi(fd, 0) as [number, bigint];
    native.closeFd(fd);
    expect(p.featureMask).toBe(offered);
    expect(uffd.featureMask).toBe(0);
    // MINOR on shmem: WAKE, COPY, ZEROPAGE, CONTINUE, plus MOVE and POISON
    // where offered (0x1bc on 6.18, 0x9c on 6.1); none before 5.14.
    if (p.features.minorShmem) {
      expect(p.minorShmemIoctls).toEqual(expect.arrayContaining(['wake', 'copy', 'zeropage', 'continue']));
      expect(p.minorShmemIoctls!.includes('move')).toBe(p.features.move);
      expect(p.minorShmemIoctls!.includes('poison')).toBe(p.features.poison);
    } else {
      expect(p.minorShmemIoctls).toBeNull();
      expect(p.reasons.some((r) => /minorShmem is not offered/.test(r))).toBe(true);
    }
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

// The contract between the native fault engine and TypeScript: defined once
// in native/engine.h, exported at load (native.engineLayout), described by
// the EngineLayout type. These checks fail when either side changes alone.
import { readFileSync, readdirSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { EVENT } from '../../lib/constants';
import { NEGATIVE_ERRNO } from '../../lib/errno';
import { EngineLayout, native } from '../../lib/native';
import { PresentPages } from '../../lib/index';
import { root } from '../helpers';

// One entry per key of the TypeScript type: the compiler rejects a missing or extra key.
const kinds: Record<keyof EngineLayout['kinds'], true> = {
  pagefault: true, fork: true, remap: true, remove: true, unmap: true,
  loopThreadMapped: true, readerFailed: true, ioctlFailed: true, pagesRemoved: true,
};
const stats: Record<keyof EngineLayout['stats'], true> = {
  faults: true, resolved: true, alreadyPresent: true, mapAheadPages: true, loopThreadFaults: true,
  deferrals: true, untracked: true, poisoned: true, copied: true, resolverCpuNs: true, watchedTouched: true,
};
const errnos: Record<keyof EngineLayout['errno'], true> = {
  ENOENT: true, ESRCH: true, EAGAIN: true, EFAULT: true, EEXIST: true, EINVAL: true, EBUSY: true, EPERM: true,
  ENOMEM: true, EBADF: true, ENOSYS: true, EACCES: true, ENOTTY: true, EPIPE: true, EIO: true, ENOSPC: true,
};
const top: Record<keyof EngineLayout, true> = {
  recordSize: true, recordCapacity: true, kinds: true, stats: true, statCount: true, buckets: true, fill: true, errno: true,
};

const keys = (o: object): string[] => Object.keys(o).sort();

describe('the engine layout, native side against the TypeScript type', () => {
  const layout = native.engineLayout;

  it('has exactly the keys the type names, at every level', () => {
    expect(keys(layout)).toEqual(keys(top));
    expect(keys(layout.kinds)).toEqual(keys(kinds));
    expect(keys(layout.stats)).toEqual(keys(stats));
    expect(keys(layout.errno)).toEqual(keys(errnos));
    expect(keys(layout.buckets)).toEqual(['linear', 'log']);
    expect(keys(layout.fill)).toEqual(['continue', 'copy']);
  });

  it('kernel event kinds are the kernel ABI values the message decoder uses', () => {
    expect(layout.kinds.pagefault).toBe(EVENT.pagefault);
    expect(layout.kinds.fork).toBe(EVENT.fork);
    expect(layout.kinds.remap).toBe(EVENT.remap);
    expect(layout.kinds.remove).toBe(EVENT.remove);
    expect(layout.kinds.unmap).toBe(EVENT.unmap);
    // Our own kinds never collide with the kernel's.
    const ours = [layout.kinds.loopThreadMapped, layout.kinds.readerFailed, layout.kinds.ioctlFailed, layout.kinds.pagesRemoved];
    expect(new Set([...ours, ...Object.values(EVENT)]).size).toBe(ours.length + Object.values(EVENT).length);
  });

  it('stat indexes are 0..statCount-1, each once; a stats array holds them and the buckets', () => {
    expect(Object.values(layout.stats).sort((a, b) => a - b)).toEqual([...Array(layout.statCount).keys()]);
    expect(layout.buckets.linear).toBeGreaterThan(0);
    expect(layout.buckets.log).toBeGreaterThan(0);
  });

  it('errno values are the system\'s, and NEGATIVE_ERRNO is their negation', () => {
    for (const [name, value] of Object.entries(layout.errno)) {
      expect(value, name).toBe(osConstants.errno[name as keyof typeof osConstants.errno]);
      expect(NEGATIVE_ERRNO[name as keyof typeof NEGATIVE_ERRNO], name).toBe(-value);
    }
  });
});

describe('engine handles and memory', () => {
  const present = new PresentPages(64 * 4096, 4096);

  it('the present bitmap is shared memory: it cannot be transferred (detached) away from the engine', () => {
    expect(present.words.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(() => structuredClone(present.words.buffer, { transfer: [present.words.buffer as unknown as ArrayBuffer] })).toThrow();
    expect(present.words.length).toBeGreaterThan(0);
  });

  it('an engine refuses a bitmap over detachable memory', () => {
    const [a, b] = native.socketPair() as [number, number];
    try {
      expect(() => native.engineCreate(a, -1, 4096, 0, 0, new Uint32Array(4))).toThrow(TypeError);
    } finally {
      native.closeFd(a);
      native.closeFd(b);
    }
  });

  it('every engine call refuses what is not an engine handle, with a TypeError', () => {
    const [a, b] = native.socketPair() as [number, number];
    try {
      const engine = native.engineCreate(a, -1, 4096, 0, 0, present.words);
      const notEngines: unknown[] = [{}, 1, null, undefined, present.words, Symbol('x')];
      for (const bad of notEngines) {
        expect(() => native.engineStats(bad as never)).toThrow(TypeError);
        expect(() => native.engineStopThread(bad as never)).toThrow(TypeError);
        expect(() => native.engineServe(bad as never, 0, 0, 0, 0)).toThrow(TypeError);
        expect(() => native.engineReleaseViews(bad as never)).toThrow(TypeError);
      }
      // The real one works, and stopping a thread that never started is a no-op, twice.
      expect(native.engineStats(engine).length).toBe(native.engineLayout.statCount + native.engineLayout.buckets.linear + native.engineLayout.buckets.log);
      native.engineStopThread(engine);
      native.engineStopThread(engine);
    } finally {
      native.closeFd(a);
      native.closeFd(b);
    }
  });
});

describe('one fault path', () => {
  const RESOLVING = /native\.uffd(Continue|Copy|CopyBuffer|Zeropage|Wake|Poison|Move)\(/;
  // The raw API (Userfaultfd's methods), the handshake's idle-address probe,
  // and Mapping.unmap's unregister-before-munmap guard: everything else goes through the engine.
  const RAW = new Set(['userfaultfd.ts', 'handshake.ts', 'memfd.ts']);

  function files(dir: string, ext: string): string[] {
    return readdirSync(dir, { withFileTypes: true, recursive: true })
      .filter((d) => d.isFile() && d.name.endsWith(ext))
      .map((d) => join(d.parentPath ?? (d as unknown as { path: string }).path, d.name));
  }

  it('no TypeScript file but the raw API issues a resolving ioctl', () => {
    const offenders = files(join(root, 'lib'), '.ts').filter((f) => !RAW.has(f.split('/').pop()!) && RESOLVING.test(readFileSync(f, 'utf8')));
    expect(offenders).toEqual([]);
  });

  it('in native code, only the engine and the raw wrappers name a resolving ioctl', () => {
    const named = files(join(root, 'native'), '.cc')
      .filter((f) => !f.includes('/bench/'))
      .filter((f) => /uffd_abi::k(Continue|Copy|Zeropage|Wake|Poison|Move)\b/.test(readFileSync(f, 'utf8')))
      .map((f) => f.split('/').pop())
      .sort();
    expect(named).toEqual(['engine.cc', 'uffd.cc']);
  });
});

describe('what users see', () => {
  it('a closed Userfaultfd says so: fd is -1, as a closed FileHandle\'s', async () => {
    const { Userfaultfd } = await import('../../lib/index');
    const uffd = Userfaultfd.open();
    expect(uffd.fd).toBeGreaterThan(2);
    uffd.close();
    expect(uffd.fd).toBe(-1);
    uffd.close();
    expect(uffd.fd).toBe(-1);
  });

  it('internal members stay out of the published declarations', () => {
    const dts = (name: string): string => readFileSync(join(root, 'dist', 'lib', name), 'utf8');
    const uffd = dts('userfaultfd.d.ts');
    for (const internal of ['setReadOnOtherThread', 'claimReader', 'adoptForkChild', 'watchLoopThread', 'onClose', 'ioctlError'])
      expect(uffd, internal).not.toContain(internal);
    const present = dts('present-pages.d.ts');
    for (const internal of ['words', 'inflight', 'markPage', 'clearPage']) expect(present, internal).not.toContain(internal);
    const handler = dts('fault-handler/index.d.ts');
    for (const internal of ['mapPresent', 'poisonAbsent']) expect(handler, internal).not.toContain(internal);
  });
});

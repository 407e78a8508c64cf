// Registering (docs/kernel-behaviour.md, "Registering"): which memory takes which
// mode, one uffd per range, re-registration replacing the mode.
import { afterEach, describe, expect } from 'vitest';

import { PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { native } from '../../lib/native';
import { caps, itWith } from '../helpers';
import { Closer, filledMemfd, pageByte } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

const MAP_PRIVATE_ANONYMOUS = 0x22;

describe('registering', () => {
  itWith(['minorShmem'], 'MINOR works on shared and private memfd views, not on anonymous memory; mode 0 is EINVAL', () => {
    const mem = filledMemfd(closer, 2);
    const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    for (const view of [mem.map(), mem.map({ private: true })]) {
      const reg = uffd.register(view, { minor: true });
      // WAKE, COPY, ZEROPAGE, CONTINUE (0x9c on 6.1), plus MOVE and POISON where offered (0x1bc on 6.18).
      expect(reg.ioctlMask).toBe(0x9cn | (caps.features.move ? 0x20n : 0n) | (caps.features.poison ? 0x100n : 0n));
      expect(reg).toMatchObject({ address: view.address, length: view.length });
    }
    const [anon, anonBuf] = native.mmap(-1, 0, PAGE_SIZE, 3, MAP_PRIVATE_ANONYMOUS) as [number, ArrayBuffer];
    closer.add({ close: () => native.munmap(anon, anonBuf) });
    expect(() => uffd.register({ address: anon, length: PAGE_SIZE }, { minor: true })).toThrow(
      expect.objectContaining({ code: 'EINVAL', operation: 'UFFDIO_REGISTER', address: anon }),
    );
    // MISSING is fine on anonymous memory.
    expect(uffd.register({ address: anon, length: PAGE_SIZE }, { missing: true }).ioctls).toEqual(
      ['wake', 'copy', 'zeropage', ...(caps.features.move ? ['move'] : []), ...(caps.features.poison ? ['poison'] : [])],
    );
    expect(native.uffdRegister(uffd.fd, mem.mappings[0].address, PAGE_SIZE, 0)).toBe(-22);
  });

  itWith(['minorShmem', 'missingShmem'], 'a second uffd on the same range is EBUSY; the same uffd registering again replaces the mode', async () => {
    const mem = filledMemfd(closer, 64);
    const first = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    const second = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
    const view = mem.map();
    expect(first.register(view, { minor: true }).ioctls).toContain('continue');
    expect(() => second.register(view, { minor: true })).toThrow(expect.objectContaining({ code: 'EBUSY', errno: -16 }));
    // MISSING alone replaces MINOR: a present page no longer faults...
    expect(first.register(view, { missing: true }).ioctls).not.toContain('continue');
    expect((await touchPages(view, [1])).checksum).toBe(pageByte(1));
    expect(first.readEvents()).toEqual([]);
    // ...and that ordinary fault mapped its present neighbours too
    // (fault-around, off while MINOR is registered, maps the 64 KiB-aligned
    // window around the fault): the neighbour inside that window is EEXIST...
    const touched = view.address + PAGE_SIZE;
    const neighbour = touched % 65536 === 0 ? touched + PAGE_SIZE : touched - PAGE_SIZE;
    expect(() => first.continue(neighbour, PAGE_SIZE, { onExists: 'throw' })).toThrow(expect.objectContaining({ code: 'EEXIST' }));
    // ...while a page far away is not mapped yet. Although the answer no
    // longer lists CONTINUE, the kernel still accepts it on this shmem range.
    expect(first.continue(view.address + 40 * PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);
    first.unregister(view);
    // Unregistered: the other uffd may take it now.
    expect(second.register(view, { minor: true }).ioctls).toContain('continue');
  });
});

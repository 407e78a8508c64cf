// UFFDIO_CONTINUE results (docs/kernel-behaviour.md, "UFFDIO_CONTINUE results")
// and the typed errors and argument checks around them.
import { afterEach, describe, expect, it } from 'vitest';

import { Memfd, PAGE_SIZE, UffdError, Userfaultfd } from '../../lib/index';
import { native } from '../../lib/native';
import { itWith } from '../helpers';
import { Closer, filledMemfd, pageByte } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

function registered(pages: number, memPages = pages) {
  const mem = filledMemfd(closer, memPages);
  const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem'] }));
  const guest = mem.map({ length: pages * PAGE_SIZE });
  uffd.register(guest, { minor: true });
  return { mem, uffd, guest };
}

function thrown(fn: () => unknown): UffdError {
  try {
    fn();
  } catch (err) {
    return err as UffdError;
  }
  throw new Error('expected a throw');
}

describe('UFFDIO_CONTINUE failures', () => {
  itWith(['minorShmem'], 'beyond i_size after a shrink: EINVAL (shmem)', () => {
    const { mem, uffd, guest } = registered(4);
    mem.truncate(2 * PAGE_SIZE);
    const err = thrown(() => uffd.continue(guest.address + 3 * PAGE_SIZE, PAGE_SIZE));
    expect(err).toBeInstanceOf(UffdError);
    expect(err).toMatchObject({ code: 'EINVAL', errno: -22, syscall: 'ioctl', operation: 'UFFDIO_CONTINUE', address: guest.address + 3 * PAGE_SIZE, length: PAGE_SIZE, bytesDone: 0 });
    // Below the new end of file the pages are still there.
    expect(uffd.continue(guest.address + PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);
    expect(new Uint8Array(guest.buffer)[PAGE_SIZE]).toBe(pageByte(1));
  });

  itWith(['minorShmem'], 'a punched page, and a page never written: EFAULT', () => {
    const { mem, uffd, guest } = registered(4);
    mem.punchHole(PAGE_SIZE, PAGE_SIZE);
    expect(mem.read(PAGE_SIZE, 4)).toEqual(Buffer.alloc(4));
    expect(mem.size).toBe(4 * PAGE_SIZE);
    expect(thrown(() => uffd.continue(guest.address + PAGE_SIZE, PAGE_SIZE))).toMatchObject({ code: 'EFAULT', errno: -14, bytesDone: 0 });
    const fresh = closer.add(Memfd.create(2 * PAGE_SIZE));
    const view = fresh.map();
    uffd.register(view, { minor: true });
    expect(thrown(() => uffd.continue(view.address, PAGE_SIZE))).toMatchObject({ code: 'EFAULT', operation: 'UFFDIO_CONTINUE' });
  });

  itWith(['minorShmem'], 'a range outside the registration: ENOENT', () => {
    const { mem, uffd, guest } = registered(2, 4);
    const other = mem.map();
    expect(thrown(() => uffd.continue(other.address, PAGE_SIZE))).toMatchObject({ code: 'ENOENT', errno: -2, address: other.address });
    // Starting inside but running past the registered VMA.
    expect(thrown(() => uffd.continue(guest.address, 3 * PAGE_SIZE))).toMatchObject({ code: 'ENOENT', length: 3 * PAGE_SIZE });
  });

  itWith(['minorShmem'], 'partial progress: EAGAIN with the bytes done, and the rest tells the real error', () => {
    const { mem, uffd, guest } = registered(4);
    mem.punchHole(2 * PAGE_SIZE, PAGE_SIZE);
    const err = thrown(() => uffd.continue(guest.address, 4 * PAGE_SIZE));
    expect(err).toMatchObject({ code: 'EAGAIN', errno: -11, bytesDone: 2 * PAGE_SIZE, length: 4 * PAGE_SIZE, operation: 'UFFDIO_CONTINUE' });
    expect(err.message).toMatch(/8192 bytes done|partial progress/);
    // The prefix is mapped: reading it now faults nothing.
    const bytes = new Uint8Array(guest.buffer);
    expect([bytes[0], bytes[2 * PAGE_SIZE - 1]]).toEqual([pageByte(0), pageByte(1)]);
    expect(uffd.readEvents()).toEqual([]);
    expect(thrown(() => uffd.continue(guest.address + 2 * PAGE_SIZE, 2 * PAGE_SIZE))).toMatchObject({ code: 'EFAULT', bytesDone: 0 });
  });

  itWith(['minorShmem'], 'MODE_WP on a range not registered WP: EINVAL', () => {
    const { uffd, guest } = registered(2);
    expect(thrown(() => uffd.continue(guest.address, PAGE_SIZE, { writeProtect: true }))).toMatchObject({ code: 'EINVAL' });
  });

  itWith(['minorShmem'], 'what the kernel does with bad arguments the library would refuse', () => {
    const { uffd, guest } = registered(2);
    expect(native.uffdContinue(uffd.fd, guest.address + 1, PAGE_SIZE, 0)).toBe(-22);
    expect(native.uffdContinue(uffd.fd, guest.address, 0, 0)).toBe(-22);
    expect(native.uffdContinue(uffd.fd, guest.address, PAGE_SIZE, 4)).toBe(-22);
    expect(native.uffdContinue(uffd.fd, guest.address, PAGE_SIZE, 0)).toBe(PAGE_SIZE);
  });
});

describe('argument checks come before any syscall', () => {
  itWith(['minorShmem'], 'alignment, types, ranges and use after close', () => {
    const { mem, uffd, guest } = registered(2);
    const a = guest.address;
    expect(() => uffd.continue(a + 1, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', name: 'TypeError' }));
    expect(() => uffd.continue(a, 100)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.continue(a, -PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', name: 'RangeError' }));
    expect(() => uffd.continue(a, 0)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.continue(a, 1.5)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.continue(a, BigInt(PAGE_SIZE) as unknown as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.continue(-PAGE_SIZE, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.continue(2 ** 64, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => uffd.continue('0x1000' as unknown as number, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => uffd.register(guest, {})).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => uffd.register({ address: a, length: 3 }, { minor: true })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => mem.map({ offset: 5 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => mem.map({ length: -1 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => mem.write(-1, Buffer.alloc(1))).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => mem.write(0, 'text' as unknown as Uint8Array)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    // A bigint address is fine: it is the same address.
    expect(uffd.continue(BigInt(a), PAGE_SIZE)).toBe(PAGE_SIZE);
    guest.unmap();
    expect(() => uffd.register(guest, { minor: true })).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    uffd.close();
    expect(() => uffd.continue(a, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(() => uffd.readEvents()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    mem.close();
    expect(() => mem.map()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(() => mem.size).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
  });

  it('registering a range where nothing is mapped: EINVAL, as a typed error', () => {
    const uffd = closer.add(Userfaultfd.open());
    const err = thrown(() => uffd.register({ address: PAGE_SIZE, length: PAGE_SIZE }, { minor: true }));
    expect(err).toBeInstanceOf(UffdError);
    expect(err).toMatchObject({ code: 'EINVAL', errno: -22 });
    expect(err).toMatchObject({ syscall: 'ioctl', operation: 'UFFDIO_REGISTER', address: PAGE_SIZE, length: PAGE_SIZE });
  });
});

// Nothing may assume 4096-byte pages or 2 MiB huge pages: arm64 kernels run
// with 4, 16 or 64 KiB pages, and their default huge page size follows (32 MiB
// with 16 KiB pages). The VM matrix (npm run test:vm) runs these on such a
// kernel; here they compare the library with what the kernel says directly.
import { readFileSync, readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { Memfd, PAGE_SIZE, probe } from '../../lib/index';

/** AT_PAGESZ from the ELF auxiliary vector: the kernel's word, not the addon's. */
function auxvPageSize(): number | undefined {
  const buf = readFileSync('/proc/self/auxv');
  for (let i = 0; i + 16 <= buf.length; i += 16) {
    const type = buf.readBigUInt64LE(i);
    if (type === 6n) return Number(buf.readBigUInt64LE(i + 8));
    if (type === 0n) break;
  }
  return undefined;
}

const hugeSizes = readdirSync('/sys/kernel/mm/hugepages').map((d) => Number(/(\d+)kB/.exec(d)![1]) * 1024);
const defaultHuge = Number(/^Hugepagesize:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;

describe('page sizes come from the kernel', () => {
  it('PAGE_SIZE and probe().pageSize equal AT_PAGESZ', () => {
    const kernel = auxvPageSize();
    expect(kernel).toBeGreaterThan(0);
    expect(PAGE_SIZE).toBe(kernel);
    expect(probe().pageSize).toBe(kernel);
  });

  it('a memfd offset that is not page-aligned is refused, at the real page size', () => {
    using mem = Memfd.create(2 * PAGE_SIZE, { name: 'page-size-test' });
    expect(() => mem.map({ offset: PAGE_SIZE / 2 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    using view = mem.map({ offset: PAGE_SIZE });
    expect(view.length).toBe(PAGE_SIZE);
  });

  it('hugetlb: true uses the default huge page size; other sizes must be ones the kernel lists', () => {
    // memfd_create and ftruncate reserve no huge pages: this runs with vm.nr_hugepages=0.
    using mem = Memfd.create(2 * defaultHuge, { name: 'huge-default', hugetlb: true });
    expect(mem.pageSize).toBe(defaultHuge);
    expect(mem.hugetlb).toBe(true);
    expect(probe().hugePages.size).toBe(defaultHuge);
    const unsupported = 3 * 1024 * 1024;
    expect(hugeSizes).not.toContain(unsupported);
    expect(() => Memfd.create(2 * unsupported, { hugetlb: unsupported })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining(String(hugeSizes[0])) }),
    );
    for (const size of hugeSizes) {
      using sized = Memfd.create(size, { name: 'huge-sized', hugetlb: size });
      expect(sized.pageSize).toBe(size);
    }
  });
});

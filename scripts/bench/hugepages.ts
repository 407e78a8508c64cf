// 2 MiB hugetlb pages for the huge-page rows: the benchmark raises
// vm.nr_hugepages to what it needs and puts the old value back on exit,
// including Ctrl-C and uncaught errors.
import { readFileSync, writeFileSync } from 'node:fs';

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
const FREE_2M = '/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages';

const readNumber = (path: string): number | undefined => {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return undefined;
  }
};

export interface HugeReservation {
  /** Free 2 MiB pages available to the benchmark. */
  available: number;
  /** Why huge pages are not available, when they are not. */
  reason?: string;
  restore(): void;
}

/** Makes `pages` free 2 MiB pages available, raising vm.nr_hugepages as needed. */
export function reserveHugePages(pages: number): HugeReservation {
  const before = readNumber(NR_HUGEPAGES);
  const free = readNumber(FREE_2M);
  if (before === undefined || free === undefined) return { available: 0, reason: 'no 2 MiB hugetlb pool on this kernel', restore() {} };
  if (free >= pages) return { available: free, restore() {} };
  let restored = false;
  let raised = before + pages - free;
  const restore = () => {
    if (restored) return;
    restored = true;
    // The sysctl is machine-wide: if someone else changed it since, their
    // value wins and ours is not put back over it.
    if (readNumber(NR_HUGEPAGES) !== raised) return;
    try {
      writeFileSync(NR_HUGEPAGES, String(before));
    } catch {
      // Nothing more to do at exit.
    }
  };
  try {
    writeFileSync(NR_HUGEPAGES, String(raised));
    // The kernel may allocate fewer than asked; what it reports is what we set.
    raised = readNumber(NR_HUGEPAGES) ?? raised;
  } catch (err) {
    return { available: free, reason: `cannot raise vm.nr_hugepages: ${(err as Error).message}`, restore() {} };
  }
  process.once('exit', restore);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      restore();
      process.exit(128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : 1));
    });
  }
  const available = readNumber(FREE_2M) ?? 0;
  return {
    available,
    reason: available < pages ? `only ${available} of ${pages} huge pages could be reserved (memory fragmented?)` : undefined,
    restore,
  };
}

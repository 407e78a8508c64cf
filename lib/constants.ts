// Names for the kernel's bit masks (see native/uffd_abi.h for the values'
// origin) and the feature history used by probe() to explain refusals.

/** userfaultfd features, by the name this library uses for them. */
export const FEATURES = {
  pagefaultFlagWp: 0x1,
  eventFork: 0x2,
  eventRemap: 0x4,
  eventRemove: 0x8,
  missingHugetlbfs: 0x10,
  missingShmem: 0x20,
  eventUnmap: 0x40,
  sigbus: 0x80,
  threadId: 0x100,
  minorHugetlbfs: 0x200,
  minorShmem: 0x400,
  exactAddress: 0x800,
  wpHugetlbfsShmem: 0x1000,
  wpUnpopulated: 0x2000,
  poison: 0x4000,
  wpAsync: 0x8000,
  move: 0x10000,
} as const;

export type FeatureName = keyof typeof FEATURES;

/** Features whose events make the thread changing the mm wait until the event is read. */
export const EVENT_FEATURES = FEATURES.eventFork | FEATURES.eventRemap | FEATURES.eventRemove | FEATURES.eventUnmap;

/** The first kernel release that offers each feature. */
export const FEATURE_SINCE: Record<FeatureName, string> = {
  pagefaultFlagWp: '5.7',
  eventFork: '4.11',
  eventRemap: '4.11',
  eventRemove: '4.11',
  missingHugetlbfs: '4.11',
  missingShmem: '4.11',
  eventUnmap: '4.11',
  sigbus: '4.14',
  threadId: '4.14',
  minorHugetlbfs: '5.13',
  minorShmem: '5.14',
  exactAddress: '5.18',
  wpHugetlbfsShmem: '5.19',
  wpUnpopulated: '6.4',
  poison: '6.6',
  wpAsync: '6.7',
  move: '6.8',
};

/** ioctl numbers: bit N of an `ioctls` mask means ioctl number N is allowed. */
export const IOCTLS = {
  register: 0,
  unregister: 1,
  wake: 2,
  copy: 3,
  zeropage: 4,
  move: 5,
  writeProtect: 6,
  continue: 7,
  poison: 8,
  api: 63,
} as const;

export type IoctlName = keyof typeof IOCTLS;

export const REGISTER_MODE = { missing: 1, wp: 2, minor: 4 } as const;
export const CONTINUE_MODE = { dontWake: 1, wp: 2 } as const;
export const COPY_MODE = { dontWake: 1, wp: 2 } as const;
export const ZEROPAGE_MODE = { dontWake: 1 } as const;
export const WRITEPROTECT_MODE = { wp: 1, dontWake: 2 } as const;
export const POISON_MODE = { dontWake: 1 } as const;
export const MOVE_MODE = { dontWake: 1, allowSrcHoles: 2 } as const;
export const PAGEFAULT_FLAG = { write: 1, wp: 2, minor: 4 } as const;
export const EVENT = { pagefault: 0x12, fork: 0x13, remap: 0x14, remove: 0x15, unmap: 0x16 } as const;
export const MSG_SIZE = 32;

// <linux/falloc.h>, <sys/mman.h>
export const FALLOC_FL_KEEP_SIZE = 0x1;
export const FALLOC_FL_PUNCH_HOLE = 0x2;
export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const MAP_SHARED = 0x1;
export const MAP_PRIVATE = 0x2;
export const MFD_HUGE_SHIFT = 26;

export const MADVISE = {
  normal: 0,
  random: 1,
  sequential: 2,
  willneed: 3,
  dontneed: 4,
  remove: 9,
  hugepage: 14,
  nohugepage: 15,
  populateRead: 22,
  populateWrite: 23,
  collapse: 25,
} as const;

export type Advice = keyof typeof MADVISE;

export function featureNames(bits: number): FeatureName[] {
  return (Object.keys(FEATURES) as FeatureName[]).filter((name) => (bits & FEATURES[name]) !== 0);
}

export function featureBits(names: readonly FeatureName[]): number {
  return names.reduce((bits, name) => bits | FEATURES[name], 0);
}

export function ioctlNames(mask: bigint): IoctlName[] {
  return (Object.keys(IOCTLS) as IoctlName[]).filter((name) => ((mask >> BigInt(IOCTLS[name])) & 1n) === 1n);
}

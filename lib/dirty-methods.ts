// Which dirty-tracking methods this kernel has, and the error that names the
// kernel a missing one needs. Shared by DirtyTracker (to choose) and probe()
// (to report), so both say the same thing.
import { release } from 'node:os';

import { FEATURES } from './constants';
import { stateError } from './errors';
import { offeredFeatures } from './handshake';
import { native } from './native';

/** How a {@link DirtyTracker} learns which pages were written. */
export type DirtyMethod = 'wp-async' | 'wp-sync';

/** Whether one method works here, and if not, why. */
export interface DirtyMethodSupport {
  available: boolean;
  /** Why not, naming the Linux version needed. */
  reason?: string;
}

/** The Linux release each method needs (shared memory: memfd, shmem). */
export const DIRTY_METHOD_SINCE: Readonly<Record<DirtyMethod, string>> = { 'wp-async': '6.7', 'wp-sync': '5.19' };

/** Any address that no mapping uses: a scan there touches nothing and only says whether the ioctl exists. */
const IDLE_ADDRESS = 0x40000000;

let pagemapScanCache: boolean | undefined;

/** True when /proc/self/pagemap answers PAGEMAP_SCAN (Linux 6.7+); older kernels say ENOTTY. */
export function hasPagemapScan(): boolean {
  if (pagemapScanCache === undefined) {
    const fd = native.pagemapOpen(0);
    if (fd < 0) return (pagemapScanCache = false);
    try {
      pagemapScanCache = typeof native.pagemapScanWritten(fd, IDLE_ADDRESS, IDLE_ADDRESS + 4096, false) !== 'number';
    } finally {
      native.closeFd(fd);
    }
  }
  return pagemapScanCache;
}

function offered(): number {
  try {
    return offeredFeatures();
  } catch {
    return 0;
  }
}

/** Both methods' availability on this kernel. Never throws. */
export function dirtyMethods(): Record<DirtyMethod, DirtyMethodSupport> {
  const kernel = release();
  const features = offered();
  const has = (bit: number): boolean => (features & bit) !== 0;
  const asyncMissing: string[] = [];
  if (!has(FEATURES.wpAsync)) asyncMissing.push('UFFD_FEATURE_WP_ASYNC');
  if (!hasPagemapScan()) asyncMissing.push('PAGEMAP_SCAN');
  const syncMissing: string[] = [];
  if (!has(FEATURES.pagefaultFlagWp)) syncMissing.push('userfaultfd write-protect');
  if (!has(FEATURES.wpHugetlbfsShmem)) syncMissing.push('UFFD_FEATURE_WP_HUGETLBFS_SHMEM');
  const entry = (method: DirtyMethod, missing: string[]): DirtyMethodSupport => missing.length === 0
    ? { available: true }
    : { available: false, reason: `${method} needs Linux ${DIRTY_METHOD_SINCE[method]} or later (${missing.join(' and ')}); this kernel is ${kernel}` };
  return { 'wp-async': entry('wp-async', asyncMissing), 'wp-sync': entry('wp-sync', syncMissing) };
}

/** The typed error for a method (or any method) this kernel lacks. */
export function unsupportedError(methods: Record<DirtyMethod, DirtyMethodSupport>, wanted?: DirtyMethod): Error {
  const message = wanted
    ? `Dirty tracking by ${wanted} is not available: ${methods[wanted].reason}`
    : `Dirty tracking is not available: it needs Linux ${DIRTY_METHOD_SINCE['wp-async']}+ (wp-async) or Linux ${DIRTY_METHOD_SINCE['wp-sync']}+ (wp-sync fallback) for shared memory; this kernel is ${release()}`;
  return Object.assign(stateError('ERR_UFFD_DIRTY_UNSUPPORTED', message), {
    method: wanted,
    needs: wanted ? DIRTY_METHOD_SINCE[wanted] : DIRTY_METHOD_SINCE['wp-sync'],
  });
}

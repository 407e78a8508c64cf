import { existsSync, readFileSync } from 'node:fs';
import { arch, release } from 'node:os';

import { FEATURES, FEATURE_SINCE, FeatureName, IoctlName, featureNames } from './constants';
import { DirtyMethod, DirtyMethodSupport, dirtyMethods } from './dirty-methods';
import { UffdError } from './errors';
import { Memfd, PAGE_SIZE } from './memfd';
import { native } from './native';
import { Userfaultfd, offeredFeatures, userModeOnlyUnsupported } from './userfaultfd';

/** One way of opening a userfaultfd, and how it went. */
export interface OpenPath {
  ok: boolean;
  /** errno code when it failed, e.g. `EPERM`. */
  error?: string;
}

/** What this host can do with userfaultfd, with reasons in plain language. */
export interface Capabilities {
  /** Kernel release (uname -r). */
  kernel: string;
  arch: string;
  /** System page size in bytes (sysconf). */
  pageSize: number;
  /** True when a userfaultfd could be opened and handshaken. */
  available: boolean;
  /** user-mode-only opening by syscall and by /dev/userfaultfd. */
  open: { syscall: OpenPath; device: OpenPath & { present: boolean }; allModes: OpenPath };
  /** vm.unprivileged_userfaultfd, when readable. */
  unprivilegedUserfaultfd?: number;
  /** Features offered by the kernel. */
  features: Record<FeatureName, boolean>;
  featureMask: number;
  /** Resolving ioctls allowed on a MINOR-registered shmem range (null when MINOR shmem is unavailable). */
  minorShmemIoctls: IoctlName[] | null;
  /** Resolving ioctls allowed on a MISSING-registered shmem range. */
  missingShmemIoctls: IoctlName[] | null;
  /** Huge pages reserved and free (2 MiB pool), from /proc/meminfo. */
  hugePages: { total: number; free: number; size: number };
  /** Dirty tracking (DirtyTracker): each method, and why not where it is missing. */
  dirtyTracking: Record<DirtyMethod, DirtyMethodSupport>;
  /** Why something is unavailable, one sentence each. Empty when everything works. */
  reasons: string[];
}

function tryOpen(userModeOnly: boolean, via: number): OpenPath {
  const fd = native.uffdOpen(userModeOnly ? 1 : 0, via);
  if (fd >= 0) {
    native.closeFd(fd);
    return { ok: true };
  }
  return { ok: false, error: new UffdError(fd, 'open').code };
}

function readNumber(path: string): number | undefined {
  try {
    return Number(readFileSync(path, 'utf8').trim());
  } catch {
    return undefined;
  }
}

function meminfo(key: string): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(readFileSync('/proc/meminfo', 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function rangeIoctls(mode: { minor?: boolean; missing?: boolean }): IoctlName[] | null {
  try {
    using mem = Memfd.create(PAGE_SIZE, { name: 'userfaultfd-probe' });
    using view = mem.map();
    using uffd = Userfaultfd.open();
    return uffd.register(view, mode).ioctls;
  } catch {
    return null;
  }
}

/** Probes the host. Never throws: what fails is reported with a reason. */
export function probe(): Capabilities {
  const kernel = release();
  const devicePresent = existsSync('/dev/userfaultfd');
  const open = {
    syscall: tryOpen(true, 1),
    device: { present: devicePresent, ...(devicePresent ? tryOpen(true, 2) : { ok: false, error: 'ENOENT' }) },
    allModes: tryOpen(false, 0),
  };
  const reasons: string[] = [];
  let featureMask = 0;
  let available = false;
  try {
    featureMask = offeredFeatures();
    available = true;
  } catch (err) {
    reasons.push(`No userfaultfd could be opened: ${(err as Error).message}.`);
  }
  if (devicePresent && !open.device.ok && available)
    reasons.push(`/dev/userfaultfd exists but cannot be opened (${open.device.error}): its file permissions do not admit this user; the syscall is used instead.`);
  if (available && userModeOnlyUnsupported())
    reasons.push(`UFFD_USER_MODE_ONLY is not known to this kernel (${kernel}; it needs Linux 5.11 or later): userfaultfds are opened without it and also receive kernel-mode faults.`);
  if (!open.allModes.ok && available)
    reasons.push('Only user-mode faults can be handled (kernel-mode needs root or CAP_SYS_PTRACE while vm.unprivileged_userfaultfd=0).');
  const features = Object.fromEntries(
    (Object.keys(FEATURES) as FeatureName[]).map((name) => [name, (featureMask & FEATURES[name]) !== 0]),
  ) as Record<FeatureName, boolean>;
  if (available)
    for (const name of Object.keys(FEATURES) as FeatureName[])
      if (!features[name]) reasons.push(`${name} is not offered by this kernel (${kernel}); it needs Linux ${FEATURE_SINCE[name]} or later.`);
  const minorShmemIoctls = available && features.minorShmem ? rangeIoctls({ minor: true }) : null;
  const missingShmemIoctls = available ? rangeIoctls({ missing: true }) : null;
  if (available && features.minorShmem && !minorShmemIoctls?.includes('continue'))
    reasons.push('MINOR registration of shmem failed although the feature is offered.');
  const hugePages = { total: meminfo('HugePages_Total'), free: meminfo('HugePages_Free'), size: meminfo('Hugepagesize') * 1024 };
  const dirtyTracking = dirtyMethods();
  if (available)
    for (const support of Object.values(dirtyTracking)) if (!support.available) reasons.push(`Dirty tracking: ${support.reason}.`);
  if (hugePages.total === 0) reasons.push('No huge pages are reserved (vm.nr_hugepages=0): hugetlb memfds cannot be created until some are.');
  return {
    kernel,
    arch: arch(),
    pageSize: PAGE_SIZE,
    available,
    open,
    unprivilegedUserfaultfd: readNumber('/proc/sys/vm/unprivileged_userfaultfd'),
    features,
    featureMask,
    minorShmemIoctls,
    missingShmemIoctls,
    hugePages,
    dirtyTracking,
    reasons,
  };
}

export { featureNames };

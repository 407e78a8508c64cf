// Opening a userfaultfd and its handshake: which path opens it (the syscall
// or /dev/userfaultfd), what the kernel offers, and what a uffd received
// from elsewhere negotiated (read from /proc/self/fdinfo).
import { readFileSync } from 'node:fs';
import { release } from 'node:os';

import { trace } from './debug';
import { NEGATIVE_ERRNO } from './errno';
import { UffdError, checkValue } from './errors';
import { PAGE_SIZE } from './memfd';
import { native } from './native';

const HANDSHAKE_DONE = 0x80000000;
/** Page-aligned for every page size and above mmap_min_addr: a WAKE there wakes no one. */
const IDLE_WAKE_ADDRESS = 0x40000000;
const EINVAL_ERRNO = -NEGATIVE_ERRNO.EINVAL;
const ENOENT_ERRNO = -NEGATIVE_ERRNO.ENOENT;

let offeredCache: number | undefined;

/** Features the running kernel offers (handshake on a throwaway fd, cached). Throws when no uffd can be opened. */
export function offeredFeatures(): number {
  if (offeredCache === undefined) {
    const fd = openFd(true, 'auto');
    try {
      offeredCache = checkValue(native.uffdApi(fd, 0), 'ioctl', { operation: 'UFFDIO_API' })[0];
    } finally {
      native.closeFd(fd);
    }
  }
  return offeredCache;
}

/**
 * True once this kernel refused UFFD_USER_MODE_ONLY (added in Linux 5.11).
 * Before 5.11 there is no such distinction: every uffd also sees kernel-mode
 * faults, and vm.unprivileged_userfaultfd alone decides who may open one.
 */
let userModeOnlyUnknown = false;

/** Whether the kernel lacked UFFD_USER_MODE_ONLY (pre-5.11) so uffds were opened without it. */
export function userModeOnlyUnsupported(): boolean {
  return userModeOnlyUnknown;
}

export function openFd(userModeOnly: boolean, via: 'auto' | 'syscall' | 'device'): number {
  const how = via === 'auto' ? 0 : via === 'syscall' ? 1 : 2;
  let fd = native.uffdOpen(userModeOnly ? 1 : 0, how);
  // Pre-5.11 kernels reject the unknown flag with EINVAL (and have no
  // /dev/userfaultfd, added in 6.1): open without it rather than refuse a
  // kernel that can otherwise do everything asked.
  if (fd < 0 && userModeOnly && native.scratch[1] === EINVAL_ERRNO && (native.scratch[2] === 0 || native.scratch[2] === ENOENT_ERRNO)) {
    const plain = native.uffdOpen(0, how);
    if (plain >= 0) {
      if (!userModeOnlyUnknown) trace('UFFD_USER_MODE_ONLY refused (kernel %s, before 5.11): opened without it', release());
      userModeOnlyUnknown = true;
      return plain;
    }
    fd = plain;
  }
  if (fd >= 0) return fd;
  const bySyscall = native.scratch[1];
  const byDevice = native.scratch[2];
  const parts: string[] = [];
  if (bySyscall) parts.push(`userfaultfd(2) failed with ${new UffdError(-bySyscall, 'userfaultfd').code}`);
  if (byDevice) parts.push(`/dev/userfaultfd failed with ${new UffdError(-byDevice, 'open').code}`);
  const hint = `${parts.join('; ')}${userModeOnly ? '' : ' (kernel-mode faults need root or CAP_SYS_PTRACE when vm.unprivileged_userfaultfd=0)'}`;
  throw new UffdError(fd, byDevice ? 'open' : 'userfaultfd', { hint, path: byDevice ? '/dev/userfaultfd' : undefined });
}

/** Reads the handshake state of a uffd from /proc/self/fdinfo: features, or undefined if not handshaken. */
export function fdinfoFeatures(fd: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return undefined;
  }
  const api = /^API:\s*([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)/m.exec(text);
  if (!api) return undefined;
  // Since 5.17 the kernel marks a handshaken context with bit 31
  // (UFFD_FEATURE_INITIALIZED). Older kernels show only the features, so a
  // zero word is ambiguous there: every ioctl but UFFDIO_API is EINVAL before
  // the handshake, and a WAKE of a range nobody waits on is harmless after it.
  const word = parseInt(api[2], 16);
  if (word >= HANDSHAKE_DONE) return word - HANDSHAKE_DONE;
  return native.uffdWake(fd, IDLE_WAKE_ADDRESS, PAGE_SIZE) === 0 ? word : undefined;
}


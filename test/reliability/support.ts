// Shared plumbing of the reliability tests: what a "typed error" is, and
// counters of the descriptors and memfd mappings this process holds.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { expect } from 'vitest';

import { UffdError } from '../../lib/index';

export const ARG_CODES = ['ERR_INVALID_ARG_TYPE', 'ERR_OUT_OF_RANGE', 'ERR_INVALID_ARG_VALUE'];

/** Open descriptors of this process, by number -> target. */
export function openFds(): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      out.set(name, readlinkSync(`/proc/self/fd/${name}`));
    } catch {
      // the descriptor readdir itself used, already closed
    }
  }
  return out;
}

/** Lines of /proc/self/maps that map a memfd (every mapping this library makes). */
export function memfdMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/memfd:')).length;
}

export function threadCount(): number {
  return readdirSync('/proc/self/task').length;
}

/** Descriptors and mappings now; `leaks()` later lists what was added since. */
export function leakWatch(): { leaks(): { fds: string[]; memfdMappings: number } } {
  const fds = openFds();
  const maps = memfdMappings();
  return {
    leaks() {
      const now = openFds();
      const added = [...now].filter(([fd, target]) => fds.get(fd) !== target).map(([fd, target]) => `${fd} -> ${target}`);
      return { fds: added, memfdMappings: memfdMappings() - maps };
    },
  };
}

export type ErrorKind = 'argument' | 'closed' | 'syscall' | 'state';

/**
 * Asserts that `err` is one of the library's typed errors with a useful
 * message, and says which kind it is.
 */
export function typedError(err: unknown): ErrorKind {
  expect(err).toBeInstanceOf(Error);
  const e = err as Error & { code?: unknown; errno?: unknown; syscall?: unknown };
  expect(typeof e.code, `no code on: ${e.message}`).toBe('string');
  expect(e.message.length).toBeGreaterThan(10);
  if (err instanceof UffdError) {
    expect(e.errno).toBeLessThan(0);
    expect(typeof e.syscall).toBe('string');
    expect(e.message).toContain(e.code as string);
    expect(e.message).toContain(e.syscall as string);
    return 'syscall';
  }
  if (ARG_CODES.includes(e.code as string)) {
    expect(err instanceof TypeError || err instanceof RangeError, `${e.code} must be a TypeError or RangeError`).toBe(true);
    // Names the argument and shows what was received.
    expect(e.message).toMatch(/"[\w.[\]]+"|'[\w.[\]]+'/);
    expect(e.message).toContain('Received');
    return 'argument';
  }
  expect(e.code as string).toMatch(/^ERR_UFFD_[A-Z_]+$/);
  return e.code === 'ERR_UFFD_CLOSED' ? 'closed' : 'state';
}

/** Runs `fn`; returns how it failed (typed), or 'ok'. */
export function outcome(fn: () => unknown): ErrorKind | 'ok' {
  try {
    const result = fn();
    if (result instanceof Promise) result.catch(() => {});
    return 'ok';
  } catch (err) {
    return typedError(err);
  }
}

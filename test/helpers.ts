// Shared test plumbing: capability-based skips that print their reason, and
// paths to the compiled build for worker threads and child processes.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'vitest';
import type { TestContext } from 'vitest';

import { FEATURE_SINCE, FeatureName, probe } from '../lib/index';

export const caps = probe();
export const root = join(__dirname, '..');
/** The compiled entry point, for code that runs in workers and children. */
export const distEntry = join(root, 'dist', 'lib', 'index.js');
export const fixture = (name: string): string => join(__dirname, 'fixtures', name);

/** Why `features` cannot be used on this kernel, or undefined when they can. */
export function missingReason(...features: FeatureName[]): string | undefined {
  if (!caps.available) return `no userfaultfd on this host: ${caps.reasons[0]}`;
  const missing = features.filter((f) => !caps.features[f]);
  if (!missing.length) return undefined;
  return `kernel ${caps.kernel} lacks ${missing.map((m) => `${m} (Linux ${FEATURE_SINCE[m]}+)`).join(', ')}`;
}

/**
 * How much longer than on real hardware tests may take: the VM matrix sets
 * UFFD_TEST_TIME_SCALE for guests under software emulation, where a test
 * file runs 10 to 25 times slower. Scales time bounds, never what is checked.
 */
export const TIME_SCALE = Math.max(1, Number(process.env.UFFD_TEST_TIME_SCALE) || 1);

/**
 * `it` that runs unless `skipReason` is set; then the test is skipped and the
 * reason is part of its name (and printed), so reports from other machines
 * and older kernels say why. `timeout` is scaled by TIME_SCALE.
 */
export function itUnless(skipReason: string | undefined, name: string, fn: (ctx: TestContext) => unknown, timeout?: number): void {
  if (skipReason) {
    console.log(`skipped "${name}": ${skipReason}`);
    it.skip(`${name} [skipped: ${skipReason}]`, fn);
  } else {
    it(name, fn, timeout === undefined ? undefined : timeout * TIME_SCALE);
  }
}

/** `it` that runs only where the kernel offers `features` (see itUnless). */
export function itWith(features: FeatureName[], name: string, fn: (ctx: TestContext) => unknown, timeout?: number): void {
  itUnless(missingReason(...features), name, fn, timeout);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A time bound of a test, scaled by TIME_SCALE. Every bound a test sets
 * (waits, spawn timeouts, AbortSignal.timeout, deadlines) goes through this;
 * a bound only limits how long a test may take, it never decides a result.
 */
export const scaled = (ms: number): number => ms * TIME_SCALE;

/** Polls `cond` on the event loop until it holds; fails after `ms` (scaled by TIME_SCALE). */
export async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const bound = scaled(ms);
  const deadline = Date.now() + bound;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${bound} ms waiting for ${what}`);
    await sleep(1);
  }
}

/**
 * Checks that `cond` keeps holding for `ms` (polled on the event loop), for
 * something that must NOT happen (a wake nobody asked for, a stop that must
 * wait). A slow machine can only make this pass where it should fail, never
 * the reverse, so the window is a fixed floor, not scaled.
 */
export async function holdsFor(cond: () => boolean, ms: number, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  do {
    if (!cond()) throw new Error(`${what} stopped holding`);
    await sleep(1);
  } while (Date.now() < end);
  if (!cond()) throw new Error(`${what} stopped holding`);
}

/**
 * The seed of a property or model test: FUZZ_SEED when set (scripts/fresh-seeds.sh
 * sets a random one), else the fixed default, so CI runs are reproducible.
 * Printed either way; a seed that failed becomes a regression case of its test.
 */
export function testSeed(name: string, fixed: number): number {
  const seed = process.env.FUZZ_SEED === undefined ? fixed : Number(process.env.FUZZ_SEED);
  console.log(`${name}: seed ${seed}${process.env.FUZZ_SEED === undefined ? ' (fixed default)' : ' (FUZZ_SEED)'}`);
  return seed;
}

/** Where the kernel has thread `tid` of process `pid` sleeping (wchan), or '(gone)'. */
export function sleepingIn(pid: number, tid: number): string {
  try {
    return readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8');
  } catch {
    return '(gone)';
  }
}

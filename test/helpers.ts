// Shared test plumbing: capability-based skips that print their reason, and
// paths to the compiled build for worker threads and child processes.
import { join } from 'node:path';
import { it } from 'vitest';

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
export function itUnless(skipReason: string | undefined, name: string, fn: () => unknown, timeout?: number): void {
  if (skipReason) {
    console.log(`skipped "${name}": ${skipReason}`);
    it.skip(`${name} [skipped: ${skipReason}]`, fn);
  } else {
    it(name, fn, timeout === undefined ? undefined : timeout * TIME_SCALE);
  }
}

/** `it` that runs only where the kernel offers `features` (see itUnless). */
export function itWith(features: FeatureName[], name: string, fn: () => unknown, timeout?: number): void {
  itUnless(missingReason(...features), name, fn, timeout);
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` on the event loop until it holds or `ms` passes. */
export async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(1);
  }
}

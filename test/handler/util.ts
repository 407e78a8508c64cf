// Shared plumbing of the FaultHandler tests: deterministic page content,
// shuffles, and byte-for-byte checks.
import { join } from 'node:path';
import { afterEach, expect } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE } from '../../lib/index';
import type { FaultHandlerStats } from '../../lib/index';
import { scaled } from '../helpers';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const shared = require('../fixtures/page-content.js') as {
  pageContent(page: number, seed?: number): Buffer;
  rng(seed: number): () => number;
  shuffled(n: number, random: () => number): number[];
};
export const { pageContent, rng, shuffled } = shared;
export const pageContentModule = join(__dirname, '..', 'fixtures', 'page-content.js');

/** Checks every byte of `pages` through `view` (already mapped pages only: a registered unmapped page would fault on this thread). */
/**
 * What a test file opens, stopped and closed after each test: handlers first
 * (stop() wakes their faulters), then memfds and uffds, newest first.
 */
export function cleanupAfterEach(): { open: { close(): void }[]; handlers: FaultHandler[] } {
  const open: { close(): void }[] = [];
  const handlers: FaultHandler[] = [];
  afterEach(async () => {
    while (handlers.length) await handlers.pop()!.stop();
    while (open.length) open.pop()!.close();
  });
  return { open, handlers };
}

export function expectPages(view: Uint8Array, pages: Iterable<number>, seed = 0): void {
  for (const p of pages) {
    const got = Buffer.from(view.buffer, view.byteOffset + p * PAGE_SIZE, PAGE_SIZE);
    if (!got.equals(pageContent(p, seed))) expect.fail(`page ${p}: content differs from the source`);
  }
}

export function expectMemfdPages(mem: Memfd, pages: Iterable<number>, seed = 0): void {
  for (const p of pages) if (!mem.read(p * PAGE_SIZE, PAGE_SIZE).equals(pageContent(p, seed))) expect.fail(`memfd page ${p}: content differs`);
}

export const delay = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * The handler's stats once every fault it read is accounted for. The native
 * thread counts a resolution after its CONTINUE returned, and the woken
 * toucher may report back before that: wait (bounded) for the counters.
 */
export async function settledStats(handler: FaultHandler): Promise<FaultHandlerStats> {
  const deadline = Date.now() + scaled(5000);
  for (;;) {
    const s = handler.stats();
    if (s.resolved + s.untracked >= s.faults) return s;
    if (Date.now() > deadline) throw new Error(`handler stats never settled: ${JSON.stringify(s)}`);
    await delay(1);
  }
}

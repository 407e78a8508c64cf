// Shared plumbing of the FaultHandler tests: deterministic page content,
// shuffles, and byte-for-byte checks.
import { join } from 'node:path';
import { expect } from 'vitest';

import { Memfd, PAGE_SIZE } from '../../lib/index';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const shared = require('../fixtures/page-content.js') as {
  pageContent(page: number, seed?: number): Buffer;
  rng(seed: number): () => number;
  shuffled(n: number, random: () => number): number[];
};
export const { pageContent, rng, shuffled } = shared;
export const pageContentModule = join(__dirname, '..', 'fixtures', 'page-content.js');

/** Checks every byte of `pages` through `view` (already mapped pages only: a registered unmapped page would fault on this thread). */
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

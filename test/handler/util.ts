// Shared plumbing of the FaultHandler tests: deterministic page content,
// shuffles, and byte-for-byte checks.
import { expect } from 'vitest';

import { Memfd, PAGE_SIZE } from '../../lib/index';

/** The content page `page` must have: every byte depends on the page and its position. */
export function pageContent(page: number, seed = 0): Buffer {
  const b = Buffer.allocUnsafe(PAGE_SIZE);
  const words = new Uint32Array(b.buffer, b.byteOffset, PAGE_SIZE / 4);
  let x = (page * 2654435761 + seed * 97 + 1) >>> 0;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    words[i] = x;
  }
  return b;
}

/** A seeded PRNG (xorshift32) so a failing order can be replayed from its seed. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 0x100000000;
  };
}

export function shuffled(n: number, random: () => number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

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

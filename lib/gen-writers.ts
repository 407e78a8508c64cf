// Test writers for live snapshots: native threads writing pages of a mapping
// in one global order (native/gen_writers.cc), so that an image can be
// checked against exactly one instant.
import { check, closedError } from './errors';
import { Mapping } from './memfd';
import { GenWritersHandle, native } from './native';
import * as v from './validate';

/** @internal */
export interface GenWriters {
  /** [writes started, writes completed] right now. */
  progress(): { started: number; completed: number };
  /** Stops and joins the threads; the number of writes completed. Idempotent. */
  stop(): number;
}

/**
 * @internal
 * Write number `s` stores `[s / pages + 1, page]` (two u64, little-endian) at
 * the start of page `(s * stride) % pages`; one write at a time.
 */
export function startGenWriters(mapping: Mapping, threads: number, stride: number): GenWriters {
  v.instance('mapping', mapping, Mapping, 'a Mapping');
  if (mapping.closed) throw closedError('Mapping');
  const handle = native.genWritersStart(mapping.buffer, mapping.pageSize, v.integer('threads', threads, 1, 64), v.integer('stride', stride, 1));
  check(typeof handle === 'number' ? handle : 0, 'genWritersStart', { address: mapping.address, length: mapping.length });
  const h = handle as GenWritersHandle;
  return {
    progress() {
      const [started, completed] = native.genWritersProgress(h);
      return { started, completed };
    },
    stop: () => native.genWritersStop(h),
  };
}

/** @internal The write count `n` such that `image` (pages back to back) holds exactly the first n writes, or a reason it holds none. */
export function instantOf(image: Buffer, pages: number, pageSize: number, stride: number): number | string {
  const gen = (p: number): bigint => image.readBigUInt64LE(p * pageSize);
  // In write order, the pages written one more time than the rest come first.
  const order = Array.from({ length: pages }, (_, i) => Number((BigInt(i) * BigInt(stride)) % BigInt(pages)));
  for (const p of order) {
    const tag = image.readBigUInt64LE(p * pageSize + 8);
    if (gen(p) !== 0n && tag !== BigInt(p)) return `page ${p} holds page ${tag}'s tag`;
  }
  const base = gen(order[order.length - 1]);
  let i = 0;
  while (i < pages && gen(order[i]) === base + 1n) i++;
  for (let j = i; j < pages; j++)
    if (gen(order[j]) !== base) return `write order position ${j} (page ${order[j]}) holds generation ${gen(order[j])}, expected ${base} after ${i} pages at ${base + 1n}`;
  return Number(base) * pages + i;
}

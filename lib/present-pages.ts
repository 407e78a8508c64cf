// Which pages of a memfd already hold their content in the page cache. One
// bit per memfd page in a SharedArrayBuffer: the fault engine (and its native
// thread) reads the same memory with atomic loads, so a page marked here is
// mapped without a round trip through JavaScript. Shared memory cannot be
// detached or transferred away, so no JavaScript code can pull it from under
// a native reader. Bits are set with Atomics so that no read sees a torn word.
import { argRangeError } from './errors';
import * as v from './validate';

/**
 * The present-page bitmap of one memfd, plus the fetches in flight for it.
 * Several {@link FaultHandler}s serving views of the same memfd (a parent
 * process and its children, say) can share one instance: a page fetched by
 * one is then present for all, and a fetch in flight in one is awaited, not
 * repeated, by the others.
 */
export class PresentPages {
  /** Granularity: one bit per `pageSize` bytes of the memfd. */
  readonly pageSize: number;
  /** Number of pages tracked (the memfd size this map was made for). */
  readonly pageCount: number;
  /** @internal The bitmap words, shared with the fault engine. */
  readonly words: Uint32Array;
  readonly #words: Uint32Array;
  /** @internal Fetches in flight, by page index; settled promises are removed. */
  readonly inflight = new Map<number, Promise<void>>();

  /** A map for `size` bytes of memfd, all pages absent. */
  constructor(size: number, pageSize: number) {
    this.pageSize = v.integer('pageSize', pageSize, 1);
    v.pageLength('size', size, pageSize);
    this.pageCount = size / pageSize;
    // Whole 64-bit words, so that native code may also read 8 bytes at a time.
    this.words = new Uint32Array(new SharedArrayBuffer(Math.ceil(this.pageCount / 64) * 8));
    this.#words = this.words;
  }

  /** True when page `page` (an index, not a byte offset) is marked present. */
  has(page: number): boolean {
    return (this.#words[page >>> 5] & (1 << (page & 31))) !== 0;
  }

  /** Marks the pages covering [offset, offset + length) of the memfd present; returns how many were absent. */
  mark(offset: number, length: number): number {
    const [first, end] = this.#pages(offset, length);
    let added = 0;
    for (let p = first; p < end; p++) {
      const bit = 1 << (p & 31);
      if ((Atomics.or(this.#words, p >>> 5, bit) & bit) === 0) added++;
    }
    return added;
  }

  /** Marks the pages covering [offset, offset + length) absent (their content must be fetched again). */
  clear(offset: number, length: number): void {
    const [first, end] = this.#pages(offset, length);
    for (let p = first; p < end; p++) Atomics.and(this.#words, p >>> 5, ~(1 << (p & 31)));
  }

  /** @internal Single-page set, for the hot path (no range checks beyond the index). */
  markPage(page: number): void {
    Atomics.or(this.#words, page >>> 5, 1 << (page & 31));
  }

  /** @internal */
  clearPage(page: number): void {
    Atomics.and(this.#words, page >>> 5, ~(1 << (page & 31)));
  }

  /** Number of pages marked present. */
  count(): number {
    let n = 0;
    for (let i = 0; i < this.#words.length; i++) {
      let w = this.#words[i];
      while (w) {
        w &= w - 1;
        n++;
      }
    }
    return n;
  }

  #pages(offset: number, length: number): [number, number] {
    v.integer('offset', offset);
    v.integer('length', length);
    const first = Math.floor(offset / this.pageSize);
    const end = Math.ceil((offset + length) / this.pageSize);
    if (end > this.pageCount) throw argRangeError('length', `such that the range ends within the ${this.pageCount * this.pageSize} bytes tracked`, length);
    return [first, end];
  }
}

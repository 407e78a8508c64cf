// Which pages of a memfd already hold their content in the page cache. One
// bit per memfd page in a plain ArrayBuffer: the native resolver thread reads
// the same memory with atomic loads, so a page marked here is CONTINUEd
// without a round trip through JavaScript. Bits are set with Atomics so that
// a concurrent native read never sees a torn word.
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
  /** @internal The bitmap memory, shared with the native resolver. */
  readonly buffer: ArrayBuffer;
  readonly #words: Uint32Array;
  /** @internal Fetches in flight, by page index; settled promises are removed. */
  readonly inflight = new Map<number, Promise<void>>();

  /** A map for `size` bytes of memfd, all pages absent. */
  constructor(size: number, pageSize: number) {
    this.pageSize = v.integer('pageSize', pageSize, 1);
    v.pageLength('size', size, pageSize);
    this.pageCount = size / pageSize;
    // Whole 64-bit words, so that native code may also read 8 bytes at a time.
    this.buffer = new ArrayBuffer(Math.ceil(this.pageCount / 64) * 8);
    this.#words = new Uint32Array(this.buffer);
  }

  /** True when page `page` (an index, not a byte offset) is marked present. */
  has(page: number): boolean {
    return (this.#words[page >>> 5] & (1 << (page & 31))) !== 0;
  }

  /** Marks the pages covering [offset, offset + length) of the memfd present. */
  mark(offset: number, length: number): void {
    const [first, end] = this.#pages(offset, length);
    for (let p = first; p < end; p++) Atomics.or(this.#words, p >>> 5, 1 << (p & 31));
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

// Decoding of struct uffd_msg (32 bytes; layout pinned by static_asserts in
// native/uffd_abi.h). Reads go straight into a reusable ArrayBuffer; only the
// event objects the caller asked for are allocated.
import { EVENT, MSG_SIZE, PAGEFAULT_FLAG } from './constants';

/** A thread touched a registered page that needs resolving. */
export interface PagefaultEvent {
  type: 'pagefault';
  /** Faulting address, rounded down to the page unless the `exactAddress` feature is on. */
  address: number;
  /** Raw UFFD_PAGEFAULT_FLAG_* bits. */
  flags: number;
  /** A write access. */
  write: boolean;
  /** A write-protect fault (range registered WP). */
  wp: boolean;
  /** A MINOR fault: the page is in the page cache but not mapped here. Otherwise a MISSING fault. */
  minor: boolean;
  /** Faulting thread id (needs the `threadId` feature; 0 otherwise). */
  threadId: number;
}

/** The registered process forked; `uffd` owns the child's userfaultfd. */
export interface ForkEvent<U> {
  type: 'fork';
  uffd: U;
}

/** mremap moved a registered range. */
export interface RemapEvent {
  type: 'remap';
  from: number;
  to: number;
  length: number;
}

/** madvise(MADV_DONTNEED/MADV_REMOVE) dropped a registered range. */
export interface RemoveEvent {
  type: 'remove';
  start: number;
  end: number;
}

/** munmap (or the unmap half of mremap) removed a registered range. */
export interface UnmapEvent {
  type: 'unmap';
  start: number;
  end: number;
}

export type UffdEventOf<U> = PagefaultEvent | ForkEvent<U> | RemapEvent | RemoveEvent | UnmapEvent;

const WORDS = MSG_SIZE / 4;

/** Views over a message buffer of `capacity` messages. */
export class MessageBuffer {
  readonly buffer: ArrayBuffer;
  readonly words: Uint32Array;
  readonly bytes: Uint8Array;
  readonly capacity: number;

  constructor(capacity: number) {
    this.capacity = capacity;
    this.buffer = new ArrayBuffer(capacity * MSG_SIZE);
    this.words = new Uint32Array(this.buffer);
    this.bytes = new Uint8Array(this.buffer);
  }

  /** Event code of message `i`. */
  kind(i: number): number {
    return this.bytes[i * MSG_SIZE];
  }

  /** The 64-bit field at byte `offset` of message `i`, as a number (user addresses fit in 2^53). */
  u64(i: number, offset: number): number {
    const w = i * WORDS + offset / 4;
    return this.words[w] + this.words[w + 1] * 0x100000000;
  }

  u32(i: number, offset: number): number {
    return this.words[i * WORDS + offset / 4];
  }

  decode<U>(i: number, adoptForkFd: (fd: number) => U): UffdEventOf<U> {
    const kind = this.kind(i);
    switch (kind) {
      case EVENT.pagefault: {
        const flags = this.u64(i, 8);
        return {
          type: 'pagefault',
          address: this.u64(i, 16),
          flags,
          write: (flags & PAGEFAULT_FLAG.write) !== 0,
          wp: (flags & PAGEFAULT_FLAG.wp) !== 0,
          minor: (flags & PAGEFAULT_FLAG.minor) !== 0,
          threadId: this.u32(i, 24),
        };
      }
      case EVENT.fork:
        return { type: 'fork', uffd: adoptForkFd(this.u32(i, 8)) };
      case EVENT.remap:
        return { type: 'remap', from: this.u64(i, 8), to: this.u64(i, 16), length: this.u64(i, 24) };
      case EVENT.remove:
        return { type: 'remove', start: this.u64(i, 8), end: this.u64(i, 16) };
      case EVENT.unmap:
        return { type: 'unmap', start: this.u64(i, 8), end: this.u64(i, 16) };
      default:
        throw new Error(`userfaultfd: unknown event code 0x${kind.toString(16)} from the kernel`);
    }
  }
}

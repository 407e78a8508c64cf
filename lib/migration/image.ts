// Where a page source reads its pages from: a Buffer, a file, or a Memfd.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

import { argTypeError } from '../errors';
import { Memfd, PAGE_SIZE } from '../memfd';
import * as v from '../validate';

/** A memory image to serve: a Buffer, a path to a file, or a Memfd. */
export type ImageSource = Uint8Array | string | Memfd;

/** @internal Uniform read access to an image. */
export interface PageImage {
  readonly size: number;
  /** Bytes at [offset, offset+length); past the end reads as zeros. May share memory with the image. */
  read(offset: number, length: number): Uint8Array;
  /**
   * The same bytes for a caller that uses them at once (writes or copies
   * them before it reads again): they may live in a buffer the next peek
   * overwrites, so a page served from a file costs no allocation.
   */
  peek(offset: number, length: number): Uint8Array;
  /** The whole image, when it is memory at hand (a Buffer source): runs can be copied from it in one call. */
  readonly memory?: Uint8Array;
  close(): void;
}

/** A reader into fresh buffers (read) or one scratch buffer reused (peek). */
function bufferedImage(size: number, fill: (offset: number, out: Uint8Array) => number, close: () => void): PageImage {
  let scratch = Buffer.alloc(0);
  const into = (offset: number, out: Uint8Array): Uint8Array => {
    const done = fill(offset, out);
    // Past the end reads as zeros.
    if (done < out.length) out.fill(0, done);
    return out;
  };
  return {
    size,
    read: (offset, length) => into(offset, Buffer.allocUnsafe(length)),
    peek: (offset, length) => {
      if (scratch.length < length) scratch = Buffer.allocUnsafe(length);
      return into(offset, scratch.subarray(0, length));
    },
    close,
  };
}

/** @internal */
export function openImage(source: ImageSource): PageImage {
  if (source instanceof Memfd) {
    const mem = source;
    return bufferedImage(mem.size, (offset, out) => {
      const length = Math.max(0, Math.min(out.length, mem.size - offset));
      if (length > 0) mem.read(offset, out.subarray(0, length));
      return length;
    }, () => {});
  }
  if (typeof source === 'string') {
    const fd = openSync(source, 'r');
    return bufferedImage(fstatSync(fd).size, (offset, out) => {
      let done = 0;
      while (done < out.length) {
        const n = readSync(fd, out, done, out.length - done, offset + done);
        if (n === 0) break;
        done += n;
      }
      return done;
    }, () => closeSync(fd));
  }
  if (ArrayBuffer.isView(source)) {
    const bytes = v.bytes('image', source);
    const read = (offset: number, length: number): Uint8Array => {
      if (offset + length <= bytes.byteLength) return bytes.subarray(offset, offset + length);
      const out = new Uint8Array(length);
      if (offset < bytes.byteLength) out.set(bytes.subarray(offset));
      return out;
    };
    return {
      size: bytes.byteLength,
      read,
      peek: read,
      memory: bytes,
      close: () => {},
    };
  }
  throw argTypeError('image', 'a Buffer, a file path or a Memfd', source);
}

/** @internal The page size a source uses unless told otherwise. */
export const DEFAULT_PAGE_SIZE = PAGE_SIZE;

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
  close(): void;
}

/** @internal */
export function openImage(source: ImageSource): PageImage {
  if (source instanceof Memfd) {
    const mem = source;
    return {
      size: mem.size,
      read: (offset, length) => {
        const out = Buffer.alloc(length);
        mem.read(offset, out);
        return out;
      },
      close: () => {},
    };
  }
  if (typeof source === 'string') {
    const fd = openSync(source, 'r');
    const size = fstatSync(fd).size;
    return {
      size,
      read: (offset, length) => {
        const out = Buffer.alloc(length);
        let done = 0;
        while (done < length) {
          const n = readSync(fd, out, done, length - done, offset + done);
          if (n === 0) break;
          done += n;
        }
        return out;
      },
      close: () => closeSync(fd),
    };
  }
  if (ArrayBuffer.isView(source)) {
    const bytes = v.bytes('image', source);
    return {
      size: bytes.byteLength,
      read: (offset, length) => {
        if (offset + length <= bytes.byteLength) return bytes.subarray(offset, offset + length);
        const out = new Uint8Array(length);
        if (offset < bytes.byteLength) out.set(bytes.subarray(offset));
        return out;
      },
      close: () => {},
    };
  }
  throw argTypeError('image', 'a Buffer, a file path or a Memfd', source);
}

/** @internal The page size a source uses unless told otherwise. */
export const DEFAULT_PAGE_SIZE = PAGE_SIZE;

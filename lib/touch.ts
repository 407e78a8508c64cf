import { trace } from './debug';
import { check, closedError } from './errors';
import { Mapping } from './memfd';
import { TouchReport, native } from './native';
import * as v from './validate';

/** Options of {@link touchPages}. */
export interface TouchOptions {
  /** Write this byte value to the first byte of each page instead of reading it. */
  write?: number;
  /** Pin the touching thread to this CPU. */
  cpu?: number;
}

/** What a native toucher thread saw. */
export interface TouchResult {
  /** Kernel thread id of the toucher (what a pagefault event's `threadId` reports). */
  threadId: number;
  /** Nanoseconds each touch took, in the order of `pages` (the fault's whole cost as the toucher sees it). */
  latencyNs: Float64Array;
  /** Sum of the first byte of each page read (reads only). */
  checksum: number;
}

/**
 * Touches pages of a mapping from a new native thread (not the event loop),
 * timing each first touch. `pages` are page indexes within the mapping. The
 * mapping cannot be unmapped until the toucher has finished (EBUSY).
 */
export function touchPages(mapping: Mapping, pages: ArrayLike<number>, options?: TouchOptions): Promise<TouchResult> {
  v.instance('mapping', mapping, Mapping, 'a Mapping');
  if (mapping.closed) throw closedError('Mapping');
  const opts = v.options<TouchOptions>('options', options);
  const list = v.pageIndexes('pages', pages, mapping.length / mapping.pageSize);
  const writeValue = opts.write === undefined ? -1 : v.integer('options.write', opts.write, 0, 255);
  const cpu = opts.cpu === undefined ? -1 : v.integer('options.cpu', opts.cpu, 0, 1023);
  return new Promise<TouchResult>((resolve) => {
    check(native.touchStart(mapping.buffer, mapping.pageSize, list, writeValue, cpu, (report: TouchReport) => resolve(report)),
      'touch', { address: mapping.address, length: mapping.length, hint: 'the mapping must be live and created in this thread' });
    trace('toucher started on %d pages of 0x%s', list.length, mapping.address.toString(16));
  });
}

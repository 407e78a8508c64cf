// snapshotLive: an image of memory at one instant while writers keep
// running (QEMU's background snapshot, on userfaultfd write-protect). The
// native side (native/snapshot.cc) protects every page, then a copier thread
// saves the pages while the wp-sync reader thread saves first any page a
// writer faults on, then lets that writer go on. See docs/snapshot.md.
import { closeSync, constants as fsConstants, fstatSync, ftruncateSync, openSync, unlinkSync } from 'node:fs';
import { dirname } from 'node:path';
import { release } from 'node:os';

import { checkOverlap, checkViews, openOwnUffd, trackedView } from './dirty-tracker';
import { DIRTY_METHOD_SINCE, dirtyMethods } from './dirty-methods';
import { abortError, argTypeError, argValueError, stateError, UffdError } from './errors';
import { trace } from './debug';
import { Mapping } from './memfd';
import { SnapshotHandle, native } from './native';
import type { Userfaultfd } from './userfaultfd';
import * as v from './validate';

/** Options of {@link snapshotLive}. */
export interface SnapshotOptions {
  /**
   * Aborting stops the copy: every page is un-protected (no writer is left
   * waiting), the file is removed and the promise rejects with an
   * `AbortError` (`code` `'ABORT_ERR'`).
   */
  signal?: AbortSignal;
}

/** What a live snapshot did. */
export interface SnapshotStats {
  /** Pages saved (all pages of all views). */
  pages: number;
  /** Bytes written to the file. */
  bytes: number;
  /** Pages a writer faulted on before the copier reached them: saved first, then the writer was woken. */
  savedByFault: number;
  /** Write-protect faults answered (a fault on a page the copier had just saved counts here, not in savedByFault). */
  writeFaults: number;
  /** The protect pass: the image is memory at its end; a write to an already protected page waited for it. */
  protectMs: number;
  /** From the end of the protect pass to the last page saved. */
  copyMs: number;
  /** From the call to the promise's result, file closed. */
  durationMs: number;
  /** Sum over faults of how long each waited for the reader thread (from its read of the fault to the wake). */
  blockedTotalMs: number;
  /** The longest such wait. */
  blockedMaxMs: number;
}

const STATS = native.snapshotLayout;

/**
 * Saves `views` (Mappings of this process, back to back in order) to `file`
 * as they are at one instant, while other threads keep writing them.
 *
 * Every page is write-protected before this call returns (the promise is the
 * copy): the file will hold memory as it was at the end of that protect pass.
 * Writers go on at once; a writer's first write to a page not yet saved waits
 * until a native thread has saved that page (the JavaScript thread's own
 * writes included: it is never the one that must answer). Writes through
 * another mapping of the same memfd, or by `pwrite(2)` to it, are not seen
 * and may appear in the image.
 *
 * Needs synchronous userfaultfd write-protect of shared memory (Linux 5.19+):
 * without it the promise rejects with `ERR_UFFD_SNAPSHOT_UNSUPPORTED`. The
 * views must not be registered with another userfaultfd, and stay pinned
 * (unmapping them is refused with EBUSY) until the promise settles. On any
 * failure or abort every page is un-protected and the file is removed.
 *
 * ```ts
 * const stats = await snapshotLive([view], '/var/tmp/guest.img', { signal });
 * ```
 */
export function snapshotLive(views: readonly Mapping[], file: string, options?: SnapshotOptions): Promise<SnapshotStats> {
  try {
    return start(views, file, options);
  } catch (err) {
    return Promise.reject(err);
  }
}

function start(views: readonly Mapping[], file: string, options?: SnapshotOptions): Promise<SnapshotStats> {
  const list = checkViews(views);
  list.forEach((view, i) => {
    if (!(view instanceof Mapping)) throw argTypeError(`views[${i}]`, 'a Mapping of this process', view);
  });
  const path = v.nonEmptyString('file', file);
  const opts = v.options<SnapshotOptions>('options', options);
  const signal = opts.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw argTypeError('options.signal', 'an AbortSignal', signal);
  const pageSize = (list[0] as Mapping).pageSize;
  let firstPage = 0;
  const tracked = list.map((view, i) => {
    const entry = trackedView(view, i, pageSize, process.pid, firstPage);
    firstPage += entry.pages;
    return entry;
  });
  checkOverlap(tracked);
  const support = dirtyMethods()['wp-sync'];
  if (!support.available) throw unsupportedError(support.reason);
  if (signal?.aborted) throw abortError('snapshotLive() was aborted before it started', signal.reason);

  const fd = openFile(path);
  let uffd: Userfaultfd | undefined;
  let handle: SnapshotHandle | undefined;
  const begun = process.hrtime.bigint();
  try {
    ftruncateSync(fd, firstPage * pageSize);
    uffd = openOwnUffd('wp-sync');
    for (const view of tracked) {
      try {
        uffd.register(view.mapping!, { wp: true });
      } catch (err) {
        if ((err as UffdError).code === 'EBUSY')
          (err as Error).message += ': the view is registered with another userfaultfd (a FaultHandler, a DirtyTracker): a snapshot needs it alone';
        throw err;
      }
    }
    const regions = new Float64Array(tracked.flatMap((view) => [view.address, view.length, view.firstPage]));
    let settle: (error: number, stats: Float64Array | undefined) => void = () => {};
    const onAbort = (): void => settle(-1, undefined);
    const result = new Promise<SnapshotStats>((resolve, reject) => {
      let settled = false;
      settle = (error, stats) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        // Joins the copier and the reader after lifting every protection.
        if (handle) native.snapshotStop(handle);
        uffd!.close();
        closeSync(fd);
        if (error === 0 && stats) {
          trace('snapshot of %d pages to %s done', stats[STATS.pages], path);
          resolve(statsOf(stats, begun));
          return;
        }
        removeQuietly(path);
        if (error === -1) reject(abortError('snapshotLive() was aborted; the file was removed', signal?.reason));
        else reject(new UffdError(error, 'pwrite', { path, hint: 'saving the snapshot; every page was un-protected and the file removed' }));
      };
    });
    const started = native.snapshotStart(uffd.fd, pageSize, regions, fd, (error, stats) => settle(error, stats));
    if (typeof started === 'number')
      throw new UffdError(started, 'ioctl', { operation: 'UFFDIO_WRITEPROTECT', fd: uffd.fd, hint: 'protecting the views for the snapshot' });
    handle = started;
    signal?.addEventListener('abort', onAbort, { once: true });
    trace('snapshot of %d views, %d pages to %s: protected', tracked.length, firstPage, path);
    return result;
  } catch (err) {
    uffd?.close();
    closeSync(fd);
    removeQuietly(path);
    throw err;
  }
}

function openFile(path: string): number {
  let fd: number;
  try {
    // Not O_TRUNC yet: a device must be refused untouched (a failed snapshot
    // removes its file). Not O_APPEND either: pages go to their offsets.
    fd = openSync(path, fsConstants.O_WRONLY | fsConstants.O_CREAT, 0o600);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = e.code === 'ENOENT' ? `the directory ${dirname(path)} does not exist` : 'creating the snapshot file';
    throw new UffdError(e.errno ?? -5, 'open', { path, hint });
  }
  if (!fstatSync(fd).isFile()) {
    closeSync(fd);
    throw argValueError('file', 'must name a regular file (or none yet)', path);
  }
  ftruncateSync(fd, 0);
  return fd;
}

function removeQuietly(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // already gone, or never created
  }
}

function statsOf(stats: Float64Array, begun: bigint): SnapshotStats {
  return {
    pages: stats[STATS.pages],
    bytes: stats[STATS.bytes],
    savedByFault: stats[STATS.savedByFault],
    writeFaults: stats[STATS.writeFaults],
    protectMs: stats[STATS.protectNs] / 1e6,
    copyMs: stats[STATS.copyNs] / 1e6,
    durationMs: Number(process.hrtime.bigint() - begun) / 1e6,
    blockedTotalMs: stats[STATS.blockedTotalNs] / 1e6,
    blockedMaxMs: stats[STATS.blockedMaxNs] / 1e6,
  };
}

function unsupportedError(reason: string | undefined): Error {
  return Object.assign(stateError('ERR_UFFD_SNAPSHOT_UNSUPPORTED',
    `Live snapshot needs synchronous userfaultfd write-protect of shared memory, Linux ${DIRTY_METHOD_SINCE['wp-sync']} or later: ${reason ?? `this kernel is ${release()}`}`), { needs: DIRTY_METHOD_SINCE['wp-sync'] });
}

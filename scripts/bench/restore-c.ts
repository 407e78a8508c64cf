// Drives the C reference page server (native/bench/restore.cc) through one
// restore of a guest whose uffd the benchmark holds: start (the listed
// pages first), let the guest go, stop, and turn its counters into one
// repetition's figures.
import { closeSync } from 'node:fs';

import { bench, unwrap } from './native';
import type { RestoreRep } from './restore';
import { Guest, finishRep } from './restore-process';

export interface CRestoreOptions {
  pageSize: number;
  /** 'continue': a memfd view (memfdFd is the guest's memfd); 'copy': anonymous memory (memfdFd -1). */
  fill: 'continue' | 'copy';
  memfdFd: number;
  /** The image: the C reference maps it (and fills its page tables) before the clock starts. */
  imageFd: number;
  /** Pages to copy and map before the guest goes (empty: on demand only). */
  prefetch: Uint32Array;
  expectedDigest: string;
  traceLength: number;
}

export async function cRestore(guest: Guest, o: CRestoreOptions): Promise<RestoreRep> {
  let started;
  try {
    started = unwrap(bench.cRestoreStart(guest.uffdFd, guest.address, guest.length, o.pageSize, o.memfdFd, o.imageFd, o.prefetch, o.fill));
  } finally {
    // The C reference holds its own duplicate.
    closeSync(guest.uffdFd);
  }
  try {
    const goAt = bench.now();
    const done = await guest.go();
    const counts = bench.cRestoreStop(started.handle);
    await guest.finish();
    const notes = [counts.error ? `handler errno ${-counts.error}` : '', counts.prefetchError ? `prefetch errno ${-counts.prefetchError}` : ''].filter(Boolean).join('; ');
    return finishRep(done, started.startNs, goAt, o.expectedDigest, o.traceLength, {
      faults: counts.messages, demandFetches: counts.fetched, prefetched: counts.prefetched, bytesMoved: counts.bytesMoved,
      resolvedAll: !counts.error && !counts.prefetchError && counts.resolved + counts.existed >= counts.messages, note: notes || undefined,
    });
  } finally {
    bench.cRestoreStop(started.handle);
  }
}

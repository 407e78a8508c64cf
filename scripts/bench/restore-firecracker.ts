// The restore benchmark's one-fd rows: Firecracker's one-fd backend, a
// guest whose memory is private anonymous memory registered MISSING, its
// faults filled by UFFDIO_COPY from the snapshot image: both page servers
// read it from a mapping filled beforehand (the library's is the image's
// own, the C reference maps the snapshot file). The library's
// FirecrackerPageServer gets the guest's uffd as Firecracker hands it over
// (a connection to its socket, the region message with the uffd attached);
// the C reference (native/bench/restore.cc, copy mode) gets it over the
// guest's socket. The library's clock starts when the guest hands its uffd
// over, so its session start (connection, handshake, engine) is in its
// time; the C reference's when it starts serving, its image mapped and its
// page tables filled beforehand, as in the memfd rows. A replay copies the
// recorded runs (COPY with DONTWAKE, one wake) before the guest goes, as
// the memfd rows' replay does.
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';

import { FirecrackerPageServer, FirecrackerSession, FirecrackerStats, Memfd, PAGE_SIZE } from '../../lib/index';
import type { ReplaySet } from '../../lib/working-set/replay';
import { bench } from './native';
import type { Recording, RestoreEnv, RestoreMode, RestoreRep } from './restore';
import { cRestore } from './restore-c';
import { GUEST_TIMEOUT_MS, Guest, finishRep, startGuest, withTimeout } from './restore-process';
import type { TraceSpec } from './restore-trace';

let sessions = 0;

export async function oneFdRestore(mode: RestoreMode, env: RestoreEnv, spec: TraceSpec, expectedDigest: string, recording: Recording | undefined): Promise<RestoreRep> {
  const guest = await startGuest({ anonymous: env.image.size }, spec);
  try {
    if (mode.startsWith('c-')) {
      await guest.handOff('socket');
      const imageFd = openSync(env.imageFile, 'r');
      try {
        return await cRestore(guest, {
          pageSize: PAGE_SIZE, fill: 'copy', memfdFd: -1, imageFd, prefetch: recording?.pages ?? new Uint32Array(0),
          expectedDigest, traceLength: env.trace.order.length,
        });
      } finally {
        closeSync(imageFd);
      }
    }
    return await libraryFirecracker(mode, env, guest, expectedDigest, recording);
  } finally {
    guest.kill();
  }
}

/**
 * Firecracker's three-fd (guest_memfd) backend: the guest's memory fd,
 * allocated (so every first touch is a MINOR fault) and registered MINOR,
 * handed over with a userfault bitmap; the library's page server writes
 * each page into the memory fd, clears its bit and CONTINUEs. Library rows
 * only: the memfd rows' C reference is the same MINOR restore.
 */
export async function threeFdRestore(mode: RestoreMode, env: RestoreEnv, spec: TraceSpec, expectedDigest: string, recording: Recording | undefined): Promise<RestoreRep> {
  const mem = Memfd.create(env.image.size, { name: 'restore-guest-memfd', allocate: true });
  let guest: Guest | undefined;
  try {
    guest = await startGuest(mem, spec, { threeFd: true });
    return await libraryFirecracker(mode, env, guest, expectedDigest, recording);
  } finally {
    guest?.kill();
    mem.close();
  }
}

/** A set of every page of the image, in address order: replayed, an eager copy in runs. */
function everyPage(bytes: number): ReplaySet {
  return { pageSize: PAGE_SIZE, memorySize: bytes, entries: Array.from({ length: bytes / PAGE_SIZE }, (_, page) => ({ page })) };
}

async function libraryFirecracker(mode: RestoreMode, env: RestoreEnv, guest: Guest, expectedDigest: string, recording: Recording | undefined): Promise<RestoreRep> {
  const eager = mode === 'fc-eager';
  const replay = eager ? everyPage(env.image.size) : recording?.file;
  const server = FirecrackerPageServer.listen(join(env.dir, `fc-${sessions++}.sock`), {
    // The image as memory mapped and filled beforehand, as the C reference has it (a path would add a pread per page).
    snapshot: new Uint8Array(env.imageView.buffer), ...(replay ? { workingSet: { replay, start: 'now' as const } } : {}),
  });
  let session: FirecrackerSession | undefined;
  try {
    const t0 = await guest.handOff(server.path);
    session = await server.accept({ signal: AbortSignal.timeout(GUEST_TIMEOUT_MS) });
    server.close();
    if (replay) {
      if (!session.stats.workingSet) throw new Error('the page server ignored the working set');
      await withTimeout(session.replayFinished, GUEST_TIMEOUT_MS, 'one-fd replay', () => session!.close());
    }
    const goAt = bench.now();
    const done = await guest.go();
    // The session ends when the guest closes its connection: then every counter is final.
    await guest.finish();
    const stats: FirecrackerStats = await withTimeout(session.finished, 10_000, 'one-fd session end', () => session!.close());
    const prefetched = stats.workingSet?.replay.prefetched ?? 0;
    const demandFetches = stats.pagesFromSnapshot - prefetched;
    return finishRep(done, t0, goAt, expectedDigest, env.trace.order.length, {
      faults: stats.faults, demandFetches, prefetched, bytesMoved: stats.pagesFromSnapshot * PAGE_SIZE,
      // Each fault was filled (COPY) or found its page there (EEXIST, woken); a failure would have rejected `finished`.
      resolvedAll: demandFetches + stats.alreadyMapped >= stats.faults && stats.zeroPages === 0,
      ...(stats.workingSet && stats.workingSet.replay.leftToFaults ? { note: `${stats.workingSet.replay.leftToFaults} replayed pages left to faults` } : {}),
    });
  } finally {
    session?.close();
    server.close();
  }
}

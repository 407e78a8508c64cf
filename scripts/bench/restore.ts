// The restore benchmark's scenarios (npm run bench:restore): one restore of
// a snapshot image into a fresh guest process per repetition, served by the
// library or by the C reference (native/bench/restore.cc), timed from the
// moment the page server starts to the moment the guest's touchers are done
// (one clock, CLOCK_MONOTONIC, read in both processes). Each repetition
// checks the guest's digest of every page it touched against the image.
// The memfd rows are here; the one-fd rows in restore-firecracker.ts, the
// migration rows in restore-migration.ts, the C reference's driver in
// restore-c.ts, the guest process in restore-process.ts.
import { join } from 'node:path';

import { Fault, FaultHandler, Memfd, Mapping, PAGE_SIZE, PrefetchSource, Userfaultfd } from '../../lib/index';
import { WorkingSetRecorder, readWorkingSet } from '../../lib/working-set';
import { bench } from './native';
import { cRestore } from './restore-c';
import { oneFdRestore, threeFdRestore } from './restore-firecracker';
import { migrationRestore } from './restore-migration';
import { Guest, finishRep, startGuest } from './restore-process';
import { Trace, TraceSpec } from './restore-trace';

export type RestoreMode =
  | 'floor'
  | 'eager'
  | 'on-demand'
  | 'on-demand+record'
  | 'replay'
  | 'replay-varying'
  | 'replay-mismatch'
  | 'replay-concurrent'
  | 'c-on-demand'
  | 'c-replay'
  | 'c-replay-varying'
  | 'c-fc-on-demand'
  | 'fc-on-demand'
  | 'c-fc-replay'
  | 'fc-replay'
  | 'c-fc-replay-varying'
  | 'fc-replay-varying'
  | 'fc-eager'
  | 'fc3-on-demand'
  | 'fc3-replay'
  | 'mig-on-demand'
  | 'mig-replay'
  | 'mig-replay-varying';

export const RESTORE_MODES: RestoreMode[] = [
  'floor', 'c-on-demand', 'on-demand', 'on-demand+record', 'c-replay', 'replay', 'c-replay-varying', 'replay-varying', 'replay-mismatch', 'replay-concurrent', 'eager',
  'c-fc-on-demand', 'fc-on-demand', 'c-fc-replay', 'fc-replay', 'c-fc-replay-varying', 'fc-replay-varying', 'fc-eager',
  'fc3-on-demand', 'fc3-replay',
  'mig-on-demand', 'mig-replay', 'mig-replay-varying',
];

/**
 * The guest's memory and who serves it: `memfd`, a MISSING|MINOR memfd view
 * (the kind of memory of Firecracker's three-fd backend) served by a
 * FaultHandler;
 * `one-fd`, anonymous memory registered MISSING served by the
 * FirecrackerPageServer with UFFDIO_COPY (Firecracker's one-fd backend);
 * `three-fd`, a memfd view registered MINOR with a userfault bitmap, served
 * by the FirecrackerPageServer (Firecracker's guest_memfd backend);
 * `migration`, a memfd view served by a MigrationDestination from a
 * MigrationSource over TCP on loopback.
 */
export type RestoreGroup = 'memfd' | 'one-fd' | 'three-fd' | 'migration';
export const RESTORE_GROUP: Record<RestoreMode, RestoreGroup> = {
  floor: 'memfd', eager: 'memfd', 'on-demand': 'memfd', 'on-demand+record': 'memfd', replay: 'memfd', 'replay-varying': 'memfd', 'replay-mismatch': 'memfd',
  'replay-concurrent': 'memfd', 'c-on-demand': 'memfd', 'c-replay': 'memfd', 'c-replay-varying': 'memfd',
  'c-fc-on-demand': 'one-fd', 'fc-on-demand': 'one-fd', 'c-fc-replay': 'one-fd', 'fc-replay': 'one-fd', 'c-fc-replay-varying': 'one-fd', 'fc-replay-varying': 'one-fd', 'fc-eager': 'one-fd',
  'fc3-on-demand': 'three-fd', 'fc3-replay': 'three-fd',
  'mig-on-demand': 'migration', 'mig-replay': 'migration', 'mig-replay-varying': 'migration',
};

/** Rows that make every page of the image present before the guest goes. */
export const EAGER_MODES: RestoreMode[] = ['eager', 'fc-eager'];

export const RESTORE_LABEL: Record<RestoreMode, string> = {
  floor: 'floor, no userfaultfd (the image already in the guest\'s memfd: ordinary faults)',
  eager: 'library, eager copy of the whole image',
  'on-demand': 'library, on demand',
  'on-demand+record': 'library, on demand, recording',
  replay: 'library, replay (matching recording)',
  'replay-varying': 'library, replay (recording of another run)',
  'replay-mismatch': 'library, replay while the guest runs (recording of another program)',
  'replay-concurrent': 'library, replay while the guest runs (matching recording)',
  'c-on-demand': 'C reference, on demand',
  'c-replay': 'C reference, replay (matching recording)',
  'c-replay-varying': 'C reference, replay (recording of another run)',
  'c-fc-on-demand': 'C reference one-fd, on demand',
  'fc-on-demand': 'library one-fd, on demand',
  'c-fc-replay': 'C reference one-fd, replay (matching recording)',
  'fc-replay': 'library one-fd, replay (matching recording)',
  'c-fc-replay-varying': 'C reference one-fd, replay (recording of another run)',
  'fc-replay-varying': 'library one-fd, replay (recording of another run)',
  'fc-eager': 'library one-fd, eager copy (replay of a set of every page)',
  'fc3-on-demand': 'library three-fd, on demand',
  'fc3-replay': 'library three-fd, replay (matching recording)',
  'mig-on-demand': 'migration over loopback, on demand',
  'mig-replay': 'migration over loopback, replay while the guest runs (matching recording)',
  'mig-replay-varying': 'migration over loopback, replay while the guest runs (recording of another run)',
};

/** Which recording a replay row replays. */
export type RecordingName = 'match' | 'varying' | 'mismatch';
export const RECORDING_OF: Partial<Record<RestoreMode, RecordingName>> = {
  replay: 'match', 'replay-varying': 'varying', 'replay-mismatch': 'mismatch', 'replay-concurrent': 'match', 'c-replay': 'match', 'c-replay-varying': 'varying',
  'c-fc-replay': 'match', 'fc-replay': 'match', 'c-fc-replay-varying': 'varying', 'fc-replay-varying': 'varying',
  'mig-replay': 'match', 'mig-replay-varying': 'varying', 'fc3-replay': 'match',
};

/** A recording of an earlier restore: the pages in the order they were first needed. */
export interface Recording {
  name: RecordingName;
  /** The trace it was recorded from. */
  spec: TraceSpec;
  pages: Uint32Array;
  /** The file the library replays (written by its WorkingSetRecorder). */
  file: string;
}

/** One restore. */
export interface RestoreRep {
  /** Page server start to guest done, ns. */
  timeNs: number;
  /** The guest's touch phase alone. */
  guestNs: number;
  /** Page server start until the guest was told to go (prefetch or eager copy before resuming). */
  beforeGoNs: number;
  /** Pagefault messages the page server read. */
  faults: number;
  /** Pages copied because a fault asked for them. */
  demandFetches: number;
  /** Pages copied ahead of any fault (prefetch, eager copy). */
  prefetched: number;
  bytesMoved: number;
  touched: number;
  digestOk: boolean;
  /** Every page touched, digest right, every fault answered, no handler error. */
  allResolved: boolean;
  note?: string;
}

/** What the benchmark shares across repetitions. */
export interface RestoreEnv {
  image: Memfd;
  imageView: Mapping;
  spec: TraceSpec;
  trace: Trace;
  /** Digest of the trace's pages of the image. */
  expectedDigest: string;
  recordings: Map<RecordingName, Recording>;
  /** Library capabilities that may not exist yet. */
  caps: LibraryRestoreCaps;
  /** Library handler mode of every library row. */
  handlerMode: 'event-loop' | 'native';
  /** Where recordings go. */
  dir: string;
  /** The image as a snapshot file (in `dir`): what the one-fd rows serve from. */
  imageFile: string;
  /** The port of the migration source serving the image on 127.0.0.1 (a process of its own). */
  sourcePort: number;
}

/** Whether this library replays working sets (FaultHandler workingSet.replay). */
export type LibraryRestoreCaps = { replay: true } | { replay: false; reason: string };

/**
 * Whether this library replays a working set. A FaultHandler that knows
 * `workingSet.replay` reports the replay's counters in its stats; one that
 * does not ignores the option, and would serve a "replay" row on demand
 * only: such rows then say "not available" instead.
 */
export function probeRestoreLibrary(): LibraryRestoreCaps {
  const mem = Memfd.create(PAGE_SIZE, { name: 'restore-probe' });
  const uffd = Userfaultfd.open({ features: ['minorShmem'] });
  try {
    const handler = new FaultHandler(uffd, {
      memfd: mem, fetch: () => undefined,
      workingSet: { replay: { pageSize: PAGE_SIZE, memorySize: PAGE_SIZE, entries: [{ page: 0 }] } },
    } as ConstructorParameters<typeof FaultHandler>[1]);
    const known = handler.stats().workingSet !== undefined;
    return known ? { replay: true } : { replay: false, reason: 'this library has no working-set replay (FaultHandler workingSet.replay)' };
  } catch (err) {
    return { replay: false, reason: `FaultHandler refused workingSet.replay: ${(err as Error).message}` };
  } finally {
    uffd.close();
    mem.close();
  }
}

/** The error of a row the library cannot run yet starts so. */
export const NOT_AVAILABLE = 'not available: ';

/** An image of random bytes (a memfd), `pages` pages. */
export function randomImage(bytes: number): { image: Memfd; view: Mapping } {
  const image = Memfd.create(bytes, { name: 'restore-image' });
  const view = image.map();
  // crypto would take seconds per GiB; the content only has to be incompressible and position-dependent.
  const words = new Uint32Array(view.buffer);
  let s = 0x12345678;
  for (let i = 0; i < words.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    words[i] = s >>> 0;
  }
  return { image, view };
}

/** Precision and recall of a recording as a prefetch list for a trace. */
export function prefetchQuality(recorded: Uint32Array, touched: Uint32Array): { precision: number; recall: number } {
  const want = new Set(touched);
  const seen = new Set<number>();
  let hit = 0;
  for (const p of recorded) {
    if (seen.has(p)) continue;
    seen.add(p);
    if (want.has(p)) hit++;
  }
  return { precision: seen.size ? hit / seen.size : 0, recall: want.size ? hit / want.size : 0 };
}

/**
 * One restore of `mode` with the trace `spec` (the benchmark's, or another
 * one when recording). `record`: record with the library's recorder into
 * that file.
 */
export async function runRestore(mode: RestoreMode, env: RestoreEnv, opts: { spec?: TraceSpec; expectedDigest?: string; recordTo?: string } = {}): Promise<RestoreRep> {
  const spec = opts.spec ?? env.spec;
  const expectedDigest = opts.expectedDigest ?? env.expectedDigest;
  const rec = RECORDING_OF[mode];
  const recording = rec ? env.recordings.get(rec) : undefined;
  if (rec && !recording) throw new Error(`no ${rec} recording`);
  if (RESTORE_GROUP[mode] === 'one-fd') return oneFdRestore(mode, env, spec, expectedDigest, recording);
  if (RESTORE_GROUP[mode] === 'three-fd') return threeFdRestore(mode, env, spec, expectedDigest, recording);
  const size = env.image.size;
  const mem = Memfd.create(size, { name: 'restore-guest' });
  let guest: Guest | undefined;
  try {
    if (mode === 'floor') return await floorRestore(env, mem, spec, expectedDigest);
    guest = await startGuest(mem, spec);
    if (RESTORE_GROUP[mode] === 'migration') return await migrationRestore(env, mem, guest, expectedDigest, recording);
    if (mode.startsWith('c-')) {
      return await cRestore(guest, {
        pageSize: mem.pageSize, fill: 'continue', memfdFd: mem.fd, imageFd: env.image.fd, prefetch: recording?.pages ?? new Uint32Array(0),
        expectedDigest, traceLength: env.trace.order.length,
      });
    }
    return await libraryRestore(mode, env, mem, guest, expectedDigest, opts);
  } finally {
    guest?.kill();
    mem.close();
  }
}

/**
 * The floor: no page server and no userfaultfd; the image is in the guest's
 * memfd before the guest starts (not timed), so each first touch is an
 * ordinary page fault that maps a page already in the page cache. Its time
 * is the guest's alone: what touching the trace costs on this machine when
 * nothing has to arrive.
 */
async function floorRestore(env: RestoreEnv, mem: Memfd, spec: TraceSpec, expectedDigest: string): Promise<RestoreRep> {
  mem.write(0, new Uint8Array(env.imageView.buffer));
  const guest = await startGuest(mem, spec, { register: false });
  try {
    const goAt = bench.now();
    const done = await guest.go();
    await guest.finish();
    return finishRep(done, goAt, goAt, expectedDigest, env.trace.order.length, { faults: 0, demandFetches: 0, prefetched: 0, bytesMoved: 0, resolvedAll: true });
  } finally {
    guest.kill();
  }
}

const CONCURRENT: RestoreMode[] = ['replay-concurrent', 'replay-mismatch'];

async function libraryRestore(mode: RestoreMode, env: RestoreEnv, mem: Memfd, guest: Guest, expectedDigest: string,
  opts: { recordTo?: string }): Promise<RestoreRep> {
  const uffd = Userfaultfd.fromFd(guest.uffdFd);
  const image = new Uint8Array(env.imageView.buffer);
  const pageSize = mem.pageSize;
  let fetches = 0;
  const fetch = (fault: Fault) => {
    fetches++;
    mem.write(fault.offset, image.subarray(fault.offset, fault.offset + pageSize));
  };
  const rec = RECORDING_OF[mode];
  let prefetch: PrefetchSource | undefined;
  if (rec) {
    if (!env.caps.replay) throw new Error(`${NOT_AVAILABLE}${env.caps.reason}`);
    const file = env.recordings.get(rec)?.file;
    if (!file) throw new Error(`no ${rec} recording file`);
    // The content is a local image, so the replay copies whole runs from its
    // file on native threads (one copy and one CONTINUE per run, as the C
    // reference does) instead of calling fetch per page; replayed from the
    // start, as a restore that resumes the guest at once.
    prefetch = {
      pages: readWorkingSet(file).entries.map((e) => e.page),
      file: { fd: env.image.fd },
      start: 'now',
    };
  }
  const recordTo = mode === 'on-demand+record' ? join(env.dir, 'overhead.ws') : opts.recordTo;
  const recorder = recordTo ? new WorkingSetRecorder({ pageSize, memorySize: mem.size }) : undefined;
  const handler = new FaultHandler(uffd, {
    memfd: mem, fetch, mode: env.handlerMode, ...(prefetch ? { prefetch } : {}), ...(recorder ? { workingSet: { record: recorder } } : {}),
  } as ConstructorParameters<typeof FaultHandler>[1]);
  try {
    handler.attach({ address: guest.address, length: guest.length, offset: 0 }, { missing: true, register: false });
    const t0 = bench.now();
    let prefetched = 0;
    if (mode === 'eager') {
      mem.write(0, image);
      handler.present.mark(0, mem.size);
      prefetched = mem.size / pageSize;
    }
    handler.start();
    if (mode === 'eager') handler.mapPresent(0, mem.size);
    // As the C reference does: the recorded pages first, then the guest
    // resumes. The concurrent rows resume it at once, the replay racing its
    // faults (demand first): a wrong recording then costs little.
    // Awaited, not polled: a loop spinning on setImmediate would take a CPU from the replay's threads.
    if (rec && !CONCURRENT.includes(mode)) await handler.replayFinished;
    const goAt = bench.now();
    const done = await guest.go();
    await handler.stop();
    const stats = handler.stats();
    if (rec && !stats.workingSet) throw new Error(`${NOT_AVAILABLE}the handler ignored workingSet.replay`);
    if (recorder && recordTo) recorder.save(recordTo);
    await guest.finish();
    const demandFetches = fetches;
    prefetched += stats.workingSet?.replay.prefetched ?? 0;
    return finishRep(done, t0, goAt, expectedDigest, env.trace.order.length, {
      faults: stats.faults, demandFetches, prefetched, bytesMoved: (fetches + prefetched) * pageSize,
      resolvedAll: stats.errors === 0 && stats.resolved >= stats.faults - stats.untracked, note: stats.errors ? `${stats.errors} fetch errors` : undefined,
    });
  } finally {
    await handler.stop();
    recorder?.close();
    uffd.close();
  }
}

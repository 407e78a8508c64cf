// The restore benchmark's scenarios (npm run bench:restore): one restore of
// a snapshot image into a fresh guest process per repetition, served by the
// library or by the C reference (native/bench/restore.cc), timed from the
// moment the page server starts to the moment the guest's touchers are done
// (one clock, CLOCK_MONOTONIC, read in both processes). Each repetition
// checks the guest's digest of every page it touched against the image.
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import { join } from 'node:path';

import { Fault, FaultHandler, FdSocket, Memfd, Mapping, PAGE_SIZE, PrefetchSource, Userfaultfd } from '../../lib/index';
import { WorkingSetRecorder, readWorkingSet } from '../../lib/working-set';
import { bench, unwrap } from './native';
import { Trace, TraceSpec } from './restore-trace';

export type RestoreMode =
  | 'eager'
  | 'on-demand'
  | 'on-demand+record'
  | 'replay'
  | 'replay-varying'
  | 'replay-mismatch'
  | 'replay-concurrent'
  | 'c-on-demand'
  | 'c-replay'
  | 'c-replay-varying';

export const RESTORE_MODES: RestoreMode[] = ['c-on-demand', 'on-demand', 'on-demand+record', 'c-replay', 'replay', 'c-replay-varying', 'replay-varying', 'replay-mismatch', 'replay-concurrent', 'eager'];

export const RESTORE_LABEL: Record<RestoreMode, string> = {
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
};

/** Which recording a replay row replays. */
export type RecordingName = 'match' | 'varying' | 'mismatch';
export const RECORDING_OF: Partial<Record<RestoreMode, RecordingName>> = {
  replay: 'match', 'replay-varying': 'varying', 'replay-mismatch': 'mismatch', 'replay-concurrent': 'match', 'c-replay': 'match', 'c-replay-varying': 'varying',
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

const GUEST = join(__dirname, 'restore-guest.js');
/** A guest that has not finished by then has a fault nobody answered. */
const GUEST_TIMEOUT_MS = 120_000;

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

function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        onTimeout();
        reject(new Error(`${what}: no answer in ${ms} ms`));
      }, ms);
    }),
  ]);
}

async function receiveJson(sock: FdSocket): Promise<{ json: Record<string, unknown>; fds: number[] }> {
  const msg = await sock.receive();
  if (msg.data.length === 0) throw new Error('guest closed the socket');
  return { json: JSON.parse(msg.data.toString()) as Record<string, unknown>, fds: msg.fds };
}

interface Guest {
  sock: FdSocket;
  uffdFd: number;
  address: number;
  length: number;
  go(): Promise<{ startNs: number; endNs: number; wallNs: number; touched: number; digest: string }>;
  finish(): Promise<void>;
  kill(): void;
}

/** Starts a guest over `mem`, hands it the trace, and waits until it is ready to go. */
async function startGuest(mem: Memfd, spec: TraceSpec): Promise<Guest> {
  const [sock, childEnd] = FdSocket.pair();
  const child = spawn(process.execPath, [GUEST], { stdio: ['ignore', 'inherit', 'inherit', childEnd.fd, mem.fd] });
  childEnd.close();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const kill = () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  try {
    const hello = await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest start', kill);
    if (hello.fds.length !== 1) throw new Error(`guest sent ${hello.fds.length} descriptors, expected its uffd`);
    sock.send(JSON.stringify({ trace: spec }));
    await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest trace', kill);
    return {
      sock, uffdFd: hello.fds[0], address: hello.json.address as number, length: hello.json.length as number, kill,
      async go() {
        sock.send(JSON.stringify({ go: true }));
        const done = await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest workload', kill);
        return done.json as { startNs: number; endNs: number; wallNs: number; touched: number; digest: string };
      },
      async finish() {
        sock.close();
        const code = await withTimeout(exited, 10_000, 'guest exit', kill);
        if (code !== 0) throw new Error(`guest exited with ${code}`);
      },
    };
  } catch (err) {
    kill();
    sock.close();
    throw err;
  }
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
  const size = env.image.size;
  const mem = Memfd.create(size, { name: 'restore-guest' });
  let guest: Guest | undefined;
  try {
    guest = await startGuest(mem, spec);
    if (mode.startsWith('c-')) return await cRestore(mode, env, mem, guest, expectedDigest);
    return await libraryRestore(mode, env, mem, guest, expectedDigest, opts);
  } finally {
    guest?.kill();
    mem.close();
  }
}

function finishRep(done: { startNs?: number; endNs: number; wallNs: number; touched: number; digest: string }, t0: number, goAt: number, expectedDigest: string, traceLength: number,
  c: { faults: number; demandFetches: number; prefetched: number; bytesMoved: number; resolvedAll: boolean; note?: string }): RestoreRep {
  const digestOk = done.digest === expectedDigest;
  return {
    timeNs: done.endNs - t0, guestNs: done.wallNs, beforeGoNs: goAt - t0, faults: c.faults, demandFetches: c.demandFetches, prefetched: c.prefetched,
    bytesMoved: c.bytesMoved, touched: done.touched, digestOk, allResolved: digestOk && done.touched === traceLength && c.resolvedAll,
    ...(c.note ? { note: c.note } : {}),
  };
}

async function cRestore(mode: RestoreMode, env: RestoreEnv, mem: Memfd, guest: Guest, expectedDigest: string): Promise<RestoreRep> {
  const rec = RECORDING_OF[mode];
  const list = rec ? env.recordings.get(rec)?.pages : new Uint32Array(0);
  if (!list) throw new Error(`no ${rec} recording`);
  let started;
  try {
    started = unwrap(bench.cRestoreStart(guest.uffdFd, guest.address, guest.length, mem.pageSize, mem.fd, env.image.fd, list));
  } finally {
    // The C reference holds its own duplicate.
    closeSync(guest.uffdFd);
  }
  let counts;
  let done;
  try {
    const goAt = bench.now();
    done = await guest.go();
    counts = bench.cRestoreStop(started.handle);
    await guest.finish();
    const notes = [counts.error ? `handler errno ${-counts.error}` : '', counts.prefetchError ? `prefetch errno ${-counts.prefetchError}` : ''].filter(Boolean).join('; ');
    return finishRep(done, started.startNs, goAt, expectedDigest, env.trace.order.length, {
      faults: counts.messages, demandFetches: counts.fetched, prefetched: counts.prefetched, bytesMoved: counts.bytesMoved,
      resolvedAll: !counts.error && !counts.prefetchError && counts.resolved + counts.existed >= counts.messages, note: notes || undefined,
    });
  } finally {
    bench.cRestoreStop(started.handle);
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

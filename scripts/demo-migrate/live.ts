// The live part of the migration demo: a guest whose native writer threads
// keep writing while its memory moves by pre-copy, hybrid or post-copy. Two
// processes on loopback: the source (the guest runs there first; its
// MigrationSource is live) and the destination (the guest resumes there once
// the migration says it may). At the end the destination compares a CRC-32
// of every page with the source's memory at the pause.
import { ChildProcess, fork } from 'node:child_process';
import { performance } from 'node:perf_hooks';

import { Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd, crc32 } from '../../lib/index';
import type { DestinationStats, LiveMode, SourceStats } from '../../lib/index';
import { PageWriter, startWriter } from '../../lib/writer';

/** What the live demo needs from the command line. */
export interface LiveOptions {
  sizeMiB: number;
  workers: number;
  /** Share of memory the guest may dirty per second: its writes per second are capped at this share of the pages. */
  dirtyRate: number;
  hotFraction: number;
  pushRateMiB: number;
  batchPages: number;
  afterSeconds: number;
  maxRounds: number;
  stopBelowPages: number;
  native: number;
}

/** One mode's outcome, as the table shows it. */
export interface LiveResult {
  mode: LiveMode;
  pages: number;
  badPages: number;
  totalMs: number;
  downtimeMs: number;
  bytesSent: number;
  rounds: number;
  pagesPerRound: number[];
  /** Round 0: every page at the push rate, what stop-and-copy of the whole image costs at that rate. */
  wholeImageMs: number;
  pushCapped: boolean;
  demandFaults: number;
  writesPerSecondDuring: number;
  writesPerSecondTarget: number;
}

/** The guest's source (word 0) and destination (word 1) counters never collide; the CRC skips word 1. */
const DESTINATION_WORD = 1;

function pageSums(memfd: Memfd, pages: number): number[] {
  const sums: number[] = [];
  const chunk = 256;
  for (let first = 0; first < pages; first += chunk) {
    const count = Math.min(chunk, pages - first);
    const bytes = memfd.read(first * PAGE_SIZE, count * PAGE_SIZE);
    for (let i = 0; i < count; i++) {
      const page = bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
      page.writeUInt32LE(0, DESTINATION_WORD * 4);
      sums.push(crc32(page));
    }
  }
  return sums;
}

function writers(view: import('../../lib/index').Mapping, opts: LiveOptions, word: number): PageWriter[] {
  const pages = view.length / PAGE_SIZE;
  const perWorker = Math.max(1, (opts.dirtyRate * pages) / opts.workers);
  return Array.from({ length: opts.workers }, (_, i) => startWriter(view, { writesPerSecond: perWorker, hotFraction: opts.hotFraction, hotShare: 0.9, word, seed: 0x9e3779b1 + i * 7919 + word }));
}

const writesOf = (ws: PageWriter[]): number => ws.reduce((sum, w) => sum + w.writes, 0);

function send(message: object): Promise<void> {
  return new Promise((resolve, reject) => process.send!(message, undefined, undefined, (err) => (err ? reject(err) : resolve())));
}

// ---------------------------------------------------------------- source
export async function runLiveSource(opts: LiveOptions, mode: LiveMode): Promise<void> {
  const pages = (opts.sizeMiB * 1024 * 1024) / PAGE_SIZE;
  const memfd = Memfd.create(pages * PAGE_SIZE, { name: 'demo-live-guest' });
  // A recognisable image: every page different.
  const page = Buffer.alloc(PAGE_SIZE);
  for (let p = 0; p < pages; p++) {
    for (let w = 0; w < PAGE_SIZE / 4; w++) page.writeUInt32LE((Math.imul(p + 1, 0x9e3779b1) ^ Math.imul(w + 1, 0x85ebca77)) >>> 0, w * 4);
    memfd.write(p * PAGE_SIZE, page);
  }
  const view = memfd.map();
  const guest = writers(view, opts, 0);
  let connectedAt = 0;
  let writesAtConnect = 0;
  let pausedAt = 0;
  let writesAtPause = 0;
  const source = await MigrationSource.listen(memfd, {
    batchPages: opts.batchPages,
    pushBytesPerSecond: opts.pushRateMiB > 0 ? Math.round(opts.pushRateMiB * 1024 * 1024) : undefined,
    live: {
      mode, views: [view], maxRounds: opts.maxRounds, stopBelowPages: opts.stopBelowPages,
      pause: async () => {
        await Promise.all(guest.map((w) => w.pause()));
        pausedAt = performance.now();
        writesAtPause = writesOf(guest);
      },
      resume: () => guest.forEach((w) => w.resume()),
    },
    onConnection: (result) => {
      connectedAt = performance.now();
      writesAtConnect = writesOf(guest);
      result.then(async (stats: SourceStats) => {
        source.close();
        await send({
          type: 'source-done', stats, sums: pageSums(memfd, pages),
          writes: writesAtPause - writesAtConnect, writingMs: pausedAt - connectedAt,
        });
        process.exit(0);
      }, async (err: Error) => {
        source.close();
        await send({ type: 'source-failed', message: err.message });
        process.exit(1);
      });
    },
  });
  await send({ type: 'listening', port: source.address.port });
}

// ---------------------------------------------------------------- destination
export async function runLiveDestination(opts: LiveOptions, port: number): Promise<void> {
  const pages = (opts.sizeMiB * 1024 * 1024) / PAGE_SIZE;
  const memfd = Memfd.create(pages * PAGE_SIZE, { name: 'demo-live-destination' });
  const view = memfd.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  uffd.register(view, { missing: true, minor: true });
  const dest = await MigrationDestination.connect({ uffd, memfd, views: [view], port, mode: opts.native ? 'native' : 'event-loop' });
  let guest: PageWriter[] = [];
  let resumedAt = 0;
  try {
    await dest.resumable;
    resumedAt = performance.now();
    guest = writers(view, opts, DESTINATION_WORD);
    const stats = await dest.done;
    const doneAt = performance.now();
    const writes = writesOf(guest);
    await new Promise((r) => setTimeout(r, opts.afterSeconds * 1000));
    const writesAfter = writesOf(guest) - writes;
    const afterMs = performance.now() - doneAt;
    await Promise.all(guest.map((w) => w.stop()));
    await send({ type: 'dest-done', stats, sums: pageSums(memfd, pages), writes, writingMs: doneAt - resumedAt, writesAfter, afterMs });
  } catch (err) {
    await Promise.all(guest.map((w) => w.stop()));
    await send({ type: 'dest-failed', message: (err as Error).message });
  } finally {
    uffd.close();
    view.unmap();
    memfd.close();
  }
}

// ---------------------------------------------------------------- orchestration
type Next = <T>(proc: ChildProcess, ...types: string[]) => Promise<T>;

/** Runs one mode in two fresh processes; rejects when a side fails or a page differs. */
export async function migrateLive(script: string, opts: LiveOptions, mode: LiveMode, next: Next, procs: ChildProcess[]): Promise<LiveResult> {
  const optArgs = ['--opts', JSON.stringify(opts)];
  const child = (args: string[]) => {
    const proc = fork(script, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    procs.push(proc);
    return proc;
  };
  const source = child(['live-source', mode, ...optArgs]);
  const { port } = await next<{ port: number }>(source, 'listening');
  const t0 = performance.now();
  const dest = child(['live-destination', String(port), ...optArgs]);
  type Side = { type: string; message?: string; sums: number[]; writes: number; writingMs: number };
  const [s, d] = await Promise.all([
    next<Side & { stats: SourceStats }>(source, 'source-done', 'source-failed'),
    next<Side & { stats: DestinationStats; writesAfter: number; afterMs: number }>(dest, 'dest-done', 'dest-failed'),
  ]);
  if (s.type === 'source-failed') throw new Error(`${mode}: source failed: ${s.message}`);
  if (d.type === 'dest-failed') throw new Error(`${mode}: destination failed: ${d.message}`);
  const totalMs = s.stats.durationMs;
  let bad = 0;
  for (let p = 0; p < s.sums.length; p++) if (s.sums[p] !== d.sums[p]) bad++;
  const live = s.stats.live!;
  const pages = s.sums.length;
  void t0;
  return {
    mode, pages, badPages: bad, totalMs, downtimeMs: live.downtimeMs, bytesSent: s.stats.bytesSent, rounds: live.rounds,
    pagesPerRound: live.pagesPerRound, wholeImageMs: live.msPerRound[0] ?? NaN, pushCapped: opts.pushRateMiB > 0, demandFaults: d.stats.demandFaults,
    writesPerSecondDuring: (s.writes + d.writes) / ((s.writingMs + d.writingMs) / 1000),
    writesPerSecondTarget: Math.max(1, (opts.dirtyRate * pages) / opts.workers) * opts.workers,
  };
}

/** The side-by-side table's header and cells, one row per mode (the demo and the benchmark's report render it). */
export function liveTableCells(results: LiveResult[]): { header: string[]; rows: string[][] } {
  const header = ['mode', 'total time', 'guest pause (downtime)', 'bytes sent', 'rounds (pages per round)', 'demand faults after switch-over', 'guest writes/s during migration', 'pages verified'];
  const rows = results.map((r) => [
    r.mode, `${(r.totalMs / 1000).toFixed(2)} s`, `${r.downtimeMs.toFixed(1)} ms`, `${(r.bytesSent / 1048576).toFixed(1)} MiB`,
    `${r.rounds}${r.rounds ? ` (${r.pagesPerRound.join(' + ')})` : ''}`, `${r.demandFaults} (${((100 * r.demandFaults) / r.pages).toFixed(2)}% of pages)`,
    `${Math.round(r.writesPerSecondDuring)} of ${Math.round(r.writesPerSecondTarget)}`, `${r.pages - r.badPages} of ${r.pages}`,
  ]);
  return { header, rows };
}

/** The side-by-side table (Markdown, so that the docs can hold it as generated). */
export function liveTable(results: LiveResult[]): string {
  const { header, rows } = liveTableCells(results);
  return [`| ${header.join(' | ')} |`, '|---|---:|---:|---:|---|---:|---:|---:|', ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** How the results compare with the targets: pre-copy downtime against stop-and-copy of the whole image; hybrid demand faults. */
export function liveTargets(results: LiveResult[]): string[] {
  const lines: string[] = [];
  const pre = results.find((r) => r.mode === 'precopy');
  if (pre) lines.push(`pre-copy downtime ${pre.downtimeMs.toFixed(1)} ms = ${((100 * pre.downtimeMs) / pre.wholeImageMs).toFixed(1)}% of stop-and-copy of the whole image (${pre.wholeImageMs.toFixed(0)} ms: round 0, every page ${pre.pushCapped ? 'at the capped push rate' : 'at full speed'}); target <= 10%`);
  const hybrid = results.find((r) => r.mode === 'hybrid');
  if (hybrid) lines.push(`hybrid demand faults after switch-over ${hybrid.demandFaults} = ${((100 * hybrid.demandFaults) / hybrid.pages).toFixed(2)}% of pages; target <= 1%`);
  return lines;
}

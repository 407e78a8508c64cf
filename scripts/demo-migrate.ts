// npm run demo:migrate -- [--mode M | --modes all] [--size MiB] ... (--help lists every option)
//
// --mode precopy|hybrid, and --modes all, run the live demo
// (demo-migrate/live.ts): the guest's native writer threads run at the
// source while its memory moves, and resume at the destination.
//
// --mode postcopy (the default): post-copy migration of a running guest,
// three processes on loopback:
//   source       serves the memory image over TCP (MigrationSource)
//   destination  receives the guest's uffd + memfd over a Unix socket and
//                fills the memfd from the source (MigrationDestination)
//   guest        worker threads reading and writing memory (a hot set and a
//                cold tail) while its memory is being migrated under it
// At the end the guest checks a CRC-32 of every page against the image (with
// its own writes applied), and the demo prints what happened.
import { ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

import {
  FdServer, FdSocket, Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd, crc32, receiveGuestMemory, sendGuestMemory,
} from '../lib/index';
import type { LiveMode } from '../lib/index';
import { LiveOptions, LiveResult, liveTable, liveTargets, migrateLive, runLiveDestination, runLiveSource } from './demo-migrate/live';

interface Options {
  sizeMiB: number;
  workers: number;
  hotFraction: number;
  hotShare: number;
  writeShare: number;
  pushRateMiB: number;
  batchPages: number;
  afterSeconds: number;
  prefetch: number;
  /** 0: event-loop fault handler, 1: native resolver thread. */
  native: number;
  /** Live modes: share of memory the guest dirties per second at most. */
  dirtyRate: number;
  maxRounds: number;
  hybridRounds: number;
  stopBelowPages: number;
  /** The modes to run: postcopy alone is the three-process demo of a static image; anything else runs the live demo. */
  modes: LiveMode[];
  /** Write the live table into docs/migration.md. */
  docs: boolean;
  /** Live demo: write the setting, the results and the targets as JSON to this file. */
  json?: string;
}

const MODES: readonly LiveMode[] = ['precopy', 'postcopy', 'hybrid'];

const STAMP = 0xfeedf00d;

const USAGE = `Usage: npm run demo:migrate -- [options]

Post-copy migration of a running guest: three processes on loopback (source,
destination, guest); every page is checked against the image at the end.

  --size MiB            guest memory (default 256)
  --workers N           guest worker threads touching memory (default 2)
  --hot-fraction F      share of pages in the hot set (default 0.05)
  --hot-share F         share of accesses that go to the hot set (default 0.8)
  --write-share F       share of accesses that write (default 0.05)
  --push-rate MiB/s     cap on the background push, 0 for none (default 64)
  --batch-pages N       pages per pushed batch (default 16)
  --after-seconds S     how long the guest runs after the migration (default 3)
  --prefetch N          pages requested after each demand fault (default 0)
  --native 0|1          1: native resolver thread instead of the event loop (default 0)
  --mode M              postcopy (default: this demo), precopy or hybrid (the live demo)
  --modes all           the live demo in all three modes, one table side by side
  --docs                with --modes all: write the table into docs/migration.md
  --json FILE           live demo: the setting, every mode's figures and the targets as JSON

Live demo (--mode precopy|hybrid, --modes all): the guest is native writer
threads writing counters into its pages, first at the source (its memory is
served live, pre-copy rounds send what it writes), then at the destination.

  --dirty-rate F        most memory the guest dirties per second, as a share (default 0.05)
  --max-rounds N        pre-copy: most rounds before stop-and-copy (default 8)
  --hybrid-rounds N     hybrid: pre-copy rounds before the switch to post-copy (default 2)
  --stop-below N        switch over once a round leaves at most N written pages (default 64)
  --help                this text
`;

/** A mistake on the command line: reported as usage, without a stack trace. */
class UsageError extends Error {}

function parseOptions(argv: string[]): Options | 'help' {
  const opts: Options = {
    sizeMiB: 256, workers: 2, hotFraction: 0.05, hotShare: 0.8, writeShare: 0.05, pushRateMiB: 64, batchPages: 16, afterSeconds: 3, prefetch: 0, native: 0,
    dirtyRate: 0.05, maxRounds: 8, hybridRounds: 2, stopBelowPages: 64, modes: ['postcopy'], docs: false,
  };
  const names: Record<string, keyof Options> = {
    '--size': 'sizeMiB', '--workers': 'workers', '--hot-fraction': 'hotFraction', '--hot-share': 'hotShare', '--write-share': 'writeShare',
    '--push-rate': 'pushRateMiB', '--batch-pages': 'batchPages', '--after-seconds': 'afterSeconds', '--prefetch': 'prefetch', '--native': 'native',
    '--dirty-rate': 'dirtyRate', '--max-rounds': 'maxRounds', '--hybrid-rounds': 'hybridRounds', '--stop-below': 'stopBelowPages',
  };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--help' || argv[i] === '-h') return 'help';
    if (argv[i] === '--docs') {
      opts.docs = true;
      continue;
    }
    if (argv[i] === '--json') {
      opts.json = argv[++i];
      if (!opts.json) throw new UsageError('--json: needs a file');
      continue;
    }
    if (argv[i] === '--mode' || argv[i] === '--modes') {
      const value = argv[++i];
      if (argv[i - 1] === '--modes' && value === 'all') opts.modes = [...MODES];
      else if (MODES.includes(value as LiveMode)) opts.modes = [value as LiveMode];
      else throw new UsageError(`${argv[i - 1]} ${value ?? ''}: must be ${argv[i - 1] === '--modes' ? 'all' : MODES.join(', ')}`);
      continue;
    }
    const key = names[argv[i]];
    const value = Number(argv[i + 1]);
    if (!key || argv[i + 1] === undefined || !Number.isFinite(value)) throw new UsageError(`unknown option or bad value: ${argv[i]} ${argv[i + 1] ?? ''}`);
    (opts as unknown as Record<string, number>)[key] = value;
    i++;
  }
  if (!(opts.dirtyRate > 0 && opts.dirtyRate <= 1)) throw new UsageError(`--dirty-rate ${opts.dirtyRate}: must be > 0 and <= 1`);
  for (const [flag, n] of [['--max-rounds', opts.maxRounds], ['--hybrid-rounds', opts.hybridRounds]] as const)
    if (!(Number.isInteger(n) && n >= 1)) throw new UsageError(`${flag} ${n}: must be a whole number >= 1`);
  if (opts.docs && opts.modes.length !== MODES.length) throw new UsageError('--docs: needs --modes all');
  if (opts.json && opts.modes.length === 1 && opts.modes[0] === 'postcopy') throw new UsageError('--json: the live demo only (--mode precopy, --mode hybrid or --modes all)');
  if (!((opts.sizeMiB * 1024 * 1024) % PAGE_SIZE === 0 && opts.sizeMiB > 0)) throw new UsageError(`--size ${opts.sizeMiB}: must be a positive number of MiB that is a whole number of pages`);
  if (!(Number.isInteger(opts.workers) && opts.workers >= 1)) throw new UsageError(`--workers ${opts.workers}: must be a whole number >= 1`);
  return opts;
}

/**
 * process.send that settles once the message has left this process: a role
 * that exits right after sending would otherwise lose a message still queued
 * on the IPC channel.
 */
function send(message: object): Promise<void> {
  return new Promise((resolve, reject) => process.send!(message, undefined, undefined, (err) => (err ? reject(err) : resolve())));
}

/** Word `i` of page `p` of the image: cheap to compute anywhere, different on every page. */
function fillPage(words: Uint32Array, p: number): void {
  const a = Math.imul(p + 1, 0x9e3779b1);
  for (let i = 0; i < words.length; i++) words[i] = a ^ Math.imul(i + 1, 0x85ebca77);
}

function buildImage(pages: number): Buffer {
  const image = Buffer.allocUnsafe(pages * PAGE_SIZE);
  const words = new Uint32Array(image.buffer, image.byteOffset, image.length / 4);
  for (let p = 0; p < pages; p++) fillPage(words.subarray((p * PAGE_SIZE) / 4, ((p + 1) * PAGE_SIZE) / 4), p);
  return image;
}

function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// ---------------------------------------------------------------- source
async function runSource(opts: Options): Promise<void> {
  const pages = (opts.sizeMiB * 1024 * 1024) / PAGE_SIZE;
  const image = buildImage(pages);
  const source = await MigrationSource.listen(image, {
    host: '127.0.0.1', batchPages: opts.batchPages,
    pushBytesPerSecond: opts.pushRateMiB > 0 ? Math.round(opts.pushRateMiB * 1024 * 1024) : undefined,
    onConnection: (result) => {
      result.then((stats) => {
        source.close();
        process.send!({ type: 'source-done', stats }, () => process.exit(0));
      }, (err: Error) => {
        source.close();
        process.send!({ type: 'source-failed', message: err.message }, () => process.exit(1));
      });
    },
  });
  process.send!({ type: 'listening', port: source.address.port });
}

// ---------------------------------------------------------------- destination
async function runDestination(socketPath: string, port: number, opts: Options): Promise<void> {
  const server = FdServer.listen(socketPath);
  process.send!({ type: 'ready' });
  const sock = await server.accept();
  const { uffd, memfd, views, peer } = await receiveGuestMemory(sock);
  sock.close();
  server.close();
  const dest = await MigrationDestination.connect({ uffd, memfd, views, port, prefetch: opts.prefetch, mode: opts.native ? 'native' : 'event-loop' });
  process.send!({ type: 'migrating', guestPid: peer.pid });
  try {
    const stats = await dest.done;
    await send({ type: 'dest-done', stats });
  } catch (err) {
    await send({ type: 'dest-failed', message: (err as Error).message });
  } finally {
    uffd.close();
    memfd.close();
  }
}

// ---------------------------------------------------------------- guest
interface WorkerReport {
  id: number;
  written: [number, number][];
  stallsUs: number[];
}

async function runGuest(socketPath: string, opts: Options): Promise<void> {
  const pages = (opts.sizeMiB * 1024 * 1024) / PAGE_SIZE;
  const memfd = Memfd.create(pages * PAGE_SIZE, { name: 'demo-guest' });
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  // Phase flag and access counters shared with the workers: [phase, then per worker: during, after].
  const shared = new Int32Array(new SharedArrayBuffer(4 * (1 + 2 * opts.workers)));
  const workers: Worker[] = [];
  const views = [];
  for (let id = 0; id < opts.workers; id++) {
    const worker = new Worker(__filename, { workerData: { role: 'worker', id, fd: memfd.fd, pages, opts, shared } });
    workers.push(worker);
    const [view] = (await once(worker, 'message')) as [{ address: number; length: number }];
    // One process, one address space: the guest registers each worker's view on one uffd.
    uffd.register(view, { missing: true, minor: true });
    views.push({ address: view.address, length: view.length, offset: 0 });
  }
  const sock = FdSocket.connect(socketPath);
  sendGuestMemory(sock, uffd, memfd, { views });
  sock.close();
  // The destination holds the uffd now; if it dies, closing its copy must wake our threads.
  uffd.close();
  const started = performance.now();
  for (const w of workers) w.postMessage('go');
  let migratedAt = 0;
  await new Promise<void>((resolve) => process.on('message', (m: { type: string }) => {
    if (m.type === 'migrated') resolve();
  }));
  migratedAt = performance.now();
  Atomics.store(shared, 0, 1);
  await new Promise((r) => setTimeout(r, opts.afterSeconds * 1000));
  Atomics.store(shared, 0, 2);
  const reports = (await Promise.all(workers.map((w) => once(w, 'message').then(([r]) => r as WorkerReport))));
  await Promise.all(workers.map((w) => w.terminate()));
  const stopped = performance.now();

  // Every page against the image, with the guest's last write to it applied.
  const written = new Map<number, number>();
  for (const r of reports) for (const [page, counter] of r.written) written.set(page, counter);
  const view = memfd.map({ readOnly: true });
  const actual = new Uint8Array(view.buffer);
  const expected = new Uint32Array(PAGE_SIZE / 4);
  const expectedBytes = new Uint8Array(expected.buffer);
  let bad = 0;
  for (let p = 0; p < pages; p++) {
    fillPage(expected, p);
    const counter = written.get(p);
    if (counter !== undefined) {
      expected[0] = STAMP;
      expected[1] = counter;
    }
    if (crc32(actual.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)) !== crc32(expectedBytes)) bad++;
  }
  view.unmap();
  memfd.close();
  let during = 0;
  let after = 0;
  for (let id = 0; id < opts.workers; id++) {
    during += shared[1 + 2 * id];
    after += shared[2 + 2 * id];
  }
  const stalls = reports.flatMap((r) => r.stallsUs).sort((a, b) => a - b);
  await send({
    type: 'guest-done', pages, badPages: bad, pagesWritten: written.size,
    ratesPerSecond: { during: during / ((migratedAt - started) / 1000), after: after / ((stopped - migratedAt) / 1000) },
    stalls: { count: stalls.length, p50: percentile(stalls, 0.5), p90: percentile(stalls, 0.9), p99: percentile(stalls, 0.99), max: stalls[stalls.length - 1] ?? NaN },
  });
}

function runWorker(): void {
  const { id, fd, pages, opts, shared } = workerData as { id: number; fd: number; pages: number; opts: Options; shared: Int32Array };
  const memfd = Memfd.fromFd(fd);
  const view = memfd.map();
  const words = new Uint32Array(view.buffer);
  parentPort!.postMessage({ address: view.address, length: view.length });
  parentPort!.once('message', () => {
    const hotPages = Math.max(1, Math.floor(pages * opts.hotFraction));
    const wordsPerPage = PAGE_SIZE / 4;
    const written = new Map<number, number>();
    const stallsUs: number[] = [];
    let cold = Math.floor((pages * id) / opts.workers);
    let counter = 0;
    let rng = 0x12345 + id * 7919;
    const random = () => {
      rng ^= rng << 13;
      rng ^= rng >>> 17;
      rng ^= rng << 5;
      return (rng >>> 0) / 4294967296;
    };
    for (;;) {
      const phase = Atomics.load(shared, 0);
      if (phase === 2) break;
      for (let n = 0; n < 256; n++) {
        // The hot set is scattered over memory (a heap, not a prefix the push reaches first); the cold tail is a sweep.
        const page = random() < opts.hotShare ? (Math.floor(random() * hotPages) * 40503) % pages : (cold = cold + 1 >= pages ? 0 : cold + 1);
        const i = 2 + Math.floor(random() * (wordsPerPage - 2));
        const t0 = performance.now();
        const value = words[page * wordsPerPage + i];
        const us = (performance.now() - t0) * 1000;
        if (us > 20) stallsUs.push(us);
        if (value !== ((Math.imul(page + 1, 0x9e3779b1) ^ Math.imul(i + 1, 0x85ebca77)) >>> 0))
          throw new Error(`worker ${id}: page ${page} word ${i} reads 0x${value.toString(16)}: not the image`);
        // Writes go to this worker's own pages only, so the last write of each page is known.
        if (page % opts.workers === id && random() < opts.writeShare) {
          words[page * wordsPerPage] = STAMP;
          words[page * wordsPerPage + 1] = ++counter;
          written.set(page, counter);
        }
      }
      Atomics.add(shared, 1 + 2 * id + (phase === 0 ? 0 : 1), 256);
    }
    parentPort!.postMessage({ id, written: [...written], stallsUs } satisfies WorkerReport);
    view.unmap();
  });
}

// ---------------------------------------------------------------- orchestrator
function child(args: string[]): ChildProcess {
  return fork(__filename, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

function next<T>(proc: ChildProcess, ...types: string[]): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: { type: string }) => {
      if (types.includes(m.type)) {
        proc.off('message', onMessage);
        resolve(m as T);
      }
    };
    proc.on('message', onMessage);
    // 'close', not 'exit': a child's exit can be seen before the messages it
    // sent just before exiting are read; 'close' comes after its IPC channel
    // has been read to the end.
    proc.once('close', (code, signal) => reject(new Error(`${proc.spawnargs[2]} exited (${code ?? signal}) while waiting for ${types.join('/')}`)));
  });
}

async function orchestrate(argv: string[]): Promise<void> {
  const opts = parseOptions(argv);
  if (opts === 'help') {
    process.stdout.write(USAGE);
    return;
  }
  if (opts.modes.length > 1 || opts.modes[0] !== 'postcopy') return orchestrateLive(opts, argv);
  const dir = mkdtempSync(join(tmpdir(), 'demo-migrate-'));
  const socketPath = join(dir, 'handoff.sock');
  const optArgs = ['--opts', JSON.stringify(opts)];
  const procs: ChildProcess[] = [];
  const watchdog = setTimeout(() => {
    console.error('demo: no result after 120 s, stopping');
    for (const p of procs) p.kill('SIGKILL');
    process.exit(1);
  }, 120_000);
  try {
    console.log(`userfaultfd post-copy demo: ${opts.sizeMiB} MiB guest, ${opts.workers} worker threads, hot set ${opts.hotFraction * 100}% of pages taking ${opts.hotShare * 100}% of accesses, ` +
      `${opts.writeShare * 100}% writes, ${opts.native ? 'native' : 'event-loop'} fault handler, push ${opts.pushRateMiB > 0 ? `capped at ${opts.pushRateMiB} MiB/s` : 'uncapped'}, ${opts.batchPages} pages per batch`);
    const source = child(['source', ...optArgs]);
    procs.push(source);
    const { port } = await next<{ port: number }>(source, 'listening');
    const dest = child(['destination', socketPath, String(port), ...optArgs]);
    procs.push(dest);
    await next(dest, 'ready');
    const t0 = performance.now();
    const guest = child(['guest', socketPath, ...optArgs]);
    procs.push(guest);
    const destResult = await next<{ type: string; stats?: import('../lib/index').DestinationStats; message?: string }>(dest, 'dest-done', 'dest-failed');
    const elapsed = performance.now() - t0;
    if (destResult.type === 'dest-failed') throw new Error(`destination failed: ${destResult.message}`);
    guest.send({ type: 'migrated' });
    const g = await next<{ pages: number; badPages: number; pagesWritten: number; ratesPerSecond: { during: number; after: number }; stalls: Record<string, number> }>(guest, 'guest-done');
    const s = destResult.stats!;
    const lat = [...s.faultLatencyMs].sort((a, b) => a - b);
    const us = (ms: number) => `${(ms * 1000).toFixed(0)} µs`;
    console.log('');
    console.log(`pages verified            ${g.pages - g.badPages} of ${g.pages} (CRC-32 of every page; ${g.badPages} bad; ${g.pagesWritten} written by the guest during the run)`);
    console.log(`pages faulted on demand   ${s.pagesOnDemand} (${s.demandFaults} demand faults; ${s.faults} faults in all)`);
    console.log(`pages pushed              ${s.pagesPushed}${s.pagesIgnored ? ` (+${s.pagesIgnored} duplicates ignored)` : ''}`);
    const h = s.handler!.latencyUs;
    console.log(`faults resolved           ${s.handler!.resolved} by the fault handler (${s.handler!.alreadyPresent} already present${s.handler!.nativeResolved ? `, ${s.handler!.nativeResolved} by the native thread` : ''}): p50 ${h.p50} µs  p99 ${h.p99} µs  max ${h.max} µs`);
    console.log(`fault latency (demand)    p50 ${us(percentile(lat, 0.5))}  p90 ${us(percentile(lat, 0.9))}  p99 ${us(percentile(lat, 0.99))}  max ${us(lat[lat.length - 1] ?? NaN)}  (fetch -> page in place, destination side)`);
    console.log(`guest stalls > 20 µs      ${g.stalls.count}: p50 ${g.stalls.p50.toFixed(0)} µs  p90 ${g.stalls.p90.toFixed(0)} µs  p99 ${g.stalls.p99.toFixed(0)} µs  max ${g.stalls.max.toFixed(0)} µs (as the guest's threads saw them)`);
    console.log(`migration time            ${(s.durationMs / 1000).toFixed(2)} s (hello to last page; ${(elapsed / 1000).toFixed(2)} s from guest start)`);
    const slowdown = g.ratesPerSecond.after / g.ratesPerSecond.during;
    console.log(`guest throughput          ${(g.ratesPerSecond.during / 1e6).toFixed(2)} M accesses/s during migration, ${(g.ratesPerSecond.after / 1e6).toFixed(2)} M/s after: ${slowdown.toFixed(2)}x slowdown during migration`);
    if (g.badPages) throw new Error(`${g.badPages} pages do not match the image`);
    await Promise.all(procs.map((p) => (p.exitCode === null && p.signalCode === null ? once(p, 'exit') : undefined)));
  } finally {
    clearTimeout(watchdog);
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- live modes
const DOCS_START = '<!-- demo-migrate:modes:start -->';
const DOCS_END = '<!-- demo-migrate:modes:end -->';

function liveOptions(opts: Options, mode: LiveMode): LiveOptions {
  return {
    sizeMiB: opts.sizeMiB, workers: opts.workers, dirtyRate: opts.dirtyRate, hotFraction: Math.min(opts.hotFraction, opts.dirtyRate / 2),
    pushRateMiB: opts.pushRateMiB, batchPages: opts.batchPages, afterSeconds: opts.afterSeconds,
    maxRounds: mode === 'hybrid' ? opts.hybridRounds : opts.maxRounds, stopBelowPages: opts.stopBelowPages, native: opts.native,
  };
}

async function orchestrateLive(opts: Options, argv: string[]): Promise<void> {
  const procs: ChildProcess[] = [];
  const watchdog = setTimeout(() => {
    console.error('demo: no result after 120 s per mode, stopping');
    for (const p of procs) p.kill('SIGKILL');
    process.exit(1);
  }, 120_000 * opts.modes.length);
  const setting = `${opts.sizeMiB} MiB guest, ${opts.workers} native writer threads dirtying at most ${opts.dirtyRate * 100}% of memory per second ` +
    `(hot set ${(Math.min(opts.hotFraction, opts.dirtyRate / 2) * 100).toFixed(1)}% of pages taking 90% of writes), ${opts.native ? 'native' : 'event-loop'} fault handler, ` +
    `push ${opts.pushRateMiB > 0 ? `capped at ${opts.pushRateMiB} MiB/s` : 'uncapped'}, ${opts.batchPages} pages per batch, pre-copy at most ${opts.maxRounds} rounds, hybrid after ${opts.hybridRounds}, stop below ${opts.stopBelowPages} pages`;
  console.log(`userfaultfd live migration demo: ${setting}`);
  const results: LiveResult[] = [];
  try {
    for (const mode of opts.modes) {
      const r = await migrateLive(__filename, liveOptions(opts, mode), mode, next, procs);
      results.push(r);
      console.log(`${mode.padEnd(9)} ${r.pages - r.badPages} of ${r.pages} pages verified (CRC-32 of every page against the source at the pause), ${(r.totalMs / 1000).toFixed(2)} s, downtime ${r.downtimeMs.toFixed(1)} ms`);
      await Promise.all(procs.map((p) => (p.exitCode === null && p.signalCode === null ? once(p, 'exit') : undefined)));
    }
    const table = liveTable(results);
    console.log(`
${table}
`);
    for (const line of liveTargets(results)) console.log(line);
    if (opts.json) {
      mkdirSync(dirname(resolve(opts.json)), { recursive: true });
      writeFileSync(opts.json, `${JSON.stringify({ setting, sizeMiB: opts.sizeMiB, results, targets: liveTargets(results) }, null, 2)}\n`);
    }
    const bad = results.filter((r) => r.badPages > 0);
    if (bad.length) throw new Error(`${bad.map((r) => `${r.mode}: ${r.badPages} pages`).join(', ')} do not match the source`);
    if (opts.docs) {
      const path = resolve(__dirname, '..', '..', 'docs', 'migration.md');
      const doc = readFileSync(path, 'utf8');
      const start = doc.indexOf(DOCS_START);
      const end = doc.indexOf(DOCS_END);
      if (start < 0 || end < start) throw new Error(`${path}: markers ${DOCS_START} ... ${DOCS_END} not found`);
      const body = [`Written by \`npm run demo:migrate -- ${argv.join(' ')}\` (${new Date().toISOString().slice(0, 10)}, ${opts.sizeMiB} MiB): ${setting}.`, '', table, '', ...liveTargets(results).map((l) => `- ${l}`)].join('\n');
      writeFileSync(path, `${doc.slice(0, start + DOCS_START.length)}\n${body}\n${doc.slice(end)}`);
      console.log(`\nwrote the table into ${path}`);
    }
  } finally {
    clearTimeout(watchdog);
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
  }
}

// ---------------------------------------------------------------- entry
function optsFrom(args: string[]): Options {
  const at = args.indexOf('--opts');
  return JSON.parse(args[at + 1]) as Options;
}

if (!isMainThread) {
  runWorker();
} else {
  const [role, ...rest] = process.argv.slice(2);
  const fail = (err: Error) => {
    if (err instanceof UsageError) {
      console.error(`demo: ${err.message}\n\n${USAGE}`);
      process.exit(2);
    }
    console.error(`demo ${role ?? ''}: ${err.stack ?? err.message}`);
    process.exit(1);
  };
  if (role === 'source') runSource(optsFrom(rest)).catch(fail);
  else if (role === 'live-source') runLiveSource(optsFrom(rest) as unknown as LiveOptions, rest[0] as LiveMode).catch(fail);
  else if (role === 'live-destination') runLiveDestination(optsFrom(rest) as unknown as LiveOptions, Number(rest[0])).then(() => process.exit(0), fail);
  else if (role === 'destination') runDestination(rest[0], Number(rest[1]), optsFrom(rest)).then(() => process.exit(0), fail);
  else if (role === 'guest') runGuest(rest[0], optsFrom(rest)).then(() => process.exit(0), fail);
  else orchestrate(process.argv.slice(2)).catch(fail);
}

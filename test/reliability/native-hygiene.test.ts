// Native hygiene: handles that JavaScript can misuse (a handle of the wrong
// kind, a poller stopped twice) and an environment torn down while a native
// toucher is blocked in a fault nobody resolves. Misuse must be a TypeError or
// a no-op, teardown must neither crash nor unmap memory under a thread.
import { spawn } from 'node:child_process';
import { readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { PAGE_SIZE } from '../../lib/index';
import { PollerHandle, native } from '../../lib/native';
import { TIME_SCALE, distEntry, itWith, root, waitFor } from '../helpers';
import { leakWatch } from './support';

const nativeEntry = join(root, 'dist', 'lib', 'native.js');

/** Runs `script` in a fresh Node process: misuse that corrupts memory must not take the test runner down with it. */
function runChild(script: string, ms = 20_000): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const killer = setTimeout(() => child.kill('SIGKILL'), ms * TIME_SCALE);
  return new Promise((resolve) => child.once('close', (code, signal) => {
    clearTimeout(killer);
    resolve({ code, signal, stdout, stderr });
  }));
}

/** Two turns of the event loop: uv_close callbacks of handles closed now have run. */
const closeCallbacksRun = async (): Promise<void> => {
  for (let i = 0; i < 2; i++) await new Promise<void>((r) => setImmediate(r));
};

function socketPair(): [number, number] {
  const pair = native.socketPair();
  if (typeof pair === 'number') throw new Error(`socketPair: ${pair}`);
  return pair;
}

describe('native handles', () => {
  // The only other kind of handle the addon hands out is the fault engine's. On
  // an untagged addon it is read as a Poller: memory corruption, so that part
  // runs in a child whose crash fails the test instead of the runner.
  it('a value that is not a poller handle, an engine handle included, is a TypeError for pollerStop/pollerRef', async () => {
    for (const bogus of [{}, null, undefined, 42, 'handle', new ArrayBuffer(8)]) {
      expect(() => native.pollerStop(bogus as unknown as PollerHandle)).toThrow(TypeError);
      expect(() => native.pollerRef(bogus as unknown as PollerHandle, true)).toThrow(TypeError);
    }
    const result = await runChild(`
      const { native } = require(${JSON.stringify(nativeEntry)});
      const { Memfd, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const uffd = Userfaultfd.open({ features: [] });
      const mem = Memfd.create(${PAGE_SIZE});
      const engine = native.engineCreate(uffd.fd, mem.fd, ${PAGE_SIZE}, 0, 0, new Uint32Array(new SharedArrayBuffer(64)));
      if (native.engineStartThread(engine, 0, () => {}) !== 0) throw new Error('engineStartThread failed');
      const seen = [];
      for (const call of [() => native.pollerStop(engine), () => native.pollerRef(engine, false), () => native.pollerRef(engine, true)]) {
        try { call(); seen.push('returned'); } catch (err) { seen.push(err.constructor.name); }
      }
      native.engineStopThread(engine);
      uffd.close();
      mem.close();
      process.stdout.write(JSON.stringify(seen));
    `);
    expect(result.stderr).toBe('');
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null });
    expect(JSON.parse(result.stdout)).toEqual(['TypeError', 'TypeError', 'TypeError']);
  });

  // A stopped poller is freed once libuv has closed it; a second stop (or a
  // ref) through the External JavaScript still holds must not reach that
  // memory. The allocator hands the freed block to the next poller, so on a
  // use-after-free the stale handle stops the new poller: it goes silent.
  it('pollerStop twice, and pollerRef after stop, are no-ops that leave other pollers alone', async () => {
    const watch = leakWatch();
    const byte = Buffer.alloc(16);
    for (let round = 0; round < 20; round++) {
      const [a, b] = socketPair();
      const stale = native.pollerStart(a, null, () => {}) as PollerHandle;
      expect(typeof stale).toBe('object');
      native.pollerStop(stale);
      await closeCallbacksRun();
      let wakeups = 0;
      const live = native.pollerStart(a, null, () => {
        wakeups++;
        readSync(a, byte);
      }) as PollerHandle;
      expect(typeof live).toBe('object');
      native.pollerStop(stale);
      native.pollerRef(stale, true);
      native.pollerRef(stale, false);
      writeSync(b, 'x');
      await waitFor(() => wakeups > 0, 2000 * TIME_SCALE, `round ${round}: the live poller to see its socket readable`);
      native.pollerStop(live);
      native.pollerStop(live);
      await closeCallbacksRun();
      native.pollerStop(live);
      native.pollerRef(live, true);
      native.closeFd(a);
      native.closeFd(b);
    }
    expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
  });
});

describe('teardown with a blocked native toucher', () => {
  // A worker maps a memfd, registers the view MISSING with its own uffd and
  // starts a native toucher that writes to every page; the first page faults
  // and nobody resolves it. The worker then goes away. Teardown must close
  // the uffd (which lets the fault through), wait for the toucher to finish
  // all its pages on memory that is still mapped, and only then unmap. The
  // pages after the first are ordinary faults that take a while, so unmapping
  // early kills the process with SIGSEGV. The memfd belongs to the child's
  // main thread, which reads back what the toucher wrote.
  // 'uffd-held': the main thread holds a duplicate of the worker's uffd, so
  // closing the worker's fd releases nothing and the fault stays blocked
  // past teardown. Teardown must then give up waiting (not hang) and leave
  // the mapping mapped under the thread; when the main thread closes its
  // duplicate, the toucher finishes on that mapping instead of crashing.
  const childScript = (pages: number, how: 'process.exit' | 'terminate' | 'uffd-held'): string => `
    const { readdirSync, readFileSync } = require('node:fs');
    const { Worker } = require('node:worker_threads');
    const { native } = require(${JSON.stringify(nativeEntry)});
    const { Memfd, PAGE_SIZE } = require(${JSON.stringify(distEntry)});
    const threads = () => readdirSync('/proc/self/task').length;
    const memfdMaps = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.includes('/memfd:')).length;
    const settle = async (cond) => {
      const deadline = Date.now() + ${5000 * TIME_SCALE};
      while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    };
    const mem = Memfd.create(${pages} * PAGE_SIZE, { name: 'teardown' });
    const before = { threads: threads(), maps: memfdMaps() };
    const report = {};
    let held = -1;
    const worker = new Worker(${JSON.stringify(`
      const { parentPort, workerData } = require('node:worker_threads');
      const { Memfd, Userfaultfd, touchPages } = require(workerData.entry);
      const view = Memfd.fromFd(workerData.fd).map();
      const uffd = Userfaultfd.open({ features: [] });
      uffd.register(view, { missing: true });
      touchPages(view, Array.from({ length: workerData.pages }, (_, i) => i), { write: 7 });
      // Wait until the toucher is blocked in its first fault (the event is
      // read, the fault stays unresolved), then go away.
      (function wait() {
        if (uffd.readEvents().some((e) => e.type === 'pagefault')) {
          parentPort.postMessage({ uffd: uffd.fd });
          if (workerData.how === 'process.exit') process.exit(0);
          // 'uffd-held': exit once the main thread holds its duplicate.
          if (workerData.how === 'uffd-held') parentPort.once('message', () => process.exit(0));
          return;
        }
        setImmediate(wait);
      })();
    `)}, { eval: true, workerData: { entry: ${JSON.stringify(distEntry)}, fd: mem.fd, pages: ${pages}, how: ${JSON.stringify(how)} } });
    worker.on('message', (m) => {
      if (${JSON.stringify(how)} === 'uffd-held') {
        held = native.dupFd(m.uffd);
        worker.postMessage('held');
      }
      if (${JSON.stringify(how)} === 'terminate') worker.terminate();
    });
    worker.once('error', (err) => { throw err; });
    worker.once('exit', async () => {
      if (held >= 0) {
        report.whileHeld = { threads: threads() - before.threads, maps: memfdMaps() - before.maps };
        native.closeFd(held);
      }
      await settle(() => threads() <= before.threads && (held >= 0 || memfdMaps() <= before.maps));
      const bytes = Buffer.alloc(1);
      let written = 0;
      for (let p = 0; p < ${pages}; p++) {
        mem.read(p * PAGE_SIZE, bytes);
        if (bytes[0] === 7) written++;
      }
      mem.close();
      Object.assign(report, { written, threads: threads() - before.threads, maps: memfdMaps() - before.maps });
      process.stdout.write(JSON.stringify(report));
    });
  `;

  const pages = 16384;
  for (const how of ['process.exit', 'terminate'] as const) {
    itWith([], `the worker ends with ${how}: no crash, every page written, the mapping unmapped afterwards, nothing left behind`, async () => {
      const result = await runChild(childScript(pages, how), 30_000);
      expect(result.stderr).toBe('');
      expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null });
      expect(JSON.parse(result.stdout)).toEqual({ written: pages, threads: 0, maps: 0 });
    }, 40_000);
  }

  itWith([], 'the uffd is still held elsewhere: teardown gives up waiting, the mapping stays mapped under the toucher, which finishes once the uffd is released', async () => {
    const result = await runChild(childScript(pages, 'uffd-held'), 30_000);
    expect(result.stderr).toBe('');
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 0, signal: null });
    // The blocked toucher survives its environment, and so does its mapping
    // (pinned: deliberately never unmapped, a bounded leak instead of a crash).
    expect(JSON.parse(result.stdout)).toEqual({ whileHeld: { threads: 1, maps: 1 }, written: pages, threads: 0, maps: 1 });
  }, 40_000);
});

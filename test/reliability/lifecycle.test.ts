// Lifecycle: environments that come and go (worker_threads loading the
// addon 100 times), processes that exit or are terminated while their faulters
// are blocked, and a faulting process that dies while its faults are served.
// Nothing may hang, crash, or leave a descriptor or a thread behind.
import { spawn, spawnSync } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';

import { FaultHandler, FdSocket, Memfd, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { distEntry, fixture, itWith, waitFor, scaled } from '../helpers';
import { leakWatch, threadCount } from './support';

const ROUNDS = 100;

describe('lifecycle', () => {
  itWith(['minorShmem'], `${ROUNDS} workers in a row load the addon, register, fault and exit: no fd or thread growth`, async () => {
    // One warm-up round so that lazily created process-wide resources exist before the baseline.
    const runOne = (round: number) => new Promise<{ faults: number; checksum: number }>((resolve, reject) => {
      const worker = new Worker(fixture('rel-lifecycle-worker.js'), { workerData: { entry: distEntry, round } });
      let result: { faults: number; checksum: number } | undefined;
      worker.once('message', (m) => (result = m));
      worker.once('error', reject);
      worker.once('exit', (code) => (code === 0 && result ? resolve(result) : reject(new Error(`worker ${round} exited ${code}`))));
    });
    await runOne(-1);
    const watch = leakWatch();
    const threads = threadCount();
    for (let round = 0; round < ROUNDS; round++) {
      const { faults, checksum } = await runOne(round);
      expect(faults).toBe(4);
      const base = 1 + (round % 7);
      expect(checksum).toBe(4 * base + 6);
    }
    // Exited workers' threads are joined; give the kernel a moment to reap them.
    await waitFor(() => threadCount() <= threads, 5000, `threads back to ${threads} (now ${threadCount()})`);
    expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
  }, 120_000);

  // A child with faulters blocked on pages nobody will resolve: a native
  // toucher, a worker touching from JavaScript and, in one variant, a native
  // FaultHandler whose fetch never settles. Exit and SIGTERM must both end it.
  const blockedChild = (how: 'exit' | 'sigterm' | 'handler-exit') => `
    const { Worker } = require('node:worker_threads');
    const { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(${JSON.stringify(distEntry)});
    const mem = Memfd.create(8 * PAGE_SIZE);
    mem.allocate(0, 8 * PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    let started = 0;
    if (${JSON.stringify(how)} === 'handler-exit') {
      new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => new Promise(() => {}) }).attach(view, { missing: true }).start();
      mem.punchHole(0, 8 * PAGE_SIZE);
    } else {
      uffd.register(view, { minor: true });
    }
    touchPages(view, [0, 1]);
    const w = new Worker(${JSON.stringify(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Memfd } = require(${JSON.stringify(distEntry)});
      const v = Memfd.fromFd(workerData.fd).map();
      parentPort.postMessage('mapped');
    `)}, { eval: true, workerData: { fd: mem.fd } });
    setTimeout(() => {
      process.stdout.write('blocked\\n');
      if (${JSON.stringify(how)} !== 'sigterm') process.exit(0);
    }, 200);
    setInterval(() => {}, 1000);
  `;

  for (const how of ['exit', 'sigterm', 'handler-exit'] as const) {
    itWith(['minorShmem', 'threadId'], `a process with blocked faulters ends promptly on ${how === 'sigterm' ? 'SIGTERM' : how === 'exit' ? 'process.exit' : 'process.exit with a native FaultHandler mid-fetch'}`, async () => {
      const child = spawn(process.execPath, ['-e', blockedChild(how)], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => {
        out += d;
        if (how === 'sigterm' && out.includes('blocked')) child.kill('SIGTERM');
      });
      child.stderr.on('data', (d) => (err += d));
      // A hard bound: a child still alive after it is killed outright, and the test fails.
      const killer = setTimeout(() => child.kill('SIGKILL'), scaled(10_000));
      const [code, signal] = await new Promise<[number | null, string | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s])));
      clearTimeout(killer);
      expect(out, err).toContain('blocked');
      if (how === 'sigterm') expect(signal).toBe('SIGTERM');
      else expect({ code, signal, err }).toEqual({ code: 0, signal: null, err: '' });
    }, 20_000);
  }

  // The faulting process sends its uffd to this one, faults in a loop and is
  // killed while its faults are served: CONTINUE then answers ESRCH, which the
  // handler treats as benign; the raw call reports it as a typed error.
  for (const mode of ['event-loop', 'native'] as const) {
    itWith(['minorShmem', 'threadId'], `a faulting child killed mid-stream: ESRCH is benign (${mode} handler)`, async () => {
      const watch = leakWatch();
      const pages = 64;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'esrch' });
      for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, p + 1));
      const [mine, theirs] = FdSocket.pair();
      const script = `
        const { FdSocket, Memfd, Userfaultfd, touchPages } = require(${JSON.stringify(distEntry)});
        const mem = Memfd.fromFd(3);
        const view = mem.map();
        const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
        uffd.register(view, { minor: true });
        new FdSocket(4).send(JSON.stringify({ address: view.address, length: view.length }), [uffd.fd]);
        const all = Array.from({ length: ${pages} }, (_, i) => i);
        (async () => { for (;;) { await touchPages(view, all); view.advise('dontneed'); } })();
      `;
      const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit', mem.fd, theirs.fd] });
      theirs.close();
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      let handler: FaultHandler | undefined;
      let uffd: Userfaultfd | undefined;
      try {
        const msg = await mine.receive();
        const view = JSON.parse(msg.data.toString());
        expect(msg.fds).toHaveLength(1);
        uffd = Userfaultfd.fromFd(msg.fds[0]);
        handler = new FaultHandler(uffd, { memfd: mem, mode, fetch: () => {} });
        handler.markPresent(0, pages * PAGE_SIZE);
        handler.attach({ address: view.address, length: view.length, offset: 0 }, { register: false }).start();
        await waitFor(() => handler!.stats().resolved > 3 * pages, 15_000, 'faults served');
        child.kill('SIGKILL');
        await exited;
        // Whatever was in flight is answered ESRCH now; nothing may throw or hang.
        const address = view.address as number;
        let err: unknown;
        try {
          uffd.continue(address, PAGE_SIZE);
        } catch (e) {
          err = e;
        }
        expect(err).toMatchObject({ code: 'ESRCH', errno: -3, syscall: 'ioctl', operation: 'UFFDIO_CONTINUE' });
        await handler.stop();
        expect(await handler.finished).toBeUndefined();
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        await exited;
        await handler?.stop();
        uffd?.close();
        mine.close();
        mem.close();
      }
      expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
    }, 30_000);
  }

  it('a uffd whose registered process is gone: every resolving call is a typed ESRCH or ENOENT, close works', () => {
    const child = spawnSync(process.execPath, ['-e', 'process.exit(0)']);
    expect(child.status).toBe(0);
    // Covered with a real dead mm by the tests above; here the local uffd outlives its mappings.
    const mem = Memfd.create(PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem'] });
    uffd.register(view, { minor: true });
    const { address } = view;
    mem.close();
    expect(() => uffd.continue(address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    expect(() => uffd.wake(address, PAGE_SIZE)).not.toThrow();
    uffd.close();
  });
});

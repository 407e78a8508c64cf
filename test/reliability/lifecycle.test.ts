// Lifecycle: environments that come and go (worker_threads loading the
// addon 100 times), processes that exit or are terminated while their faulters
// are blocked, and a faulting process that dies while its faults are served.
// Nothing may hang, crash, or leave a descriptor or a thread behind.
import { spawn } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { describe, expect } from 'vitest';

import { FaultHandler, FdSocket, Memfd, PAGE_SIZE, UffdError, Userfaultfd } from '../../lib/index';
import { caps, distEntry, fixture, itWith, scaled, waitFor } from '../helpers';
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
  // FaultHandler whose fetch never settles. "blocked" is printed once two
  // threads of the child sleep in handle_userfault (the kernel says so in
  // /proc/self/task/*/wchan); exit and SIGTERM must then both end it.
  const blockedChild = (how: 'exit' | 'sigterm' | 'handler-exit', jsWorker: boolean) => `
    const fs = require('node:fs');
    const { Worker } = require('node:worker_threads');
    const { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(${JSON.stringify(distEntry)});
    const mem = Memfd.create(8 * PAGE_SIZE);
    mem.allocate(0, 8 * PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    let handler;
    if (${JSON.stringify(how)} === 'handler-exit') {
      handler = new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => new Promise(() => {}) }).attach(view, { missing: true }).start();
      mem.punchHole(0, 8 * PAGE_SIZE);
    } else {
      uffd.register(view, { minor: true });
    }
    touchPages(view, [0, 1]);
    const want = ${jsWorker ? 2 : 1};
    const inFault = () => fs.readdirSync('/proc/self/task').filter((t) => {
      try { return fs.readFileSync('/proc/self/task/' + t + '/wchan', 'utf8') === 'handle_userfault'; } catch { return false; }
    }).length;
    // The worker maps its own view; this thread registers it (same mm), then
    // the worker reads page 2 from JavaScript and blocks in the fault.
    const w = new Worker(${JSON.stringify(`
      const { workerData, parentPort } = require('node:worker_threads');
      const { Memfd } = require(${JSON.stringify(distEntry)});
      const v = Memfd.fromFd(workerData.fd).map();
      parentPort.once('message', () => {
        const byte = new Uint8Array(v.buffer)[2 * 4096];
        parentPort.postMessage({ unblocked: byte });
      });
      parentPort.postMessage({ address: v.address, length: v.length });
    `)}, { eval: true, workerData: { fd: mem.fd } });
    w.once('message', (m) => {
      if (handler) handler.attach({ address: m.address, length: m.length, offset: 0 }, { missing: true });
      else uffd.register(m, { minor: true });
      if (${jsWorker}) w.postMessage('touch');
      const poll = setInterval(() => {
        if (inFault() < want) return;
        clearInterval(poll);
        process.stdout.write('blocked\\n');
        if (${JSON.stringify(how)} !== 'sigterm') process.exit(0);
      }, 1);
    });
    setInterval(() => {}, 1000);
  `;

  // process.exit() while a worker thread is blocked in a fault used to hang
  // for good: Node joins its workers before the addon's cleanup hook closes
  // the uffd, and the worker cannot leave the kernel until the uffd wakes it.
  // The library closes every uffd from the process 'exit' event. SIGTERM's
  // default action does not join workers.
  const cases = [
    ['exit', false], ['sigterm', false], ['handler-exit', false],
    ['exit', true], ['sigterm', true], ['handler-exit', true],
  ] as const;
  for (const [how, jsWorker] of cases) {
    const title = `a process with ${jsWorker ? 'a native toucher and a worker touching from JavaScript' : 'a native toucher'} blocked in faults ends promptly on ${how === 'sigterm' ? 'SIGTERM' : how === 'exit' ? 'process.exit' : 'process.exit with a native FaultHandler mid-fetch'}`;
    const run = async () => {
      const child = spawn(process.execPath, ['-e', blockedChild(how, jsWorker)], { stdio: ['ignore', 'pipe', 'pipe'] });
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
    };
    itWith(['minorShmem', 'threadId'], title, run, 20_000);
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
        handler.present.mark(0, pages * PAGE_SIZE);
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

  // A uffd outlives the process whose memory it covers: a child opens it,
  // registers a view of its own, sends it here and exits. Measured on Linux
  // 6.18: every ioctl that resolves a fault needs the registered mm and
  // answers ESRCH once it is gone; MOVE refuses any cross-mm call (EINVAL,
  // alive or not); REGISTER/UNREGISTER cannot take the mm either (ENOMEM);
  // WAKE has nobody to wake and succeeds; there are no events; close works.
  itWith(['minorShmem', 'missingShmem'], 'a uffd whose registered process is gone: every resolving call is a typed ESRCH, close works', async () => {
    const watch = leakWatch();
    const [mine, theirs] = FdSocket.pair();
    const features = ['minorShmem', 'missingShmem', ...(caps.features.poison ? ['poison'] : []), ...(caps.features.wpUnpopulated ? ['wpUnpopulated'] : [])];
    const script = `
      const { FdSocket, Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(distEntry)});
      const mem = Memfd.create(4 * PAGE_SIZE);
      mem.write(0, Buffer.alloc(PAGE_SIZE, 0x5a)); // page 0 is in the page cache, pages 1-3 are holes
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ${JSON.stringify(features)} });
      uffd.register(view, { minor: true, missing: true });
      const sock = new FdSocket(3);
      sock.send(JSON.stringify({ address: view.address, length: view.length }), [uffd.fd]);
      // Stays alive until told to exit; reports what the parent's CONTINUE mapped.
      sock.receive().then(() => {
        sock.send(String(new Uint8Array(view.buffer)[0]));
        process.exit(0);
      });
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit', theirs.fd] });
    theirs.close();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const killer = setTimeout(() => child.kill('SIGKILL'), scaled(20_000));
    let uffd: Userfaultfd | undefined;
    const source = Memfd.create(PAGE_SIZE, { allocate: true });
    const sourceView = source.map();
    try {
      const msg = await mine.receive();
      const { address, length } = JSON.parse(msg.data.toString()) as { address: number; length: number };
      uffd = Userfaultfd.fromFd(msg.fds[0]);
      // While the child lives, the same call works on the child's memory.
      expect(uffd.continue(address, PAGE_SIZE)).toBe(PAGE_SIZE);
      mine.send('exit');
      expect((await mine.receive()).data.toString()).toBe(String(0x5a));
      expect(await exited).toBe(0);

      const calls: Record<string, () => unknown> = {
        UFFDIO_CONTINUE: () => uffd!.continue(address + PAGE_SIZE, PAGE_SIZE),
        'UFFDIO_CONTINUE (onExists: throw)': () => uffd!.continue(address, PAGE_SIZE, { onExists: 'throw' }),
        UFFDIO_COPY: () => uffd!.copy(address + PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 1)),
        'UFFDIO_COPY (copyFrom)': () => uffd!.copyFrom(address + PAGE_SIZE, sourceView.address, PAGE_SIZE),
        UFFDIO_ZEROPAGE: () => uffd!.zeropage(address + PAGE_SIZE, PAGE_SIZE),
        ...(caps.features.poison ? { UFFDIO_POISON: () => uffd!.poison(address + PAGE_SIZE, PAGE_SIZE) } : {}),
        UFFDIO_WRITEPROTECT: () => uffd!.writeProtect(address, PAGE_SIZE, { protect: true }),
      };
      for (const [name, call] of Object.entries(calls)) {
        let err: unknown;
        try {
          call();
        } catch (e) {
          err = e;
        }
        expect(err, name).toBeInstanceOf(UffdError);
        expect(err, name).toMatchObject({ code: 'ESRCH', errno: -3, syscall: 'ioctl', operation: name.split(' ')[0] });
      }
      if (caps.features.move) expect(() => uffd!.move(address, sourceView.address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'EINVAL', operation: 'UFFDIO_MOVE' }));
      expect(() => uffd!.register({ address, length }, { minor: true })).toThrow(expect.objectContaining({ code: 'ENOMEM', operation: 'UFFDIO_REGISTER' }));
      expect(() => uffd!.unregister({ address, length })).toThrow(expect.objectContaining({ code: 'ENOMEM', operation: 'UFFDIO_UNREGISTER' }));
      expect(uffd.wake(address, length)).toBeUndefined();
      expect(uffd.readEvents()).toEqual([]);
      uffd.close();
      expect(uffd.closed).toBe(true);
    } finally {
      clearTimeout(killer);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
      if (uffd && !uffd.closed) uffd.close();
      mine.close();
      sourceView.unmap();
      source.close();
    }
    expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
  }, 30_000);
});

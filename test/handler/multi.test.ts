// Worker threads, native threads and child processes fault one memfd at
// once: one handler per uffd, all sharing one present map, so every page is
// fetched once overall however many processes and threads touch it.
import { spawn } from 'node:child_process';
import { Worker } from 'node:worker_threads';
import { describe, expect } from 'vitest';

import { FaultHandler, FdSocket, Memfd, PAGE_SIZE, PresentPages, Userfaultfd, touchPages } from '../../lib/index';
import { distEntry, fixture, itWith, scaled } from '../helpers';
import { cleanupAfterEach, delay, expectPages, pageContent, pageContentModule, rng, settledStats, shuffled } from './util';

const { open, handlers } = cleanupAfterEach();

function startChild(mem: Memfd, seed: number) {
  const [parentEnd, childEnd] = FdSocket.pair();
  open.push(parentEnd);
  const child = spawn(process.execPath, [fixture('child-toucher.js'), distEntry, pageContentModule, String(seed)], {
    stdio: ['ignore', 'inherit', 'inherit', childEnd.fd, mem.fd],
    timeout: scaled(25_000),
  });
  childEnd.close();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { socket: parentEnd, exited };
}

for (const mode of ['event-loop', 'native'] as const) {
  describe(`FaultHandler, many faulters at once (${mode})`, () => {
    itWith(['minorShmem', 'threadId'], '2 workers + 2 native threads + 2 child processes over 1024 pages: one fetch per page overall, every byte checked', async () => {
      const pages = 1024;
      const mem = Memfd.create(pages * PAGE_SIZE, { name: 'multi', allocate: true });
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
      open.push(mem, uffd);
      const present = new PresentPages(mem.size, PAGE_SIZE);
      const random = rng(99);
      const fetches = new Map<number, number>();
      const fetch = async (f: { page: number; offset: number }) => {
        fetches.set(f.page, (fetches.get(f.page) ?? 0) + 1);
        if (random() < 0.3) await delay(random() * 4);
        mem.write(f.offset, pageContent(f.page));
      };
      const main = new FaultHandler(uffd, { memfd: mem, mode, present, fetch, concurrency: 32 });
      handlers.push(main);
      const guest = mem.map();
      main.attach(guest).start();

      const children = [startChild(mem, 1), startChild(mem, 2)];
      const childHandlers: FaultHandler[] = [];
      for (const c of children) {
        const hello = await c.socket.receive();
        expect(hello.fds).toHaveLength(1);
        const view = JSON.parse(hello.data.toString());
        const childUffd = Userfaultfd.fromFd(hello.fds[0]);
        open.push(childUffd);
        const h = new FaultHandler(childUffd, { memfd: mem, mode, present, fetch, concurrency: 32 });
        handlers.push(h);
        childHandlers.push(h);
        h.attach({ ...view, offset: 0 }, { register: false }).start();
      }

      const workers = [0, 1].map(() => new Worker(fixture('touch-worker.js'), { workerData: { entry: distEntry, fd: mem.fd } }));
      try {
        const views = await Promise.all(workers.map((w) => new Promise<{ address: number; length: number }>((r) => w.once('message', r))));
        views.forEach((v) => main.attach({ ...v, offset: 0 }));
        const workerDone = workers.map((w, i) => new Promise<{ seen: number[] }>((resolve, reject) => {
          w.on('message', (m) => m.type === 'done' && resolve(m));
          w.once('error', reject);
          w.postMessage({ pages: shuffled(pages, rng(40 + i)) });
        }));
        const childDone = children.map((c) => {
          c.socket.send('go');
          return c.socket.receive().then((m) => JSON.parse(m.data.toString()));
        });
        const natives = [7, 8].map((s) => touchPages(guest, shuffled(pages, rng(s))));
        const [w, c] = await Promise.all([Promise.all(workerDone), Promise.all(childDone), Promise.all(natives)]);
        for (const [i, result] of w.entries()) {
          const order = shuffled(pages, rng(40 + i));
          const expected = order.flatMap((p) => [pageContent(p)[0], pageContent(p)[PAGE_SIZE - 1]]);
          expect(result.seen).toEqual(expected);
        }
        for (const result of c) expect(result).toMatchObject({ pages, bad: [] });
        expect(fetches.size).toBe(pages);
        expect([...fetches.entries()].filter(([, n]) => n !== 1)).toEqual([]);
        expectPages(new Uint8Array(guest.buffer), shuffled(pages, random));
        const all = await Promise.all([main, ...childHandlers].map((h) => settledStats(h)));
        const total = all.reduce((s, x) => s + x.fetched, 0);
        expect(total).toBe(pages);
        for (const s of all) expect(s.resolved).toBe(s.faults);
        // Each child faulted every page of its own view once.
        for (const s of all.slice(1)) expect(s.faults).toBe(pages);
        for (const ch of children) ch.socket.close();
        expect(await Promise.all(children.map((ch) => ch.exited))).toEqual([0, 0]);
      } finally {
        await Promise.all(workers.map((w) => w.terminate()));
      }
    }, 60_000);
  });
}

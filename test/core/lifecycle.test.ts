// Environments and processes ending with things open: worker_threads that
// load and unload the addon, and a process exiting with views, uffds and a
// blocked faulter.
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect } from 'vitest';

import { distEntry, fixture, itWith, root, scaled } from '../helpers';
import { openFdCount } from './support';

function runWorker(): Promise<{ fds: number[] }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(fixture('lifecycle-worker.js'), { workerData: { entry: distEntry } });
    let reply: { fds: number[] } | undefined;
    worker.once('message', (m) => {
      reply = m;
      // The poller keeps the worker alive: end it from outside.
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', () => (reply ? resolve(reply) : reject(new Error('worker exited without replying'))));
  });
}

const memfdMappings = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('memfd:lifecycle')).length;

describe('lifecycle', () => {
  itWith(['minorShmem'], 'worker_threads load and unload the addon cleanly, many in a row: no fd or mapping leaks', async () => {
    await runWorker(); // warm-up: libuv and V8 open what they keep
    const fdsBefore = openFdCount();
    const seenFds = new Set<number>();
    for (let i = 0; i < 12; i++) {
      const { fds } = await runWorker();
      for (const fd of fds) seenFds.add(fd);
      expect(openFdCount()).toBe(fdsBefore);
      expect(memfdMappings()).toBe(0);
    }
    // Descriptors are reused because every worker closed its own.
    expect(seenFds.size).toBeLessThanOrEqual(4);
  }, 60_000);

  itWith(['minorShmem'], 'a process exits 0 with views, a registered uffd, an event poller and a blocked faulter', () => {
    const script = `
      const { Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const mem = Memfd.create(8 * PAGE_SIZE);
      mem.write(0, Buffer.alloc(mem.size, 1));
      const guest = mem.map();
      mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem'] });
      uffd.register(guest, { minor: true });
      const it = uffd.events();
      it.next().then(() => {
        // A native thread is now asleep in a fault nobody will resolve.
        process.stdout.write('faulted;');
        process.exit(0);
      });
      touchPages(guest, [3]);`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(15_000) });
    expect(r.error).toBeUndefined();
    expect(r.stdout).toBe('faulted;');
    expect(r.stderr).toBe('');
    expect([r.status, r.signal]).toEqual([0, null]);
  });

  itWith(['minorShmem'], 'a process whose loop drains exits 0 by itself with mappings and a uffd open', () => {
    const script = `
      const { Memfd, PAGE_SIZE, Userfaultfd } = require(${JSON.stringify(join(root, 'dist/lib/index.js'))});
      const mem = Memfd.create(4 * PAGE_SIZE);
      mem.write(0, Buffer.alloc(mem.size, 1));
      const guest = mem.map();
      Userfaultfd.open({ features: ['minorShmem'] }).register(guest, { minor: true });
      process.stdout.write('done');`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: scaled(15_000) });
    expect([r.stdout, r.stderr, r.status, r.signal]).toEqual(['done', '', 0, null]);
  });
});


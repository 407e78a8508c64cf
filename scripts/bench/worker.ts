// Worker-thread roles of the benchmark. `handler`: a FaultHandler on this
// worker's own event loop serving the main thread's view. `toucher`: maps the
// memfd, lets the main thread register the view, then touches it, timing each
// first touch natively on this thread.
import { parentPort, workerData } from 'node:worker_threads';

import { FaultHandler, Memfd, Userfaultfd } from '../../lib/index';
import { GcWatch } from './gc-watch';
import { bench } from './native';

interface HandlerData {
  role: 'handler';
  fd: number;
  hugePageSize?: number;
  address: number;
  length: number;
  cpu: number;
}
interface ToucherData {
  role: 'toucher';
  fd: number;
  hugePageSize?: number;
}

const data = workerData as HandlerData | ToucherData;
const port = parentPort!;
const mem = Memfd.fromFd(data.fd, data.hugePageSize ? { hugePageSize: data.hugePageSize } : {});

if (data.role === 'handler') {
  const huge = data.hugePageSize !== undefined;
  try {
    const uffd = Userfaultfd.open({ features: [huge ? 'minorHugetlbfs' : 'minorShmem', 'threadId'] });
    const handler = new FaultHandler(uffd, {
      memfd: mem,
      fetch: () => {
        throw new Error('benchmark pages are all present: fetch must never be called');
      },
      mode: 'event-loop',
    });
    handler.attach({ address: data.address, length: data.length, offset: 0 });
    handler.present.mark(0, mem.size);
    bench.pinSelf(data.cpu);
    handler.start();
    // The main thread sleeps in its faults while this loop serves them; if
    // something went wrong, closing the uffd wakes it rather than hanging.
    const watchdog = setTimeout(() => uffd.close(), 120_000);
    const gcWatch = new GcWatch();
    port.once('message', async () => {
      clearTimeout(watchdog);
      const gc = gcWatch.end();
      await handler.stop();
      const stats = handler.stats();
      uffd.close();
      mem.close();
      port.postMessage({ faults: stats.faults, resolved: stats.resolved, errors: stats.errors, p50: stats.latencyUs.p50, p99: stats.latencyUs.p99, gc });
    });
    port.postMessage({ ready: true, tid: bench.gettid() });
  } catch (err) {
    port.postMessage({ error: (err as Error).message });
  }
} else {
  const view = mem.map();
  view.advise('random');
  port.postMessage({ address: view.address, length: view.length });
  port.once('message', (msg: { order: Uint32Array; cpu: number }) => {
    bench.pinSelf(msg.cpu);
    const r = bench.touchHere(view.buffer, mem.pageSize, msg.order);
    view.unmap();
    mem.close();
    port.postMessage({ latencyNs: r.latencyNs, touchCpus: r.touchCpus, checksum: r.checksum, wallNs: r.wallNs });
  });
}

// The restore benchmark's guest, a process as Firecracker's would be: it
// maps the (empty) guest memfd on fd 4, registers it MISSING|MINOR with its
// own uffd and sends the uffd over the socket on fd 3, so the benchmark's
// page server (the library or the C reference) serves its faults. Told its
// trace, it computes it and says ready; told to go, its native toucher
// threads touch the trace (bench::TouchGroup), and it reports when it was
// done on the machine's monotonic clock, and a digest of every byte of the
// pages it touched (read after the timed part), for the benchmark to check
// against the image.
import { FdSocket, Memfd, Userfaultfd } from '../../lib/index';
import { bench } from './native';
import { TraceSpec, restoreTrace } from './restore-trace';

async function next(sock: FdSocket): Promise<Record<string, unknown>> {
  const msg = await sock.receive();
  if (msg.data.length === 0) throw new Error('benchmark closed the socket');
  return JSON.parse(msg.data.toString()) as Record<string, unknown>;
}

async function main(): Promise<void> {
  const sock = new FdSocket(3);
  const mem = Memfd.fromFd(4);
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  uffd.register(view, { minor: true, missing: true });
  sock.send(JSON.stringify({ address: view.address, length: view.length, pageSize: mem.pageSize }), [uffd.fd]);
  // The page server holds its own copy now.
  uffd.close();
  const trace = restoreTrace((await next(sock)).trace as TraceSpec);
  sock.send(JSON.stringify({ ready: true }));
  const go = await next(sock);
  if (!go.go) throw new Error(`expected go, got ${JSON.stringify(go)}`);
  const cpus = trace.perToucher.map(() => -1);
  const r = await bench.touch(view.buffer, mem.pageSize, trace.perToucher, cpus);
  const endNs = r.startNs + r.wallNs;
  const digest = bench.pageDigest(view.buffer, mem.pageSize, trace.order);
  sock.send(JSON.stringify({ startNs: r.startNs, endNs, wallNs: r.wallNs, touched: r.latencyNs.reduce((n, l) => n + l.length, 0), digest }));
  // Stay mapped until the page server has stopped.
  await sock.receive();
  view.unmap();
  mem.close();
  sock.close();
}

main().catch((err) => {
  process.stderr.write(`restore guest: ${(err as Error).stack ?? err}\n`);
  process.exit(3);
});

// The restore benchmark's guest, a process as Firecracker's would be, in
// one of Firecracker's two kinds of guest memory (argv[2]):
// - `memfd` (default): it maps the (empty) guest memfd on fd 4, registers
//   it MISSING|MINOR with its own uffd and sends the uffd over the socket on
//   fd 3 with its hello;
// - `plain`: the same memfd mapped and not registered at all (the floor: the
//   benchmark has filled the memfd, every first touch is an ordinary fault);
// - `anonymous` (argv[3] = bytes): private anonymous memory registered
//   MISSING (Firecracker's one-fd backend). It hands its uffd over when told
//   to: over the socket on fd 3 ({ handoff: 'socket' }), or to a Firecracker
//   page server at a Unix socket path ({ handoff: PATH }) with Firecracker's
//   region message, keeping that connection open until the end as
//   Firecracker does.
// - `three-fd`: the memfd on fd 4 (allocated: every first touch a MINOR
//   fault) registered MINOR, and a userfault bitmap memfd with every bit
//   set (Firecracker's guest_memfd backend); handed over to a Firecracker
//   page server at a path with the three fds, as the one-fd kind is.
// Either way the page server (the library or the C reference) serves its
// faults. Told its trace, it computes it and says ready; told to go, its
// native toucher threads touch the trace (bench::TouchGroup), and it reports
// when it was done on the machine's monotonic clock, and a digest of every
// byte of the pages it touched (read after the timed part), for the
// benchmark to check against the image.
import { FdSocket, Memfd, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { native } from '../../lib/native';
import { bench } from './native';
import { TraceSpec, restoreTrace } from './restore-trace';

const PROT_READ_WRITE = 3;
const MAP_PRIVATE_ANONYMOUS = 0x22;

async function next(sock: FdSocket): Promise<Record<string, unknown>> {
  const msg = await sock.receive();
  if (msg.data.length === 0) throw new Error('benchmark closed the socket');
  return JSON.parse(msg.data.toString()) as Record<string, unknown>;
}

interface GuestMemory {
  address: number;
  buffer: ArrayBuffer;
  pageSize: number;
  /** Anonymous memory and three-fd: the uffd, until it is handed over. */
  uffd?: Userfaultfd;
  /** Three-fd: the memory fd and the userfault bitmap memfd handed over with the uffd. */
  extraFds?: number[];
  release(): void;
}

/** A memfd view registered MISSING|MINOR; the uffd goes with the hello. */
function memfdMemory(sock: FdSocket): GuestMemory {
  const mem = Memfd.fromFd(4);
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  uffd.register(view, { minor: true, missing: true });
  sock.send(JSON.stringify({ address: view.address, length: view.length, pageSize: mem.pageSize }), [uffd.fd]);
  // The page server holds its own copy now.
  uffd.close();
  return { address: view.address, buffer: view.buffer, pageSize: mem.pageSize, release: () => (view.unmap(), mem.close()) };
}

/** The memfd view with no userfaultfd at all: nothing to send but the hello. */
function plainMemory(sock: FdSocket): GuestMemory {
  const mem = Memfd.fromFd(4);
  const view = mem.map();
  sock.send(JSON.stringify({ address: view.address, length: view.length, pageSize: mem.pageSize }));
  return { address: view.address, buffer: view.buffer, pageSize: mem.pageSize, release: () => (view.unmap(), mem.close()) };
}

/** Firecracker's guest_memfd backend: the memory fd registered MINOR, a bitmap of pages not yet populated. */
function threeFdMemory(sock: FdSocket): GuestMemory {
  const mem = Memfd.fromFd(4);
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  uffd.register(view, { minor: true });
  const pages = view.length / mem.pageSize;
  const bitmap = Memfd.create(Math.ceil(Math.ceil(pages / 8) / PAGE_SIZE) * PAGE_SIZE, { name: 'userfault_bitmap' });
  bitmap.write(0, new Uint8Array(Math.ceil(pages / 8)).fill(0xff));
  sock.send(JSON.stringify({ address: view.address, length: view.length, pageSize: mem.pageSize }));
  return {
    address: view.address, buffer: view.buffer, pageSize: mem.pageSize, uffd, extraFds: [mem.fd, bitmap.fd],
    release: () => (view.unmap(), mem.close(), bitmap.close()),
  };
}

/** Anonymous memory registered MISSING; the uffd is handed over later, when the benchmark says where. */
function anonymousMemory(sock: FdSocket, length: number): GuestMemory {
  const mapped = native.mmap(-1, 0, length, PROT_READ_WRITE, MAP_PRIVATE_ANONYMOUS);
  if (typeof mapped === 'number') throw new Error(`mmap of ${length} anonymous bytes: errno ${-mapped}`);
  const [address, buffer] = mapped as [number, ArrayBuffer];
  const uffd = Userfaultfd.open({ features: ['threadId'] });
  uffd.register({ address, length }, { missing: true });
  sock.send(JSON.stringify({ address, length, pageSize: PAGE_SIZE }));
  return { address, buffer, pageSize: PAGE_SIZE, uffd, release: () => native.munmap(address, buffer) };
}

async function main(): Promise<void> {
  const sock = new FdSocket(3);
  const kind = process.argv[2] ?? 'memfd';
  const memory = kind === 'anonymous' ? anonymousMemory(sock, Number(process.argv[3])) : kind === 'plain' ? plainMemory(sock) : kind === 'three-fd' ? threeFdMemory(sock) : memfdMemory(sock);
  let pageServer: FdSocket | undefined;
  const trace = restoreTrace((await next(sock)).trace as TraceSpec);
  sock.send(JSON.stringify({ ready: true }));
  let msg = await next(sock);
  if (msg.handoff !== undefined) {
    const uffd = memory.uffd;
    if (!uffd) throw new Error('only anonymous and three-fd memory is handed over on request');
    // The restore's clock starts here, for the library and the C reference alike.
    const handedNs = bench.now();
    if (msg.handoff === 'socket') sock.send(JSON.stringify({ handedNs }), [uffd.fd]);
    else {
      pageServer = FdSocket.connect(msg.handoff as string);
      const regions = [{ base_host_virt_addr: memory.address, size: memory.buffer.byteLength, offset: 0, page_size: memory.pageSize }];
      pageServer.send(JSON.stringify(regions), [uffd.fd, ...(memory.extraFds ?? [])]);
      sock.send(JSON.stringify({ handedNs }));
    }
    // The page server holds its own copy now: when it goes, the faulters wake.
    uffd.close();
    msg = await next(sock);
  }
  if (!msg.go) throw new Error(`expected go, got ${JSON.stringify(msg)}`);
  const cpus = trace.perToucher.map(() => -1);
  const r = await bench.touch(memory.buffer, memory.pageSize, trace.perToucher, cpus);
  const endNs = r.startNs + r.wallNs;
  const digest = bench.pageDigest(memory.buffer, memory.pageSize, trace.order);
  sock.send(JSON.stringify({ startNs: r.startNs, endNs, wallNs: r.wallNs, touched: r.latencyNs.reduce((n, l) => n + l.length, 0), digest }));
  // Stay mapped (and connected to a Firecracker page server) until the page server has stopped.
  await sock.receive();
  pageServer?.close();
  memory.release();
  sock.close();
}

main().catch((err) => {
  process.stderr.write(`restore guest: ${(err as Error).stack ?? err}\n`);
  process.exit(3);
});

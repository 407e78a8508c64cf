// Handing guest memory to a page-serving process: the uffd (which stays tied
// to the guest's address space whoever holds it) and the memfd, with the
// metadata the receiver needs, in one SCM_RIGHTS message.
import { argValueError, stateError } from '../errors';
import { FdSocket } from '../fd-socket';
import { Memfd } from '../memfd';
import { Userfaultfd } from '../userfaultfd';
import * as v from '../validate';
import type { GuestView } from './destination-options';

const KIND = 'userfaultfd-guest-memory';
const VERSION = 1;

/** What {@link sendGuestMemory} sends besides the descriptors. */
export interface GuestMemoryInfo {
  /** The registered views, as addresses in the sender's process. */
  views: GuestView[];
  /** Anything else the receiver should know (JSON-serialisable). */
  meta?: unknown;
}

/** What {@link receiveGuestMemory} yields; the receiver owns both objects. */
export interface ReceivedGuestMemory extends GuestMemoryInfo {
  uffd: Userfaultfd;
  memfd: Memfd;
  /** pid, uid, gid of the sender (SO_PEERCRED). */
  peer: { pid: number; uid: number; gid: number };
}

/**
 * Sends a uffd and the memfd behind its registered views over a Unix socket.
 * The sender should close its own copy of the uffd afterwards: as long as any
 * copy is open the registration lives, and a receiver that dies would leave
 * faulting threads asleep instead of waking them.
 */
export function sendGuestMemory(socket: FdSocket, uffd: Userfaultfd, memfd: Memfd, info: GuestMemoryInfo): void {
  if (!(socket instanceof FdSocket)) throw argValueError('socket', 'must be an FdSocket', socket);
  if (!(uffd instanceof Userfaultfd)) throw argValueError('uffd', 'must be a Userfaultfd', uffd);
  if (!(memfd instanceof Memfd)) throw argValueError('memfd', 'must be a Memfd', memfd);
  const opts = v.options<GuestMemoryInfo>('info', info);
  if (!Array.isArray(opts.views)) throw argValueError('info.views', 'must be an array', opts.views);
  const views = opts.views.map((view, i) => ({ ...v.range(`info.views[${i}]`, view, memfd.pageSize), offset: view.offset ?? 0 }));
  const json = Buffer.from(JSON.stringify({
    kind: KIND, version: VERSION, size: memfd.size, pageSize: memfd.pageSize, hugetlb: memfd.hugetlb, views, meta: opts.meta ?? null,
  }));
  const message = Buffer.alloc(4 + json.length);
  message.writeUInt32LE(json.length, 0);
  json.copy(message, 4);
  socket.send(message, [uffd.fd, memfd.fd]);
}

/** Receives what {@link sendGuestMemory} sent. Fails loudly on anything else. */
export async function receiveGuestMemory(socket: FdSocket, options?: { signal?: AbortSignal }): Promise<ReceivedGuestMemory> {
  const head = await socket.receiveExactly(4, options);
  const length = head.data.readUInt32LE(0);
  if (length > 1 << 20) {
    head.fds.forEach((fd) => Memfd.fromFd(fd, { owned: true }).close());
    throw stateError('ERR_UFFD_HANDOFF', `guest memory handoff announces ${length} bytes of metadata`);
  }
  const body = await socket.receiveExactly(length, options);
  const fds = [...head.fds, ...body.fds];
  let parsed: { kind?: unknown; version?: unknown; size?: number; pageSize?: number; hugetlb?: boolean; views?: GuestView[]; meta?: unknown };
  try {
    parsed = JSON.parse(body.data.toString('utf8'));
  } catch {
    parsed = {};
  }
  if (parsed.kind !== KIND || parsed.version !== VERSION || fds.length !== 2) {
    for (const fd of fds) Memfd.fromFd(fd, { owned: true }).close();
    throw stateError('ERR_UFFD_HANDOFF', `not a guest memory handoff (kind ${String(parsed.kind)}, version ${String(parsed.version)}, ${fds.length} descriptors)`);
  }
  const uffd = Userfaultfd.fromFd(fds[0]);
  const memfd = Memfd.fromFd(fds[1], { owned: true, hugePageSize: parsed.hugetlb ? parsed.pageSize : undefined });
  return { uffd, memfd, views: parsed.views ?? [], meta: parsed.meta, peer: socket.peerCredentials() };
}

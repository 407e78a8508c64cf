// The restore benchmark's guest process as its page servers see it:
// spawned (scripts/bench/restore-guest.ts), handed its trace, told to hand
// over its uffd and to go, and asked for its report, every wait bounded: a
// guest that hangs (a fault nobody answered) is killed and fails the round
// instead of hanging the benchmark. Also turns a guest's report and a page
// server's counters into one repetition's figures.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

import { FdSocket, Memfd } from '../../lib/index';
import type { RestoreRep } from './restore';
import type { TraceSpec } from './restore-trace';

const GUEST = join(__dirname, 'restore-guest.js');
/** A guest that has not finished by then has a fault nobody answered. */
export const GUEST_TIMEOUT_MS = 120_000;

/** Rejects when `p` has not settled in `ms`, after calling `onTimeout`. */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string, onTimeout: () => void = () => {}): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        onTimeout();
        reject(new Error(`${what}: no answer in ${ms} ms`));
      }, ms);
    }),
  ]);
}

async function receiveJson(sock: FdSocket): Promise<{ json: Record<string, unknown>; fds: number[] }> {
  const msg = await sock.receive();
  if (msg.data.length === 0) throw new Error('guest closed the socket');
  return { json: JSON.parse(msg.data.toString()) as Record<string, unknown>, fds: msg.fds };
}

/** What a guest reports when its touchers are done. */
export interface GuestDone {
  startNs: number;
  endNs: number;
  wallNs: number;
  touched: number;
  digest: string;
}

export interface Guest {
  sock: FdSocket;
  /** The guest's uffd: received with the hello (memfd guest) or by handOff('socket'); -1 until then. */
  uffdFd: number;
  address: number;
  length: number;
  /**
   * Anonymous guests: hands the uffd over, here ('socket': `uffdFd` is set)
   * or to the Firecracker page server listening at a path. Resolves with the
   * guest's clock just before it handed over.
   */
  handOff(to: 'socket' | string): Promise<number>;
  go(): Promise<GuestDone>;
  finish(): Promise<void>;
  kill(): void;
}

/**
 * Starts a guest, hands it the trace, and waits until it is ready to go:
 * over `mem` (a MISSING|MINOR memfd view, its uffd sent with the hello;
 * `register: false`, the view without any userfaultfd; `threeFd`, the view
 * registered MINOR and handed over later with a bitmap, as Firecracker's
 * guest_memfd backend does), or
 * `{ anonymous: bytes }` (MISSING anonymous memory, handed over later).
 */
export async function startGuest(memory: Memfd | { anonymous: number }, spec: TraceSpec, options: { register?: boolean; threeFd?: boolean } = {}): Promise<Guest> {
  const [sock, childEnd] = FdSocket.pair();
  // A guest whose uffd is handed over later, at a path (or here): anonymous memory, or Firecracker's three fds.
  const anonymous = !(memory instanceof Memfd);
  const threeFd = !anonymous && options.threeFd === true;
  const plain = !anonymous && options.register === false;
  const args = anonymous ? [GUEST, 'anonymous', String(memory.anonymous)] : [GUEST, threeFd ? 'three-fd' : plain ? 'plain' : 'memfd'];
  const stdio = anonymous ? ['ignore', 'inherit', 'inherit', childEnd.fd] : ['ignore', 'inherit', 'inherit', childEnd.fd, memory.fd];
  const child = spawn(process.execPath, args, { stdio: stdio as ('ignore' | 'inherit' | number)[] });
  childEnd.close();
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const kill = () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  try {
    const hello = await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest start', kill);
    const uffdWithHello = !anonymous && !plain && !threeFd;
    if (hello.fds.length !== (uffdWithHello ? 1 : 0)) throw new Error(`guest sent ${hello.fds.length} descriptors with its hello, expected ${uffdWithHello ? 'its uffd' : 'none'}`);
    sock.send(JSON.stringify({ trace: spec }));
    await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest trace', kill);
    const guest: Guest = {
      sock, uffdFd: uffdWithHello ? hello.fds[0] : -1, address: hello.json.address as number, length: hello.json.length as number, kill,
      async handOff(to) {
        sock.send(JSON.stringify({ handoff: to }));
        const handed = await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest hand-off', kill);
        if (to === 'socket') {
          if (handed.fds.length !== 1) throw new Error(`guest handed over ${handed.fds.length} descriptors, expected its uffd`);
          guest.uffdFd = handed.fds[0];
        }
        return handed.json.handedNs as number;
      },
      async go() {
        sock.send(JSON.stringify({ go: true }));
        const done = await withTimeout(receiveJson(sock), GUEST_TIMEOUT_MS, 'guest workload', kill);
        return done.json as unknown as GuestDone;
      },
      async finish() {
        sock.close();
        const code = await withTimeout(exited, 10_000, 'guest exit', kill);
        if (code !== 0) throw new Error(`guest exited with ${code}`);
      },
    };
    return guest;
  } catch (err) {
    kill();
    sock.close();
    throw err;
  }
}

/** One repetition's figures: the guest's report checked against the expected digest, and the page server's counters. */
export function finishRep(done: GuestDone, t0: number, goAt: number, expectedDigest: string, traceLength: number,
  c: { faults: number; demandFetches: number; prefetched: number; bytesMoved: number; resolvedAll: boolean; note?: string }): RestoreRep {
  const digestOk = done.digest === expectedDigest;
  return {
    timeNs: done.endNs - t0, guestNs: done.wallNs, beforeGoNs: goAt - t0, faults: c.faults, demandFetches: c.demandFetches, prefetched: c.prefetched,
    bytesMoved: c.bytesMoved, touched: done.touched, digestOk, allResolved: digestOk && done.touched === traceLength && c.resolvedAll,
    ...(c.note ? { note: c.note } : {}),
  };
}

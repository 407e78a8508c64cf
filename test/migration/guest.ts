// A migration test's guest: a process (test/fixtures/migrate-guest.js) that
// maps a memfd, registers it with its own uffd and sends both over a Unix
// socket, then answers the test's messages over IPC.
import { ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';

import { FdServer, ReceivedGuestMemory, receiveGuestMemory } from '../../lib/index';
import { distEntry, fixture, scaled } from '../helpers';

export interface Guest {
  child: ChildProcess;
  memory: ReceivedGuestMemory;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  ask<T>(msg: object, reply: string): Promise<T>;
}

/** Starts a guest of `pages` pages and receives its uffd and memfd; what it opens goes on `cleanups`. */
export async function startGuest(pages: number, cleanups: (() => void)[]): Promise<Guest> {
  const dir = mkdtempSync(join(tmpdir(), 'uffd-migrate-'));
  const path = join(dir, 'guest.sock');
  const server = FdServer.listen(path);
  const child = fork(fixture('migrate-guest.js'), [distEntry, path, String(pages)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  cleanups.push(() => server.close());
  cleanups.push(() => child.kill('SIGKILL'));
  const sock = await server.accept({ signal: AbortSignal.timeout(scaled(10_000)) });
  const memory = await receiveGuestMemory(sock, { signal: AbortSignal.timeout(scaled(10_000)) });
  sock.close();
  cleanups.push(() => memory.uffd.close());
  cleanups.push(() => memory.memfd.close());
  expect(memory.peer.pid).toBe(child.pid);
  const ask = <T>(msg: object, reply: string) => new Promise<T>((resolve, reject) => {
    const onMessage = (m: { type: string }) => {
      if (m.type === reply) {
        child.off('message', onMessage);
        resolve(m as T);
      }
    };
    child.on('message', onMessage);
    child.once('exit', (code, signal) => reject(new Error(`guest exited (${code ?? signal}) before answering ${reply}`)));
    child.send(msg);
  });
  return { child, memory, exit, ask };
}

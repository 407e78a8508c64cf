// A Firecracker handshake that fails after the uffd was received must still
// release everything: every fd received (uffd, memory fd, bitmap fd) and every
// object made from them. Firecracker's vCPUs sleep on the uffd until its last
// descriptor closes, so with onFailure 'close' a leaked uffd means a peer that
// hangs forever. The peer here is a Node process (the C stand-in only sends
// good handshakes): it registers memory with its own uffd, has a native
// thread block in a fault on it, sends the handshake, closes its own copy of
// the uffd and waits for the thread to be woken.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect } from 'vitest';

import { FirecrackerPageServer } from '../../lib/index';
import { TIME_SCALE, distEntry, itWith } from '../helpers';
import { leakWatch } from '../reliability/support';

const dir = mkdtempSync(join(tmpdir(), 'uffd-fc-handshake-'));
let socketCount = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface BadHandshake {
  name: string;
  /** 1: the uffd alone; 3: uffd, memory memfd, bitmap memfd (of `bitmapBytes`). */
  fds: 1 | 3;
  bitmapBytes?: number;
  /** The region array, given the peer's registered view. */
  regions: string;
  /** Text after the region array in the same message (read as fault requests). */
  trailing?: string;
  error: RegExp;
}

// Each fails only after Userfaultfd.fromFd took the uffd out of the fd list.
const cases: BadHandshake[] = [
  {
    name: 'three fds, userfault bitmap too small',
    fds: 3,
    bitmapBytes: 0,
    regions: '[{"base_host_virt_addr":ADDR,"size":16384,"offset":0,"page_size":4096}]',
    error: /ERR_FIRECRACKER_HANDSHAKE.*fewer bits than the 4 pages/,
  },
  {
    name: 'three fds, regions of different page sizes',
    fds: 3,
    bitmapBytes: 4096,
    regions: '[{"base_host_virt_addr":ADDR,"size":16384,"offset":0,"page_size":4096},{"base_host_virt_addr":70368744177664,"size":2097152,"offset":2097152,"page_size":2097152}]',
    error: /ERR_FIRECRACKER_HANDSHAKE.*one page size for every region/,
  },
  {
    name: 'one fd, a region too large to track (2^50 bytes)',
    fds: 1,
    regions: '[{"base_host_virt_addr":ADDR,"size":1125899906842624,"offset":0,"page_size":4096}]',
    error: /Invalid typed array length/,
  },
  {
    name: 'one fd, garbage after the region array (fails once the session is serving)',
    fds: 1,
    regions: '[{"base_host_virt_addr":ADDR,"size":16384,"offset":0,"page_size":4096}]',
    trailing: 'garbage',
    error: /ERR_FIRECRACKER_PROTOCOL/,
  },
];

function peerScript(path: string, c: BadHandshake): string {
  return `
    const { FdSocket, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(${JSON.stringify(distEntry)});
    const mem = Memfd.create(4 * PAGE_SIZE, { name: 'guest' });
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: [] });
    uffd.register(view, { missing: true });
    touchPages(view, [0]).then(() => {
      process.stdout.write('woken');
      process.exit(0);
    });
    (function whenBlocked() {
      if (!uffd.readEvents().some((e) => e.type === 'pagefault')) return setImmediate(whenBlocked);
      const fds = [uffd.fd];
      if (${c.fds} === 3) {
        const bitmap = Memfd.create(PAGE_SIZE, { name: 'bitmap' });
        bitmap.truncate(${c.bitmapBytes ?? 0});
        fds.push(mem.fd, bitmap.fd);
      }
      const socket = FdSocket.connect(${JSON.stringify(path)});
      socket.send(${JSON.stringify(c.regions)}.replace(/ADDR/g, String(view.address)) + ${JSON.stringify(c.trailing ?? '')}, fds);
      // From here on only the page server holds the uffd: its close is what wakes the toucher.
      uffd.close();
    })();
    setInterval(() => {}, 1000);
  `;
}

describe('Firecracker handshake failures release what they received', () => {
  for (const c of cases) {
    itWith([], `${c.name}: it fails, no fd is left open here, and the peer's blocked fault is woken (onFailure 'close')`, async () => {
      const path = join(dir, `fc-${socketCount++}.sock`);
      const server = FirecrackerPageServer.listen(path, { snapshot: Buffer.alloc(16384), onFailure: 'close' });
      const child = spawn(process.execPath, ['-e', peerScript(path, c)], { stdio: ['ignore', 'pipe', 'pipe'] });
      // After the spawn: the child's stdio pipes are not the server's to close.
      const watch = leakWatch();
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      const exited = new Promise<[number | null, string | null]>((resolve) => child.once('close', (code, signal) => resolve([code, signal])));
      // A peer still blocked after this long was left hanging: kill it and fail.
      const killer = setTimeout(() => child.kill('SIGKILL'), 10_000 * TIME_SCALE);
      try {
        let error: Error | undefined;
        await server.accept({ signal: AbortSignal.timeout(10_000 * TIME_SCALE) }).then((s) => s.close(), (err) => (error = err));
        expect(error).toBeInstanceOf(Error);
        expect(`${(error as Error & { code?: string }).code} ${error!.message}`).toMatch(c.error);
        server.close();
        expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
        const [code, signal] = await exited;
        expect({ code, signal, stdout, stderr }).toEqual({ code: 0, signal: null, stdout: 'woken', stderr: '' });
      } finally {
        clearTimeout(killer);
        child.kill('SIGKILL');
        server.close();
      }
    }, 30_000);
  }
});

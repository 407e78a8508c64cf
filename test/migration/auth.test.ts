// Who may connect to a source: loopback by default, a pre-shared token
// (challenge-response both ways), TLS with client certificates. Every refusal
// happens before the first page leaves the source.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import { afterAll, afterEach, beforeAll, describe, expect } from 'vitest';

import { Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import type { MigrationTls } from '../../lib/index';
import { Frame, FrameDecoder, encodeAuth } from '../../lib/migration/protocol';
import { itUnless, itWith, missingReason } from '../helpers';

const cleanups: (() => void)[] = [];
afterEach(() => {
  while (cleanups.length) cleanups.pop()!();
});

const TOKEN = randomBytes(32);
const PAGES = 32;

/** A guest in this process: a view registered MISSING|MINOR, touched by native threads. */
function guest() {
  const mem = Memfd.create(PAGES * PAGE_SIZE);
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  uffd.register(view, { missing: true, minor: true });
  cleanups.push(() => mem.close(), () => uffd.close());
  return { mem, view, uffd };
}

/** Runs a whole migration; resolves with the destination's memfd bytes checked against the image. */
async function migrate(sourceOpts: object, destOpts: object): Promise<void> {
  const image = randomBytes(PAGES * PAGE_SIZE);
  const source = await MigrationSource.listen(image, { ...sourceOpts });
  cleanups.push(() => source.close());
  const { mem, view, uffd } = guest();
  const dest = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: source.address.port, mode: 'native', ...destOpts });
  const touched = touchPages(view, [3, 30, 17]);
  const stats = await dest.done;
  await touched;
  expect(stats.pagesOnDemand + stats.pagesPushed).toBe(PAGES);
  expect(mem.read(0, PAGES * PAGE_SIZE).equals(image)).toBe(true);
}

/** A raw client: the frames the source sends, until it closes. */
function rawClient(port: number, onFrame: (f: Frame, socket: net.Socket) => void, connectTls?: tls.ConnectionOptions): Promise<{ frames: Frame[]; error?: Error }> {
  return new Promise((resolve) => {
    const frames: Frame[] = [];
    const decoder = new FrameDecoder(() => PAGE_SIZE);
    const socket = connectTls ? tls.connect({ port, host: '127.0.0.1', ...connectTls }) : net.connect({ port, host: '127.0.0.1' });
    let error: Error | undefined;
    socket.on('data', (chunk) => {
      for (const f of decoder.push(chunk)) {
        frames.push(f);
        onFrame(f, socket);
      }
    });
    socket.on('error', (e) => (error = e));
    socket.on('close', () => resolve({ frames, error }));
  });
}

describe('who may connect to a migration source', () => {
  itWith(['minorShmem', 'missingShmem', 'threadId'], 'listens on loopback unless a host is given', async () => {
    const source = await MigrationSource.listen(Buffer.alloc(PAGE_SIZE));
    cleanups.push(() => source.close());
    expect(source.address.address).toBe('127.0.0.1');
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'the same token at both ends: the migration runs, every byte arrives', async () => {
    await migrate({ token: TOKEN }, { token: TOKEN });
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'no token, a wrong token, a forged answer: refused before any page is sent', async () => {
    const image = randomBytes(PAGES * PAGE_SIZE);
    const outcomes: Promise<unknown>[] = [];
    const source = await MigrationSource.listen(image, { token: TOKEN, onConnection: (r) => outcomes.push(r) });
    cleanups.push(() => source.close());
    const port = source.address.port;
    for (const token of [undefined, randomBytes(32)]) {
      const { mem, view, uffd } = guest();
      const connecting = MigrationDestination.connect({ uffd, memfd: mem, views: [view], port, token });
      const err = await connecting.then((d) => d.done).then(() => undefined, (e) => e);
      expect(err, String(token)).toMatchObject({ code: 'ERR_MIGRATION_AUTH' });
      expect(err.message).toMatch(token ? /wrong token/ : /requires a token/);
      // Nothing arrived: the memfd is still all holes.
      expect(mem.read(0, PAGES * PAGE_SIZE).equals(Buffer.alloc(PAGES * PAGE_SIZE))).toBe(true);
    }
    // A client that answers the challenge with garbage sees a challenge, then an error: never a hello or a page.
    const { frames } = await rawClient(port, (f, socket) => {
      if (f.type === 'challenge') socket.write(encodeAuth(randomBytes(32), randomBytes(32)));
    });
    expect(frames.map((f) => f.type)).toEqual(['challenge', 'error']);
    expect(frames[1]).toMatchObject({ code: 'ERR_MIGRATION_AUTH' });
    const results = await Promise.all(outcomes.map((o) => o.then(() => 'served', (e) => e.code)));
    expect(results).toEqual(['ERR_MIGRATION_AUTH', 'ERR_MIGRATION_AUTH', 'ERR_MIGRATION_AUTH']);
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'a client that never authenticates is dropped after authTimeoutMs', async () => {
    const outcomes: Promise<unknown>[] = [];
    const source = await MigrationSource.listen(Buffer.alloc(PAGES * PAGE_SIZE), { token: TOKEN, authTimeoutMs: 100, onConnection: (r) => outcomes.push(r) });
    cleanups.push(() => source.close());
    const { frames } = await rawClient(source.address.port, () => {});
    expect(frames.map((f) => f.type)).toEqual(['challenge', 'error']);
    await expect(outcomes[0]).rejects.toMatchObject({ code: 'ERR_MIGRATION_AUTH', message: expect.stringMatching(/within 100 ms/) });
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'a destination with a token refuses a source that asks for none', async () => {
    const source = await MigrationSource.listen(Buffer.alloc(PAGES * PAGE_SIZE));
    cleanups.push(() => source.close());
    const { mem, view, uffd } = guest();
    const err = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: source.address.port, token: TOKEN }).then(() => undefined, (e) => e);
    expect(err).toMatchObject({ code: 'ERR_MIGRATION_AUTH', message: expect.stringMatching(/did not authenticate/) });
  });
});

const openssl = (() => {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' });
    return undefined;
  } catch {
    return 'the openssl command (to make test certificates) is not installed';
  }
})();

describe('TLS with mutual authentication', () => {
  let dir = '';
  const pem = (name: string): Buffer => readFileSync(join(dir, name));
  const creds = (ca: string, who: string): MigrationTls => ({ ca: pem(`${ca}.crt`), key: pem(`${who}.key`), cert: pem(`${who}.crt`) });

  beforeAll(() => {
    if (openssl) return;
    dir = mkdtempSync(join(tmpdir(), 'uffd-tls-'));
    const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
    for (const ca of ['ca', 'rogue-ca']) {
      run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${ca}.key`, '-out', `${ca}.crt`, '-days', '1', '-subj', `/CN=${ca}`);
    }
    for (const [who, ca] of [['source', 'ca'], ['destination', 'ca'], ['rogue-source', 'rogue-ca'], ['rogue-destination', 'rogue-ca']]) {
      run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${who}.key`, '-out', `${who}.csr`, '-subj', `/CN=${who}`);
      run('x509', '-req', '-in', `${who}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-out', `${who}.crt`, '-days', '1', '-extfile', 'san.ext');
    }
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const reason = openssl ?? missingReason('minorShmem', 'missingShmem', 'threadId');

  itUnless(reason, 'certificates from the same CA at both ends (and a token on top): the migration runs', async () => {
    await migrate({ tls: creds('ca', 'source'), token: TOKEN }, { tls: creds('ca', 'destination'), token: TOKEN });
  });

  itUnless(reason, "a destination whose certificate the source's CA did not sign is refused before any page is sent", async () => {
    const outcomes: Promise<unknown>[] = [];
    const image = randomBytes(PAGES * PAGE_SIZE);
    const source = await MigrationSource.listen(image, { tls: creds('ca', 'source'), onConnection: (r) => outcomes.push(r) });
    cleanups.push(() => source.close());
    const { mem, view, uffd } = guest();
    const err = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: source.address.port, tls: { ...creds('ca', 'rogue-destination') } })
      .then((d) => d.done).then(() => undefined, (e) => e);
    expect(err).toMatchObject({ code: 'ERR_MIGRATION_AUTH' });
    expect(mem.read(0, PAGES * PAGE_SIZE).equals(Buffer.alloc(PAGES * PAGE_SIZE))).toBe(true);
    // A TLS client with no certificate at all gets no frame either.
    const { frames } = await rawClient(source.address.port, () => {}, { ca: pem('ca.crt'), rejectUnauthorized: true });
    expect(frames).toEqual([]);
    // The handshake failed before the connection reached the source's protocol.
    expect(outcomes).toEqual([]);
  });

  itUnless(reason, "a source whose certificate the destination's CA did not sign is refused", async () => {
    const source = await MigrationSource.listen(Buffer.alloc(PAGES * PAGE_SIZE), { tls: creds('ca', 'rogue-source') });
    cleanups.push(() => source.close());
    const { mem, view, uffd } = guest();
    const err = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: source.address.port, tls: creds('ca', 'destination') }).then(() => undefined, (e) => e);
    expect(err).toMatchObject({ code: 'ERR_MIGRATION_AUTH', message: expect.stringMatching(/TLS with the source/) });
  });
});

// snapshotLive against the real kernel: four native threads keep writing
// while the snapshot is taken, and every image is checked against exactly one
// instant.
//
// How the check is exact: the writers (native/gen_writers.cc) take turns
// under one mutex, so their writes form one sequence. Write s goes to page
// (s * STRIDE) % PAGES and stores its generation s / PAGES + 1 (and the page
// number, which proves the page landed at its own offset in the file). Memory
// at any instant therefore holds exactly the first N writes for some N: in
// write order, the first N % PAGES pages hold generation g + 1 and the rest g
// (N = g * PAGES + N % PAGES). instantOf() finds that N from an image alone,
// or says why the image matches no instant at all (a page saved too late, or
// one saved from before a write that a later-saved page already shows). The
// instant must also be the snapshot's own: the writers' completed count read
// just before the call bounds N from below, their started count read just
// after it (the call returns once every page is protected) bounds it from
// above. After the last snapshot the writers stop, and memory must hold all
// of their writes: a page whose protection was lifted before it was saved,
// or never lifted, would show up as a lost or wrong generation there.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect } from 'vitest';

import { DirtyTracker, Memfd, PAGE_SIZE, snapshotLive } from '../../lib/index';
import { dirtyMethods } from '../../lib/dirty-methods';
import { GenWriters, instantOf, startGenWriters } from '../../lib/gen-writers';
import { itUnless, missingReason, scaled, waitFor } from '../helpers';
import { openFdCount } from '../core/support';

const unsupported = missingReason() ?? dirtyMethods()['wp-sync'].reason;
const dir = mkdtempSync(join(tmpdir(), 'uffd-snapshot-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PAGES = 256;
const STRIDE = 97; // odd, so coprime with PAGES: every page in each round
const WRITERS = 4;

const open: { close(): void }[] = [];
const writers: GenWriters[] = [];
afterEach(() => {
  while (writers.length) writers.pop()!.stop();
  while (open.length) open.pop()!.close();
});

function memfd(pages: number): Memfd {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'snapshot-test' });
  open.push(mem);
  return mem;
}

function start(view: ReturnType<Memfd['map']>): GenWriters {
  const w = startGenWriters(view, WRITERS, STRIDE);
  writers.push(w);
  return w;
}

describe('snapshotLive', () => {
  itUnless(unsupported, 'saves one instant while 4 native threads keep writing, 100 times, and loses no write', async () => {
    const view = memfd(PAGES).map();
    const w = start(view);
    await waitFor(() => w.progress().completed > 2 * PAGES, scaled(5000), 'writers under way');
    const file = join(dir, 'live.img');
    let savedByFault = 0;
    let maxBlockedMs = 0;
    for (let run = 0; run < 100; run++) {
      const before = w.progress().completed;
      const pending = snapshotLive([view], file);
      const after = w.progress().started;
      const stats = await pending;
      expect(stats.pages).toBe(PAGES);
      expect(stats.bytes).toBe(PAGES * PAGE_SIZE);
      expect(stats.savedByFault).toBeLessThanOrEqual(stats.writeFaults);
      savedByFault += stats.savedByFault;
      maxBlockedMs = Math.max(maxBlockedMs, stats.blockedMaxMs);
      expect(statSync(file).size).toBe(PAGES * PAGE_SIZE);
      const instant = instantOf(readFileSync(file), PAGES, PAGE_SIZE, STRIDE);
      if (typeof instant === 'string') throw new Error(`run ${run}: the image is no instant: ${instant}`);
      expect(instant, `run ${run}: the image's instant`).toBeGreaterThanOrEqual(before);
      expect(instant, `run ${run}: the image's instant`).toBeLessThanOrEqual(after);
    }
    // The fault path ran: writers met pages the copier had not reached yet.
    expect(savedByFault).toBeGreaterThan(0);
    const total = w.stop();
    expect(total).toBeGreaterThan(100);
    expect(instantOf(Buffer.from(view.buffer), PAGES, PAGE_SIZE, STRIDE)).toBe(total);
    console.log(`100 snapshots: ${savedByFault} pages saved by a writer's fault, longest wait ${maxBlockedMs.toFixed(3)} ms`);
  }, 60_000);

  itUnless(unsupported, 'lays several views back to back and answers the JavaScript thread\'s own writes', async () => {
    const a = memfd(PAGES).map();
    const b = memfd(4096).map();
    const bytes = new Uint8Array(b.buffer);
    for (let p = 0; p < 4096; p++) bytes[p * PAGE_SIZE + 5] = p & 0xff;
    const w = start(a);
    await waitFor(() => w.progress().completed > PAGES, scaled(5000), 'writers under way');
    const file = join(dir, 'two.img');
    const before = w.progress().completed;
    const pending = snapshotLive([a, b], file);
    const after = w.progress().started;
    // Every page is protected now: these writes fault on this very thread,
    // and only a native thread can answer them.
    for (let p = 4095; p >= 4000; p--) bytes[p * PAGE_SIZE + 5] = 0xee;
    await pending;
    const image = readFileSync(file);
    expect(image.length).toBe((PAGES + 4096) * PAGE_SIZE);
    const instant = instantOf(image.subarray(0, PAGES * PAGE_SIZE), PAGES, PAGE_SIZE, STRIDE);
    if (typeof instant === 'string') throw new Error(`the image is no instant: ${instant}`);
    expect(instant).toBeGreaterThanOrEqual(before);
    expect(instant).toBeLessThanOrEqual(after);
    for (let p = 0; p < 4096; p++) expect(image[(PAGES + p) * PAGE_SIZE + 5], `view 1 page ${p}`).toBe(p & 0xff);
    for (let p = 4000; p < 4096; p++) expect(bytes[p * PAGE_SIZE + 5]).toBe(0xee);
  });

  itUnless(unsupported, 'rejects bad arguments with typed errors and creates no file', async () => {
    const view = memfd(4).map();
    const file = join(dir, 'bad.img');
    const closed = memfd(4).map();
    closed.unmap();
    const cases: [unknown[], string][] = [
      [[undefined, file], 'ERR_INVALID_ARG_TYPE'],
      [[[], file], 'ERR_INVALID_ARG_VALUE'],
      [[[{ pid: 1, address: 0, length: 4096 }], file], 'ERR_INVALID_ARG_TYPE'],
      [[[closed], file], 'ERR_UFFD_CLOSED'],
      [[[view, view], file], 'ERR_INVALID_ARG_VALUE'],
      [[[view], ''], 'ERR_INVALID_ARG_VALUE'],
      [[[view], 42], 'ERR_INVALID_ARG_TYPE'],
      [[[view], file, { signal: 'no' }], 'ERR_INVALID_ARG_TYPE'],
      [[[view], file, 7], 'ERR_INVALID_ARG_TYPE'],
    ];
    for (const [args, code] of cases) {
      await expect((snapshotLive as (...a: unknown[]) => Promise<unknown>)(...args), JSON.stringify(code)).rejects.toMatchObject({ code });
      expect(existsSync(file)).toBe(false);
    }
    // Not a regular file: refused untouched, and never removed.
    await expect(snapshotLive([view], '/dev/null')).rejects.toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    expect(existsSync('/dev/null')).toBe(true);
    // A view another userfaultfd holds.
    const tracker = new DirtyTracker([view], { method: 'wp-sync' });
    open.push(tracker);
    await expect(snapshotLive([view], file)).rejects.toMatchObject({ code: 'EBUSY', message: expect.stringContaining('another userfaultfd') });
    expect(existsSync(file)).toBe(false);
  });

  itUnless(unsupported, 'names a missing directory', async () => {
    const view = memfd(4).map();
    const file = join(dir, 'no-such-dir', 'x.img');
    await expect(snapshotLive([view], file)).rejects.toMatchObject({
      code: 'ENOENT', syscall: 'open', path: file, message: expect.stringContaining(`the directory ${join(dir, 'no-such-dir')} does not exist`),
    });
  });

  itUnless(unsupported, 'aborts mid-way within a bound: writers keep running unblocked, the file is removed, nothing leaks', async () => {
    const pages = 32768; // 128 MiB: the copy is far from done when the abort comes
    const view = memfd(pages).map();
    view.advise('populateWrite');
    const w = start(view);
    await waitFor(() => w.progress().completed > pages, scaled(10_000), 'writers under way');
    const fds = openFdCount();
    const file = join(dir, 'aborted.img');
    const controller = new AbortController();
    const pending = snapshotLive([view], file, { signal: controller.signal });
    const t0 = Date.now();
    controller.abort(new Error('enough'));
    await expect(pending).rejects.toMatchObject({ name: 'AbortError', code: 'ABORT_ERR', cause: { message: 'enough' } });
    expect(Date.now() - t0).toBeLessThan(scaled(2000));
    expect(existsSync(file)).toBe(false);
    expect(openFdCount()).toBe(fds);
    const done = w.progress().completed;
    await waitFor(() => w.progress().completed > done + 2 * pages, scaled(5000), 'writers going on after the abort');
    // The mapping is no longer pinned by the snapshot.
    const total = w.stop();
    writers.pop();
    expect(instantOf(Buffer.from(view.buffer), pages, PAGE_SIZE, STRIDE)).toBe(total);
    view.unmap();
    // An already aborted signal: nothing starts.
    await expect(snapshotLive([memfd(4).map()], file, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORT_ERR' });
    expect(existsSync(file)).toBe(false);
  });
});

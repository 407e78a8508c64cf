// Working-set replay in a migration destination: the set's runs are asked of
// the source right after the hello, first touch first, at prefetch priority.
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as net from 'node:net';
import { afterEach, describe, expect } from 'vitest';

import { Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import type { WorkingSet } from '../../lib/index';
import { FrameDecoder, PRIORITY, encodeBatch, encodeDone, encodeHello } from '../../lib/migration/protocol';
import { itWith, scaled, waitFor } from '../helpers';
import { startGuest } from '../migration/guest';

const cleanups: (() => void)[] = [];
afterEach(() => {
  while (cleanups.length) {
    try {
      cleanups.pop()!();
    } catch {
      // best effort
    }
  }
});

/** This process's guest memory for a destination: a memfd view registered MISSING|MINOR. */
function destinationMemory(pages: number, name: string) {
  const memfd = Memfd.create(pages * PAGE_SIZE, { name });
  cleanups.push(() => memfd.close());
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
  cleanups.push(() => uffd.close());
  const view = memfd.map();
  cleanups.push(() => view.unmap());
  uffd.register(view, { minor: true, missing: true });
  return { memfd, uffd, view };
}

function asSet(pages: readonly number[], total: number): WorkingSet {
  return { pageSize: PAGE_SIZE, memorySize: total * PAGE_SIZE, regions: 1, entries: pages.map((page, rank) => ({ page, rank, timeUs: rank, write: false, region: 0 })) };
}

const range = (first: number, count: number): number[] => Array.from({ length: count }, (_, i) => first + i);

describe('working-set replay (migration destination)', () => {
  itWith(['minorShmem', 'missingShmem'], 'right after the hello the runs are requested at prefetch priority, first touch first, and counted as they arrive', async () => {
    const pages = 256;
    const image = randomBytes(pages * PAGE_SIZE);
    const requests: [number, number, number][] = [];
    let toSource: net.Socket | undefined;
    const server = net.createServer((socket) => {
      toSource = socket;
      socket.on('error', () => {});
      socket.write(encodeHello(PAGE_SIZE, image.length));
      const decoder = new FrameDecoder(() => PAGE_SIZE);
      socket.on('data', (chunk) => {
        for (const f of decoder.push(chunk)) if (f.type === 'request') requests.push([f.priority, f.firstPage, f.pageCount]);
      });
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => server.close());
    const { memfd, uffd, view } = destinationMemory(pages, 'ws-dest');
    // Three stretches in an order that is not address order (12 again: counted once).
    const order = [...range(100, 32), ...range(10, 10), ...range(200, 16), 12];
    const dest = await MigrationDestination.connect({
      uffd, memfd, views: [view], port: (server.address() as net.AddressInfo).port, workingSet: { replay: asSet(order, pages) },
    });
    cleanups.push(() => dest.close());
    await waitFor(() => requests.length === 3, scaled(5000), 'the three requests');
    expect(requests).toEqual([[PRIORITY.prefetch, 100, 32], [PRIORITY.prefetch, 10, 10], [PRIORITY.prefetch, 200, 16]]);
    expect(dest.stats.workingSet!.replay).toMatchObject({ state: 'running', planned: 58, runs: 3, prefetched: 0 });
    for (const [, first, count] of requests) {
      const [head, body] = encodeBatch(true, first, count, image.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
      toSource!.write(Buffer.concat([head, body]));
    }
    await waitFor(() => dest.stats.workingSet!.replay.state === 'done', scaled(5000), 'the set to arrive');
    expect(dest.stats.workingSet!.replay).toMatchObject({ planned: 58, prefetched: 58, skipped: 0, demandFaults: 0, outsideSet: 0 });
    for (const p of order) expect(memfd.read(p * PAGE_SIZE, PAGE_SIZE).equals(image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE))).toBe(true);
    const [head, body] = encodeBatch(false, 0, pages, image);
    toSource!.write(Buffer.concat([head, body, encodeDone(pages)]));
    const stats = await dest.done;
    expect(stats.pagesIgnored).toBe(58);
    expect(stats.workingSet!.replay.state).toBe('done');
  });

  itWith(['minorShmem', 'missingShmem'], 'close during a replay the source never answers: done rejects at once, the replay is stopped with its pages left to faults', async () => {
    const pages = 64;
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.write(encodeHello(PAGE_SIZE, pages * PAGE_SIZE));
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => server.close());
    const { memfd, uffd, view } = destinationMemory(pages, 'ws-dest-close');
    const dest = await MigrationDestination.connect({
      uffd, memfd, views: [view], port: (server.address() as net.AddressInfo).port, onFailure: 'zero', workingSet: { replay: asSet(range(0, 40), pages) },
    });
    expect(dest.stats.workingSet!.replay.state).toBe('running');
    const t0 = performance.now();
    dest.close();
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_ABORTED' });
    expect(performance.now() - t0).toBeLessThan(scaled(2000));
    expect(dest.stats.workingSet!.replay).toMatchObject({ state: 'stopped', planned: 40, prefetched: 0, leftToFaults: 40 });
    dest.close();
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'over loopback with a real source and a guest process: the set arrives before it is touched; only pages outside it are demand faults', async () => {
    const pages = 256;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    const source = await MigrationSource.listen(image, { host: '127.0.0.1', push: false });
    cleanups.push(() => source.close());
    const { uffd, memfd, views } = guest.memory;
    const order = [...range(64, 64), ...range(0, 64)];
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port: source.address.port, mode: 'native', workingSet: { replay: asSet(order, pages) } });
    await waitFor(() => dest.stats.workingSet!.replay.state === 'done', scaled(10_000), 'the set to arrive');
    const all = range(0, pages);
    const touched = await guest.ask<{ seen: number[] }>({ type: 'touch', read: all, write: [] }, 'touched');
    expect(touched.seen).toEqual(all.map((p) => image[p * PAGE_SIZE + 100]));
    const stats = await dest.done;
    const replay = stats.workingSet!.replay;
    console.log(`migration replay: ${replay.prefetched} pages prefetched in ${replay.runs} runs, ${replay.durationMs.toFixed(1)} ms; ${stats.demandFaults} demand faults, ${replay.outsideSet} outside the set`);
    expect(replay).toMatchObject({ state: 'done', planned: 128, prefetched: 128, skipped: 0, runs: 2, outsideSet: 128 });
    expect(stats.demandFaults).toBe(128);
    expect(stats.pagesOnDemand).toBe(pages);
    guest.child.send({ type: 'exit' });
    expect(await guest.exit).toEqual({ code: 0, signal: null });
  });

  itWith(['minorShmem', 'missingShmem'], 'a missing working-set file warns and the migration runs on demand', async () => {
    const pages = 16;
    const image = randomBytes(pages * PAGE_SIZE);
    const guest = await startGuest(pages, cleanups);
    const source = await MigrationSource.listen(image, { host: '127.0.0.1' });
    cleanups.push(() => source.close());
    const { uffd, memfd, views } = guest.memory;
    const warnings: string[] = [];
    const onWarning = (w: Error & { code?: string }) => warnings.push(`${w.code}`);
    process.on('warning', onWarning);
    cleanups.push(() => process.off('warning', onWarning));
    const dest = await MigrationDestination.connect({ uffd, memfd, views, port: source.address.port, workingSet: { replay: '/nonexistent/set.uffdws' } });
    const stats = await dest.done;
    expect(warnings).toEqual(['UFFD_WORKING_SET_IGNORED']);
    expect(stats.workingSet).toBeUndefined();
    guest.child.send({ type: 'exit' });
    expect(await guest.exit).toEqual({ code: 0, signal: null });
  });
});


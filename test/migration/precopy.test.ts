// Pre-copy of a running guest: a native thread keeps writing per-page
// generation counters while rounds send what it wrote; after the pause and
// the stop-and-copy the destination holds the source's memory at the pause,
// byte for byte.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import * as net from 'node:net';
import { afterEach, describe, expect } from 'vitest';

import { FdSocket, Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { FrameDecoder, PROTOCOL_VERSION, encodeBatch, encodeError, encodeHello, encodeRound, encodeSwitchover } from '../../lib/migration/protocol';
import { distEntry, fixture, itWith, scaled, waitFor } from '../helpers';
import { LiveRun, connect, differingPages, liveSource, openFds } from './live-guest';

const FEATURES = ['minorShmem', 'missingShmem', 'threadId', 'wpHugetlbfsShmem'] as const;
const runs: LiveRun[] = [];
const cleanups: (() => void)[] = [];
afterEach(async () => {
  while (cleanups.length) cleanups.pop()!();
  while (runs.length) await runs.pop()!.close();
});

async function start(...args: Parameters<typeof liveSource>): Promise<LiveRun> {
  const run = await liveSource(...args);
  runs.push(run);
  return run;
}

describe('pre-copy migration of a running guest', () => {
  for (const mode of ['event-loop', 'native'] as const)
  itWith([...FEATURES], `rounds send what the guest wrote; after stop-and-copy the destination equals the source at the pause (${mode} fault handler)`, async () => {
    const pages = 1024;
    const run = await start(pages, { mode: 'precopy', maxRounds: 6, stopBelowPages: 8 });
    const dest = await connect(run, { mode });
    let resumableAt = -1;
    void dest.resumable.then(() => (resumableAt = dest.stats.rounds));
    const stats = await dest.done;
    const sourceStats = await run.source.connections[0];
    const live = sourceStats.live!;
    console.log(`precopy (${mode}): rounds ${live.pagesPerRound.join(' + ')}, ${live.pagesAfterPause} after the pause, downtime ${live.downtimeMs.toFixed(1)} ms, ${run.writesAtPause()} guest writes`);
    // The guest wrote during round 0 (capped at ~0.4 s), so at least one more round ran and replaced pages.
    expect(live.mode).toBe('precopy');
    expect(live.rounds).toBeGreaterThanOrEqual(2);
    expect(live.pagesPerRound[0]).toBe(pages);
    expect(live.pagesPerRound[1]).toBeGreaterThan(0);
    expect(stats.rounds).toBe(live.rounds);
    expect(stats.pagesUpdated).toBe(live.pagesPerRound.slice(1).reduce((a, b) => a + b, 0) + live.pagesAfterPause);
    expect(sourceStats.pagesPushed).toBe(pages + stats.pagesUpdated);
    expect(live.downtimeMs).toBeGreaterThan(0);
    // Stop-and-copy: nothing was fetched, the guest could run only after done.
    expect(stats.demandFaults).toBe(0);
    expect(resumableAt).toBe(live.rounds);
    // The guest stayed paused: the source's memory is what it was at the pause.
    expect(run.writer.writes).toBe(run.writesAtPause());
    expect(differingPages(run.src, run.dst, pages)).toEqual([]);
    // Received pages are mapped into the destination's view and read through it.
    expect(Buffer.from(run.dstView.buffer).equals(run.src.read(0, pages * PAGE_SIZE))).toBe(true);
  });

  itWith([...FEATURES, 'wpAsync'], 'a guest in another process: its writes during round 0 are tracked through the uffd it sent, and re-sent', async () => {
    const pages = 64;
    const mem = Memfd.create(pages * PAGE_SIZE);
    mem.write(0, randomBytes(pages * PAGE_SIZE));
    cleanups.push(() => mem.close());
    const [parentEnd, childEnd] = FdSocket.pair();
    cleanups.push(() => parentEnd.close());
    const child = spawn(process.execPath, [fixture('dirty-child.js'), distEntry, 'wpAsync,wpUnpopulated,wpHugetlbfsShmem'], {
      stdio: ['ignore', 'inherit', 'inherit', childEnd.fd, mem.fd], timeout: 25_000,
    });
    childEnd.close();
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    cleanups.push(() => child.kill('SIGKILL'));
    const hello = await parentEnd.receive();
    const range = JSON.parse(hello.data.toString()) as { pid: number; address: number; length: number };
    const guestUffd = Userfaultfd.fromFd(hello.fds[0]);
    cleanups.push(() => guestUffd.close());
    let paused = 0;
    // Round 0 takes about a second: the guest writes while it runs.
    const source = await MigrationSource.listen(mem, {
      batchPages: 8, pushBytesPerSecond: pages * PAGE_SIZE,
      live: { mode: 'precopy', views: [{ ...range, offset: 0 }], uffd: guestUffd, pause: () => void paused++, stopBelowPages: 0 },
    });
    cleanups.push(() => source.close());
    const dst = Memfd.create(pages * PAGE_SIZE);
    const dstView = dst.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
    uffd.register(dstView, { missing: true, minor: true });
    cleanups.push(() => dst.close(), () => uffd.close());
    const dest = await MigrationDestination.connect({ uffd, memfd: dst, views: [dstView], port: source.address.port });
    // Pages 0-7 are on their way (the first batch) when the guest writes them.
    await waitFor(() => dest.stats.pagesPushed >= 8, scaled(5000), 'the first batch');
    parentEnd.send(JSON.stringify({ op: 'write', pages: [1, 2, 3, 60], value: 0xab }));
    await parentEnd.receive();
    const stats = await dest.done;
    expect(paused).toBe(1);
    expect(stats.pagesUpdated).toBeGreaterThanOrEqual(3);
    expect(dst.read(2 * PAGE_SIZE, 1)[0]).toBe(0xab);
    expect(differingPages(mem, dst, pages)).toEqual([]);
    parentEnd.send(JSON.stringify({ op: 'exit' }));
    expect(await exited).toBe(0);
  });

  itWith([...FEATURES], 'a source with a token still migrates a live guest (auth over protocol 3)', async () => {
    const token = randomBytes(32);
    const run = await start(256, { mode: 'precopy' }, { token }, 200);
    const dest = await connect(run, { token });
    await dest.done;
    expect((await run.source.connections[0]).live!.rounds).toBeGreaterThanOrEqual(1);
    expect(differingPages(run.src, run.dst, 256)).toEqual([]);
  });

  for (const failure of ['rejects', 'never settles'] as const)
  itWith([...FEATURES], `a pause() that ${failure} fails both sides with ERR_MIGRATION_PAUSE, bounded; the guest resumes at the source and nothing leaks`, async () => {
    const fdsBefore = openFds();
    let resumed = 0;
    const run = await start(256, {
      mode: 'precopy', maxRounds: 2, pauseTimeoutMs: 300,
      pause: failure === 'rejects' ? () => Promise.reject(new Error('hypervisor said no')) : () => new Promise<void>(() => {}),
      resume: () => resumed++,
    }, {}, 200);
    const t0 = performance.now();
    const dest = await connect(run);
    await expect(run.source.connections[0]).rejects.toMatchObject({ code: 'ERR_MIGRATION_PAUSE' });
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_PAUSE' });
    await expect(dest.resumable).rejects.toMatchObject({ code: 'ERR_MIGRATION_PAUSE' });
    expect(performance.now() - t0).toBeLessThan(scaled(10_000));
    if (failure === 'rejects') await expect(run.source.connections[0]).rejects.toThrow(/hypervisor said no/);
    expect(resumed).toBe(1);
    // The writer was never paused: it goes on writing, unprotected.
    const writes = run.writer.writes;
    await waitFor(() => run.writer.writes > writes, scaled(5000), 'the writer to write again after the failed pause');
    await runs.pop()!.close();
    expect(openFds()).toBe(fdsBefore);
  });

  itWith([...FEATURES], 'a pause() that settles after the timeout: the migration has failed, so the guest is resumed again and keeps writing', async () => {
    let resumed = 0;
    let pausedLate = false;
    const holder: { run?: LiveRun } = {};
    const run = await start(256, {
      mode: 'precopy', maxRounds: 1, pauseTimeoutMs: 200,
      pause: async () => {
        await new Promise((r) => setTimeout(r, 600));
        await holder.run!.writer.pause();
        pausedLate = true;
      },
      resume: () => {
        resumed++;
        holder.run!.writer.resume();
      },
    }, {}, 200);
    holder.run = run;
    const dest = await connect(run);
    await expect(run.source.connections[0]).rejects.toMatchObject({ code: 'ERR_MIGRATION_PAUSE' });
    await expect(dest.done).rejects.toMatchObject({ code: 'ERR_MIGRATION_PAUSE' });
    expect(resumed).toBe(1);
    await waitFor(() => pausedLate && resumed === 2, scaled(5000), 'the late pause and the second resume');
    const writes = run.writer.writes;
    await waitFor(() => run.writer.writes > writes, scaled(5000), 'the writer to write again after the failed pause');
  });

  itWith([...FEATURES], `protocol ${PROTOCOL_VERSION}: a version 2 peer is refused with ERR_MIGRATION_VERSION either way, before the guest is paused`, async () => {
    // A version 2 source, as a version 3 destination sees it.
    const mem = Memfd.create(4 * PAGE_SIZE);
    const view = mem.map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
    uffd.register(view, { missing: true, minor: true });
    cleanups.push(() => mem.close(), () => uffd.close());
    const server = net.createServer((socket) => {
      socket.on('error', () => {});
      const hello = encodeHello(PAGE_SIZE, 4 * PAGE_SIZE);
      hello.writeUInt32LE(2, 8);
      socket.write(hello);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanups.push(() => server.close());
    // The hello is the first frame: connect() itself rejects.
    await expect(MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: (server.address() as net.AddressInfo).port, onFailure: 'zero' }))
      .rejects.toMatchObject({ code: 'ERR_MIGRATION_VERSION', message: expect.stringMatching(/speaks version 2, this destination version 3/) });

    // A version 2 destination, as a live source sees it: it refuses the hello.
    let paused = 0;
    const run = await start(64, { mode: 'precopy', pause: () => void paused++ });
    const socket = net.connect(run.source.address.port, '127.0.0.1');
    socket.on('error', () => {});
    const decoder = new FrameDecoder(() => PAGE_SIZE);
    const [hello] = await new Promise<ReturnType<FrameDecoder['push']>>((resolve) => socket.once('data', (chunk) => resolve(decoder.push(chunk))));
    expect(hello).toMatchObject({ type: 'hello', version: 3, live: true });
    socket.end(encodeError('ERR_MIGRATION_VERSION', 'migration protocol: the source speaks version 3, this destination version 2'));
    await expect(run.source.connections[0]).rejects.toMatchObject({ code: 'ERR_MIGRATION_VERSION' });
    expect(paused).toBe(0);
  });

  itWith(['minorShmem', 'missingShmem'], 'a destination refuses an update after the switch-over and a done without one', async () => {
    const image = randomBytes(4 * PAGE_SIZE);
    const page = (p: number, update: boolean) => Buffer.concat(encodeBatch(false, p, 1, image.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), update));
    const all = Buffer.concat(encodeBatch(false, 0, 4, image));
    const done = Buffer.alloc(16);
    done.writeUInt32LE(8, 0);
    done[4] = 4;
    const cases: [string, Buffer, RegExp][] = [
      ['update after a post-copy switch-over', Buffer.concat([encodeRound(0, 4), all, encodeSwitchover(true, [[1, 1]]), page(2, true)]), /update of pages 2\+1 after the guest may run here/],
      ['done without a switch-over', Buffer.concat([encodeRound(0, 4), all, done]), /live source said done without a switch-over/],
      ['stale pages outside the image', Buffer.concat([encodeRound(0, 4), all, encodeSwitchover(true, [[3, 2]])]), /stale pages 3\+2 outside/],
    ];
    for (const [name, frames, message] of cases) {
      const mem = Memfd.create(4 * PAGE_SIZE);
      const view = mem.map();
      const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem'] });
      uffd.register(view, { missing: true, minor: true });
      cleanups.push(() => mem.close(), () => uffd.close());
      const server = net.createServer((socket) => {
        socket.on('error', () => {});
        socket.write(Buffer.concat([encodeHello(PAGE_SIZE, 4 * PAGE_SIZE, true), frames]));
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      cleanups.push(() => server.close());
      const dest = await MigrationDestination.connect({ uffd, memfd: mem, views: [view], port: (server.address() as net.AddressInfo).port, onFailure: 'zero' });
      const err = await dest.done.then(() => new Error('resolved'), (e: Error) => e);
      expect([name, (err as { code?: string }).code, message.test(err.message)]).toEqual([name, 'ERR_MIGRATION_BAD_FRAME', true]);
    }
  });
});

// Hybrid migration of a running guest: pre-copy rounds, then the switch-over
// to post-copy. Pages the guest wrote at the source after they were sent are
// dropped at the destination before its guest runs, and fetched fresh when
// that guest touches them.
import { afterEach, describe, expect } from 'vitest';

import { PAGE_SIZE, touchPages } from '../../lib/index';
import { itWith } from '../helpers';
import { LiveRun, connect, differingPages, liveSource } from './live-guest';

const FEATURES = ['minorShmem', 'missingShmem', 'threadId', 'wpHugetlbfsShmem'] as const;
const runs: LiveRun[] = [];
afterEach(async () => {
  while (runs.length) await runs.pop()!.close();
});

async function start(...args: Parameters<typeof liveSource>): Promise<LiveRun> {
  const run = await liveSource(...args);
  runs.push(run);
  return run;
}

/** What a reader of every page's first byte must sum to. */
function firstByteSum(bytes: Buffer, pages: number): number {
  let sum = 0;
  for (let p = 0; p < pages; p++) sum += bytes[p * PAGE_SIZE];
  return sum;
}

describe('hybrid migration of a running guest', () => {
  for (const mode of ['event-loop', 'native'] as const)
  itWith([...FEATURES], `stale pages are dropped at the switch-over and fetched fresh on demand; the destination ends equal to the source (${mode} fault handler)`, async () => {
    const pages = 1024;
    // No push after the switch-over: every stale page the guest touches must come by demand.
    const run = await start(pages, { mode: 'hybrid', maxRounds: 2, stopBelowPages: 0 }, { push: false });
    const dest = await connect(run, { mode });
    await dest.resumable;
    // The guest at the destination reads every page from its own thread.
    const read = await touchPages(run.dstView, Array.from({ length: pages }, (_, p) => p));
    const stats = await dest.done;
    const live = (await run.source.connections[0]).live!;
    console.log(`hybrid (${mode}): rounds ${live.pagesPerRound.join(' + ')}, ${live.pagesStale} stale, ${stats.demandFaults} demand faults, downtime ${live.downtimeMs.toFixed(1)} ms`);
    expect(live.mode).toBe('hybrid');
    expect(live.rounds).toBeGreaterThanOrEqual(1);
    expect(live.rounds).toBeLessThanOrEqual(2);
    expect(live.pagesStale).toBeGreaterThan(0);
    expect(stats.pagesStale).toBe(live.pagesStale);
    expect(live.pagesAfterPause).toBe(live.pagesStale);
    // Every stale page was fetched again, on demand, exactly once.
    expect(stats.pagesOnDemand).toBe(live.pagesStale);
    expect(stats.demandFaults).toBeGreaterThanOrEqual(1);
    expect(stats.demandFaults).toBeLessThanOrEqual(live.pagesStale);
    expect(stats.handler).toMatchObject({ errors: 0, poisoned: 0 });
    // The guest stayed paused at the source; the destination holds its final memory,
    // and the destination's thread read the fresh copy of every page.
    expect(run.writer.writes).toBe(run.writesAtPause());
    const final = run.src.read(0, pages * PAGE_SIZE);
    expect(differingPages(run.src, run.dst, pages)).toEqual([]);
    expect(read.checksum).toBe(firstByteSum(final, pages));
  });

  for (const mode of ['event-loop', 'native'] as const)
  itWith([...FEATURES], `with the push on, missing pages arrive by push and demand alike; nothing stale survives (${mode} fault handler)`, async () => {
    const pages = 1024;
    const run = await start(pages, { mode: 'hybrid' });
    const dest = await connect(run, { mode });
    await dest.resumable;
    const read = touchPages(run.dstView, Array.from({ length: pages }, (_, p) => pages - 1 - p));
    const stats = await dest.done;
    const { checksum } = await read;
    const live = (await run.source.connections[0]).live!;
    expect(live.rounds).toBe(1);
    expect(stats.pagesOnDemand + stats.pagesPushed).toBe(pages + live.pagesStale);
    expect(differingPages(run.src, run.dst, pages)).toEqual([]);
    expect(checksum).toBe(firstByteSum(run.src.read(0, pages * PAGE_SIZE), pages));
  });

  itWith([...FEATURES], "live post-copy: the guest is paused at once and every page moves after the switch-over", async () => {
    const pages = 512;
    const run = await start(pages, { mode: 'postcopy' });
    const dest = await connect(run);
    await dest.resumable;
    expect(run.writesAtPause()).toBeDefined();
    const read = touchPages(run.dstView, Array.from({ length: 64 }, (_, p) => p * 8));
    const stats = await dest.done;
    await read;
    const live = (await run.source.connections[0]).live!;
    expect(live).toMatchObject({ mode: 'postcopy', rounds: 0, pagesPerRound: [], msPerRound: [], pagesAfterPause: pages, pagesStale: 0 });
    expect(stats.rounds).toBe(0);
    expect(differingPages(run.src, run.dst, pages)).toEqual([]);
  });
});

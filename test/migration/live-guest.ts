// A live migration in one process: the source guest is a native writer
// thread on a view of the source memfd, bumping per-page generation counters;
// the destination is a memfd whose view is registered MISSING|MINOR.
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';

import { Mapping, Memfd, MigrationDestination, MigrationSource, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import type { DestinationOptions, LiveSourceOptions, SourceOptions } from '../../lib/index';
import { PageWriter, startWriter } from '../../lib/writer';

export interface LiveRun {
  pages: number;
  src: Memfd;
  srcView: Mapping;
  writer: PageWriter;
  dst: Memfd;
  dstView: Mapping;
  uffd: Userfaultfd;
  source: MigrationSource;
  /** Writes the source's guest had made when pause() was acknowledged. */
  writesAtPause: () => number | undefined;
  close(): Promise<void>;
}

export const openFds = (): number => readdirSync('/proc/self/fd').length;

/**
 * Starts the source guest and a live source serving it. The push is capped
 * so that round 0 takes about `roundMs`: the guest writes meanwhile.
 */
export async function liveSource(pages: number, live: Partial<LiveSourceOptions>, sourceOptions: SourceOptions = {}, roundMs = 400): Promise<LiveRun> {
  const size = pages * PAGE_SIZE;
  const src = Memfd.create(size, { name: 'live-source' });
  src.write(0, randomBytes(size));
  const srcView = src.map();
  const writer = startWriter(srcView, { writesPerSecond: 20_000, hotFraction: 0.03 });
  let writesAtPause: number | undefined;
  const source = await MigrationSource.listen(src, {
    batchPages: 16, pushBytesPerSecond: Math.round(size / (roundMs / 1000)), ...sourceOptions,
    live: {
      views: [srcView],
      pause: async () => {
        await writer.pause();
        writesAtPause = writer.writes;
      },
      ...live,
    },
  });
  const dst = Memfd.create(size, { name: 'live-destination' });
  const dstView = dst.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  uffd.register(dstView, { missing: true, minor: true });
  let closed = false;
  return {
    pages, src, srcView, writer, dst, dstView, uffd, source, writesAtPause: () => writesAtPause,
    async close() {
      if (closed) return;
      closed = true;
      source.close();
      await writer.stop();
      uffd.close();
      dstView.unmap();
      srcView.unmap();
      dst.close();
      src.close();
    },
  };
}

export function connect(run: LiveRun, options: Partial<DestinationOptions> = {}): Promise<MigrationDestination> {
  return MigrationDestination.connect({ uffd: run.uffd, memfd: run.dst, views: [run.dstView], port: run.source.address.port, ...options });
}

/** Pages whose bytes differ between the two memfds. */
export function differingPages(a: Memfd, b: Memfd, pages: number): number[] {
  const x = a.read(0, pages * PAGE_SIZE);
  const y = b.read(0, pages * PAGE_SIZE);
  const bad: number[] = [];
  for (let p = 0; p < pages; p++) if (Buffer.compare(x.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), y.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)) !== 0) bad.push(p);
  return bad;
}

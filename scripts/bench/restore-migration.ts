// The restore benchmark's migration rows: post-copy over TCP on loopback.
// A MigrationSource in a process of its own (restore-source.ts) serves the
// image; a MigrationDestination here serves the guest's uffd (a
// MISSING|MINOR memfd view, as the memfd rows' guest) and writes arriving
// pages into the guest's memfd. The guest resumes as soon as the
// destination has the source's hello, as after a post-copy switch-over: on
// demand, each fault is a request and an answer; with a working set, its
// runs are requested at prefetch priority right after the hello and race
// the guest, whose demand requests the source answers first.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

import { Memfd, MigrationDestination, Userfaultfd } from '../../lib/index';
import { bench } from './native';
import type { Recording, RestoreEnv, RestoreRep } from './restore';
import { GUEST_TIMEOUT_MS, Guest, finishRep, withTimeout } from './restore-process';

/** The source process; `close()` ends it. */
export interface SourceProcess {
  port: number;
  close(): void;
}

/** Starts the migration source over `image` and waits for its port. */
export async function startSource(image: Memfd): Promise<SourceProcess> {
  const child = spawn(process.execPath, [join(__dirname, 'restore-source.js')], { stdio: ['pipe', 'pipe', 'inherit', image.fd] });
  const kill = () => {
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  const line = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`migration source exited with ${code} before it listened`)));
  });
  try {
    const { port } = JSON.parse(await withTimeout(line, 30_000, 'migration source start', kill)) as { port: number };
    return {
      port,
      close() {
        child.stdin!.end();
        // It exits when its stdin ends; one that does not is not waited for.
        setTimeout(kill, 5_000).unref();
      },
    };
  } catch (err) {
    kill();
    throw err;
  }
}

export async function migrationRestore(env: RestoreEnv, mem: Memfd, guest: Guest, expectedDigest: string, recording: Recording | undefined): Promise<RestoreRep> {
  const uffd = Userfaultfd.fromFd(guest.uffdFd);
  let dest: MigrationDestination | undefined;
  try {
    const t0 = bench.now();
    dest = await withTimeout(MigrationDestination.connect({
      uffd, memfd: mem, views: [{ address: guest.address, length: guest.length }], port: env.sourcePort, mode: env.handlerMode,
      // Closing the destination after the guest is done abandons the pages
      // nobody asked for: poisoning them would only cost time.
      onFailure: 'zero',
      ...(recording ? { workingSet: { replay: recording.file } } : {}),
    }), GUEST_TIMEOUT_MS, 'migration destination connect', guest.kill);
    let failedEarly: Error | undefined;
    dest.done.catch((err: Error) => (failedEarly ??= err));
    if (recording && !dest.stats.workingSet) throw new Error('the destination ignored the working set');
    const goAt = bench.now();
    const done = await guest.go();
    const stats = dest.stats;
    const handler = dest.faultStats();
    const prefetched = stats.workingSet?.replay.prefetched ?? 0;
    if (failedEarly) throw failedEarly;
    await closeDestination(dest);
    await guest.finish();
    return finishRep(done, t0, goAt, expectedDigest, env.trace.order.length, {
      faults: handler.faults, demandFetches: stats.demandFaults, prefetched, bytesMoved: (stats.pagesOnDemand + stats.pagesPushed) * mem.pageSize,
      resolvedAll: handler.errors === 0 && handler.resolved >= handler.faults - handler.untracked,
    });
  } finally {
    if (dest) await closeDestination(dest);
    uffd.close();
  }
}

/** Gives the migration up (the guest is done or failed) and waits, bounded, until the destination has stopped serving its uffd. */
async function closeDestination(dest: MigrationDestination): Promise<void> {
  dest.close();
  await withTimeout(dest.done.then(() => undefined, () => undefined), 10_000, 'migration destination close').catch(() => undefined);
}

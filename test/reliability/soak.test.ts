// The short soak: scripts/soak.js in a child process (its own descriptors,
// threads and RSS), a few tens of thousands of faults through each way of
// serving them. The million-fault run is `npm run soak`.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect } from 'vitest';

import { itWith, root, scaled } from '../helpers';

const FAULTS = Number(process.env.SOAK_FAULTS ?? 20_000);
// Measured on this machine (Linux 6.18, 20k faults per mode): raw +2.7 MiB
// (first-run JIT and heap), event-loop +0.2 MiB, native +0.0 MiB. The bound
// is 8 MiB per mode: about 0.4 KiB per fault, so a leak of a page-sized
// buffer or a message per fault fails it; smaller per-fault leaks need the
// million-fault `npm run soak`. Under ASan every free() of the process goes
// through its quarantine: scripts/asan.sh widens the bound.
const RSS_BOUND_MIB = process.env.SOAK_RSS_BOUND_MIB ?? '8';

describe('soak (short)', () => {
  itWith(['minorShmem', 'threadId'], `${FAULTS} faults through raw readEvents/continue, the event-loop handler and the native handler: fds and threads come back exactly, RSS within ${RSS_BOUND_MIB} MiB`, () => {
    const child = spawnSync(process.execPath, ['--expose-gc', join(root, 'scripts', 'soak.js'), '--faults', String(FAULTS), '--pages', '256', '--rss-bound-mib', RSS_BOUND_MIB, '--json'], {
      encoding: 'utf8',
      timeout: scaled(110_000),
      killSignal: 'SIGKILL',
    });
    expect(child.signal, child.stderr).toBeNull();
    type Result = { mode: string; faults: number; pass: boolean; growth: { fds: number; threads: number; rssKiB: number }; teardown: { fds: number; threads: number } };
    const results = JSON.parse(child.stdout) as Result[];
    expect(results.map((r) => r.mode)).toEqual(['raw', 'event-loop', 'native']);
    for (const r of results) {
      console.log(`soak ${r.mode}: ${r.faults} faults, RSS ${r.growth.rssKiB >= 0 ? '+' : ''}${r.growth.rssKiB} KiB`);
      expect(r.faults, r.mode).toBeGreaterThanOrEqual(FAULTS);
      // Descriptors and threads come back exactly, during the run and after teardown.
      expect({ growth: [r.growth.fds, r.growth.threads], teardown: [r.teardown.fds, r.teardown.threads] }, r.mode).toEqual({ growth: [0, 0], teardown: [0, 0] });
      expect(r.growth.rssKiB, r.mode).toBeLessThanOrEqual(Number(RSS_BOUND_MIB) * 1024);
      expect(r.pass, JSON.stringify(r)).toBe(true);
    }
    expect(child.status).toBe(0);
  }, 120_000);
});

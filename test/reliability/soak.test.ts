// The short soak: scripts/soak.js in a child process (its own descriptors,
// threads and RSS), a few tens of thousands of faults through each way of
// serving them. The million-fault run is `npm run soak`.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect } from 'vitest';

import { itWith, root, scaled } from '../helpers';

const FAULTS = Number(process.env.SOAK_FAULTS ?? 20_000);
// Under ASan every free() of the process goes through its quarantine: scripts/asan.sh widens the RSS bound.
const RSS_BOUND_MIB = process.env.SOAK_RSS_BOUND_MIB ?? '32';

describe('soak (short)', () => {
  itWith(['minorShmem', 'threadId'], `${FAULTS} faults through raw readEvents/continue, the event-loop handler and the native handler: no fd, thread or RSS growth`, () => {
    const child = spawnSync(process.execPath, ['--expose-gc', join(root, 'scripts', 'soak.js'), '--faults', String(FAULTS), '--pages', '256', '--rss-bound-mib', RSS_BOUND_MIB, '--json'], {
      encoding: 'utf8',
      timeout: scaled(110_000),
      killSignal: 'SIGKILL',
    });
    expect(child.signal, child.stderr).toBeNull();
    const results = JSON.parse(child.stdout) as Array<{ mode: string; faults: number; pass: boolean; growth: { fds: number; threads: number; rssKiB: number } }>;
    expect(results.map((r) => r.mode)).toEqual(['raw', 'event-loop', 'native']);
    for (const r of results) {
      expect(r.faults, r.mode).toBeGreaterThanOrEqual(FAULTS);
      expect(r.growth.fds, r.mode).toBeLessThanOrEqual(0);
      expect(r.growth.threads, r.mode).toBeLessThanOrEqual(0);
      expect(r.pass, JSON.stringify(r)).toBe(true);
    }
    expect(child.status).toBe(0);
  }, 120_000);
});

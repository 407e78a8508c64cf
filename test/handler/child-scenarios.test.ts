// Outcomes that end a process (abort, SIGBUS) or would hang it run in a
// child process with a hard timeout.
import { spawnSync } from 'node:child_process';
import { describe, expect } from 'vitest';

import { PAGE_SIZE } from '../../lib/index';
import { distEntry, fixture, itWith, scaled } from '../helpers';

function runScenario(name: string) {
  const child = spawnSync(process.execPath, [fixture('handler-scenario.js'), distEntry, name], { encoding: 'utf8', timeout: scaled(20_000) });
  const lines = child.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  return { ...child, lines };
}

describe('FaultHandler in child processes', () => {
  itWith(['minorShmem', 'missingShmem', 'threadId'], "native mode: the loop thread faulting on an absent page aborts loudly ('abort')", () => {
    const r = runScenario('loop-thread-abort');
    expect(r.error).toBeUndefined(); // not killed by the timeout: it did not hang
    expect(r.signal).toBe('SIGABRT');
    expect(r.stderr).toMatch(/FATAL: the JavaScript thread \(tid \d+\)/);
    expect(r.stderr).toContain(`memfd offset ${3 * PAGE_SIZE}`);
    expect(r.stderr).toMatch(/must not touch absent pages/);
    expect(r.lines).toEqual([]);
  }, 25_000);

  itWith(['minorShmem', 'missingShmem', 'threadId'], "native mode: 'map-as-is' maps the hole as zeros and reports it", () => {
    const r = runScenario('loop-thread-map-as-is');
    expect(r.error).toBeUndefined();
    expect(r.status, r.stderr).toBe(0);
    expect(r.stderr).toContain('UFFD_LOOP_THREAD_FAULT');
    expect(r.lines).toHaveLength(1);
    const [out] = r.lines;
    expect(out.seen).toEqual([0x11, 0]);
    expect(out.loopThreadFaults).toBe(1);
    expect(out.nativeResolved).toBe(1); // page 0, present: read after stop(), so final
    expect(out.fetched).toBe(0);
    expect(out.reported).toMatchObject({ offset: 3 * PAGE_SIZE });
  }, 25_000);

  for (const [scenario, mode] of [['poison', 'event-loop'], ['poison-native', 'native']] as const) {
    itWith(['minorShmem', 'missingShmem', 'threadId', 'poison'], `error policy 'poison': the faulter gets SIGBUS, other pages are served (${mode})`, () => {
      const r = runScenario(scenario);
      expect(r.error).toBeUndefined();
      expect(r.lines).toEqual([{ before: 0x33 }, { poisonedBefore: 0 }]);
      expect(r.signal).toBe('SIGBUS');
    }, 25_000);
  }
});

// The deadlock rule, enforced where the JavaScript thread reads the uffd:
// touching an absent page of a range only that thread serves ends in a clear
// FATAL message naming the address, not in a silent hang.
import { spawn } from 'node:child_process';
import { describe, expect } from 'vitest';

import { TIME_SCALE, distEntry, fixture, itWith } from '../helpers';

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  killed: boolean;
}

/** Runs the fixture; kills it (and says so) if it is still alive after `ms`. */
function run(reader: string, watchdogMs: number, ms: number): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [fixture('loop-deadlock.js'), distEntry, reader, String(watchdogMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      killed = true;
      child.kill('SIGKILL');
    }, ms * TIME_SCALE);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, killed });
    });
  });
}

const addressOf = (r: Run): string => `0x${(JSON.parse(r.stdout.split('\n')[0]) as { address: number }).address.toString(16)}`;

describe('deadlock watchdog', () => {
  for (const reader of ['handler', 'events', 'read-events'])
    itWith(['minorShmem', 'threadId'], `the JavaScript thread touching a page it must serve itself (${reader}): FATAL with the address and the rule, then abort`, async () => {
      const r = await run(reader, 300, 15_000);
      expect(r.killed, r.stderr).toBe(false);
      expect(r.signal).toBe('SIGABRT');
      expect(r.stderr).toContain('userfaultfd: FATAL: the JavaScript thread');
      expect(r.stderr).toContain(addressOf(r));
      expect(r.stderr).toContain('Rule: the thread that resolves faults must not touch absent pages');
      expect(r.stderr).toContain('deadlockWatchdogMs: 0');
    }, 30_000 * TIME_SCALE);

  itWith(['minorShmem', 'threadId'], 'a busy event loop with a fault waiting is not a deadlock: no abort, the fault is served after', async () => {
    const r = await run('busy', 300, 15_000);
    expect(r.stderr).not.toContain('FATAL');
    expect(r.killed).toBe(false);
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 0, signal: null });
    expect(JSON.parse(r.stdout.split('\n')[1])).toEqual({ served: 9 });
  }, 30_000 * TIME_SCALE);

  itWith(['minorShmem', 'threadId'], 'deadlockWatchdogMs: 0 turns it off: the process hangs as the kernel makes it (killed by the test)', async () => {
    const r = await run('handler', 0, 1500);
    expect(r.killed).toBe(true);
    expect(r.signal).toBe('SIGKILL');
    expect(r.stderr).not.toContain('FATAL');
  }, 30_000 * TIME_SCALE);
});

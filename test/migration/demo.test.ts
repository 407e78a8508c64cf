// `npm run demo:migrate`, as the docs tell users to run it, in a quick size:
// three real processes, real faults, every page checked by the guest. Run a
// few times in both handler modes, because its failure was intermittent (a
// role exited before its last message had left).
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect } from 'vitest';

import { itWith, root } from '../helpers';

function demo(args: string[]): Promise<{ code: number | string; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(root, 'dist/scripts/demo-migrate.js'), ...args], { timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number | string }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

const QUICK = ['--size', '8', '--after-seconds', '0.2', '--push-rate', '32'];

describe('npm run demo:migrate (quick size)', () => {
  for (const native of ['0', '1']) {
    itWith(['minorShmem', 'missingShmem', 'threadId'], `migrates and verifies every page, ${native === '1' ? 'native' : 'event-loop'} handler, three runs in a row`, async () => {
      for (let i = 0; i < 3; i++) {
        const r = await demo([...QUICK, '--native', native]);
        expect([r.code, r.stderr]).toEqual([0, '']);
        expect(r.stdout).toMatch(/pages verified +(\d+) of \1 \(CRC-32 of every page; 0 bad;/);
        expect(r.stdout).toMatch(/migration time +\d/);
      }
    }, 120_000);
  }

  itWith(['minorShmem', 'missingShmem', 'threadId', 'wpHugetlbfsShmem'], 'live modes: pre-copy, post-copy and hybrid of a writing guest, every page verified in each, one table', async () => {
    const r = await demo(['--modes', 'all', '--size', '8', '--after-seconds', '0.2', '--push-rate', '32']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    for (const mode of ['precopy', 'postcopy', 'hybrid']) {
      expect(r.stdout).toMatch(new RegExp(`^${mode} +(\\d+) of \\1 pages verified`, 'm'));
      expect(r.stdout).toMatch(new RegExp(`^\\| ${mode} \\| [\\d.]+ s \\| [\\d.]+ ms \\| [\\d.]+ MiB \\| \\d+`, 'm'));
    }
    expect(r.stdout).toMatch(/pre-copy downtime [\d.]+ ms = [\d.]+% of stop-and-copy of the whole image/);
  }, 120_000);
});

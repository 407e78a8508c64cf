// The checkout after `npm install` (whose prepare step is also the suite's
// global setup): the command the README and the doctor's docs name runs at
// once, from the built CLI, without npm fetching or building anything.
import { spawnSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { root } from '../helpers';

describe('a checkout after npm install', () => {
  it('npx userfaultfd doctor runs the built CLI', () => {
    expect(readlinkSync(join(root, 'node_modules', '.bin', 'userfaultfd'))).toBe(join('..', '..', 'dist', 'lib', 'cli.js'));
    const r = spawnSync('npx', ['--no-install', 'userfaultfd', 'doctor'], { cwd: root, encoding: 'utf8', timeout: 30_000 });
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout.startsWith('userfaultfd doctor\n')).toBe(true);
  });
});

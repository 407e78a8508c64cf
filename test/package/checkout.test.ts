// The checkout after `npm install` (whose prepare step is also the suite's
// global setup): the CLI is built and linked where npm puts the bins of a
// project, so `node_modules/.bin/userfaultfd doctor` and `npm run doctor` run
// it at once, without npm fetching or building anything. (`npx userfaultfd`
// inside the package's own checkout is npm's self-execution: npm 11 installs
// the checkout into its npx cache first, which works but takes a minute; in a
// project that depends on the package, npx runs the linked bin: the tarball
// test checks that.)
import { spawnSync } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import { root, scaled } from '../helpers';

describe('a checkout after npm install', () => {
  it('the linked bin and npm run doctor run the built CLI', () => {
    const bin = join(root, 'node_modules', '.bin', 'userfaultfd');
    expect(readlinkSync(bin)).toBe(join('..', '..', 'dist', 'lib', 'cli.js'));
    const direct = spawnSync(bin, ['doctor'], { cwd: root, encoding: 'utf8', timeout: scaled(30_000) });
    expect([direct.status, direct.stderr]).toEqual([0, '']);
    expect(direct.stdout.startsWith('userfaultfd doctor\n')).toBe(true);
    const script = spawnSync('npm', ['run', '--silent', 'doctor'], { cwd: root, encoding: 'utf8', timeout: scaled(30_000) });
    expect([script.status, script.stderr]).toEqual([0, '']);
    expect(script.stdout.startsWith('userfaultfd doctor\n')).toBe(true);
  });
});

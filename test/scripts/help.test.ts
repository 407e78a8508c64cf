// Every script a user may run answers --help with its usage (exit 0, no
// stack trace), and the ones that take options refuse a wrong one the same
// way (exit 2, the usage on stderr). Scripts are found on disk, so a new one
// is checked without being listed here.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

import { root } from '../helpers';

// scripts/bench/ and scripts/demo-migrate/ hold modules of bench.ts and demo-migrate.ts, usage.js the --help helper: none is run on its own.
const NOT_SCRIPTS = new Set(['scripts/usage.js']);
const isModuleDir = (dir: string) => dir === 'scripts/bench' || dir === 'scripts/demo-migrate';

function scripts(dir = join(root, 'scripts')): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    const rel = relative(root, path);
    if (e.isDirectory()) return isModuleDir(rel) ? [] : scripts(path);
    return /\.(js|ts|sh)$/.test(e.name) && !NOT_SCRIPTS.has(rel) ? [rel] : [];
  });
}

/** How a script is run: TypeScript from its compiled build, shell scripts with bash. */
function command(script: string, args: string[]): [string, string[]] {
  if (script.endsWith('.sh')) return ['bash', [join(root, script), ...args]];
  const file = script.endsWith('.ts') ? join(root, 'dist', script.replace(/\.ts$/, '.js')) : join(root, script);
  return [process.execPath, [file, ...args]];
}

const run = (script: string, args: string[]) => {
  const [cmd, argv] = command(script, args);
  return spawnSync(cmd, argv, { encoding: 'utf8', timeout: 20_000, cwd: root });
};

const STACK = /^\s+at .+[(:]\d+/m;

describe('scripts answer --help', () => {
  const found = scripts();
  it('finds the scripts', () => {
    for (const s of ['scripts/bench.ts', 'scripts/demo-migrate.ts', 'scripts/vm/matrix.js', 'scripts/soak.js']) expect(found).toContain(s);
  });
  for (const script of found) {
    it(`${script} --help prints its usage and exits 0`, () => {
      const r = run(script, ['--help']);
      expect(r.stderr).not.toMatch(STACK);
      expect([r.status, r.signal]).toEqual([0, null]);
      expect(r.stdout.trim().split('\n').length).toBeGreaterThanOrEqual(2);
    });
  }
  for (const script of ['scripts/bench.ts', 'scripts/demo-migrate.ts', 'scripts/vm/matrix.js']) {
    it(`${script} refuses an unknown option with its usage and exit 2, no stack trace`, () => {
      const r = run(script, ['--no-such-option']);
      expect(r.stderr).not.toMatch(STACK);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/no-such-option/);
      expect(r.stderr).toContain(run(script, ['--help']).stdout.split('\n')[0]);
    });
  }
});

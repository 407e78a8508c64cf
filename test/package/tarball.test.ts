// The package as a consumer of the registry gets it: `npm pack`, checked with
// the ecosystem's linters (publint, @arethetypeswrong/cli), installed into a
// scratch project (which compiles the addon, and must not need TypeScript),
// then required, imported and run as a command.
import { spawnSync, SpawnSyncOptions } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { root } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-tarball-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sh = (cmd: string, args: string[], options: SpawnSyncOptions & { timeout: number }) => {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...options });
  return { status: r.status, signal: r.signal, stdout: String(r.stdout), stderr: String(r.stderr), error: r.error };
};
const bin = (name: string) => join(root, 'node_modules', '.bin', name);

let tarball = '';
let files: string[] = [];

beforeAll(() => {
  // dist/ is compiled by the suite's global setup: pack it as it is, without prepare compiling it again.
  const r = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], { cwd: root, timeout: 60_000 });
  expect([r.status, r.error]).toEqual([0, undefined]);
  const [info] = JSON.parse(r.stdout);
  tarball = join(dir, info.filename);
  files = info.files.map((f: { path: string }) => f.path);
}, 90_000);

describe('npm pack', () => {
  it('ships the compiled JavaScript, its types for require and import, the sources, the addon sources and the licence; not the tests, scripts or benchmark', () => {
    for (const f of ['package.json', 'README.md', 'LICENSE', 'binding.gyp', 'native/addon.cc', 'lib/index.ts',
      'dist/lib/index.js', 'dist/lib/index.mjs', 'dist/lib/index.d.ts', 'dist/lib/index.d.mts', 'dist/lib/cli.js']) expect(files).toContain(f);
    for (const f of files) expect(f).not.toMatch(/^(test|scripts|dist\/scripts|native\/bench|build|node_modules|docs)\//);
  });

  it('publint finds nothing to warn about', () => {
    const r = sh(bin('publint'), ['--strict', tarball], { cwd: dir, timeout: 60_000 });
    expect([r.status, r.stdout + r.stderr]).toEqual([0, expect.stringContaining('All good!')]);
  }, 90_000);

  it('@arethetypeswrong/cli resolves the types for require and import under every resolution mode', () => {
    const r = sh(bin('attw'), ['--format', 'json', tarball], { cwd: dir, timeout: 60_000 });
    const result = JSON.parse(r.stdout);
    expect(result.analysis.problems ?? []).toEqual([]);
    expect(r.status).toBe(0);
  }, 90_000);
});

describe('the tarball installed into another project', () => {
  const project = join(dir, 'consumer');
  beforeAll(() => {
    rmSync(project, { recursive: true, force: true });
    spawnSync('mkdir', ['-p', project]);
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
    // --prefer-offline: the dependencies come from npm's cache when they are there.
    const r = sh('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', tarball], { cwd: project, timeout: 300_000 });
    expect([r.status, r.error], r.stderr).toEqual([0, undefined]);
  }, 330_000);

  it('compiled the addon at install and needs no TypeScript', () => {
    const pkg = join(project, 'node_modules', 'userfaultfd');
    expect(readdirSync(join(pkg, 'build', 'Release'))).toContain('userfaultfd.node');
    expect(existsSync(join(project, 'node_modules', 'typescript'))).toBe(false);
  });

  it('require() and import give the same working module', () => {
    const cjs = sh(process.execPath, ['-e', "const u = require('userfaultfd'); process.stdout.write(JSON.stringify({ names: Object.keys(u).sort(), page: u.PAGE_SIZE, available: typeof u.probe().available }))"], { cwd: project, timeout: 15_000 });
    const esm = sh(process.execPath, ['--input-type=module', '-e', "import * as u from 'userfaultfd'; import d from 'userfaultfd'; process.stdout.write(JSON.stringify({ names: Object.keys(u).filter((n) => n !== 'default').sort(), page: u.PAGE_SIZE, available: typeof u.probe().available, same: d.probe === u.probe }))"], { cwd: project, timeout: 15_000 });
    expect([cjs.status, cjs.stderr]).toEqual([0, '']);
    expect([esm.status, esm.stderr]).toEqual([0, '']);
    const [c, e] = [JSON.parse(cjs.stdout), JSON.parse(esm.stdout)];
    expect(c.available).toBe('boolean');
    expect(c.names).toContain('Userfaultfd');
    expect(e).toEqual({ ...c, same: true });
  });

  it('npx userfaultfd doctor runs', () => {
    const r = sh('npx', ['--no-install', 'userfaultfd', 'doctor'], { cwd: project, timeout: 30_000 });
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout.startsWith('userfaultfd doctor\n')).toBe(true);
  });
});

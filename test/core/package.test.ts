// The package as users meet it: both entry points, the doctor command, and
// README's example program, each run in a fresh node process.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';

import * as api from '../../lib/index';
import { formatReport, main as cliMain } from '../../lib/cli';
import { caps, fixture, itUnless, itWith, root, scaled } from '../helpers';
import { Stage, stageForOtherUsers } from '../stage';

const cli = join(root, 'dist', 'lib', 'cli.js');
const run = (args: string[], options: { asNobody?: boolean } = {}) => {
  const [cmd, argv] = options.asNobody
    ? ['setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, ...args]]
    : [process.execPath, args];
  // uid 65534 starts in the staged copy: the checkout may be a directory it cannot enter.
  return spawnSync(cmd, argv, { encoding: 'utf8', timeout: scaled(15_000), cwd: options.asNobody && typeof stage === 'object' ? stage.dir : root });
};
const haveSetpriv = existsSync('/usr/bin/setpriv') || existsSync('/bin/setpriv');

// The unprivileged runs expect the usual setting, vm.unprivileged_userfaultfd=0:
// as root, set it for this file and put it back afterwards.
const SYSCTL = '/proc/sys/vm/unprivileged_userfaultfd';
let sysctlProblem: string | undefined;
if (caps.unprivilegedUserfaultfd !== undefined && caps.unprivilegedUserfaultfd !== 0) {
  const before = caps.unprivilegedUserfaultfd;
  try {
    writeFileSync(SYSCTL, '0');
    afterAll(() => writeFileSync(SYSCTL, String(before)));
  } catch (err) {
    sysctlProblem = `vm.unprivileged_userfaultfd is ${before} and cannot be set to 0 (${(err as NodeJS.ErrnoException).code})`;
  }
}

// Both runs check what the device node (Linux 6.1+) refuses to an unprivileged user.
const kernelSkip = !haveSetpriv ? 'setpriv is not installed'
  : sysctlProblem ?? (!caps.open.device.present ? '/dev/userfaultfd is not present (Linux 6.1+)' : undefined);
// What uid 65534 runs is a copy it can read, wherever the checkout is.
const stage = kernelSkip ? undefined : stageForOtherUsers();
if (typeof stage === 'object') afterAll(() => stage.remove());
const unprivilegedSkip = kernelSkip ?? (typeof stage === 'string' ? stage : undefined);
const staged = (): Stage => stage as Stage;

describe('entry points', () => {
  it('ESM and CommonJS load the same module and export the same names', () => {
    const out = JSON.parse(execFileSync(process.execPath, [fixture('entry-names.mjs')], { encoding: 'utf8', timeout: scaled(15_000) }));
    expect(out.esm).toEqual(out.cjs);
    expect(out.same).toEqual(out.cjs);
    expect(out.defaultIsCjs).toBe(true);
    // ...and they are the names the TypeScript sources export.
    expect(out.cjs).toEqual(Object.keys(api).sort());
    for (const name of ['probe', 'Memfd', 'Userfaultfd', 'Mapping', 'UffdError', 'PAGE_SIZE']) expect(out.cjs).toContain(name);
  });
});

describe('userfaultfd doctor', () => {
  it('prints a readable report of probe(): kernel, opening paths, every feature, ioctls, huge pages', () => {
    const r = run([cli, 'doctor']);
    expect([r.status, r.stderr]).toEqual([0, '']);
    const out = r.stdout;
    expect(out.startsWith('userfaultfd doctor\n')).toBe(true);
    expect(out).toContain(`kernel       ${caps.kernel} (${caps.arch}), page size ${caps.pageSize} bytes`);
    expect(out).toContain(`${caps.open.syscall.ok ? 'ok' : 'NO'}  userfaultfd(2), user-mode only`);
    if (caps.open.device.present) expect(out).toMatch(/ok {2}\/dev\/userfaultfd \(mode 0\d{3}, owner uid \d+ gid \d+\)/);
    else expect(out).toContain('NO  /dev/userfaultfd is not present (Linux 6.1+)');
    expect(out).toContain('process      uid 0 (root), CAP_SYS_PTRACE yes');
    for (const name of Object.keys(api.FEATURES)) expect(out).toMatch(new RegExp(`(ok |NO ) ${name} +Linux ${api.FEATURE_SINCE[name as api.FeatureName].replace('.', '\\.')}\\+`));
    expect(out).toContain(`MINOR on shmem/memfd    ${caps.minorShmemIoctls ? `allows ${caps.minorShmemIoctls.join(', ')}` : 'unavailable'}`);
    expect(out).toMatch(new RegExp(`huge pages +\\d+ reserved, \\d+ free, ${caps.hugePages.size / 1024} KiB each`));
    const whyLines = out.split('\n').filter((l) => l.startsWith('  - '));
    expect(whyLines.length === 0 ? out.includes('Everything this library uses works on this host.') : out.includes('What does not work, and why:')).toBe(true);
  });

  it('--json prints probe() itself', () => {
    const r = run([cli, 'doctor', '--json']);
    expect(r.status).toBe(0);
    const parsed = JSON.parse(r.stdout);
    // Huge page counts can change between two probes (tests reserve some); the rest cannot.
    const { hugePages, reasons, ...rest } = parsed;
    const { hugePages: _h, reasons: _r, ...mine } = api.probe();
    expect(rest).toEqual(JSON.parse(JSON.stringify(mine)));
    expect(Object.keys(hugePages)).toEqual(['total', 'free', 'size']);
    expect(Array.isArray(reasons)).toBe(true);
  });

  it('usage: --help exits 0, anything else exits 2 with the usage on stderr', () => {
    const help = run([cli, '--help']);
    expect([help.status, help.stdout.startsWith('Usage: userfaultfd doctor')]).toEqual([0, true]);
    for (const args of [[], ['bogus'], ['doctor', 'extra']]) {
      const r = run([cli, ...args]);
      expect([r.status, r.stdout, r.stderr.startsWith('Usage: userfaultfd doctor')]).toEqual([2, '', true]);
    }
  });

  // The same entry points in this process (the runs above load dist/ in a child).
  it('main() and formatReport() in-process: exit codes, usage, JSON, and a host where nothing works', () => {
    const out: string[] = [];
    const err: string[] = [];
    const so = vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => (out.push(String(c)), true));
    const se = vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => (err.push(String(c)), true));
    try {
      expect(cliMain(['--help'])).toBe(0);
      expect(out.join('')).toMatch(/^Usage: userfaultfd doctor/);
      expect(cliMain(['doctor', 'extra'])).toBe(2);
      expect(err.join('')).toMatch(/^Usage: userfaultfd doctor/);
      out.length = 0;
      expect(cliMain(['doctor', '--json'])).toBe(caps.available ? 0 : 1);
      expect(JSON.parse(out.join('')).kernel).toBe(caps.kernel);
      out.length = 0;
      expect(cliMain(['doctor'])).toBe(caps.available ? 0 : 1);
      expect(out.join('')).toContain(`kernel       ${caps.kernel} (${caps.arch})`);
    } finally {
      so.mockRestore();
      se.mockRestore();
    }
    const broken = {
      ...caps,
      available: false,
      unprivilegedUserfaultfd: 0,
      open: { syscall: { ok: false, error: 'EPERM' }, device: { present: false, ok: false }, allModes: { ok: false, error: 'EPERM' } },
      features: Object.fromEntries(Object.keys(caps.features).map((f) => [f, false])),
      minorShmemIoctls: undefined,
      missingShmemIoctls: undefined,
      reasons: ['userfaultfd(2) failed with EPERM'],
    } as unknown as api.Capabilities;
    const text = formatReport(broken);
    expect(text).toContain('available    NO');
    expect(text).toContain('vm.unprivileged_userfaultfd = 0 (unprivileged callers must use user-mode-only, the default here)');
    expect(text).toContain('NO  userfaultfd(2), user-mode only: EPERM');
    expect(text).toContain('NO  /dev/userfaultfd is not present (Linux 6.1+)');
    expect(text).toContain(`features     0 of ${Object.keys(caps.features).length} offered`);
    expect(text).toContain('MINOR on shmem/memfd    unavailable');
    expect(text).toMatch(/What does not work, and why:\n {2}- userfaultfd\(2\) failed with EPERM\n$/);
  });

  itUnless(unprivilegedSkip, 'as an unprivileged user it says what does not work and why', () => {
    const r = run([staged().cli, 'doctor'], { asNobody: true });
    expect([r.status, r.stderr]).toEqual([0, '']);
    expect(r.stdout).toContain('process      uid 65534, CAP_SYS_PTRACE no');
    expect(r.stdout).toContain(`${caps.open.syscall.ok ? 'ok' : 'NO'}  userfaultfd(2), user-mode only`);
    expect(r.stdout).toMatch(/NO {2}\/dev\/userfaultfd \(mode 0600, owner uid 0 gid 0\): EACCES/);
    expect(r.stdout).toMatch(/NO {2}kernel-mode faults too \(userModeOnly: false\): E(PERM|ACCES)/);
    expect(r.stdout).toContain('What does not work, and why:');
    expect(r.stdout).toMatch(/- \/dev\/userfaultfd exists but cannot be opened \(EACCES\)/);
    expect(r.stdout).toMatch(/- Only user-mode faults can be handled/);
  });
});

describe('privilege model', () => {
  itUnless(unprivilegedSkip, 'unprivileged (vm.unprivileged_userfaultfd=0): user-mode-only opens, kernel-mode is refused naming both paths', () => {
    const script = `
      const { Userfaultfd } = require(${JSON.stringify(staged().entry)});
      const out = {};
      for (const via of ['syscall', 'device', 'auto']) {
        for (const userModeOnly of [true, false]) {
          try { Userfaultfd.open({ via, userModeOnly }).close(); out[via + ':' + userModeOnly] = 'ok'; }
          catch (e) { out[via + ':' + userModeOnly] = e.code + ' ' + e.message; }
        }
      }
      process.stdout.write(JSON.stringify(out));`;
    const r = run(['-e', script], { asNobody: true });
    expect([r.status, r.stderr]).toEqual([0, '']);
    const out = JSON.parse(r.stdout);
    expect(readFileSync(SYSCTL, 'utf8').trim()).toBe('0');
    expect(out['syscall:true']).toBe('ok');
    expect(out['auto:true']).toBe('ok');
    expect(out['syscall:false']).toMatch(/^EPERM .*userfaultfd\(2\) failed with EPERM.*CAP_SYS_PTRACE/);
    expect(out['device:true']).toMatch(/^EACCES .*\/dev\/userfaultfd failed with EACCES/);
    expect(out['device:false']).toMatch(/^EACCES /);
    expect(out['auto:false']).toMatch(/^EACCES .*userfaultfd\(2\) failed with EPERM; \/dev\/userfaultfd failed with EACCES/);
  });
});

describe("README's example", () => {
  itWith(['minorShmem', 'threadId'], 'runs as written and prints the faults it resolved and the bytes read', () => {
    const r = spawnSync(process.execPath, [fixture('readme-example.js')], { encoding: 'utf8', timeout: scaled(15_000) });
    expect([r.status, r.signal, r.stderr]).toEqual([0, null, '']);
    const lines = r.stdout.trimEnd().split('\n');
    const tid = /^toucher thread (\d+) read: /.exec(lines[2])?.[1];
    expect(tid).toBeDefined();
    expect(lines).toEqual([
      `MINOR fault on page 2 by thread ${tid}`,
      `MINOR fault on page 0 by thread ${tid}`,
      `toucher thread ${tid} read: page 2 page 2 page 2`,
    ]);
  });
});

describe('README', () => {
  it('shows the example program exactly as the test runs it', () => {
    const example = readFileSync(fixture('readme-example.js'), 'utf8').trimEnd();
    // README.md once the core sections are merged into it; docs-core.md until then.
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    const doc = readme.includes('## Example') ? readme : readFileSync(join(root, 'docs-core.md'), 'utf8');
    expect(doc).toContain('```js\n' + example + '\n```');
  });
});

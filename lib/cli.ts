#!/usr/bin/env node
// `userfaultfd doctor`: probe() as a report a person can read, saying what
// works on this host and, where something does not, why. `userfaultfd
// working-set`: lib/working-set/cli.ts.
import { readFileSync, statSync } from 'node:fs';

import { FEATURE_SINCE, FeatureName } from './constants';
import { Capabilities, probe } from './probe';
import { workingSetMain } from './working-set/cli';

const USAGE = `Usage: userfaultfd doctor [--json]
       userfaultfd working-set show|merge ... (see userfaultfd working-set --help)

  doctor         report what userfaultfd can do on this host, and why not where it cannot
  --json         print probe()'s result as JSON instead
  working-set    show a working-set file, or merge several (docs/working-set.md)
  --help         show this text
`;

const CAP_SYS_PTRACE = 19n;

/** The caller's uid and whether CAP_SYS_PTRACE is effective, from /proc/self/status. */
function privileges(): { uid: number; ptrace: boolean } {
  try {
    const status = readFileSync('/proc/self/status', 'utf8');
    const uid = Number(/^Uid:\s+\d+\s+(\d+)/m.exec(status)?.[1] ?? process.getuid?.() ?? -1);
    const capEff = BigInt(`0x${/^CapEff:\s+([0-9a-f]+)/m.exec(status)?.[1] ?? '0'}`);
    return { uid, ptrace: ((capEff >> CAP_SYS_PTRACE) & 1n) === 1n };
  } catch {
    return { uid: process.getuid?.() ?? -1, ptrace: false };
  }
}

function deviceMode(): string | undefined {
  try {
    const st = statSync('/dev/userfaultfd');
    return `mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}, owner uid ${st.uid} gid ${st.gid}`;
  } catch {
    return undefined;
  }
}

const mark = (ok: boolean): string => (ok ? 'ok ' : 'NO ');

/** Renders a probe result as text. Exported for tests and embedding. */
export function formatReport(caps: Capabilities): string {
  const lines: string[] = [];
  const who = privileges();
  const sysctl = caps.unprivilegedUserfaultfd;
  lines.push('userfaultfd doctor');
  lines.push('');
  lines.push(`kernel       ${caps.kernel} (${caps.arch}), page size ${caps.pageSize} bytes`);
  lines.push(`available    ${caps.available ? 'yes: a userfaultfd can be opened and handshaken' : 'NO'}`);
  lines.push(`process      uid ${who.uid}${who.uid === 0 ? ' (root)' : ''}, CAP_SYS_PTRACE ${who.ptrace ? 'yes' : 'no'}`);
  lines.push(`sysctl       vm.unprivileged_userfaultfd = ${sysctl ?? 'unreadable'}${
    sysctl === 0 ? ' (unprivileged callers must use user-mode-only, the default here)' : sysctl === 1 ? ' (anyone may handle kernel-mode faults)' : ''}`);
  lines.push('');
  lines.push('opening');
  lines.push(`  ${mark(caps.open.syscall.ok)} userfaultfd(2), user-mode only${caps.open.syscall.error ? `: ${caps.open.syscall.error}` : ''}`);
  const dev = caps.open.device;
  const devInfo = dev.present ? deviceMode() : undefined;
  lines.push(`  ${mark(dev.ok)} /dev/userfaultfd${dev.present ? ` (${devInfo ?? 'present'})` : ' is not present (Linux 6.1+)'}${dev.error && dev.present ? `: ${dev.error}` : ''}`);
  lines.push(`  ${mark(caps.open.allModes.ok)} kernel-mode faults too (userModeOnly: false)${caps.open.allModes.error ? `: ${caps.open.allModes.error}` : ''}`);
  lines.push('');
  const names = Object.keys(caps.features) as FeatureName[];
  lines.push(`features     ${names.filter((n) => caps.features[n]).length} of ${names.length} offered (mask 0x${caps.featureMask.toString(16)})`);
  for (const name of names)
    lines.push(`  ${mark(caps.features[name])} ${name.padEnd(18)} Linux ${FEATURE_SINCE[name]}+`);
  lines.push('');
  lines.push(`MINOR on shmem/memfd    ${caps.minorShmemIoctls ? `allows ${caps.minorShmemIoctls.join(', ')}` : 'unavailable'}`);
  lines.push(`MISSING on shmem/memfd  ${caps.missingShmemIoctls ? `allows ${caps.missingShmemIoctls.join(', ')}` : 'unavailable'}`);
  for (const [method, support] of Object.entries(caps.dirtyTracking))
    lines.push(`dirty tracking ${method.padEnd(9)}${support.available ? 'available' : `unavailable: ${support.reason}`}`);
  lines.push(`huge pages              ${caps.hugePages.total} reserved, ${caps.hugePages.free} free, ${caps.hugePages.size / 1024} KiB each`);
  lines.push('');
  if (caps.reasons.length === 0) lines.push('Everything this library uses works on this host.');
  else {
    lines.push('What does not work, and why:');
    for (const reason of caps.reasons) lines.push(`  - ${reason}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Runs the command line; returns the exit code. */
export function main(argv: readonly string[]): number {
  if (argv[0] === 'working-set') return workingSetMain(argv.slice(1));
  const args = argv.filter((a) => a !== '--json');
  const json = argv.includes('--json');
  if (args.includes('--help') || args.includes('-h')) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (args.length !== 1 || args[0] !== 'doctor') {
    process.stderr.write(USAGE);
    return 2;
  }
  const caps = probe();
  process.stdout.write(json ? `${JSON.stringify(caps, null, 2)}\n` : formatReport(caps));
  return caps.available ? 0 : 1;
}

if (require.main === module) process.exitCode = main(process.argv.slice(2));

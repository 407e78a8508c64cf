// A copy of the compiled package that another user can read, for tests that
// run code as uid 65534. The checkout itself may sit in a 0700 home
// directory (/root, a user's ~), which that user cannot even enter.
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';

import { root } from './helpers';

export interface Stage {
  dir: string;
  /** dist/lib/index.js of the copy. */
  entry: string;
  /** dist/lib/cli.js of the copy. */
  cli: string;
  remove(): void;
}

/** The first ancestor of `dir` (itself included) that other users cannot search, if any. */
function closedAncestor(dir: string): string | undefined {
  for (let d = dir; ; d = dirname(d)) {
    if ((statSync(d).mode & 0o001) === 0) return d;
    if (d === dirname(d)) return undefined;
  }
}

/**
 * The package directories (relative to the checkout) that loading the
 * compiled entry really reads, found by loading it in a fresh process: the
 * runtime closure, without node-gyp and the other install-time dependencies.
 */
function runtimePackages(): string[] {
  const script = `
    require(${JSON.stringify(join(root, 'dist', 'lib', 'index.js'))});
    const dirs = new Set();
    for (const file of Object.keys(require.cache)) {
      const at = file.lastIndexOf('${sep}node_modules${sep}');
      if (at < 0) continue;
      const rest = file.slice(at + 14).split('${sep}');
      dirs.add(file.slice(0, at + 14) + rest.slice(0, rest[0].startsWith('@') ? 2 : 1).join('${sep}'));
    }
    process.stdout.write(JSON.stringify([...dirs]));`;
  const dirs: string[] = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 15_000 }));
  return dirs.map((d) => relative(root, d));
}

/** Makes everything under `dir` readable (and directories searchable) by everyone, whatever the umask was. */
function openUp(dir: string): void {
  chmodSync(dir, 0o755);
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, e.name);
    if (e.isDirectory()) openUp(path);
    else if (e.isFile()) chmodSync(path, (statSync(path).mode & 0o111) !== 0 ? 0o755 : 0o644);
  }
}

/**
 * Copies package.json, dist/lib, the addon and the runtime packages into a
 * fresh directory under the temporary directory, readable by every user.
 * Returns the reason instead when no such directory can be had.
 */
export function stageForOtherUsers(): Stage | string {
  const base = tmpdir();
  const closed = closedAncestor(base);
  if (closed) return `the temporary directory ${base} is inside ${closed}, which other users cannot enter (set TMPDIR=/tmp)`;
  const dir = mkdtempSync(join(base, 'uffd-stage-'));
  try {
    for (const part of ['package.json', join('dist', 'lib'), join('build', 'Release', 'userfaultfd.node'), ...runtimePackages()]) {
      mkdirSync(dirname(join(dir, part)), { recursive: true });
      cpSync(join(root, part), join(dir, part), { recursive: true, dereference: true });
    }
    openUp(dir);
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    return `cannot stage the package for another user under ${base}: ${(err as Error).message}`;
  }
  return {
    dir,
    entry: join(dir, 'dist', 'lib', 'index.js'),
    cli: join(dir, 'dist', 'lib', 'cli.js'),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

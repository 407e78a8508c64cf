// `userfaultfd working-set`: spawned as a user runs it, from the build.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { WorkingSet, readWorkingSet, writeWorkingSet } from '../../lib/index';
import { root } from '../helpers';

const dir = mkdtempSync(join(tmpdir(), 'uffd-wset-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const cli = join(root, 'dist', 'lib', 'cli.js');
const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 20_000 });
const STACK = /^\s+at .+[(:]\d+/m;

const setOf = (pages: number[], writes: number[] = []): WorkingSet => ({
  pageSize: 4096, memorySize: 1024 * 4096, regions: 1,
  entries: pages.map((page, rank) => ({ page, rank, timeUs: rank * 100, write: writes.includes(page), region: 0 })),
});
const a = join(dir, 'a.wset');
const b = join(dir, 'b.wset');
const c = join(dir, 'c.wset');
// A sequential scan of the first 200 pages, then a jump to the top of memory.
writeWorkingSet(a, setOf([...Array(200).keys(), 1000, 1001, 1002, 1003], [0, 1, 2, 3, 1000]));
writeWorkingSet(b, setOf([...Array(100).keys()].map((p) => p * 2)));
writeWorkingSet(c, setOf([1003, 0, 2, 4]));

describe('userfaultfd working-set', () => {
  for (const args of [['working-set', '--help'], ['working-set', 'show', '--help'], ['working-set', 'merge', '-h']])
    it(`${args.join(' ')}: the usage, exit 0`, () => {
      const r = run(...args);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/^Usage: userfaultfd working-set show FILE/);
    });

  it('the top-level usage names working-set', () => {
    expect(run('--help').stdout).toContain('working-set');
  });

  for (const args of [['working-set'], ['working-set', 'frob'], ['working-set', 'show'], ['working-set', 'show', a, b], ['working-set', 'show', a, '--bogus'],
    ['working-set', 'merge', join(dir, 'out.wset')], ['working-set', 'merge', join(dir, 'out.wset'), a, '--min-runs'],
    ['working-set', 'merge', join(dir, 'out.wset'), a, b, '--min-runs', '0'], ['working-set', 'merge', join(dir, 'out.wset'), a, b, '--min-runs', '3'],
    ['working-set', 'merge', join(dir, 'out.wset'), a, b, '--min-runs', 'x']])
    it(`${args.map((x) => x.replace(dir, '…')).join(' ')}: the usage on stderr, exit 2`, () => {
      const r = run(...args);
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^Usage: userfaultfd working-set/);
      expect(r.stdout).toBe('');
    });

  it('show: sizes, entries, write share and a picture of page offset against touch order', () => {
    const r = run('working-set', 'show', a);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('4.0 MiB in 1024 pages of 4.0 KiB, 1 region');
    expect(r.stdout).toContain('entries      204 pages (816.0 KiB, 19.9% of memory), from 1 run');
    expect(r.stdout).toContain('writes       2.5% of first touches');
    expect(r.stdout).toContain('contiguous   2 runs in touch order');
    const rows = r.stdout.split('\n').filter((l) => /^\s+\S+ \S+ \|.*\|$/.test(l));
    expect(rows).toHaveLength(16);
    // 16 rows of 64 pages, 64 columns of about 3 entries: the scan is a
    // diagonal through rows 0-3, the jump to pages 1000+ the bottom row's last column.
    const cells = rows.map((l) => l.slice(l.indexOf('|') + 1, l.lastIndexOf('|')));
    expect(cells.every((c) => c.length === 64)).toBe(true);
    expect(cells[0].slice(0, 19)).not.toMatch(/ /);
    expect(cells[0].slice(21)).toMatch(/^ +$/);
    expect(cells[1].slice(21, 38)).not.toMatch(/ /);
    expect(cells[15]).toMatch(/^ {62}\S\S$/);
    expect(cells.slice(4, 15).every((c) => /^ +$/.test(c))).toBe(true);
    expect(r.stdout).toMatch(/rank 0 +rank 203/);
  });

  it('show --json: the summary and every entry', () => {
    const r = run('working-set', 'show', a, '--json');
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ file: a, pageSize: 4096, memorySize: 4 * 1024 * 1024, entryCount: 204, runs: 1, contiguousRuns: 2, writeShare: 5 / 204, durationUs: 20300 });
    expect(out.entries).toEqual(readWorkingSet(a).entries);
  });

  it('show: a missing or damaged file is an error with its code, exit 1, no stack', () => {
    const missing = run('working-set', 'show', join(dir, 'none.wset'));
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('ERR_WORKING_SET_NOT_FOUND');
    const bad = join(dir, 'bad.wset');
    writeFileSync(bad, 'not a working set at all, just text');
    const r = run('working-set', 'show', bad);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('ERR_WORKING_SET_MAGIC');
    expect(r.stderr).not.toMatch(STACK);
  });

  it('merge: writes the merged set and prints the pairwise similarity', () => {
    const out = join(dir, 'merged.wset');
    const r = run('working-set', 'merge', out, a, b, c, '--min-runs', '2');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    // a∩b: the 100 even pages below 200 of 204 + 100 - 100 = 204 → 100/204.
    expect(r.stdout).toMatch(new RegExp(`${a.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+1\\.000\\s+0\\.490\\s+0\\.020\\s+#1`));
    expect(r.stdout).toMatch(/median 0\.\d{3}/);
    const merged = readWorkingSet(out);
    expect(merged.runs).toBe(3);
    expect(new Set(merged.entries.map((e) => e.page))).toEqual(new Set([...Array(100).keys()].map((p) => p * 2).concat(1003)));
    expect(r.stdout).toContain(`101 pages held by at least 2, written to ${out}`);
    const missing = run('working-set', 'merge', join(dir, 'nowhere', 'x.wset'), a, b);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('ERR_WORKING_SET_NO_DIR');
  });
});

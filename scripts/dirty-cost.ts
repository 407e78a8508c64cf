// What dirty tracking costs on this machine, for docs/dirty-tracking.md:
// protecting all of a 1 GiB memfd view, one tracked first write against a
// plain write to an untracked page (both timed by the writing native thread
// itself), and collect at 0.1%, 1%, 5% and 50% of the pages dirty, plus a
// clean re-collect. Each figure is the median of several repetitions.
//
//   npm run build:ts && node dist/scripts/dirty-cost.js [--size-mib 1024] [--reps 5] [--method wp-async|wp-sync|both]
import { cpus, release } from 'node:os';
import { parseArgs } from 'node:util';

import { DirtyMethod, DirtyTracker, Memfd, PAGE_SIZE, touchPages } from '../lib/index';
import { dirtyMethods } from '../lib/dirty-methods';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { answerHelp } = require('../../scripts/usage.js') as { answerHelp(file: string): void };
answerHelp(__filename.replace(/dist\/scripts\/(.*)\.js$/, 'scripts/$1.ts'));

const { values: args } = parseArgs({
  options: {
    'size-mib': { type: 'string', default: '1024' },
    reps: { type: 'string', default: '5' },
    method: { type: 'string', default: 'both' },
  },
});
const size = Number(args['size-mib']) * 1024 * 1024;
const reps = Number(args.reps);
const pages = size / PAGE_SIZE;
const FRACTIONS = [0.001, 0.01, 0.05, 0.5];
const WRITE_SAMPLE = 4096;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const ms = (ns: bigint): number => Number(ns) / 1e6;

/** A deterministic shuffle (xorshift), so runs write the same pages. */
function randomPages(count: number, seed: number): number[] {
  const all = Uint32Array.from({ length: pages }, (_, i) => i);
  let x = seed >>> 0 || 1;
  for (let i = pages - 1; i > 0; i--) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    const j = (x >>> 0) % (i + 1);
    [all[i], all[j]] = [all[j], all[i]];
  }
  return Array.from(all.subarray(0, count)).sort((a, b) => a - b);
}

async function measure(method: DirtyMethod): Promise<Record<string, number>> {
  using mem = Memfd.create(size, { name: 'dirty-cost', allocate: true });
  using view = mem.map();
  // Every page present, mapped and written once, as in a running guest: in
  // this VM the first write after populating costs microseconds of its own,
  // which is not tracking's cost and must not be counted as it.
  view.advise('populateWrite', 0, size);
  await touchPages(view, Array.from({ length: pages }, (_, i) => i), { write: 1 });
  const out: Record<string, number[]> = {};
  const add = (key: string, value: number) => (out[key] ??= []).push(value);
  for (let rep = 0; rep < reps; rep++) {
    using tracker = new DirtyTracker([view], { method });
    let t0 = process.hrtime.bigint();
    tracker.start();
    add('protect all (ms)', ms(process.hrtime.bigint() - t0));
    const sample = randomPages(WRITE_SAMPLE, 1000 + rep);
    const tracked = await touchPages(view, sample, { write: rep + 1 });
    const again = await touchPages(view, sample, { write: rep + 2 });
    // The same pages through a mapping no tracker knows: a fresh one, whose
    // first write is a minor fault on a page-cache page, then warm.
    {
      using untracked = mem.map();
      const first = await touchPages(untracked, sample, { write: rep + 3 });
      const warm = await touchPages(untracked, sample, { write: rep + 4 });
      add('tracked first write (ns)', median(Array.from(tracked.latencyNs)));
      add('tracked write, page already dirty (ns)', median(Array.from(again.latencyNs)));
      add('untracked first write, fresh mapping (ns)', median(Array.from(first.latencyNs)));
      add('untracked write, warm (ns)', median(Array.from(warm.latencyNs)));
    }
    tracker.collect();
    for (const fraction of FRACTIONS) {
      const dirty = randomPages(Math.round(pages * fraction), 7 + rep);
      await touchPages(view, dirty, { write: 3 });
      // Looking without re-protecting separates the walk from the protection
      // change (and its TLB flushes) that a resetting collect adds.
      t0 = process.hrtime.bigint();
      tracker.collect({ reset: false });
      add(`look only (reset: false) ${fraction * 100}% dirty (ms)`, ms(process.hrtime.bigint() - t0));
      t0 = process.hrtime.bigint();
      const got = tracker.collect();
      add(`collect ${fraction * 100}% dirty (ms)`, ms(process.hrtime.bigint() - t0));
      if (got.count !== dirty.length) throw new Error(`collect found ${got.count} of ${dirty.length} written pages`);
    }
    t0 = process.hrtime.bigint();
    const clean = tracker.collect();
    add('clean re-collect (ms)', ms(process.hrtime.bigint() - t0));
    if (clean.count !== 0) throw new Error('a clean re-collect found pages');
    t0 = process.hrtime.bigint();
    tracker.stop();
    add('stop: un-protect all (ms)', ms(process.hrtime.bigint() - t0));
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, median(v)]));
}

async function main(): Promise<void> {
  const support = dirtyMethods();
  const wanted: DirtyMethod[] = args.method === 'both' ? ['wp-async', 'wp-sync'] : [args.method as DirtyMethod];
  console.log(`dirty tracking cost: Linux ${release()}, ${cpus().length} CPUs (${cpus()[0]?.model ?? '?'}), ${size / 2 ** 20} MiB memfd view of ${pages} pages, median of ${reps} repetitions`);
  const results: Partial<Record<DirtyMethod, Record<string, number>>> = {};
  for (const method of wanted) {
    if (!support[method].available) {
      console.log(`${method}: skipped: ${support[method].reason}`);
      continue;
    }
    results[method] = await measure(method);
  }
  const keys = Object.keys(Object.values(results)[0] ?? {});
  const methods = Object.keys(results) as DirtyMethod[];
  console.log(`| | ${methods.join(' | ')} |`);
  console.log(`|---|${methods.map(() => '---:').join('|')}|`);
  for (const key of keys) console.log(`| ${key} | ${methods.map((m) => results[m]![key].toFixed(key.endsWith('(ns)') ? 0 : 2)).join(' | ')} |`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

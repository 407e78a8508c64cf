// `npm run bench:restore`: restoring a snapshot image into a guest process
// on demand, by replaying a recorded working set, and by an eager copy,
// served by the library and by a C reference page server measured
// interleaved with it in the same run: into a memfd view (MINOR, the
// FaultHandler), into anonymous memory (Firecracker's one-fd backend, the
// FirecrackerPageServer), and by post-copy migration over loopback. See
// docs/working-set.md.
//
//   npm run bench:restore -- [--quick | --smoke] [--json FILE] [--markdown [FILE]] [--docs] [--check] [--seed N] [--size MiB] [--reps N]
import { join } from 'node:path';

import { probe } from '../lib/index';
import { COMMON_OPTIONS, parseCommandLine } from './bench/cli';
import { writeFileAtomic } from './bench/output';
import { RESTORE_QUICK_NOTE, RestoreReport, restoreMarkdown, restoreText, writeRestoreDocs, writeRestoreMarkdown } from './bench/restore-report';
import { RESTORE_SIZES, runRestoreBench, wrongRestores } from './bench/restore-run';

const USAGE = [
  'usage: npm run bench:restore -- [--quick | --smoke] [--json FILE] [--markdown [FILE]] [--docs] [--check] [--seed N] [--size MiB] [--reps N]',
  '  (default)        1 GiB image, 11 interleaved rounds of every scenario',
  '  --quick          256 MiB image, 7 rounds (a few minutes from a fresh clone): a smoke test, not the figures to quote',
  '  --smoke          16 MiB image, 3 rounds: checks that every scenario restores the right bytes (the test runs it)',
  '  --json FILE      every figure, intervals, machine facts and verdicts (rewritten after each round)',
  '  --markdown       print the tables as markdown; --markdown FILE writes them to FILE',
  '  --docs           a default run only: write the tables into docs/working-set.md (## Restore benchmark)',
  '  --check          exit 1 when a target is missed (its whole interval on the wrong side)',
  '  --seed N         seed of the working set (default 1); the run\'s varying part uses N+1',
  '  --size MiB       image size instead of the run length\'s',
  '  --reps N         rounds instead of the run length\'s',
  '',
].join('\n');

const args = parseCommandLine('bench:restore', USAGE, {
  ...COMMON_OPTIONS,
  size: { type: 'string' },
  reps: { type: 'string' },
});

const base = args.smoke ? RESTORE_SIZES.smoke : args.quick ? RESTORE_SIZES.quick : RESTORE_SIZES.full;
const positive = (name: string, text: string | undefined, fallback: number) => {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) {
    process.stderr.write(`bench:restore: --${name} must be a positive integer, got ${text}\n`);
    process.exit(2);
  }
  return n;
};
const imageMiB = positive('size', args.size, base.mib);
const reps = positive('reps', args.reps, base.reps);
const seed = Number(args.seed);

const repo = join(__dirname, '..', '..');

async function writeDocs(report: RestoreReport): Promise<void> {
  if (report.options.quick || report.options.smoke || report.incomplete || args.size || args.reps) {
    process.stderr.write('--docs: docs/working-set.md left as it is: only a complete default run (no --quick, --smoke, --size, --reps) is written into it\n');
    process.exitCode = 1;
    return;
  }
  process.stderr.write(`docs: ${(await writeRestoreDocs(report, repo)).join(', ')}\n`);
}

async function main(): Promise<void> {
  const caps = probe();
  if (!caps.available || !caps.features.minorShmem) {
    process.stderr.write(`userfaultfd MINOR mode is not usable here: ${caps.reasons.join('; ') || 'kernel lacks minorShmem'}\n`);
    process.exit(2);
  }
  if (args.quick || args.smoke) process.stderr.write(`${RESTORE_QUICK_NOTE}\n`);
  process.stderr.write(`bench:restore: ${imageMiB} MiB image, ${reps} rounds\n`);
  const save = (report: RestoreReport) => {
    if (args.json) writeFileAtomic(args.json, `${JSON.stringify(report, null, 2)}\n`);
  };
  const { report, failure } = await runRestoreBench({
    imageMiB, reps, seed, quick: args.quick, smoke: args.smoke,
    onRound: (partial, round) => {
      process.stderr.write(`round ${round}/${reps}\n`);
      save(partial);
    },
  });
  save(report);
  if (args.markdown && args.markdown !== '-') writeRestoreMarkdown(report, args.markdown);
  if (args.docs && !failure) await writeDocs(report);
  process.stdout.write(`${args.markdown === '-' ? restoreMarkdown(report) : restoreText(report)}\n`);
  if (failure) throw failure;
  const wrong = wrongRestores(report);
  if (wrong.length) {
    for (const r of wrong) process.stderr.write(`did not restore right: ${r.mode}: ${r.error ?? 'bytes or faults wrong'}\n`);
    process.exitCode = 1;
  }
  if (args.check && report.targets.some((t) => t.verdict === 'missed')) process.exitCode = 1;
}

main().catch((err) => {
  process.stderr.write(`bench:restore failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});

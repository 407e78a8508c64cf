// One run of the restore benchmark: an image, a guest trace, the recordings,
// then every scenario once per round in a rotated order, assembled into a
// RestoreReport. npm run bench:restore runs it alone, npm run bench as its
// restore section.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';

import { PAGE_SIZE } from '../../lib/index';
import { readWorkingSet } from '../../lib/working-set';
import { bench } from './native';
import { RESTORE_MODES, Recording, RecordingName, RestoreEnv, RestoreMode, RestoreRep, prefetchQuality, probeRestoreLibrary, randomImage, runRestore } from './restore';
import { startSource } from './restore-migration';
import { analyse, rowOf } from './restore-analysis';
import { RestoreReport } from './restore-report';
import { TraceSpec, restoreTrace } from './restore-trace';
import { BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED } from './stats';

/** Image size and rounds per run length. */
export const RESTORE_SIZES = { smoke: { mib: 16, reps: 3 }, quick: { mib: 256, reps: 7 }, full: { mib: 1024, reps: 11 } } as const;
/** Working set and varying part, as shares of the image's pages; touchers = vCPUs. */
const TRACE = { fixed: 0.10, varying: 0.02, touchers: 2 };
const HANDLER_MODE = 'event-loop' as const;

export interface RestoreBenchOptions {
  imageMiB: number;
  reps: number;
  /** Seed of the working set; the run's varying part uses seed + 1. */
  seed: number;
  /** The run length asked for, said in the report's header. */
  quick: boolean;
  smoke: boolean;
  /** After every round, with what was measured so far (marked incomplete). */
  onRound?: (report: RestoreReport, round: number) => void;
}

/**
 * Runs the restore benchmark. A failure past the start (a recording that
 * restored wrong bytes, a guest that died) leaves the rounds measured so far
 * in the report, marked incomplete, and is returned beside it.
 */
export async function runRestoreBench(opts: RestoreBenchOptions): Promise<{ report: RestoreReport; failure?: Error }> {
  const { imageMiB, reps, seed } = opts;
  const started = Date.now();
  const pageSize = PAGE_SIZE;
  const imageBytes = imageMiB * 2 ** 20;
  const pages = imageBytes / pageSize;
  const spec: TraceSpec = { pages, program: seed, run: seed + 1, ...TRACE };
  const RECORDING_SPECS: Record<RecordingName, TraceSpec> = {
    match: spec,
    varying: { ...spec, run: seed + 2 },
    mismatch: { ...spec, program: seed + 100 },
  };
  const dir = mkdtempSync(join(tmpdir(), 'uffd-restore-bench-'));
  const { image, view } = randomImage(imageBytes);
  const imageFile = join(dir, 'snapshot.mem');
  writeFileSync(imageFile, new Uint8Array(view.buffer));
  const source = await startSource(image);
  const trace = restoreTrace(spec);
  const digest = (s: TraceSpec) => bench.pageDigest(view.buffer, pageSize, restoreTrace(s).order);
  const env: RestoreEnv = {
    image, imageView: view, spec, trace, expectedDigest: digest(spec), recordings: new Map(), caps: probeRestoreLibrary(), handlerMode: HANDLER_MODE, dir,
    imageFile, sourcePort: source.port,
  };
  const measured = new Map<RestoreMode, (RestoreRep | null)[]>(RESTORE_MODES.map((m) => [m, []]));
  const errors = new Map<RestoreMode, string>();
  const assemble = (incomplete?: string): RestoreReport => {
    const rows = RESTORE_MODES.map((m) => rowOf(m, measured.get(m)!, env, errors.get(m)));
    const { ratios, targets } = analyse(rows);
    const cpu = cpus()[0];
    return {
      version: 1, kind: 'restore',
      options: { quick: opts.quick, smoke: opts.smoke, seed, reps, imageBytes, handlerMode: HANDLER_MODE, bootstrap: { resamples: BOOTSTRAP_RESAMPLES, seed: BOOTSTRAP_SEED, level: 0.95 } },
      machine: {
        kernel: release(), cpus: cpus().length, cpuModel: cpu ? cpu.model : 'unknown', pageSize, hugePageSize: 2 * 1024 * 1024,
        hugePages: { available: 0, reason: 'not used' }, node: process.version, loadAverage: loadavg(), date: new Date().toISOString(),
      },
      trace: { ...spec, touched: trace.order.length, fixedPages: trace.fixedPages, varyingPages: trace.varyingPages },
      recordings: [...env.recordings.values()].map((r) => ({ name: r.name, program: r.spec.program, run: r.spec.run, pages: r.pages.length, ...prefetchQuality(r.pages, trace.order) })),
      rows, ratios, targets, durationMs: Date.now() - started, ...(incomplete ? { incomplete } : {}),
    };
  };
  let failure: Error | undefined;
  try {
    // The recordings first: each a restore of its own trace, recorded.
    for (const name of ['match', 'varying', 'mismatch'] as RecordingName[]) {
      const s = RECORDING_SPECS[name];
      const expectedDigest = digest(s);
      const file = join(dir, `${name}.ws`);
      const rep = await runRestore('on-demand', env, { spec: s, expectedDigest, recordTo: file });
      const recording: Recording = { name, spec: s, pages: Uint32Array.from(readWorkingSet(file).entries, (e) => e.page), file };
      if (!rep.allResolved) throw new Error(`recording run ${name} did not restore the right bytes: ${JSON.stringify(rep)}`);
      env.recordings.set(name, recording);
    }
    for (let r = 0; r < reps; r++) {
      const k = r % RESTORE_MODES.length;
      for (const mode of [...RESTORE_MODES.slice(k), ...RESTORE_MODES.slice(0, k)]) {
        if (errors.has(mode)) continue;
        try {
          measured.get(mode)![r] = await runRestore(mode, env);
        } catch (err) {
          errors.set(mode, (err as Error).message);
        }
      }
      for (const list of measured.values()) while (list.length <= r) list.push(null);
      opts.onRound?.(assemble(`stopped after ${r + 1} of ${reps} rounds`), r + 1);
    }
  } catch (err) {
    failure = err as Error;
  } finally {
    source.close();
    view.unmap();
    image.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return { report: assemble(failure && `failed: ${failure.message}`), ...(failure ? { failure } : {}) };
}

/** Rows that did not restore right: a failed scenario the library has, or wrong bytes or unanswered faults. */
export function wrongRestores(report: RestoreReport): RestoreReport['rows'] {
  return report.rows.filter((r) => (r.reps > 0 && !r.allResolved) || (r.error && r.available));
}

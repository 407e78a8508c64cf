// Several recordings of the same guest's restore, made one: the pages most
// runs needed, in the order they tend to be needed. And how alike the runs
// were, to tell whether one set is worth replaying at all.
import { argValueError, stateError } from '../errors';
import * as v from '../validate';
import { WorkingSet, WorkingSetEntry } from './format';

/** Options of {@link mergeWorkingSets}. */
export interface MergeOptions {
  /** Keep a page only when at least this many of the sets hold it. Default: all of them. */
  minRuns?: number;
}

/** Pairwise likeness of working sets, from {@link similarity}. */
export interface Similarity {
  /** `matrix[i][j]`: Jaccard index of the page sets of sets i and j (shared pages / pages in either; 1 for two empty sets). */
  matrix: number[][];
  /** Median of the pairs i < j (1 for a single set). */
  median: number;
}

function checkSets(sets: readonly WorkingSet[]): void {
  if (!Array.isArray(sets) || sets.length === 0) throw argValueError('sets', 'must be a non-empty array of working sets', sets);
  for (let i = 0; i < sets.length; i++) {
    v.options<WorkingSet>(`sets[${i}]`, sets[i]);
    if (!Array.isArray(sets[i].entries)) throw argValueError(`sets[${i}].entries`, 'must be an array', sets[i].entries);
    if (sets[i].pageSize !== sets[0].pageSize || sets[i].memorySize !== sets[0].memorySize)
      throw stateError('ERR_WORKING_SET_MISMATCH', `working set ${i} has pages of ${sets[i].pageSize} bytes over ${sets[i].memorySize} bytes of memory, set 0 ${sets[0].pageSize} over ${sets[0].memorySize}: they are not recordings of the same memory`);
  }
}

/**
 * Merges recordings of the same memory: keeps each page held by at least
 * `minRuns` of the sets, ordered by its mean rank over the sets that hold it
 * (ties: lower page first). A kept page's time is its mean time, its region
 * the first set's that holds it, and it is a write when any set saw a write.
 * `runs` of the result adds up the inputs' `runs`.
 */
export function mergeWorkingSets(sets: readonly WorkingSet[], options?: MergeOptions): WorkingSet {
  checkSets(sets);
  const opts = v.options<MergeOptions>('options', options);
  const minRuns = v.integer('options.minRuns', opts.minRuns ?? sets.length, 1, sets.length);
  const byPage = new Map<number, { seen: number; rankSum: number; timeSum: number; write: boolean; region: number }>();
  for (const set of sets) {
    // Ranks as positions, so that a set whose ranks have gaps weighs like the others.
    const ordered = set.entries.every((e, i) => i === 0 || e.rank > set.entries[i - 1].rank) ? set.entries : [...set.entries].sort((a, b) => a.rank - b.rank);
    ordered.forEach((e, position) => {
      const acc = byPage.get(e.page);
      if (acc) {
        acc.seen++;
        acc.rankSum += position;
        acc.timeSum += e.timeUs;
        acc.write ||= e.write;
      } else byPage.set(e.page, { seen: 1, rankSum: position, timeSum: e.timeUs, write: e.write, region: e.region });
    });
  }
  const kept = [...byPage].filter(([, acc]) => acc.seen >= minRuns)
    .map(([page, acc]) => ({ page, meanRank: acc.rankSum / acc.seen, acc }))
    .sort((a, b) => a.meanRank - b.meanRank || a.page - b.page);
  const entries: WorkingSetEntry[] = kept.map(({ page, acc }, rank) => ({
    page, rank, timeUs: Math.round(acc.timeSum / acc.seen), write: acc.write, region: acc.region,
  }));
  return {
    pageSize: sets[0].pageSize,
    memorySize: sets[0].memorySize,
    regions: Math.max(...sets.map((s) => s.regions ?? 1)),
    runs: sets.reduce((sum, s) => sum + (s.runs ?? 1), 0),
    entries,
  };
}

/** How alike the recordings are: the Jaccard index of every pair's page sets, and its median. */
export function similarity(sets: readonly WorkingSet[]): Similarity {
  checkSets(sets);
  const pageSets = sets.map((s) => new Set(s.entries.map((e) => e.page)));
  const n = sets.length;
  const matrix = Array.from({ length: n }, () => new Array<number>(n).fill(1));
  const pairs: number[] = [];
  for (let i = 0; i < n; i++)
    for (let j = i + 1; j < n; j++) {
      const [small, large] = pageSets[i].size <= pageSets[j].size ? [pageSets[i], pageSets[j]] : [pageSets[j], pageSets[i]];
      let shared = 0;
      for (const p of small) if (large.has(p)) shared++;
      const union = small.size + large.size - shared;
      const jaccard = union === 0 ? 1 : shared / union;
      matrix[i][j] = matrix[j][i] = jaccard;
      pairs.push(jaccard);
    }
  return { matrix, median: pairs.length === 0 ? 1 : median(pairs) };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

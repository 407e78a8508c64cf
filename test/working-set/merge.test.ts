import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { WorkingSet, mergeWorkingSets, similarity } from '../../lib/index';

const PAGES = 64;
const setOf = (pages: number[], runs = 1): WorkingSet => ({
  pageSize: 4096, memorySize: PAGES * 4096, regions: 1, runs,
  entries: pages.map((page, rank) => ({ page, rank, timeUs: rank * 10, write: page % 2 === 0, region: 0 })),
});
const orders = fc.array(fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { maxLength: PAGES }), { minLength: 1, maxLength: 6 });

describe('mergeWorkingSets', () => {
  it('keeps pages held by at least minRuns sets, by mean rank, each once', () => {
    fc.assert(fc.property(orders, fc.integer({ min: 1, max: 6 }), (lists, k) => {
      const minRuns = Math.min(k, lists.length);
      const merged = mergeWorkingSets(lists.map((l) => setOf(l)), { minRuns });
      const count = (p: number) => lists.filter((l) => l.includes(p)).length;
      const expected = [...new Set(lists.flat())].filter((p) => count(p) >= minRuns);
      expect(new Set(merged.entries.map((e) => e.page))).toEqual(new Set(expected));
      expect(merged.entries.length).toBe(expected.length);
      expect(merged.entries.map((e) => e.rank)).toEqual(merged.entries.map((_, i) => i));
      const meanRank = (p: number) => lists.filter((l) => l.includes(p)).reduce((s, l) => s + l.indexOf(p), 0) / count(p);
      for (let i = 1; i < merged.entries.length; i++) {
        const [a, b] = [merged.entries[i - 1].page, merged.entries[i].page];
        expect(meanRank(a) < meanRank(b) || (meanRank(a) === meanRank(b) && a < b)).toBe(true);
      }
      expect(merged.runs).toBe(lists.length);
    }), { numRuns: 300, seed: 1130 });
  });

  it('is the identity for one set, and the default keeps only pages every set holds', () => {
    fc.assert(fc.property(orders, (lists) => {
      const one = setOf(lists[0]);
      expect(mergeWorkingSets([one]).entries.map((e) => e.page)).toEqual(lists[0]);
      const all = mergeWorkingSets(lists.map((l) => setOf(l)));
      expect(all.entries.every((e) => lists.every((l) => l.includes(e.page)))).toBe(true);
    }), { numRuns: 200, seed: 42 });
  });

  it('averages times, ORs writes, adds runs, and refuses sets of different memories', () => {
    const a = setOf([1, 2, 3], 2);
    const b = { ...setOf([3, 2]), entries: setOf([3, 2]).entries.map((e) => ({ ...e, write: true, timeUs: 100 })) };
    const merged = mergeWorkingSets([a, b], { minRuns: 2 });
    expect(merged.entries.map((e) => [e.page, e.timeUs, e.write])).toEqual([[2, 55, true], [3, 60, true]]);
    expect(merged.runs).toBe(3);
    expect(() => mergeWorkingSets([a, { ...a, pageSize: 8192, memorySize: PAGES * 8192 }])).toThrow(expect.objectContaining({ code: 'ERR_WORKING_SET_MISMATCH' }));
    expect(() => mergeWorkingSets([a, b], { minRuns: 3 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => mergeWorkingSets([])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
  });
});

describe('similarity', () => {
  it('is a symmetric Jaccard matrix with ones on the diagonal and its median', () => {
    fc.assert(fc.property(orders, (lists) => {
      const { matrix, median } = similarity(lists.map((l) => setOf(l)));
      const pairs: number[] = [];
      for (let i = 0; i < lists.length; i++) {
        expect(matrix[i][i]).toBe(1);
        for (let j = 0; j < lists.length; j++) {
          expect(matrix[i][j]).toBe(matrix[j][i]);
          const [x, y] = [new Set(lists[i]), new Set(lists[j])];
          const shared = [...x].filter((p) => y.has(p)).length;
          const union = new Set([...x, ...y]).size;
          expect(matrix[i][j]).toBeCloseTo(union ? shared / union : 1, 12);
          if (i < j) pairs.push(matrix[i][j]);
        }
      }
      pairs.sort((p, q) => p - q);
      const mid = pairs.length >> 1;
      expect(median).toBe(pairs.length === 0 ? 1 : pairs.length % 2 ? pairs[mid] : (pairs[mid - 1] + pairs[mid]) / 2);
    }), { numRuns: 200, seed: 99 });
  });

  it('gives 1/3 for {1,2} against {2,3}', () => {
    expect(similarity([setOf([1, 2]), setOf([2, 3]), setOf([2, 1])]).matrix[0]).toEqual([1, 1 / 3, 1]);
  });
});

// A working-set replay whose runs are asked of a remote source (a migration
// destination's): all at once, first touch first, at prefetch priority, and
// counted as they arrive or as demand takes them first.
import { trace } from '../debug';
import type { ReplayStats } from './replay';

/**
 * @internal A replay whose runs are asked of a remote source (a migration
 * destination): all runs are requested at once, first touch first, at
 * prefetch priority, and the source keeps demand ahead of them. A page
 * counts as prefetched when it arrives before any fault asked for it.
 */
export class RequestedReplay {
  readonly #inSet: Uint8Array;
  /** Per page: 1 while asked by the replay and not arrived nor faulted. */
  readonly #waiting: Uint8Array;
  readonly #order: number[] = [];
  #remaining = 0;
  #state: ReplayStats['state'] = 'waiting';
  #startedAt = 0;
  #endedAt = 0;
  #counts = { prefetched: 0, skipped: 0, runs: 0, failedRuns: 0, leftToFaults: 0, demandFaults: 0, outsideSet: 0 };

  constructor(pages: readonly number[], pageCount: number) {
    this.#inSet = new Uint8Array(pageCount);
    this.#waiting = new Uint8Array(pageCount);
    for (const p of pages) {
      if (p >= pageCount || this.#inSet[p]) continue;
      this.#inSet[p] = 1;
      this.#order.push(p);
    }
  }

  /**
   * Starts: returns the runs to request, first touch first, each from a page
   * not `taken` forward over pages of the set not taken, at most `maxRun` long.
   */
  start(taken: (page: number) => boolean, maxRun = 64): { first: number; count: number }[] {
    if (this.#state !== 'waiting') return [];
    this.#state = 'running';
    this.#startedAt = performance.now();
    const runs: { first: number; count: number }[] = [];
    for (const first of this.#order) {
      if (this.#inSet[first] === 2) continue;
      if (taken(first)) {
        this.#inSet[first] = 2;
        this.#counts.skipped++;
        continue;
      }
      let end = first + 1;
      while (end - first < maxRun && end < this.#inSet.length && this.#inSet[end] === 1 && !taken(end)) end++;
      this.#inSet.fill(2, first, end);
      this.#waiting.fill(1, first, end);
      this.#remaining += end - first;
      runs.push({ first, count: end - first });
    }
    this.#counts.runs = runs.length;
    trace('working set replay: %d pages asked in %d runs', this.#remaining, runs.length);
    if (this.#remaining === 0) this.#end('done');
    return runs;
  }

  /** Page `page` arrived (and was written). */
  arrived(page: number): void {
    if (!this.#waiting[page]) return;
    this.#waiting[page] = 0;
    this.#counts.prefetched++;
    if (--this.#remaining === 0) this.#end('done');
  }

  /** A fault needs page `page` fetched. */
  noteDemand(page: number): void {
    if (this.#state === 'running') this.#counts.demandFaults++;
    if (!this.#inSet[page]) this.#counts.outsideSet++;
    if (!this.#waiting[page]) return;
    // Demand got there first: the page is the fault's now.
    this.#waiting[page] = 0;
    this.#counts.skipped++;
    if (--this.#remaining === 0) this.#end('done');
  }

  stop(): void {
    if (this.#state === 'running' || this.#state === 'waiting') {
      this.#counts.leftToFaults += this.#remaining;
      this.#end('stopped');
    }
  }

  stats(): ReplayStats {
    const end = this.#endedAt || (this.#startedAt ? performance.now() : 0);
    return {
      state: this.#state, planned: this.#order.length, ...this.#counts, touched: undefined, untouched: undefined,
      durationMs: this.#startedAt ? end - this.#startedAt : 0,
    };
  }

  #end(state: 'done' | 'stopped'): void {
    this.#state = state;
    this.#endedAt = performance.now();
  }
}

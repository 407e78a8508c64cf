// Garbage collections of this thread's isolate over one repetition. A
// collection stops the event loop that serves faults, so the event-loop
// rows' tails are read against these counts (docs/benchmark.md, "Tails").
import { PerformanceObserver, type PerformanceEntry } from 'node:perf_hooks';

export interface GcCounts {
  /** Collections (scavenges and mark-compacts) that started during the repetition. */
  count: number;
  /** Their total and longest pause, ms. */
  ms: number;
  maxMs: number;
}

export class GcWatch {
  readonly #counts: GcCounts = { count: 0, ms: 0, maxMs: 0 };
  readonly #observer = new PerformanceObserver((list) => this.#add(list.getEntries()));

  constructor() {
    this.#observer.observe({ entryTypes: ['gc'] });
  }

  #add(entries: PerformanceEntry[]): void {
    for (const e of entries) {
      this.#counts.count++;
      this.#counts.ms += e.duration;
      this.#counts.maxMs = Math.max(this.#counts.maxMs, e.duration);
    }
  }

  /** Stops watching; entries not delivered yet are taken from the observer's buffer. */
  end(): GcCounts {
    this.#add(this.#observer.takeRecords());
    this.#observer.disconnect();
    return { ...this.#counts };
  }
}

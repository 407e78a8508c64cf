// What a migration destination has asked its source for. Per page: whether a
// request is out, at demand or at prefetch priority. Requests gathered while
// the fault handler hands over a batch of faults go out together (once per
// microtask), coalesced into runs of consecutive pages: refetches first, then
// demand, then prefetch. The push credits owed to the source ride along.
import { PRIORITY, encodeCredit, encodeRequest } from './protocol';

const DEMAND = 1;
const PREFETCH = 2;

export class PageRequests {
  #asked = new Uint8Array(0);
  readonly #refetch: number[] = [];
  readonly #demand: number[] = [];
  readonly #prefetch: number[] = [];
  #creditOwed = 0;
  #flushScheduled = false;
  readonly #write: (frame: Buffer) => void;
  readonly #open: () => boolean;

  /** `write` sends a frame; nothing is sent once `open()` is false (the migration settled). */
  constructor(write: (frame: Buffer) => void, open: () => boolean) {
    this.#write = write;
    this.#open = open;
  }

  /** The image's size is known (the hello): nothing asked yet. */
  reset(pageCount: number): void {
    this.#asked = new Uint8Array(pageCount);
  }

  /** A request for `page` is out, at either priority. */
  pending(page: number): boolean {
    return this.#asked[page] !== 0;
  }

  /**
   * A fault needs `page`: asked at demand priority (again, when only a
   * prefetch asked for it so far), with the `behind` pages after it that are
   * neither `present` nor asked, at prefetch priority.
   */
  demand(page: number, behind: number, present: (page: number) => boolean): void {
    if (this.#asked[page] === DEMAND) return;
    this.#asked[page] = DEMAND;
    this.#demand.push(page);
    for (let p = page + 1; p <= page + behind && p < this.#asked.length; p++) {
      if (present(p) || this.#asked[p]) continue;
      this.#asked[p] = PREFETCH;
      this.#prefetch.push(p);
    }
    this.#scheduleFlush();
  }

  /** A page that arrived once and was lost since (MADV_REMOVE): the source always answers a refetch. */
  refetch(page: number): void {
    this.#refetch.push(page);
    this.#scheduleFlush();
  }

  /** Runs asked at once at prefetch priority (a working-set replay's): the source serves demand before them. */
  prefetchRuns(runs: readonly { first: number; count: number }[]): void {
    const frames: Buffer[] = [];
    for (const { first, count } of runs) {
      this.#asked.fill(PREFETCH, first, first + count);
      frames.push(encodeRequest(PRIORITY.prefetch, first, count));
    }
    // One write for all: a set of thousands of runs is one send, not thousands.
    if (frames.length) this.#write(Buffer.concat(frames));
  }

  arrived(page: number): void {
    this.#asked[page] = 0;
  }

  /** A pushed batch was written here: the source may send one more. */
  owePushCredit(): void {
    this.#creditOwed++;
  }

  /** Sends the credits and requests gathered since the last flush. */
  flush(): void {
    if (!this.#open()) return;
    const frames: Buffer[] = [];
    if (this.#creditOwed) {
      frames.push(encodeCredit(this.#creditOwed));
      this.#creditOwed = 0;
    }
    for (const [pages, priority] of [[this.#refetch, PRIORITY.refetch], [this.#demand, PRIORITY.demand], [this.#prefetch, PRIORITY.prefetch]] as const) {
      if (pages.length === 0) continue;
      const sorted = pages.splice(0).sort((x, y) => x - y);
      let i = 0;
      while (i < sorted.length) {
        let j = i + 1;
        while (j < sorted.length && sorted[j] === sorted[j - 1] + 1) j++;
        frames.push(encodeRequest(priority, sorted[i], j - i));
        i = j;
      }
    }
    if (frames.length === 1) this.#write(frames[0]);
    else if (frames.length > 1) this.#write(Buffer.concat(frames));
  }

  /** The handler calls fetch for each fault of a batch: their requests go together. */
  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    queueMicrotask(() => {
      this.#flushScheduled = false;
      this.flush();
    });
  }
}

// A guest workload for live migration tests and the demo: a native thread
// writing generation counters into pages of a mapping, pausable from
// JavaScript with the thread's acknowledgement.
import { check, closedError, stateError } from './errors';
import { Mapping } from './memfd';
import { WriterReport, native } from './native';
import * as v from './validate';

/** Options of {@link startWriter}. */
export interface WriterOptions {
  /** Share of the mapping's pages in the hot set, scattered over the mapping. Default 0.02. */
  hotFraction?: number;
  /** Share of writes that go to the hot set; the rest sweep through the mapping. Default 0.95. */
  hotShare?: number;
  /** Cap on writes per second; 0 for none. Default 20000. */
  writesPerSecond?: number;
  /** Which 32-bit word of a page carries the counter. Default 0. */
  word?: number;
  seed?: number;
}

/** @internal A running writer thread. */
export interface PageWriter {
  /** Writes so far (modulo 2^32). */
  readonly writes: number;
  /** Resolves once the thread acknowledged: no write is in flight and none follows until {@link resume}. */
  pause(options?: { signal?: AbortSignal }): Promise<void>;
  resume(): void;
  /** Stops the thread; resolves with its total once it has exited. Idempotent. */
  stop(): Promise<WriterReport>;
}

const L = native.writerControlLayout;

/**
 * @internal Starts a native thread writing into `mapping`. Every write
 * stores the thread's next generation number (1, 2, 3...) in word `word` of
 * the page it picks, so a page's counter says how recent its copy is.
 */
export function startWriter(mapping: Mapping, options?: WriterOptions): PageWriter {
  v.instance('mapping', mapping, Mapping, 'a Mapping');
  if (mapping.closed) throw closedError('Mapping');
  const opts = v.options<WriterOptions>('options', options);
  const pages = mapping.length / mapping.pageSize;
  const hotFraction = v.number('options.hotFraction', opts.hotFraction ?? 0.02, 0, 1);
  const hotShare = v.number('options.hotShare', opts.hotShare ?? 0.95, 0, 1);
  const writesPerSecond = v.number('options.writesPerSecond', opts.writesPerSecond ?? 20_000, 0);
  const word = v.integer('options.word', opts.word ?? 0, 0, mapping.pageSize / 4 - 1);
  const seed = v.integer('options.seed', opts.seed ?? 0x2545f491, 0, 0xffffffff);
  const control = new Int32Array(new SharedArrayBuffer(L.slots * 4));
  const params = new Float64Array([Math.max(1, Math.floor(pages * hotFraction)), hotShare, writesPerSecond, word, seed]);
  let report: WriterReport | undefined;
  let onReport: ((r: WriterReport) => void) | undefined;
  const finished = new Promise<WriterReport>((resolve) => (onReport = resolve));
  check(native.writerStart(mapping.buffer, mapping.pageSize, params, control, (r: WriterReport) => {
    report = r;
    onReport!(r);
  }), 'writer', { address: mapping.address, length: mapping.length, hint: 'the mapping must be live and created in this thread' });
  return {
    get writes() {
      return Atomics.load(control, L.writes) >>> 0;
    },
    async pause(pauseOptions) {
      const signal = pauseOptions?.signal;
      if (report) throw stateError('ERR_UFFD_HANDLER_STATE', 'writer: already stopped');
      Atomics.store(control, L.command, L.pause);
      while (Atomics.load(control, L.paused) !== 1) {
        signal?.throwIfAborted();
        if (report) return;
        await new Promise((r) => setTimeout(r, 1));
      }
    },
    resume() {
      if (!report) {
        Atomics.store(control, L.paused, 0);
        Atomics.store(control, L.command, L.run);
      }
    },
    stop() {
      Atomics.store(control, L.command, L.stop);
      return finished;
    },
  };
}

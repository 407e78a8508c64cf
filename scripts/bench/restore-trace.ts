// The access trace of the restore benchmark's guest: a working set
// scattered over the image, chosen by the program's seed (what a recording
// of an earlier run can predict), plus a smaller part chosen by the run's
// seed (what differs run to run), interleaved. Computed the same way in the
// guest and in the benchmark, which checks the guest's digest against it.
import { prng } from './stats';

export interface TraceSpec {
  /** Pages of the image. */
  pages: number;
  /** Seed of the working set (the "program"). */
  program: number;
  /** Seed of the part that differs run to run. */
  run: number;
  /** Share of the image's pages in the working set, e.g. 0.10. */
  fixed: number;
  /** Share in the varying part, e.g. 0.02 (disjoint from the working set). */
  varying: number;
  /** Toucher threads (vCPUs); each takes a contiguous share of the order. */
  touchers: number;
}

export interface Trace {
  /** Every page touched, once each, in touch order. */
  order: Uint32Array;
  perToucher: Uint32Array[];
  fixedPages: number;
  varyingPages: number;
}

export function restoreTrace(spec: TraceSpec): Trace {
  const all = Uint32Array.from({ length: spec.pages }, (_, i) => i);
  const nFixed = Math.round(spec.pages * spec.fixed);
  const nVarying = Math.min(spec.pages - nFixed, Math.round(spec.pages * spec.varying));
  // Partial Fisher-Yates: the first nFixed slots from the program's seed, the next nVarying from the run's.
  const pick = (from: number, count: number, rand: () => number) => {
    for (let i = from; i < from + count; i++) {
      const j = i + Math.floor(rand() * (spec.pages - i));
      const t = all[i];
      all[i] = all[j];
      all[j] = t;
    }
  };
  pick(0, nFixed, prng(spec.program));
  const runRand = prng((spec.run * 0x9e3779b1) ^ 0x5bd1e995);
  pick(nFixed, nVarying, runRand);
  // The varying pages land at random places among the working set's.
  const order = new Uint32Array(nFixed + nVarying);
  let f = 0;
  let r = nFixed;
  for (let i = 0; i < order.length; i++) {
    const varyingLeft = nFixed + nVarying - r;
    const left = order.length - i;
    order[i] = runRand() * left < varyingLeft ? all[r++] : all[f++];
  }
  const per = Math.ceil(order.length / spec.touchers);
  const perToucher = Array.from({ length: spec.touchers }, (_, t) => order.slice(t * per, Math.min(order.length, (t + 1) * per)));
  return { order, perToucher, fixedPages: nFixed, varyingPages: nVarying };
}

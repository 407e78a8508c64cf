// The benchmark-only addon (native/bench/*.cc), built next to the library's
// addon by the same binding.gyp but never loaded by the library itself.
import bindings from 'bindings';

/** A native call that failed: which step, and -errno. */
export interface NativeFailure {
  errno: number;
  where: string;
}

export interface FloorResult {
  latencyNs: Float64Array;
  checksum: number;
  expected: number;
  /** Wall time of the touch loop alone. */
  wallNs: number;
}

export interface ReferenceResult {
  latencyNs: Float64Array[];
  checksum: number;
  expected: number;
  messages: number;
  resolved: number;
  existed: number;
  error: number;
  wallNs: number;
}

export interface BulkResult {
  continueNs: Float64Array;
  populateNs: Float64Array;
  populateRandomNs: Float64Array;
  checksOk: boolean;
}

export interface BenchBinding {
  floor(pageSize: number, pages: number, huge: boolean, order: Uint32Array, cpu: number): FloorResult | NativeFailure;
  cReference(pageSize: number, pages: number, huge: boolean, orders: Uint32Array[], handlerCpu: number, toucherCpus: number[]): ReferenceResult | NativeFailure;
  cBulk(pageSize: number, pages: number, huge: boolean, reps: number): BulkResult | NativeFailure;
  touchHere(buffer: ArrayBuffer, pageSize: number, order: Uint32Array): { latencyNs: Float64Array; checksum: number };
  pinSelf(cpu: number): number;
  pinThread(tid: number, cpu: number): number;
  gettid(): number;
}

export const bench: BenchBinding = bindings('userfaultfd_bench');

export function failed(result: object): result is NativeFailure {
  return 'errno' in result;
}

/** Throws when a native scenario could not even set up. */
export function unwrap<T extends object>(result: T | NativeFailure): T {
  if (failed(result)) throw new Error(`${result.where} failed with errno ${-result.errno}`);
  return result;
}

/** The first byte of page `i` of every benchmark memfd (native/bench/bench_common.h PageByte). */
export const pageByte = (i: number): number => (i % 251) + 1;

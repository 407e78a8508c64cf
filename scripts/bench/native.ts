// The benchmark-only addon (native/bench/*.cc), built next to the library's
// addon by the same binding.gyp but never loaded by the library itself.
import bindings from 'bindings';

/** A native call that failed: which step, and -errno. */
export interface NativeFailure {
  errno: number;
  where: string;
}

/** What the benchmark's toucher threads (native/bench TouchGroup) saw. */
export interface TouchResult {
  /** Per toucher, ns of each touch, in its page order. */
  latencyNs: Float64Array[];
  /** Per toucher, the CPU it ran on right after each touch. */
  touchCpus: Int32Array[];
  checksum: number;
  /** Wall time of the touch phase (all touchers). */
  wallNs: number;
  /** NowNs (CLOCK_MONOTONIC, the benchmark's one clock) when the touchers started. */
  startNs: number;
}

export interface FloorResult extends TouchResult {
  expected: number;
}

export interface ReferenceResult extends TouchResult {
  /** CPU of the handler thread that resolved each page (-1: none). */
  handlerCpuByPage: Int32Array;
  expected: number;
  messages: number;
  resolved: number;
  existed: number;
  error: number;
  /** CPU time of the handler thread(s), CLOCK_THREAD_CPUTIME_ID. */
  handlerCpuNs: number;
}

export interface BulkResult {
  continueNs: Float64Array;
  populateNs: Float64Array;
  populateRandomNs: Float64Array;
  checksOk: boolean;
}

/** A C restore under way (native/bench/restore.cc). */
export interface RestoreStarted {
  handle: object;
  startNs: number;
  /** Time the prefetch (copy and CONTINUE, or COPY and one wake, of the listed pages) took before returning. */
  prefetchNs: number;
  prefetched: number;
  continues: number;
}

export interface RestoreCounts {
  messages: number;
  /** Pages the handler copied on demand. */
  fetched: number;
  prefetched: number;
  resolved: number;
  existed: number;
  bytesMoved: number;
  error: number;
  prefetchError: number;
  handlerCpuNs: number;
}

export interface BenchBinding {
  floor(pageSize: number, pages: number, huge: boolean, order: Uint32Array, cpu: number, options?: { fd?: number; faultAround?: number }): FloorResult | NativeFailure;
  cReference(pageSize: number, pages: number, huge: boolean, orders: Uint32Array[], handlerCpu: number, toucherCpus: number[],
    options?: { fd?: number; spinUs?: number; handlers?: number }): ReferenceResult | NativeFailure;
  cBulk(pageSize: number, pages: number, huge: boolean, reps: number): BulkResult | NativeFailure;
  /** N toucher threads (pinned where cpus[t] >= 0) on a mapping this thread keeps mapped until the promise settles. */
  touch(buffer: ArrayBuffer, pageSize: number, orders: Uint32Array[], cpus: number[]): Promise<TouchResult>;
  touchHere(buffer: ArrayBuffer, pageSize: number, order: Uint32Array): { latencyNs: Float64Array; touchCpus: Int32Array; checksum: number; wallNs: number };
  /** fill 'copy': anonymous guest memory (UFFDIO_COPY from the image; memfdFd -1); 'continue' (default): a memfd view (pwrite + CONTINUE). */
  cRestoreStart(uffdFd: number, base: number, length: number, pageSize: number, memfdFd: number, imageFd: number, prefetch: Uint32Array, fill?: 'continue' | 'copy'): RestoreStarted | NativeFailure;
  cRestoreStop(handle: object): RestoreCounts;
  /** Order-independent digest of every byte of the listed pages of a mapping. */
  pageDigest(buffer: ArrayBuffer, pageSize: number, pages: Uint32Array): string;
  /** NowNs: CLOCK_MONOTONIC in ns, the same clock in every process of the machine. */
  now(): number;
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

// The raw native module, as native/*.cc exports it. Every syscall wrapper
// returns a number where >= 0 is success and a negative value is -errno;
// side results land in `scratch` (see native/addon_state.h).
import bindings from 'bindings';

/** Result of a wrapped syscall: >= 0 success, < 0 is -errno. */
export type SysResult = number;

export interface TouchReport {
  threadId: number;
  latencyNs: Float64Array;
  checksum: number;
}

export interface NativeBinding {
  /** [0] bytes done by the last progress ioctl, [1] syscall errno, [2] device errno of the last open. */
  scratch: Float64Array;

  closeFd(fd: number): SysResult;
  adoptFd(fd: number): void;
  disownFd(fd: number): void;
  fdFlags(fd: number): SysResult;
  dupFd(fd: number): SysResult;
  gettid(): number;
  pageSize(): number;

  uffdOpen(userModeOnly: number, via: number): SysResult;
  uffdApi(fd: number, features: number): SysResult | [number, bigint];
  uffdRegister(fd: number, start: number, len: number, mode: number): SysResult | bigint;
  uffdUnregister(fd: number, start: number, len: number): SysResult;
  uffdWake(fd: number, start: number, len: number): SysResult;
  uffdContinue(fd: number, start: number, len: number, mode: number): SysResult;
  uffdZeropage(fd: number, start: number, len: number, mode: number): SysResult;
  uffdPoison(fd: number, start: number, len: number, mode: number): SysResult;
  uffdCopy(fd: number, dst: number, src: number, len: number, mode: number): SysResult;
  uffdCopyBuffer(fd: number, dst: number, bytes: ArrayBufferView, mode: number): SysResult;
  uffdWriteProtect(fd: number, start: number, len: number, mode: number): SysResult;
  uffdMove(fd: number, dst: number, src: number, len: number, mode: number): SysResult;
  uffdRead(fd: number, into: ArrayBuffer): SysResult;

  memfdCreate(name: string, hugeShift: number): SysResult;
  fdSize(fd: number): SysResult;
  truncate(fd: number, size: number): SysResult;
  fallocate(fd: number, mode: number, offset: number, length: number): SysResult;
  pwrite(fd: number, bytes: ArrayBufferView, offset: number): SysResult;
  pread(fd: number, into: ArrayBufferView, offset: number): SysResult;
  mmap(fd: number, offset: number, length: number, prot: number, flags: number): SysResult | [number, ArrayBuffer];
  munmap(address: number, buffer: ArrayBuffer): SysResult;
  madvise(address: number, length: number, advice: number): SysResult;

  pollerStart(fd: number, into: ArrayBuffer | null, onReady: (result: number) => void): SysResult | PollerHandle;
  pollerStop(handle: PollerHandle): void;
  pollerRef(handle: PollerHandle, ref: boolean): void;

  touchStart(
    mapping: ArrayBuffer,
    pageSize: number,
    pages: Uint32Array,
    writeValue: number,
    cpu: number,
    done: (report: TouchReport) => void,
  ): SysResult;

  /**
   * Starts the native resolver thread on uffd `fd` (see native/resolver.cc).
   * `present` is the present-page bitmap; `loopThreadAction` 0 = abort, 1 = map as-is.
   * `onBatch(faults, count, events)`: faults it could not resolve as
   * [address, flags, tid, ageNs] * count, events as [code, a, b, c] * n.
   */
  resolverStart(
    fd: number,
    memfd: number,
    present: ArrayBuffer,
    readAhead: number,
    loopThreadAction: number,
    onBatch: (faults: Float64Array, count: number, events: number[]) => void,
  ): SysResult | ResolverHandle;
  /** Replaces the region table: [address, length, memfdOffset] * n. */
  resolverSetRegions(handle: ResolverHandle, regions: Float64Array): void;
  /** Stops and joins the thread. Idempotent. */
  resolverStop(handle: ResolverHandle): void;
  /** [faults, resolved, alreadyPresent, readAheadPages, loopThreadFaults, ...latency buckets]. */
  resolverStats(handle: ResolverHandle): Float64Array;

  socketPair(): SysResult | [number, number];
  unixListen(path: string, backlog: number): SysResult;
  unixAccept(fd: number): SysResult;
  unixConnect(path: string): SysResult;
  sendFds(fd: number, bytes: Uint8Array, fds: number[]): SysResult;
  recvFds(fd: number, into: Uint8Array): SysResult | [number, number[], boolean];
  peerCred(fd: number): SysResult | [number, number, number];
  sockWrite(fd: number, bytes: Uint8Array): SysResult;
  sockRead(fd: number, into: Uint8Array): SysResult;
}

/** Opaque handle of a native poller. */
export interface PollerHandle {
  readonly __poller: unique symbol;
}

/** Opaque handle of a native resolver thread. */
export interface ResolverHandle {
  readonly __resolver: unique symbol;
}

export const native: NativeBinding = bindings('userfaultfd');

import { readFileSync, readdirSync } from 'node:fs';
import { totalmem } from 'node:os';

import { MADVISE, Advice, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE } from './constants';
import { trace } from './debug';
import { UffdError, argRangeError, argValueError, check, checkValue, closedError, deadlockError, stateError } from './errors';
import { FEATURES } from './constants';
import { native } from './native';
import { blockingUffds, relocate, removeRange } from './registrations';
import * as v from './validate';

/** The system page size (from sysconf: 4 KiB, 16 KiB or 64 KiB on arm64). */
export const PAGE_SIZE: number = native.pageSize();

/** Options of {@link Memfd.create}. */
export interface MemfdOptions {
  /** Name shown in /proc/PID/maps (`memfd:NAME`). Default `userfaultfd`. */
  name?: string;
  /**
   * Back the memfd with huge pages (MFD_HUGETLB). `true` means the kernel's
   * default huge page size (2 MiB on x86-64 and 4 KiB-page arm64, 32 MiB on
   * 16 KiB-page arm64); a number is one of the sizes listed in
   * /sys/kernel/mm/hugepages, in bytes. Needs huge pages reserved (`vm.nr_hugepages`).
   */
  hugetlb?: boolean | number;
  /** Allocate every page up front (fallocate), so that every page faults MINOR. Default false. */
  allocate?: boolean;
}

/** Options of {@link Memfd.map}. */
export interface MapOptions {
  /** Offset into the memfd, a multiple of the page size. Default 0. */
  offset?: number;
  /** Bytes to map, a multiple of the page size. Default: to the end of the memfd. */
  length?: number;
  /** MAP_PRIVATE instead of MAP_SHARED: writes go to private copies, not the memfd. */
  private?: boolean;
  /** Map read-only. Default false. */
  readOnly?: boolean;
}

/** Options of {@link Memfd.fromFd}. */
export interface FromFdOptions {
  /** Close the fd when this Memfd is closed. Default false: the fd is borrowed. */
  owned?: boolean;
  /** The fd is a hugetlb memfd with this huge page size in bytes. */
  hugePageSize?: number;
}

/**
 * Huge page sizes this kernel supports, from /sys/kernel/mm/hugepages. They
 * depend on the architecture and base page size (arm64 with 16 KiB pages has
 * 2 MiB, 32 MiB and 1 GiB, 32 MiB being the default), so nothing is assumed.
 */
function hugePageSizes(): number[] {
  try {
    return readdirSync('/sys/kernel/mm/hugepages')
      .map((d) => /^hugepages-(\d+)kB$/.exec(d))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => Number(m[1]) * 1024)
      .sort((a, b) => a - b);
  } catch {
    return [];
  }
}

/** The kernel's default huge page size (Hugepagesize in /proc/meminfo), what `hugetlb: true` means. */
function defaultHugePageSize(): number {
  try {
    const m = /^Hugepagesize:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
    if (m) return Number(m[1]) * 1024;
  } catch {
    // fall through
  }
  return 2 * 1024 * 1024;
}

function checkHugePageSize(name: string, size: number): number {
  const sizes = hugePageSizes();
  if (!sizes.includes(size)) throw argValueError(name, `must be a huge page size this kernel supports (${sizes.join(', ') || 'none'})`, size);
  return size;
}

/**
 * A memory file (memfd_create) whose pages can be mapped any number of times.
 * The usual userfaultfd MINOR set-up maps it twice: a *guest* view that is
 * registered and faults, and a *fill* view (or {@link Memfd.write}) through
 * which content is put into the page cache without faulting.
 */
export class Memfd implements Disposable {
  /** The file descriptor (close-on-exec). */
  readonly fd: number;
  /** Granularity of every offset and length: the system page size, or the huge page size. */
  readonly pageSize: number;
  /** Backed by hugetlbfs (no write(2): {@link write} goes through a mapping). */
  readonly hugetlb: boolean;
  readonly owned: boolean;
  #closed = false;
  readonly #mappings = new Set<Mapping>();
  #fillView: Mapping | undefined;

  private constructor(fd: number, pageSize: number, hugetlb: boolean, owned: boolean) {
    this.fd = fd;
    this.pageSize = pageSize;
    this.hugetlb = hugetlb;
    this.owned = owned;
  }

  /** Creates a memfd of `size` bytes (a multiple of the page size). */
  static create(size: number, options?: MemfdOptions): Memfd {
    const opts = v.options<MemfdOptions>('options', options);
    const name = opts.name ?? 'userfaultfd';
    if (typeof name !== 'string' || name.length > 249 || name.includes('\0') || name.includes('/'))
      throw argValueError('options.name', 'must be a string of at most 249 characters without "/" or NUL', name);
    let hugePageSize = 0;
    if (opts.hugetlb === true) hugePageSize = defaultHugePageSize();
    else if (typeof opts.hugetlb === 'number') hugePageSize = checkHugePageSize('options.hugetlb', opts.hugetlb);
    else if (opts.hugetlb !== undefined && opts.hugetlb !== false) throw argValueError('options.hugetlb', 'must be a boolean or a huge page size', opts.hugetlb);
    const pageSize = hugePageSize || PAGE_SIZE;
    v.pageLength('size', size, pageSize);
    const allocate = v.boolean('options.allocate', opts.allocate, false);
    if (allocate && size > totalmem()) throw argRangeError('size', `<= the machine's memory (${totalmem()}) when options.allocate is set`, size);
    const fd = check(native.memfdCreate(name, hugePageSize ? Math.log2(hugePageSize) : 0), 'memfd_create', {
      hint: hugePageSize ? 'hugetlb memfds need the kernel built with CONFIG_HUGETLBFS' : undefined,
    });
    const mem = new Memfd(fd, pageSize, hugePageSize > 0, true);
    try {
      check(native.truncate(fd, size), 'ftruncate', { length: size, fd });
      if (allocate) mem.allocate(0, size);
    } catch (err) {
      mem.close();
      throw err;
    }
    trace('memfd %d created: %d bytes, page size %d', fd, size, pageSize);
    return mem;
  }

  /**
   * Wraps an existing memfd (or any shmem/hugetlbfs file descriptor), such as
   * one received from another process or inherited by a child. Borrowed by
   * default: {@link close} unmaps this object's views but leaves the fd open.
   */
  static fromFd(fd: number, options?: FromFdOptions): Memfd {
    v.fd('fd', fd);
    const opts = v.options<FromFdOptions>('options', options);
    const owned = v.boolean('options.owned', opts.owned, false);
    let pageSize = PAGE_SIZE;
    if (opts.hugePageSize !== undefined) {
      pageSize = checkHugePageSize('options.hugePageSize', opts.hugePageSize);
    }
    check(native.fdSize(fd), 'fstat', { fd });
    if (owned) native.adoptFd(fd);
    return new Memfd(fd, pageSize, opts.hugePageSize !== undefined, owned);
  }

  /** True once {@link close} has run. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Current size in bytes (fstat, so a truncate by another process is seen). */
  get size(): number {
    this.#assertOpen();
    return check(native.fdSize(this.fd), 'fstat', { fd: this.fd });
  }

  /** The live mappings of this memfd made through this object. */
  get mappings(): readonly Mapping[] {
    return [...this.#mappings];
  }

  /**
   * Maps a window of the memfd. The returned {@link Mapping} exposes the mapped
   * memory itself as an ArrayBuffer (no copy).
   */
  map(options?: MapOptions): Mapping {
    this.#assertOpen();
    const opts = v.options<MapOptions>('options', options);
    const offset = opts.offset === undefined ? 0 : v.aligned('options.offset', v.integer('options.offset', opts.offset), this.pageSize);
    const size = this.size;
    const length = opts.length === undefined ? size - offset : v.pageLength('options.length', opts.length, this.pageSize);
    if (length <= 0) throw argValueError('options.offset', 'must leave at least one page to map', offset);
    // Pages of a mapping beyond the end of the file raise SIGBUS when
    // touched, which kills the process: refuse to create such a view.
    if (offset + length > size) throw argRangeError('options.length', `such that offset + length <= the memfd size (${size})`, length);
    const isPrivate = v.boolean('options.private', opts.private, false);
    const readOnly = v.boolean('options.readOnly', opts.readOnly, false);
    const prot = readOnly ? PROT_READ : PROT_READ | PROT_WRITE;
    const result = native.mmap(this.fd, offset, length, prot, isPrivate ? MAP_PRIVATE : MAP_SHARED);
    const [address, buffer] = checkValue(result, 'mmap', { length, fd: this.fd });
    const mapping = this.adoptMapping(address, buffer, offset, length, isPrivate, readOnly);
    trace('memfd %d: mapped %d bytes at offset %d -> 0x%s%s', this.fd, length, offset, address.toString(16), isPrivate ? ' (private)' : '');
    return mapping;
  }

  /** @internal Tracks a mapping of this memfd made by map() or Mapping#remap(). */
  adoptMapping(address: number, buffer: ArrayBuffer, offset: number, length: number, isPrivate: boolean, readOnly: boolean): Mapping {
    const mapping = new Mapping(this, address, buffer, offset, length, isPrivate, readOnly, () => this.#mappings.delete(mapping));
    this.#mappings.add(mapping);
    return mapping;
  }

  /**
   * Writes bytes into the page cache at `offset` without touching any mapping
   * (pwrite), so no fault is raised. hugetlbfs has no pwrite: there the bytes
   * go through an internal shared mapping. Returns the bytes written.
   */
  write(offset: number, bytes: ArrayBufferView): number {
    this.#assertOpen();
    v.integer('offset', offset);
    const data = v.bytes('bytes', bytes);
    if (offset + data.byteLength > Number.MAX_SAFE_INTEGER) throw argRangeError('offset', 'such that offset + bytes.byteLength <= 2^53 - 1', offset);
    if (this.hugetlb) return this.#viaFillView(offset, data.byteLength, (view) => view.set(data));
    return check(native.pwrite(this.fd, data, offset), 'pwrite', { fd: this.fd, address: offset, length: data.byteLength });
  }

  /**
   * Reads `length` bytes at `offset` (pread), or fills `into`. Reading never
   * faults a registered view. Returns a Buffer of the bytes read (shorter at end of file).
   */
  read(offset: number, lengthOrInto: number | ArrayBufferView): Buffer {
    this.#assertOpen();
    v.integer('offset', offset);
    // Never allocate more than the file can return: a huge length is answered
    // with the bytes that exist, not with a multi-gigabyte zeroed buffer.
    const into = typeof lengthOrInto === 'number'
      ? Buffer.alloc(Math.min(v.integer('length', lengthOrInto, 0, 2 ** 31 - 1), Math.max(0, this.size - offset)))
      : v.bytes('into', lengthOrInto);
    const target = Buffer.from(into.buffer, into.byteOffset, into.byteLength);
    if (this.hugetlb) {
      const n = this.#viaFillView(offset, into.byteLength, (view) => target.set(view));
      return target.subarray(0, n);
    }
    const n = check(native.pread(this.fd, target, offset), 'pread', { fd: this.fd, address: offset, length: into.byteLength });
    return target.subarray(0, n);
  }

  /** Allocates pages (fallocate mode 0): they become present zeros, so touches fault MINOR. */
  allocate(offset: number, length: number): void {
    // fallocate on the kernel's internal shmem mount has no size limit: an
    // oversized request would eat all memory and summon the OOM killer.
    // Growing the file is truncate's job; allocate stays inside it.
    const size = this.size;
    if (typeof offset === 'number' && typeof length === 'number' && offset + length > size)
      throw argRangeError('length', `such that offset + length <= the memfd size (${size}); grow it with truncate() first`, length);
    this.#fallocate(0, offset, length, 'allocate');
  }

  /** Frees pages (FALLOC_FL_PUNCH_HOLE): they become holes again. Sends no userfaultfd event. */
  punchHole(offset: number, length: number): void {
    this.#fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length, 'punchHole');
  }

  /** Sets the size (ftruncate). Shrinking drops pages; sends no userfaultfd event. */
  truncate(size: number): void {
    this.#assertOpen();
    v.aligned('size', v.integer('size', size), this.pageSize);
    check(native.truncate(this.fd, size), 'ftruncate', { fd: this.fd, length: size });
  }

  /** Unmaps every mapping made through this object (detaching their buffers) and closes an owned fd. Idempotent. */
  close(): void {
    if (this.#closed) return;
    for (const mapping of [...this.#mappings]) mapping.unmap();
    this.#fillView = undefined;
    this.#closed = true;
    if (this.owned) check(native.closeFd(this.fd), 'close', { fd: this.fd });
    trace('memfd %d closed', this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #fallocate(mode: number, offset: number, length: number, what: string): void {
    this.#assertOpen();
    v.aligned('offset', v.integer('offset', offset), this.pageSize);
    v.pageLength('length', length, this.pageSize);
    check(native.fallocate(this.fd, mode, offset, length), 'fallocate', { fd: this.fd, address: offset, length, operation: what });
  }

  #viaFillView(offset: number, length: number, copy: (view: Uint8Array) => void): number {
    const size = this.size;
    if (offset + length > size) throw new UffdError(-22, 'write', { address: offset, length, hint: 'beyond the end of a hugetlb memfd (hugetlbfs cannot grow by writing)' });
    if (!this.#fillView || this.#fillView.closed || this.#fillView.length !== size) {
      this.#fillView?.unmap();
      this.#fillView = this.map();
    }
    copy(new Uint8Array(this.#fillView.buffer, offset, length));
    return length;
  }

  #assertOpen(): void {
    if (this.#closed) throw closedError('Memfd');
  }
}

/**
 * One mmap of a {@link Memfd}. `buffer` is the mapped memory itself; after
 * {@link unmap} (or the Memfd's close) it is detached: byteLength 0, and every
 * view over it is empty, so no access can reach unmapped memory.
 */
export class Mapping implements Disposable, v.Range {
  readonly memfd: Memfd;
  /** Start address in this process. */
  readonly address: number;
  readonly length: number;
  /** Offset of the first mapped byte in the memfd. */
  readonly offset: number;
  readonly private: boolean;
  readonly readOnly: boolean;
  readonly #buffer: ArrayBuffer;
  readonly #forget: () => void;
  #closed = false;

  /** @internal */
  constructor(memfd: Memfd, address: number, buffer: ArrayBuffer, offset: number, length: number, isPrivate: boolean, readOnly: boolean, forget: () => void) {
    this.memfd = memfd;
    this.address = address;
    this.#buffer = buffer;
    this.offset = offset;
    this.length = length;
    this.private = isPrivate;
    this.readOnly = readOnly;
    this.#forget = forget;
  }

  /** The mapped memory. Touching a page of a registered mapping faults. Detached after unmap. */
  get buffer(): ArrayBuffer {
    return this.#buffer;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Page granularity of this mapping (the memfd's). */
  get pageSize(): number {
    return this.memfd.pageSize;
  }

  /** The address of the byte at `offset` within this mapping. */
  addressOf(offset: number): number {
    this.#assertOpen();
    v.integer('offset', offset, 0, this.length - 1);
    return this.address + offset;
  }

  /** True when [address, address + length) lies inside this mapping. */
  contains(address: number, length = 1): boolean {
    return !this.#closed && address >= this.address && address + length <= this.address + this.length;
  }

  /** madvise on the whole mapping or a page-aligned part of it. */
  advise(advice: Advice, offset = 0, length = this.length - offset): void {
    this.#assertOpen();
    // oneOf checks own names only: 'toString' or '__proto__' are not advice.
    v.oneOf('advice', advice, Object.keys(MADVISE) as Advice[], 'normal');
    if (advice === undefined) throw argValueError('advice', `must be one of ${Object.keys(MADVISE).join(', ')}`, advice);
    v.aligned('offset', v.integer('offset', offset, 0, this.length - 1), this.pageSize);
    v.pageLength('length', length, this.pageSize);
    if (offset + length > this.length) throw argValueError('length', 'reaches beyond the mapping', length);
    if (advice === 'dontneed' || advice === 'remove') {
      const blocking = blockingUffds(FEATURES.eventRemove, this.address + offset, length);
      if (blocking.length)
        throw deadlockError(`madvise(${advice}) of a range registered with userfaultfd ${blocking.map((u) => u.fd).join(', ')} (eventRemove) would block this thread until the REMOVE event is read, and only this thread reads it: call it from another thread, or read events on a native resolver thread`);
    }
    check(native.madvise(this.address + offset, length, MADVISE[advice]), 'madvise', { operation: advice, address: this.address + offset, length });
  }

  /** Detaches `buffer`, then unmaps. Idempotent. Refused (EBUSY) while a native toucher is using the mapping. */
  unmap(): void {
    if (this.#closed) return;
    // With eventUnmap, munmap of a registered range waits until the UNMAP
    // event is read; if only this thread reads it, that wait never ends (not
    // even SIGTERM ends it). The view is going away: unregister it first.
    for (const uffd of blockingUffds(FEATURES.eventUnmap, this.address, this.length)) {
      check(native.uffdUnregister(uffd.fd, this.address, this.length), 'ioctl', { operation: 'UFFDIO_UNREGISTER', address: this.address, length: this.length, hint: 'before munmap' });
      native.uffdWake(uffd.fd, this.address, this.length);
      removeRange(uffd, this.address, this.length);
    }
    check(native.munmap(this.address, this.#buffer), 'munmap', { address: this.address, length: this.length });
    this.#closed = true;
    this.#forget();
    trace('unmapped 0x%s (%d bytes)', this.address.toString(16), this.length);
  }

  /**
   * Resizes the mapping with mremap, letting the kernel move it. This Mapping
   * is closed (its buffer detached) and the returned one covers the new
   * range. On a registered range the uffd receives a `remap` event, and the
   * calling thread waits until that event is read.
   */
  remap(length: number): Mapping {
    this.#assertOpen();
    v.pageLength('length', length, this.pageSize);
    // Like munmap: with eventRemap/eventUnmap the mremap waits until its
    // events are read, which from the only reader's thread is forever.
    const blocking = blockingUffds(FEATURES.eventRemap | FEATURES.eventUnmap, this.address, this.length);
    if (blocking.length)
      throw deadlockError(`mremap of a range registered with userfaultfd ${blocking.map((u) => u.fd).join(', ')} (eventRemap/eventUnmap) would block this thread until its events are read, and only this thread reads them: call it from another thread, or read events on a native resolver thread`);
    const [address, buffer] = checkValue(native.mremap(this.address, this.#buffer, length), 'mremap', { address: this.address, length });
    relocate(this.address, Math.min(this.length, length), address);
    this.#closed = true;
    this.#forget();
    trace('remapped 0x%s (%d bytes) -> 0x%s (%d bytes)', this.address.toString(16), this.length, address.toString(16), length);
    return this.memfd.adoptMapping(address, buffer, this.offset, length, this.private, this.readOnly);
  }

  [Symbol.dispose](): void {
    this.unmap();
  }

  #assertOpen(): void {
    if (this.#closed) throw stateError('ERR_UFFD_CLOSED', 'Mapping is unmapped');
  }
}

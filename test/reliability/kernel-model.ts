// A small model of what the kernel (and the library's own checks) do with a
// memfd, its shared views, two userfaultfds registered MINOR, CONTINUE,
// punch-hole, truncate, MADV_DONTNEED, touches from another thread, unregister
// and close. The errno table it encodes (docs/kernel-behaviour.md, "UFFDIO_CONTINUE results"):
//   CONTINUE: beyond i_size -> EINVAL, hole -> EFAULT, PTE present -> EEXIST,
//   not inside a registered VMA -> ENOENT (any uffd of the process will do), some pages done then
//   a failure -> EAGAIN with the bytes done; a second uffd on a range: EBUSY;
//   a touch of a hole in a MINOR range allocates silently (no fault).
// Fault-around is the one thing the model cannot predict exactly: a read
// fault on an unregistered view may map neighbouring cached pages, so such
// PTEs are "maybe" until an observation settles them.

export type Pte = 'yes' | 'no' | 'maybe';

export interface ViewModel {
  /** Start address in this process (the kernel reuses the addresses of unmapped views). */
  address: number;
  offset: number; // in pages
  length: number; // in pages
  live: boolean;
  /** Index of the uffd it is registered with, or -1. */
  uffd: number;
  ptes: Pte[];
}

/** The outcome of an operation: a value, or an error code (bytesDone for EAGAIN). */
export type Outcome = { ok: number } | { error: string; bytesDone?: number };

export const FAULT_AROUND_PAGES = 16;

export class KernelModel {
  size: number; // in pages
  /** First byte of each page of the memfd; undefined = hole (reads as 0). */
  content: Array<number | undefined>;
  /** Every other byte of each page (a toucher's write changes the first byte only); undefined = hole. */
  rest: Array<number | undefined>;
  views: ViewModel[] = [];
  uffdOpen: boolean[] = [true, true];

  constructor(pages: number, filled: number[]) {
    this.size = pages;
    this.content = Array.from({ length: pages }, (_, i) => (filled.includes(i) ? (i % 250) + 1 : undefined));
    this.rest = [...this.content];
  }

  /** The whole page `page` of the memfd as the model believes it is. */
  pageBytes(page: number, pageSize: number): Buffer {
    const bytes = Buffer.alloc(pageSize, this.rest[page] ?? 0);
    bytes[0] = this.content[page] ?? 0;
    return bytes;
  }

  liveViews(): number[] {
    return this.views.flatMap((v, i) => (v.live ? [i] : []));
  }

  /** Memfd.map({offset, length}) */
  map(offset: number, length: number, address = 0): Outcome {
    if (offset + length > this.size) return { error: 'ERR_OUT_OF_RANGE' };
    this.views.push({ address, offset, length, live: true, uffd: -1, ptes: Array(length).fill('no') });
    return { ok: this.views.length - 1 };
  }

  register(view: number, uffd: number): Outcome {
    const v = this.views[view];
    if (!this.uffdOpen[uffd] || !v.live) return { error: 'ERR_UFFD_CLOSED' };
    if (v.uffd !== -1 && v.uffd !== uffd) return { error: 'EBUSY' };
    v.uffd = uffd;
    return { ok: 0 };
  }

  unregister(view: number, uffd: number): Outcome {
    const v = this.views[view];
    if (!this.uffdOpen[uffd] || !v.live) return { error: 'ERR_UFFD_CLOSED' };
    // Unregistering a range registered with another uffd: the kernel refuses it.
    if (v.uffd !== -1 && v.uffd !== uffd) return { error: 'EINVAL' };
    v.uffd = -1;
    return { ok: 0 };
  }

  closeUffd(uffd: number): void {
    this.uffdOpen[uffd] = false;
    for (const v of this.views) if (v.uffd === uffd) v.uffd = -1;
  }

  reopenUffd(uffd: number): void {
    this.uffdOpen[uffd] = true;
  }

  unmap(view: number): void {
    const v = this.views[view];
    v.live = false;
    v.uffd = -1;
  }

  write(page: number, value: number): void {
    this.content[page] = value;
    this.rest[page] = value;
  }

  /** Pages dropped from the page cache lose their PTEs in every view. */
  #dropPtes(first: number, end: number): void {
    for (const v of this.views)
      for (let i = 0; i < v.length; i++) if (v.offset + i >= first && v.offset + i < end) v.ptes[i] = 'no';
  }

  punchHole(page: number, count: number): void {
    for (let p = page; p < Math.min(page + count, this.size); p++) this.content[p] = this.rest[p] = undefined;
    this.#dropPtes(page, page + count);
  }

  truncate(pages: number): void {
    if (pages < this.size) {
      this.content.length = pages;
      this.rest.length = pages;
      this.#dropPtes(pages, Infinity);
    } else {
      for (let p = this.size; p < pages; p++) this.content[p] = this.rest[p] = undefined;
    }
    this.size = pages;
  }

  dontneed(view: number, page: number, count: number): void {
    const v = this.views[view];
    for (let i = page; i < page + count; i++) v.ptes[i] = 'no';
  }

  /**
   * The outcomes CONTINUE may have on pages [page, page+count) of a view (more
   * than one only when a PTE is "maybe"). `onExists: 'wake'` turns a leading
   * EEXIST into 0.
   */
  continueOutcomes(view: number, uffd: number, page: number, count: number, pageSize: number): Outcome[] {
    if (!this.uffdOpen[uffd]) return [{ error: 'ERR_UFFD_CLOSED' }];
    // By address: a dead view's range may belong to a newer view now.
    const target = this.viewAt(this.views[view].address + page * pageSize, count * pageSize, pageSize);
    if (target === undefined) return [{ error: 'ENOENT' }];
    [view, page] = target;
    const v = this.views[view];
    // The kernel only asks that the VMA be registered with some uffd of this
    // mm (find_dst_vma), not with the one issuing the ioctl: a second uffd of
    // the same process can CONTINUE into the first one's range.
    if (!v.live || v.uffd === -1) return [{ error: 'ENOENT' }];
    const outcomes = new Map<string, Outcome>();
    const walk = (i: number, done: number): void => {
      const add = (o: Outcome): void => void outcomes.set(JSON.stringify(o), o);
      if (i === page + count) return add({ ok: done * pageSize });
      const filePage = v.offset + i;
      const fail = (code: string) => add(done > 0 ? { error: 'EAGAIN', bytesDone: done * pageSize } : code === 'EEXIST' ? { ok: 0 } : { error: code });
      if (filePage >= this.size) return fail('EINVAL');
      if (this.content[filePage] === undefined) return fail('EFAULT');
      if (v.ptes[i] === 'yes') return fail('EEXIST');
      if (v.ptes[i] === 'maybe') fail('EEXIST');
      walk(i + 1, done + 1);
    };
    walk(page, 0);
    return [...outcomes.values()];
  }

  /** The live view holding [address, address+length) entirely, and the page index in it. */
  viewAt(address: number, length: number, pageSize: number): [number, number] | undefined {
    const i = this.views.findIndex((v) => v.live && address >= v.address && address + length <= v.address + v.length * pageSize);
    return i < 0 ? undefined : [i, (address - this.views[i].address) / pageSize];
  }

  /** Applies an observed CONTINUE outcome. */
  applyContinue(view: number, page: number, count: number, observed: Outcome, pageSize: number): void {
    const target = this.viewAt(this.views[view].address + page * pageSize, count * pageSize, pageSize);
    if (target === undefined || this.views[target[0]].uffd === -1) return;
    [view, page] = target;
    const v = this.views[view];
    const mapped = 'ok' in observed ? (observed.ok === 0 ? 0 : count) : observed.error === 'EAGAIN' ? (observed.bytesDone ?? 0) / pageSize : 0;
    for (let i = page; i < page + mapped; i++) v.ptes[i] = 'yes';
    // The page it stopped at: cached and inside the file means it failed on EEXIST.
    const stop = page + mapped;
    if (stop < page + count && ('ok' in observed || observed.error === 'EAGAIN')) {
      const filePage = v.offset + stop;
      if (filePage < this.size && this.content[filePage] !== undefined) v.ptes[stop] = 'yes';
    }
  }

  /** Whether touching the page would kill the process (SIGBUS beyond the end of the file). */
  touchIsFatal(view: number, page: number): boolean {
    return this.views[view].offset + page >= this.size;
  }

  /**
   * A touch of one page from another thread: how many MINOR fault messages
   * it may raise (a set when the PTE is "maybe") and the first byte it reads.
   */
  touchExpect(view: number, page: number): { faults: number[]; firstByte: number } {
    const v = this.views[view];
    const filePage = v.offset + page;
    const cached = this.content[filePage] !== undefined;
    const firstByte = this.content[filePage] ?? 0;
    if (v.uffd === -1 || !cached || v.ptes[page] === 'yes') return { faults: [0], firstByte };
    if (v.ptes[page] === 'maybe') return { faults: [0, 1], firstByte };
    return { faults: [1], firstByte };
  }

  /** State after the touch (a read or a write of `value`). */
  applyTouch(view: number, page: number, value: number | undefined): void {
    const v = this.views[view];
    const filePage = v.offset + page;
    const wasUnregistered = v.uffd === -1;
    if (this.content[filePage] === undefined) this.content[filePage] = this.rest[filePage] = 0; // a hole is allocated, zeroed
    if (value !== undefined) this.content[filePage] = value;
    v.ptes[page] = 'yes';
    if (wasUnregistered && value === undefined) {
      // Fault-around may map cached neighbours in the aligned window.
      // Its window is aligned in the address space, not the file: be generous.
      for (let i = Math.max(0, page - FAULT_AROUND_PAGES); i < Math.min(v.length, page + FAULT_AROUND_PAGES); i++) {
        const fp = v.offset + i;
        if (fp < this.size && this.content[fp] !== undefined && v.ptes[i] === 'no') v.ptes[i] = 'maybe';
      }
    }
  }

  /** A fault settled a "maybe" PTE: it was absent. */
  settle(view: number, page: number): void {
    this.views[view].ptes[page] = 'yes';
  }
}

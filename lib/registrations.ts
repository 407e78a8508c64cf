// Ranges this environment registered with userfaultfds that negotiated
// non-cooperative events. munmap of such a range (with eventUnmap) and
// madvise(DONTNEED/REMOVE) of it (with eventRemove) block the calling thread
// in the kernel until the event is read; when the caller is the JavaScript
// thread and the reader runs on that same thread, that wait never ends and
// not even SIGTERM ends it. Mapping#unmap and Mapping#advise consult this
// table to avoid it.
import { EVENT_FEATURES } from './constants';

/** One userfaultfd, as the guard sees it. */
export interface GuardedUffd {
  readonly fd: number;
  readonly featureMask: number;
  /** Registered [start, end) ranges, coarse: entries are dropped only by an unregister that covers them. */
  readonly ranges: Array<[number, number]>;
  /** Events are read on a thread other than the JavaScript thread (a native resolver), so the kernel's wait ends. */
  readOnOtherThread: boolean;
}

const live = new Set<GuardedUffd>();

/** Starts tracking `uffd` if it negotiated any event that makes an mm change wait. */
export function track(fd: number, featureMask: number): GuardedUffd | undefined {
  if ((featureMask & EVENT_FEATURES) === 0) return undefined;
  const entry: GuardedUffd = { fd, featureMask, ranges: [], readOnOtherThread: false };
  live.add(entry);
  return entry;
}

export function untrack(entry: GuardedUffd | undefined): void {
  if (entry) live.delete(entry);
}

export function addRange(entry: GuardedUffd | undefined, start: number, length: number): void {
  entry?.ranges.push([start, start + length]);
}

export function removeRange(entry: GuardedUffd | undefined, start: number, length: number): void {
  if (!entry) return;
  const end = start + length;
  for (let i = entry.ranges.length - 1; i >= 0; i--)
    if (entry.ranges[i][0] >= start && entry.ranges[i][1] <= end) entry.ranges.splice(i, 1);
}

/** Userfaultfds with `feature` whose registrations overlap [start, start+length) and whose events only this thread reads. */
export function blockingUffds(feature: number, start: number, length: number): GuardedUffd[] {
  const end = start + length;
  const found: GuardedUffd[] = [];
  for (const entry of live) {
    if ((entry.featureMask & feature) === 0 || entry.readOnOtherThread) continue;
    if (entry.ranges.some(([s, e]) => s < end && start < e)) found.push(entry);
  }
  return found;
}

/** mremap moved [from, from+length) to `to`: registrations inside it moved with it (the kernel carries them). */
export function relocate(from: number, length: number, to: number): void {
  const end = from + length;
  for (const entry of live)
    for (const range of entry.ranges)
      if (range[0] >= from && range[1] <= end) {
        range[0] += to - from;
        range[1] += to - from;
      }
}

// Waking (docs/kernel-behaviour.md, "Waking, closing, events"): DONTWAKE then
// WAKE, UNREGISTER (which the kernel does not make wake MINOR faulters) and
// close(). A faulter still asleep at the end of a failed test is woken by the
// afterEach close of its uffd.
import { afterEach, describe, expect } from 'vitest';

import { PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { native } from '../../lib/native';
import { holdsFor, itWith, waitFor } from '../helpers';
import { Closer, Pagefault, collect, filledMemfd, pageByte, sleepingIn } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

function setup(pages: number) {
  const mem = filledMemfd(closer, pages);
  const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId'] }));
  const guest = mem.map();
  uffd.register(guest, { minor: true });
  return { mem, uffd, guest };
}

/** Waits until the thread of `ev` is asleep in the userfaultfd fault path. */
async function blockedInFault(ev: Pagefault): Promise<void> {
  await waitFor(() => sleepingIn(ev.threadId) === 'handle_userfault', 5000, `thread ${ev.threadId} asleep in handle_userfault`);
}

describe('waking', () => {
  itWith(['minorShmem', 'threadId'], 'CONTINUE with dontWake maps the page but leaves the faulter asleep until WAKE', async () => {
    const { uffd, guest } = setup(4);
    let finished = false;
    const touched = touchPages(guest, [1]).finally(() => (finished = true));
    const [ev] = (await collect(uffd, 1)) as Pagefault[];
    await blockedInFault(ev);
    expect(uffd.continue(ev.address, PAGE_SIZE, { dontWake: true })).toBe(PAGE_SIZE);
    // Mapped: this thread can read it without faulting.
    expect(new Uint8Array(guest.buffer)[PAGE_SIZE]).toBe(pageByte(1));
    // Nothing may wake it: it stays asleep in the fault for a while.
    await holdsFor(() => !finished && sleepingIn(ev.threadId) === 'handle_userfault', 100, 'the faulter asleep in handle_userfault');
    uffd.wake(ev.address, PAGE_SIZE);
    expect((await touched).checksum).toBe(pageByte(1));
  });

  itWith(['minorShmem', 'threadId'], 'the raw UNREGISTER leaves a MINOR faulter asleep; unregister() also wakes it', async () => {
    const { uffd, guest } = setup(4);
    let finished = false;
    const touched = touchPages(guest, [2, 3]).finally(() => (finished = true));
    const [ev] = (await collect(uffd, 1)) as Pagefault[];
    await blockedInFault(ev);
    expect(native.uffdUnregister(uffd.fd, guest.address, guest.length)).toBe(0);
    // Nothing may wake it: it stays asleep in the fault for a while.
    await holdsFor(() => !finished && sleepingIn(ev.threadId) === 'handle_userfault', 100, 'the faulter asleep in handle_userfault');
    // Re-register and let the library's unregister (UNREGISTER + WAKE) do it.
    uffd.register(guest, { minor: true });
    uffd.unregister(guest);
    // The faulter retries as an ordinary fault, and so does its next page: no more messages.
    expect((await touched).checksum).toBe(pageByte(2) + pageByte(3));
    expect(uffd.readEvents()).toEqual([]);
  });

  itWith(['minorShmem', 'threadId'], 'close() wakes every blocked faulter, whose access then completes as an ordinary fault', async () => {
    const { uffd, guest } = setup(4);
    const a = touchPages(guest, [0]);
    const b = touchPages(guest, [3]);
    const events = (await collect(uffd, 2)) as Pagefault[];
    for (const ev of events) await blockedInFault(ev);
    uffd.close();
    const [ra, rb] = await Promise.all([a, b]);
    expect([ra.checksum, rb.checksum]).toEqual([pageByte(0), pageByte(3)]);
    expect(uffd.closed).toBe(true);
  });

  itWith(['minorShmem', 'threadId'], 'EEXIST wakes nobody: a raw CONTINUE on a mapped page leaves the faulter asleep, continue() wakes it', async () => {
    const { uffd, guest } = setup(4);
    let finished = false;
    const touched = touchPages(guest, [1]).finally(() => (finished = true));
    const [ev] = (await collect(uffd, 1)) as Pagefault[];
    await blockedInFault(ev);
    // Someone else mapped the page without waking (another handler, say).
    expect(uffd.continue(ev.address, PAGE_SIZE, { dontWake: true })).toBe(PAGE_SIZE);
    expect(native.uffdContinue(uffd.fd, ev.address, PAGE_SIZE, 0)).toBe(-17);
    // Nothing may wake it: it stays asleep in the fault for a while.
    await holdsFor(() => !finished && sleepingIn(ev.threadId) === 'handle_userfault', 100, 'the faulter asleep in handle_userfault');
    // The library treats EEXIST as "resolved, now wake".
    expect(uffd.continue(ev.address, PAGE_SIZE)).toBe(0);
    expect((await touched).checksum).toBe(pageByte(1));
  });
});

// Non-cooperative events (docs/kernel-behaviour.md, "Waking, closing, events"):
// REMOVE, UNMAP, REMAP, FORK, and EAGAIN while one is unread. The thread that
// changes the mm waits until its event is read, so every change is made by a
// worker thread with its own view while this thread reads the uffd; a fork is
// made by a child process, since a forking thread holds locks every thread of
// its process may need.
import { afterEach, describe, expect } from 'vitest';

import { spawn } from 'node:child_process';

import { FdSocket, FeatureName, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { native } from '../../lib/native';
import { distEntry, fixture, itWith, waitFor } from '../helpers';
import { Closer, MmWorker, Pagefault, filledMemfd, pageByte, serve, sleepingIn } from './support';

const closer = new Closer();
afterEach(() => closer.closeAll());

async function setup(features: FeatureName[], pages = 4, mappedPages = pages) {
  const mem = filledMemfd(closer, pages);
  const uffd = closer.add(Userfaultfd.open({ features: ['minorShmem', 'threadId', ...features] }));
  const w = new MmWorker(mem.fd);
  closer.add({ close: () => void w.close() });
  const view = await w.call('map', { length: mappedPages * PAGE_SIZE });
  uffd.register(view, { minor: true });
  return { mem, uffd, w, view };
}

describe('events', () => {
  itWith(['minorShmem', 'eventRemove'], 'MADV_DONTNEED: REMOVE; the page stays cached and the next touch is MINOR again', async () => {
    const { uffd, w, view } = await setup(['eventRemove']);
    const first = w.call('touch', { pages: [1] });
    expect((await serve(uffd, first)).length).toBe(1);
    const advised = w.call('advise', { advice: 'dontneed', offset: PAGE_SIZE, length: 2 * PAGE_SIZE });
    const events = await serve(uffd, advised);
    expect(events).toEqual([{ type: 'remove', start: view.address + PAGE_SIZE, end: view.address + 3 * PAGE_SIZE }]);
    const again = w.call('touch', { pages: [1] });
    const faults = (await serve(uffd, again)) as Pagefault[];
    expect(faults.map((e) => [e.type, e.address, e.minor])).toEqual([['pagefault', view.address + PAGE_SIZE, true]]);
    expect((await again).seen).toEqual([pageByte(1), pageByte(1)]);
  });

  itWith(['minorShmem', 'eventRemove'], 'MADV_REMOVE: REMOVE; the page is freed, so the next touch hits a hole (no fault, zeros)', async () => {
    const { mem, uffd, w, view } = await setup(['eventRemove']);
    const advised = w.call('advise', { advice: 'remove', offset: 2 * PAGE_SIZE, length: PAGE_SIZE });
    expect(await serve(uffd, advised)).toEqual([{ type: 'remove', start: view.address + 2 * PAGE_SIZE, end: view.address + 3 * PAGE_SIZE }]);
    expect(mem.read(2 * PAGE_SIZE, PAGE_SIZE)).toEqual(Buffer.alloc(PAGE_SIZE));
    const touched = w.call('touch', { pages: [2] });
    expect(await serve(uffd, touched)).toEqual([]);
    expect((await touched).seen).toEqual([0, 0]);
  });

  itWith(['minorShmem', 'eventRemove', 'threadId'], 'while a REMOVE is unread, CONTINUE answers EAGAIN; after reading it, CONTINUE works', async () => {
    const { uffd, w, view } = await setup(['eventRemove']);
    let advisedDone = false;
    const advised = w.call('advise', { advice: 'dontneed', offset: 0, length: PAGE_SIZE }).then(() => (advisedDone = true));
    await waitFor(() => sleepingIn(view.tid) === 'userfaultfd_event_wait_completion', 5000, 'the worker to wait on its REMOVE');
    expect(advisedDone).toBe(false);
    expect(() => uffd.continue(view.address + 3 * PAGE_SIZE, PAGE_SIZE)).toThrow(
      expect.objectContaining({ code: 'EAGAIN', errno: -11, bytesDone: 0, operation: 'UFFDIO_CONTINUE' }),
    );
    expect(uffd.readEvents()).toEqual([{ type: 'remove', start: view.address, end: view.address + PAGE_SIZE }]);
    await advised;
    expect(uffd.continue(view.address + 3 * PAGE_SIZE, PAGE_SIZE)).toBe(PAGE_SIZE);
  });

  itWith(['minorShmem', 'eventUnmap'], 'munmap: UNMAP, and the unmapped view is detached', async () => {
    const { uffd, w, view } = await setup(['eventUnmap']);
    const unmapped = w.call('unmap');
    expect(await serve(uffd, unmapped)).toEqual([{ type: 'unmap', start: view.address, end: view.address + view.length }]);
    expect((await unmapped).byteLength).toBe(0);
    // The range is gone: nothing registered there any more.
    expect(() => uffd.continue(view.address, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
  });

  itWith(['minorShmem', 'eventRemap', 'eventUnmap'], 'mremap that moves: REMAP (old address, new address, old length) then UNMAP; the registration follows', async () => {
    const { uffd, w, view } = await setup(['eventRemap', 'eventUnmap'], 8, 4);
    const remapped = w.call('remap', { length: 8 * PAGE_SIZE });
    const events = await serve(uffd, remapped);
    const moved = await remapped;
    expect(moved.oldByteLength).toBe(0);
    expect(moved.address).not.toBe(view.address);
    // REMAP carries the old length; the old range then gets its UNMAP.
    expect(events).toEqual([
      { type: 'remap', from: view.address, to: moved.address, length: view.length },
      { type: 'unmap', start: view.address, end: view.address + view.length },
    ]);
    // The new range is still registered with this uffd: touching it faults MINOR.
    const touched = w.call('touch', { pages: [5] });
    const faults = (await serve(uffd, touched)) as Pagefault[];
    expect(faults.map((e) => [e.address, e.minor])).toEqual([[moved.address + 5 * PAGE_SIZE, true]]);
    expect((await touched).seen).toEqual([pageByte(5), pageByte(5)]);
  });

  itWith(['minorShmem', 'eventFork'], "FORK: child_process.spawn in the registered process forks; the reader in another process gets the child's uffd", async () => {
    const mem = filledMemfd(closer, 4);
    const [mine, theirs] = FdSocket.pair();
    closer.add(mine);
    const child = spawn(process.execPath, [fixture('child-forker.js'), distEntry], { stdio: ['ignore', 'pipe', 'inherit', theirs.fd, mem.fd] });
    theirs.close();
    closer.add({ close: () => child.kill('SIGKILL') });
    let stdout = '';
    child.stdout!.on('data', (d) => (stdout += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    const hello = await mine.receive();
    const uffd = closer.add(Userfaultfd.fromFd(hello.fds[0]));
    expect(uffd.features).toEqual(['eventFork', 'minorShmem']);
    mine.send('go');
    const events = await serve(uffd, exited);
    // The forking thread waited for this event to be read; then the grandchild ran.
    expect(await exited).toBe(0);
    expect(JSON.parse(stdout)).toEqual({ status: 0, stdout: 'grandchild ran' });
    expect(events.map((e) => e.type)).toEqual(['fork']);
    const fork = events[0];
    if (fork.type !== 'fork') throw new Error('unreachable');
    closer.add(fork.uffd);
    expect(fork.uffd).toBeInstanceOf(Userfaultfd);
    expect(fork.uffd.fd).not.toBe(uffd.fd);
    // The new uffd is a handshaken userfaultfd with the parent's features.
    expect(fork.uffd.features).toEqual(uffd.features);
    expect(Userfaultfd.fromFd(native.dupFd(fork.uffd.fd)).features).toEqual(uffd.features);
  });

  itWith(['minorShmem', 'eventRemove', 'eventUnmap', 'eventRemap'], 'fallocate(PUNCH_HOLE) and ftruncate send no event', async () => {
    const { mem, uffd, w } = await setup(['eventRemove', 'eventUnmap', 'eventRemap']);
    const punched = w.call('punchHole', { offset: PAGE_SIZE, length: PAGE_SIZE });
    expect(await serve(uffd, punched)).toEqual([]);
    const truncated = w.call('truncate', { size: 2 * PAGE_SIZE });
    expect(await serve(uffd, truncated)).toEqual([]);
    expect(mem.size).toBe(2 * PAGE_SIZE);
    expect(mem.read(PAGE_SIZE, 1)[0]).toBe(0);
  });
});

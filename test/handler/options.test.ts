// One name per idea: names the API gave up are refused with a message naming
// the new one, and an option that does not apply to the chosen mode is an
// error, not silently ignored.
import { describe, expect, it } from 'vitest';

import { FaultHandler, Memfd, MigrationDestination, PAGE_SIZE, Userfaultfd } from '../../lib/index';
import { itWith } from '../helpers';
import { cleanupAfterEach } from './util';

const { open } = cleanupAfterEach();

function fixture() {
  const mem = Memfd.create(4 * PAGE_SIZE);
  const uffd = Userfaultfd.open({ features: ['threadId'] });
  open.push(mem, uffd);
  return { mem, uffd };
}

describe('renamed options are refused, naming the replacement', () => {
  it('FaultHandler readAhead → mapAhead, onLoopThreadFault → loopThreadFault, markPresent() → present.mark()', () => {
    const { mem, uffd } = fixture();
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch: () => {}, readAhead: 2 } as never))
      .toThrow(expect.objectContaining({ code: 'ERR_UFFD_RENAMED', message: 'options.readAhead was renamed: use options.mapAhead' }));
    expect(() => new FaultHandler(uffd, { memfd: mem, mode: 'native', fetch: () => {}, onLoopThreadFault: 'abort' } as never))
      .toThrow(expect.objectContaining({ code: 'ERR_UFFD_RENAMED', message: 'options.onLoopThreadFault was renamed: use options.loopThreadFault' }));
    const handler = new FaultHandler(uffd, { memfd: mem, fetch: () => {}, mapAhead: 2 });
    expect(() => handler.markPresent(0, PAGE_SIZE)).toThrow(expect.objectContaining({ code: 'ERR_UFFD_RENAMED', message: expect.stringContaining('handler.present.mark(offset, length)') }));
    // The replacement does what markPresent did.
    handler.present.mark(PAGE_SIZE, PAGE_SIZE);
    expect([handler.present.has(0), handler.present.has(1)]).toEqual([false, true]);
  });

  itWith(['minorShmem'], "an error policy answering 'zero-fill' stops the handler with the rename, not a silent wrong action", async () => {
    const { mem, uffd } = fixture();
    mem.write(0, Buffer.alloc(PAGE_SIZE, 1));
    const view = mem.map();
    open.push({ close: () => view.unmap() });
    const handler = new FaultHandler(uffd, { memfd: mem, fetch: () => { throw new Error('no'); }, onError: () => 'zero-fill' as never }).attach(view).start();
    const { touchPages } = await import('../../lib/index');
    const touched = touchPages(view, [0]);
    const error = await handler.finished;
    // The handler stops with the page's failure; the policy's mistake is its cause.
    expect((error as Error & { cause?: unknown }).cause).toMatchObject({ code: 'ERR_UFFD_RENAMED', message: "onError result 'zero-fill' was renamed: use 'zero'" });
    await touched;
  });

  it('MigrationDestination readahead → prefetch, refused before any connection is made', async () => {
    const { mem, uffd } = fixture();
    await expect(MigrationDestination.connect({ uffd, memfd: mem, views: [{ address: 0x40000000, length: PAGE_SIZE }], port: 1, readahead: 4 } as never))
      .rejects.toMatchObject({ code: 'ERR_UFFD_RENAMED', message: 'options.readahead was renamed: use options.prefetch' });
  });
});

describe('options that do not apply to the mode are errors', () => {
  const values = { loopThreadFault: 'map-as-is', onLoopThreadFaultMapped: () => {}, spinUs: 50, threads: 2 } as const;
  for (const name of ['loopThreadFault', 'onLoopThreadFaultMapped', 'spinUs', 'threads'] as const)
    it(`${name} in event-loop mode`, () => {
      const { mem, uffd } = fixture();
      const value = values[name];
      expect(() => new FaultHandler(uffd, { memfd: mem, fetch: () => {}, [name]: value }))
        .toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE', message: expect.stringContaining("applies to mode 'native' only") }));
      expect(() => new FaultHandler(uffd, { memfd: mem, fetch: () => {}, mode: 'native', [name]: value })).not.toThrow();
    });
});

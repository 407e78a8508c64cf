import { describe, expect, it } from 'vitest';

import { FaultHandler, Memfd, PAGE_SIZE, Userfaultfd, WorkingSetRecorder, touchPages } from '../../lib/index';
import { itWith, scaled, sleep } from '../helpers';
import { cleanupAfterEach, pageContent, rng, shuffled } from '../handler/util';

const { open, handlers } = cleanupAfterEach();

/** A memfd with a guest view served by a FaultHandler that records into `recorder`; fetch writes the deterministic content. */
function served(pages: number, recorder: WorkingSetRecorder, mode: 'event-loop' | 'native' = 'event-loop') {
  const mem = Memfd.create(pages * PAGE_SIZE, { name: 'wset-test' });
  open.push(mem);
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  open.push(uffd);
  const guest = mem.map();
  const handler = new FaultHandler(uffd, {
    memfd: mem, mode, workingSet: { record: recorder },
    fetch: (fault) => void mem.write(fault.offset, pageContent(fault.page)),
  });
  handlers.push(handler);
  handler.attach(guest, { missing: true }).start();
  return { mem, guest, handler };
}

function recorderFor(pages: number, rules: Partial<ConstructorParameters<typeof WorkingSetRecorder>[0]> = {}): WorkingSetRecorder {
  const r = new WorkingSetRecorder({ pageSize: PAGE_SIZE, memorySize: pages * PAGE_SIZE, ...rules });
  open.push(r);
  return r;
}

const within = <T>(promise: Promise<T>, ms: number, what: string): Promise<T> =>
  Promise.race([promise, sleep(scaled(ms)).then(() => { throw new Error(`${what} did not happen within ${ms} ms`); })]);

describe('WorkingSetRecorder on real faults', () => {
  for (const mode of ['event-loop', 'native'] as const)
  itWith(['minorShmem', 'missingShmem', 'threadId'], `records first touches in order with their write kind (${mode})`, async () => {
    const pages = 256;
    const recorder = recorderFor(pages);
    const { mem, guest, handler } = served(pages, recorder, mode);
    // Pages already present are mapped without any fault reaching the policy: never recorded.
    const present = [3, 4, 5];
    for (const p of present) mem.write(p * PAGE_SIZE, pageContent(p));
    handler.present.mark(3 * PAGE_SIZE, 3 * PAGE_SIZE);
    const order = shuffled(pages, rng(17));
    const reads = order.slice(0, 100);
    const writes = order.slice(100, 160);
    // One toucher at a time: each touch waits for its page, so first-touch order is the list's.
    await touchPages(guest, reads);
    await touchPages(guest, writes, { write: 0xab });
    await touchPages(guest, [...reads.slice(0, 20), ...present]);
    const set = recorder.workingSet();
    const expected = [...reads, ...writes].filter((p) => !present.includes(p));
    expect(set.entries.map((e) => e.page)).toEqual(expected);
    expect(set.entries.map((e) => e.write)).toEqual(expected.map((p) => writes.includes(p)));
    expect(set.entries.map((e) => e.rank)).toEqual(expected.map((_, i) => i));
    expect(set.entries.every((e) => e.region === 0)).toBe(true);
    for (let i = 1; i < set.entries.length; i++) expect(set.entries[i].timeUs).toBeGreaterThanOrEqual(set.entries[i - 1].timeUs);
    expect(set.entries.at(-1)!.timeUs).toBeGreaterThan(set.entries[0].timeUs);
    expect(recorder.recording).toBe(true);
    expect(handler.stats().fetched).toBe(expected.length);
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'maxFaults: stops after that many pages; the handler keeps serving', async () => {
    const pages = 64;
    const recorder = recorderFor(pages, { maxFaults: 10 });
    const { guest, handler } = served(pages, recorder);
    const order = shuffled(pages, rng(3));
    await touchPages(guest, order);
    expect(await within(recorder.done, 1000, 'done')).toBe('max-faults');
    expect(recorder.workingSet().entries.map((e) => e.page)).toEqual(order.slice(0, 10));
    expect(handler.stats().fetched).toBe(pages);
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'budgetMs: touches after the budget are not recorded', async () => {
    const pages = 64;
    const recorder = recorderFor(pages, { budgetMs: 800 });
    const { guest } = served(pages, recorder);
    const order = shuffled(pages, rng(4));
    await touchPages(guest, order.slice(0, 20));
    expect(await within(recorder.done, 3000, 'budget stop')).toBe('budget');
    await touchPages(guest, order.slice(20));
    expect(recorder.workingSet().entries.map((e) => e.page)).toEqual(order.slice(0, 20));
    expect(recorder.workingSet().entries.every((e) => e.timeUs < 800_000)).toBe(true);
  });

  itWith(['minorShmem', 'missingShmem', 'threadId'], 'settled: stops once the fault rate stays low, not before the first fault', async () => {
    const pages = 128;
    const recorder = recorderFor(pages, { settled: { rate: 10, forMs: 300 } });
    const { guest } = served(pages, recorder);
    // Longer than forMs without any fault: the guest has not started, it has not settled.
    await sleep(500);
    expect(recorder.recording).toBe(true);
    const order = shuffled(pages, rng(5));
    await touchPages(guest, order.slice(0, 64));
    expect(await within(recorder.done, 3000, 'settled stop')).toBe('settled');
    await touchPages(guest, order.slice(64));
    expect(recorder.size).toBe(64);
    const entries = recorder.workingSet().entries;
    expect(entries.map((e) => e.page)).toEqual(order.slice(0, 64));
    // Times count from the recorder's creation, the 500 ms of waiting included.
    expect(entries[0].timeUs).toBeGreaterThanOrEqual(500_000);
  });
});

describe('WorkingSetRecorder', () => {
  it('keeps the first touch of each page, grows past its first arrays, and checks its input', () => {
    const pages = 20_000;
    const recorder = recorderFor(pages);
    const order = shuffled(pages, rng(8));
    for (const p of order) expect(recorder.record(p, { write: p % 3 === 0 })).toBe(true);
    for (const p of order.slice(0, 100)) expect(recorder.record(p, { write: true })).toBe(false);
    const set = recorder.workingSet();
    expect(set.entries.map((e) => e.page)).toEqual(order);
    expect(set.entries.map((e) => e.write)).toEqual(order.map((p) => p % 3 === 0));
    expect(recorder.stopReason).toBe('full');
    expect(() => recorder.record(pages)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => recorder.record(1.5)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => recorder.record(0, { region: 1 })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => new WorkingSetRecorder({ pageSize: 4096, memorySize: 4095 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => new WorkingSetRecorder({ pageSize: 3000, memorySize: 6000 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => new WorkingSetRecorder({ pageSize: 4096, memorySize: 4096, settled: { rate: 0, forMs: 10 } })).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });

  it('done settles on stop, close and abort; close is idempotent and frees the recording', async () => {
    const a = recorderFor(8);
    a.record(1, { region: 0 });
    a.stop();
    a.stop();
    expect(await a.done).toBe('stopped');
    expect(a.record(2)).toBe(false);
    expect(a.workingSet().entries).toHaveLength(1);
    a.close();
    a.close();
    expect(() => a.workingSet()).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
    expect(a.record(3)).toBe(false);

    const b = recorderFor(8);
    b[Symbol.dispose]();
    expect(await b.done).toBe('closed');

    const controller = new AbortController();
    const c = new WorkingSetRecorder({ pageSize: 4096, memorySize: 8 * 4096, signal: controller.signal, budgetMs: 60_000 });
    open.push(c);
    controller.abort();
    expect(await c.done).toBe('stopped');
  });

  it('FaultHandler refuses a recorder of another page size or a smaller memory', () => {
    const mem = Memfd.create(8 * PAGE_SIZE);
    open.push(mem);
    const uffd = Userfaultfd.open();
    open.push(uffd);
    const fetch = () => {};
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch, workingSet: { record: recorderFor(4) } })).toThrow(/must cover/);
    const other = new WorkingSetRecorder({ pageSize: 2 * PAGE_SIZE, memorySize: 16 * PAGE_SIZE });
    open.push(other);
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch, workingSet: { record: other } })).toThrow(/page size/);
    expect(() => new FaultHandler(uffd, { memfd: mem, fetch, workingSet: { record: {} as WorkingSetRecorder } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});

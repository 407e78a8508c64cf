import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';

import { WorkingSet, crc32, decodeWorkingSet, encodeWorkingSet, pageRuns, readWorkingSet, writeWorkingSet } from '../../lib/index';

const dir = mkdtempSync(join(tmpdir(), 'uffd-wset-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const file = () => join(dir, `set-${n++}.wset`);

const sample: WorkingSet = {
  pageSize: 4096, memorySize: 64 * 4096, regions: 2, runs: 3,
  entries: [
    { page: 9, rank: 0, timeUs: 0, write: false, region: 0 },
    { page: 10, rank: 1, timeUs: 15, write: true, region: 0 },
    { page: 40, rank: 2, timeUs: 4_000_000, write: false, region: 1 },
  ],
};

/** A working set generator: distinct pages in a random first-touch order. */
const workingSets = fc.record({
  shift: fc.integer({ min: 9, max: 21 }),
  pages: fc.integer({ min: 1, max: 2048 }),
  regions: fc.integer({ min: 1, max: 4 }),
  runs: fc.integer({ min: 1, max: 10 }),
}).chain(({ shift, pages, regions, runs }) => fc.uniqueArray(fc.record({
  page: fc.integer({ min: 0, max: pages - 1 }), timeUs: fc.integer({ min: 0, max: 0xffffffff }), write: fc.boolean(), region: fc.integer({ min: 0, max: regions - 1 }),
}), { selector: (e) => e.page, maxLength: Math.min(pages, 300) }).map((list): WorkingSet => ({
  pageSize: 2 ** shift, memorySize: pages * 2 ** shift, regions, runs,
  entries: list.map((e, rank) => ({ ...e, rank })),
})));

/** Bytes with the checksum made right again after an edit, for the checks behind the checksum. */
function resealed(bytes: Buffer): Buffer {
  bytes.writeUInt32LE(crc32(bytes.subarray(40), crc32(bytes.subarray(0, 36))), 36);
  return bytes;
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as { code?: string }).code;
  }
  return undefined;
}

describe('working-set file format', () => {
  it('round-trips any working set through its file', () => {
    fc.assert(fc.property(workingSets, (set) => {
      const path = file();
      writeWorkingSet(path, set);
      expect(readWorkingSet(path)).toEqual(set);
      rmSync(path);
    }), { numRuns: 60, seed: 20261130 });
  });

  it('lays the header and entries out as docs/working-set.md says', () => {
    const b = encodeWorkingSet(sample);
    expect(b.length).toBe(40 + 3 * 12);
    expect(b.subarray(0, 8).toString('latin1')).toBe('UFFDWSET');
    expect(b.readUInt16LE(8)).toBe(1);
    expect(b.readUInt16LE(10)).toBe(0);
    expect(b.readUInt32LE(12)).toBe(4096);
    expect(b.readBigUInt64LE(16)).toBe(64n * 4096n);
    expect(b.readUInt32LE(24)).toBe(3);
    expect(b.readUInt32LE(28)).toBe(2);
    expect(b.readUInt32LE(32)).toBe(3);
    expect(b.readUInt32LE(36)).toBe(crc32(b.subarray(40), crc32(b.subarray(0, 36))));
    // Second entry: page 10, 15 µs, region 0, write flag.
    expect([b.readUInt32LE(52), b.readUInt32LE(56), b.readUInt16LE(60), b.readUInt16LE(62)]).toEqual([10, 15, 0, 1]);
    expect([b.readUInt32LE(64), b.readUInt32LE(68), b.readUInt16LE(72), b.readUInt16LE(74)]).toEqual([40, 4_000_000, 1, 0]);
  });

  it('writes entries in rank order whatever the array order, and clamps times to 32 bits', () => {
    const set = { ...sample, entries: [sample.entries[2], sample.entries[0], { ...sample.entries[1], timeUs: 2 ** 40 }] };
    const back = decodeWorkingSet(encodeWorkingSet(set));
    expect(back.entries.map((e) => e.page)).toEqual([9, 10, 40]);
    expect(back.entries[1].timeUs).toBe(0xffffffff);
  });

  it('gives a distinct typed error for each kind of damage', () => {
    const good = encodeWorkingSet(sample);
    const cases: [string, Buffer, string][] = [
      ['empty file', Buffer.alloc(0), 'ERR_WORKING_SET_TRUNCATED'],
      ['half a magic', good.subarray(0, 5), 'ERR_WORKING_SET_TRUNCATED'],
      ['another format', Buffer.from('PK\x03\x04 a zip file, not a working set'), 'ERR_WORKING_SET_MAGIC'],
      ['a future version', (() => { const b = Buffer.from(good); b.writeUInt16LE(2, 8); return b; })(), 'ERR_WORKING_SET_VERSION'],
      ['version 0', (() => { const b = Buffer.from(good); b.writeUInt16LE(0, 8); return b; })(), 'ERR_WORKING_SET_VERSION'],
      ['a cut header', good.subarray(0, 30), 'ERR_WORKING_SET_TRUNCATED'],
      ['a cut entry', good.subarray(0, good.length - 5), 'ERR_WORKING_SET_TRUNCATED'],
      ['a missing entry', good.subarray(0, good.length - 12), 'ERR_WORKING_SET_TRUNCATED'],
      ['bytes after the entries', Buffer.concat([good, Buffer.alloc(12)]), 'ERR_WORKING_SET_CORRUPT'],
      ['a flipped entry byte', (() => { const b = Buffer.from(good); b[50] ^= 1; return b; })(), 'ERR_WORKING_SET_CHECKSUM'],
      ['a changed page size', (() => { const b = Buffer.from(good); b.writeUInt32LE(8192, 12); return b; })(), 'ERR_WORKING_SET_CHECKSUM'],
      ['a changed checksum', (() => { const b = Buffer.from(good); b[36] ^= 0x80; return b; })(), 'ERR_WORKING_SET_CHECKSUM'],
      ['a page twice, resealed', (() => { const b = Buffer.from(good); b.writeUInt32LE(9, 52); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
      ['a page past memory, resealed', (() => { const b = Buffer.from(good); b.writeUInt32LE(64, 52); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
      ['an unknown region, resealed', (() => { const b = Buffer.from(good); b.writeUInt16LE(2, 60); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
      ['unknown flags, resealed', (() => { const b = Buffer.from(good); b.writeUInt16LE(6, 62); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
      ['page size not a power of two, resealed', (() => { const b = Buffer.from(good); b.writeUInt32LE(3000, 12); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
      ['zero runs, resealed', (() => { const b = Buffer.from(good); b.writeUInt32LE(0, 32); return resealed(b); })(), 'ERR_WORKING_SET_CORRUPT'],
    ];
    for (const [what, bytes, code] of cases) {
      const path = file();
      writeFileSync(path, bytes);
      let error: (Error & { code?: string; path?: string }) | undefined;
      try {
        readWorkingSet(path);
      } catch (err) {
        error = err as Error;
      }
      expect(error?.code, what).toBe(code);
      expect(error?.path, what).toBe(path);
      expect(error?.message, what).toContain(path);
    }
  });

  it('names a missing file, an unreadable one, and a missing directory on write', () => {
    const missing = join(dir, 'nope.wset');
    expect(codeOf(() => readWorkingSet(missing))).toBe('ERR_WORKING_SET_NOT_FOUND');
    let err: { errno?: number; syscall?: string } = {};
    try {
      readWorkingSet(missing);
    } catch (e) {
      err = e as typeof err;
    }
    expect(err).toMatchObject({ errno: -2, syscall: 'open' });
    expect(codeOf(() => readWorkingSet(dir))).toBe('ERR_WORKING_SET_READ');
    expect(() => writeWorkingSet(join(dir, 'no-such-dir', 'x.wset'), sample)).toThrow(expect.objectContaining({ code: 'ERR_WORKING_SET_NO_DIR', message: expect.stringContaining('no-such-dir') }));
    const occupied = join(dir, 'a-directory');
    mkdirSync(occupied);
    expect(codeOf(() => writeWorkingSet(occupied, sample))).toBe('ERR_WORKING_SET_WRITE');
    expect(codeOf(() => readWorkingSet(''))).toBe('ERR_INVALID_ARG_VALUE');
  });

  it('replaces a file atomically and leaves no temporary file behind', () => {
    const path = file();
    writeWorkingSet(path, sample);
    const bigger = { ...sample, entries: [...sample.entries, { page: 3, rank: 3, timeUs: 99, write: true, region: 1 }] };
    writeWorkingSet(path, bigger);
    expect(readWorkingSet(path).entries).toHaveLength(4);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // A failed write leaves the old file as it was.
    expect(() => writeWorkingSet(path, { ...sample, entries: [sample.entries[0], sample.entries[0]] })).toThrow(/appears twice/);
    expect(readFileSync(path)).toEqual(encodeWorkingSet(bigger));
  });

  it('refuses a set it cannot write, with the field named', () => {
    expect(codeOf(() => encodeWorkingSet({ ...sample, pageSize: 3000 }))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => encodeWorkingSet({ ...sample, memorySize: 4097 }))).toBe('ERR_INVALID_ARG_VALUE');
    expect(codeOf(() => encodeWorkingSet({ ...sample, entries: [{ ...sample.entries[0], page: 64 }] }))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => encodeWorkingSet({ ...sample, entries: [{ ...sample.entries[0], region: 2 }] }))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => encodeWorkingSet({ ...sample, entries: [{ ...sample.entries[0], timeUs: -1 }] }))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => encodeWorkingSet(null as unknown as WorkingSet))).toBe('ERR_INVALID_ARG_TYPE');
  });
});

describe('pageRuns', () => {
  it('splits pages into contiguous runs in the order given', () => {
    expect(pageRuns([])).toEqual([]);
    expect(pageRuns([5, 6, 7, 2, 3, 9, 8])).toEqual([{ first: 5, count: 3 }, { first: 2, count: 2 }, { first: 9, count: 1 }, { first: 8, count: 1 }]);
    fc.assert(fc.property(fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 100 }), (pages) => {
      const runs = pageRuns(pages);
      expect(runs.flatMap((r) => Array.from({ length: r.count }, (_, i) => r.first + i))).toEqual(pages);
      for (let i = 1; i < runs.length; i++) expect(runs[i].first).not.toBe(runs[i - 1].first + runs[i - 1].count);
    }), { numRuns: 200, seed: 7 });
  });
});

// The working-set file: which pages a restored guest touched first, in the
// order it touched them. Binary, little-endian, versioned, with a CRC-32 over
// everything but the CRC field; docs/working-set.md describes it byte by
// byte. Written atomically (a temporary file renamed over the target).
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

import { crc32 } from '../crc32';
import { argValueError, fileError } from '../errors';
import * as v from '../validate';

/** One page of a working set. */
export interface WorkingSetEntry {
  /** Page index in the memory image (byte offset / `pageSize`). */
  page: number;
  /** Position in first-touch order, from 0. */
  rank: number;
  /** Microseconds from the start of recording to the first touch. */
  timeUs: number;
  /** The first touch was a write. */
  write: boolean;
  /** Index of the memory region the page belongs to (0 when the server has one). */
  region: number;
}

/** The pages a guest touched first, in the order it touched them. */
export interface WorkingSet {
  /** Bytes per page (the granularity of `page`). */
  pageSize: number;
  /** Bytes of the memory image the pages index. */
  memorySize: number;
  /** Memory regions of the recorded guest (every entry's `region` is below it). */
  regions: number;
  /** First-touch order, `rank` ascending. */
  entries: WorkingSetEntry[];
  /** Recordings this set was made from: 1 for a recording, more for a merge. Default 1. */
  runs?: number;
}

/** File signature: the first 8 bytes of every working-set file. */
export const WORKING_SET_MAGIC = 'UFFDWSET';
/** The format version this library writes; it reads this one only. */
export const WORKING_SET_VERSION = 1;
/** Bytes of the header; entries follow it. */
export const WORKING_SET_HEADER = 40;
/** Bytes of one entry. */
export const WORKING_SET_ENTRY = 12;
/** Header offset of the CRC-32; the CRC covers bytes [0, 36) and every entry. */
const CRC_AT = 36;
const FLAG_WRITE = 1;
const MAX_U32 = 0xffffffff;

const magic = Buffer.from(WORKING_SET_MAGIC, 'latin1');

/** Encodes a working set as the bytes of its file. */
export function encodeWorkingSet(set: WorkingSet): Buffer {
  const s = v.options<WorkingSet>('set', set);
  const pageSize = v.integer('set.pageSize', s.pageSize, 1, 2 ** 30);
  if ((pageSize & (pageSize - 1)) !== 0) throw argValueError('set.pageSize', 'must be a power of two', pageSize);
  const memorySize = v.aligned('set.memorySize', v.integer('set.memorySize', s.memorySize), pageSize);
  const pageCount = memorySize / pageSize;
  const regions = v.integer('set.regions', s.regions ?? 1, 1, 0xffff);
  const runs = v.integer('set.runs', s.runs ?? 1, 1, MAX_U32);
  if (!Array.isArray(s.entries)) throw argValueError('set.entries', 'must be an array', s.entries);
  const entries = s.entries.every((e, i) => i === 0 || e.rank > s.entries![i - 1].rank)
    ? s.entries
    : [...s.entries].sort((a, b) => a.rank - b.rank);
  v.integer('set.entries.length', entries.length, 0, Math.min(pageCount, MAX_U32));
  const out = Buffer.alloc(WORKING_SET_HEADER + entries.length * WORKING_SET_ENTRY);
  magic.copy(out, 0);
  out.writeUInt16LE(WORKING_SET_VERSION, 8);
  out.writeUInt16LE(0, 10);
  out.writeUInt32LE(pageSize, 12);
  out.writeBigUInt64LE(BigInt(memorySize), 16);
  out.writeUInt32LE(entries.length, 24);
  out.writeUInt32LE(regions, 28);
  out.writeUInt32LE(runs, 32);
  const seen = new Set<number>();
  let at = WORKING_SET_HEADER;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i];
    const page = v.integer(`set.entries[${i}].page`, e.page, 0, Math.min(pageCount - 1, MAX_U32));
    if (seen.has(page)) throw argValueError(`set.entries[${i}].page`, 'appears twice (a working set lists each page once)', page);
    seen.add(page);
    const region = v.integer(`set.entries[${i}].region`, e.region ?? 0, 0, regions - 1);
    const timeUs = Math.min(MAX_U32, v.integer(`set.entries[${i}].timeUs`, Math.round(e.timeUs ?? 0)));
    out.writeUInt32LE(page, at);
    out.writeUInt32LE(timeUs, at + 4);
    out.writeUInt16LE(region, at + 8);
    out.writeUInt16LE(v.boolean(`set.entries[${i}].write`, e.write, false) ? FLAG_WRITE : 0, at + 10);
    at += WORKING_SET_ENTRY;
  }
  out.writeUInt32LE(checksum(out), CRC_AT);
  return out;
}

function checksum(bytes: Buffer): number {
  return crc32(bytes.subarray(WORKING_SET_HEADER), crc32(bytes.subarray(0, CRC_AT)));
}

/**
 * Decodes the bytes of a working-set file. `path` only names the file in
 * errors. Throws ERR_WORKING_SET_MAGIC (not a working-set file),
 * ERR_WORKING_SET_VERSION (a version this library does not read),
 * ERR_WORKING_SET_TRUNCATED (shorter than its header says),
 * ERR_WORKING_SET_CHECKSUM (bytes changed) or ERR_WORKING_SET_CORRUPT
 * (longer than its header says, or values that cannot be).
 */
export function decodeWorkingSet(bytes: Uint8Array, path = '<buffer>'): WorkingSet {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const head = b.subarray(0, magic.length);
  if (!head.equals(magic.subarray(0, head.length)))
    throw fileError('ERR_WORKING_SET_MAGIC', `${path} is not a working-set file (it does not start with "${WORKING_SET_MAGIC}")`, path);
  if (b.length < 10) throw fileError('ERR_WORKING_SET_TRUNCATED', `${path} is truncated: ${b.length} bytes, the header alone is ${WORKING_SET_HEADER}`, path);
  const version = b.readUInt16LE(8);
  if (version !== WORKING_SET_VERSION)
    throw fileError('ERR_WORKING_SET_VERSION', `${path} is a version ${version} working-set file; this library reads version ${WORKING_SET_VERSION}${version > WORKING_SET_VERSION ? ' (upgrade it to read this file)' : ''}`, path);
  if (b.length < WORKING_SET_HEADER) throw fileError('ERR_WORKING_SET_TRUNCATED', `${path} is truncated: ${b.length} bytes, the header alone is ${WORKING_SET_HEADER}`, path);
  const count = b.readUInt32LE(24);
  const expected = WORKING_SET_HEADER + count * WORKING_SET_ENTRY;
  if (b.length < expected) throw fileError('ERR_WORKING_SET_TRUNCATED', `${path} is truncated: ${b.length} bytes, its ${count} entries need ${expected}`, path);
  if (b.length > expected) throw fileError('ERR_WORKING_SET_CORRUPT', `${path} is corrupt: ${b.length - expected} bytes after its ${count} entries`, path);
  const stored = b.readUInt32LE(CRC_AT);
  const actual = checksum(b);
  if (stored !== actual)
    throw fileError('ERR_WORKING_SET_CHECKSUM', `${path} fails its checksum (stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)}): the file was changed or damaged`, path);
  // Past the checksum the bytes are as written: what fails below was written wrong.
  const corrupt = (what: string) => fileError('ERR_WORKING_SET_CORRUPT', `${path} is corrupt: ${what}`, path);
  if (b.readUInt16LE(10) !== 0) throw corrupt(`reserved header bytes 10-11 are 0x${b.readUInt16LE(10).toString(16)}, not 0`);
  const pageSize = b.readUInt32LE(12);
  if (pageSize === 0 || (pageSize & (pageSize - 1)) !== 0 || pageSize > 2 ** 30) throw corrupt(`page size ${pageSize} is not a power of two up to 1 GiB`);
  const memory = b.readBigUInt64LE(16);
  if (memory > BigInt(Number.MAX_SAFE_INTEGER) || memory % BigInt(pageSize) !== 0n) throw corrupt(`memory size ${memory} is not a multiple of the page size ${pageSize} below 2^53`);
  const memorySize = Number(memory);
  const pageCount = memorySize / pageSize;
  if (count > pageCount) throw corrupt(`${count} entries for ${pageCount} pages`);
  const regions = b.readUInt32LE(28);
  if (regions === 0 || regions > 0xffff) throw corrupt(`region count ${regions} is not within 1..65535`);
  const runs = b.readUInt32LE(32);
  if (runs === 0) throw corrupt('run count 0');
  const seen = new Set<number>();
  const entries: WorkingSetEntry[] = new Array(count);
  let at = WORKING_SET_HEADER;
  for (let rank = 0; rank < count; rank++) {
    const page = b.readUInt32LE(at);
    const region = b.readUInt16LE(at + 8);
    const flags = b.readUInt16LE(at + 10);
    if (page >= pageCount) throw corrupt(`entry ${rank}: page ${page} is past the ${pageCount} pages of memory`);
    if (seen.has(page)) throw corrupt(`entry ${rank}: page ${page} appears twice`);
    seen.add(page);
    if (region >= regions) throw corrupt(`entry ${rank}: region ${region}, the file has ${regions}`);
    if (flags & ~FLAG_WRITE) throw corrupt(`entry ${rank}: unknown flags 0x${flags.toString(16)}`);
    entries[rank] = { page, rank, timeUs: b.readUInt32LE(at + 4), write: (flags & FLAG_WRITE) !== 0, region };
    at += WORKING_SET_ENTRY;
  }
  return { pageSize, memorySize, regions, runs, entries };
}

/**
 * Reads a working-set file. Besides the errors of {@link decodeWorkingSet}:
 * ERR_WORKING_SET_NOT_FOUND when the file does not exist, and
 * ERR_WORKING_SET_READ when it cannot be read (the system error is `cause`).
 */
export function readWorkingSet(file: string): WorkingSet {
  const path = v.nonEmptyString('file', file);
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw fileError('ERR_WORKING_SET_NOT_FOUND', `working-set file ${path} does not exist`, path, err);
    throw fileError('ERR_WORKING_SET_READ', `cannot read working-set file ${path}: ${(err as Error).message}`, path, err);
  }
  return decodeWorkingSet(bytes, path);
}

/**
 * Writes a working-set file atomically: to a temporary file in the same
 * directory, flushed, then renamed over `file`, so a reader sees the old file
 * or the new one, never part of one. ERR_WORKING_SET_NO_DIR when the
 * directory does not exist, ERR_WORKING_SET_WRITE for any other failure.
 */
export function writeWorkingSet(file: string, set: WorkingSet): void {
  const path = v.nonEmptyString('file', file);
  const bytes = encodeWorkingSet(set);
  const tmp = join(dirname(path), `.${basename(path)}.${process.pid}.${Date.now().toString(36)}.tmp`);
  let fd = -1;
  try {
    fd = openSync(tmp, 'wx', 0o644);
    for (let done = 0; done < bytes.length;) done += writeSync(fd, bytes, done, bytes.length - done);
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (err) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // Never created, or already renamed.
    }
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw fileError('ERR_WORKING_SET_NO_DIR', `cannot write working-set file ${path}: directory ${dirname(path)} does not exist`, path, err);
    throw fileError('ERR_WORKING_SET_WRITE', `cannot write working-set file ${path}: ${(err as Error).message}`, path, err);
  }
}

/** Contiguous runs of `pages`, in the order given: [5, 6, 7, 2, 3] gives {5, 3} then {2, 2}. */
export function pageRuns(pages: readonly number[]): { first: number; count: number }[] {
  const runs: { first: number; count: number }[] = [];
  let i = 0;
  while (i < pages.length) {
    let j = i + 1;
    while (j < pages.length && pages[j] === pages[j - 1] + 1) j++;
    runs.push({ first: pages[i], count: j - i });
    i = j;
  }
  return runs;
}

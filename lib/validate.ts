// Every public argument is checked here, before any syscall, so that bad
// input gets a TypeError/RangeError with Node's codes instead of reaching the
// kernel (or native code) with a meaningless value.
import { argRangeError, argTypeError, argValueError, renamedError } from './errors';

const MAX_SAFE = Number.MAX_SAFE_INTEGER;

/** A user-space address: a safe non-negative integer number, or a bigint in that range. */
export function address(name: string, value: unknown): number {
  if (typeof value === 'bigint') {
    if (value < 0n || value > BigInt(MAX_SAFE)) throw argRangeError(name, `>= 0 and <= ${MAX_SAFE}`, value);
    return Number(value);
  }
  if (typeof value !== 'number') throw argTypeError(name, 'of type number or bigint', value);
  if (!Number.isSafeInteger(value) || value < 0) throw argRangeError(name, 'a non-negative safe integer', value);
  return value;
}

/** A byte count or offset: a number only (a bigint here is almost always a mix-up). */
export function integer(name: string, value: unknown, min = 0, max = MAX_SAFE): number {
  if (typeof value !== 'number') throw argTypeError(name, 'of type number', value);
  if (!Number.isSafeInteger(value) || value < min || value > max)
    throw argRangeError(name, `an integer >= ${min} and <= ${max}`, value);
  return value;
}

/** A finite number in [min, max] (rates, shares). */
export function number(name: string, value: unknown, min = -Infinity, max = Infinity): number {
  if (typeof value !== 'number') throw argTypeError(name, 'of type number', value);
  if (!Number.isFinite(value) || value < min || value > max) throw argRangeError(name, `a finite number >= ${min} and <= ${max}`, value);
  return value;
}

export function aligned(name: string, value: number, alignment: number): number {
  if (value % alignment !== 0) throw argValueError(name, `must be a multiple of the page size (${alignment})`, value);
  return value;
}

/** A positive, page-aligned length. */
export function pageLength(name: string, value: unknown, pageSize: number): number {
  return aligned(name, integer(name, value, 1), pageSize);
}

export function pageAddress(name: string, value: unknown, pageSize: number): number {
  return aligned(name, address(name, value), pageSize);
}

export function boolean(name: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw argTypeError(name, 'of type boolean', value);
  return value;
}

export function options<T extends object>(name: string, value: unknown): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw argTypeError(name, 'an object', value);
  return value as Partial<T>;
}

/** Refuses options under names the API no longer uses, naming the new one. */
export function renamed(name: string, opts: object, names: Record<string, string>): void {
  for (const [old, replacement] of Object.entries(names))
    if (Object.prototype.hasOwnProperty.call(opts, old)) throw renamedError(`${name}.${old}`, `${name}.${replacement}`);
}

export function oneOf<T extends string>(name: string, value: unknown, allowed: readonly T[], fallback: T): T {
  if (value === undefined) return fallback;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value))
    throw argValueError(name, `must be one of ${allowed.map((a) => `'${a}'`).join(', ')}`, value);
  return value as T;
}

export function fd(name: string, value: unknown): number {
  return integer(name, value, 0, 0x7fffffff);
}

export function bytes(name: string, value: unknown): Uint8Array {
  if (!ArrayBuffer.isView(value)) throw argTypeError(name, 'a Buffer, TypedArray or DataView', value);
  return value instanceof Uint8Array ? value : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

export function func(name: string, value: unknown): (...args: never[]) => unknown {
  if (typeof value !== 'function') throw argTypeError(name, 'of type function', value);
  return value as (...args: never[]) => unknown;
}

/** Anything with an address and a length, such as a Mapping. */
export interface Range {
  readonly address: number | bigint;
  readonly length: number;
}

export function range(name: string, value: unknown, pageSize: number): { address: number; length: number } {
  if (value === null || typeof value !== 'object') throw argTypeError(name, 'a Mapping or { address, length }', value);
  const r = value as Partial<Range>;
  const start = pageAddress(`${name}.address`, r.address, pageSize);
  const length = pageLength(`${name}.length`, r.length, pageSize);
  if (start + length > MAX_SAFE) throw argRangeError(`${name}.length`, 'such that the range ends below 2^53', length);
  return { address: start, length };
}

/** A non-empty string without NUL bytes (paths, names). */
export function nonEmptyString(name: string, value: unknown): string {
  if (typeof value !== 'string') throw argTypeError(name, 'of type string', value);
  if (value.length === 0 || value.includes('\0')) throw argValueError(name, 'must be a non-empty string without NUL bytes', value);
  return value;
}

/** An instance of `type` (checked with instanceof). */
export function instance<T>(name: string, value: unknown, type: abstract new (...args: never[]) => T, expected: string): T {
  if (!(value instanceof type)) throw argTypeError(name, expected, value);
  return value;
}

/** An array of at most `max` file descriptors. */
export function fdList(name: string, value: unknown, max: number): number[] {
  if (!Array.isArray(value)) throw argTypeError(name, `an array of at most ${max} file descriptors`, value);
  if (value.length > max) throw argRangeError(`${name}.length`, `<= ${max}`, value.length);
  return value.map((item, i) => fd(`${name}[${i}]`, item));
}

/** A list of page indexes below `pageCount`, as the native toucher takes them. */
export function pageIndexes(name: string, value: unknown, pageCount: number): Uint32Array {
  if (value === null || typeof value !== 'object' || typeof (value as ArrayLike<number>).length !== 'number')
    throw argTypeError(name, 'an array of page indexes', value);
  const length = (value as ArrayLike<number>).length;
  // A list longer than the mapping many times over is a mistake, not a workload.
  integer(`${name}.length`, length, 0, Math.max(pageCount, 1) * 64);
  return Uint32Array.from(value as ArrayLike<number>, (p, i) => integer(`${name}[${i}]`, p, 0, pageCount - 1));
}

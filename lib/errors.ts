// Every error the library throws is built here, in Node's style: a `code`
// ('EEXIST', 'ERR_INVALID_ARG_TYPE', ...), and for syscall failures `errno`,
// `syscall`, the userfaultfd `operation`, and the range involved.
import { constants as osConstants } from 'node:os';
import { getSystemErrorMap, getSystemErrorName } from 'node:util';

const errnoText: Record<string, string> = {
  EEXIST: 'already present (the fault is resolved; faulters in the range must still be woken)',
  ENOENT: 'range is not inside one registered VMA',
  EFAULT: 'no page in the page cache at that offset (hole or punched), or bad address',
  EINVAL: 'invalid argument (alignment, mode, beyond end of file, or not supported here)',
  EAGAIN: 'interrupted: a non-cooperative event is unread, or only part of the range was done',
  ESRCH: 'the registered process has exited',
  EBUSY: 'range is registered with another userfaultfd, or in use',
  EPERM: 'not permitted (see vm.unprivileged_userfaultfd, CAP_SYS_PTRACE, /dev/userfaultfd permissions)',
  EACCES: 'permission denied',
  ENOMEM: 'out of memory or address not mapped',
  ENOSPC: 'no space (hugetlb pages not reserved?)',
  EBADF: 'bad file descriptor',
  ENOSYS: 'not implemented by this kernel',
  ENOTTY: 'ioctl not supported on this descriptor',
};

/** Details attached to a syscall error. */
export interface SyscallErrorDetails {
  /** The userfaultfd operation, e.g. `UFFDIO_CONTINUE`. */
  operation?: string;
  address?: number;
  length?: number;
  /** Bytes the kernel completed before failing (partial progress). */
  bytesDone?: number;
  path?: string;
  fd?: number;
  /** Free text appended to the message. */
  hint?: string;
}

/** A failed system call, shaped like Node's own system errors. */
export class UffdError extends Error {
  /** Error name, e.g. `EEXIST`. */
  readonly code: string;
  /** Negative errno, as in Node's system errors. */
  readonly errno: number;
  readonly syscall: string;
  readonly operation?: string;
  readonly address?: number;
  readonly length?: number;
  readonly bytesDone?: number;
  readonly path?: string;
  readonly fd?: number;

  constructor(result: number, syscall: string, details: SyscallErrorDetails = {}) {
    const errno = result < 0 ? result : -result;
    const code = safeErrorName(errno);
    const what = details.operation ? `${syscall} ${details.operation}` : syscall;
    const parts: string[] = [];
    if (details.address !== undefined) parts.push(`address 0x${details.address.toString(16)}`);
    if (details.length !== undefined) parts.push(`length ${details.length}`);
    if (details.bytesDone) parts.push(`${details.bytesDone} bytes done`);
    if (details.path !== undefined) parts.push(`path ${details.path}`);
    const where = parts.length ? ` (${parts.join(', ')})` : '';
    const hint = details.hint ? `: ${details.hint}` : '';
    // The userfaultfd-specific explanations only fit the uffd ioctls; any other
    // syscall (connect, bind, fstat...) gets the C library's own wording.
    const uffdCall = details.operation?.startsWith('UFFDIO') === true;
    const text = (uffdCall ? errnoText[code] : undefined) ?? systemMessage(errno) ?? errnoText[code] ?? 'system error';
    super(`${code}: ${text}, ${what}${where}${hint}`);
    this.name = 'UffdError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
    Object.assign(this, details);
    delete (this as { hint?: string }).hint;
  }
}

function systemMessage(errno: number): string | undefined {
  return getSystemErrorMap().get(errno)?.[1];
}

function safeErrorName(errno: number): string {
  try {
    return getSystemErrorName(errno);
  } catch {
    return `E${-errno}`;
  }
}

/** Throws a UffdError when `result` is a negative errno; returns it otherwise. */
export function check(result: number, syscall: string, details?: SyscallErrorDetails): number {
  if (result < 0) throw new UffdError(result, syscall, details);
  return result;
}

/** Throws when a native call returned -errno instead of its compound result. */
export function checkValue<T>(result: number | T, syscall: string, details?: SyscallErrorDetails): T {
  if (typeof result === 'number') {
    check(result, syscall, details);
    throw new UffdError(-osConstants.errno.EIO, syscall, details);
  }
  return result;
}

type ErrorCtor = new (message: string) => Error;

function coded<E extends Error>(Base: ErrorCtor, code: string, message: string): E {
  const err = new Base(`${message}`) as E & { code: string };
  err.code = code;
  return err;
}

export const argTypeError = (name: string, expected: string, actual: unknown): TypeError =>
  coded(TypeError, 'ERR_INVALID_ARG_TYPE', `The "${name}" argument must be ${expected}. Received ${describe(actual)}`);

export const argRangeError = (name: string, rule: string, actual: unknown): RangeError =>
  coded(RangeError, 'ERR_OUT_OF_RANGE', `The value of "${name}" is out of range. It must be ${rule}. Received ${describe(actual)}`);

export const argValueError = (name: string, reason: string, actual: unknown): TypeError =>
  coded(TypeError, 'ERR_INVALID_ARG_VALUE', `The argument '${name}' ${reason}. Received ${describe(actual)}`);

/** A name the API no longer accepts: says which one replaced it (the package is 0.x; see the CHANGELOG). */
export const renamedError = (old: string, replacement: string): TypeError =>
  coded(TypeError, 'ERR_UFFD_RENAMED', `${old} was renamed: use ${replacement}`);

export const closedError = (what: string): Error =>
  coded(Error, 'ERR_UFFD_CLOSED', `${what} is closed`);

export const stateError = (code: string, message: string): Error => coded(Error, code, message);

/**
 * The call would block this thread in the kernel until a userfaultfd event is
 * read, and the only reader of that event is this same thread.
 */
export const deadlockError = (message: string): Error => coded(Error, 'ERR_UFFD_WOULD_DEADLOCK', message);

function describe(value: unknown): string {
  if (typeof value === 'bigint') return `type bigint (${value}n)`;
  if (typeof value === 'number') return Number.isInteger(value) && Math.abs(value) > 0xffff ? `0x${value.toString(16)}` : `${value}`;
  if (typeof value === 'string') return `type string ('${value.length > 40 ? value.slice(0, 40) + '…' : value}')`;
  if (value === null) return 'null';
  if (typeof value === 'function') return `function ${value.name || '<anonymous>'}`;
  if (typeof value === 'object') return `an instance of ${value.constructor?.name ?? 'Object'}`;
  return `type ${typeof value} (${String(value)})`;
}

/**
 * The error a FaultHandler stops with when a fetch failed and the policy said
 * stop: names the page and keeps the policy's own error as `cause`.
 */
export function fetchError(cause: unknown, page: number, offset: number, address: number): Error {
  const reason = cause instanceof Error ? cause.message : String(cause);
  const err = coded<Error & { cause?: unknown; page?: number; offset?: number; address?: number }>(Error, 'ERR_UFFD_FETCH_FAILED',
    `fetch of memfd page ${page} (offset ${offset}, faulting address 0x${address.toString(16)}) failed: ${reason}`);
  err.cause = cause;
  err.page = page;
  err.offset = offset;
  err.address = address;
  return err;
}

/**
 * A file the library reads or writes is missing, unreadable or malformed:
 * `code` says which (e.g. `ERR_WORKING_SET_CHECKSUM`), `path` names the file,
 * and a failed system call's `errno`, `syscall` and error stay on it (`cause`).
 */
export function fileError(code: string, message: string, path: string, cause?: unknown): Error & { path: string } {
  const err = coded<Error & { path: string; errno?: number; syscall?: string; cause?: unknown }>(Error, code, message);
  err.path = path;
  if (cause !== undefined) {
    err.cause = cause;
    const sys = cause as { errno?: unknown; syscall?: unknown };
    if (typeof sys.errno === 'number') err.errno = sys.errno;
    if (typeof sys.syscall === 'string') err.syscall = sys.syscall;
  }
  return err;
}

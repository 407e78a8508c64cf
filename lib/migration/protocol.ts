// The migration wire protocol: length-prefixed binary frames over one TCP
// stream. Small on purpose: a hello, page requests, page batches with a
// CRC-32 each, pre-copy rounds and the switch-over, done, and error.
// docs/migration.md documents the layout.
import { crc32 } from '../crc32';
import { stateError } from '../errors';

export { crc32 };

/**
 * Protocol version carried in the hello frame. A destination refuses any
 * other. Version 2 added `refetch` requests (a page the destination lost)
 * and the token handshake (challenge, auth, proof) before the hello.
 * Version 3 added live sources: pre-copy rounds, update batches (pages sent
 * again because the guest wrote them since) and the switch-over frame.
 */
export const PROTOCOL_VERSION = 3;

/** Bytes of every frame header: u32 payload length, u8 type, u8 flags, u16 reserved. */
export const FRAME_HEADER = 8;

/** Largest payload a peer accepts (a batch of 1024 pages of 64 KiB plus its header). */
export const MAX_PAYLOAD = 64 * 1024 * 1024 + 64;

/** Frame types. */
export const FRAME = { hello: 1, request: 2, batch: 3, done: 4, error: 5, credit: 6, challenge: 7, auth: 8, proof: 9, round: 10, switchover: 11 } as const;

/**
 * Request priorities: a faulting thread waits on `demand`; `prefetch` is a
 * hint; `refetch` is a demand for pages the destination received and then
 * lost (the guest punched them out with MADV_REMOVE): answered even though
 * they were sent before.
 */
export const PRIORITY = { demand: 0, prefetch: 1, refetch: 2 } as const;

/**
 * Batch flags: `demand`, the pages answer a request (else pushed); `update`,
 * pages sent before and written by the guest since: they replace the copy the
 * destination holds (allowed only before the guest may run there).
 */
export const BATCH_FLAG = { demand: 1, update: 2 } as const;

/** Hello flags: `live`, the guest still runs at the source: rounds and a switch-over frame follow. */
export const HELLO_FLAG = { live: 1 } as const;

/**
 * Switch-over flags: `postcopy`, the guest may run at the destination as
 * soon as the stale pages are dropped, and the missing pages follow by
 * post-copy (hybrid); clear, stop-and-copy: the last update batches follow,
 * then done, and the guest runs only after done.
 */
export const SWITCHOVER_FLAG = { postcopy: 1 } as const;

export interface HelloFrame { type: 'hello'; version: number; pageSize: number; imageSize: number; pageCount: number; live: boolean }
export interface RequestFrame { type: 'request'; priority: number; firstPage: number; pageCount: number }
export interface BatchFrame { type: 'batch'; demand: boolean; update: boolean; firstPage: number; pageCount: number; data: Buffer }
/** Source to destination: pre-copy round `round` begins and sends `pageCount` pages. */
export interface RoundFrame { type: 'round'; round: number; pageCount: number }
/**
 * Source to destination: the guest is paused at the source. `stale` lists the
 * runs [firstPage, pageCount] sent before and written since: the destination
 * drops them (with `postcopy`) and fetches them again.
 */
export interface SwitchoverFrame { type: 'switchover'; postcopy: boolean; stale: [number, number][] }
export interface DoneFrame { type: 'done'; pagesSent: number }
export interface ErrorFrame { type: 'error'; code: string; message: string }
export interface CreditFrame { type: 'credit'; batches: number }
/** Source to destination, first when a token is required: the source's nonce. */
export interface ChallengeFrame { type: 'challenge'; nonce: Buffer }
/** Destination to source: its proof for the source's nonce, and its own nonce. */
export interface AuthFrame { type: 'auth'; mac: Buffer; nonce: Buffer }
/** Source to destination: its proof for the destination's nonce; the hello follows. */
export interface ProofFrame { type: 'proof'; mac: Buffer }
export type Frame = HelloFrame | RequestFrame | BatchFrame | DoneFrame | ErrorFrame | CreditFrame | ChallengeFrame | AuthFrame | ProofFrame | RoundFrame | SwitchoverFrame;

/** A protocol violation: a bad frame, a checksum mismatch, a version the peer does not speak. */
export function protocolError(code: string, message: string): Error {
  return stateError(code, `migration protocol: ${message}`);
}

/** A frame header followed by room for `inline` payload bytes (the rest of the payload is sent separately). */
function header(type: number, payloadLength: number, flags = 0, inline = payloadLength): Buffer {
  const b = Buffer.alloc(FRAME_HEADER + inline);
  b.writeUInt32LE(payloadLength, 0);
  b.writeUInt8(type, 4);
  b.writeUInt8(flags, 5);
  b.writeUInt16LE(0, 6);
  return b;
}

export function encodeHello(pageSize: number, imageSize: number, live = false): Buffer {
  // Flags in the header, not the payload: a version 2 peer still reads the
  // version and refuses it with a version error rather than a size error.
  const b = header(FRAME.hello, 16, live ? HELLO_FLAG.live : 0);
  b.writeUInt32LE(PROTOCOL_VERSION, 8);
  b.writeUInt32LE(pageSize, 12);
  b.writeBigUInt64LE(BigInt(imageSize), 16);
  return b;
}

export function encodeRequest(priority: number, firstPage: number, pageCount: number): Buffer {
  const b = header(FRAME.request, 12);
  b.writeUInt32LE(priority, 8);
  b.writeUInt32LE(firstPage, 12);
  b.writeUInt32LE(pageCount, 16);
  return b;
}

/**
 * A batch frame: the payload is u32 crc, u32 first page, u32 page count, then
 * the pages. The CRC covers everything after itself, so a page landing at the
 * wrong index is caught as well as flipped bits. Returns the header and the
 * page bytes separately so the pages are not copied again.
 */
export function encodeBatch(demand: boolean, firstPage: number, pageCount: number, pages: Uint8Array, update = false): [Buffer, Uint8Array] {
  const head = header(FRAME.batch, 12 + pages.byteLength, (demand ? BATCH_FLAG.demand : 0) | (update ? BATCH_FLAG.update : 0), 12);
  head.writeUInt32LE(firstPage, 12);
  head.writeUInt32LE(pageCount, 16);
  head.writeUInt32LE(crc32(pages, crc32(head.subarray(12, 20))), 8);
  return [head, pages];
}

/**
 * Push credit: the destination allows `batches` more pushed batches. Keeps
 * the pushed bytes in flight (socket buffers included) small, so that the
 * answer to a demand request never waits behind megabytes of push.
 */
export function encodeCredit(batches: number): Buffer {
  const b = header(FRAME.credit, 4);
  b.writeUInt32LE(batches, 8);
  return b;
}

export function encodeRound(round: number, pageCount: number): Buffer {
  const b = header(FRAME.round, 8);
  b.writeUInt32LE(round, 8);
  b.writeUInt32LE(pageCount, 12);
  return b;
}

/** Payload: u32 run count, then per run u32 first page, u32 page count. */
export function encodeSwitchover(postcopy: boolean, stale: readonly (readonly [number, number])[]): Buffer {
  const b = header(FRAME.switchover, 4 + 8 * stale.length, postcopy ? SWITCHOVER_FLAG.postcopy : 0);
  b.writeUInt32LE(stale.length, 8);
  stale.forEach(([first, count], i) => {
    b.writeUInt32LE(first, 12 + 8 * i);
    b.writeUInt32LE(count, 16 + 8 * i);
  });
  return b;
}

export function encodeDone(pagesSent: number): Buffer {
  const b = header(FRAME.done, 8);
  b.writeBigUInt64LE(BigInt(pagesSent), 8);
  return b;
}

export function encodeChallenge(nonce: Uint8Array): Buffer {
  const b = header(FRAME.challenge, nonce.length);
  b.set(nonce, FRAME_HEADER);
  return b;
}

export function encodeAuth(mac: Uint8Array, nonce: Uint8Array): Buffer {
  const b = header(FRAME.auth, mac.length + nonce.length);
  b.set(mac, FRAME_HEADER);
  b.set(nonce, FRAME_HEADER + mac.length);
  return b;
}

export function encodeProof(mac: Uint8Array): Buffer {
  const b = header(FRAME.proof, mac.length);
  b.set(mac, FRAME_HEADER);
  return b;
}

export function encodeError(code: string, message: string): Buffer {
  const text = Buffer.from(JSON.stringify({ code, message }));
  const b = header(FRAME.error, text.length);
  text.copy(b, FRAME_HEADER);
  return b;
}

/**
 * Splits a byte stream into frames. Feed it chunks as they arrive; it
 * returns the complete frames and keeps the rest. Throws on anything
 * malformed: an unknown type, an oversized or wrongly sized payload, a
 * batch whose CRC does not match.
 */
export class FrameDecoder {
  #chunks: Buffer[] = [];
  #buffered = 0;
  readonly #pageSize: () => number;

  /** `pageSize` is read when a batch arrives (it is known only after the hello). */
  constructor(pageSize: () => number) {
    this.#pageSize = pageSize;
  }

  push(chunk: Buffer): Frame[] {
    this.#chunks.push(chunk);
    this.#buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.#buffered < FRAME_HEADER) break;
      const head = this.#peek(FRAME_HEADER);
      const length = head.readUInt32LE(0);
      if (length > MAX_PAYLOAD) throw protocolError('ERR_MIGRATION_BAD_FRAME', `frame of ${length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
      if (this.#buffered < FRAME_HEADER + length) break;
      const frame = this.#take(FRAME_HEADER + length);
      frames.push(this.#decode(frame.readUInt8(4), frame.readUInt8(5), frame.subarray(FRAME_HEADER)));
    }
    return frames;
  }

  /** Bytes received but not yet part of a complete frame. */
  get pending(): number {
    return this.#buffered;
  }

  #decode(type: number, flags: number, payload: Buffer): Frame {
    const need = (n: number, what: string) => {
      if (payload.length !== n) throw protocolError('ERR_MIGRATION_BAD_FRAME', `${what} frame has ${payload.length} payload bytes, expected ${n}`);
    };
    switch (type) {
      case FRAME.hello: {
        need(16, 'hello');
        const imageSize = Number(payload.readBigUInt64LE(8));
        const pageSize = payload.readUInt32LE(4);
        if (pageSize === 0 || (pageSize & (pageSize - 1)) !== 0) throw protocolError('ERR_MIGRATION_BAD_FRAME', `hello announces page size ${pageSize}`);
        return { type: 'hello', version: payload.readUInt32LE(0), pageSize, imageSize, pageCount: Math.ceil(imageSize / pageSize), live: (flags & HELLO_FLAG.live) !== 0 };
      }
      case FRAME.request:
        need(12, 'request');
        return { type: 'request', priority: payload.readUInt32LE(0), firstPage: payload.readUInt32LE(4), pageCount: payload.readUInt32LE(8) };
      case FRAME.batch: {
        if (payload.length < 12) throw protocolError('ERR_MIGRATION_BAD_FRAME', `batch frame of ${payload.length} bytes is shorter than its header`);
        const pageCount = payload.readUInt32LE(8);
        const data = payload.subarray(12);
        const pageSize = this.#pageSize();
        if (data.length !== pageCount * pageSize)
          throw protocolError('ERR_MIGRATION_BAD_FRAME', `batch announces ${pageCount} pages but carries ${data.length} bytes (page size ${pageSize})`);
        const expected = payload.readUInt32LE(0);
        const actual = crc32(data, crc32(payload.subarray(4, 12)));
        if (actual !== expected)
          throw protocolError('ERR_MIGRATION_BAD_CHECKSUM', `batch of pages ${payload.readUInt32LE(4)}+${pageCount} has CRC-32 0x${actual.toString(16)}, frame says 0x${expected.toString(16)}`);
        return { type: 'batch', demand: (flags & BATCH_FLAG.demand) !== 0, update: (flags & BATCH_FLAG.update) !== 0, firstPage: payload.readUInt32LE(4), pageCount, data };
      }
      case FRAME.round:
        need(8, 'round');
        return { type: 'round', round: payload.readUInt32LE(0), pageCount: payload.readUInt32LE(4) };
      case FRAME.switchover: {
        if (payload.length < 4) throw protocolError('ERR_MIGRATION_BAD_FRAME', `switchover frame of ${payload.length} bytes is shorter than its header`);
        const runs = payload.readUInt32LE(0);
        need(4 + 8 * runs, 'switchover');
        const stale: [number, number][] = [];
        for (let i = 0; i < runs; i++) stale.push([payload.readUInt32LE(4 + 8 * i), payload.readUInt32LE(8 + 8 * i)]);
        return { type: 'switchover', postcopy: (flags & SWITCHOVER_FLAG.postcopy) !== 0, stale };
      }
      case FRAME.credit:
        need(4, 'credit');
        return { type: 'credit', batches: payload.readUInt32LE(0) };
      case FRAME.done:
        need(8, 'done');
        return { type: 'done', pagesSent: Number(payload.readBigUInt64LE(0)) };
      case FRAME.challenge:
        need(32, 'challenge');
        return { type: 'challenge', nonce: Buffer.from(payload) };
      case FRAME.auth:
        need(64, 'auth');
        return { type: 'auth', mac: Buffer.from(payload.subarray(0, 32)), nonce: Buffer.from(payload.subarray(32)) };
      case FRAME.proof:
        need(32, 'proof');
        return { type: 'proof', mac: Buffer.from(payload) };
      case FRAME.error: {
        let parsed: { code?: unknown; message?: unknown } = {};
        try {
          parsed = JSON.parse(payload.toString('utf8'));
        } catch {
          // A garbled error frame still reports an error.
        }
        return { type: 'error', code: typeof parsed.code === 'string' ? parsed.code : 'ERR_MIGRATION_PEER', message: typeof parsed.message === 'string' ? parsed.message : payload.toString('utf8') };
      }
      default:
        throw protocolError('ERR_MIGRATION_BAD_FRAME', `unknown frame type ${type}`);
    }
  }

  /** The first chunk, merged with just enough of the following ones to hold `n` bytes. */
  #peek(n: number): Buffer {
    if (this.#chunks[0].length >= n) return this.#chunks[0];
    let count = 0;
    let bytes = 0;
    while (bytes < n) bytes += this.#chunks[count++].length;
    const merged = Buffer.concat(this.#chunks.slice(0, count), bytes);
    this.#chunks.splice(0, count, merged);
    return merged;
  }

  #take(n: number): Buffer {
    const first = this.#peek(n);
    const frame = first.subarray(0, n);
    const rest = first.subarray(n);
    if (rest.length) this.#chunks[0] = rest;
    else this.#chunks.shift();
    this.#buffered -= n;
    return frame;
  }
}

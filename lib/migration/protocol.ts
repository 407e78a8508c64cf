// The post-copy wire protocol: length-prefixed binary frames over one TCP
// stream. Small on purpose: a hello, page requests, page batches with a
// CRC-32 each, done, and error. docs-migrate.md documents the layout.
import { crc32 } from '../crc32';
import { stateError } from '../errors';

export { crc32 };

/**
 * Protocol version carried in the hello frame. A destination refuses any
 * other. Version 2 added `refetch` requests (a page the destination lost)
 * and the token handshake (challenge, auth, proof) before the hello.
 */
export const PROTOCOL_VERSION = 2;

/** Bytes of every frame header: u32 payload length, u8 type, u8 flags, u16 reserved. */
export const FRAME_HEADER = 8;

/** Largest payload a peer accepts (a batch of 1024 pages of 64 KiB plus its header). */
export const MAX_PAYLOAD = 64 * 1024 * 1024 + 64;

/** Frame types. */
export const FRAME = { hello: 1, request: 2, batch: 3, done: 4, error: 5, credit: 6, challenge: 7, auth: 8, proof: 9 } as const;

/**
 * Request priorities: a faulting thread waits on `demand`; `prefetch` is a
 * hint; `refetch` is a demand for pages the destination received and then
 * lost (the guest punched them out with MADV_REMOVE): answered even though
 * they were sent before.
 */
export const PRIORITY = { demand: 0, prefetch: 1, refetch: 2 } as const;

/** Batch flags: whether the pages answer a demand request or were pushed. */
export const BATCH_FLAG = { demand: 1 } as const;

export interface HelloFrame { type: 'hello'; version: number; pageSize: number; imageSize: number; pageCount: number }
export interface RequestFrame { type: 'request'; priority: number; firstPage: number; pageCount: number }
export interface BatchFrame { type: 'batch'; demand: boolean; firstPage: number; pageCount: number; data: Buffer }
export interface DoneFrame { type: 'done'; pagesSent: number }
export interface ErrorFrame { type: 'error'; code: string; message: string }
export interface CreditFrame { type: 'credit'; batches: number }
/** Source to destination, first when a token is required: the source's nonce. */
export interface ChallengeFrame { type: 'challenge'; nonce: Buffer }
/** Destination to source: its proof for the source's nonce, and its own nonce. */
export interface AuthFrame { type: 'auth'; mac: Buffer; nonce: Buffer }
/** Source to destination: its proof for the destination's nonce; the hello follows. */
export interface ProofFrame { type: 'proof'; mac: Buffer }
export type Frame = HelloFrame | RequestFrame | BatchFrame | DoneFrame | ErrorFrame | CreditFrame | ChallengeFrame | AuthFrame | ProofFrame;

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

export function encodeHello(pageSize: number, imageSize: number): Buffer {
  const b = header(FRAME.hello, 16);
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
export function encodeBatch(demand: boolean, firstPage: number, pageCount: number, pages: Uint8Array): [Buffer, Uint8Array] {
  const head = header(FRAME.batch, 12 + pages.byteLength, demand ? BATCH_FLAG.demand : 0, 12);
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
        return { type: 'hello', version: payload.readUInt32LE(0), pageSize, imageSize, pageCount: Math.ceil(imageSize / pageSize) };
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
        return { type: 'batch', demand: (flags & BATCH_FLAG.demand) !== 0, firstPage: payload.readUInt32LE(4), pageCount, data };
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

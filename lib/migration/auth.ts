// Who may take part in a migration. A source serves a guest's whole memory
// to whoever completes the protocol, so it listens on loopback unless told
// otherwise, and it can demand proof:
//  - a pre-shared token: challenge and response both ways, HMAC-SHA256 over
//    a fresh nonce of each side, so the token never crosses the wire and a
//    recorded exchange cannot be replayed;
//  - TLS with mutual authentication (node:tls): the source requires a client
//    certificate signed by `ca`, the destination checks the source's.
// Either is checked before the first page leaves the source.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import * as net from 'node:net';
import * as tls from 'node:tls';

import { argValueError, stateError } from '../errors';
import * as v from '../validate';

/** Certificates for TLS with mutual authentication: this side's key and certificate, and the CA that signs the peer's. */
export interface MigrationTls {
  key: string | Buffer;
  cert: string | Buffer;
  /** The certificate authority the peer's certificate must chain to. */
  ca: string | Buffer | (string | Buffer)[];
}

/** The authentication options both ends share. */
export interface MigrationAuth {
  /** A pre-shared secret (at least 16 bytes; 32 random bytes is right): both ends must hold the same. */
  token?: string | Uint8Array;
  /** TLS with client certificates required. */
  tls?: MigrationTls;
}

export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;

/** The checked options: the token as bytes. */
export interface CheckedAuth {
  token?: Buffer;
  tls?: MigrationTls;
}

export function checkAuth(opts: MigrationAuth): CheckedAuth {
  let token: Buffer | undefined;
  if (opts.token !== undefined) {
    if (typeof opts.token === 'string') token = Buffer.from(opts.token, 'utf8');
    else if (opts.token instanceof Uint8Array) token = Buffer.from(opts.token);
    else throw argValueError('options.token', 'must be a string or a Uint8Array', opts.token);
    if (token.length < 16) throw argValueError('options.token', 'must be at least 16 bytes long', `${token.length} bytes`);
  }
  let tlsOpts: MigrationTls | undefined;
  if (opts.tls !== undefined) {
    const t = v.options<MigrationTls>('options.tls', opts.tls);
    for (const name of ['key', 'cert', 'ca'] as const)
      if (t[name] === undefined) throw argValueError(`options.tls.${name}`, 'is required (TLS here always authenticates both ends)', t[name]);
    tlsOpts = t as MigrationTls;
  }
  return { token, tls: tlsOpts };
}

export const nonce = (): Buffer => randomBytes(NONCE_BYTES);

/** What `who` ('source' or 'destination') sends to prove it holds the token, for the peer's nonce. */
export function proof(token: Buffer, who: 'source' | 'destination', peerNonce: Buffer): Buffer {
  return createHmac('sha256', token).update(`userfaultfd migration ${who}\0`).update(peerNonce).digest();
}

export function proofHolds(token: Buffer, who: 'source' | 'destination', ourNonce: Buffer, mac: Buffer): boolean {
  const expected = proof(token, who, ourNonce);
  return mac.length === expected.length && timingSafeEqual(mac, expected);
}

export const authError = (message: string): Error => stateError('ERR_MIGRATION_AUTH', `migration: ${message}`);

/** A server for the source: plain TCP, or TLS that requires a client certificate. */
export function createServer(auth: CheckedAuth, onSocket: (socket: net.Socket) => void): net.Server {
  if (!auth.tls) return net.createServer(onSocket);
  const server = tls.createServer({ ...auth.tls, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, onSocket);
  // A client without the right certificate never reaches onSocket; nothing to serve it.
  server.on('tlsClientError', () => {});
  return server;
}

/** Connects a destination: plain TCP, or TLS presenting its certificate and checking the source's. */
export async function connect(host: string, port: number, auth: CheckedAuth, signal?: AbortSignal): Promise<net.Socket> {
  signal?.throwIfAborted();
  const socket = auth.tls
    ? tls.connect({ host, port, ...auth.tls, rejectUnauthorized: true, minVersion: 'TLSv1.3', servername: net.isIP(host) ? undefined : host })
    : net.connect({ host, port });
  const ready = auth.tls ? 'secureConnect' : 'connect';
  try {
    await new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(signal!.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once(ready, () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      socket.once('error', (err) => {
        signal?.removeEventListener('abort', onAbort);
        reject(err);
      });
    });
  } catch (err) {
    socket.destroy();
    const e = err as NodeJS.ErrnoException;
    if (auth.tls && !(e.code && /^E(CONNREFUSED|HOSTUNREACH|NETUNREACH|TIMEDOUT)$/.test(e.code)) && e.name !== 'AbortError')
      throw authError(`TLS with the source at ${host}:${port} failed: ${e.message}${e.code ? ` (${e.code})` : ''}`);
    throw stateError('ERR_MIGRATION_CONNECTION_LOST', `migration destination: cannot connect to ${host}:${port}: ${e.message}`);
  }
  return socket;
}

// CRC-32 (IEEE 802.3, the polynomial zlib and PNG use), shared by the
// migration wire protocol and the working-set file format.
import * as zlib from 'node:zlib';

const crcTable = (() => {
  const table = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c;
  }
  return table;
})();

function crc32Table(bytes: Uint8Array, seed = 0): number {
  let c = ~seed;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

const zlibCrc = (zlib as unknown as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

/** CRC-32 (IEEE, as zlib), continuing from `seed`. Uses zlib's when Node has it (20.15+). */
export function crc32(bytes: Uint8Array, seed = 0): number {
  return zlibCrc ? zlibCrc(bytes, seed) : crc32Table(bytes, seed);
}

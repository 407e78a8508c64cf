// Firecracker's side of the page-server handshake, as data: the region array
// it sends when it connects (page sizes given in either of the two field
// names its versions use) and the framing of the JSON messages that follow
// on the same socket (vCPU fault requests in guest_memfd mode).
import { stateError } from '../errors';

/** One guest memory region as Firecracker describes it (numbers in bytes). */
export interface FirecrackerRegion {
  /** Start of the region in Firecracker's address space. */
  baseHostVirtAddr: number;
  size: number;
  /** Offset of the region in the snapshot memory file (and in the memory fd, three-fd mode). */
  offset: number;
  /** The host's base page size, or the huge page size of a hugetlb-backed region. */
  pageSize: number;
}

const PAGE_SIZES = [4096, 16384, 65536, 2 * 1024 * 1024, 1024 * 1024 * 1024];

/** Parses and checks Firecracker's region array. Accepts `page_size` and the older `page_size_kib`. */
export function parseFirecrackerRegions(json: string): FirecrackerRegion[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch (err) {
    throw stateError('ERR_FIRECRACKER_HANDSHAKE', `the region message is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(parsed) || parsed.length === 0) throw stateError('ERR_FIRECRACKER_HANDSHAKE', 'the region message must be a non-empty JSON array');
  const regions = parsed.map((raw, i): FirecrackerRegion => {
    const r = raw as Record<string, unknown>;
    const num = (name: string): number => {
      const value = r[name];
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
        throw stateError('ERR_FIRECRACKER_HANDSHAKE', `region ${i}: "${name}" must be a non-negative integer, got ${JSON.stringify(value)}`);
      return value;
    };
    let pageSize: number;
    if (r.page_size !== undefined) pageSize = num('page_size');
    else if (r.page_size_kib !== undefined) {
      // Despite its name Firecracker fills page_size_kib with bytes; a value
      // that is not a page size in bytes but is one in KiB is read as KiB.
      const value = num('page_size_kib');
      pageSize = PAGE_SIZES.includes(value) ? value : value * 1024;
    } else throw stateError('ERR_FIRECRACKER_HANDSHAKE', `region ${i} has neither page_size nor page_size_kib`);
    if (!PAGE_SIZES.includes(pageSize)) throw stateError('ERR_FIRECRACKER_HANDSHAKE', `region ${i}: page size ${pageSize} is not one the kernel uses`);
    const region = { baseHostVirtAddr: num('base_host_virt_addr'), size: num('size'), offset: num('offset'), pageSize };
    if (region.size === 0 || region.baseHostVirtAddr % pageSize || region.size % pageSize || region.offset % pageSize)
      throw stateError('ERR_FIRECRACKER_HANDSHAKE', `region ${i} (${JSON.stringify(raw)}) is empty or not aligned to its page size ${pageSize}`);
    return region;
  });
  const sorted = [...regions].sort((a, b) => a.baseHostVirtAddr - b.baseHostVirtAddr);
  for (let i = 1; i < sorted.length; i++)
    if (sorted[i].baseHostVirtAddr < sorted[i - 1].baseHostVirtAddr + sorted[i - 1].size)
      throw stateError('ERR_FIRECRACKER_HANDSHAKE', 'regions overlap');
  return regions;
}

/** Index just past the first complete top-level JSON object or array of `text`; 0 when incomplete, -1 when it starts with anything else. */
export function jsonEnd(text: string): number {
  let depth = 0;
  let inString = false;
  let started = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
      continue;
    }
    if (c === '"') inString = true;
    else if (c === '[' || c === '{') {
      depth++;
      started = true;
    } else if (c === ']' || c === '}') {
      depth--;
      if (started && depth === 0) return i + 1;
    } else if (!started && !/\s/.test(c)) return -1;
  }
  return 0;
}

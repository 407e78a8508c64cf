#!/usr/bin/env node
// Core fault tests without vitest: one self-contained script that every row
// of the VM matrix runs after the suite, so a row whose vitest cannot start
// still says whether faults work. Uses the compiled build (dist/) and the
// addon in build/Release.
// Real faults from native threads, every byte checked, page size taken from
// the kernel (the 16 KiB arm64 guest is the proof nothing assumes 4096).
// Prints a JSON report on stdout; exits non-zero when a test failed.
//   node scripts/vm/smoke.js
'use strict';
require('../usage').answerHelp(__filename);

const fs = require('node:fs');
const path = require('node:path');

const lib = require(path.join(__dirname, '..', '..', 'dist', 'lib'));
const { Memfd, PAGE_SIZE, Userfaultfd, probe, touchPages } = lib;

const caps = probe();
const results = [];
const cleanups = [];

/** Thrown by a test whose precondition is not a kernel feature (e.g. no huge pages reserved). */
class SkipError extends Error {}

function assert(cond, what) {
  if (!cond) throw new Error(`assertion failed: ${what}`);
}

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';
const freeHugePages = () => Number(/HugePages_Free:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);

/**
 * Makes `need` default-size huge pages free where it may (root); the test's
 * cleanup gives back only what was added. Returns how many are free.
 */
function reserveHugePages(need) {
  const short = need - freeHugePages();
  if (short <= 0) return freeHugePages();
  try {
    const before = Number(fs.readFileSync(NR_HUGEPAGES, 'utf8'));
    fs.writeFileSync(NR_HUGEPAGES, String(before + short));
    cleanups.push({ close: () => fs.writeFileSync(NR_HUGEPAGES, String(Math.max(0, Number(fs.readFileSync(NR_HUGEPAGES, 'utf8')) - short))) });
  } catch {
    // Not root, or no hugetlb: the caller skips with the count.
  }
  return freeHugePages();
}

/** Page size from the ELF auxiliary vector (AT_PAGESZ), independent of the addon. */
function auxvPageSize() {
  const buf = fs.readFileSync('/proc/self/auxv');
  for (let i = 0; i + 16 <= buf.length; i += 16) {
    const type = buf.readBigUInt64LE(i);
    if (type === 6n) return Number(buf.readBigUInt64LE(i + 8));
    if (type === 0n) break;
  }
  return undefined;
}

function missing(features) {
  if (!caps.available) return `no userfaultfd: ${caps.reasons[0]}`;
  const gone = features.filter((f) => !caps.features[f]);
  return gone.length ? `kernel ${caps.kernel} lacks ${gone.map((f) => `${f} (Linux ${lib.FEATURE_SINCE[f]}+)`).join(', ')}` : undefined;
}

async function test(name, features, fn, timeoutMs = 30_000) {
  const reason = missing(features);
  if (reason) {
    results.push({ name, status: 'skipped', reason });
    return;
  }
  const started = Date.now();
  let timer;
  try {
    await Promise.race([
      fn(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    results.push({ name, status: 'passed', ms: Date.now() - started });
  } catch (err) {
    if (err instanceof SkipError) {
      results.push({ name, status: 'skipped', reason: err.message });
      return;
    }
    results.push({ name, status: 'failed', ms: Date.now() - started, error: String(err && err.stack ? err.stack : err) });
  } finally {
    clearTimeout(timer);
    while (cleanups.length) {
      try {
        cleanups.pop().close();
      } catch {}
    }
  }
}

function track(x) {
  cleanups.push(x);
  return x;
}

/** A memfd of `pages` pages, page i filled with fill(i). */
function filledMemfd(pages, fill) {
  const mem = track(Memfd.create(pages * PAGE_SIZE, { name: 'vm-smoke' }));
  for (let i = 0; i < pages; i++) mem.write(i * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, fill(i)));
  return mem;
}

/** Answers page faults with `resolve(pageIndex)` until `until` settles; returns the faulting page indexes. */
async function serve(uffd, base, until, resolve, pageSize = PAGE_SIZE) {
  const seen = [];
  let finished = false;
  until.finally(() => (finished = true)).catch(() => {});
  while (!finished) {
    for (const ev of uffd.readEvents()) {
      if (ev.type !== 'pagefault') continue;
      const page = Math.floor((ev.address - base) / pageSize);
      seen.push({ page, write: ev.write, minor: ev.minor });
      resolve(page, ev);
    }
    await new Promise((r) => setImmediate(r));
  }
  return seen;
}

function expectPage(bytes, page, value, what) {
  const from = page * PAGE_SIZE;
  for (let i = from; i < from + PAGE_SIZE; i++)
    if (bytes[i] !== value) throw new Error(`${what}: byte ${i - from} of page ${page} is ${bytes[i]}, expected ${value}`);
}

async function main() {
  await test('page size agrees with the kernel (AT_PAGESZ)', [], async () => {
    const aux = auxvPageSize();
    assert(aux === PAGE_SIZE, `PAGE_SIZE ${PAGE_SIZE} == AT_PAGESZ ${aux}`);
    assert(caps.pageSize === aux, `probe().pageSize ${caps.pageSize} == AT_PAGESZ ${aux}`);
  });

  await test('MISSING faults on shmem resolved by COPY from a native thread', ['missingShmem'], async () => {
    const pages = 6;
    const mem = track(Memfd.create(pages * PAGE_SIZE, { name: 'vm-smoke-missing' }));
    const view = mem.map();
    const uffd = track(Userfaultfd.open({ features: ['missingShmem'] }));
    const reg = uffd.register(view, { missing: true });
    assert(reg.ioctls.includes('copy'), `copy allowed (got ${reg.ioctls})`);
    const touched = touchPages(view, [4, 0, 5]);
    const seen = await serve(uffd, view.address, touched, (page) => {
      uffd.copy(view.address + page * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, 0x40 + page));
    });
    const report = await touched;
    assert(JSON.stringify(seen.map((s) => s.page)) === '[4,0,5]', `faults on pages 4,0,5 in order (got ${JSON.stringify(seen)})`);
    assert(seen.every((s) => !s.minor && !s.write), 'read faults, not MINOR');
    assert(report.checksum === 0x44 + 0x40 + 0x45, `toucher read the copied bytes (checksum ${report.checksum})`);
    const bytes = new Uint8Array(view.buffer);
    for (const p of [0, 4, 5]) expectPage(bytes, p, 0x40 + p, 'mapping after COPY');
    // The copy went into the page cache: the memfd itself holds it.
    for (const p of [0, 4, 5]) expectPage(mem.read(p * PAGE_SIZE, PAGE_SIZE), 0, 0x40 + p, 'memfd after COPY');
    // Untouched pages are still holes: reading the file gives zeros, no fault.
    expectPage(mem.read(1 * PAGE_SIZE, PAGE_SIZE), 0, 0, 'untouched page');
  });

  await test('MISSING faults resolved by ZEROPAGE read back zeros', ['missingShmem'], async () => {
    const mem = track(Memfd.create(2 * PAGE_SIZE, { name: 'vm-smoke-zero' }));
    const view = mem.map();
    const uffd = track(Userfaultfd.open());
    const reg = uffd.register(view, { missing: true });
    assert(reg.ioctls.includes('zeropage'), `zeropage allowed on shmem (got ${reg.ioctls})`);
    const touched = touchPages(view, [1]);
    const seen = await serve(uffd, view.address, touched, (page) => uffd.zeropage(view.address + page * PAGE_SIZE, PAGE_SIZE));
    assert((await touched).checksum === 0, 'toucher read zeros');
    assert(seen.length === 1 && seen[0].page === 1, `one fault on page 1 (got ${JSON.stringify(seen)})`);
    expectPage(new Uint8Array(view.buffer), 1, 0, 'zeropage');
  });

  await test('MINOR faults resolved by CONTINUE: bytes, flags, thread id', ['minorShmem', 'threadId'], async () => {
    const pages = 8;
    const mem = filledMemfd(pages, (i) => i + 1);
    const view = mem.map();
    const uffd = track(Userfaultfd.open({ features: ['minorShmem', 'threadId'] }));
    const reg = uffd.register(view, { minor: true });
    assert(reg.ioctls.includes('continue'), `continue allowed (got ${reg.ioctls})`);
    const events = [];
    const touched = touchPages(view, [0, 3, 7]);
    const seen = await serve(uffd, view.address, touched, (page, ev) => {
      events.push(ev);
      uffd.continue(view.address + page * PAGE_SIZE, PAGE_SIZE);
    });
    const report = await touched;
    assert(JSON.stringify(seen.map((s) => s.page)) === '[0,3,7]', `faults on 0,3,7 (got ${JSON.stringify(seen)})`);
    assert(events.every((e) => e.minor && !e.write && e.threadId === report.threadId), 'MINOR read faults from the toucher thread');
    assert(report.checksum === 1 + 4 + 8, `checksum ${report.checksum}`);
    const bytes = new Uint8Array(view.buffer);
    for (const p of [0, 3, 7]) expectPage(bytes, p, p + 1, 'mapping after CONTINUE');
  });

  await test('MINOR write fault: the write lands in the memfd', ['minorShmem'], async () => {
    const mem = filledMemfd(4, (i) => i + 1);
    const view = mem.map();
    const uffd = track(Userfaultfd.open({ features: ['minorShmem'] }));
    uffd.register(view, { minor: true });
    const touched = touchPages(view, [2], { write: 0xab });
    const seen = await serve(uffd, view.address, touched, (page) => uffd.continue(view.address + page * PAGE_SIZE, PAGE_SIZE));
    await touched;
    assert(seen.length === 1 && seen[0].write && seen[0].minor, `one MINOR|WRITE fault (got ${JSON.stringify(seen)})`);
    const page = mem.read(2 * PAGE_SIZE, PAGE_SIZE);
    assert(page[0] === 0xab, `first byte written (got ${page[0]})`);
    for (let i = 1; i < PAGE_SIZE; i++) if (page[i] !== 3) throw new Error(`byte ${i} of page 2 is ${page[i]}, expected 3`);
  });

  await test('MINOR fault on a hugetlb memfd of the default huge page size', ['minorHugetlbfs'], async () => {
    const huge = caps.hugePages.size;
    const free = reserveHugePages(2);
    if (free < 2) throw new SkipError(`only ${free} free huge pages of ${huge / 1048576} MiB (vm.nr_hugepages)`);
    const mem = track(Memfd.create(2 * huge, { name: 'vm-smoke-huge', hugetlb: true }));
    assert(mem.pageSize === huge, `hugetlb: true used the default huge page size ${huge} (got ${mem.pageSize})`);
    // hugetlbfs has no write(2): fill page 1 through a second, unregistered view.
    const fill = mem.map();
    new Uint8Array(fill.buffer, huge, huge).fill(0x5a);
    const view = mem.map();
    const uffd = track(Userfaultfd.open({ features: ['minorHugetlbfs'] }));
    const reg = uffd.register(view, { minor: true });
    assert(reg.ioctls.includes('continue'), `continue allowed on hugetlb (got ${reg.ioctls})`);
    const touched = touchPages(view, [1]);
    const seen = await serve(uffd, view.address, touched, (page) => uffd.continue(view.address + page * huge, huge), huge);
    assert((await touched).checksum === 0x5a, 'toucher read the page-cache byte');
    assert(seen.length === 1 && seen[0].page === 1 && seen[0].minor, `one MINOR fault in huge page 1 (got ${JSON.stringify(seen)})`);
    const bytes = new Uint8Array(view.buffer, huge, huge);
    for (let i = 0; i < huge; i++) if (bytes[i] !== 0x5a) throw new Error(`byte ${i} of huge page 1 is ${bytes[i]}`);
  });

  await test('ranges are checked against the real page size', ['missingShmem'], async () => {
    const mem = track(Memfd.create(2 * PAGE_SIZE, { name: 'vm-smoke-align' }));
    const view = mem.map();
    const uffd = track(Userfaultfd.open());
    uffd.register(view, { missing: true });
    // Half a page is never a valid resolving length, whatever the page size.
    let threw;
    try {
      uffd.zeropage(view.address, PAGE_SIZE / 2);
    } catch (err) {
      threw = err;
    }
    assert(threw, `zeropage of ${PAGE_SIZE / 2} bytes was refused`);
    if (PAGE_SIZE > 4096) {
      // On large-page kernels a 4 KiB step is inside a page: refused before the kernel sees it.
      let inner;
      try {
        uffd.wake(view.address + 4096, 4096);
      } catch (err) {
        inner = err;
      }
      assert(inner, `wake at +4096 refused on ${PAGE_SIZE}-byte pages`);
    }
  });

  const report = {
    kernel: caps.kernel, arch: caps.arch, pageSize: PAGE_SIZE, node: process.version,
    features: Object.entries(caps.features).filter(([, on]) => on).map(([n]) => n), tests: results,
  };
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  for (const r of results) process.stderr.write(`${r.status.padEnd(7)} ${r.name}${r.reason ? ` [${r.reason}]` : ''}${r.error ? `\n  ${r.error}` : ''}\n`);
  process.exitCode = results.some((r) => r.status === 'failed') ? 1 : 0;
}

main().then(() => setTimeout(() => process.exit(), 100).unref());

// Model-based fuzzing: random sequences of map / register / touch (from a
// native toucher thread) / continue / punch-hole / truncate / dontneed /
// unregister / unmap / close on a real memfd and two real uffds, each step
// checked against KernelModel. A disagreement is a library bug or a model
// bug. The seed is fixed in CI and printed; FUZZ_SEED=<seed> MODEL_RUNS=<n>
// replays one, scripts/fresh-seeds.sh tries random ones. A seed that once
// failed is kept in REGRESSION_SEEDS and replayed on every run.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { Mapping, Memfd, PAGE_SIZE, Userfaultfd, touchPages } from '../../lib/index';
import { KernelModel, Outcome } from './kernel-model';
import { scaled, testSeed } from '../helpers';
import { leakWatch } from './support';

const SEED = testSeed('model', 1_700_013);
const RUNS = Number(process.env.MODEL_RUNS ?? 150);
const PAGES = 8;
const SERVE_DEADLINE_MS = scaled(3000);

interface Real {
  mem: Memfd;
  views: Mapping[];
  uffds: Userfaultfd[];
  log: string[];
  stats: Record<string, number>;
}

function outcomeOf(fn: () => number): Outcome {
  try {
    return { ok: fn() };
  } catch (err) {
    const e = err as { code?: string; bytesDone?: number };
    if (typeof e.code !== 'string') throw err;
    return e.code === 'EAGAIN' ? { error: e.code, bytesDone: e.bytesDone } : { error: e.code };
  }
}

const same = (a: Outcome, b: Outcome) => JSON.stringify(a) === JSON.stringify(b);
const bump = (r: Real, key: string) => (r.stats[key] = (r.stats[key] ?? 0) + 1);

abstract class Cmd implements fc.AsyncCommand<KernelModel, Real> {
  check(_m: Readonly<KernelModel>): boolean {
    return true;
  }
  abstract run(m: KernelModel, r: Real): Promise<void>;
  abstract toString(): string;
}

/** A command on a view picked by index modulo the views made so far (dead ones included: use after unmap). */
abstract class ViewCmd extends Cmd {
  constructor(readonly pick: number) {
    super();
  }
  override check(m: Readonly<KernelModel>): boolean {
    return m.views.length > 0;
  }
  view(m: KernelModel): number {
    return this.pick % m.views.length;
  }
}

class MapCmd extends Cmd {
  constructor(readonly offset: number, readonly length: number) {
    super();
  }
  async run(m: KernelModel, r: Real) {
    let address = 0;
    const got = outcomeOf(() => {
      const view = r.mem.map({ offset: this.offset * PAGE_SIZE, length: this.length * PAGE_SIZE });
      r.views.push(view);
      address = view.address;
      return r.views.length - 1;
    });
    const expected = m.map(this.offset, this.length, address);
    bump(r, `map:${'ok' in got ? 'ok' : got.error}`);
    expect(got, `${this}`).toEqual(expected);
  }
  toString() {
    return `map(${this.offset}, ${this.length})`;
  }
}

class RegisterCmd extends ViewCmd {
  constructor(pick: number, readonly uffd: number) {
    super(pick);
  }
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    const expected = m.register(v, this.uffd);
    const got = outcomeOf(() => (r.uffds[this.uffd].register(r.views[v], { minor: true }), 0));
    bump(r, `register:${'ok' in got ? 'ok' : got.error}`);
    expect(got, `${this} on view ${v}`).toEqual(expected);
  }
  toString() {
    return `register(view#${this.pick}, uffd ${this.uffd})`;
  }
}

class UnregisterCmd extends ViewCmd {
  constructor(pick: number, readonly uffd: number) {
    super(pick);
  }
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    const expected = m.unregister(v, this.uffd);
    const got = outcomeOf(() => (r.uffds[this.uffd].unregister(r.views[v]), 0));
    bump(r, `unregister:${'ok' in got ? 'ok' : got.error}`);
    expect(got, `${this} on view ${v}`).toEqual(expected);
  }
  toString() {
    return `unregister(view#${this.pick}, uffd ${this.uffd})`;
  }
}

class ContinueCmd extends ViewCmd {
  constructor(pick: number, readonly uffd: number, readonly page: number, readonly count: number) {
    super(pick);
  }
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    const view = m.views[v];
    const page = this.page % view.length;
    const count = Math.min(this.count, view.length - page);
    const allowed = m.continueOutcomes(v, this.uffd, page, count, PAGE_SIZE);
    const got = outcomeOf(() => r.uffds[this.uffd].continue(r.views[v].address + page * PAGE_SIZE, count * PAGE_SIZE));
    bump(r, `continue:${'ok' in got ? (got.ok ? 'mapped' : 'exists') : got.error}`);
    expect(allowed.some((o) => same(o, got)), `${this} on view ${v} page ${page} x${count}: got ${JSON.stringify(got)}, model allows ${JSON.stringify(allowed)}`).toBe(true);
    m.applyContinue(v, page, count, got, PAGE_SIZE);
    if ('ok' in got && got.ok > 0 && view.live) {
      // The bytes now visible through the view are the memfd's.
      const bytes = new Uint8Array(r.views[v].buffer);
      // Pages at or beyond the end of the file are not mapped (the walk stopped there).
      for (let i = page; i < Math.min(page + count, m.size - view.offset, view.length); i++) {
        const seen = Buffer.from(bytes.buffer, i * PAGE_SIZE, PAGE_SIZE);
        if (!seen.equals(m.pageBytes(view.offset + i, PAGE_SIZE))) expect.fail(`${this}: page ${i} of view ${v} differs from the model`);
      }
    }
  }
  toString() {
    return `continue(view#${this.pick}, uffd ${this.uffd}, page ${this.page}, x${this.count})`;
  }
}

class TouchCmd extends ViewCmd {
  constructor(pick: number, readonly page: number, readonly write: number | undefined) {
    super(pick);
  }
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    const view = m.views[v];
    if (!view.live) return;
    const page = this.page % view.length;
    if (m.touchIsFatal(v, page)) return; // beyond the end of the file: SIGBUS, by design of mmap
    const expected = m.touchExpect(v, page);
    const uffd = view.uffd === -1 ? undefined : r.uffds[view.uffd];
    const touched = touchPages(r.views[v], [page], this.write === undefined ? undefined : { write: this.write });
    let done = false;
    let report: Awaited<typeof touched> | undefined;
    touched.then((rep) => {
      report = rep;
      done = true;
    }, () => (done = true));
    const faults: number[] = [];
    const deadline = Date.now() + SERVE_DEADLINE_MS;
    while (!done) {
      if (uffd) {
        for (const ev of uffd.readEvents()) {
          expect(ev.type).toBe('pagefault');
          if (ev.type !== 'pagefault') continue;
          faults.push(ev.address);
          expect(ev.minor, 'a MINOR fault').toBe(true);
          expect(ev.write).toBe(this.write !== undefined);
          uffd.continue(ev.address, PAGE_SIZE);
        }
      }
      if (Date.now() > deadline) {
        // Unblock the toucher before failing so that the process stays usable.
        uffd?.close();
        await touched.catch(() => {});
        throw new Error(`${this}: toucher still blocked after ${SERVE_DEADLINE_MS} ms; model expected ${JSON.stringify(expected)}`);
      }
      await new Promise((res) => setImmediate(res));
    }
    await touched;
    bump(r, `touch:${faults.length ? 'fault' : 'none'}`);
    expect(expected.faults, `${this} on view ${v} page ${page}: ${faults.length} faults`).toContain(faults.length);
    for (const a of faults) expect(a).toBe(r.views[v].address + page * PAGE_SIZE);
    if (this.write === undefined) expect(report!.checksum, `${this}: byte read`).toBe(expected.firstByte);
    m.applyTouch(v, page, this.write);
    if (!r.mem.read((view.offset + page) * PAGE_SIZE, PAGE_SIZE).equals(m.pageBytes(view.offset + page, PAGE_SIZE))) expect.fail(`${this}: the memfd page differs from the model`);
  }
  toString() {
    return `touch(view#${this.pick}, page ${this.page}${this.write === undefined ? '' : `, write ${this.write}`})`;
  }
}

class WriteCmd extends Cmd {
  constructor(readonly page: number, readonly value: number) {
    super();
  }
  async run(m: KernelModel, r: Real) {
    if (this.page >= m.size) return; // pwrite beyond the end would grow the file; truncate covers growth
    r.mem.write(this.page * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, this.value));
    m.write(this.page, this.value);
  }
  toString() {
    return `write(page ${this.page}, ${this.value})`;
  }
}

class PunchCmd extends Cmd {
  constructor(readonly page: number, readonly count: number) {
    super();
  }
  async run(m: KernelModel, r: Real) {
    r.mem.punchHole(this.page * PAGE_SIZE, this.count * PAGE_SIZE);
    m.punchHole(this.page, this.count);
  }
  toString() {
    return `punchHole(page ${this.page}, x${this.count})`;
  }
}

class TruncateCmd extends Cmd {
  constructor(readonly pages: number) {
    super();
  }
  async run(m: KernelModel, r: Real) {
    r.mem.truncate(this.pages * PAGE_SIZE);
    m.truncate(this.pages);
    expect(r.mem.size).toBe(this.pages * PAGE_SIZE);
  }
  toString() {
    return `truncate(${this.pages} pages)`;
  }
}

class DontneedCmd extends ViewCmd {
  constructor(pick: number, readonly page: number, readonly count: number) {
    super(pick);
  }
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    const view = m.views[v];
    if (!view.live) {
      expect(() => r.views[v].advise('dontneed')).toThrow(expect.objectContaining({ code: 'ERR_UFFD_CLOSED' }));
      return;
    }
    const page = this.page % view.length;
    const count = Math.min(this.count, view.length - page);
    r.views[v].advise('dontneed', page * PAGE_SIZE, count * PAGE_SIZE);
    m.dontneed(v, page, count);
  }
  toString() {
    return `dontneed(view#${this.pick}, page ${this.page}, x${this.count})`;
  }
}

class UnmapCmd extends ViewCmd {
  async run(m: KernelModel, r: Real) {
    const v = this.view(m);
    r.views[v].unmap();
    m.unmap(v);
    expect(r.views[v].buffer.byteLength).toBe(0);
  }
  toString() {
    return `unmap(view#${this.pick})`;
  }
}

class CloseUffdCmd extends Cmd {
  constructor(readonly uffd: number, readonly reopen: boolean) {
    super();
  }
  async run(m: KernelModel, r: Real) {
    if (this.reopen) {
      if (m.uffdOpen[this.uffd]) return;
      r.uffds[this.uffd] = Userfaultfd.open({ features: ['minorShmem'] });
      m.reopenUffd(this.uffd);
    } else {
      r.uffds[this.uffd].close();
      m.closeUffd(this.uffd);
    }
  }
  toString() {
    return `${this.reopen ? 'reopen' : 'close'}(uffd ${this.uffd})`;
  }
}

const pageArb = fc.integer({ min: 0, max: PAGES - 1 });
const countArb = fc.integer({ min: 1, max: 3 });
const pickArb = fc.nat(31);
const uffdArb = fc.integer({ min: 0, max: 1 });
const commands = [
  // Mostly views inside the file, now and then one that reaches beyond it.
  fc.integer({ min: 0, max: PAGES - 1 }).chain((o) => fc.integer({ min: 1, max: PAGES - o }).map((l) => new MapCmd(o, l))),
  fc.integer({ min: 0, max: PAGES - 1 }).chain((o) => fc.integer({ min: 1, max: PAGES - o }).map((l) => new MapCmd(o, l))),
  fc.tuple(fc.integer({ min: 0, max: PAGES }), fc.integer({ min: 1, max: PAGES })).map(([o, l]) => new MapCmd(o, l)),
  fc.tuple(pickArb, uffdArb).map(([p, u]) => new RegisterCmd(p, u)),
  fc.tuple(pickArb, uffdArb).map(([p, u]) => new RegisterCmd(p, u)),
  fc.tuple(pickArb, uffdArb).map(([p, u]) => new UnregisterCmd(p, u)),
  fc.tuple(pickArb, uffdArb, pageArb, countArb).map(([p, u, pg, c]) => new ContinueCmd(p, u, pg, c)),
  fc.tuple(pickArb, uffdArb, pageArb, countArb).map(([p, u, pg, c]) => new ContinueCmd(p, u, pg, c)),
  fc.tuple(pickArb, pageArb, fc.option(fc.integer({ min: 0, max: 255 }), { nil: undefined })).map(([p, pg, w]) => new TouchCmd(p, pg, w)),
  fc.tuple(pickArb, pageArb, fc.option(fc.integer({ min: 0, max: 255 }), { nil: undefined })).map(([p, pg, w]) => new TouchCmd(p, pg, w)),
  fc.tuple(pageArb, fc.integer({ min: 1, max: 250 })).map(([pg, val]) => new WriteCmd(pg, val)),
  fc.tuple(pageArb, countArb).map(([pg, c]) => new PunchCmd(pg, c)),
  fc.integer({ min: 1, max: PAGES + 2 }).map((n) => new TruncateCmd(n)),
  fc.tuple(pickArb, pageArb, countArb).map(([p, pg, c]) => new DontneedCmd(p, pg, c)),
  fc.nat(31).map((p) => new UnmapCmd(p)),
  fc.tuple(uffdArb, fc.boolean()).map(([u, re]) => new CloseUffdCmd(u, re)),
  uffdArb.map((u) => new CloseUffdCmd(u, true)),
  uffdArb.map((u) => new CloseUffdCmd(u, true)),
  fc.tuple(pickArb, pageArb, fc.option(fc.integer({ min: 0, max: 255 }), { nil: undefined })).map(([p, pg, w]) => new TouchCmd(p, pg, w)),
  fc.tuple(pageArb, fc.integer({ min: 1, max: 250 })).map(([pg, val]) => new WriteCmd(pg, val)),
  fc.tuple(pickArb, uffdArb).map(([p, u]) => new RegisterCmd(p, u)),
];

/** Seeds that once failed (from scripts/fresh-seeds.sh): replayed on every run. */
const REGRESSION_SEEDS: number[] = [];

async function runModel(seed: number, runs: number): Promise<void> {
  const watch = leakWatch();
  const stats: Record<string, number> = {};
  let steps = 0;
  await fc.assert(
    fc.asyncProperty(fc.subarray([...Array(PAGES).keys()]), fc.commands(commands, { maxCommands: 40, size: 'max' }), async (filled, cmds) => {
      const mem = Memfd.create(PAGES * PAGE_SIZE, { name: 'model' });
      for (const p of filled) mem.write(p * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, (p % 250) + 1));
      const real: Real = { mem, views: [], uffds: [Userfaultfd.open({ features: ['minorShmem'] }), Userfaultfd.open({ features: ['minorShmem'] })], log: [], stats };
      try {
        const model = new KernelModel(PAGES, filled);
        await fc.asyncModelRun(() => ({ model, real }), cmds);
        steps += [...cmds].filter((c) => (c as unknown as { hasRan?: boolean }).hasRan).length;
        // Every byte the model believes in is the memfd's: whole pages, every byte.
        for (let p = 0; p < model.size; p++) {
          const got = mem.read(p * PAGE_SIZE, PAGE_SIZE);
          if (!got.equals(model.pageBytes(p, PAGE_SIZE))) expect.fail(`page ${p}: memfd [${got[0]}, ${got[1]}, …] differs from the model's [${model.content[p]}, ${model.rest[p]}, …]`);
        }
      } finally {
        for (const u of real.uffds) u.close();
        mem.close();
      }
    }),
    { seed, numRuns: runs },
  );
  console.log(`model: seed ${seed}, ${runs} sequences, ${steps} commands, outcomes ${JSON.stringify(stats)}`);
  expect(watch.leaks()).toEqual({ fds: [], memfdMappings: 0 });
}

describe('model-based fuzzing against KernelModel', () => {
  it(`${RUNS} random command sequences agree with the model (seed printed)`, async () => {
    console.log(`model: FUZZ_SEED=${SEED} MODEL_RUNS=${RUNS}`);
    await runModel(SEED, RUNS);
  }, scaled(Number(process.env.FUZZ_TIMEOUT_MS ?? 120_000)));

  for (const seed of REGRESSION_SEEDS) {
    it(`regression seed ${seed} agrees with the model`, () => runModel(seed, RUNS), scaled(120_000));
  }
});

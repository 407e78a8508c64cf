// The core scenarios, small enough for valgrind. Valgrind runs one thread at
// a time, so a thread blocked in a userfault (a page fault, not a syscall)
// would keep the handler thread from ever running: the faults are therefore
// raised by a child process that is not under valgrind and sends its uffd
// here, and this process (under valgrind) serves them with readEvents and
// continue, then with a FaultHandler in each mode. Locally: handshake, memfd
// I/O, map, register, CONTINUE results (mapped, EEXIST, EFAULT, EINVAL), the
// native toucher on an unregistered view, fd passing, unmap and close.
//   npm run test:valgrind       (runs this file under valgrind)
//   node scripts/valgrind-scenarios.js   (the same scenarios without valgrind)
'use strict';
require('./usage').answerHelp(__filename);
const { spawn } = require('node:child_process');
const { join } = require('node:path');
const entry = join(__dirname, '..', 'dist', 'lib', 'index.js');
const { FaultHandler, FdSocket, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(entry);

const PAGES = 16;
const assert = (cond, what) => {
  if (!cond) throw new Error(`scenario failed: ${what}`);
};

/** A child (not traced) that maps the memfd, registers MINOR, sends its uffd and touches every page. */
async function remoteFaulter(mem, serve) {
  const [mine, theirs] = FdSocket.pair();
  const script = `
    const { FdSocket, Memfd, Userfaultfd, touchPages } = require(${JSON.stringify(entry)});
    const view = Memfd.fromFd(3).map();
    const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
    uffd.register(view, { minor: true });
    const sock = new FdSocket(4);
    sock.send(JSON.stringify({ address: view.address, length: view.length }), [uffd.fd]);
    sock.receive().then(() => touchPages(view, Array.from({ length: ${PAGES} }, (_, i) => i)))
      .then((r) => { sock.send(JSON.stringify({ checksum: r.checksum })); });
  `;
  const env = { ...process.env };
  delete env.LD_PRELOAD;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'inherit', 'inherit', mem.fd, theirs.fd], env });
  theirs.close();
  const hello = await mine.receive();
  const view = JSON.parse(hello.data.toString());
  const uffd = Userfaultfd.fromFd(hello.fds[0]);
  const done = (async () => {
    const msg = await mine.receive();
    return JSON.parse(msg.data.toString());
  })();
  mine.send('go');
  const result = await serve(uffd, view, done);
  const report = await done;
  assert(report.checksum === (PAGES * (PAGES + 1)) / 2, `remote checksum ${report.checksum}`);
  await new Promise((r) => child.once('exit', r));
  uffd.close();
  mine.close();
  return result;
}

function filled() {
  const mem = Memfd.create(PAGES * PAGE_SIZE);
  for (let p = 0; p < PAGES; p++) mem.write(p * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, p + 1));
  return mem;
}

async function rawServe() {
  const mem = filled();
  const faults = await remoteFaulter(mem, async (uffd, _view, done) => {
    let finished = false;
    done.then(() => (finished = true));
    let n = 0;
    while (!finished) {
      for (const ev of uffd.readEvents()) if (ev.type === 'pagefault') (n++, uffd.continue(ev.address, PAGE_SIZE));
      await new Promise((r) => setTimeout(r, 1));
    }
    return n;
  });
  assert(faults === PAGES, `raw faults ${faults}`);
  mem.close();
}

async function handler(mode) {
  const mem = filled();
  const stats = await remoteFaulter(mem, async (uffd, view, done) => {
    const h = new FaultHandler(uffd, { memfd: mem, mode, fetch: () => {} });
    h.present.mark(0, PAGES * PAGE_SIZE);
    h.attach({ ...view, offset: 0 }, { register: false }).start();
    await done;
    await h.stop();
    return h.stats();
  });
  assert(stats.resolved === PAGES, `${mode} resolved ${stats.resolved}`);
  mem.close();
}

async function local() {
  const mem = filled();
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  uffd.register(view, { minor: true });
  assert(uffd.continue(view.address, 2 * PAGE_SIZE) === 2 * PAGE_SIZE, 'CONTINUE maps');
  assert(new Uint8Array(view.buffer)[PAGE_SIZE] === 2, 'bytes after CONTINUE');
  assert(uffd.continue(view.address, PAGE_SIZE) === 0, 'EEXIST is 0');
  mem.punchHole(4 * PAGE_SIZE, PAGE_SIZE);
  try { uffd.continue(view.address + 4 * PAGE_SIZE, PAGE_SIZE); assert(false, 'EFAULT expected'); } catch (e) { assert(e.code === 'EFAULT', e.code); }
  mem.truncate(8 * PAGE_SIZE);
  try { uffd.continue(view.address + 8 * PAGE_SIZE, PAGE_SIZE); assert(false, 'EINVAL expected'); } catch (e) { assert(e.code === 'EINVAL', e.code); }
  uffd.unregister(view);
  const report = await touchPages(view, [0, 1, 2, 3]);
  assert(report.checksum === 1 + 2 + 3 + 4, `toucher checksum ${report.checksum}`);
  view.unmap();
  uffd.close();
  mem.close();
}

async function passing() {
  const [a, b] = FdSocket.pair();
  const mem = Memfd.create(PAGE_SIZE);
  a.send('x', [mem.fd]);
  const msg = await b.receive();
  assert(msg.fds.length === 1, 'fd received');
  const copy = Memfd.fromFd(msg.fds[0], { owned: true });
  copy.write(0, Buffer.from('hi'));
  assert(mem.read(0, 2).toString() === 'hi', 'same file');
  copy.close();
  mem.close();
  a.close();
  b.close();
}

(async () => {
  await local();
  await passing();
  await rawServe();
  await handler('event-loop');
  await handler('native');
  console.log('valgrind scenarios: ok');
})().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

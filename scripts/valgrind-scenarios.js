// The core scenarios, small enough for valgrind: open and handshake, memfd
// write/read, map, register MINOR, a native toucher faulting while the event
// loop serves with readEvents/continue, EEXIST, a FaultHandler in each mode,
// fd passing over a socket pair, punch-hole/truncate errors, unmap and close.
'use strict';
const { join } = require('node:path');
const { FaultHandler, FdSocket, Memfd, PAGE_SIZE, Userfaultfd, touchPages } = require(join(__dirname, '..', 'dist', 'lib', 'index.js'));

const assert = (cond, what) => {
  if (!cond) throw new Error(`scenario failed: ${what}`);
};

async function rawServe(pages) {
  const mem = Memfd.create(pages * PAGE_SIZE);
  for (let p = 0; p < pages; p++) mem.write(p * PAGE_SIZE, Buffer.alloc(PAGE_SIZE, p + 1));
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'threadId'] });
  uffd.register(view, { minor: true });
  let done = false;
  const touched = touchPages(view, [...Array(pages).keys()]).finally(() => (done = true));
  let faults = 0;
  while (!done) {
    for (const ev of uffd.readEvents()) if (ev.type === 'pagefault') (faults++, uffd.continue(ev.address, PAGE_SIZE));
    await new Promise((r) => setImmediate(r));
  }
  const report = await touched;
  assert(faults === pages && report.checksum === (pages * (pages + 1)) / 2, 'raw serve');
  assert(uffd.continue(view.address, PAGE_SIZE) === 0, 'EEXIST is 0');
  mem.punchHole(0, PAGE_SIZE);
  try { uffd.continue(view.address, PAGE_SIZE); assert(false, 'EFAULT expected'); } catch (e) { assert(e.code === 'EFAULT', e.code); }
  mem.truncate(PAGE_SIZE);
  try { uffd.continue(view.address + PAGE_SIZE, PAGE_SIZE); assert(false, 'EINVAL expected'); } catch (e) { assert(e.code === 'EINVAL', e.code); }
  uffd.close();
  mem.close();
}

async function handler(mode, pages) {
  const mem = Memfd.create(pages * PAGE_SIZE);
  const view = mem.map();
  const uffd = Userfaultfd.open({ features: ['minorShmem', 'missingShmem', 'threadId'] });
  const h = new FaultHandler(uffd, { memfd: mem, mode, fetch: (f) => void mem.write(f.offset, Buffer.alloc(PAGE_SIZE, (f.offset / PAGE_SIZE) + 1)) });
  h.attach(view, { missing: true }).start();
  const report = await touchPages(view, [...Array(pages).keys()]);
  assert(report.checksum === (pages * (pages + 1)) / 2, `${mode} handler bytes`);
  await h.stop();
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
  await rawServe(16);
  await handler('event-loop', 16);
  await handler('native', 16);
  await passing();
  console.log('valgrind scenarios: ok');
})().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});

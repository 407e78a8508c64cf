#!/usr/bin/env node
// Kernel and architecture matrix: boots Debian kernels (x86-64 and arm64)
// under QEMU and runs the vitest suite plus the fault smoke test inside each
// guest against this checkout, then prints per kernel what passed, failed and
// was skipped (with the kernel's reason) and how long it took.
//
//   npm run test:vm                        whole matrix, host row first
//   npm run test:vm -- --only=5.10,arm64   rows whose id contains any of these
//   npm run test:vm -- --tests=test/core   vitest filters passed to the guests
//   npm run test:vm -- --no-kvm            skip the KVM attempt, TCG only
//   npm run test:vm -- --timeout=SECONDS   a guest's time limit (default 1800)
//
// A run of every row with each row's own tests writes its table into
// docs/vm-matrix.md (between the vm-matrix markers).
// Needs root (apt-get, QEMU's 9p export of /). Downloads are cached under
// $UFFD_VM_CACHE (default ~/.cache/userfaultfd-vm), never in the repository.
'use strict';

const { execFileSync, spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { usage } = require('../usage');

const repo = path.resolve(__dirname, '..', '..');
const cacheDir = process.env.UFFD_VM_CACHE || path.join(os.homedir(), '.cache', 'userfaultfd-vm');
const debian = 'http://deb.debian.org/debian';
const keyring = '/usr/share/keyrings/debian-archive-keyring.gpg';

// What each row runs unless --tests says otherwise. The host runs everything.
// Guests run under software emulation, where a test file takes about 10 times
// as long as on the host (x86-64) or about 25 times (arm64), so they run the
// suites that exercise the kernel (dirty tracking and live snapshots show
// their kernel-version skips there); the benchmark, migration and soak suites
// measure speed or run for minutes and stay on the host.
const GUEST_TESTS_X86 = ['test/core', 'test/handler', 'test/platform', 'test/dirty', 'test/snapshot'];
const GUEST_TESTS_ARM64 = ['test/core', 'test/platform'];

/** Rows of the matrix. `meta` is the Debian metapackage whose dependency names the kernel. */
const TARGETS = [
  { id: 'host', arch: 'x86_64', tests: [] },
  { id: 'x86_64-5.10-bullseye', arch: 'x86_64', suite: 'bullseye', debArch: 'amd64', meta: 'linux-image-amd64', tests: GUEST_TESTS_X86 },
  { id: 'x86_64-6.1-bookworm', arch: 'x86_64', suite: 'bookworm', debArch: 'amd64', meta: 'linux-image-amd64', tests: GUEST_TESTS_X86 },
  { id: 'x86_64-6.12-trixie', arch: 'x86_64', suite: 'trixie', debArch: 'amd64', meta: 'linux-image-amd64', tests: GUEST_TESTS_X86 },
  { id: 'arm64-6.12-4k-trixie', arch: 'aarch64', suite: 'trixie', debArch: 'arm64', meta: 'linux-image-arm64', tests: GUEST_TESTS_ARM64 },
  { id: 'arm64-6.12-16k-trixie', arch: 'aarch64', suite: 'trixie', debArch: 'arm64', meta: 'linux-image-arm64-16k', tests: GUEST_TESTS_ARM64 },
];

/** The vitest filters of a row: --tests when given, else the row's own. */
const testsFor = (target) => (args.tests ? args.tests : target.tests);

/** Modules the guests load; their dependencies come from modules.dep. */
const WANTED_MODULES = ['virtio_pci', 'virtio_mmio', '9pnet_virtio', '9p', 'overlay'];
/** The arm64 userland: Node, busybox and setpriv (util-linux, for the unprivileged tests) with their dependency closure. */
const ARM64_USERLAND = ['nodejs', 'busybox-static', 'util-linux'];

const args = parseArgs(process.argv.slice(2));
const running = new Set();

function parseArgs(argv) {
  const out = { only: [], tests: undefined, kvm: true, timeout: 1800 };
  for (const a of argv) {
    if (a.startsWith('--only=')) out.only = a.slice(7).split(',').filter(Boolean);
    else if (a.startsWith('--tests=')) out.tests = a.slice(8).split(',').filter(Boolean);
    else if (a === '--no-kvm') out.kvm = false;
    else if (a.startsWith('--timeout=')) out.timeout = Number(a.slice(10));
    else if (a === '--help' || a === '-h') {
      console.log(usage(__filename));
      process.exit(0);
    } else {
      console.error(`unknown argument ${a}\n\n${usage(__filename)}`);
      process.exit(2);
    }
  }
  return out;
}

// The VMs die with this process, whatever ends it.
function killAll() {
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  running.clear();
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    killAll();
    process.exit(128 + os.constants.signals[sig]);
  });
}
process.on('uncaughtException', (err) => {
  killAll();
  console.error(err);
  process.exit(1);
});

function log(msg) {
  process.stderr.write(`[vm] ${msg}\n`);
}

function run(cmd, argv, opts = {}) {
  return execFileSync(cmd, argv, { encoding: 'utf8', maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

function has(cmd) {
  try {
    run('sh', ['-c', `command -v ${cmd}`]);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- host tools

const HOST_TOOLS = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-system-aarch64': 'qemu-system-arm',
  busybox: 'busybox-static',
  cpio: 'cpio',
  xz: 'xz-utils',
  zstd: 'zstd',
  depmod: 'kmod',
  'aarch64-linux-gnu-g++': 'g++-aarch64-linux-gnu',
};

function ensureHostTools(targets) {
  const needArm = targets.some((t) => t.arch === 'aarch64');
  const missing = Object.entries(HOST_TOOLS)
    .filter(([cmd]) => needArm || !/aarch64/.test(cmd))
    .filter(([cmd]) => !has(cmd) || (cmd === 'busybox' && !isStatic(run('sh', ['-c', 'command -v busybox']).trim())))
    .map(([, pkg]) => pkg);
  if (!missing.length) return;
  log(`installing from Debian: ${missing.join(' ')}`);
  run('apt-get', ['update', '-q']);
  run('apt-get', ['install', '-y', '-q', '--no-install-recommends', ...missing], { env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
}

function isStatic(file) {
  // A static binary has no PT_INTERP program header: readelf may be absent, so ask the loader.
  try {
    run('ldd', [file]);
    return false;
  } catch {
    return true;
  }
}

// ------------------------------------------------- private apt (host untouched)

const aptDir = path.join(cacheDir, 'apt');

/**
 * apt-get/apt-cache options that point every list, cache and source at
 * aptDir, so the extra suites and the arm64 architecture never reach the
 * host's own apt configuration or dpkg database.
 */
function aptOptions(arch = 'amd64', archives = path.join(aptDir, 'archives')) {
  const o = {
    'Dir::Etc::sourcelist': path.join(aptDir, 'sources.list'),
    'Dir::Etc::sourceparts': path.join(aptDir, 'sources.list.d'),
    'Dir::Etc::preferencesparts': path.join(aptDir, 'preferences.d'),
    'Dir::State::Lists': path.join(aptDir, 'lists'),
    'Dir::State::status': path.join(aptDir, 'status'),
    'Dir::Cache::archives': archives,
    'Dir::Cache::pkgcache': '',
    'Dir::Cache::srcpkgcache': '',
    'APT::Architecture': arch,
    'APT::Sandbox::User': 'root',
    'APT::Install-Recommends': 'false',
  };
  const flat = Object.entries(o).flatMap(([k, v]) => ['-o', `${k}=${v}`]);
  return [...flat, '-o', 'APT::Architectures::=amd64', '-o', 'APT::Architectures::=arm64'];
}

function setupPrivateApt(suites) {
  for (const d of ['lists/partial', 'archives/partial', 'sources.list.d', 'preferences.d']) fs.mkdirSync(path.join(aptDir, d), { recursive: true });
  if (!fs.existsSync(path.join(aptDir, 'status'))) fs.writeFileSync(path.join(aptDir, 'status'), '');
  const sources = [...suites].sort().map((s) => `deb [arch=amd64,arm64 signed-by=${keyring}] ${debian} ${s} main\n`).join('');
  const listFile = path.join(aptDir, 'sources.list');
  const stamp = path.join(aptDir, 'updated');
  const stale = !fs.existsSync(stamp) || Date.now() - fs.statSync(stamp).mtimeMs > 7 * 86400e3;
  if (stale || !fs.existsSync(listFile) || fs.readFileSync(listFile, 'utf8') !== sources) {
    fs.writeFileSync(listFile, sources);
    log(`apt-get update (private lists: ${[...suites].join(', ')})`);
    run('apt-get', [...aptOptions(), '-q', 'update']);
    fs.writeFileSync(stamp, new Date().toISOString());
  }
}

/** The versioned package a metapackage depends on, e.g. linux-image-6.1.0-50-amd64. */
function resolveKernelPackage(meta, suite, debArch) {
  const text = run('apt-cache', [...aptOptions(debArch), 'show', `${meta}:${debArch}/${suite}`]);
  const m = /^Depends:.*?\b(linux-image-[^\s,(]+)/m.exec(text);
  if (!m) throw new Error(`cannot resolve ${meta}/${suite}: no linux-image dependency`);
  return m[1];
}

function downloadDeb(pkg, debArch, suite) {
  const dir = path.join(cacheDir, 'debs');
  fs.mkdirSync(dir, { recursive: true });
  const have = fs.readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(`_${debArch}.deb`));
  if (have) return path.join(dir, have);
  log(`downloading ${pkg}:${debArch} (${suite})`);
  run('apt-get', [...aptOptions(debArch), '-q', 'download', `${pkg}:${debArch}/${suite}`], { cwd: dir });
  const got = fs.readdirSync(dir).find((f) => f.startsWith(`${pkg}_`) && f.endsWith(`_${debArch}.deb`));
  if (!got) throw new Error(`apt-get download ${pkg} left no .deb`);
  return path.join(dir, got);
}

/** Extracts a .deb into `into`, keeping the usr-merge symlinks (/lib -> usr/lib) that are already there. */
function extractDeb(deb, into) {
  fs.mkdirSync(into, { recursive: true });
  run('sh', ['-c', 'dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink -C "$2"', 'sh', deb, into]);
}

// ------------------------------------------------------------ kernels, initrd

function prepareKernel(target) {
  const pkg = resolveKernelPackage(target.meta, target.suite, target.debArch);
  const dir = path.join(cacheDir, 'kernels', pkg);
  if (!fs.existsSync(path.join(dir, '.done'))) {
    const deb = downloadDeb(pkg, target.debArch, target.suite);
    fs.rmSync(dir, { recursive: true, force: true });
    log(`extracting ${path.basename(deb)}`);
    extractDeb(deb, dir);
    const rel = fs.readdirSync(path.join(dir, 'boot')).find((f) => f.startsWith('vmlinuz-')).slice('vmlinuz-'.length);
    // The package ships no modules.dep (depmod runs at install time); the
    // host's depmod reads only <base>/lib/modules, so point that at usr/lib.
    if (!fs.existsSync(path.join(dir, 'lib/modules'))) {
      fs.mkdirSync(path.join(dir, 'lib'), { recursive: true });
      fs.symlinkSync('../usr/lib/modules', path.join(dir, 'lib/modules'));
    }
    run('depmod', ['-b', dir, rel]);
    fs.writeFileSync(path.join(dir, '.done'), '');
  }
  const vmlinuz = fs.readdirSync(path.join(dir, 'boot')).find((f) => f.startsWith('vmlinuz-'));
  const release = vmlinuz.slice('vmlinuz-'.length);
  const modDir = path.join(dir, 'lib/modules', release);
  return { pkg, release, dir, vmlinuz: path.join(dir, 'boot', vmlinuz), modDir };
}

/** Wanted modules and their dependencies, dependencies first (modules.dep lists the full closure). */
function moduleLoadOrder(modDir) {
  const deps = new Map();
  for (const line of fs.readFileSync(path.join(modDir, 'modules.dep'), 'utf8').split('\n')) {
    const [mod, rest] = line.split(':');
    if (mod) deps.set(mod.trim(), (rest || '').trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map([...deps.keys()].map((p) => [path.basename(p).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_'), p]));
  const order = [];
  const visit = (p) => {
    if (order.includes(p)) return;
    for (const d of deps.get(p) || []) visit(d);
    order.push(p);
  };
  for (const name of WANTED_MODULES) if (byName.has(name)) visit(byName.get(name));
  return order;
}

function buildInitramfs(kernel, busybox, key) {
  const out = path.join(cacheDir, 'initrd', `${key}.cpio.gz`);
  const initSrc = path.join(__dirname, 'init.sh');
  if (fs.existsSync(out) && fs.statSync(out).mtimeMs > fs.statSync(initSrc).mtimeMs) return out;
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-initrd-'));
  try {
    fs.mkdirSync(path.join(stage, 'bin'));
    fs.mkdirSync(path.join(stage, 'modules'));
    fs.copyFileSync(busybox, path.join(stage, 'bin/busybox'));
    fs.chmodSync(path.join(stage, 'bin/busybox'), 0o755);
    fs.copyFileSync(initSrc, path.join(stage, 'init'));
    fs.chmodSync(path.join(stage, 'init'), 0o755);
    const names = [];
    for (const rel of moduleLoadOrder(kernel.modDir)) {
      const src = path.join(kernel.modDir, rel);
      const name = path.basename(rel).replace(/\.(xz|zst|gz)$/, '');
      const dst = path.join(stage, 'modules', name);
      // busybox insmod wants plain ELF objects.
      if (src.endsWith('.xz')) run('sh', ['-c', 'xz -dc "$1" > "$2"', 'sh', src, dst]);
      else if (src.endsWith('.zst')) run('sh', ['-c', 'zstd -qdc "$1" > "$2"', 'sh', src, dst]);
      else if (src.endsWith('.gz')) run('sh', ['-c', 'gzip -dc "$1" > "$2"', 'sh', src, dst]);
      else fs.copyFileSync(src, dst);
      names.push(name);
    }
    fs.writeFileSync(path.join(stage, 'modules/order'), names.join('\n') + '\n');
    fs.mkdirSync(path.dirname(out), { recursive: true });
    run('sh', ['-c', 'cd "$1" && find . | cpio -o -H newc --quiet | gzip -1 > "$2"', 'sh', stage, out]);
    log(`initramfs ${path.basename(out)}: modules ${names.map((n) => n.replace(/\.ko$/, '')).join(' ')}`);
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
  return out;
}

/** QEMU's -kernel on arm64 takes a raw or gzip Image; unwrap an EFI zboot image if Debian ships one. */
function bootableKernel(kernel, arch) {
  if (arch !== 'aarch64') return kernel.vmlinuz;
  const buf = fs.readFileSync(kernel.vmlinuz);
  if (buf.subarray(4, 8).toString('latin1') !== 'zimg') return kernel.vmlinuz;
  const offset = buf.readUInt32LE(8);
  const size = buf.readUInt32LE(12);
  const comp = buf.subarray(24, 32).toString('latin1').replace(/\0+$/, '');
  const out = path.join(kernel.dir, 'Image');
  if (!fs.existsSync(out)) {
    const payload = path.join(kernel.dir, `payload.${comp}`);
    fs.writeFileSync(payload, buf.subarray(offset, offset + size));
    const tool = { gzip: 'gzip -dc', zstd: 'zstd -qdc', xz: 'xz -dc', lzma: 'xz -dc --format=lzma' }[comp];
    if (!tool) throw new Error(`EFI zboot kernel compressed with ${comp}: not supported`);
    run('sh', ['-c', `${tool} "$1" > "$2"`, 'sh', payload, out]);
  }
  return out;
}

// -------------------------------------------------------------- arm64 parts

function prepareArm64Userland(suite) {
  const root = path.join(cacheDir, `rootfs-arm64-${suite}`);
  const marker = path.join(root, '.done');
  // The marker names the packages, so a changed list rebuilds the tree.
  if (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8') === ARM64_USERLAND.join(' ')) return root;
  const archives = path.join(cacheDir, `debs-arm64-${suite}`);
  fs.mkdirSync(path.join(archives, 'partial'), { recursive: true });
  log(`downloading the arm64 userland (${ARM64_USERLAND.join(', ')} and dependencies, ${suite})`);
  // With the private, empty dpkg status, "install --download-only" yields the full dependency closure.
  run('apt-get', [...aptOptions('arm64', archives), '-q', '-y', '-t', suite, 'install', '--download-only', ...ARM64_USERLAND.map((p) => `${p}:arm64`)]);
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(path.join(root, 'usr'), { recursive: true });
  for (const d of ['bin', 'sbin', 'lib']) {
    fs.mkdirSync(path.join(root, 'usr', d), { recursive: true });
    fs.symlinkSync(`usr/${d}`, path.join(root, d));
  }
  for (const deb of fs.readdirSync(archives).filter((f) => f.endsWith('.deb'))) extractDeb(path.join(archives, deb), root);
  if (!fs.existsSync(path.join(root, 'usr/bin/sh'))) fs.symlinkSync('busybox', path.join(root, 'usr/bin/sh'));
  for (const d of ['proc', 'sys', 'dev', 'tmp', 'root']) fs.mkdirSync(path.join(root, d), { recursive: true });
  fs.writeFileSync(marker, ARM64_USERLAND.join(' '));
  return root;
}

function arm64Busybox(suite) {
  const dir = path.join(cacheDir, `busybox-arm64-${suite}`);
  const bin = path.join(dir, 'bin/busybox');
  if (!fs.existsSync(bin)) {
    fs.rmSync(dir, { recursive: true, force: true });
    extractDeb(downloadDeb('busybox-static', 'arm64', suite), dir);
    if (!fs.existsSync(bin)) {
      fs.mkdirSync(path.dirname(bin), { recursive: true });
      fs.symlinkSync('../usr/bin/busybox', bin);
    }
  }
  return fs.realpathSync(bin);
}

function crossCompileAddon() {
  const out = path.join(cacheDir, 'addon-arm64', 'userfaultfd.node');
  const sources = [path.join(repo, 'binding.gyp'), ...fs.readdirSync(path.join(repo, 'native')).map((f) => path.join(repo, 'native', f))];
  const newest = Math.max(...sources.map((f) => fs.statSync(f).mtimeMs));
  if (fs.existsSync(out) && fs.statSync(out).mtimeMs > newest) return out;
  log('cross-compiling the addon for arm64');
  run('bash', [path.join(__dirname, 'cross-compile-arm64.sh'), out], { stdio: ['ignore', 'pipe', 'inherit'] });
  return out;
}

/**
 * vitest's bundler and CSS tools are native packages installed for x64 only;
 * fetch the arm64 builds of the same versions from npm (cached) so the arm64
 * guests can run vitest too. Returns a directory laid out like node_modules.
 */
function arm64NativePackages() {
  const out = path.join(cacheDir, 'npm-arm64', 'node_modules');
  const nm = path.join(repo, 'node_modules');
  const dirs = fs.readdirSync(nm).flatMap((d) => (d.startsWith('@') ? fs.readdirSync(path.join(nm, d)).map((s) => `${d}/${s}`) : [d]));
  for (const name of dirs.filter((d) => /linux-x64-gnu$/.test(d))) {
    const armName = name.replace(/linux-x64-gnu$/, 'linux-arm64-gnu');
    const version = JSON.parse(fs.readFileSync(path.join(nm, name, 'package.json'), 'utf8')).version;
    const dest = path.join(out, armName);
    const stamp = path.join(dest, '.version');
    if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === version) continue;
    log(`fetching ${armName}@${version} from npm for the arm64 guests`);
    const tgzDir = path.join(cacheDir, 'npm-arm64');
    // npm pack writes into its cwd, which on a machine that never ran the matrix does not exist yet.
    fs.mkdirSync(tgzDir, { recursive: true });
    const tgz = run('npm', ['pack', '--silent', `${armName}@${version}`], { cwd: tgzDir }).trim().split('\n').pop();
    fs.rmSync(dest, { recursive: true, force: true });
    fs.mkdirSync(dest, { recursive: true });
    run('tar', ['-xzf', path.join(tgzDir, tgz), '-C', dest, '--strip-components=1']);
    fs.writeFileSync(stamp, version);
  }
  return out;
}

// -------------------------------------------------------------------- guests

function shellQuote(s) {
  return `'${String(s).replace(/'/g, `'\\''`)}'`;
}

const PROBE_JS = "process.stdout.write(JSON.stringify(require('./dist/lib').probe(), null, 2))";

function jobScript(target, results) {
  const r = '/uffd-vm-results';
  // Time bounds x3 under emulation: the 13-worker lifecycle test took 36 to 60 s
  // of its 60 s on the arm64 guests (1.4 s on the host).
  const env = 'export HOME=/tmp CI=true TERM=dumb NO_COLOR=1 UFFD_TEST_DIST_PREBUILT=1 UFFD_TEST_TIME_SCALE=3';
  const lines = ['set -u', `cd ${shellQuote(repo)} || exit 1`, env, 'export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'];
  if (target.arch === 'aarch64') {
    // The repository is overlaid in the guest: these copies never reach the host.
    lines.push('mkdir -p build/Release', `cp ${r}/userfaultfd.node build/Release/userfaultfd.node`);
    lines.push(`cp -r ${r}/npm-arm64/. node_modules/`);
  }
  lines.push(`node -p 'process.version + " " + process.arch' > ${r}/node.txt 2>&1`);
  lines.push(`node -e ${shellQuote(PROBE_JS)} > ${r}/probe.json 2> ${r}/probe.err`);
  lines.push(`if [ -f dist/lib/cli.js ]; then node dist/lib/cli.js doctor > ${r}/doctor.txt 2>&1; fi`);
  const filters = testsFor(target).map(shellQuote).join(' ');
  lines.push(`node node_modules/vitest/vitest.mjs run ${filters} --reporter=default --reporter=json --outputFile.json=${r}/vitest.json > ${r}/tests.log 2>&1`);
  lines.push(`echo $? > ${r}/tests.rc`);
  lines.push(`node scripts/vm/smoke.js > ${r}/smoke.json 2> ${r}/smoke.log`, `echo $? > ${r}/smoke.rc`, 'sync');
  fs.writeFileSync(path.join(results, 'job.sh'), lines.join('\n') + '\n');
}

function qemuCommand(target, kernelImage, initrd, results, accel, rootfs) {
  const share = (tag, dir, ro) => ['-virtfs', `local,path=${dir},mount_tag=${tag},security_model=none,multidevs=remap${ro ? ',readonly=on' : ''}`];
  const smp = String(process.env.UFFD_VM_SMP || 2);
  const mem = process.env.UFFD_VM_MEM || '3G';
  if (target.arch === 'x86_64') {
    return ['qemu-system-x86_64', [
      '-accel', accel, '-cpu', accel === 'kvm' ? 'host' : 'max', '-smp', smp, '-m', mem,
      '-nographic', '-no-reboot', '-kernel', kernelImage, '-initrd', initrd,
      '-append', `console=ttyS0 panic=-1 quiet loglevel=3 hugepages=4 uffdvm.repo=${repo}`,
      ...share('hostroot', '/', true), ...share('repo', repo, true), ...share('results', results, false),
    ]];
  }
  // Not `-cpu max`: under QEMU 7.2's emulation of it, Node on the 16 KiB kernel
  // crashed in code that never loads the addon (the vitest main process) and
  // jumped into zeroed memory in a test worker; a Neoverse-N1 (ARMv8.2, 4/16/64
  // KiB granules, no pointer authentication or LPA2) ran the same suite cleanly.
  return ['qemu-system-aarch64', [
    '-M', 'virt', '-accel', 'tcg', '-cpu', process.env.UFFD_VM_ARM64_CPU || 'neoverse-n1', '-smp', smp, '-m', mem,
    '-nographic', '-no-reboot', '-kernel', kernelImage, '-initrd', initrd,
    '-append', `console=ttyAMA0 panic=-1 quiet loglevel=3 hugepages=4 uffdvm.repo=${repo}`,
    ...share('hostroot', rootfs, true), ...share('repo', repo, true), ...share('results', results, false),
  ]];
}

/** Boots one guest; resolves with how it ended. `bootTimeout` bounds the wait for init's first line. */
function boot([cmd, argv], consoleLog, { bootTimeout, totalTimeout }) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    const logFile = fs.createWriteStream(consoleLog);
    let text = '';
    let sawInit = false;
    let verdict;
    const finish = (v) => {
      if (!verdict) verdict = v;
      child.kill('SIGKILL');
    };
    const onData = (chunk) => {
      logFile.write(chunk);
      text += chunk.toString('latin1');
      if (!sawInit && text.includes('UFFD-VM: init')) {
        sawInit = true;
        log(`  guest up after ${((Date.now() - started) / 1000).toFixed(1)} s`);
      }
      if (text.includes('UFFD-VM: setup-failed')) finish('setup-failed');
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    const bootTimer = setTimeout(() => sawInit || finish('boot-timeout'), bootTimeout * 1000);
    const totalTimer = setTimeout(() => finish('timeout'), totalTimeout * 1000);
    child.on('exit', (code, signal) => {
      clearTimeout(bootTimer);
      clearTimeout(totalTimer);
      running.delete(child);
      logFile.end();
      const done = /UFFD-VM: job-done rc=(\d+)/.exec(text);
      resolve({
        verdict: verdict || (done ? 'done' : `qemu exited ${code ?? signal}`),
        seconds: (Date.now() - started) / 1000,
        console: text,
      });
    });
  });
}

let kvmUsable = args.kvm && fs.existsSync('/dev/kvm') ? undefined : false;

async function runGuest(target) {
  const kernel = prepareKernel(target);
  const results = fs.mkdtempSync(path.join(cacheDir, 'runs', `${target.id}-`));
  let rootfs;
  let busybox = '/bin/busybox';
  if (target.arch === 'aarch64') {
    rootfs = prepareArm64Userland(target.suite);
    busybox = arm64Busybox(target.suite);
    fs.copyFileSync(crossCompileAddon(), path.join(results, 'userfaultfd.node'));
    fs.cpSync(arm64NativePackages(), path.join(results, 'npm-arm64'), { recursive: true });
  } else {
    busybox = fs.realpathSync(run('sh', ['-c', 'command -v busybox']).trim());
  }
  const initrd = buildInitramfs(kernel, busybox, kernel.pkg);
  const image = bootableKernel(kernel, target.arch);
  jobScript(target, results);
  const consoleLog = path.join(results, 'console.log');

  let accel = 'tcg';
  let outcome;
  if (target.arch === 'x86_64' && kvmUsable !== false) {
    log(`  trying KVM (falls back to TCG if the guest is not up in 20 s)`);
    outcome = await boot(qemuCommand(target, image, initrd, results, 'kvm', rootfs), consoleLog, { bootTimeout: 20, totalTimeout: args.timeout });
    if (outcome.verdict === 'boot-timeout' || /qemu exited/.test(outcome.verdict)) {
      log(`  KVM: ${outcome.verdict}; using TCG from now on`);
      kvmUsable = false;
      outcome = undefined;
    } else {
      kvmUsable = true;
      accel = 'kvm';
    }
  }
  if (!outcome) outcome = await boot(qemuCommand(target, image, initrd, results, 'tcg', rootfs), consoleLog, { bootTimeout: 180, totalTimeout: args.timeout });
  // Inputs copied for the guest are cached elsewhere; keep only what it produced.
  fs.rmSync(path.join(results, 'npm-arm64'), { recursive: true, force: true });
  return { kernel, results, accel, outcome };
}

// ------------------------------------------------------------------- results

function readJson(file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Counts from vitest's JSON report; skip reasons come from itWith's "[skipped: ...]" suffix. */
function summarizeVitest(report) {
  const tests = (report?.testResults || []).flatMap((f) => f.assertionResults.map((a) => ({ file: path.relative(repo, f.name), ...a })));
  const skipped = tests.filter((t) => t.status === 'pending' || t.status === 'skipped' || t.status === 'todo');
  const reasons = {};
  for (const t of skipped) {
    const m = /\[skipped: (.*)\]$/.exec(t.title);
    const reason = m ? m[1] : 'skipped without a stated reason';
    reasons[reason] = (reasons[reason] || 0) + 1;
  }
  const out = {
    // Which suites ran (test/core -> core), for the table.
    suites: [...new Set(tests.map((t) => t.file.split(path.sep)[1]))].sort(),
    passed: tests.filter((t) => t.status === 'passed').length,
    failed: tests.filter((t) => t.status === 'failed').length,
    skipped: skipped.length,
    skipReasons: reasons,
    failures: tests.filter((t) => t.status === 'failed').map((t) => `${t.file}: ${t.fullName}: ${(t.failureMessages || [''])[0].split('\n')[0]}`),
    suiteErrors: (report?.testResults || []).filter((f) => f.status === 'failed' && !f.assertionResults.length).map((f) => `${path.relative(repo, f.name)}: ${f.message}`),
  };
  // A test worker that dies leaves its remaining tests "pending", which would
  // read as skips: vitest's own verdict catches that.
  if (report && report.success === false && !out.failed && !out.suiteErrors.length) {
    out.suiteErrors.push('vitest failed outside any test (a crashed worker or an unhandled error: see tests.log)');
  }
  return out;
}

function summarizeSmoke(report) {
  const tests = (report?.tests || []).map((t) => ({ ...t, name: `smoke: ${t.name}` }));
  const skipped = tests.filter((t) => t.status === 'skipped');
  const reasons = {};
  for (const t of skipped) reasons[t.reason] = (reasons[t.reason] || 0) + 1;
  return {
    passed: tests.filter((t) => t.status === 'passed').length,
    failed: tests.filter((t) => t.status === 'failed').length,
    skipped: skipped.length,
    skipReasons: reasons,
    failures: tests.filter((t) => t.status === 'failed').map((t) => `${t.name}: ${t.error}`),
    suiteErrors: [],
  };
}

/** The vitest suite plus the smoke test, counted together. */
function summarize(results) {
  const smokeReport = readJson(path.join(results, 'smoke.json'));
  const smoke = summarizeSmoke(smokeReport);
  if (!smokeReport) smoke.suiteErrors.push('the smoke test wrote no report (see smoke.log)');
  const report = readJson(path.join(results, 'vitest.json'));
  const vitest = summarizeVitest(report);
  if (!report) vitest.suiteErrors.push('vitest wrote no report (see tests.log)');
  const parts = [vitest, smoke];
  const out = { passed: 0, failed: 0, skipped: 0, skipReasons: {}, failures: [], suiteErrors: [], vitest, smoke };
  for (const p of parts) {
    out.passed += p.passed;
    out.failed += p.failed;
    out.skipped += p.skipped;
    for (const [k, n] of Object.entries(p.skipReasons)) out.skipReasons[k] = (out.skipReasons[k] || 0) + n;
    out.failures.push(...p.failures);
    out.suiteErrors.push(...p.suiteErrors);
  }
  return out;
}

function known(probe) {
  return Object.keys(probe?.features || {});
}

function offered(probe) {
  if (!probe) return [];
  return Object.entries(probe.features || {}).filter(([, on]) => on).map(([name]) => name);
}

async function runHost() {
  const results = fs.mkdtempSync(path.join(cacheDir, 'runs', 'host-'));
  const started = Date.now();
  const node = process.execPath;
  const probeText = run(node, ['-e', PROBE_JS], { cwd: repo });
  fs.writeFileSync(path.join(results, 'probe.json'), probeText);
  if (fs.existsSync(path.join(repo, 'dist/lib/cli.js'))) {
    try {
      fs.writeFileSync(path.join(results, 'doctor.txt'), run(node, ['dist/lib/cli.js', 'doctor'], { cwd: repo }));
    } catch (err) {
      fs.writeFileSync(path.join(results, 'doctor.txt'), String(err.stdout || err));
    }
  }
  const child = (argv, out, err) => new Promise((resolve) => {
    const c = spawn(node, argv, {
      cwd: repo, stdio: ['ignore', fs.openSync(path.join(results, out), 'w'), fs.openSync(path.join(results, err), 'w')],
      env: { ...process.env, NO_COLOR: '1', UFFD_TEST_DIST_PREBUILT: '1' },
    });
    running.add(c);
    c.on('exit', () => {
      running.delete(c);
      resolve();
    });
  });
  await child(['node_modules/vitest/vitest.mjs', 'run', ...testsFor(TARGETS[0]), '--reporter=default', '--reporter=json', `--outputFile.json=${path.join(results, 'vitest.json')}`], 'tests.log', 'tests.err');
  await child(['scripts/vm/smoke.js'], 'smoke.json', 'smoke.log');
  const probe = readJson(path.join(results, 'probe.json'));
  return {
    id: 'host', kernel: os.release(), arch: os.arch() === 'x64' ? 'x86_64' : os.arch(), pageSize: probe?.pageSize, accel: 'none (host)',
    node: process.version, verdict: 'done', seconds: (Date.now() - started) / 1000, features: offered(probe), allFeatures: known(probe), reasons: probe?.reasons || [],
    ...summarize(results), results,
  };
}

function rowFromGuest(target, { kernel, results, accel, outcome }) {
  const probe = readJson(path.join(results, 'probe.json'));
  const summary = summarize(results);
  let node = '';
  try {
    node = fs.readFileSync(path.join(results, 'node.txt'), 'utf8').trim();
  } catch {}
  const verdict = outcome.verdict;
  if (verdict !== 'done') {
    summary.suiteErrors.push(`guest did not finish (${verdict}); console tail:\n${outcome.console.split('\n').slice(-15).join('\n')}`);
  } else if (!probe) {
    let err = '';
    try {
      err = fs.readFileSync(path.join(results, 'probe.err'), 'utf8').trim().split('\n').slice(-5).join('\n');
    } catch {}
    summary.suiteErrors.push(`probe() did not run in the guest: ${err}`);
  }
  return {
    id: target.id, kernel: probe?.kernel || kernel.release, package: kernel.pkg, arch: target.arch, pageSize: probe?.pageSize, accel,
    node, verdict, seconds: outcome.seconds, features: offered(probe), allFeatures: known(probe), reasons: probe?.reasons || [], ...summary, results,
  };
}

function printTable(rows) {
  const head = ['row', 'kernel', 'arch', 'page', 'accel', 'passed', 'failed', 'skipped', 'time'];
  const body = rows.map((r) => [r.id, r.kernel, r.arch, r.pageSize ? `${r.pageSize / 1024}K` : '?', r.accel, r.passed, r.failed + (r.suiteErrors.length ? '+E' : ''), r.skipped, `${r.seconds.toFixed(0)} s`].map(String));
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells) => cells.map((c, i) => c.padEnd(widths[i])).join('  ');
  console.log('\n' + line(head));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const b of body) console.log(line(b));
  for (const r of rows) {
    for (const [reason, n] of Object.entries(r.skipReasons)) console.log(`  ${r.id}: ${n} skipped: ${reason}`);
    for (const f of r.failures) console.log(`  ${r.id}: FAILED ${f}`);
    for (const e of r.suiteErrors) console.log(`  ${r.id}: ERROR ${e}`);
  }
  const passed = rows.reduce((n, r) => n + r.passed, 0);
  const failed = rows.reduce((n, r) => n + r.failed + r.suiteErrors.length, 0);
  const skipped = rows.reduce((n, r) => n + r.skipped, 0);
  console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
  return failed;
}

/** The table of docs/vm-matrix.md, from one run. */
function markdown(report) {
  const all = report.rows.find((r) => r.allFeatures)?.allFeatures || [];
  const lines = [
    `Last run: ${report.date.slice(0, 16).replace('T', ' ')} UTC (host kernel ${report.host}; guests under QEMU ${report.accel || 'TCG'}).`,
    '',
    '| Row | Kernel | Arch | Page size | Node | Features offered | Suites | Passed | Failed | Skipped (reason) | Time |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const r of report.rows) {
    const lacking = all.filter((f) => !r.features.includes(f));
    const feats = !r.features.length ? 'none (probe failed)' : lacking.length ? `${r.features.length}/${all.length}; lacks ${lacking.join(', ')}` : `all ${all.length}`;
    const skipped = Object.entries(r.skipReasons).map(([why, n]) => `${n}: ${why}`).join('; ');
    const ran = `${r.vitest?.suites?.length ? r.vitest.suites.join(', ') : 'no vitest report'} + smoke`;
    lines.push(`| ${r.id} | ${r.kernel} | ${r.arch} | ${r.pageSize ? `${r.pageSize / 1024} KiB` : '?'} | ${r.node.split(' ')[0]} | ${feats} | ${ran} | ${r.passed} | ${r.failed + r.suiteErrors.length} | ${r.skipped}${skipped ? ` (${skipped})` : ''} | ${r.seconds.toFixed(0)} s |`);
  }
  return lines.join('\n') + '\n';
}

const DOCS_TABLE = path.join(repo, 'docs', 'vm-matrix.md');
const BEGIN = '<!-- vm-matrix:begin (written by npm run test:vm) -->';
const END = '<!-- vm-matrix:end -->';

/** Replaces what stands between the markers of docs/vm-matrix.md. */
function writeDocsTable(table) {
  const doc = fs.readFileSync(DOCS_TABLE, 'utf8');
  const from = doc.indexOf(BEGIN);
  const to = doc.indexOf(END);
  if (from < 0 || to < from) throw new Error(`${DOCS_TABLE} lacks the markers ${BEGIN} ... ${END}`);
  fs.writeFileSync(DOCS_TABLE, `${doc.slice(0, from + BEGIN.length)}\n${table}${doc.slice(to)}`);
}

async function main() {
  const targets = TARGETS.filter((t) => !args.only.length || args.only.some((o) => t.id.includes(o)));
  if (!targets.length) throw new Error(`--only matched no row (rows: ${TARGETS.map((t) => t.id).join(', ')})`);
  if (process.getuid && process.getuid() !== 0 && targets.some((t) => t.suite)) throw new Error('the VM rows need root (apt-get, 9p export of /)');
  fs.mkdirSync(path.join(cacheDir, 'runs'), { recursive: true });
  const guests = targets.filter((t) => t.suite);
  if (guests.length) {
    ensureHostTools(guests);
    setupPrivateApt(new Set(TARGETS.filter((t) => t.suite).map((t) => t.suite)));
  }
  // The guests run the compiled build from this checkout (the x86 ones recompile it too, in their overlay).
  log('compiling the TypeScript build (dist/)');
  run(process.execPath, [path.join(repo, 'scripts/prepare.js')]);

  const rows = [];
  for (const target of targets) {
    log(`${target.id}: starting`);
    const row = target.id === 'host' ? await runHost() : rowFromGuest(target, await runGuest(target));
    log(`${target.id}: ${row.passed} passed, ${row.failed} failed${row.suiteErrors.length ? ` (+${row.suiteErrors.length} errors)` : ''}, ${row.skipped} skipped in ${row.seconds.toFixed(0)} s (${row.verdict}, ${row.accel}); results in ${row.results}`);
    rows.push(row);
  }
  const report = { date: new Date().toISOString(), host: os.release(), accel: kvmUsable ? 'KVM' : 'TCG (software emulation)', rows };
  const out = process.env.UFFD_VM_RESULTS || path.join(cacheDir, 'last-run.json');
  fs.writeFileSync(out, JSON.stringify(report, null, 2));
  fs.writeFileSync(out.replace(/\.json$/, '') + '.md', markdown(report));
  const failed = printTable(rows);
  console.log(`results: ${out}`);
  // Only a run of the whole matrix as documented may stand for it.
  if (!args.only.length && !args.tests) {
    writeDocsTable(markdown(report));
    console.log(`table written into ${path.relative(repo, DOCS_TABLE)}`);
  } else console.log(`${path.relative(repo, DOCS_TABLE)} left as it is: --only or --tests ran part of the matrix`);
  process.exitCode = failed ? 1 : 0;
}

if (require.main === module) {
  main().catch((err) => {
    killAll();
    console.error(err.stderr ? `${err.message}\n${err.stderr}` : err.message || err);
    process.exit(1);
  });
}

// For checking one step alone, e.g. the arm64 fetch into an empty cache.
module.exports = { arm64NativePackages, markdown, writeDocsTable };

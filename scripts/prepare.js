// npm's prepare step, and npm run build:ts: compiles the TypeScript into a
// fresh dist/ when the package is installed from a checkout (npm install in
// it, a git URL, a path) or packed. Fresh, because tsc never deletes outputs
// whose source is gone: an old dist/lib/fault-handler.js would shadow the
// new dist/lib/fault-handler/ directory.
// A checkout installed by path into another project has no devDependencies
// (npm installs only a linked folder's own dependencies) and may not have run
// its install script yet: the build tools are then installed into the
// checkout first, without running any script, and the addon is built (the
// ESM entry is written from what the compiled entry exports, which loads it).
//   npm run prepare   (npm runs it by itself on install and pack)
'use strict';
require('./usage').answerHelp(__filename);
const { spawnSync } = require('node:child_process');
const { chmodSync, existsSync, mkdirSync, readlinkSync, rmSync, symlinkSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');

function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (r.status !== 0) {
    console.error(`userfaultfd prepare: ${cmd} ${args.join(' ')} failed (${r.error ? r.error.message : `exit ${r.status ?? r.signal}`})`);
    process.exit(1);
  }
}

if (!existsSync(tsc)) {
  console.error('userfaultfd prepare: TypeScript is not installed here; installing the build tools (devDependencies) into this checkout');
  // The outer npm's settings (global, save, omit=dev...) must not steer this install.
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k)));
  run('npm', ['install', '--no-save', '--ignore-scripts', '--include=dev', '--no-audit', '--no-fund', '--prefer-offline'], env);
}
if (!existsSync(join(root, 'build', 'Release', 'userfaultfd.node'))) run(process.execPath, [require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] }), 'rebuild']);
rmSync(join(root, 'dist'), { recursive: true, force: true });
run(process.execPath, [tsc, '-p', join(root, 'tsconfig.json')]);
run(process.execPath, [join(__dirname, 'write-esm-entry.js')]);

// npm links the bins of dependencies, never the project's own: without this,
// `npx userfaultfd doctor` in a checkout would have npm install the checkout
// into its cache (rebuilding the addon) on every call.
const cli = join(root, 'dist', 'lib', 'cli.js');
chmodSync(cli, 0o755);
const bin = join(root, 'node_modules', '.bin', 'userfaultfd');
const target = join('..', '..', 'dist', 'lib', 'cli.js');
let current;
try {
  current = readlinkSync(bin);
} catch {}
if (current !== target) {
  mkdirSync(join(root, 'node_modules', '.bin'), { recursive: true });
  rmSync(bin, { force: true });
  symlinkSync(target, bin);
}

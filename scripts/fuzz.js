#!/usr/bin/env node
// Longer fuzz runs than the test suite's: the hostile-input property and the
// model-based command sequences, with a chosen number of runs and seed.
//   node scripts/fuzz.js [--runs N] [--seed S] [--only hostile|model]
// The seed is printed at the start; a failure prints fast-check's
// counterexample and replay path. Exit code is vitest's.
'use strict';
require('./usage').answerHelp(__filename);
const { spawnSync } = require('node:child_process');
const { join } = require('node:path');

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const runs = Number(opt('runs', '1000'));
const seed = Number(opt('seed', String(Date.now() % 2 ** 31)));
const only = opt('only', 'both');
if (!Number.isSafeInteger(runs) || runs < 1 || !Number.isSafeInteger(seed)) {
  console.error(require('./usage').usage(__filename));
  process.exit(2);
}
const root = join(__dirname, '..');
const files = [];
if (only !== 'model') files.push('test/reliability/hostile.test.ts');
if (only !== 'hostile') files.push('test/reliability/model.test.ts');
console.log(`fuzz: seed ${seed}, ${runs} model sequences, ${runs * 20} hostile calls (replay with --seed ${seed} --runs ${runs})`);
const child = spawnSync(process.execPath, [join(root, 'node_modules/vitest/vitest.mjs'), 'run', ...files], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, FUZZ_SEED: String(seed), MODEL_RUNS: String(runs), HOSTILE_RUNS: String(runs * 20), FUZZ_TIMEOUT_MS: String(Math.max(120_000, runs * 3000)) },
});
process.exit(child.status ?? 1);

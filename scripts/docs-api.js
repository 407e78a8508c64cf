#!/usr/bin/env node
// docs/api.md, the API reference, generated from the TSDoc of lib/ by TypeDoc
// and typedoc-plugin-markdown (settings in typedoc.json). TypeDoc writes into
// a scratch directory (it empties its output directory), then the page is
// copied into docs/.
//   npm run docs:api              regenerate docs/api.md
//   node scripts/docs-api.js --check   exit 1 if docs/api.md is not what the sources give
'use strict';
require('./usage').answerHelp(__filename);
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const root = path.join(__dirname, '..');
const target = path.join(root, 'docs', 'api.md');
const check = process.argv.includes('--check');

const out = fs.mkdtempSync(path.join(os.tmpdir(), 'uffd-api-'));
try {
  const typedoc = path.join(root, 'node_modules', 'typedoc', 'bin', 'typedoc');
  const r = spawnSync(process.execPath, [typedoc, '--options', path.join(root, 'typedoc.json'), '--out', out, '--logLevel', 'Error'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(`${r.stdout}${r.stderr}typedoc failed (exit ${r.status ?? r.signal})\n`);
    process.exit(1);
  }
  const generated = fs.readFileSync(path.join(out, 'api.md'), 'utf8');
  if (check) {
    const current = fs.existsSync(target) ? fs.readFileSync(target, 'utf8') : '';
    if (current !== generated) {
      process.stderr.write('docs/api.md is not what the TSDoc of lib/ gives: run npm run docs:api and commit it\n');
      process.exit(1);
    }
    console.log('docs/api.md is current');
  } else {
    fs.writeFileSync(target, generated);
    console.log(`wrote ${path.relative(root, target)}`);
  }
} finally {
  fs.rmSync(out, { recursive: true, force: true });
}

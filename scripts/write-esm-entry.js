// Writes dist/lib/index.mjs (and its types, index.d.mts), the ESM face of the CommonJS build, from the
// names the CommonJS entry really exports (so the two can never drift).
// Run by npm run build:ts after tsc: node scripts/write-esm-entry.js
'use strict';
require('./usage').answerHelp(__filename);
const fs = require('node:fs');
const path = require('node:path');

const dir = path.join(__dirname, '..', 'dist', 'lib');
const names = Object.keys(require(path.join(dir, 'index.js'))).filter((n) => n !== 'default' && n !== '__esModule');
const body = [
  "import cjs from './index.js';",
  `export const { ${names.join(', ')} } = cjs;`,
  'export default cjs;',
  '',
].join('\n');
fs.writeFileSync(path.join(dir, 'index.mjs'), body);
// Types for the import condition: ESM type declarations over the CommonJS
// ones, so TypeScript sees the default export the .mjs really has.
fs.writeFileSync(path.join(dir, 'index.d.mts'), [
  "import * as cjs from './index.js';",
  "export * from './index.js';",
  'export default cjs;',
  '',
].join('\n'));

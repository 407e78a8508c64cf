// Worker threads and child processes in the tests run the compiled dist/
// build; compile it once before any test file so it matches the sources.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export default function setup(): void {
  const root = join(__dirname, '..');
  execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', join(root, 'tsconfig.json')], { stdio: 'inherit' });
  execFileSync(process.execPath, [join(root, 'scripts/write-esm-entry.js')], { stdio: 'inherit' });
}

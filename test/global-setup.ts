// Worker threads and child processes in the tests run the compiled dist/
// build; compile it once before any test file so it matches the sources.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export default function setup(): void {
  // The VM matrix (scripts/vm) compiles dist/ on the host just before it boots
  // each guest; recompiling under software emulation would cost minutes.
  if (process.env.UFFD_TEST_DIST_PREBUILT === '1') return;
  const root = join(__dirname, '..');
  // The same build as npm install's (a fresh dist/, so no output of a deleted source lingers).
  execFileSync(process.execPath, [join(root, 'scripts/prepare.js')], { stdio: 'inherit' });
}

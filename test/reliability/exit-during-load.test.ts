// A process that exits while its workers are still loading the addon: the
// environments are torn down under the addon's initialisation, its N-API
// calls fail, and an error that can no longer be thrown must not become a
// fatal abort (seen in CI: "FATAL ERROR: Error::ThrowAsJavaScriptException
// napi_throw" from a child whose worker was loading the addon at exit). The
// race is narrow: a stress run of this scenario aborted 3 to 4 times in 60
// before the fix (NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS), never in 120 after.
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';

import { TIME_SCALE, distEntry } from '../helpers';

function exitWhileLoading(delayMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  const load = `require(${JSON.stringify(distEntry)})`;
  const script = `
    const { Worker } = require('node:worker_threads');
    for (let k = 0; k < 4; k++) new Worker(${JSON.stringify(load)}, { eval: true });
    setTimeout(() => process.exit(0), ${delayMs});
  `;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code, signal) => resolve({ code, signal, stderr }));
  });
}

describe('exit while workers load the addon', () => {
  it('every run ends with exit code 0, never an abort, whatever moment the exit hits', async () => {
    // Exits spread over the first milliseconds of the workers' lives hit the loading at different stages.
    for (let i = 0; i < 12; i++) {
      const r = await exitWhileLoading(2 * i);
      if (r.signal || r.code !== 0) expect.fail(`run ${i}: ${r.signal ?? r.code}: ${r.stderr.slice(0, 300)}`);
    }
  }, 120_000 * TIME_SCALE);
});

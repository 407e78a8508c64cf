// The three live-migration modes side by side, for the benchmark's JSON and
// report. The demo (`npm run demo:migrate -- --modes all`) is what measures
// them; the benchmark runs it in a child process and keeps its JSON, so the
// table in docs/migration.md and the one in the report come from one
// measurement.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import type { LiveResult } from '../demo-migrate/live';

export interface MigrationModes {
  setting: string;
  sizeMiB: number;
  results: LiveResult[];
  targets: string[];
}

/** Runs the live demo in all three modes on a `sizeMiB` guest; rejects with the demo's own output when it fails. */
export function runMigrationModes(sizeMiB: number, afterSeconds: number): Promise<MigrationModes> {
  const dir = mkdtempSync(join(tmpdir(), 'uffd-bench-migration-'));
  const out = join(dir, 'modes.json');
  const demo = join(__dirname, '..', 'demo-migrate.js');
  const args = [demo, '--modes', 'all', '--size', String(sizeMiB), '--push-rate', '0', '--after-seconds', String(afterSeconds), '--json', out];
  return new Promise<MigrationModes>((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d));
    child.stderr.on('data', (d: Buffer) => (output += d));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      try {
        if (code !== 0) throw new Error(`demo:migrate --modes all exited ${signal ?? code}: ${output.trim().split('\n').slice(-5).join(' | ')}`);
        resolve(JSON.parse(readFileSync(out, 'utf8')) as MigrationModes);
      } catch (err) {
        reject(err);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}

// Where a run's results go: files whose directories may not exist yet, JSON
// rewritten after every scenario so a run that dies later keeps what it
// measured, and marked regions of the docs that only a measurement may write.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

/** Writes `file` whole or not at all (a reader never sees half a JSON), creating its directory. */
export function writeFileAtomic(file: string, text: string): void {
  mkdirSync(dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

export const markers = (name: string, by = 'npm run bench') => ({
  begin: `<!-- ${name}:begin (written by ${by}; do not edit by hand) -->`,
  end: `<!-- ${name}:end -->`,
});

/** Replaces the text between the `name` markers of `file`; false when the file has no such markers. */
export function replaceBetweenMarkers(file: string, name: string, text: string, by?: string): boolean {
  if (!existsSync(file)) return false;
  const { begin, end } = markers(name, by);
  const doc = readFileSync(file, 'utf8');
  const from = doc.indexOf(begin);
  const to = doc.indexOf(end);
  if (from < 0 || to < from) return false;
  writeFileAtomic(file, `${doc.slice(0, from + begin.length)}\n${text.trimEnd()}\n${doc.slice(to)}`);
  return true;
}

/**
 * --markdown FILE: a file that holds the bench markers gets its marked region
 * replaced (docs/benchmark.md); any other file is written whole.
 */
export function writeMarkdown(file: string, text: string): void {
  if (!replaceBetweenMarkers(file, 'bench', text)) writeFileAtomic(file, `${text.trimEnd()}\n`);
}

// The documentation stays true to the repository: the README stays short,
// every relative link and anchor resolves, the API reference is what the
// TSDoc gives, the tables written by scripts have their markers, and the
// troubleshooting page covers every error code the library can raise.
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

import { root } from '../helpers';

const read = (file: string) => readFileSync(join(root, file), 'utf8');
const docs = readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`);
const pages = ['README.md', 'CHANGELOG.md', ...docs];
const GENERATED = 'docs/api.md';

/** Headings outside code fences. */
function headings(markdown: string): string[] {
  let fenced = false;
  return markdown.split('\n').filter((line) => {
    if (line.startsWith('```')) fenced = !fenced;
    return !fenced && /^#{1,6} /.test(line);
  }).map((line) => line.replace(/^#+ /, ''));
}

/** GitHub's anchor for each heading of a page (github-slugger: lower case, punctuation dropped, spaces to hyphens, repeats numbered). */
function anchors(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const h of headings(markdown)) {
    const base = h.toLowerCase().replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '').replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

/** Markdown links outside code fences and code spans: [text](target). */
function links(markdown: string): string[] {
  let fenced = false;
  const out: string[] = [];
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fenced = !fenced;
    if (fenced) continue;
    for (const m of line.replace(/`[^`]*`/g, '').matchAll(/\]\(([^)\s]+)\)/g)) out.push(m[1]);
  }
  return out;
}

describe('README', () => {
  it('is at most 250 lines and links every page of docs/', () => {
    const readme = read('README.md');
    expect(readme.split('\n').length).toBeLessThanOrEqual(250);
    for (const page of docs) expect(links(readme), page).toContain(page);
  });
});

describe('links', () => {
  for (const page of pages) {
    it(`${page}: every relative link and anchor resolves`, () => {
      const broken: string[] = [];
      for (const target of links(read(page))) {
        if (/^[a-z]+:/.test(target)) continue;
        const [file, anchor] = target.split('#');
        const path = file ? relative(root, join(root, dirname(page), file)) : page;
        let text: string;
        try {
          text = read(path);
        } catch {
          broken.push(`${target}: no file ${path}`);
          continue;
        }
        // api.md's links into itself are TypeDoc's, numbered by its own count of same-named members.
        if (page === GENERATED && path === GENERATED) continue;
        if (anchor !== undefined && path.endsWith('.md') && !anchors(text).has(anchor)) broken.push(`${target}: no heading #${anchor} in ${path}`);
      }
      expect(broken).toEqual([]);
    });
  }
});

describe('nothing outside the repository', () => {
  // Built from parts, so this file does not name what it looks for.
  const outside = [['kernel', 'semantics.md'].join('-'), ['field', 'notes.md'].join('-'), ['..', 'shared', ''].join('/')];
  const files = (dir: string): string[] => readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : /\.(md|ts|js|cc|h|sh|json)$/.test(e.name) ? [join(dir, e.name)] : []);
  it('no document, source, test or script refers to notes kept outside it', () => {
    const all = [...pages, 'package.json', ...files('lib'), ...files('native'), ...files('scripts'), ...files('test')];
    const hits = all.flatMap((f) => outside.filter((o) => read(f).includes(o)).map((o) => `${f}: ${o}`));
    expect(hits).toEqual([]);
  });
});

describe('generated content', () => {
  it('docs/api.md is what TypeDoc makes of the TSDoc now (npm run docs:api)', () => {
    const r = spawnSync(process.execPath, [join(root, 'scripts/docs-api.js'), '--check'], { encoding: 'utf8', timeout: 110_000 });
    expect([r.status, r.stderr]).toEqual([0, '']);
  }, 120_000);

  for (const [page, name] of [['README.md', 'bench-ratios'], ['docs/benchmark.md', 'bench'], ['docs/vm-matrix.md', 'vm-matrix'], ['docs/working-set.md', 'restore-bench']]) {
    it(`${page} holds the ${name} table between the markers its script writes`, () => {
      const text = read(page);
      const begin = text.indexOf(`<!-- ${name}:begin`);
      const end = text.indexOf(`<!-- ${name}:end -->`);
      expect(begin).toBeGreaterThanOrEqual(0);
      expect(end).toBeGreaterThan(begin);
      expect(text.slice(begin, end)).toMatch(/^\| .* \|$/m);
    });
  }
});

describe('docs/troubleshooting.md', () => {
  const page = read('docs/troubleshooting.md');
  const sources = (dir: string): string[] => readdirSync(join(root, dir), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : /\.(ts|cc|h)$/.test(e.name) ? [read(join(dir, e.name))] : []);

  it('explains every ERR_* code that lib/ and native/ can raise', () => {
    const codes = new Set([...sources('lib'), ...sources('native')].flatMap((text) => [...text.matchAll(/\bERR_[A-Z0-9_]+\b/g)].map((m) => m[0])));
    expect(codes.size).toBeGreaterThan(20);
    expect([...codes].filter((c) => !page.includes(`\`${c}\``))).toEqual([]);
  });

  it('explains every errno the error messages know', () => {
    const table = /const\s+\w+\s*:\s*Record<string,\s*string>\s*=\s*\{([^}]*)\}/.exec(read('lib/errors.ts'));
    const errnos = [...(table?.[1] ?? '').matchAll(/^\s+(E[A-Z]+):/gm)].map((m) => m[1]);
    expect(errnos.length).toBeGreaterThan(10);
    expect(errnos.filter((e) => !page.includes(`| \`${e}\` |`))).toEqual([]);
  });
});

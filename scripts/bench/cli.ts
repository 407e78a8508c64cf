// The command line both benchmark commands (npm run bench, npm run
// bench:restore) read: the options they share, `--markdown` with or without a
// file, and how a bad option or --help ends the command.
import { ParseArgsConfig, parseArgs } from 'node:util';

type Options = NonNullable<ParseArgsConfig['options']>;
/** What parseArgs makes of `options`. */
export type Values<T extends Options> = ReturnType<typeof parseArgs<{ args: string[]; options: T }>>['values'];

/** Options every benchmark command has. */
export const COMMON_OPTIONS = {
  quick: { type: 'boolean', default: false },
  smoke: { type: 'boolean', default: false },
  json: { type: 'string' },
  markdown: { type: 'string' },
  docs: { type: 'boolean', default: false },
  check: { type: 'boolean', default: false },
  seed: { type: 'string', default: '1' },
  help: { type: 'boolean', short: 'h', default: false },
} as const;

/**
 * Parses the command line with `options`: a bad option prints the usage and
 * exits 2, --help prints it and exits 0. `--markdown` alone means stdout
 * (`-`); `--markdown FILE` writes FILE.
 */
export function parseCommandLine<T extends Options>(command: string, usage: string, options: T): Values<T> {
  const args = process.argv.slice(2).flatMap((a, i, all) =>
    a === '--markdown' && (all[i + 1] === undefined || all[i + 1].startsWith('-')) ? ['--markdown=-'] : [a]);
  const parse = () => parseArgs<{ args: string[]; options: T }>({ args, options }).values;
  let values: Values<T>;
  try {
    values = parse();
  } catch (err) {
    process.stderr.write(`${command}: ${(err as Error).message}\n\n${usage}`);
    process.exit(2);
  }
  if ((values as { help?: boolean }).help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  return values;
}

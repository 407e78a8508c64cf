// `--help` for the scripts in this folder: a script's opening comment is its
// usage, so the two cannot drift apart.
'use strict';
const fs = require('node:fs');

/** The comment block at the top of `file` (after any #! line), without the comment markers. */
function usage(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  if (lines[0].startsWith('#!')) lines.shift();
  const end = lines.findIndex((l) => !l.startsWith('//'));
  return lines.slice(0, end < 0 ? lines.length : end).map((l) => l.replace(/^\/\/ ?/, '')).join('\n');
}

/** Prints the usage of `file` and exits 0 when the command line asks for help. */
function answerHelp(file, argv = process.argv.slice(2)) {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${usage(file)}\n`);
    process.exit(0);
  }
}

module.exports = { answerHelp, usage };

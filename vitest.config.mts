import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Real faults and real threads: every test has a hard bound, so a lost
    // wake-up fails the test instead of hanging the suite.
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Native threads, real faults and sysctl changes (huge pages) do not mix
    // well with parallel files on a 2-core machine.
    fileParallelism: false,
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-results.json' },
  },
});

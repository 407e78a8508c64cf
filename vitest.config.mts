import { defineConfig } from 'vitest/config';

// Guests of the VM matrix run under software emulation (see test/helpers.ts).
const timeScale = Math.max(1, Number(process.env.UFFD_TEST_TIME_SCALE) || 1);

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Real faults and real threads: every test has a hard bound, so a lost
    // wake-up fails the test instead of hanging the suite.
    testTimeout: 30_000 * timeScale,
    hookTimeout: 30_000 * timeScale,
    // Native threads, real faults and sysctl changes (huge pages) do not mix
    // well with parallel files on a 2-core machine.
    fileParallelism: false,
    pool: 'forks',
    reporters: ['default', 'json'],
    outputFile: { json: '.vitest-results.json' },
    // `npm run coverage`: lines and branches of lib/ as the tests run it in
    // this process (workers and children load dist/, which is not counted).
    coverage: {
      provider: 'v8',
      include: ['lib/**/*.ts'],
      reporter: ['text', 'text-summary', 'json-summary'],
      // Kept under node_modules/ so that it is never committed.
      reportsDirectory: 'node_modules/.coverage',
      reportOnFailure: true,
    },
  },
});

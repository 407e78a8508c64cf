#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer, runs
# the whole vitest suite (or the files given as arguments) with gcc's libasan
# preloaded into every Node process, then rebuilds the addon normally (also
# on failure or Ctrl-C). Exit status: the suite's, or 3 when a sanitizer
# reported anything even though the tests passed.
#   npm run test:asan [-- test/some/file.test.ts]
set -uo pipefail
cd "$(dirname "$0")/.."

rebuild_normal() {
  echo "asan: rebuilding the addon without sanitizers"
  UFFD_SANITIZE= npx node-gyp rebuild -j 2 >/dev/null 2>&1 || echo "asan: normal rebuild FAILED: run npx node-gyp rebuild"
}
trap rebuild_normal EXIT

echo "asan: building with -fsanitize=address,undefined"
UFFD_SANITIZE=address,undefined npx node-gyp rebuild -j 2 >/dev/null 2>&1 || { echo "asan: build failed"; exit 2; }
ldd build/Release/userfaultfd.node | grep -q libasan || { echo "asan: the addon is not linked with libasan"; exit 2; }

log=${ASAN_LOG:-$(mktemp /tmp/uffd-asan.XXXXXX.log)}
# Node itself is not built with ASan: its own allocations at exit are not
# ours to judge (detect_leaks=0); V8 handles SIGSEGV itself
# (allow_user_segv_handler). Any report stops the process with a stack.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:allow_user_segv_handler=1:handle_segv=0:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=0:log_path=${log%.log}.report"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=${log%.log}.report"
echo "asan: running vitest (log $log, reports ${log%.log}.report.<pid>)"
npx vitest run "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
unset LD_PRELOAD

reports=$(ls "${log%.log}".report.* 2>/dev/null | wc -l)
if [ "$reports" -gt 0 ]; then
  echo "asan: $reports sanitizer report(s):"
  cat "${log%.log}".report.*
  [ "$status" -eq 0 ] && status=3
else
  echo "asan: no sanitizer reports"
fi
exit "$status"

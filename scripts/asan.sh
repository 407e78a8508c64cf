#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UndefinedBehaviorSanitizer in a
# separate copy of the tree (so the normal build is never replaced), runs the
# whole vitest suite there (or the files given as arguments) with gcc's
# libasan preloaded into every Node process, and collects the reports.
# Exit status: the suite's, or 3 when a sanitizer reported anything although
# the tests passed.
#   npm run test:asan [-- test/some/file.test.ts]
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -uo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
work="${ASAN_DIR:-$(mktemp -d /tmp/uffd-asan.XXXXXX)}"
echo "asan: copying the tree to $work"
mkdir -p "$work"
tar -C "$src" --exclude=./node_modules --exclude=./build --exclude=./dist --exclude=./.git -cf - . | tar -C "$work" -xf -
ln -sfn "$src/node_modules" "$work/node_modules"
cd "$work"

echo "asan: building with -fsanitize=address,undefined"
UFFD_SANITIZE=address,undefined npx node-gyp rebuild -j 2 >build.log 2>&1 || { tail -30 build.log; echo "asan: build failed"; exit 2; }
case "$(ldd build/Release/userfaultfd.node)" in *libasan*) ;; *) echo "asan: the addon is not linked with libasan"; exit 2 ;; esac

reports="$work/sanitizer-report"
# Node itself is not built with ASan: its own allocations at exit are not
# ours to judge (detect_leaks=0); V8 handles SIGSEGV itself
# (allow_user_segv_handler, handle_segv=0); SIGBUS is part of what is tested
# (poisoned pages), so it is left to the process (handle_sigbus=0). ASan's
# quarantine, which also holds every free() of Node itself, is kept small so
# that the soak's RSS bound still means something. Any report stops the process.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
export ASAN_OPTIONS="detect_leaks=0:allow_user_segv_handler=1:handle_segv=0:handle_sigbus=0:quarantine_size_mb=16:halt_on_error=1:detect_stack_use_after_return=0:log_path=$reports"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$reports"
export SOAK_RSS_BOUND_MIB=${SOAK_RSS_BOUND_MIB:-64}
echo "asan: running vitest in $work (reports: $reports.<pid>)"
npx vitest run "$@" 2>&1 | tee vitest-asan.log
status=${PIPESTATUS[0]}
unset LD_PRELOAD

count=$(ls "$reports".* 2>/dev/null | wc -l)
if [ "$count" -gt 0 ]; then
  echo "asan: $count sanitizer report(s):"
  cat "$reports".*
  [ "$status" -eq 0 ] && status=3
else
  echo "asan: no sanitizer reports (suite exit $status)"
fi
exit "$status"

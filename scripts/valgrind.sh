#!/usr/bin/env bash
# Runs the core scenarios (scripts/valgrind-scenarios.js) under valgrind's
# memcheck and reports the errors whose stack passes through the addon
# (userfaultfd.node); errors inside Node/V8 alone are counted but not ours.
# Exit 1 if the scenarios fail or the addon has any memcheck error.
#   npm run test:valgrind
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -uo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind: not installed"; exit 2; }
case "$(ldd build/Release/userfaultfd.node)" in *libasan*) echo "valgrind: the addon is an ASan build; run npx node-gyp rebuild first"; exit 2 ;; esac
log=${VALGRIND_LOG:-$(mktemp /tmp/uffd-valgrind.XXXXXX.log)}
# --jitless keeps V8 from generating code valgrind must re-translate; the
# uffd ioctls are unknown to valgrind, which then warns once per request.
valgrind --tool=memcheck --trace-children=no --num-callers=30 --error-limit=no \
  --log-file="$log" node --jitless scripts/valgrind-scenarios.js
status=$?
total=$(grep -c "^==[0-9]*== \(Invalid\|Conditional\|Syscall param\|Use of uninit\|Mismatched\|Source and destination\)" "$log" || true)
ours=$(awk '/^==[0-9]+== (Invalid|Conditional|Syscall param|Use of uninit|Mismatched|Source and destination)/{blk=$0; inblk=1; next} inblk && /^==[0-9]+== *$/{ if (blk ~ /userfaultfd\.node/) n++; inblk=0; blk=""; next} inblk{blk=blk"\n"$0} END{print n+0}' "$log")
echo "valgrind: scenarios exit $status; memcheck errors: $total in total, $ours through userfaultfd.node (log $log)"
grep "unhandled ioctl" "$log" | sort | uniq -c | head
[ "$status" -eq 0 ] && [ "$ours" -eq 0 ]

#!/usr/bin/env bash
# Runs the property and model tests (test/reliability/model.test.ts,
# test/reliability/hostile.test.ts) with fresh random seeds. CI runs them with
# fixed seeds (printed); this looks for new failures.
#
#   npm run test:fresh-seeds            # 5 rounds
#   ROUNDS=20 bash scripts/fresh-seeds.sh
#
# A failing seed is printed with the command that replays it; add it to the
# test's REGRESSION_SEEDS so that every later run replays it too.
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  # The opening comment is the usage.
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
  exit 0
fi
ROUNDS="${ROUNDS:-5}"
FILES=(test/reliability/model.test.ts test/reliability/hostile.test.ts)

npm run build:ts --silent || exit 1
failed=()
for ((i = 1; i <= ROUNDS; i++)); do
  seed=$(node -e 'console.log(require("node:crypto").randomInt(2 ** 31 - 1))')
  echo "fresh-seeds: round $i/$ROUNDS, FUZZ_SEED=$seed"
  if ! FUZZ_SEED="$seed" npx vitest run --reporter=dot "${FILES[@]}"; then
    failed+=("$seed")
    echo "fresh-seeds: FAILED with FUZZ_SEED=$seed"
    echo "  replay: FUZZ_SEED=$seed npx vitest run ${FILES[*]}"
  fi
done
if ((${#failed[@]})); then
  echo "fresh-seeds: ${#failed[@]} of $ROUNDS rounds failed, seeds: ${failed[*]}"
  echo "  add each to REGRESSION_SEEDS in the failing test file once the cause is understood"
  exit 1
fi
echo "fresh-seeds: $ROUNDS rounds passed"

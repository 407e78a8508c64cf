#!/usr/bin/env bash
# Cross-compiles the native addon for aarch64 with Debian's g++-aarch64-linux-gnu
# and checks that the result is an arm64 shared object. Small enough for CI.
# Usage: scripts/vm/cross-compile-arm64.sh [output.node]
# The x64 build in ./build is left alone: the build happens in a scratch copy.
case "${1:-}" in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; esac
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/build-arm64/userfaultfd.node}"

if ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  echo "installing g++-aarch64-linux-gnu from Debian" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends g++-aarch64-linux-gnu >/dev/null
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r "$root/binding.gyp" "$root/native" "$scratch/"
ln -s "$root/node_modules" "$scratch/node_modules"

# Node's headers do not depend on the architecture: node-gyp uses the ones
# that ship with the running Node (include/node beside the binary), which
# also holds the config for the target, so no header download is needed.
nodedir="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")"
[ -f "$nodedir/include/node/node_api.h" ] || { echo "no Node headers under $nodedir/include/node" >&2; exit 1; }

cd "$scratch"
export CC=aarch64-linux-gnu-gcc CXX=aarch64-linux-gnu-g++ LINK=aarch64-linux-gnu-g++ AR=aarch64-linux-gnu-ar
node "$root/node_modules/node-gyp/bin/node-gyp.js" rebuild --arch=arm64 --nodedir="$nodedir" -j 2 >"$scratch/build.log" 2>&1 || {
  tail -40 "$scratch/build.log" >&2
  exit 1
}

built="$scratch/build/Release/userfaultfd.node"
header="$(od -An -tx1 -j18 -N2 "$built" | tr -d ' ')"
# ELF e_machine 0x00b7 is EM_AARCH64 (little-endian bytes b7 00).
if [ "$header" != "b700" ]; then
  echo "built $built is not an aarch64 ELF (e_machine bytes $header)" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
cp "$built" "$out"
echo "arm64 addon: $out ($(stat -c %s "$out") bytes, ELF machine aarch64)"

#!/usr/bin/env bash
# Builds Moebius and runs its main job on the bundled model: a short chat completion on the CPU, streamed.
# Extra arguments are passed to `moebius generate` (e.g. --prompt "..." --max-tokens 64).
set -euo pipefail
cd "$(dirname "$0")/.."
./installer/install-deps.sh >/dev/null
# ccache uses its default directory (~/.cache/ccache); paths are hashed relative to the checkout, so runs from
# different clones on one machine share the cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target moebius
./build/moebius info
if [ $# -eq 0 ]; then set -- --prompt "In the beginning God created" --max-tokens 64; fi
exec ./build/moebius generate --chat "$@"

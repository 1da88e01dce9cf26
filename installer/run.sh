#!/usr/bin/env bash
# Builds Moebius and runs it on the bundled model: with a display ($DISPLAY or $WAYLAND_DISPLAY) and no arguments,
# Moebius Studio opens with the model loaded; otherwise a short chat completion streams on the CPU from the CLI.
# Extra arguments are passed to `moebius generate` (e.g. --prompt "..." --max-tokens 64).
set -euo pipefail
cd "$(dirname "$0")/.."
./installer/install-deps.sh >/dev/null
# ccache uses its default directory (~/.cache/ccache); paths are hashed relative to the checkout, so runs from
# different clones on one machine share the cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
# With a display (and no arguments) the Studio opens with the bundled model loaded; without one, the CLI chats.
if [ $# -eq 0 ] && { [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; } && grep -q "MOEBIUS_BUILD_APP:BOOL=ON" build/CMakeCache.txt; then
  cmake --build build -j "$(nproc)" --target moebius-studio
  exec ./build/moebius-studio
fi
cmake --build build -j "$(nproc)" --target moebius
./build/moebius info
if [ $# -eq 0 ]; then set -- --prompt "In the beginning God created" --max-tokens 64; fi
exec ./build/moebius generate --chat "$@"

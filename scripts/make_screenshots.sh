#!/usr/bin/env bash
# Regenerates docs/screenshots/*.png: builds the Studio's screenshot driver, runs the real flows on the bundled model
# (calibration, importance map, GPTQ 3-bit, comparison, chat) on Qt's offscreen platform and grabs every pane.
# Usage: scripts/make_screenshots.sh [BUILD_DIR]   (default build/)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
cmake --build "$BUILD" -j "$(nproc)" --target moebius_studio_screenshots
export QT_QPA_PLATFORM=offscreen OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
"$BUILD"/tests/gui/moebius_studio_screenshots docs/screenshots

#!/usr/bin/env bash
# Builds the DEB and TGZ from a configured, built build directory (cpack), unpacks the DEB into a scratch root with
# dpkg -x (no root needed, nothing touches the system) and runs the installed binaries from there: `moebius
# --version` and a tiny RTN quantization of the packaged demo model. Also checks the desktop integration files.
# Usage: installer/check-package.sh [BUILD_DIR]   (default build/; tests/run.sh calls it after the Release suite)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
LOG=$(mktemp)
(cd "$BUILD" && cpack -G "DEB;TGZ" >"$LOG" 2>&1) || { cat "$LOG"; rm -f "$LOG"; exit 1; }
rm -f "$LOG"
DEB=$(ls -t "$BUILD"/moebius_*.deb | head -1)
TGZ=$(ls -t "$BUILD"/moebius-*.tar.gz | head -1)
echo "package: $DEB ($(du -h "$DEB" | cut -f1)), $TGZ ($(du -h "$TGZ" | cut -f1))"
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
dpkg-deb --info "$DEB" | grep -E "Package|Version|Depends" | sed 's/^/  /'
dpkg -x "$DEB" "$ROOT"
"$ROOT/usr/bin/moebius" --version
# The installed binary finds its data under ../share/moebius (engine/core/resources.cpp), not in the checkout.
test -d "$ROOT/usr/share/moebius/models/tiny-qwen2moe"
env -u MOEBIUS_RESOURCES OMP_NUM_THREADS=1 "$ROOT/usr/bin/moebius" quantize --method rtn --bits 4 --out "$ROOT/q" --json \
  | grep -q '"method": *"rtn"'
test -f "$ROOT/q/config.json"
echo "installed moebius quantized the packaged model: $(du -sh "$ROOT/q" | cut -f1)"
if [ -x "$ROOT/usr/bin/moebius-studio" ] || grep -q "MOEBIUS_BUILD_APP:BOOL=ON" "$BUILD/CMakeCache.txt"; then
  test -x "$ROOT/usr/bin/moebius-studio"
  test -f "$ROOT/usr/share/applications/moebius-studio.desktop"
  test -f "$ROOT/usr/share/icons/hicolor/scalable/apps/moebius-studio.svg"
  test -f "$ROOT/usr/share/metainfo/io.github.moebius.Studio.metainfo.xml"
  if command -v desktop-file-validate >/dev/null; then desktop-file-validate "$ROOT/usr/share/applications/moebius-studio.desktop"; fi
  mkdir -m 700 "$ROOT/xdg"
  XDG_RUNTIME_DIR="$ROOT/xdg" QT_QPA_PLATFORM=offscreen "$ROOT/usr/bin/moebius-studio" --version
fi
echo "package check: OK"

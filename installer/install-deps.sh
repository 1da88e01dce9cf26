#!/usr/bin/env bash
# Installs Moebius's build and test dependencies on Debian 12 (all from Debian's own archive).
# Idempotent: when every package is already present it returns in about a second without touching apt.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libeigen3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  qt6-base-dev qt6-charts-dev libgl-dev
  libvulkan-dev vulkan-tools glslc spirv-tools mesa-vulkan-drivers
  xvfb xauth
  dpkg-dev file
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

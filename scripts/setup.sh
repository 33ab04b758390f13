#!/usr/bin/env bash
# Installs every dependency from Debian packages and builds clipdissect (Release) into build/.
#   scripts/setup.sh                 # dependencies + build
#   BUILD_DIR=out scripts/setup.sh   # another build folder
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake pkg-config
  libdnnl-dev                            # kernels (oneDNN, OpenMP threads)
  libjpeg62-turbo-dev libpng-dev zlib1g-dev libicu-dev   # images, archives, Unicode
  nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev
  libcurl4-openssl-dev libssl-dev        # downloads and their SHA-256 checks
  libonnx-dev libprotobuf-dev            # ONNX targets
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-torchvision      # only for the benchmark baselines (bench/), never at run time
  python3-onnx                           # only for exporting the ONNX test models
  chromium                               # the HTML report's tests render it headless
  valgrind                               # a small end-to-end run under memcheck (tests/test_valgrind.cpp)
  clang libclang-rt-14-dev               # libFuzzer (+ ASan/UBSan runtimes) for scripts/fuzz.sh
)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j"$(nproc)"

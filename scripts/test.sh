#!/usr/bin/env bash
# Runs the whole test suite: the Release build's tests, then the unit tests again under ASan+UBSan
# (skip the sanitizer pass with SANITIZE=0), then every fuzz target for FUZZ_SECONDS (default 10) each
# (skip with FUZZ=0; scripts/fuzz.sh 600 for long runs), then, where nvcc is, the CUDA build (skip with CUDA=0).
# Fixtures: $CLIPDISSECT_FIXTURES or ../shared/fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${BUILD_DIR:-build}
cmake --build "$build_dir" -j"$(nproc)"
ctest --test-dir "$build_dir" --output-on-failure -j"$(nproc)"

if [ "${SANITIZE:-1}" != 0 ]; then
  cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLIPDISSECT_SANITIZE=ON -DCLIPDISSECT_BUILD_BENCH=OFF \
    -DCLIPDISSECT_ONNX_TEST_MODELS="$PWD/$build_dir/onnx_test_models"  # exported once, by the Release build
  cmake --build build-sanitize -j"$(nproc)"
  # LeakSanitizer on: any leak fails the test (the CLI runs that tests start inherit these settings).
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-sanitize --output-on-failure -j"$(nproc)"
fi

if [ "${FUZZ:-1}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi

# The CUDA backend compiles wherever the toolkit is, so it never rots; its GPU tests skip, saying so, on a
# machine without a GPU (bench/cuda_device_check.sh runs them on one).
if [ "${CUDA:-1}" != 0 ] && command -v nvcc >/dev/null; then
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DCLIPDISSECT_CUDA=ON -DCLIPDISSECT_BUILD_BENCH=OFF
  cmake --build build-cuda -j"$(nproc)"
  ctest --test-dir build-cuda --output-on-failure -j"$(nproc)" -R 'Cuda|Device'
fi

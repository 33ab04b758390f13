#!/usr/bin/env bash
# The CUDA backend's whole GPU check, as one command for the lent GPU machine (the `device` tool: CMake, nvcc,
# PyTorch with its CUDA libraries, no package registry, 64 MiB carried with the working tree).
#
#   bench/cuda_device_check.sh prepare
#       here: builds build-cuda (-DCLIPDISSECT_CUDA=ON, with the benchmarks), then packs the binaries, the
#       Debian libraries they load and the fixtures the GPU tests read into .device/bundle.tar.xz (git-ignored)
#   bench/cuda_device_check.sh run          (there, with carry [".device"], timeout ~600 s)
#       1. the GPU tests (clipdissect_tests --gtest_filter='*Cuda*:DeviceBackends*')
#       2. describe on 10,000 synthetic 500x375 JPEGs, random-weight CLIP ViT-B/16 and ResNet-50, 20k concepts,
#          layers conv1,layer1..layer4, next to PyTorch on the same GPU (bench/run_describe_bench.py)
#       3. SoftWPMI at N=50,000, K=20,000, C=2,048 next to PyTorch (bench/similarity.cpp, torch_describe_baseline.py)
#       4. decoding and preprocessing on all cores (bench/preprocess.cpp): whether the CPU keeps ahead of the GPU
#       Everything it prints is also written to $OUT (or /tmp/cuda-check), step by step. The steps' time limits
#       add up to 495 s, inside one device command (600 s at most) with time left in the session for a rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

pack=.device
images=${IMAGES:-10000}

prepare() {
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DCLIPDISSECT_CUDA=ON -DCLIPDISSECT_BUILD_BENCH=ON
  cmake --build build-cuda -j"$(nproc)" --target clipdissect clipdissect_tests clipdissect_bench_similarity \
    clipdissect_bench_preprocess
  local staging
  staging=$(mktemp -d)
  mkdir -p "$staging/real" "$staging/lib" "$staging/fixtures"
  cp build-cuda/clipdissect build-cuda/clipdissect_tests build-cuda/clipdissect_bench_similarity \
    build-cuda/clipdissect_bench_preprocess "$staging/real/"
  strip "$staging"/real/*
  # Every library ldd resolves, except glibc's, the compiler runtime's (the GPU machine's are newer, and PyTorch
  # must keep them) and CUDA's (the driver there; cuBLAS, cuDNN and the runtime from PyTorch's packages).
  ldd "$staging"/real/* | awk '/=> \// {print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|libgomp)\.so|/ld-linux|/libcuda\.so|libcudart|libcublas|libcudnn' |
    xargs -I{} cp -L {} "$staging/lib/"
  local fixtures=${CLIPDISSECT_FIXTURES:-../shared/fixtures}
  (cd "$fixtures" && cp -r --parents models/clip_vit.pt models/clip_rn.pt models/resnet_basic.pth \
    models/resnet_bottleneck.pth models/resnet_places_legacy.pth.tar models/vit_target.pth models/vit_target.pth.json \
    models/configs.json images e2e/concepts.txt clip/bpe_simple_vocab_16e6.txt.gz concepts/20k.txt "$staging/fixtures/")
  chmod -R u+w "$staging"
  rm -rf "$pack" && mkdir -p "$pack"
  tar -C "$staging" -cf - . | xz -T"$(nproc)" -9 >"$pack/bundle.tar.xz"
  rm -rf "$staging"
  du -h "$pack/bundle.tar.xz"
}

run() {
  local out=${OUT:-/tmp/cuda-check} work=/tmp/clipdissect-cuda-check status=0
  mkdir -p "$out"
  rm -rf "$work" && mkdir -p "$work/bin"
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$pack/bundle.tar.xz" "$work"
  # Our programs find the carried libraries and PyTorch's CUDA libraries through wrappers, so that Python
  # (PyTorch itself) runs with its own environment.
  local site cuda_libs
  site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
  cuda_libs=$( (find "$site/nvidia" -maxdepth 2 -type d -name lib 2>/dev/null || true) | tr '\n' ':')
  for program in "$work"/real/*; do
    printf '#!/bin/sh\nLD_LIBRARY_PATH="%s:%s/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
      "$work/lib" "$cuda_libs" "$program" >"$work/bin/$(basename "$program")"
    chmod +x "$work/bin/$(basename "$program")"
  done
  export CLIPDISSECT_FIXTURES=$work/fixtures
  {
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
    lscpu | grep -m1 'Model name' || true
    LD_LIBRARY_PATH="$work/lib:$cuda_libs/usr/local/cuda/lib64" ldd "$work/real/clipdissect" | grep -E 'not found|cudnn|cublas|cudart' || true
  } 2>&1 | tee "$out/machine.txt"

  echo "== 1. GPU tests" | tee "$out/tests.txt"
  timeout 120 "$work/bin/clipdissect_tests" --gtest_filter='*Cuda*:DeviceBackends*' 2>&1 | tee -a "$out/tests.txt" ||
    status=1

  echo "== 2. describe, $images images, against PyTorch on the same GPU" | tee "$out/describe.txt"
  BENCH_DIR=/tmp/clipdissect-bench timeout 240 python3 bench/run_describe_bench.py --images "$images" \
    --concepts 20000 --device cuda --threads "$(nproc)" --repeats 1 --build "$work/bin" 2>&1 |
    tee -a "$out/describe.txt" || status=1

  echo "== 3. SoftWPMI, N=50000 K=20000 C=2048" | tee "$out/similarity.txt"
  timeout 45 "$work/bin/clipdissect_bench_similarity" --device cuda --threads "$(nproc)" 2>&1 |
    tee -a "$out/similarity.txt" || status=1
  echo "PyTorch on cuda:" | tee -a "$out/similarity.txt"
  timeout 60 python3 bench/torch_describe_baseline.py similarity --device cuda --threads "$(nproc)" 2>&1 |
    tee -a "$out/similarity.txt" || status=1

  echo "== 4. decode and preprocess, both pipelines, $(nproc) threads" | tee "$out/preprocess.txt"
  timeout 30 "$work/bin/clipdissect_bench_preprocess" --probe "/tmp/clipdissect-bench/describe-$images-20000/probe" \
    --images 256 --threads "$(nproc)" --batch 256 --benchmark_filter=preprocess_batch 2>&1 |
    tee -a "$out/preprocess.txt" || status=1
  return "$status"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2 && exit 2 ;;
esac

#!/usr/bin/env bash
# Decoding and preprocessing on one core, clipdissect next to PIL + torchvision (the reference's pipeline) in
# the same run: images/s for the JPEG decode, each pipeline's resize + crop + normalise (CLIP: bicubic 224;
# ImageNet: bilinear 256, crop 224) on decoded images, and both pipelines from the file. The last row is what
# describe does per image before the forward passes; the reference decodes each image once per model.
# Synthetic 500x375 JPEGs as in run_describe_bench.py. Each side runs --repeats times, alternating; medians.
#   bench/run_preprocess_bench.sh [--images 200] [--repeats 3]
# Needs the build (scripts/setup.sh), the fixtures (20k.txt) and Debian's python3-torch/torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
images=200 repeats=3
while [ $# -gt 0 ]; do
  case $1 in
    --images) images=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD_DIR:-build}
work=${BENCH_DIR:-/tmp/clipdissect-bench}/preprocess-$images
fixtures=${CLIPDISSECT_FIXTURES:-../shared/fixtures}
py=/usr/bin/python3
mkdir -p "$work"
[ -d "$work/probe" ] || $py bench/torch_describe_baseline.py make-inputs "$work" --images "$images" --concepts 1 \
  --concept-list "$fixtures/concepts/20k.txt"

echo "machine: $(lscpu | sed -n 's/^Model name:\s*//p'); one core; $images images (500x375 JPEG); medians of $repeats" >&2
for r in $(seq 1 "$repeats"); do
  OMP_NUM_THREADS=1 $py bench/torch_describe_baseline.py preprocess "$work" --images "$images" > "$work/torch-$r.json"
  "$build/clipdissect_bench_preprocess" --probe "$work/probe" --images "$images" --threads 1 \
    --benchmark_format=json --benchmark_out="$work/ours-$r.json" > /dev/null
done

$py - "$work" "$repeats" <<'PY'
import sys
sys.path.insert(0, "bench")
from side_by_side import median_rates
ours, theirs = median_rates(sys.argv[1], int(sys.argv[2]))
print("| images/s, one core | clipdissect | PIL + torchvision | ratio |")
print("|---|---|---|---|")
for key, b in theirs.items():
    print(f"| {key} | {ours[key]:.0f} | {b:.0f} | {ours[key] / b:.2f}x |")
PY

#!/usr/bin/env bash
# Model forward throughput, clipdissect next to PyTorch in the same run (random weights, batch 32).
#   bench/run_model_bench.sh [--threads 2] [--batch 32] [--seconds 10]
# Needs the build (scripts/setup.sh) and Debian's python3-torch/torchvision for the baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 batch=32 seconds=10
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD_DIR:-build}
work=${BENCH_DIR:-/tmp/clipdissect-bench}
mkdir -p "$work"
py=/usr/bin/python3
[ -f "$work/clip_vit_b16.pt" ] || OMP_NUM_THREADS=$threads $py bench/torch_baseline.py make-models "$work"
[ -f "$work/vit_b_16.pth" ] || $py -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.vit_b_16().state_dict(), '$work/vit_b_16.pth')"

echo "machine: $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) cores; threads $threads, batch $batch" >&2
OMP_NUM_THREADS=$threads $py bench/torch_baseline.py forward --threads "$threads" --batch "$batch" \
  --seconds "$seconds" > "$work/torch.json"
OMP_NUM_THREADS=$threads "$build/clipdissect_bench_model_forward" --threads "$threads" --batch "$batch" \
  --resnet50 "$work/resnet50.pth" --vit "$work/vit_b_16.pth" --clip "$work/clip_vit_b16.pt" \
  --benchmark_format=json --benchmark_out="$work/ours.json" > /dev/null

$py - "$work/torch.json" "$work/ours.json" <<'PY'
import json, sys
torch_ = json.load(open(sys.argv[1]))
ours = {b["name"].split("/")[0]: b["items_per_second"] for b in json.load(open(sys.argv[2]))["benchmarks"]}
rows = [
    ("ResNet-50", ours["resnet50"], max(torch_["resnet50"], torch_["resnet50_channels_last"]),
     f'plain {torch_["resnet50"]:.1f}, channels_last {torch_["resnet50_channels_last"]:.1f}'),
    ("ViT-B/16 (torchvision)", ours["vit_b_16"], torch_["vit_b_16"], "vit_b_16"),
    ("CLIP ViT-B/16 image", ours["clip_vit_b16_image"], torch_["vit_b_16"], "vs torchvision vit_b_16"),
]
print(f"PyTorch {torch_['torch']}")
print(f"| model | clipdissect img/s | PyTorch img/s (best) | ratio | PyTorch detail |")
print(f"|---|---|---|---|---|")
for name, a, b, detail in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {detail} |")
PY

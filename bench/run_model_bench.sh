#!/usr/bin/env bash
# Model throughput, clipdissect next to PyTorch in the same run (random weights, batch 32): ResNet-50,
# torchvision ViT-B/16 and CLIP ViT-B/16's image tower in images/s, CLIP's text tower in concepts/s over the
# 20k concept list. Each side runs --repeats times, alternating; the table shows medians.
#   bench/run_model_bench.sh [--threads 2] [--batch 32] [--seconds 10] [--repeats 3]
# Needs the build (scripts/setup.sh), the fixtures (20k.txt, the BPE file) and Debian's python3-torch.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 batch=32 seconds=10 repeats=3
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD_DIR:-build}
work=${BENCH_DIR:-/tmp/clipdissect-bench}
fixtures=${CLIPDISSECT_FIXTURES:-../shared/fixtures}
mkdir -p "$work"
py=/usr/bin/python3
[ -f "$work/clip_vit_b16.pt" ] || OMP_NUM_THREADS=$threads $py bench/torch_baseline.py make-models "$work"
[ -f "$work/vit_b_16.pth" ] || $py -c "import torch, torchvision; torch.manual_seed(0); torch.save(torchvision.models.vit_b_16().state_dict(), '$work/vit_b_16.pth')"
"$build/clipdissect" tokenize --bpe "$fixtures/clip/bpe_simple_vocab_16e6.txt.gz" < "$fixtures/concepts/20k.txt" \
  > "$work/tokens-20k.txt"

echo "machine: $(lscpu | sed -n 's/^Model name:\s*//p'), $(nproc) cores; threads $threads, batch $batch" >&2
for r in $(seq 1 "$repeats"); do
  OMP_NUM_THREADS=$threads $py bench/torch_baseline.py forward --threads "$threads" --batch "$batch" \
    --seconds "$seconds" --clip "$work/clip_vit_b16.pt" --tokens "$work/tokens-20k.txt" > "$work/torch-$r.json"
  OMP_NUM_THREADS=$threads "$build/clipdissect_bench_model_forward" --threads "$threads" --batch "$batch" \
    --resnet50 "$work/resnet50.pth" --vit "$work/vit_b_16.pth" --clip "$work/clip_vit_b16.pt" \
    --tokens "$work/tokens-20k.txt" --benchmark_format=json --benchmark_out="$work/ours-$r.json" > /dev/null
done

$py - "$work" "$repeats" <<'PY'
import json, sys
sys.path.insert(0, "bench")
from side_by_side import median_rates
work, repeats = sys.argv[1], int(sys.argv[2])
ours, torch_ = median_rates(work, repeats)
resnet_paths = {k: torch_[k] for k in ("resnet50", "resnet50_channels_last", "resnet50_mkldnn")}
rows = [
    ("ResNet-50 (img/s)", ours["resnet50"], max(resnet_paths.values()),
     ", ".join(f"{k.replace('resnet50_', '').replace('resnet50', 'plain')} {v:.1f}" for k, v in resnet_paths.items())),
    ("ViT-B/16 torchvision (img/s)", ours["vit_b_16"], torch_["vit_b_16"], "vit_b_16"),
    ("CLIP ViT-B/16 image (img/s)", ours["clip_vit_b16_image"], torch_["clip_vit_b16_image"], "CLIP's encode_image"),
    ("CLIP text, 20k list (concepts/s)", ours["clip_text_concepts"], torch_["clip_text_concepts"],
     "encode_text on 77 positions"),
]
print(f"PyTorch {json.load(open(f'{work}/torch-1.json'))['torch']}; medians of {repeats} runs")
print("| model | clipdissect | PyTorch (best) | ratio | PyTorch detail |")
print("|---|---|---|---|---|")
for name, a, b, detail in rows:
    print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x | {detail} |")
PY

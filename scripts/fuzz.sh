#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang, ASan+UBSan) into build-fuzz/ and fuzzes each for SECONDS.
#   scripts/fuzz.sh                  # every target, 20 s each
#   scripts/fuzz.sh 600              # long runs
#   scripts/fuzz.sh 60 image unpickler
# Seeds: fuzz/seeds/<target>/ and fixture files read in place ($CLIPDISSECT_FIXTURES or ../shared/fixtures).
# Corpora grow in build-fuzz/corpus/<target>/, logs go to build-fuzz/logs/. A crash, sanitizer report, uncaught
# exception, timeout or memory blow-up fails the script and prints the reproducer (build-fuzz/findings/...).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-20}
[ $# -gt 0 ] && shift
export CLIPDISSECT_FIXTURES=${CLIPDISSECT_FIXTURES:-$PWD/../shared/fixtures}
build=build-fuzz
all_targets=$(ls fuzz/targets | sed 's/\.cpp$//')
targets=${*:-$all_targets}

# Fixture files that seed each target (relative to the fixtures folder); each fits libFuzzer's default
# 1 MB input limit except the BPE vocabulary, which gets a larger -max_len.
fixture_seeds() {
  case $1 in
    safetensors) echo expected/hooks_vit_target.safetensors expected/hooks_resnet_basic.safetensors ;;
    clip_bpe_text | wordpiece_text) echo tokenizer/tricky.tsv concepts/broden_labels_clean.txt ;;
    clip_bpe_vocab) echo clip/bpe_simple_vocab_16e6.txt.gz ;;
    wordpiece_files) echo hf/mpnet/tokenizer.json hf/mpnet/vocab.txt hf/mpnet/tokenizer_config.json ;;
    image) (cd "$CLIPDISSECT_FIXTURES" && ls images/Zebra_stripes/*.* | grep -v -e notes.txt -e Thumbs.db) ;;
    label_files) echo e2e/descriptions_wpmi_fc.csv concepts/imagenet_labels.txt images/index.tsv ;;
    config_json) echo hf/clip_hf/config.json models/vit_target.pth.json hf/mpnet/config.json ;;
  esac
}

if [ ! -f "$build/CMakeCache.txt" ]; then
  CXX=${CXX_FUZZ:-clang++} cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -gline-tables-only" -DCLIPDISSECT_FUZZ=ON \
    -DCLIPDISSECT_BUILD_TESTS=OFF -DCLIPDISSECT_BUILD_BENCH=OFF
fi
mkdir -p "$build/logs"
if ! cmake --build "$build" -j"$(nproc)" --target $(for t in $targets; do echo "clipdissect_fuzz_$t"; done) \
    >"$build/logs/build.log" 2>&1; then
  tail -30 "$build/logs/build.log"
  exit 1
fi

failed=()
for target in $targets; do
  corpus=$build/corpus/$target findings=$build/findings/$target log=$build/logs/$target.log
  mkdir -p "$corpus" "$findings"
  seeds=$(for f in $(fixture_seeds "$target"); do printf '%s,' "$CLIPDISSECT_FIXTURES/$f"; done)
  arguments=()
  [ "$target" = clip_bpe_vocab ] && arguments+=(-max_len=2000000)
  case $target in config_json | safetensors | wordpiece_files) arguments+=(-dict=fuzz/json.dict) ;; esac
  [ -n "$seeds" ] && arguments+=("-seed_inputs=${seeds%,}")
  arguments+=("$corpus")  # the first folder receives new inputs; the seeds are only read
  [ -d "fuzz/seeds/$target" ] && arguments+=("fuzz/seeds/$target")
  # -timeout: one input may take at most 10 s; -rss_limit_mb also caps single allocations (malloc_limit_mb).
  # ASan's leak check is on: a leak on a rejected input is a finding too.
  if "$build/fuzz/clipdissect_fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$findings/" -print_final_stats=1 "${arguments[@]}" >"$log" 2>&1; then
    echo "fuzz $target: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${seconds} s, no finding"
  else
    echo "fuzz $target: FAILED (log $log)"
    grep -E 'ERROR|SUMMARY|Test unit written to|uncaught exception|terminate called' "$log" | head -8 | sed 's/^/  /'
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found problems in: ${failed[*]} (reproduce: $build/fuzz/clipdissect_fuzz_<target> <file>)"
  exit 1
fi

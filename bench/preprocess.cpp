// Images/s of decoding and preprocessing probe images (Google Benchmark): the JPEG decode alone, each
// pipeline's resize + crop + normalise on decoded images, and preprocess_batch with both pipelines into the
// CPU backend's host buffers (what describe runs before the forward passes: CLIP's bicubic 224 and
// ImageNet's bilinear 256 -> 224).
//   clipdissect_bench_preprocess --probe DIR [--images 256] [--threads 1] [--batch 64] [benchmark flags]
// bench/run_preprocess_bench.sh makes the synthetic JPEGs and runs PIL + torchvision in the same run.
#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>
#include <fmt/core.h>

#include "clipdissect/backend.h"
#include "clipdissect/image.h"
#include "clipdissect/probe.h"
#include "main_reporting_errors.h"

using namespace clipdissect;

namespace {

void decode_loop(benchmark::State& state, const ProbeSet& probe) {
  std::size_t next = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(probe.load(next));
    next = (next + 1) % probe.size();
  }
  state.SetItemsProcessed(state.iterations());
}

void geometry_loop(benchmark::State& state, const std::vector<RgbImage>& images, const Preprocess& preprocess) {
  std::vector<float> out(static_cast<std::size_t>(3) * preprocess.crop * preprocess.crop);
  std::size_t next = 0;
  for (auto _ : state) {
    normalize_to_chw(apply_geometry(images[next], preprocess), preprocess, out);
    benchmark::DoNotOptimize(out.data());
    next = (next + 1) % images.size();
  }
  state.SetItemsProcessed(state.iterations());
}

// Into the CPU backend's host buffers, as describe does.
void batch_loop(benchmark::State& state, const ProbeSet& probe, const std::vector<Preprocess>& preprocesses,
                std::size_t batch, Backend& backend) {
  const MakeHostBuffer make_buffer = [&](std::size_t floats) { return backend.host_buffer(floats); };
  std::size_t first = 0;
  for (auto _ : state) {
    const std::size_t count = std::min(batch, probe.size() - first);
    benchmark::DoNotOptimize(preprocess_batch(probe, first, count, preprocesses, make_buffer));
    first = first + count == probe.size() ? 0 : first + count;
    state.SetItemsProcessed(state.items_processed() + static_cast<std::int64_t>(count));
  }
}

}  // namespace

static int run(int argc, char** argv) {
  keep_freed_heap_memory();  // as the CLI does
  std::string folder;
  int threads = 1, batch = 64, images = 256;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && arg == "--probe") folder = argv[++i];
    else if (i + 1 < argc && arg == "--threads") threads = std::stoi(argv[++i]);
    else if (i + 1 < argc && arg == "--batch") batch = std::stoi(argv[++i]);
    else if (i + 1 < argc && arg == "--images") images = std::stoi(argv[++i]);
    else rest.push_back(argv[i]);
  }
  if (folder.empty()) {
    fmt::print(stderr, "usage: {} --probe DIR [--images 256] [--threads 1] [--batch 64]\n", argv[0]);
    return 2;
  }
  omp_set_num_threads(threads);
  const ProbeSet probe = ProbeSet::open(folder);
  const std::vector<Preprocess> pipelines{clip_preprocess(224), imagenet_preprocess()};
  const std::unique_ptr<Backend> backend = make_cpu_backend(threads);
  std::vector<RgbImage> decoded;
  for (std::size_t i = 0; i < std::min<std::size_t>(probe.size(), images); ++i) decoded.push_back(probe.load(i));

  const auto timed = [](benchmark::internal::Benchmark* b) {
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);
  };
  timed(benchmark::RegisterBenchmark("decode", [&](benchmark::State& s) { decode_loop(s, probe); }));
  timed(benchmark::RegisterBenchmark("clip_geometry_normalize",
                                     [&](benchmark::State& s) { geometry_loop(s, decoded, pipelines[0]); }));
  timed(benchmark::RegisterBenchmark("imagenet_geometry_normalize",
                                     [&](benchmark::State& s) { geometry_loop(s, decoded, pipelines[1]); }));
  timed(benchmark::RegisterBenchmark("preprocess_batch_both", [&](benchmark::State& s) {
    batch_loop(s, probe, pipelines, static_cast<std::size_t>(batch), *backend);
  }));

  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }

// SoftWPMI (and the other similarity functions) on synthetic inputs at the paper's scale:
//   clipdissect_bench_similarity [--images 50000] [--concepts 20000] [--neurons 2048] [--dim 512]
//                                [--function soft_wpmi] [--threads 2] [--device cpu|cuda[:N]] [benchmark flags]
// Reports seconds per run and the process's peak resident memory.
#include <sys/resource.h>

#include <random>
#include <string>

#include <benchmark/benchmark.h>
#include <omp.h>

#include "clipdissect/backend.h"
#include "clipdissect/similarity.h"
#include "main_reporting_errors.h"

using namespace clipdissect;

namespace {

std::vector<float> normal_values(std::size_t n, unsigned seed, bool relu) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist;
  std::vector<float> values(n);
  for (float& v : values) v = relu ? std::max(0.f, dist(rng)) : dist(rng);
  return values;
}

double peak_rss_gib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / (1024.0 * 1024.0);  // ru_maxrss is in KiB on Linux
}

}  // namespace

static int run(int argc, char** argv) {
  keep_freed_heap_memory();  // as the CLI does
  std::int64_t images = 50000, concepts = 20000, neurons = 2048, dim = 512;
  int threads = 2;
  std::string function = "soft_wpmi", device = "cpu";
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (has_value && arg == "--images") images = std::stoll(argv[++i]);
    else if (has_value && arg == "--concepts") concepts = std::stoll(argv[++i]);
    else if (has_value && arg == "--neurons") neurons = std::stoll(argv[++i]);
    else if (has_value && arg == "--dim") dim = std::stoll(argv[++i]);
    else if (has_value && arg == "--threads") threads = std::stoi(argv[++i]);
    else if (has_value && arg == "--function") function = argv[++i];
    else if (has_value && arg == "--device") device = argv[++i];
    else rest.push_back(argv[i]);
  }
  omp_set_num_threads(threads);
  const auto fn = parse_similarity_function(function);
  if (!fn) return 2;
  const std::vector<float> image_embeddings = normal_values(images * dim, 1, false);
  const std::vector<float> text_embeddings = normal_values(concepts * dim, 2, false);
  const std::vector<float> activations = normal_values(images * neurons, 3, true);
  const SimilarityInputs inputs{image_embeddings, text_embeddings, activations, images, dim, concepts, neurons};

  const Device on = parse_device(device);
  if (on.cuda) compute_similarity(*fn, inputs, {}, on);  // untimed: the first call starts the CUDA context
  const std::string name = function + "/" + device_name(on) + "/N" + std::to_string(images) + "/K" + std::to_string(concepts) + "/C" +
                           std::to_string(neurons);
  benchmark::RegisterBenchmark(name.c_str(), [&](benchmark::State& state) {
    for (auto _ : state) benchmark::DoNotOptimize(compute_similarity(*fn, inputs, {}, on));
    state.counters["peak_rss_GiB"] = peak_rss_gib();
  })->Unit(benchmark::kSecond)->UseRealTime()->Iterations(1);
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }

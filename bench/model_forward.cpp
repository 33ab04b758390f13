// Images/s of each model's forward pass on the CPU backend (Google Benchmark), and concepts/s of CLIP's text
// tower over a whole concept list.
//   clipdissect_bench_model_forward --resnet50 FILE --clip FILE --vit FILE [--tokens FILE] [--threads 2]
//                                   [--batch 32] [benchmark flags]
// --tokens: the concepts' token ids, a line each (`clipdissect tokenize`). bench/run_model_bench.sh makes the
// random-weight checkpoints and the token file and runs PyTorch in the same run.
#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>

#include <benchmark/benchmark.h>

#include "clipdissect/clip.h"
#include "clipdissect/network.h"
#include "main_reporting_errors.h"

using namespace clipdissect;

namespace {

Tensor random_images(Backend& backend, int batch, int size) {
  std::mt19937 rng(0);
  std::normal_distribution<float> dist;
  std::vector<float> pixels(static_cast<std::size_t>(batch) * 3 * size * size);
  for (float& p : pixels) p = dist(rng);
  return backend.upload(pixels, {batch, 3, size, size});
}

void forward_loop(benchmark::State& state, Backend& backend, const Network& network, int batch) {
  const Tensor images = random_images(backend, batch, network.preprocess().crop);
  backend.download(network.forward(images, nullptr));  // warm-up: primitive creation, weight reorders
  for (auto _ : state) benchmark::DoNotOptimize(backend.download(network.forward(images, nullptr)));
  state.SetItemsProcessed(state.iterations() * batch);
}

std::vector<std::vector<std::int32_t>> read_token_rows(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::vector<std::int32_t>> rows;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ids(line);
    std::vector<std::int32_t> row;
    for (std::int32_t id; ids >> id;) row.push_back(id);
    if (!row.empty()) rows.push_back(std::move(row));
  }
  return rows;
}

void text_loop(benchmark::State& state, ClipModel& clip, const std::vector<std::vector<std::int32_t>>& rows) {
  clip.encode_text({rows.begin(), rows.begin() + std::min<std::size_t>(rows.size(), 256)});  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(clip.encode_text(rows));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(rows.size()));
}

}  // namespace

static int run(int argc, char** argv) {
  keep_freed_heap_memory();  // as the CLI does
  std::map<std::string, std::string> files;
  int threads = 2, batch = 32;
  std::vector<char*> rest{argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 < argc && (arg == "--resnet50" || arg == "--clip" || arg == "--vit" || arg == "--tokens"))
      files[arg.substr(2)] = argv[++i];
    else if (i + 1 < argc && arg == "--threads") threads = std::stoi(argv[++i]);
    else if (i + 1 < argc && arg == "--batch") batch = std::stoi(argv[++i]);
    else rest.push_back(argv[i]);
  }
  auto backend = make_cpu_backend(threads);
  std::vector<std::pair<std::string, std::unique_ptr<Network>>> targets;
  if (files.count("resnet50")) targets.emplace_back("resnet50", load_target(*backend, files["resnet50"]));
  if (files.count("vit")) targets.emplace_back("vit_b_16", load_target(*backend, files["vit"]));
  std::unique_ptr<ClipModel> clip;
  if (files.count("clip")) clip = ClipModel::load(*backend, files["clip"]);

  auto add = [&](const std::string& name, const Network& network) {
    benchmark::RegisterBenchmark(name.c_str(), [&](benchmark::State& s) { forward_loop(s, *backend, network, batch); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->MinTime(5.0);
  };
  for (const auto& [name, network] : targets) add(name, *network);
  if (clip) add("clip_vit_b16_image", clip->visual());
  std::vector<std::vector<std::int32_t>> token_rows;
  if (clip && files.count("tokens")) {
    token_rows = read_token_rows(files["tokens"]);
    benchmark::RegisterBenchmark("clip_text_concepts", [&](benchmark::State& s) { text_loop(s, *clip, token_rows); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime()
        ->Iterations(1);
  }

  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

int main(int argc, char** argv) { return main_reporting_errors(run, argc, argv); }

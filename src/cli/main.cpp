// The clipdissect command line: a thin layer over the library.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "clipdissect/probe.h"
#include "clipdissect/tokenizer.h"
#include "clipdissect/weights.h"

namespace fs = std::filesystem;
using namespace clipdissect;

namespace {

struct ComputeOptions {
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int batch_size = 32;
};

void add_compute_options(CLI::App& command, ComputeOptions& options) {
  command.add_option("--threads", options.threads, "CPU threads")->check(CLI::PositiveNumber);
  command.add_option("--batch-size", options.batch_size, "Images per forward pass")->check(CLI::PositiveNumber);
}

WeightMap load_any(const fs::path& path) { return fs::is_directory(path) ? load_weights_folder(path) : load_weights(path); }

void run_inspect(const fs::path& file, const std::optional<fs::path>& target_config) {
  const WeightMap weights = load_any(file);
  fmt::print("file: {}\nformat: {}\ntensors: {}\n", file.string(), weights.format(), weights.size());
  for (const HostTensor& t : weights.tensors())
    fmt::print("  {}  {}  {}\n", t.name, dtype_name(t.dtype), shape_to_string(t.shape));
  const std::string architecture = describe_architecture(file);
  fmt::print("architecture: {}\n", architecture);
  if (architecture == "unknown") return;
  auto backend = make_cpu_backend(1);
  const auto network = load_target(*backend, file, target_config);
  fmt::print("layers ({}): {}\n", network->layer_names().size(), fmt::join(network->layer_names(), " "));
}

void run_tokenize(const std::optional<fs::path>& bpe, bool truncate) {
  const ClipTokenizer tokenizer = ClipTokenizer::from_file(resolve_bpe_path(bpe));
  std::string line;
  while (std::getline(std::cin, line)) fmt::print("{}\n", fmt::join(tokenizer.tokenize(line, truncate), " "));
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot read the text file", path.string());
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) fail("{}: no text lines", path.string());
  return lines;
}

// Runs `consume(batch_tensor, first_index, count)` over the preprocessed images in batches.
template <typename Consume>
void for_each_batch(Backend& backend, const std::vector<fs::path>& images, const Preprocess& preprocess,
                    int batch_size, Consume consume) {
  for (std::size_t start = 0; start < images.size(); start += batch_size) {
    const std::size_t count = std::min<std::size_t>(batch_size, images.size() - start);
    const std::vector<float> pixels =
        preprocess_batch(std::span<const fs::path>(images).subspan(start, count), preprocess);
    consume(backend.upload(pixels, {static_cast<std::int64_t>(count), 3, preprocess.crop, preprocess.crop}));
    spdlog::info("{} / {} images", start + count, images.size());
  }
}

std::string paths_json(const std::vector<fs::path>& paths) {
  nlohmann::json list = nlohmann::json::array();
  for (const fs::path& p : paths) list.push_back(p.string());
  return list.dump();
}

void run_embed(const fs::path& clip_path, const std::optional<fs::path>& images, const std::optional<fs::path>& texts,
               const fs::path& out, const std::optional<fs::path>& bpe, bool truncate, const ComputeOptions& options) {
  auto backend = make_cpu_backend(options.threads);
  auto clip = ClipModel::load(*backend, clip_path);
  const int dim = clip->config().embed_dim;
  std::vector<float> embeddings;
  std::map<std::string, std::string> metadata{{"clip", clip_path.string()}};
  if (images) {
    const std::vector<fs::path> paths = list_images(*images);
    for_each_batch(*backend, paths, clip->preprocess(), options.batch_size, [&](const Tensor& batch) {
      const std::vector<float> rows = clip->encode_image(batch);
      embeddings.insert(embeddings.end(), rows.begin(), rows.end());
    });
    metadata["images"] = paths_json(paths);
  } else {
    const ClipTokenizer tokenizer = ClipTokenizer::from_file(resolve_bpe_path(bpe));
    std::vector<std::vector<std::int32_t>> tokens;
    for (const std::string& line : read_lines(*texts)) tokens.push_back(tokenizer.tokenize(line, truncate));
    embeddings = clip->encode_text(tokens);
    metadata["texts"] = texts->string();
  }
  const auto rows = static_cast<std::int64_t>(embeddings.size() / dim);
  save_safetensors(out, {make_f32_tensor("embeddings", {rows, dim}, embeddings)}, metadata);
  spdlog::info("wrote {} embeddings of dimension {} to {}", rows, dim, out.string());
}

std::vector<std::string> split_layers(const std::string& list) {
  std::vector<std::string> layers;
  std::size_t start = 0;
  while (start <= list.size()) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    if (comma > start) layers.push_back(normalize_layer_name(list.substr(start, comma - start)));
    start = comma + 1;
  }
  if (layers.empty()) fail("--layers: no layer names given");
  return layers;
}

void run_activations(const fs::path& target, const std::optional<fs::path>& target_config, const std::string& layers_arg,
                     const fs::path& images, const std::string& pool, const fs::path& out,
                     const ComputeOptions& options) {
  auto backend = make_cpu_backend(options.threads);
  auto network = load_target(*backend, target, target_config);
  const std::vector<std::string> layers = split_layers(layers_arg);
  check_layer_names(*network, layers, target.string());
  const std::vector<fs::path> paths = list_images(images);
  Recorder recorder(*backend, pool == "max" ? PoolMode::Max : PoolMode::Avg, layers);
  for_each_batch(*backend, paths, network->preprocess(), options.batch_size,
                 [&](const Tensor& batch) { network->forward(batch, &recorder); });
  std::vector<OwnedTensor> tensors;
  for (const std::string& layer : layers) {
    const LayerSummary& summary = recorder.summary(layer);
    tensors.push_back(make_f32_tensor(layer, {summary.rows(), summary.channels}, summary.values));
  }
  save_safetensors(out, tensors, {{"target", target.string()}, {"pool", pool}, {"images", paths_json(paths)}});
  spdlog::info("wrote {} layers for {} images to {}", layers.size(), paths.size(), out.string());
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"clipdissect: describe what the neurons of vision networks do, with CLIP (CLIP-Dissect)"};
  app.set_version_flag("--version", std::string("clipdissect ") + CLIPDISSECT_VERSION);
  app.require_subcommand(1);
  spdlog::set_default_logger(spdlog::stderr_color_mt("clipdissect"));
  spdlog::set_pattern("%^%l%$: %v");

  fs::path file, clip_path, target, out;
  std::optional<fs::path> target_config, bpe, images, texts;
  std::optional<fs::path> images_required;
  std::string layers, pool = "avg";
  bool truncate = false;
  ComputeOptions compute;

  CLI::App* inspect = app.add_subcommand("inspect", "List a checkpoint's tensors and the architecture it holds");
  inspect->add_option("FILE", file, "Checkpoint (.pt, .pth, .pth.tar, .safetensors) or transformers folder")
      ->required();
  inspect->add_option("--target-config", target_config, "JSON with the model constructor's arguments");

  CLI::App* tokenize = app.add_subcommand("tokenize", "CLIP token ids of each line of standard input");
  tokenize->add_option("--bpe", bpe, "bpe_simple_vocab_16e6.txt.gz (default: $CLIPDISSECT_BPE or the cache)");
  tokenize->add_flag("--truncate", truncate, "Cut texts longer than 77 tokens instead of failing");

  CLI::App* embed = app.add_subcommand("embed", "CLIP embeddings of images or texts");
  embed->add_option("--clip", clip_path, "CLIP checkpoint")->required();
  auto* images_opt = embed->add_option("--images", images, "Image folder or list file");
  auto* texts_opt = embed->add_option("--texts", texts, "Text file, one text per line");
  images_opt->excludes(texts_opt);
  embed->add_option("--out", out, "Output .safetensors")->required();
  embed->add_option("--bpe", bpe, "bpe_simple_vocab_16e6.txt.gz");
  embed->add_flag("--truncate", truncate, "Cut texts longer than 77 tokens instead of failing");
  add_compute_options(*embed, compute);

  CLI::App* activations = app.add_subcommand("activations", "Per-image summaries of a target network's layers");
  activations->add_option("--target", target, "Target checkpoint")->required();
  activations->add_option("--target-config", target_config, "JSON with the model constructor's arguments");
  activations->add_option("--layers", layers, "Comma-separated module names, e.g. conv1,layer4.2.conv3")->required();
  activations->add_option("--images", images_required, "Image folder or list file")->required();
  activations->add_option("--pool", pool, "Summary of conv maps: spatial avg or max")
      ->check(CLI::IsMember({"avg", "max"}));
  activations->add_option("--out", out, "Output .safetensors")->required();
  add_compute_options(*activations, compute);

  CLI11_PARSE(app, argc, argv);

  try {
    if (*inspect) run_inspect(file, target_config);
    if (*tokenize) run_tokenize(bpe, truncate);
    if (*embed) {
      if (!images && !texts) fail("embed: give --images DIR_OR_LIST or --texts FILE");
      run_embed(clip_path, images, texts, out, bpe, truncate, compute);
    }
    if (*activations) run_activations(target, target_config, layers, *images_required, pool, out, compute);
  } catch (const Error& e) {
    spdlog::error("{}", e.what());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("unexpected failure: {}", e.what());
    return 2;
  }
  return 0;
}

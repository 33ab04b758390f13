// inspect, tokenize, embed, activations: the model runtime from the command line.
#include <fstream>
#include <iostream>
#include <memory>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "clipdissect/probe.h"
#include "clipdissect/tokenizer.h"
#include "clipdissect/weights.h"

namespace clipdissect::cli {

namespace fs = std::filesystem;

namespace {

void run_inspect_onnx(const fs::path& file) {
  fmt::print("file: {}\nformat: onnx\narchitecture: {}\n", file.string(), describe_architecture(file));
  const auto layers = onnx_layer_shapes(file);
  fmt::print("layers ({}), name and shape:\n", layers.size());
  for (const auto& [name, shape] : layers) fmt::print("  {}  {}\n", name, shape);
}

void run_inspect(const fs::path& file, const std::optional<fs::path>& target_config) {
  if (is_onnx_model(file)) return run_inspect_onnx(file);
  const WeightMap weights = fs::is_directory(file) ? load_weights_folder(file) : load_weights(file);
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

std::vector<std::string> read_text_lines(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot read the text file", path.string());
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) fail("{}: no text lines", path.string());
  return lines;
}

// Runs `consume(batch)` over the preprocessed probe images in batches; an unreadable image is an error.
template <typename Consume>
void for_each_batch(Backend& backend, const ProbeSet& probe, const Preprocess& preprocess, int batch_size,
                    Consume consume) {
  for (std::size_t first = 0; first < probe.size(); first += batch_size) {
    const std::size_t count = std::min<std::size_t>(batch_size, probe.size() - first);
    const PreprocessedBatch batch = preprocess_batch(probe, first, count, std::span(&preprocess, 1),
                                                     [&](std::size_t floats) { return backend.host_buffer(floats); });
    if (!batch.failures.empty()) fail("{}", batch.failures.front().second);
    consume(backend.upload(batch.pixels[0], {static_cast<std::int64_t>(count), 3, preprocess.crop, preprocess.crop}));
    spdlog::info("{} / {} images", first + count, probe.size());
  }
}

std::string names_json(const ProbeSet& probe) {
  nlohmann::json list = nlohmann::json::array();
  for (std::size_t i = 0; i < probe.size(); ++i) list.push_back(probe.name(i));
  return list.dump();
}

struct EmbedOptions {
  fs::path clip, out;
  std::optional<fs::path> images, texts, bpe;
  bool truncate = false;
  ComputeOptions compute;
};

void run_embed(const EmbedOptions& o) {
  if (!o.images && !o.texts) fail("embed: give --images DIR_OR_LIST or --texts FILE");
  auto backend = o.compute.make_backend(ComputeOptions::Model::Clip);
  auto clip = ClipModel::load(*backend, o.clip);
  const int dim = clip->config().embed_dim;
  std::vector<float> embeddings;
  std::map<std::string, std::string> metadata{{"clip", o.clip.string()}};
  if (o.images) {
    const ProbeSet probe = ProbeSet::open(*o.images);
    for_each_batch(*backend, probe, clip->preprocess(), o.compute.batch_size, [&](const Tensor& batch) {
      const std::vector<float> rows = clip->encode_image(batch);
      embeddings.insert(embeddings.end(), rows.begin(), rows.end());
    });
    metadata["images"] = names_json(probe);
  } else {
    const ClipTokenizer tokenizer = ClipTokenizer::from_file(resolve_bpe_path(o.bpe));
    std::vector<std::vector<std::int32_t>> tokens;
    for (const std::string& line : read_text_lines(*o.texts)) tokens.push_back(tokenizer.tokenize(line, o.truncate));
    embeddings = clip->encode_text(tokens);
    metadata["texts"] = o.texts->string();
  }
  const auto rows = static_cast<std::int64_t>(embeddings.size() / dim);
  save_safetensors(o.out, {make_f32_tensor("embeddings", {rows, dim}, embeddings)}, metadata);
  spdlog::info("wrote {} embeddings of dimension {} to {}", rows, dim, o.out.string());
}

struct ActivationsOptions {
  fs::path target, images, out;
  std::optional<fs::path> target_config;
  std::string layers, pool = "avg";
  ComputeOptions compute;
};

void run_activations(const ActivationsOptions& o) {
  auto backend = o.compute.make_backend(ComputeOptions::Model::Target);
  auto network = load_target(*backend, o.target, o.target_config);
  const std::vector<std::string> layers = split_layers(o.layers);
  check_layer_names(*network, layers, o.target.string());
  const ProbeSet probe = ProbeSet::open(o.images);
  Recorder recorder(*backend, o.pool == "max" ? PoolMode::Max : PoolMode::Avg, layers);
  for_each_batch(*backend, probe, network->preprocess(), o.compute.batch_size,
                 [&](const Tensor& batch) { network->forward(batch, &recorder); });
  std::vector<OwnedTensor> tensors;
  for (const std::string& layer : layers) {
    const LayerSummary& summary = recorder.summary(layer);
    tensors.push_back(make_f32_tensor(layer, {summary.rows(), summary.channels}, summary.values));
  }
  save_safetensors(o.out, tensors, {{"target", o.target.string()}, {"pool", o.pool}, {"images", names_json(probe)}});
  spdlog::info("wrote {} layers for {} images to {}", layers.size(), probe.size(), o.out.string());
}

}  // namespace

void register_model_commands(CLI::App& app) {
  struct InspectOptions {
    fs::path file;
    std::optional<fs::path> target_config;
  };
  auto inspect_options = std::make_shared<InspectOptions>();
  CLI::App* inspect = app.add_subcommand("inspect", "List a checkpoint's tensors and the architecture it holds");
  inspect->add_option("FILE", inspect_options->file, "Checkpoint (.pt, .pth, .pth.tar, .safetensors, .onnx) or folder")
      ->required();
  inspect->add_option("--target-config", inspect_options->target_config, "JSON with the model constructor's arguments");
  inspect->callback([inspect_options] { run_inspect(inspect_options->file, inspect_options->target_config); });

  struct TokenizeOptions {
    std::optional<fs::path> bpe;
    bool truncate = false;
  };
  auto tokenize_options = std::make_shared<TokenizeOptions>();
  CLI::App* tokenize = app.add_subcommand("tokenize", "CLIP token ids of each line of standard input");
  tokenize->add_option("--bpe", tokenize_options->bpe, "bpe_simple_vocab_16e6.txt.gz (default: $CLIPDISSECT_BPE or the cache)");
  tokenize->add_flag("--truncate", tokenize_options->truncate, "Cut texts longer than 77 tokens instead of failing");
  tokenize->callback([tokenize_options] { run_tokenize(tokenize_options->bpe, tokenize_options->truncate); });

  auto embed_options = std::make_shared<EmbedOptions>();
  CLI::App* embed = app.add_subcommand("embed", "CLIP embeddings of images or texts");
  embed->add_option("--clip", embed_options->clip, "CLIP checkpoint")->required();
  auto* images = embed->add_option("--images", embed_options->images, "Image folder, list file or probe set");
  auto* texts = embed->add_option("--texts", embed_options->texts, "Text file, one text per line");
  images->excludes(texts);
  embed->add_option("--out", embed_options->out, "Output .safetensors")->required();
  embed->add_option("--bpe", embed_options->bpe, "bpe_simple_vocab_16e6.txt.gz");
  embed->add_flag("--truncate", embed_options->truncate, "Cut texts longer than 77 tokens instead of failing");
  add_compute_options(*embed, embed_options->compute);
  embed->callback([embed_options] { run_embed(*embed_options); });

  auto activation_options = std::make_shared<ActivationsOptions>();
  CLI::App* activations = app.add_subcommand("activations", "Per-image summaries of a target network's layers");
  activations->add_option("--target", activation_options->target, "Target checkpoint")->required();
  activations->add_option("--target-config", activation_options->target_config, "JSON with the model constructor's arguments");
  activations->add_option("--layers", activation_options->layers, "Comma-separated module names, e.g. conv1,layer4.2.conv3")
      ->required();
  activations->add_option("--images", activation_options->images, "Image folder, list file or probe set")->required();
  activations->add_option("--pool", activation_options->pool, "Summary of conv maps: spatial avg or max")
      ->check(CLI::IsMember({"avg", "max"}));
  activations->add_option("--out", activation_options->out, "Output .safetensors")->required();
  add_compute_options(*activations, activation_options->compute);
  activations->callback([activation_options] { run_activations(*activation_options); });
}

}  // namespace clipdissect::cli

// describe: one pass over the probe images (each decoded once, feeding CLIP's and the target's
// preprocessing), text embeddings of the concepts, then per layer the similarity matrix and its argmax.
#include "clipdissect/describe.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <future>
#include <numeric>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "clipdissect/clip.h"
#include "clipdissect/error.h"
#include "clipdissect/network.h"
#include "clipdissect/paths.h"
#include "clipdissect/probe.h"
#include "clipdissect/progress.h"
#include "clipdissect/tokenizer.h"
#include "dissect/cache.h"
#include "io/sha256.h"

namespace clipdissect {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Bump when preprocessing or model code changes what a cached entry holds.
constexpr int kCacheVersion = 1;

std::string pool_name(PoolMode mode) { return mode == PoolMode::Max ? "max" : "avg"; }

struct Keys {
  std::string clip, target;  // checksums
  std::string probe, concepts;

  std::string image() const { return fmt::format("clip-image v{}\nclip {}\nprobe {}\n", kCacheVersion, clip, probe); }
  std::string text() const { return fmt::format("clip-text v{}\nclip {}\nconcepts {}\n", kCacheVersion, clip, concepts); }
  std::string layer(const std::string& name, PoolMode pool, const std::string& config) const {
    return fmt::format("target v{}\ntarget {}\nconfig {}\nprobe {}\nlayer {}\npool {}\n", kCacheVersion, target,
                       config, probe, name, pool_name(pool));
  }
};

std::vector<std::int64_t> iota64(std::int64_t n) {
  std::vector<std::int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// Everything the image pass produces: CLIP embeddings and the summaries of the layers not cached.
struct ImagePass {
  std::optional<CachedMatrix> clip_images;
  std::map<std::string, CachedMatrix> layers;
};

class Describer {
 public:
  explicit Describer(const DescribeConfig& config)
      : config_(config),
        clip_backend_(make_backend(config.device, config.clip_precision, config.threads)),
        target_backend_(config.target_precision == config.clip_precision
                            ? nullptr
                            : make_backend(config.device, config.target_precision, config.threads)),
        cache_(config.use_cache ? std::optional<fs::path>(config.cache_dir.value_or(default_cache_dir() / "activations"))
                                : std::nullopt) {}

  DescribeResult run();

 private:
  ClipModel& clip() {
    if (!clip_) clip_ = ClipModel::load(*clip_backend_, config_.clip);
    return *clip_;
  }
  // The target's own backend when its precision differs from CLIP's, else the same one.
  Backend& target_backend() { return target_backend_ ? *target_backend_ : *clip_backend_; }
  Network& target() {
    if (!target_) target_ = load_target(target_backend(), config_.target, config_.target_config);
    return *target_;
  }

  void validate_layers();
  ImagePass image_pass(bool need_clip, const std::vector<std::string>& layers, DescribeResult& result);
  CachedMatrix text_embeddings(const std::vector<std::string>& concepts);
  LayerDescription describe_layer(const std::string& name, const CachedMatrix& activations,
                                  const CachedMatrix& images, const CachedMatrix& texts,
                                  std::vector<float>* keep_similarity) const;

  const DescribeConfig& config_;
  std::unique_ptr<Backend> clip_backend_, target_backend_;
  ActivationCache cache_;
  std::unique_ptr<ClipModel> clip_;
  std::unique_ptr<Network> target_;
  ProbeSet probe_;
  Keys keys_;
};

void Describer::validate_layers() {
  if (config_.layers.empty()) fail("describe: no layers given (--layers)");
  check_layer_names(target(), config_.layers, config_.target.string());
  if (config_.save_similarity && std::find(config_.layers.begin(), config_.layers.end(), *config_.save_similarity) ==
                                     config_.layers.end())
    fail("describe: the layer whose similarity matrix is to be saved, '{}', is not among the described layers ({})",
         *config_.save_similarity, fmt::join(config_.layers, ","));
}

ImagePass Describer::image_pass(bool need_clip, const std::vector<std::string>& layers, DescribeResult& result) {
  ImagePass pass;
  std::vector<Preprocess> preprocesses;
  if (need_clip) preprocesses.push_back(clip().preprocess());
  if (!layers.empty()) preprocesses.push_back(target().preprocess());
  Recorder recorder(target_backend(), config_.pool, layers);
  std::vector<float> clip_rows;
  std::vector<std::int64_t> used;
  const std::size_t total = probe_.size();
  ProgressBar progress(need_clip && !layers.empty() ? "CLIP + target forward" : need_clip ? "CLIP images" : "target forward",
                       total, ProgressUnit::items, config_.quiet);
  const auto decode = [&](std::size_t first) {
    return preprocess_batch(probe_, first, std::min<std::size_t>(config_.batch_size, total - first), preprocesses);
  };
  // A GPU gets the next batch decoded while it runs the current one; on the CPU decoding and the forward
  // passes would compete for the same cores.
  const bool prefetch = config_.device.cuda;
  std::future<PreprocessedBatch> next;
  if (prefetch && total > 0) next = std::async(std::launch::async, decode, 0);
  for (std::size_t first = 0; first < total; first += config_.batch_size) {
    const std::size_t count = std::min<std::size_t>(config_.batch_size, total - first);
    auto stage = Clock::now();
    PreprocessedBatch batch = prefetch ? next.get() : decode(first);
    if (prefetch && first + count < total) next = std::async(std::launch::async, decode, first + count);
    result.stats.decode_seconds += seconds_since(stage);  // with prefetching, only the wait for decoding
    for (const auto& [index, reason] : batch.failures) {
      if (config_.strict) fail("{} (--strict)", reason);
      spdlog::warn("skipping image: {}", reason);
      result.skipped_images.emplace_back(static_cast<std::int64_t>(index), reason);
    }
    if (batch.images.empty()) {
      progress.update(first + count);
      continue;
    }
    used.insert(used.end(), batch.images.begin(), batch.images.end());
    const std::int64_t n = static_cast<std::int64_t>(batch.images.size());
    std::size_t which = 0;
    if (need_clip) {
      stage = Clock::now();
      const int size = preprocesses[which].crop;
      const std::vector<float> rows =
          clip().encode_image(clip_backend_->upload(batch.pixels[which++], {n, 3, size, size}));
      clip_rows.insert(clip_rows.end(), rows.begin(), rows.end());
      result.stats.clip_image_seconds += seconds_since(stage);
    }
    if (!layers.empty()) {
      stage = Clock::now();
      const int size = preprocesses[which].crop;
      target().forward(target_backend().upload(batch.pixels[which], {n, 3, size, size}), &recorder);
      result.stats.target_seconds += seconds_since(stage);
    }
    progress.update(first + count);
  }
  progress.finish();
  if (used.empty()) fail("describe: none of the {} probe images could be read", total);
  if (need_clip) {
    const auto n = static_cast<std::int64_t>(used.size());
    pass.clip_images = CachedMatrix{n, static_cast<std::int64_t>(clip_rows.size()) / n, std::move(clip_rows), used};
  }
  for (const std::string& layer : layers) {
    const LayerSummary& summary = recorder.summary(layer);
    pass.layers[layer] = CachedMatrix{summary.rows(), summary.channels, summary.values, used};
  }
  return pass;
}

CachedMatrix Describer::text_embeddings(const std::vector<std::string>& concepts) {
  const ClipTokenizer tokenizer = ClipTokenizer::from_file(resolve_bpe_path(config_.bpe));
  const std::vector<std::vector<std::int32_t>> tokens = tokenizer.tokenize_all(
      concepts, [&](std::size_t i) { return fmt::format("{}: concept {} (non-empty lines counted)", config_.concepts.string(), i + 1); });
  ProgressBar progress("CLIP texts", tokens.size(), ProgressUnit::items, config_.quiet);
  std::vector<float> values;
  constexpr std::size_t kChunk = 2048;  // concepts per progress step (sorted by length within it)
  for (std::size_t first = 0; first < tokens.size(); first += kChunk) {
    const std::vector<std::vector<std::int32_t>> chunk(tokens.begin() + first,
                                                       tokens.begin() + std::min(tokens.size(), first + kChunk));
    const std::vector<float> rows = clip().encode_text(chunk);
    values.insert(values.end(), rows.begin(), rows.end());
    progress.update(first + chunk.size());
  }
  progress.finish();
  const auto k = static_cast<std::int64_t>(concepts.size());
  return {k, static_cast<std::int64_t>(values.size()) / k, std::move(values), iota64(k)};
}

// Highest first; NaN counts as the largest (torch.max / torch.topk); ties by lower index.
std::vector<ScoredIndex> best_entries(const float* values, std::int64_t n, int k) {
  std::vector<std::int64_t> order = iota64(n);
  const auto above = [&](std::int64_t a, std::int64_t b) {
    const bool nan_a = std::isnan(values[a]), nan_b = std::isnan(values[b]);
    if (nan_a != nan_b) return nan_a;
    if (!nan_a && values[a] != values[b]) return values[a] > values[b];
    return a < b;
  };
  const auto keep = std::min<std::int64_t>(k, n);
  std::partial_sort(order.begin(), order.begin() + keep, order.end(), above);
  std::vector<ScoredIndex> best;
  for (std::int64_t i = 0; i < keep; ++i) best.push_back({order[i], values[order[i]]});
  return best;
}

void check_finite(const std::string& layer, const CachedMatrix& activations, const ProbeSet& probe) {
  for (std::int64_t r = 0; r < activations.rows; ++r)
    for (std::int64_t c = 0; c < activations.cols; ++c)
      if (!std::isfinite(activations.values[r * activations.cols + c]))
        fail("layer '{}', unit {}: non-finite activation {} on image {} ({}); check the checkpoint and inputs",
             layer, c, activations.values[r * activations.cols + c], activations.ids[r],
             probe.name(static_cast<std::size_t>(activations.ids[r])));
}

LayerDescription Describer::describe_layer(const std::string& name, const CachedMatrix& activations,
                                           const CachedMatrix& images, const CachedMatrix& texts,
                                           std::vector<float>* keep_similarity) const {
  check_finite(name, activations, probe_);
  const int needed = required_top_images(config_.similarity, activations.rows, config_.similarity_params);
  if (activations.rows < needed)
    fail("describe: {} needs at least {} probe images (its top_k), but only {} could be read",
         similarity_function_name(config_.similarity), needed, activations.rows);
  const SimilarityInputs inputs{images.values, texts.values, activations.values, images.rows, images.cols,
                                texts.rows,    activations.cols};
  const std::vector<float> similarity =
      compute_similarity(config_.similarity, inputs, config_.similarity_params, config_.device);
  LayerDescription layer{name, {}};
  for (std::int64_t unit = 0; unit < activations.cols; ++unit) {
    const float* row = similarity.data() + unit * texts.rows;
    NeuronDescription neuron;
    neuron.unit = unit;
    neuron.top_concepts = best_entries(row, texts.rows, std::max(1, config_.top_concepts));
    neuron.concept_index = neuron.top_concepts.front().index;
    neuron.similarity = neuron.top_concepts.front().score;
    neuron.top_concepts.resize(std::min<std::size_t>(neuron.top_concepts.size(), config_.top_concepts));
    std::vector<float> column(activations.rows);
    for (std::int64_t r = 0; r < activations.rows; ++r) column[r] = activations.values[r * activations.cols + unit];
    for (ScoredIndex entry : best_entries(column.data(), activations.rows, config_.top_images)) {
      entry.index = activations.ids[entry.index];
      neuron.top_images.push_back(entry);
    }
    layer.neurons.push_back(std::move(neuron));
  }
  if (keep_similarity) *keep_similarity = similarity;
  return layer;
}

DescribeResult Describer::run() {
  const auto start = Clock::now();
  DescribeResult result;
  result.concepts = read_concepts(config_.concepts);
  if (config_.probes.empty()) fail("describe: no probe set given (--probe)");
  std::vector<ProbeSet> sets;
  for (const fs::path& path : config_.probes) sets.push_back(ProbeSet::open(path));
  probe_ = ProbeSet::join(sets);
  for (std::size_t i = 0; i < probe_.size(); ++i) result.image_names.push_back(probe_.name(i));
  validate_layers();

  keys_.clip = sha256_file(config_.clip);
  keys_.target = sha256_file(config_.target);
  keys_.probe = sha256_hex(probe_.fingerprint());
  keys_.concepts = sha256_hex(fmt::format("{}", fmt::join(result.concepts, "\n")));
  result.inputs = {keys_.clip, keys_.target, keys_.concepts, keys_.probe};
  const std::string config_key = config_.target_config ? sha256_file(*config_.target_config) : "none";

  std::optional<CachedMatrix> images = cache_.load("clip-image", keys_.image());
  std::map<std::string, CachedMatrix> layers;
  std::vector<std::string> missing;
  for (const std::string& layer : config_.layers) {
    if (auto cached = cache_.load("target", keys_.layer(layer, config_.pool, config_key))) layers[layer] = *cached;
    else missing.push_back(layer);
  }
  result.stats.image_cache_hit = images.has_value();
  result.stats.layer_cache_hits = static_cast<int>(layers.size());
  if (!images || !missing.empty()) {
    ImagePass pass = image_pass(!images, missing, result);
    if (pass.clip_images) {
      images = std::move(pass.clip_images);
      cache_.store("clip-image", keys_.image(), *images);
    }
    for (auto& [layer, matrix] : pass.layers) {
      cache_.store("target", keys_.layer(layer, config_.pool, config_key), matrix);
      layers[layer] = std::move(matrix);
    }
  }
  result.used_images = images->ids;
  for (const auto& [layer, matrix] : layers)
    if (matrix.ids != images->ids)
      fail("describe: the probe images readable for layer '{}' differ from those of the CLIP embeddings; the probe "
           "set changed during the run, run again",
           layer);
  // Images skipped in an earlier run whose results were cached: report them again.
  if (result.skipped_images.empty() && images->rows < static_cast<std::int64_t>(probe_.size())) {
    std::vector<bool> used(probe_.size(), false);
    for (std::int64_t id : images->ids) used[id] = true;
    for (std::size_t i = 0; i < probe_.size(); ++i)
      if (!used[i]) result.skipped_images.emplace_back(static_cast<std::int64_t>(i), "unreadable in the cached run");
  }

  std::optional<CachedMatrix> texts = cache_.load("clip-text", keys_.text());
  result.stats.text_cache_hit = texts.has_value();
  if (!texts) {
    const auto stage = Clock::now();
    texts = text_embeddings(result.concepts);
    result.stats.clip_text_seconds = seconds_since(stage);
    cache_.store("clip-text", keys_.text(), *texts);
  }

  ProgressBar progress(std::string("similarity (") + std::string(similarity_function_name(config_.similarity)) + ")",
                       config_.layers.size(), ProgressUnit::items, config_.quiet);
  const auto similarity_start = Clock::now();
  for (const std::string& layer : config_.layers) {
    const bool keep = config_.save_similarity == layer;
    result.layers.push_back(
        describe_layer(layer, layers.at(layer), *images, *texts, keep ? &result.saved_similarity : nullptr));
    progress.advance();
  }
  progress.finish();
  result.stats.similarity_seconds = seconds_since(similarity_start);
  result.stats.seconds = seconds_since(start);
  return result;
}

}  // namespace

std::vector<std::string> read_concepts(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read the concept set", path.string());
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::vector<std::string> concepts;
  std::string line;
  // Python's universal newlines: "\r\n", "\r" and "\n" all end a line.
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '\n' || text[i] == '\r') {
      if (!line.empty()) concepts.push_back(line);
      line.clear();
      if (i + 1 < text.size() && text[i] == '\r' && text[i + 1] == '\n') ++i;
    } else {
      line += text[i];
    }
  }
  if (concepts.empty()) fail("{}: the concept set is empty (one concept per line expected)", path.string());
  return concepts;
}

DescribeResult describe(const DescribeConfig& config) {
  openblas_set_num_threads(config.threads);
  return Describer(config).run();
}

}  // namespace clipdissect

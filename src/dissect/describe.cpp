// describe: one pass over the probe images (each decoded once, feeding CLIP's and the target's
// preprocessing), text embeddings of the concepts, then per layer the similarity matrix and its argmax.
#include "clipdissect/describe.h"

#include <omp.h>

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
#include "clipdissect/interrupt.h"
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
  std::string clip, target, target_config;  // checksums
  std::string probe, concepts;

  std::string image() const { return fmt::format("clip-image v{}\nclip {}\nprobe {}\n", kCacheVersion, clip, probe); }
  std::string text() const { return fmt::format("clip-text v{}\nclip {}\nconcepts {}\n", kCacheVersion, clip, concepts); }
  std::string layer(const std::string& name, PoolMode pool) const {
    return fmt::format("target v{}\ntarget {}\nconfig {}\nprobe {}\nlayer {}\npool {}\n", kCacheVersion, target,
                       target_config, probe, name, pool_name(pool));
  }
};

// One matrix the image pass makes: the CLIP image embeddings (no layer) or a layer's summaries.
struct PassEntry {
  std::string kind, key, layer;
};

std::vector<std::int64_t> iota64(std::int64_t n) {
  std::vector<std::int64_t> ids(n);
  std::iota(ids.begin(), ids.end(), 0);
  return ids;
}

// Cached rows name probe images by index; an entry whose indices are not ascending within [0, limit), one per
// row, was not made for this probe set and is not used.
bool rows_name_probe_images(const CachedMatrix& matrix, std::int64_t limit) {
  if (static_cast<std::int64_t>(matrix.ids.size()) != matrix.rows) return false;
  for (std::size_t i = 0; i < matrix.ids.size(); ++i)
    if (matrix.ids[i] < 0 || matrix.ids[i] >= limit || (i > 0 && matrix.ids[i] <= matrix.ids[i - 1])) return false;
  return true;
}

// Everything the image pass produces: CLIP embeddings and the summaries of the layers not cached.
struct ImagePass {
  std::optional<CachedMatrix> clip_images;
  std::map<std::string, CachedMatrix> layers;
};

// The image pass so far: CLIP embeddings and layer summaries (in the recorder) of `used`, the readable
// images among probe images [0, covered).
struct PassState {
  std::int64_t covered = 0;
  std::vector<std::int64_t> used;
  std::vector<float> clip_rows;
  Recorder recorder;
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
  // The similarities need neither model: their weights and the backends' pooled memory go back first.
  void release_models() {
    target_.reset();
    clip_.reset();
    target_backend_.reset();
    clip_backend_.reset();
  }

  void validate_layers();
  std::vector<PassEntry> pass_entries(bool need_clip, const std::vector<std::string>& layers) const;
  ImagePass image_pass(bool need_clip, const std::vector<std::string>& layers, DescribeResult& result);
  void resume_pass(const std::vector<PassEntry>& entries, PassState& state) const;
  void save_partial_pass(const std::vector<PassEntry>& entries, const PassState& state) const;
  CachedMatrix pass_matrix(const PassEntry& entry, const PassState& state) const;
  std::string saved_so_far(const std::string& what) const;
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

std::vector<PassEntry> Describer::pass_entries(bool need_clip, const std::vector<std::string>& layers) const {
  std::vector<PassEntry> entries;
  if (need_clip) entries.push_back({"clip-image", keys_.image(), ""});
  for (const std::string& layer : layers) entries.push_back({"target", keys_.layer(layer, config_.pool), layer});
  return entries;
}

CachedMatrix Describer::pass_matrix(const PassEntry& entry, const PassState& state) const {
  const auto n = static_cast<std::int64_t>(state.used.size());
  if (entry.layer.empty())
    return CachedMatrix{n, n ? static_cast<std::int64_t>(state.clip_rows.size()) / n : 0, state.clip_rows, state.used};
  const LayerSummary& summary = state.recorder.summary(entry.layer);
  return CachedMatrix{summary.rows(), summary.channels, summary.values, state.used};
}

// Continues a pass that an earlier run stopped, when every matrix this pass makes was saved at the same point.
void Describer::resume_pass(const std::vector<PassEntry>& entries, PassState& state) const {
  std::vector<PartialMatrix> partials;
  for (const PassEntry& entry : entries) {
    std::optional<PartialMatrix> partial = cache_.load_partial(entry.kind, entry.key);
    if (!partial || partial->matrix.rows == 0 || partial->covered > static_cast<std::int64_t>(probe_.size()) ||
        !rows_name_probe_images(partial->matrix, partial->covered) ||
        (!partials.empty() && (partial->covered != partials.front().covered ||
                               partial->matrix.ids != partials.front().matrix.ids)))
      return;
    partials.push_back(std::move(*partial));
  }
  for (std::size_t i = 0; i < entries.size(); ++i) {
    CachedMatrix& matrix = partials[i].matrix;
    if (entries[i].layer.empty()) state.clip_rows = std::move(matrix.values);
    else state.recorder.seed(entries[i].layer, LayerSummary{matrix.cols, std::move(matrix.values)});
  }
  state.covered = partials.front().covered;
  state.used = std::move(partials.front().matrix.ids);
  spdlog::info("continuing the stopped image pass from probe image {} of {}", state.covered, probe_.size());
}

void Describer::save_partial_pass(const std::vector<PassEntry>& entries, const PassState& state) const {
  if (state.used.empty()) return;
  for (const PassEntry& entry : entries)
    cache_.store_partial(entry.kind, entry.key, PartialMatrix{pass_matrix(entry, state), state.covered});
}

std::string Describer::saved_so_far(const std::string& what) const {
  if (!cache_.enabled()) return "nothing was saved (no cache)";
  return fmt::format("{} saved in {}: the same command continues from there", what, cache_.folder()->string());
}

ImagePass Describer::image_pass(bool need_clip, const std::vector<std::string>& layers, DescribeResult& result) {
  std::vector<Preprocess> preprocesses;
  if (need_clip) preprocesses.push_back(clip().preprocess());
  if (!layers.empty()) preprocesses.push_back(target().preprocess());
  const std::vector<PassEntry> entries = pass_entries(need_clip, layers);
  PassState state{0, {}, {}, Recorder(target_backend(), config_.pool, layers)};
  resume_pass(entries, state);
  result.stats.continued_from = state.covered;
  const std::size_t total = probe_.size();
  ProgressBar progress(need_clip && !layers.empty() ? "CLIP + target forward" : need_clip ? "CLIP images" : "target forward",
                       total, ProgressUnit::items, config_.quiet);
  progress.update(state.covered);
  // Into the backend's own host buffers: page-locked on a GPU, where the copies then start straight from them.
  const auto decode = [&, backend = clip_backend_.get()](std::size_t first) {
    omp_set_num_threads(config_.threads);  // per thread: the prefetching thread does not inherit describe()'s
    return preprocess_batch(probe_, first, std::min<std::size_t>(config_.batch_size, total - first), preprocesses,
                            [backend](std::size_t floats) { return backend->host_buffer(floats); });
  };
  // A GPU gets the next batch decoded while it runs the current one; on the CPU decoding and the forward
  // passes would compete for the same cores.
  const bool prefetch = config_.device.cuda;
  std::future<PreprocessedBatch> next;
  if (prefetch && static_cast<std::size_t>(state.covered) < total)
    next = std::async(std::launch::async, decode, static_cast<std::size_t>(state.covered));
  for (std::size_t first = state.covered; first < total; first += config_.batch_size) {
    if (stop_requested()) {
      save_partial_pass(entries, state);
      stop_here_if_requested(state.used.empty() ? "nothing was computed yet"
                                                : saved_so_far(fmt::format("the image pass over {} of {} probe images is", first, total)));
    }
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
    const std::int64_t n = static_cast<std::int64_t>(batch.images.size());
    // Both uploads first: on a GPU the target's copy then runs while CLIP computes.
    const auto upload = [&](Backend& backend, std::size_t which) {
      const int size = preprocesses[which].crop;
      return backend.upload(batch.pixels[which], {n, 3, size, size});
    };
    stage = Clock::now();
    const Tensor clip_pixels = need_clip && n > 0 ? upload(*clip_backend_, 0) : Tensor();
    const Tensor target_pixels = !layers.empty() && n > 0 ? upload(target_backend(), need_clip ? 1 : 0) : Tensor();
    if (clip_pixels.defined()) {
      const std::vector<float> rows = clip().encode_image(clip_pixels);
      state.clip_rows.insert(state.clip_rows.end(), rows.begin(), rows.end());
      result.stats.clip_image_seconds += seconds_since(stage);
    }
    if (target_pixels.defined()) {
      if (clip_pixels.defined()) stage = Clock::now();  // else the uploads count here
      target().forward(target_pixels, &state.recorder);
      result.stats.target_seconds += seconds_since(stage);
    }
    state.used.insert(state.used.end(), batch.images.begin(), batch.images.end());
    state.covered = static_cast<std::int64_t>(first + count);
    progress.update(first + count);
  }
  progress.finish();
  if (state.used.empty()) fail("describe: none of the {} probe images could be read", total);
  ImagePass pass;
  for (const PassEntry& entry : entries) {
    if (entry.layer.empty()) pass.clip_images = pass_matrix(entry, state);
    else pass.layers[entry.layer] = pass_matrix(entry, state);
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
    stop_here_if_requested(saved_so_far("the image embeddings and activations are"));
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
  const std::string target_sha256 = sha256_file(config_.target);
  keys_.target = target_sha256;
  for (const fs::path& file : target().extra_weight_files()) {
    keys_.target += ' ';  // not " " + ...: GCC 12 warns falsely (-Wrestrict) on operator+(const char*, string&&)
    keys_.target += sha256_file(file);
  }
  keys_.probe = sha256_hex(probe_.fingerprint());
  keys_.concepts = sha256_hex(fmt::format("{}", fmt::join(result.concepts, "\n")));
  result.inputs = {keys_.clip, target_sha256, keys_.concepts, keys_.probe};
  keys_.target_config = config_.target_config ? sha256_file(*config_.target_config) : "none";

  const auto load_probe_rows = [&](const std::string& kind, const std::string& key) {
    std::optional<CachedMatrix> cached = cache_.load(kind, key);
    if (cached && !rows_name_probe_images(*cached, static_cast<std::int64_t>(probe_.size()))) cached.reset();
    return cached;
  };
  std::optional<CachedMatrix> images = load_probe_rows("clip-image", keys_.image());
  std::map<std::string, CachedMatrix> layers;
  std::vector<std::string> missing;
  for (const std::string& layer : config_.layers) {
    if (auto cached = load_probe_rows("target", keys_.layer(layer, config_.pool))) layers[layer] = *cached;
    else missing.push_back(layer);
  }
  result.stats.image_cache_hit = images.has_value();
  result.stats.layer_cache_hits = static_cast<int>(layers.size());
  if (!images || !missing.empty()) {
    ImagePass pass = image_pass(!images, missing, result);
    for (const PassEntry& entry : pass_entries(!images, missing)) {
      CachedMatrix& matrix = entry.layer.empty() ? *pass.clip_images : pass.layers.at(entry.layer);
      cache_.store(entry.kind, entry.key, matrix);
      cache_.remove_partial(entry.kind, entry.key);
    }
    if (pass.clip_images) images = std::move(pass.clip_images);
    for (auto& [layer, matrix] : pass.layers) layers[layer] = std::move(matrix);
  }
  result.used_images = images->ids;
  for (const auto& [layer, matrix] : layers)
    if (matrix.ids != images->ids)
      fail("describe: the probe images readable for layer '{}' differ from those of the CLIP embeddings; the probe "
           "set changed during the run, run again",
           layer);
  // Images skipped by the earlier run whose results were cached or continued: report them again.
  std::vector<bool> accounted(probe_.size(), false);
  for (std::int64_t id : images->ids) accounted[id] = true;
  for (const auto& [id, reason] : result.skipped_images) accounted[id] = true;
  for (std::size_t i = 0; i < probe_.size(); ++i)
    if (!accounted[i]) result.skipped_images.emplace_back(static_cast<std::int64_t>(i), "unreadable in the cached run");
  std::sort(result.skipped_images.begin(), result.skipped_images.end());

  std::optional<CachedMatrix> texts = cache_.load("clip-text", keys_.text());
  if (texts && texts->rows != static_cast<std::int64_t>(result.concepts.size())) texts.reset();
  result.stats.text_cache_hit = texts.has_value();
  if (!texts) {
    const auto stage = Clock::now();
    texts = text_embeddings(result.concepts);
    result.stats.clip_text_seconds = seconds_since(stage);
    cache_.store("clip-text", keys_.text(), *texts);
  }

  release_models();
  if (texts->cols != images->cols)
    fail("describe: the CLIP image embeddings are {} wide but the text embeddings {}; a cache entry in {} is damaged: "
         "remove the folder or run with --no-cache",
         images->cols, texts->cols, cache_.folder() ? cache_.folder()->string() : "(none)");
  ProgressBar progress(std::string("similarity (") + std::string(similarity_function_name(config_.similarity)) + ")",
                       config_.layers.size(), ProgressUnit::items, config_.quiet);
  const auto similarity_start = Clock::now();
  for (const std::string& layer : config_.layers) {
    stop_here_if_requested(saved_so_far("the image and text embeddings and the activations are"));
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
  omp_set_num_threads(config.threads);  // the similarities' loops and products, whatever the device
  return Describer(config).run();
}

}  // namespace clipdissect

// transformers' MPNetModel (modeling_mpnet.py) inside the sentence-transformers pipeline of all-mpnet-base-v2:
//
//   embeddings  x = LayerNorm(word_embeddings[ids] + position_embeddings[pad_id + running count of non-pad ids])
//   encoder     one relative position bias table shared by every layer: score(q, k) gets
//               table[bucket(k - q), head]; padded keys get float's lowest value (transformers' finfo.min mask)
//   each layer  (post-norm, as BERT)
//               h = LayerNorm(x + o(attention(q(x), k(x), v(x))))
//               x = LayerNorm(h + output.dense(gelu(intermediate.dense(h))))
//   sentence    the mean of x over the text's tokens, L2-normalised
#include "clipdissect/mpnet.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>

#include "clipdissect/error.h"
#include "clipdissect/weights.h"
#include "io/json_file.h"
#include "models/layers.h"
#include "text/wordpiece_tokenizer.h"

namespace clipdissect {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// MPNetEncoder.compute_position_bias calls relative_position_bucket with its default of 32 buckets, whatever
// the config says; the table needs at least that many rows.
constexpr int kBuckets = 32;
constexpr std::size_t kDefaultMaxSeqLength = 384;  // all-mpnet-base-v2's
constexpr std::size_t kMaxBatch = 64;
// Sequences per forward pass are bounded so that the [N, heads, L, L] scores stay around 64 MiB.
constexpr std::size_t kScoreBudget = std::size_t{16} << 20;

// A bias-carrying nn.Linear whose shape the config fixes: a mismatch is an error naming the tensor.
Linear checked_linear(WeightBinder& w, Backend& backend, const std::string& name, int in, int out) {
  return Linear(backend, in, out, w.take(name + ".weight", {out, in}), w.take(name + ".bias", {out}));
}

// q, k and v as one [3D, D] projection, the layout the backend's attention takes.
Linear packed_qkv(WeightBinder& w, Backend& backend, const std::string& attn, int width) {
  std::vector<float> weight, bias;
  for (const char* part : {"q", "k", "v"}) {
    const std::vector<float> pw = w.take(attn + "." + part + ".weight", {width, width});
    const std::vector<float> pb = w.take(attn + "." + part + ".bias", {width});
    weight.insert(weight.end(), pw.begin(), pw.end());
    bias.insert(bias.end(), pb.begin(), pb.end());
  }
  return Linear(backend, width, 3 * width, weight, bias);
}

class MpnetLayer {
 public:
  MpnetLayer(WeightBinder& w, Backend& backend, const std::string& prefix, const MpnetConfig& c)
      : backend_(backend),
        heads_(c.heads),
        qkv_(packed_qkv(w, backend, prefix + ".attention.attn", c.hidden_size)),
        o_(checked_linear(w, backend, prefix + ".attention.attn.o", c.hidden_size, c.hidden_size)),
        attention_norm_(w, backend, prefix + ".attention.LayerNorm", c.hidden_size, c.layer_norm_eps),
        intermediate_(checked_linear(w, backend, prefix + ".intermediate.dense", c.hidden_size, c.intermediate_size)),
        output_(checked_linear(w, backend, prefix + ".output.dense", c.intermediate_size, c.hidden_size)),
        output_norm_(w, backend, prefix + ".output.LayerNorm", c.hidden_size, c.layer_norm_eps) {}

  Tensor forward(const Tensor& x, const Tensor& score_bias) const {
    const Tensor attended = backend_.attention(qkv_.forward(x), heads_, false, &score_bias);
    const Tensor h = attention_norm_.forward(o_.forward(attended, Activation::None, &x));
    return output_norm_.forward(output_.forward(intermediate_.forward(h, Activation::Gelu), Activation::None, &h));
  }

 private:
  Backend& backend_;
  int heads_;
  Linear qkv_, o_;
  LayerNorm attention_norm_;
  Linear intermediate_, output_;
  LayerNorm output_norm_;
};

int required_int(const json& config, const char* key, const fs::path& path) {
  const auto it = config.find(key);
  if (it == config.end() || !it->is_number_integer() || it->get<int>() <= 0)
    fail("{}: '{}' must be a positive integer", path.string(), key);
  return it->get<int>();
}

MpnetConfig read_config(const fs::path& path) {
  const json config = read_json_object(path);
  return with_json_errors(path, [&] {
    if (config.value("model_type", "mpnet") != "mpnet")
      fail("{}: model_type '{}' is not mpnet", path.string(), config.value("model_type", ""));
    if (config.value("hidden_act", "gelu") != "gelu")
      fail("{}: hidden_act '{}' is not supported (expected gelu)", path.string(), config.value("hidden_act", ""));
    MpnetConfig c;
    c.vocab_size = required_int(config, "vocab_size", path);
    c.hidden_size = required_int(config, "hidden_size", path);
    c.layers = required_int(config, "num_hidden_layers", path);
    c.heads = required_int(config, "num_attention_heads", path);
    c.intermediate_size = required_int(config, "intermediate_size", path);
    c.max_position_embeddings = required_int(config, "max_position_embeddings", path);
    c.pad_token_id = config.value("pad_token_id", 1);
    c.relative_attention_num_buckets = config.value("relative_attention_num_buckets", 32);
    c.layer_norm_eps = config.value("layer_norm_eps", 1e-12f);
    if (c.hidden_size % c.heads != 0)
      fail("{}: hidden_size {} is not divisible by {} attention heads", path.string(), c.hidden_size, c.heads);
    if (c.relative_attention_num_buckets < kBuckets)
      fail("{}: relative_attention_num_buckets {} is below the {} buckets MPNet's encoder uses", path.string(),
           c.relative_attention_num_buckets, kBuckets);
    if (c.pad_token_id < 0 || c.pad_token_id >= c.max_position_embeddings)
      fail("{}: pad_token_id {} is not a valid position", path.string(), c.pad_token_id);
    return c;
  });
}

// The longest token sequence: sentence_bert_config.json's max_seq_length, else tokenizer_config.json's
// model_max_length when it is a real limit, else all-mpnet-base-v2's 384.
std::size_t read_max_seq_length(const fs::path& folder, const MpnetConfig& c) {
  const auto from = [&](const char* file, const char* key) -> std::optional<std::size_t> {
    const fs::path path = folder / file;
    if (!fs::exists(path)) return std::nullopt;
    const json value = read_json_object(path).value(key, json());
    if (value.is_number_unsigned()) return value.get<std::size_t>();
    if (!value.is_null() && !value.is_number_float()) fail("{}: '{}' must be a number", path.string(), key);
    return std::nullopt;
  };
  // Position ids run up to pad_token_id + length.
  const auto limit = static_cast<std::size_t>(c.max_position_embeddings - c.pad_token_id - 1);
  if (const auto length = from("sentence_bert_config.json", "max_seq_length")) {
    if (*length < 2 || *length > limit)
      fail("{}: max_seq_length {} is outside 2..{} (the model's positions)",
           (folder / "sentence_bert_config.json").string(), *length, limit);
    return *length;
  }
  if (const auto length = from("tokenizer_config.json", "model_max_length"); length && *length >= 2 && *length <= limit)
    return *length;
  if (kDefaultMaxSeqLength > limit)
    fail("{}: the model has {} positions, too few for {} tokens", folder.string(), c.max_position_embeddings,
         kDefaultMaxSeqLength);
  return kDefaultMaxSeqLength;
}

bool is_mean_pooling(const fs::path& path) {
  const json config = read_json_object(path);
  return with_json_errors(path, [&] {
    if (config.contains("pooling_mode")) return config.at("pooling_mode").get<std::string>() == "mean";
    for (const char* other : {"pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                              "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken"})
      if (config.value(other, false)) return false;
    return config.value("pooling_mode_mean_tokens", false);
  });
}

struct Pipeline {
  fs::path transformer;  // the folder with config.json, the weights and the tokenizer
  bool normalize = true;
};

// A sentence-transformers folder's modules.json: Transformer, then mean Pooling, then optionally Normalize.
Pipeline read_modules(const fs::path& folder) {
  const fs::path path = folder / "modules.json";
  const json modules = read_json_file(path);
  return with_json_errors(path, [&] {
    if (!modules.is_array()) fail("{}: expected a list of modules", path.string());
    std::optional<fs::path> transformer;
    bool pooled = false, normalize = false;
    for (const json& module : modules) {
      const std::string type = module.at("type").get<std::string>();
      const std::string kind = type.substr(type.rfind('.') + 1);
      const fs::path module_path = folder / module.value("path", "");
      if (kind == "Transformer" && !transformer) {
        transformer = module_path;
      } else if (kind == "Pooling" && transformer && !pooled) {
        if (!is_mean_pooling(module_path / "config.json"))
          fail("{}: only mean pooling is supported (all-mpnet-base-v2's)", (module_path / "config.json").string());
        pooled = true;
      } else if (kind == "Normalize" && pooled) {
        normalize = true;
      } else {
        fail("{}: module '{}' is not supported here: expected Transformer, mean Pooling and Normalize, in that order",
             path.string(), type);
      }
    }
    if (!pooled) fail("{}: expected a Transformer module followed by a mean Pooling module", path.string());
    return Pipeline{*transformer, normalize};
  });
}

}  // namespace

int mpnet_relative_position_bucket(std::int64_t relative_position) {
  constexpr int kHalf = kBuckets / 2, kMaxExact = kHalf / 2;
  constexpr float kMaxDistance = 128;
  const std::int64_t n = -relative_position;
  const int direction = n < 0 ? kHalf : 0;
  const std::int64_t distance = n < 0 ? -n : n;
  if (distance < kMaxExact) return direction + static_cast<int>(distance);
  // In float32 as torch computes it: the truncation then falls as the reference's does on exact boundaries.
  const float log_ratio = std::log(static_cast<float>(distance) / kMaxExact) /
                          static_cast<float>(std::log(static_cast<double>(kMaxDistance) / kMaxExact));
  const int large = kMaxExact + static_cast<int>(log_ratio * static_cast<float>(kHalf - kMaxExact));
  return direction + std::min(large, kHalf - 1);
}

struct MpnetModel::Impl {
  Impl(Backend& b, const MpnetConfig& c, WeightBinder& w, WordPieceTokenizer t)
      : backend(b),
        config(c),
        tokenizer(std::move(t)),
        word_embeddings(b.upload(w.take("embeddings.word_embeddings.weight", {c.vocab_size, c.hidden_size}),
                                 {c.vocab_size, c.hidden_size})),
        position_embeddings(
            b.upload(w.take("embeddings.position_embeddings.weight", {c.max_position_embeddings, c.hidden_size}),
                     {c.max_position_embeddings, c.hidden_size})),
        embedding_norm(w, b, "embeddings.LayerNorm", c.hidden_size, c.layer_norm_eps),
        relative_bias(w.take("encoder.relative_attention_bias.weight", {c.relative_attention_num_buckets, c.heads})) {
    for (int i = 0; i < c.layers; ++i) layers.emplace_back(w, b, "encoder.layer." + std::to_string(i), c);
  }

  Tensor embed(const std::vector<const std::vector<std::int32_t>*>& batch, std::size_t length) const;
  Tensor score_bias(const std::vector<const std::vector<std::int32_t>*>& batch, std::size_t length) const;
  std::vector<float> encode_batch(const std::vector<const std::vector<std::int32_t>*>& batch) const;

  Backend& backend;
  MpnetConfig config;
  WordPieceTokenizer tokenizer;
  Tensor word_embeddings, position_embeddings;
  LayerNorm embedding_norm;
  std::vector<float> relative_bias;  // [buckets, heads]
  std::vector<MpnetLayer> layers;
};

// create_position_ids_from_input_ids: pad ids (the batch padding) sit at position pad_id, the others count up
// from pad_id + 1.
Tensor MpnetModel::Impl::embed(const std::vector<const std::vector<std::int32_t>*>& batch, std::size_t length) const {
  const std::int32_t pad = config.pad_token_id;
  std::vector<std::int32_t> ids(batch.size() * length, pad), positions(batch.size() * length, pad);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    std::int32_t count = 0;
    for (std::size_t t = 0; t < batch[i]->size(); ++t) {
      ids[i * length + t] = (*batch[i])[t];
      if ((*batch[i])[t] != pad) positions[i * length + t] = pad + ++count;
    }
  }
  const auto n = static_cast<std::int64_t>(batch.size()), l = static_cast<std::int64_t>(length);
  const Tensor words = backend.embedding(word_embeddings, ids, n, l);
  return embedding_norm.forward(
      backend.add(words, backend.embedding(position_embeddings, positions, n, l), Activation::None));
}

// [N, heads, L, L]: the relative position bias, and the padding mask on the keys past each text's end.
Tensor MpnetModel::Impl::score_bias(const std::vector<const std::vector<std::int32_t>*>& batch,
                                    std::size_t length) const {
  const auto heads = static_cast<std::size_t>(config.heads), plane = length * length;
  std::vector<float> shared(heads * plane);
  for (std::size_t q = 0; q < length; ++q)
    for (std::size_t k = 0; k < length; ++k) {
      const int bucket = mpnet_relative_position_bucket(static_cast<std::int64_t>(k) - static_cast<std::int64_t>(q));
      for (std::size_t h = 0; h < heads; ++h) shared[h * plane + q * length + k] = relative_bias[bucket * heads + h];
    }
  std::vector<float> bias(batch.size() * shared.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    float* out = bias.data() + i * shared.size();
    std::copy(shared.begin(), shared.end(), out);
    for (std::size_t hq = 0; hq < heads * length; ++hq)
      std::fill(out + hq * length + batch[i]->size(), out + (hq + 1) * length, std::numeric_limits<float>::lowest());
  }
  return backend.upload(bias, {static_cast<std::int64_t>(batch.size()), config.heads, static_cast<std::int64_t>(length),
                               static_cast<std::int64_t>(length)});
}

std::vector<float> MpnetModel::Impl::encode_batch(const std::vector<const std::vector<std::int32_t>*>& batch) const {
  std::size_t length = 0;
  for (const auto* sequence : batch) length = std::max(length, sequence->size());
  Tensor x = embed(batch, length);
  const Tensor bias = score_bias(batch, length);
  for (const MpnetLayer& layer : layers) x = layer.forward(x, bias);
  const std::vector<float> hidden = backend.download(x);

  const auto d = static_cast<std::size_t>(config.hidden_size);
  std::vector<float> pooled(batch.size() * d);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    std::vector<double> sum(d, 0.0);
    for (std::size_t t = 0; t < batch[i]->size(); ++t)
      for (std::size_t c = 0; c < d; ++c) sum[c] += hidden[(i * length + t) * d + c];
    double norm = 0;
    for (double& v : sum) {
      v /= static_cast<double>(batch[i]->size());
      norm += v * v;
    }
    // F.normalize: x / max(||x||, 1e-12)
    const double scale = config.normalize ? 1.0 / std::max(std::sqrt(norm), 1e-12) : 1.0;
    for (std::size_t c = 0; c < d; ++c) pooled[i * d + c] = static_cast<float>(sum[c] * scale);
  }
  return pooled;
}

MpnetModel::MpnetModel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MpnetModel::~MpnetModel() = default;

const MpnetConfig& MpnetModel::config() const { return impl_->config; }

std::vector<std::int32_t> MpnetModel::tokenize(std::string_view text) const {
  return impl_->tokenizer.tokenize(text, impl_->config.max_seq_length);
}

std::vector<float> MpnetModel::encode(const std::vector<std::string>& texts) {
  std::vector<std::vector<std::int32_t>> tokens;
  tokens.reserve(texts.size());
  for (const std::string& text : texts) tokens.push_back(tokenize(text));
  return encode_tokens(tokens);
}

// Shortest first, so that each batch pads little; batches bounded by count and by the size of the scores.
std::vector<float> MpnetModel::encode_tokens(const std::vector<std::vector<std::int32_t>>& tokens) {
  const MpnetConfig& c = impl_->config;
  for (const auto& sequence : tokens)
    if (sequence.empty() || sequence.size() + c.pad_token_id >= static_cast<std::size_t>(c.max_position_embeddings))
      fail("MPNet: a token sequence of {} ids does not fit the model's {} positions", sequence.size(),
           c.max_position_embeddings);
  std::vector<std::size_t> order(tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return tokens[a].size() < tokens[b].size(); });
  const auto d = static_cast<std::size_t>(c.hidden_size), heads = static_cast<std::size_t>(c.heads);
  std::vector<float> out(tokens.size() * d);
  for (std::size_t start = 0; start < order.size();) {
    std::vector<const std::vector<std::int32_t>*> batch;
    for (std::size_t i = start; i < order.size() && batch.size() < kMaxBatch; ++i) {
      const std::size_t length = tokens[order[i]].size();
      if (!batch.empty() && (batch.size() + 1) * heads * length * length > kScoreBudget) break;
      batch.push_back(&tokens[order[i]]);
    }
    const std::vector<float> rows = impl_->encode_batch(batch);
    for (std::size_t i = 0; i < batch.size(); ++i)
      std::copy_n(rows.begin() + i * d, d, out.begin() + order[start + i] * d);
    start += batch.size();
  }
  return out;
}

std::unique_ptr<MpnetModel> MpnetModel::load(Backend& backend, const fs::path& folder) {
  if (!fs::is_directory(folder))
    fail(
        "{}: MPNet folder not found (expected a transformers or sentence-transformers folder: config.json, "
        "model.safetensors or pytorch_model.bin, tokenizer files)",
        folder.string());
  const Pipeline pipeline = fs::exists(folder / "modules.json") ? read_modules(folder) : Pipeline{folder, true};
  MpnetConfig config = read_config(pipeline.transformer / "config.json");
  config.max_seq_length = read_max_seq_length(pipeline.transformer, config);
  config.normalize = pipeline.normalize;

  const WeightMap weights = load_weights_folder(pipeline.transformer);
  const int layers = count_numbered_children(weights, "encoder.layer");
  if (layers != config.layers)
    fail("{}: {} encoder layers in the weights but num_hidden_layers is {}", weights.source(), layers, config.layers);
  WeightBinder binder(weights);
  auto impl = std::make_unique<Impl>(backend, config, binder, WordPieceTokenizer::from_folder(pipeline.transformer));
  // Buffers and the pooler, which sentence embeddings do not use.
  for (const char* unused : {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})
    binder.ignore(unused);
  binder.expect_all_used();
  return std::unique_ptr<MpnetModel>(new MpnetModel(std::move(impl)));
}

}  // namespace clipdissect
